//! The sample configuration loads, `init` writes every default, unknown keys are refused.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use datadonor_intake::config::Config;

#[test]
fn sample_config_loads_with_the_defaults() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.sample.toml");
    let c = Config::load(&path).unwrap();
    let mut want = Config::with_defaults(vec![
        "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=".to_string()
    ]);
    want.data_dir = c.data_dir.clone();
    assert_eq!(c, want, "the sample spells out exactly the defaults");
}

#[test]
fn init_writes_every_default() {
    let d = tempfile::tempdir().unwrap();
    let r = datadonor_intake::init::init(d.path(), None, 1_700_000_000).unwrap();
    let c = Config::load_dir(d.path()).unwrap();
    let mut want = Config::with_defaults(vec![r.steward_public_key.clone()]);
    want.data_dir = d.path().to_path_buf();
    assert_eq!(c, want);
    let text = std::fs::read_to_string(d.path().join("config.toml")).unwrap();
    for key in [
        "max_body_bytes",
        "group_window_ms",
        "transport_key_grace_secs",
        "queue_capacity",
    ] {
        assert!(text.contains(key), "{key} missing from config.toml");
    }
}

#[test]
fn unknown_and_out_of_range_keys_are_refused() {
    assert!(Config::from_toml("[limits]\nmax_body_byte = 5\n").is_err());
    assert!(Config::from_toml("surprise = 1\n").is_err());
    // The intake evaluates no OPRF: an `[oprf]` section is an unknown key.
    assert!(Config::from_toml("[oprf]\nburst = 10\n").is_err());
    assert!(Config::from_toml("[ledger]\norigin = \"has space\"\n").is_err());
    assert!(Config::from_toml("").is_ok());
}
