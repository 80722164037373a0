//! Where the tests find the published sample exports.

use std::path::{Path, PathBuf};

/// `rel` under the repository's `testdata/` (sources in `testdata/SOURCES.md`); a missing file
/// or directory fails the test with its path.
pub fn testdata(rel: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata")
        .join(rel);
    assert!(path.exists(), "test data missing: {}", path.display());
    path
}
