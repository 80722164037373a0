//! The programmatic donor flow, for apps and for simulations of many donors in one process.
//!
//! ```text
//! let intake  = Intake::new(IntakeConfig::new(url, TrustAnchors::CaPem(pem)))?;   // share it
//! let session = IntakeSession::connect(intake, pinned_ledger_key).await?;          // share it
//! let study   = session.intake().study(&study_id).await?;                          // share it
//! let rows    = minimise_blocking(paths, study.definition.clone(), options).await?; // per donor
//! let done    = session.donate(&study, &rows, &cpr, &donor_key, &consent).await?;  // per donor
//! let gone    = session.withdraw(&done.stored, &donor_key).await?;
//! ```
//!
//! An [`IntakeSession`] holds the intake's HPKE configuration and the pinned ledger trust; it is
//! `Clone` (an `Arc` inside) and every method takes `&self`, so thousands of donations can run
//! concurrently over one connection pool. Import and minimisation are CPU work and run on the
//! blocking pool ([`minimise_blocking`]).
//!
//! With a [`WitnessPolicy`] ([`IntakeSession::with_witnesses`]) every checkpoint the session
//! accepts carries cosignatures by a quorum of the donor's witnesses: a receipt is accepted only
//! once a cosigned checkpoint covering it is found and proved consistent with the receipt's
//! own checkpoint ([`DonationOutcome::witnessed`]), and [`IntakeSession::verify`] checks the
//! receipt against a cosigned current checkpoint. Both wait a bounded time for the intake to
//! gather the cosignatures ([`Intake::witnessed_checkpoint`]).

use std::path::PathBuf;
use std::sync::Arc;

use datadonor_schemas::envelope::HpkeConfigList;
use datadonor_schemas::merkle::{leaf_hash, verify_consistency, verify_inclusion};
use datadonor_schemas::pseudonym::{Cpr, Pseudonym};
use datadonor_schemas::receipt::{ReceiptBundle, ReceiptKind, VerifiedReceipt};
use datadonor_schemas::signing::SigningKey;
use datadonor_schemas::study::{StudyDefinition, StudyId};
use datadonor_schemas::time::{Clock, SystemClock};

use crate::client::{
    ClientError, Intake, LedgerTrust, PublishedStudy, WitnessPolicy, WitnessedCheckpoint,
};
use crate::donation::{
    seal_donation, sign_withdrawal, ConsentChoice, DonationError, SealedDonation,
};
use crate::keystore::{LedgerKeyInfo, StoredReceipt};
use crate::minimise::{minimise_paths, MinimiseError, MinimiseOptions, MinimisedRows};

/// Errors of the donor flow.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// Talking to the intake.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Preparing the donation.
    #[error(transparent)]
    Donation(#[from] DonationError),
    /// Minimisation.
    #[error(transparent)]
    Minimise(#[from] MinimiseError),
    /// A stored receipt is unusable.
    #[error("stored receipt: {0}")]
    StoredReceipt(String),
    /// The ledger was not append-only between two checkpoints.
    #[error("the ledger is inconsistent with the checkpoint verified earlier: {0}")]
    Inconsistent(String),
    /// The study or its bundle is not what this device pinned on first use.
    #[error(transparent)]
    Pin(#[from] crate::pins::PinError),
    /// Two checkpoints signed by the ledger's key that cannot both belong to one append-only
    /// log: the intake showed this device a fork (or a rollback). Both are kept as evidence.
    #[error("the intake's ledger forked: {}", .0.reason)]
    Fork(Box<ForkEvidence>),
    /// The blocking task failed.
    #[error("background task failed: {0}")]
    Task(String),
    /// The intake acknowledged and the receipt verified against its own checkpoint, but no
    /// checkpoint cosigned by the witness quorum could be tied to it: the receipt is not
    /// accepted yet. Keep `stored` and verify it again later.
    #[error("receipt at ledger index {} not accepted: {reason}", .stored.ledger_index)]
    NotWitnessed {
        /// The receipt, to keep and verify later.
        stored: Box<StoredReceipt>,
        /// Why no cosigned checkpoint was accepted.
        #[source]
        reason: Box<SessionError>,
    },
}

/// The evidence of a fork: two checkpoints signed by the ledger's key (signed-note texts) and
/// the consistency proof the intake served between them (none when they have the same size or
/// the later one is smaller). Anyone with the ledger's key can check that the two cannot be
/// heads of one append-only log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForkEvidence {
    /// The checkpoint verified or pinned first.
    pub earlier: String,
    /// The checkpoint the intake answered with later.
    pub later: String,
    /// The consistency proof served from the earlier tree to the later one (hex hashes).
    pub consistency_proof: Vec<String>,
    /// Why they are inconsistent.
    pub reason: String,
}

struct Inner {
    intake: Intake,
    hpke: HpkeConfigList,
    ledger: LedgerTrust,
    clock: Arc<dyn Clock>,
    witnesses: Option<WitnessPolicy>,
}

/// An intake with its keys fetched and the ledger key checked against the pin. Cheap to clone.
#[derive(Clone)]
pub struct IntakeSession {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for IntakeSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IntakeSession({:?})", self.inner.intake)
    }
}

/// A donation the intake acknowledged, with its verified receipt.
#[derive(Debug, Clone)]
pub struct DonationOutcome {
    /// The donor's pseudonym in the study.
    pub pseudonym: Pseudonym,
    /// The verified receipt.
    pub receipt: VerifiedReceipt,
    /// The receipt as it should be stored on the device.
    pub stored: StoredReceipt,
    /// The pseudonymiser instances whose answers gave the pseudonym (empty for a donation
    /// sealed elsewhere and sent with [`IntakeSession::send_donation`]).
    pub pseudonymisers_used: Vec<u16>,
    /// Instances that were down or answered wrongly during this donation.
    pub pseudonymisers_rejected: Vec<datadonor_schemas::threshold::AnswerError>,
    /// With a witness policy: the cosigned checkpoint the receipt was anchored to (it covers
    /// the entry, and is consistent with the receipt's checkpoint). `None` without one.
    pub witnessed: Option<WitnessedCheckpoint>,
}

/// How far a stored receipt was verified.
#[derive(Debug, Clone)]
pub struct VerifyOutcome {
    /// The receipt, verified against its own checkpoint.
    pub receipt: VerifiedReceipt,
    /// The current checkpoint it was also verified against (inclusion, and consistency from the
    /// previously verified checkpoint): `(tree size, signed note)`. `None` without the auditor
    /// token: only the receipt's own checkpoint was checked.
    pub current: Option<(u64, String)>,
    /// With a witness policy: the required witnesses that cosigned the current checkpoint.
    pub cosigned_by: Vec<String>,
}

/// Import and minimise on the blocking thread pool.
pub async fn minimise_blocking(
    paths: Vec<PathBuf>,
    study: StudyDefinition,
    options: MinimiseOptions,
) -> Result<MinimisedRows, SessionError> {
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&std::path::Path> = paths.iter().map(PathBuf::as_path).collect();
        minimise_paths(&refs, &study, options, &mut |_| {})
    })
    .await
    .map_err(|e| SessionError::Task(e.to_string()))?
    .map_err(SessionError::from)
}

fn hex16(s: &str) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    hex::decode_to_slice(s, &mut out).ok().map(|_| out)
}

impl IntakeSession {
    /// Fetch the HPKE configuration and the ledger key (checked against `pinned` when given).
    pub async fn connect(
        intake: Intake,
        pinned: Option<&LedgerKeyInfo>,
    ) -> Result<Self, SessionError> {
        let (hpke, ledger) = tokio::try_join!(intake.hpke_configs(), intake.ledger_trust(pinned))?;
        Ok(Self {
            inner: Arc::new(Inner {
                intake,
                hpke,
                ledger,
                clock: Arc::new(SystemClock),
                witnesses: None,
            }),
        })
    }

    /// The same session with another clock (tests).
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Arc::new(Inner {
                intake: self.inner.intake.clone(),
                hpke: self.inner.hpke.clone(),
                ledger: self.inner.ledger.clone(),
                clock,
                witnesses: self.inner.witnesses.clone(),
            }),
        }
    }

    /// The same session requiring `policy`'s witness quorum on every checkpoint it accepts
    /// (`None`: the ledger's signature alone, as without witnesses).
    pub fn with_witnesses(self, policy: Option<WitnessPolicy>) -> Self {
        Self {
            inner: Arc::new(Inner {
                intake: self.inner.intake.clone(),
                hpke: self.inner.hpke.clone(),
                ledger: self.inner.ledger.clone(),
                clock: self.inner.clock.clone(),
                witnesses: policy,
            }),
        }
    }

    /// The witness policy in use, if any.
    pub fn witnesses(&self) -> Option<&WitnessPolicy> {
        self.inner.witnesses.as_ref()
    }

    /// The same session sending `credential` to the pseudonymiser instances (one donor's
    /// credential from the study's enrolment).
    pub fn with_credential(&self, credential: crate::client::DonorCredentialToken) -> Self {
        Self {
            inner: Arc::new(Inner {
                intake: self.inner.intake.clone().with_credential(credential),
                hpke: self.inner.hpke.clone(),
                ledger: self.inner.ledger.clone(),
                clock: self.inner.clock.clone(),
                witnesses: self.inner.witnesses.clone(),
            }),
        }
    }

    /// The intake.
    pub fn intake(&self) -> &Intake {
        &self.inner.intake
    }

    /// The ledger trust in use (pin it when it was fetched for the first time).
    pub fn ledger(&self) -> &LedgerTrust {
        &self.inner.ledger
    }

    /// The HPKE configuration in use.
    pub fn hpke(&self) -> &HpkeConfigList {
        &self.inner.hpke
    }

    /// Pseudonymise, seal and donate; returns the verified receipt.
    pub async fn donate(
        &self,
        study: &PublishedStudy,
        rows: &MinimisedRows,
        cpr: &Cpr,
        donor_key: &SigningKey,
        consent: &ConsentChoice,
    ) -> Result<DonationOutcome, SessionError> {
        crate::donation::check_choice(&study.definition, consent)?;
        if rows.rows.is_empty() {
            return Err(DonationError::NoRows.into());
        }
        let pseudonymised = self.inner.intake.pseudonym(cpr, &study.definition).await?;
        let pseudonym = pseudonymised.pseudonym;
        let sealed = seal_donation(
            study,
            rows,
            &pseudonym,
            donor_key,
            consent,
            &self.inner.hpke,
            self.inner.clock.now(),
        )?;
        let mut outcome = self.send_donation(&sealed).await?;
        outcome.pseudonymisers_used = pseudonymised.used;
        outcome.pseudonymisers_rejected = pseudonymised.rejected;
        Ok(outcome)
    }

    /// Send an already sealed donation (retries resend the same bytes).
    pub async fn send_donation(
        &self,
        sealed: &SealedDonation,
    ) -> Result<DonationOutcome, SessionError> {
        let (bundle, receipt) = self
            .inner
            .intake
            .post_donation(&sealed.envelope, &self.inner.ledger)
            .await?;
        if receipt.receipt.consent_record_id != sealed.manifest.record_id
            || receipt.receipt.pseudonym != sealed.manifest.pseudonym
        {
            return Err(ClientError::Receipt("receipt names another consent record".into()).into());
        }
        let stored = self.stored(ReceiptKind::Donation, &receipt, bundle);
        let witnessed = self.anchor(&receipt, &stored).await?;
        Ok(DonationOutcome {
            pseudonym: sealed.manifest.pseudonym,
            receipt,
            stored,
            pseudonymisers_used: Vec::new(),
            pseudonymisers_rejected: Vec::new(),
            witnessed,
        })
    }

    /// With a witness policy: a checkpoint cosigned by the quorum that covers the receipt's tree,
    /// proved consistent with the receipt's checkpoint (waiting a bounded time for the
    /// cosignatures). Without one: `None`.
    /// A failure is [`SessionError::NotWitnessed`], carrying `stored`.
    async fn anchor(
        &self,
        receipt: &VerifiedReceipt,
        stored: &StoredReceipt,
    ) -> Result<Option<WitnessedCheckpoint>, SessionError> {
        self.try_anchor(receipt)
            .await
            .map_err(|e| SessionError::NotWitnessed {
                stored: Box::new(stored.clone()),
                reason: Box::new(e),
            })
    }

    async fn try_anchor(
        &self,
        receipt: &VerifiedReceipt,
    ) -> Result<Option<WitnessedCheckpoint>, SessionError> {
        let Some(policy) = &self.inner.witnesses else {
            return Ok(None);
        };
        let witnessed = self
            .inner
            .intake
            .witnessed_checkpoint(
                &self.inner.ledger,
                policy,
                receipt.tree_size,
                self.inner.clock.as_ref(),
            )
            .await?;
        self.check_consistency(
            (&receipt.receipt.checkpoint, receipt.tree_size, receipt.root),
            (
                &witnessed.note,
                witnessed.checkpoint.size,
                &witnessed.checkpoint.root.0,
            ),
        )
        .await?;
        Ok(Some(witnessed))
    }

    /// RFC 9162 consistency of the earlier tree `(note, m, root_m)` with the later
    /// `(note, size, root)`; a failure is a [`SessionError::Fork`] carrying both notes.
    async fn check_consistency(
        &self,
        (earlier, m, root_m): (&str, u64, [u8; 32]),
        (later, size, root): (&str, u64, &[u8; 32]),
    ) -> Result<(), SessionError> {
        let fork = |proof: &[[u8; 32]], reason: String| {
            SessionError::Fork(Box::new(ForkEvidence {
                earlier: earlier.to_string(),
                later: later.to_string(),
                consistency_proof: proof.iter().map(hex::encode).collect(),
                reason,
            }))
        };
        if m == 0 {
            return Ok(());
        }
        if m > size {
            return Err(fork(
                &[],
                format!(
                    "the later tree ({size} entries) is smaller than one verified before ({m})"
                ),
            ));
        }
        let proof = if m == size {
            Vec::new()
        } else {
            self.inner.intake.consistency_proof(m, size).await?
        };
        verify_consistency(m, size, &proof, &root_m, root).map_err(|e| {
            fork(
                &proof,
                if m == size {
                    format!("two different trees of {size} entries")
                } else {
                    format!("the tree of {size} entries does not extend the tree of {m}: {e}")
                },
            )
        })
    }

    fn stored(
        &self,
        kind: ReceiptKind,
        r: &VerifiedReceipt,
        bundle: ReceiptBundle,
    ) -> StoredReceipt {
        StoredReceipt {
            format: 1,
            intake: self.inner.intake.base_url().to_string(),
            kind,
            study_id: r.receipt.study_id.to_string(),
            pseudonym: r.receipt.pseudonym.to_hex(),
            consent_record_id: hex::encode(r.receipt.consent_record_id),
            ledger_index: r.receipt.ledger_index,
            stored_at: self.inner.clock.now(),
            bundle,
        }
    }

    /// Withdraw the consent a stored donation receipt was given under.
    pub async fn withdraw(
        &self,
        donation: &StoredReceipt,
        donor_key: &SigningKey,
    ) -> Result<(VerifiedReceipt, StoredReceipt), SessionError> {
        let bad = |m: &str| SessionError::StoredReceipt(m.to_string());
        let study = StudyId::new(&donation.study_id).map_err(|e| bad(&e.to_string()))?;
        let pseudonym = Pseudonym::from_hex(&donation.pseudonym).ok_or_else(|| bad("pseudonym"))?;
        let record = hex16(&donation.consent_record_id).ok_or_else(|| bad("consent_record_id"))?;
        let signed = sign_withdrawal(
            &study,
            &pseudonym,
            record,
            donor_key,
            self.inner.clock.now(),
        )?;
        let (bundle, receipt) = self
            .inner
            .intake
            .post_withdrawal(&signed, &self.inner.ledger)
            .await?;
        if receipt.receipt.consent_record_id != record {
            return Err(ClientError::Receipt("receipt names another consent record".into()).into());
        }
        let stored = self.stored(ReceiptKind::Withdrawal, &receipt, bundle);
        self.anchor(&receipt, &stored).await?;
        Ok((receipt, stored))
    }

    /// Re-verify a stored receipt: against its own checkpoint, against the intake's current
    /// checkpoint (inclusion proof), and the current checkpoint against `last_verified` (or the
    /// receipt's checkpoint) by a consistency proof. The checkpoint and proofs are public: no
    /// token is needed. With a witness policy the current checkpoint must carry the quorum
    /// (fetched again for up to the policy's wait while it does not).
    pub async fn verify(
        &self,
        stored: &StoredReceipt,
        last_verified: Option<&str>,
    ) -> Result<VerifyOutcome, SessionError> {
        let ledger = &self.inner.ledger;
        let receipt = ledger.verify(&stored.bundle)?;
        let intake = &self.inner.intake;
        let (note, current, cosigned_by) = match &self.inner.witnesses {
            Some(policy) => {
                let w = intake
                    .witnessed_checkpoint(ledger, policy, 0, self.inner.clock.as_ref())
                    .await?;
                (w.note, w.checkpoint, w.cosigned_by)
            }
            None => {
                let (note, signed) = intake.checkpoint(ledger).await?;
                (note, signed.checkpoint, Vec::new())
            }
        };
        let size = current.size;
        let root = current.root.0;
        // Consistency: from the receipt's tree, and from the last checkpoint verified, to now.
        let mut earlier = vec![(
            receipt.receipt.checkpoint.clone(),
            receipt.tree_size,
            receipt.root,
        )];
        if let Some(note) = last_verified {
            let cp = datadonor_schemas::checkpoint::open(
                note.as_bytes(),
                std::slice::from_ref(&ledger.verifier),
            )
            .map_err(|e| SessionError::StoredReceipt(format!("stored checkpoint: {e}")))?;
            earlier.push((note.to_string(), cp.checkpoint.size, cp.checkpoint.root.0));
        }
        for (note_m, m, root_m) in earlier {
            self.check_consistency((&note_m, m, root_m), (&note, size, &root))
                .await?;
        }
        // Consistent with the receipt's tree, the current tree contains the entry; checked
        // directly all the same.
        let index = receipt.receipt.ledger_index;
        let leaf = leaf_hash(&stored.bundle.entry);
        let proof = intake.inclusion_proof(index, size).await?;
        verify_inclusion(index, size, &leaf.0, &proof, &root)
            .map_err(|e| ClientError::Receipt(format!("inclusion in the current tree: {e}")))?;

        Ok(VerifyOutcome {
            receipt,
            current: Some((size, note)),
            cosigned_by,
        })
    }
}
