//! A real intake's data directory and its three pseudonymiser instances (any two needed), in
//! this process: what the tests that drive the donor client, its CLI, its app or a browser
//! against real servers start from. Included with `#[path]` by the tests that need it.
#![allow(dead_code)] // each test binary uses a subset

use std::path::{Path, PathBuf};

/// The initialised (not yet started) intake and the running pseudonymisers.
pub struct Live {
    /// Holds the intake's and the pseudonymisers' directories.
    pub data: tempfile::TempDir,
    /// The pseudonymiser instances, serving TLS until dropped.
    pub pseudonymisers: datadonor_pseudonymiser::local::LocalService,
    /// The intake's data directory (`init` done: keys, the example study naming the
    /// pseudonymisers, its notices and bundle).
    pub intake_dir: PathBuf,
}

/// Start three pseudonymiser instances and initialise an intake whose example study names them;
/// also returns the intake's test configuration, to edit before `datadonor_intake::start`.
pub async fn prepare() -> (Live, datadonor_intake::config::Config) {
    let data = tempfile::tempdir().expect("intake dir");
    let pseudonymisers = datadonor_pseudonymiser::local::start_local(
        &data.path().join("pseudonymisers"),
        "dk-pseudonymiser",
        3,
        2,
        None,
        |_| {},
    )
    .await
    .expect("pseudonymisers");
    let intake_dir = data.path().join("intake");
    let config =
        datadonor_intake::testkit::init_test_dir_with(&intake_dir, Some(&pseudonymisers.config))
            .expect("init intake");
    (
        Live {
            data,
            pseudonymisers,
            intake_dir,
        },
        config,
    )
}

impl Live {
    /// The pseudonymisers' CA certificate (PEM file).
    pub fn pseudonymiser_ca(&self) -> PathBuf {
        self.data.path().join("pseudonymisers/ca.pem")
    }

    /// The intake's CA and the pseudonymisers' CA in one PEM, as a client trusts them.
    pub fn trust_pem(&self, intake_ca: &Path) -> Vec<u8> {
        let mut pem = std::fs::read(intake_ca).expect("intake CA");
        pem.push(b'\n');
        pem.extend(std::fs::read(self.pseudonymiser_ca()).expect("pseudonymiser CA"));
        pem
    }
}
