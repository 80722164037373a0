//! The embedded default's ledger with its indexes on disk: `ledger/ledger.log` stays the ledger
//! (its format unchanged, PROTOCOL.md "Ledger file"), and `ledger/index.redb` (an embedded
//! B-tree store, redb) keeps what the intake would otherwise hold in memory: each record's byte
//! offset in the file, the roots of the perfect Merkle subtrees, and the same indexes the
//! PostgreSQL backend keeps ([`crate::store::Derived`]: idempotency keys, consent records, the
//! latest consents, withdrawals, the batches named).
//!
//! * **Durability is the file's.** An append writes and `fdatasync`s the records first, exactly
//!   as [`LocalLedgerStore`] does, and only then indexes them: the index is derived data.
//!   Index commits are made durable every [`DURABLE_EVERY`] appends (and when the store is
//!   dropped); a crash loses at most those, and the next open indexes them again from the file.
//! * **Open reads the tail only.** The index records how many records it covers and where they
//!   end in the file. At open the last indexed record is read back and its leaf hash compared
//!   with the stored leaf; then only the file beyond it is read (a torn tail is cut off there,
//!   as the ledger file's recovery does) and indexed. An index that does not match its file (a
//!   file shorter than the index says, another last record, an index file deleted) is rebuilt
//!   from the whole file.
//! * A record damaged inside the indexed part is found when it is read (entries, receipts), not
//!   at open: the reader checks each record's stored leaf hash.

use std::collections::HashMap;
use std::io::{Seek as _, SeekFrom};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use datadonor_schemas::ledger::ConsentState;
use datadonor_schemas::merkle::{leaf_hash, root_nodes, Frontier, Hash, NodeId};
use datadonor_schemas::pseudonym::Pseudonym;
use datadonor_schemas::signing::PublicKey;
use redb::{Database, Durability, ReadableDatabase as _, ReadableTable as _, TableDefinition};

use crate::ledger::{DonationRecord, WithdrawalRecord};
use crate::store::{
    Derived, Found, IndexedLedger, LedgerRecords, LedgerStore, LocalLedgerStore, Lookup, StoreError,
};

/// Index commits between two durable ones.
pub const DURABLE_EVERY: u32 = 64;
/// The index's page cache: the intake's memory does not grow with the ledger beyond it.
pub const CACHE_BYTES: usize = 32 << 20;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const OFFSETS: TableDefinition<u64, u64> = TableDefinition::new("offsets");
const NODES: TableDefinition<(u32, u64), [u8; 32]> = TableDefinition::new("nodes");
const DONATIONS: TableDefinition<[u8; 16], ([u8; 32], u64, u64)> =
    TableDefinition::new("donations");
const CONSENT_RECORDS: TableDefinition<(&str, [u8; 16]), [u8; 32]> =
    TableDefinition::new("consent_records");
/// A stored consent: (record, donor key, expires at, withdrawn at, purposes as JSON).
type StoredConsent = ([u8; 16], [u8; 32], i64, Option<i64>, &'static str);
/// (study, pseudonym) → the latest consent.
const CONSENTS: TableDefinition<(&str, [u8; 32]), StoredConsent> = TableDefinition::new("consents");
const WITHDRAWALS: TableDefinition<[u8; 32], (u64, u64)> = TableDefinition::new("withdrawals");
const BATCHES: TableDefinition<(&str, &str), ()> = TableDefinition::new("batches");

/// Records indexed, and the file offset where they end.
const COUNT: &str = "count";
const END: &str = "end";

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Remote {
        backend: "ledger index",
        message: e.to_string(),
    }
}

/// The index file beside a ledger file.
pub fn index_path(ledger: &Path) -> PathBuf {
    ledger.with_file_name("index.redb")
}

#[derive(Debug)]
struct Tail {
    count: u64,
    end: u64,
    frontier: Frontier,
    since_durable: u32,
    /// An index write failed after its records were durable: no more appends until reopened.
    broken: bool,
}

/// The ledger file with its indexes in `index.redb`.
pub struct IndexedLocalLedger {
    log: LocalLedgerStore,
    path: PathBuf,
    reader: std::fs::File,
    db: Database,
    tail: Mutex<Tail>,
}

impl std::fmt::Debug for IndexedLocalLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexedLocalLedger")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The encoded length of a record of `entry_len` bytes (length, bytes, leaf hash).
fn record_len(entry_len: usize) -> u64 {
    entry_len as u64 + 4 + 32
}

impl IndexedLocalLedger {
    /// Open the ledger file and its index, and bring the index up to the file (see the module
    /// documentation).
    pub fn open(ledger: &Path) -> Result<Self, StoreError> {
        let log = LocalLedgerStore::open(ledger)?;
        let io = |e: std::io::Error| StoreError::Io {
            path: ledger.to_path_buf(),
            source: e,
        };
        let reader = std::fs::File::open(ledger).map_err(io)?;
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(index_path(ledger))
            .map_err(db_err)?;
        let store = Self {
            log,
            path: ledger.to_path_buf(),
            reader,
            db,
            tail: Mutex::new(Tail {
                count: 0,
                end: 0,
                frontier: Frontier::new(),
                since_durable: 0,
                broken: false,
            }),
        };
        store.catch_up()?;
        Ok(store)
    }

    fn meta(&self) -> Result<(u64, u64), StoreError> {
        let r = self.db.begin_read().map_err(db_err)?;
        let t = match r.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok((0, 0)),
            Err(e) => return Err(db_err(e)),
        };
        let get = |k: &str| -> Result<u64, StoreError> {
            Ok(t.get(k).map_err(db_err)?.map_or(0, |v| v.value()))
        };
        Ok((get(COUNT)?, get(END)?))
    }

    /// Whether the index's last record is the file's record at the same place.
    fn matches_file(&self, count: u64, end: u64) -> Result<bool, StoreError> {
        if count == 0 {
            return Ok(end == 0);
        }
        let len = self.reader.metadata().map_err(|e| self.io(e))?.len();
        if len < end {
            return Ok(false);
        }
        let Some(start) = self.offset(count - 1)? else {
            return Ok(false);
        };
        let Some(leaf) = self.nodes(&[(0, count - 1)])?.remove(&(0, count - 1)) else {
            return Ok(false);
        };
        let Ok(records) = self.read_range(start, end, 1) else {
            return Ok(false);
        };
        Ok(records.first().map(|r| leaf_hash(r)) == Some(leaf))
    }

    fn io(&self, e: std::io::Error) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            source: e,
        }
    }

    fn offset(&self, idx: u64) -> Result<Option<u64>, StoreError> {
        let r = self.db.begin_read().map_err(db_err)?;
        let t = match r.open_table(OFFSETS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err(e)),
        };
        let v = t.get(idx).map_err(db_err)?.map(|v| v.value());
        Ok(v)
    }

    /// Records in the file's bytes `[start, end)`, exactly `n` of them, each checked against
    /// its stored leaf hash.
    fn read_range(&self, start: u64, end: u64, n: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        let len = usize::try_from(end.saturating_sub(start))
            .map_err(|_| StoreError::Corrupt("ledger range too large".into()))?;
        let mut buf = vec![0u8; len];
        self.reader
            .read_exact_at(&mut buf, start)
            .map_err(|e| self.io(e))?;
        let d = datadonor_schemas::ledger::decode_ledger_records(&buf);
        if d.valid_len != buf.len() || d.entries.len() as u64 != n {
            return Err(StoreError::Corrupt(format!(
                "{}: the records at bytes {start}..{end} are damaged",
                self.path.display()
            )));
        }
        Ok(d.entries.into_iter().map(<[u8]>::to_vec).collect())
    }

    /// Check the index against the file, rebuild it if they differ, and index the file's tail.
    fn catch_up(&self) -> Result<(), StoreError> {
        let (mut count, mut end) = self.meta()?;
        if !self.matches_file(count, end)? {
            if count > 0 {
                tracing::warn!(
                    indexed = count,
                    "ledger index does not match the ledger file: rebuilding it"
                );
            }
            let w = self.db.begin_write().map_err(db_err)?;
            for t in [
                "meta",
                "offsets",
                "nodes",
                "donations",
                "consent_records",
                "consents",
                "withdrawals",
                "batches",
            ] {
                // Only the name is used to delete a table, whatever its types.
                let def: TableDefinition<u64, u64> = TableDefinition::new(t);
                w.delete_table(def).map_err(db_err)?;
            }
            w.commit().map_err(db_err)?;
            (count, end) = (0, 0);
        }
        let frontier = Frontier::from_nodes(&self.nodes(&root_nodes(count))?, count)
            .map_err(|e| StoreError::Corrupt(format!("ledger index: the tree's edge: {e}")))?;
        // The file beyond the index, in chunks, a torn tail cut off as the file's recovery does.
        let mut f = self.reader.try_clone().map_err(|e| self.io(e))?;
        f.seek(SeekFrom::Start(end)).map_err(|e| self.io(e))?;
        let (records, valid, len) =
            crate::store::read_records(&mut f, 1 << 20).map_err(|e| self.io(e))?;
        // `valid` and `len` count from `end`.
        if valid < len {
            tracing::warn!(
                dropped_bytes = len - valid,
                "ledger: truncating a torn or corrupt tail"
            );
            self.log.truncate(end + valid)?;
        }
        let mut tail = Tail {
            count,
            end,
            frontier,
            since_durable: 0,
            broken: false,
        };
        if !records.is_empty() {
            tracing::info!(
                records = records.len(),
                from = count,
                "indexing the ledger file's tail"
            );
            self.index(&mut tail, records.entries(), Durability::Immediate)?;
        }
        *self.tail.lock().map_err(|_| StoreError::Poisoned)? = tail;
        Ok(())
    }

    /// Index durable records that start at `tail.end`, advancing `tail`.
    fn index(
        &self,
        tail: &mut Tail,
        entries: &[Vec<u8>],
        durability: Durability,
    ) -> Result<(), StoreError> {
        let n = entries.len() as u64;
        let d = Derived::new(entries, tail.count, tail.count + n, tail.frontier.clone());
        let mut w = self.db.begin_write().map_err(db_err)?;
        w.set_durability(durability).map_err(db_err)?;
        let mut end = tail.end;
        {
            let mut offsets = w.open_table(OFFSETS).map_err(db_err)?;
            for (i, e) in entries.iter().enumerate() {
                offsets.insert(tail.count + i as u64, end).map_err(db_err)?;
                end += record_len(e.len());
            }
            let mut nodes = w.open_table(NODES).map_err(db_err)?;
            for ((h, p), hash) in &d.nodes {
                nodes.insert((*h, *p), hash.0).map_err(db_err)?;
            }
            let mut t = w.open_table(DONATIONS).map_err(db_err)?;
            for (k, env, idx) in &d.donations {
                t.insert(*k, (*env, *idx, d.receipt_size)).map_err(db_err)?;
            }
            let mut t = w.open_table(CONSENT_RECORDS).map_err(db_err)?;
            for (study, rec, man) in &d.consent_records {
                t.insert((study.as_str(), *rec), *man).map_err(db_err)?;
            }
            let mut t = w.open_table(CONSENTS).map_err(db_err)?;
            for ((study, p), c) in &d.grants {
                let purposes = serde_json::to_string(&c.purposes).map_err(db_err)?;
                t.insert(
                    (study.as_str(), p.0),
                    (
                        c.consent_record_id,
                        c.donor_public_key.0,
                        c.expires_at,
                        c.withdrawn_at,
                        purposes.as_str(),
                    ),
                )
                .map_err(db_err)?;
            }
            for (study, p, rec, time) in &d.withdraw_earlier {
                let current = t.get((study.as_str(), *p)).map_err(db_err)?.map(|v| {
                    let (r, k, exp, wd, purposes) = v.value();
                    (r, k, exp, wd, purposes.to_string())
                });
                if let Some((r, k, exp, None, purposes)) = current {
                    if r == *rec {
                        t.insert(
                            (study.as_str(), *p),
                            (r, k, exp, Some(*time), purposes.as_str()),
                        )
                        .map_err(db_err)?;
                    }
                }
            }
            let mut t = w.open_table(WITHDRAWALS).map_err(db_err)?;
            for (sha, idx) in &d.withdrawals {
                t.insert(*sha, (*idx, d.receipt_size)).map_err(db_err)?;
            }
            let mut t = w.open_table(BATCHES).map_err(db_err)?;
            for (study, batch) in &d.batches {
                t.insert((study.as_str(), batch.as_str()), ())
                    .map_err(db_err)?;
            }
            let mut meta = w.open_table(META).map_err(db_err)?;
            meta.insert(COUNT, tail.count + n).map_err(db_err)?;
            meta.insert(END, end).map_err(db_err)?;
        }
        w.commit().map_err(db_err)?;
        tail.count += n;
        tail.end = end;
        tail.frontier = d.frontier;
        tail.since_durable = match durability {
            Durability::Immediate => 0,
            _ => tail.since_durable + 1,
        };
        Ok(())
    }
}

impl Drop for IndexedLocalLedger {
    fn drop(&mut self) {
        // Make the last index commits durable, so the next open has no tail to index.
        if let Ok(mut w) = self.db.begin_write() {
            if w.set_durability(Durability::Immediate).is_ok() {
                let _ = w.commit();
            }
        }
    }
}

impl LedgerStore for IndexedLocalLedger {
    fn recover(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        self.log.recover()
    }

    fn recover_records(&self) -> Result<LedgerRecords, StoreError> {
        self.log.recover_records()
    }

    fn append(&self, entries: &[Vec<u8>]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut tail = self.tail.lock().map_err(|_| StoreError::Poisoned)?;
        if tail.broken {
            return Err(StoreError::Poisoned);
        }
        self.log.append(entries)?;
        let durability = if tail.since_durable + 1 >= DURABLE_EVERY {
            Durability::Immediate
        } else {
            Durability::None
        };
        if let Err(e) = self.index(&mut tail, entries, durability) {
            // The records are durable; the index is behind them until the next open.
            tail.broken = true;
            return Err(e);
        }
        Ok(())
    }

    fn as_indexed(&self) -> Option<&dyn IndexedLedger> {
        Some(self)
    }
}

fn get_or_none<K, V, T>(
    t: &Result<redb::ReadOnlyTable<K, V>, redb::TableError>,
    key: K::SelfType<'_>,
    f: impl FnOnce(V::SelfType<'_>) -> T,
) -> Result<Option<T>, StoreError>
where
    K: redb::Key + 'static,
    V: redb::Value + 'static,
{
    match t {
        Ok(t) => Ok(t.get(key).map_err(db_err)?.map(|v| f(v.value()))),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(db_err(e)),
    }
}

impl IndexedLedger for IndexedLocalLedger {
    fn size(&self) -> Result<u64, StoreError> {
        Ok(self.tail.lock().map_err(|_| StoreError::Poisoned)?.count)
    }

    fn lookup(&self, q: &Lookup) -> Result<Found, StoreError> {
        let r = self.db.begin_read().map_err(db_err)?;
        let mut found = Found::default();
        let t = r.open_table(DONATIONS);
        for k in &q.donations {
            if let Some((env, idx, size)) = get_or_none(&t, *k, |v| v)? {
                found.donations.push((
                    *k,
                    DonationRecord {
                        envelope_sha256: env,
                        ledger_index: idx,
                        receipt_size: size,
                    },
                ));
            }
        }
        let t = r.open_table(CONSENT_RECORDS);
        for (study, rec) in &q.consent_records {
            if let Some(h) = get_or_none(&t, (study.as_str(), *rec), |v| v)? {
                found.consent_records.push(((study.clone(), *rec), h));
            }
        }
        let t = r.open_table(CONSENTS);
        for (study, p) in &q.consents {
            let got = get_or_none(&t, (study.as_str(), p.0), |(r, k, exp, wd, purposes)| {
                (r, k, exp, wd, purposes.to_string())
            })?;
            if let Some((rec, key, expires_at, withdrawn_at, purposes)) = got {
                found.consents.push((
                    (study.clone(), Pseudonym(p.0)),
                    ConsentState {
                        purposes: serde_json::from_str(&purposes).map_err(|_| {
                            StoreError::Corrupt("ledger index: purposes that do not parse".into())
                        })?,
                        expires_at,
                        withdrawn_at,
                        donor_public_key: PublicKey(key),
                        consent_record_id: rec,
                    },
                ));
            }
        }
        let t = r.open_table(WITHDRAWALS);
        for sha in &q.withdrawals {
            if let Some((idx, size)) = get_or_none(&t, *sha, |v| v)? {
                found.withdrawals.push((
                    *sha,
                    WithdrawalRecord {
                        ledger_index: idx,
                        receipt_size: size,
                    },
                ));
            }
        }
        Ok(found)
    }

    fn entries(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        let (count, file_end) = {
            let t = self.tail.lock().map_err(|_| StoreError::Poisoned)?;
            (t.count, t.end)
        };
        if start > end || end > count {
            return Err(StoreError::Corrupt(format!(
                "{}: no records [{start}, {end}) in {count}",
                self.path.display()
            )));
        }
        if start == end {
            return Ok(Vec::new());
        }
        let from = self
            .offset(start)?
            .ok_or_else(|| StoreError::Corrupt(format!("ledger index: no offset of {start}")))?;
        let to = if end == count {
            file_end
        } else {
            self.offset(end)?
                .ok_or_else(|| StoreError::Corrupt(format!("ledger index: no offset of {end}")))?
        };
        self.read_range(from, to, end - start)
    }

    fn nodes(&self, ids: &[NodeId]) -> Result<HashMap<NodeId, Hash>, StoreError> {
        let r = self.db.begin_read().map_err(db_err)?;
        let t = r.open_table(NODES);
        let mut out = HashMap::with_capacity(ids.len());
        for id in ids {
            if let Some(h) = get_or_none(&t, *id, |v| v)? {
                out.insert(*id, Hash(h));
            }
        }
        Ok(out)
    }

    fn names_batch(&self, study: &str, batch_hex: &str) -> Result<bool, StoreError> {
        let r = self.db.begin_read().map_err(db_err)?;
        let t = r.open_table(BATCHES);
        Ok(get_or_none(&t, (study, batch_hex), |_| ())?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::encode_record;

    #[test]
    fn record_lengths_are_the_encoded_ones() {
        for n in [0usize, 1, 100, 5000] {
            let mut out = Vec::new();
            encode_record(&vec![7u8; n], &mut out);
            assert_eq!(out.len() as u64, record_len(n));
        }
    }
}
