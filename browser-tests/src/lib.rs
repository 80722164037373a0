//! The donor's app (`datadonor app`) in a real browser: `tests/browser.rs` drives Debian's
//! chromium through chromedriver over WebDriver, walks the whole flow against a live in-process
//! intake in Danish and in English, checks every page with axe-core, and writes a screenshot
//! of each step to `docs/screenshots/`. The tests are ignored by a plain `cargo test`; `.ci/run`
//! installs chromium, chromedriver and axe-core and runs them with `--ignored`.
#![forbid(unsafe_code)]
