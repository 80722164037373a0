//! `datadonor-research`.
#![forbid(unsafe_code)]

fn main() {}
