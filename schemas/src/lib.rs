//! The Datadonor protocol: every message and file format that crosses a trust boundary.
//!
//! This crate is shared by the donor client, the intake service and analytics. It holds types,
//! their exact encodings and the verification of their signatures and proofs; it does no I/O,
//! spawns no tasks and reads no clock (time is always passed in). `PROTOCOL.md` at the root of the
//! repository describes every format byte by byte; the vector files under `schemas/vectors/` pin
//! them.
//!
//! Map of the modules:
//!
//! | module | what it owns |
//! |---|---|
//! | [`signing`] | Ed25519 keys, signature contexts, the signed-object wrapper every signed message uses |
//! | [`study`] | study definitions, the Arrow schema of a study's rows and the row validator |
//! | [`geo`] | Danish regions and municipalities, postcode generalisation |
//! | [`consent`] | consent manifests and withdrawals |
//! | [`pseudonym`] | CPR normalisation, the OPRF input and output, per-study pseudonyms |
//! | [`threshold`] | the donor's half of the t-of-n VOPRF: blinding, proofs, combination, the pseudonymiser configuration, donor credentials |
//! | [`envelope`] | HPKE configurations, donation envelopes and their payload |
//! | [`receipt`] | receipts signed by the ledger key |
//! | [`ledger`] | typed ledger entries |
//! | [`merkle`] | RFC 9162 Merkle trees, inclusion and consistency proofs |
//! | [`checkpoint`] | signed tree heads as C2SP tlog-checkpoint signed notes |
//! | [`cosignature`] | witness cosignatures (C2SP tlog-cosignature) and the tlog-witness `add-checkpoint` bodies |
//! | [`query`] | researchers' query specs, canonical hashes, stewards' approvals |
//! | [`batch`] | the sealed batch file header and its STREAM nonce layout |
//! | [`time`] | the `Clock` trait and Unix-second timestamps |
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod batch;
pub mod bundle;
pub mod checkpoint;
pub mod consent;
pub mod cosignature;
pub mod envelope;
pub mod geo;
pub mod ledger;
pub mod merkle;
pub mod privacy;
pub mod pseudonym;
pub mod query;
pub mod receipt;
pub mod signing;
pub mod study;
pub mod threshold;
pub mod time;
mod wire;

pub use wire::WireError;

/// SHA-256 (FIPS 180-4) of a byte string.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    wire::sha256(bytes)
}

/// The protocol version carried by every message body in this crate.
pub const PROTOCOL_VERSION: u32 = 1;

/// An error and its causes on one line, `error: cause: cause`, for the one-line messages of the
/// CLIs and of transport errors. A cause whose text the line already holds (an error that quotes
/// its source in its own message) is not repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Layer(&'static str, #[source] Option<Box<Layer>>);

    #[test]
    fn error_chain_joins_causes_once() {
        let inner = Layer("connection closed", None);
        let quoting = Layer("sending: connection closed", Some(Box::new(inner)));
        let outer = Layer("ledger append", Some(Box::new(quoting)));
        assert_eq!(
            super::error_chain(&outer),
            "ledger append: sending: connection closed"
        );
        let plain = Layer(
            "a",
            Some(Box::new(Layer("b", Some(Box::new(Layer("c", None)))))),
        );
        assert_eq!(super::error_chain(&plain), "a: b: c");
    }
}
