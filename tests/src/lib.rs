//! Datadonor's cross-crate test support: the synthetic population, the end-to-end demo, and
//! helpers shared by the end-to-end, adversarial and crash tests.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod demo;
mod demo_audit;
mod demo_research;
pub mod synthpop;
