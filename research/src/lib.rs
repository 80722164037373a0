//! The researcher's client of the steward's query service.
#![forbid(unsafe_code)]
