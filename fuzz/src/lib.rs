//! Fuzz targets for Datadonor's parsers of untrusted bytes; see [`targets`].
#![forbid(unsafe_code)]

pub mod targets;
