//! Moving an intake's ledger and sealed batches to other backends (`datadonor-intake migrate`):
//! a deployment that started on the embedded default (`ledger/ledger.log`, `batches/`) and
//! grows to PostgreSQL and S3 (or any other pair `[storage]` can name).
//!
//! The intake must be stopped: the move takes the data directory's lock, and a PostgreSQL target
//! its table's lock. It proceeds in an order that can be stopped anywhere and run again with the
//! same arguments:
//!
//! 1. The target ledger is checked: empty, or holding the source's first records (the roots at
//!    their size agree); anything else is another ledger, and nothing is written. Then a marker,
//!    `migration.json`, is written (and synced) in the data directory. While it is there the
//!    intake refuses to start ([`refuse_if_unfinished`]): a half-moved ledger served would be a
//!    shorter log than the one donors and witnesses have seen.
//! 2. Every compacted batch (`.ddc`, the steward's) and every intake batch the ledger names is
//!    copied to the target store (a batch already there must hold the same bytes, or the move
//!    stops). An intake batch the ledger does not name (a group whose ledger append failed) is
//!    not copied: the intake's sweep would delete it. A compaction journal in either store (a
//!    compaction under way or interrupted) stops the move before anything is written.
//! 3. The ledger's records are appended to the target in chunks, after the records it already
//!    holds. The target computes its own indexes and Merkle nodes, as for any append; the roots at
//!    the source's size must then agree.
//! 4. The source batches are deleted (copies of rows a later erasure would not reach must not
//!    stay behind) and the marker is removed. Then the old ledger is put out of reach of a
//!    configuration that still names it: a local ledger directory is renamed
//!    `ledger.moved-<time>`, a PostgreSQL ledger's tables `<table>_moved_<time>` (both kept). An
//!    intake pointed at the old place finds no ledger there and refuses to start
//!    ([`crate::server::open_stores`]) rather than serve a second log under the same key.
//!
//! A replay of an old donation after the move answers a receipt under the checkpoint of the
//! size the chunk holding it ended at (the target's indexes record that size), not the
//! original receipt's: valid under the same log, but not the same bytes.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use datadonor_schemas::merkle::{root_from, root_nodes, Hash};

use crate::config::{BatchBackend, Config, LedgerBackend};
use crate::init::ledger_path;
use crate::server::{open_batch_store, open_existing_ledger, open_ledger_store, DirLock};
use crate::store::{fsync_dir, BatchRef, BatchStore, IndexedLedger, StoreError};
use crate::Error;

/// The marker a move in progress leaves in the data directory.
pub const MARKER: &str = "migration.json";

/// Records appended to the target per transaction.
pub const CHUNK: u64 = 10_000;

/// What a move did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Whether the ledger moved (its backend differs between the two configurations).
    pub ledger_moved: bool,
    /// Records in the ledger.
    pub records: u64,
    /// Records appended to the target by this run (fewer than `records` when an earlier run
    /// had copied some).
    pub records_copied: u64,
    /// The ledger's root (the source's and the target's) at `records`.
    pub root: Option<Hash>,
    /// Whether the batches moved.
    pub batches_moved: bool,
    /// Batches the ledger names, now in the target store.
    pub batches: usize,
    /// Of those, copied by this run.
    pub batches_copied: usize,
    /// The steward's compacted batches, all moved (they need no ledger entry to be read).
    pub compacted: usize,
    /// Of those, copied by this run.
    pub compacted_copied: usize,
    /// Bytes copied by this run (intake and compacted batches).
    pub bytes_copied: u64,
    /// Batches in the source the ledger does not name: not copied, deleted with the rest.
    pub unnamed: Vec<BatchRef>,
    /// Where the local ledger directory was moved, when the ledger left it.
    pub old_ledger: Option<PathBuf>,
    /// What a PostgreSQL ledger's table was renamed to, when the ledger left it.
    pub old_table: Option<String>,
}

/// Refuse to open a data directory a move has not finished in.
pub fn refuse_if_unfinished(dir: &Path) -> Result<(), Error> {
    let marker = dir.join(MARKER);
    if marker.exists() {
        return Err(Error::Init(format!(
            "{} is there: a move of this intake's ledger and batches to other backends was \
             started and did not finish; run `datadonor-intake migrate` again with the same \
             arguments before serving",
            marker.display()
        )));
    }
    Ok(())
}

fn moves_ledger(from: &Config, to: &Config) -> bool {
    match (from.storage.ledger, to.storage.ledger) {
        (LedgerBackend::Postgres, LedgerBackend::Postgres) => {
            let key = |c: &Config| {
                c.storage
                    .postgres
                    .as_ref()
                    .map(|p| (p.url.clone(), p.table.clone()))
            };
            key(from) != key(to)
        }
        (a, b) => a != b,
    }
}

fn moves_batches(from: &Config, to: &Config) -> bool {
    match (from.storage.batches, to.storage.batches) {
        (BatchBackend::S3, BatchBackend::S3) => {
            let key = |c: &Config| {
                c.storage
                    .s3
                    .as_ref()
                    .map(|s| (s.endpoint.clone(), s.bucket.clone(), s.prefix.clone()))
            };
            key(from) != key(to)
        }
        (a, b) => a != b,
    }
}

fn canonical(dir: &Path) -> Result<PathBuf, Error> {
    dir.canonicalize()
        .map_err(Error::io(format!("resolving {}", dir.display())))
}

fn indexed(store: &dyn crate::store::LedgerStore) -> Result<&dyn IndexedLedger, Error> {
    store.as_indexed().ok_or_else(|| {
        Error::Store(StoreError::Corrupt(
            "a ledger backend without indexes cannot be moved".into(),
        ))
    })
}

/// The root of `idx` at `size` (`None` for the empty tree).
fn root_at(idx: &dyn IndexedLedger, size: u64) -> Result<Option<Hash>, Error> {
    if size == 0 {
        return Ok(None);
    }
    Ok(Some(
        root_from(&idx.nodes(&root_nodes(size))?, size)
            .map_err(crate::ledger::LedgerError::from)?,
    ))
}

/// The two kinds of sealed batch a store keeps: the intake's (named by ledger entries) and the
/// steward's compacted ones.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Intake,
    Compacted,
}

impl Kind {
    fn what(self) -> &'static str {
        match self {
            Kind::Intake => "batch",
            Kind::Compacted => "compacted batch",
        }
    }

    fn list(self, s: &dyn BatchStore) -> Result<Vec<BatchRef>, StoreError> {
        match self {
            Kind::Intake => s.list(),
            Kind::Compacted => s.list_compacted(),
        }
    }

    fn listed(self, s: &dyn BatchStore) -> Result<HashSet<BatchRef>, StoreError> {
        Ok(self.list(s)?.into_iter().collect())
    }

    fn get(self, s: &dyn BatchStore, b: &BatchRef) -> Result<Vec<u8>, StoreError> {
        match self {
            Kind::Intake => s.get(b),
            Kind::Compacted => s.get_compacted(b),
        }
    }

    /// Copy `b` unless `there` (the target's listing) has it, in which case the target's
    /// bytes must be the source's. The bytes copied, or `None` when it was there.
    fn copy(
        self,
        source: &dyn BatchStore,
        target: &dyn BatchStore,
        there: &HashSet<BatchRef>,
        b: &BatchRef,
    ) -> Result<Option<u64>, Error> {
        let sealed = self.get(source, b)?;
        if there.contains(b) {
            if self.get(target, b)? != sealed {
                return Err(Error::Store(StoreError::Conflict(format!(
                    "{} {}/{} is in the target store with other bytes",
                    self.what(),
                    b.study,
                    b.id_hex()
                ))));
            }
            return Ok(None);
        }
        match self {
            Kind::Intake => target.put(b, &sealed)?,
            Kind::Compacted => target.put_compacted(b, &sealed)?,
        }
        Ok(Some(sealed.len() as u64))
    }

    /// Every one of `copied` is listed by `target`.
    fn all_listed(self, target: &dyn BatchStore, copied: &[BatchRef]) -> Result<(), Error> {
        let there = self.listed(target)?;
        match copied.iter().find(|b| !there.contains(b)) {
            Some(b) => Err(Error::Store(StoreError::Corrupt(format!(
                "{} {}/{} was written to the target but is not listed there",
                self.what(),
                b.study,
                b.id_hex()
            )))),
            None => Ok(()),
        }
    }
}

/// Move the ledger and the batches from the backends `from` names to those `to` names (both
/// configurations of one data directory), as the module documentation describes. `progress`
/// is told what is being done.
pub fn migrate(
    from: &Config,
    to: &Config,
    now: i64,
    progress: &mut dyn FnMut(&str),
) -> Result<MigrationReport, Error> {
    from.validate()?;
    to.validate()?;
    if [from, to]
        .iter()
        .any(|c| c.cluster.role == crate::config::Role::Frontend)
    {
        return Err(Error::Init(
            "a frontend keeps no ledger or batches: move its sequencer's".into(),
        ));
    }
    let dir = canonical(&from.data_dir)?;
    if canonical(&to.data_dir)? != dir {
        return Err(Error::Init(format!(
            "the target configuration names data directory {}, not {}: both must be the same \
             intake's (its keys sign the ledger)",
            to.data_dir.display(),
            from.data_dir.display()
        )));
    }
    let (ledger_moves, batches_move) = (moves_ledger(from, to), moves_batches(from, to));
    if !ledger_moves && !batches_move {
        return Err(Error::Init(
            "the two configurations name the same ledger and batch stores: nothing to move".into(),
        ));
    }
    let _lock = DirLock::acquire(&dir)?;
    // A source `init` did not start (moved already, lost, mistyped) is refused as serving it is.
    let source_ledger = open_existing_ledger(from, false)?;
    let src = indexed(source_ledger.as_ref())?;
    let records = src.size()?;
    // The target ledger is checked before anything is written: a target holding another
    // ledger leaves the intake as it was.
    let target_ledger = if ledger_moves {
        let target = open_ledger_store(to, false)?;
        let dst = indexed(target.as_ref())?;
        let have = dst.size()?;
        if have > records || root_at(src, have)? != root_at(dst, have)? {
            return Err(Error::Store(StoreError::Conflict(format!(
                "the target ledger's {have} records are not the source's first {have} (of \
                 {records}): it is another ledger"
            ))));
        }
        Some(target)
    } else {
        None
    };
    // The batch stores, and no compaction under way in either (its journal names files that
    // are about to change).
    let batch_stores = if batches_move {
        let (source, target) = (open_batch_store(from)?, open_batch_store(to)?);
        for (store, which) in [(&source, "source"), (&target, "target")] {
            if let Some(study) = store.compaction_journals()?.first() {
                return Err(Error::Init(format!(
                    "a compaction of study {study} in the {which} batch store is under way or was \
                     interrupted (its compact.journal is there): let `datadonor-analytics compact` \
                     finish it, then move"
                )));
            }
        }
        Some((source, target))
    } else {
        None
    };
    let marker = dir.join(MARKER);
    let describe = |c: &Config| {
        serde_json::json!({
            "ledger": c.storage.ledger,
            "batches": c.storage.batches,
        })
    };
    let note = serde_json::json!({
        "started_at": now,
        "from": describe(from),
        "to": describe(to),
    });
    crate::keys::write_atomic(&marker, format!("{note:#}\n").as_bytes(), 0o644)?;
    let mut report = MigrationReport {
        ledger_moved: ledger_moves,
        batches_moved: batches_move,
        records,
        ..MigrationReport::default()
    };

    // Batches first: every batch the ledger names is in the target before any record that
    // names it is.
    let mut moved_batches = Vec::new();
    let mut moved_compacted = Vec::new();
    if let Some((source, target)) = &batch_stores {
        // The steward's compacted batches: every one moves (they are read without a ledger
        // entry naming them).
        let there = Kind::Compacted.listed(target.as_ref())?;
        for b in Kind::Compacted.list(source.as_ref())? {
            if let Some(n) = Kind::Compacted.copy(source.as_ref(), target.as_ref(), &there, &b)? {
                report.compacted_copied += 1;
                report.bytes_copied += n;
            }
            moved_compacted.push(b);
        }
        report.compacted = moved_compacted.len();
        let there = Kind::Intake.listed(target.as_ref())?;
        let listed = source.list()?;
        progress(&format!("batches: {} in the source store", listed.len()));
        for b in listed {
            if !src.names_batch(&b.study, &b.id_hex())? {
                report.unnamed.push(b.clone());
                moved_batches.push(b);
                continue;
            }
            if let Some(n) = Kind::Intake.copy(source.as_ref(), target.as_ref(), &there, &b)? {
                report.batches_copied += 1;
                report.bytes_copied += n;
            }
            report.batches += 1;
            moved_batches.push(b);
        }
        progress(&format!(
            "batches the ledger names, in the target: {} ({} copied now); compacted: {} ({} \
             copied now); {} bytes",
            report.batches,
            report.batches_copied,
            report.compacted,
            report.compacted_copied,
            report.bytes_copied
        ));
        // Every batch copied is listed by the target, before anything is deleted.
        let named: Vec<BatchRef> = moved_batches
            .iter()
            .filter(|b| !report.unnamed.contains(b))
            .cloned()
            .collect();
        Kind::Intake.all_listed(target.as_ref(), &named)?;
        Kind::Compacted.all_listed(target.as_ref(), &moved_compacted)?;
    }

    if let Some(target_ledger) = &target_ledger {
        let dst = indexed(target_ledger.as_ref())?;
        let mut have = dst.size()?;
        while have < records {
            let end = (have + CHUNK).min(records);
            let chunk = src.entries(have, end)?;
            if chunk.len() as u64 != end - have {
                return Err(Error::Store(StoreError::Corrupt(format!(
                    "the source ledger answered {} records for [{have}, {end})",
                    chunk.len()
                ))));
            }
            target_ledger.append(&chunk)?;
            report.records_copied += end - have;
            have = end;
            progress(&format!(
                "ledger records in the target: {have} of {records}"
            ));
        }
        let (a, b) = (root_at(src, records)?, root_at(dst, records)?);
        if dst.size()? != records || a != b {
            return Err(Error::Store(StoreError::Corrupt(
                "the target ledger's root differs from the source's after the copy".into(),
            )));
        }
        report.root = a;
    } else {
        report.root = root_at(src, records)?;
    }

    // The move is complete and checked: remove the sources.
    if let Some((source, _)) = &batch_stores {
        for b in &moved_batches {
            source.delete(b)?;
        }
        for b in &moved_compacted {
            source.delete_compacted(b)?;
        }
        progress(&format!(
            "batches: {} intake and {} compacted deleted from the source store",
            moved_batches.len(),
            moved_compacted.len()
        ));
    }
    drop(batch_stores);
    drop(target_ledger);
    // The target is complete: the marker goes first, so that a move stopped from here on leaves
    // an intake that serves the new stores (and a run again that finishes what follows).
    std::fs::remove_file(&marker).map_err(Error::io(format!("removing {}", marker.display())))?;
    fsync_dir(&dir)?;
    // The old ledger is put out of reach of a configuration that still names it: a table
    // renamed, a directory renamed. Found empty there, the intake refuses to start rather than
    // serve a second log under the same key.
    if ledger_moves {
        report.old_table = source_ledger.retire(now)?;
        drop(source_ledger);
        if from.storage.ledger == LedgerBackend::File {
            report.old_ledger = retire_local_ledger(&dir, now)?;
        }
    }
    Ok(report)
}

/// Rename a data directory's `ledger/` to `ledger.moved-<now>` once its records live in another
/// store (kept, and out of the way of `[storage] ledger = "file"`, which then finds no ledger
/// and refuses to start). Returns the new path; `None` when there was no `ledger/`.
pub fn retire_local_ledger(dir: &Path, now: i64) -> Result<Option<PathBuf>, Error> {
    let Some(parent) = ledger_path(dir).parent().map(Path::to_path_buf) else {
        return Ok(None);
    };
    if !parent.exists() {
        return Ok(None);
    }
    let moved = dir.join(format!("ledger.moved-{now}"));
    std::fs::rename(&parent, &moved).map_err(Error::io(format!(
        "renaming {} to {}",
        parent.display(),
        moved.display()
    )))?;
    fsync_dir(dir)?;
    Ok(Some(moved))
}
