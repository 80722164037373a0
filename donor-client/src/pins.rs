//! Trust on first use of a study: the first time this device meets a study at an intake it
//! pins the steward key that signed it and the study bundle (the ledger's key, the witnesses
//! and their quorum); afterwards a study or bundle signed by any other key is refused, and a
//! new bundle by the same steward replaces the pinned one. `PROTOCOL.md`, "Study bundles and
//! notices".

use serde::{Deserialize, Serialize};

use datadonor_schemas::bundle::OpenedBundle;
use datadonor_schemas::signing::{PublicKey, SignedObject};
use datadonor_schemas::study::StudyId;
use datadonor_schemas::time::UnixSeconds;

use crate::client::{ClientError, PublishedStudy, WitnessPolicy};
use crate::keystore::{read_json_opt, write_private, Keystore, KeystoreError};

/// A study as pinned on this device for one intake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyPin {
    /// Format version (1).
    pub format: u32,
    /// The steward key that signed the study and its bundle when first met.
    pub steward_key: PublicKey,
    /// The bundle last accepted, exactly as signed.
    pub bundle: SignedObject,
    /// When first pinned.
    pub pinned_at: UnixSeconds,
}

/// What pinning did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinOutcome {
    /// Nothing was pinned for this study before: trusted on first use.
    First,
    /// The same bundle as pinned.
    Unchanged,
    /// A new bundle by the pinned steward replaced the pinned one.
    Updated,
}

/// Why a study or bundle is not accepted against the pin.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PinError {
    /// The study or bundle is signed by another key than the one pinned on first use.
    #[error("study {study} is now signed by {found}, not by the steward key pinned on first use ({pinned}); refusing")]
    StewardChanged {
        /// The study.
        study: String,
        /// The pinned key (base64).
        pinned: String,
        /// The key found (base64).
        found: String,
    },
    /// The key store failed.
    #[error(transparent)]
    Keystore(#[from] KeystoreError),
}

fn pin_path(
    ks: &Keystore,
    intake: &str,
    id: &StudyId,
) -> Result<std::path::PathBuf, KeystoreError> {
    let dir = ks.intake_dir(intake)?.join("studies");
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(&dir).map_err(|source| KeystoreError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    Ok(dir.join(format!("{id}.json")))
}

/// The pin of a study at an intake, if any.
pub fn pinned_study(
    ks: &Keystore,
    intake: &str,
    id: &StudyId,
) -> Result<Option<StudyPin>, KeystoreError> {
    read_json_opt(&pin_path(ks, intake, id)?)
}

/// Check `study` and its verified `bundle` against the pin of the study at `intake` and pin
/// them (first use) or the new bundle (same steward).
pub fn pin_study(
    ks: &Keystore,
    intake: &str,
    study: &PublishedStudy,
    bundle: &OpenedBundle,
    now: UnixSeconds,
) -> Result<PinOutcome, PinError> {
    let id = &study.definition.id;
    let path = pin_path(ks, intake, id)?;
    let existing: Option<StudyPin> = read_json_opt(&path)?;
    let outcome = match &existing {
        Some(pin)
            if pin.steward_key != study.steward || pin.steward_key != bundle.signed.signer =>
        {
            return Err(PinError::StewardChanged {
                study: id.to_string(),
                pinned: pin.steward_key.to_base64(),
                found: study.steward.to_base64(),
            })
        }
        Some(pin) if pin.bundle == bundle.signed.object => return Ok(PinOutcome::Unchanged),
        Some(_) => PinOutcome::Updated,
        None => PinOutcome::First,
    };
    let pin = StudyPin {
        format: 1,
        steward_key: study.steward,
        bundle: bundle.signed.object.clone(),
        pinned_at: existing.map_or(now, |p| p.pinned_at),
    };
    write_private(&path, &serde_json::to_vec_pretty(&pin).unwrap_or_default())?;
    Ok(outcome)
}

/// The witness quorum a bundle asks for (`None` when it names no witnesses).
pub fn bundle_witness_policy(bundle: &OpenedBundle) -> Result<Option<WitnessPolicy>, ClientError> {
    if bundle.witnesses.is_empty() {
        return Ok(None);
    }
    WitnessPolicy::new(
        bundle.witnesses.clone(),
        bundle.signed.body.witness_quorum as usize,
    )
    .map(Some)
}
