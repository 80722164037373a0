//! The consent ledger in PostgreSQL (`[storage] ledger = "postgres"`).
//!
//! One table, `(idx bigint primary key, record bytea not null)`: row `i` is ledger entry `i`.
//!
//! * [`LedgerStore::append`] writes all records of the call in one transaction, with
//!   `synchronous_commit = on` set for the session, and returns only after `COMMIT` succeeded:
//!   the server has flushed the commit record to its write-ahead log (and, with synchronous
//!   standbys configured, to them), so an acknowledged record survives a crash of the server.
//! * The primary key refuses an index that exists. A second writer that recovered the same
//!   ledger and appends gets [`StoreError::Conflict`] and writes nothing: two writers never both
//!   succeed, so the ledger cannot fork silently.
//! * A session-level advisory lock, taken when the store is opened and held for the life of the
//!   connection, refuses a second intake on the same table ([`StoreError::Locked`]); the server
//!   releases it when the connection ends, a killed process included.
//! * [`LedgerStore::recover`] reads every row in index order and checks that the indexes are
//!   `0..n`. A transaction is atomic, so there is no torn tail to remove.
//! * **Indexes and Merkle nodes in the database** ([`IndexedLedger`]): in the same transaction as
//!   the records, each append writes the roots of the perfect Merkle subtrees the new leaves
//!   complete (`<table>_nodes`, so a proof is O(log n) rows read) and the indexes derived from
//!   the entries that parse as ledger entries: idempotency keys (`<table>_donations`, primary
//!   key), consent records (`<table>_consent_records`, primary key (study, record)), the latest
//!   consent per (study, pseudonym) (`<table>_consents`), withdrawals (`<table>_withdrawals`) and
//!   the batches named (`<table>_batches`). The intake then asks them one group at a time and
//!   keeps none of them in memory. A table an older intake wrote without them is indexed at
//!   open, 10,000 records per transaction.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::HashMap;

use datadonor_schemas::ledger::ConsentState;
use datadonor_schemas::merkle::{root_nodes, Frontier, Hash, NodeId};
use datadonor_schemas::pseudonym::Pseudonym;
use datadonor_schemas::study::StudyId;
use tokio::sync::Mutex;

use crate::ledger::{DonationRecord, WithdrawalRecord};
use crate::store::{
    BackendRuntime, Derived, Found, IndexedLedger, LedgerStore, Lookup, StoreError,
};

/// Records indexed per transaction when a table written without indexes is opened.
const BACKFILL_PAGE: i64 = 10_000;

/// How long opening waits for the advisory lock by default: a previous connection of this
/// process (or of one that was killed) may still be ending on the server.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(10);

/// Where and how to connect.
#[derive(Clone)]
pub struct PgOptions {
    /// A libpq-style connection string or URL (`postgres://user:pass@host:port/db?sslmode=...`).
    pub url: String,
    /// The table (created if missing); a plain SQL identifier.
    pub table: String,
    /// PEM file of the CA the server's certificate chains to: TLS is then used as the URL's
    /// `sslmode` asks (`require` refuses a server without TLS). Without it, no TLS.
    pub ca_cert: Option<std::path::PathBuf>,
    /// How long opening waits for another connection to release the table's lock.
    pub lock_wait: Duration,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &redact_url(&self.url))
            .field("table", &self.table)
            .field("ca_cert", &self.ca_cert)
            .field("lock_wait", &self.lock_wait)
            .finish()
    }
}

/// A connection string with any password replaced by `***` (URL and key=value forms).
pub fn redact_url(url: &str) -> String {
    if let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    {
        let scheme = &url[..url.len() - rest.len()];
        let (authority, tail) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let authority = match authority.rfind('@') {
            Some(at) => {
                let (userinfo, host) = authority.split_at(at);
                match userinfo.find(':') {
                    Some(c) => format!("{}:***{host}", &userinfo[..c]),
                    None => authority.to_string(),
                }
            }
            None => authority.to_string(),
        };
        let tail = match tail.split_once('?') {
            Some((path, query)) => format!("{path}?{}", redact_kv_password(query, '&')),
            None => tail.to_string(),
        };
        return format!("{scheme}{authority}{tail}");
    }
    redact_kv_password(url, ' ')
}

fn redact_kv_password(s: &str, sep: char) -> String {
    s.split(sep)
        .map(|part| {
            if part.to_ascii_lowercase().starts_with("password=") {
                "password=***".to_string()
            } else {
                part.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(&sep.to_string())
}

fn pg(e: &tokio_postgres::Error) -> StoreError {
    // tokio-postgres errors carry the server's message, never the connection string.
    let message = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    };
    StoreError::Remote {
        backend: "postgres",
        message,
    }
}

/// The ledger in a PostgreSQL table.
pub struct PgLedgerStore {
    rt: BackendRuntime,
    client: Arc<Mutex<tokio_postgres::Client>>,
    table: String,
    /// The next index to write: set at open, advanced by each successful append.
    next: std::sync::Mutex<Option<i64>>,
    /// The Merkle tree's right edge at `next`, advanced by each successful append.
    frontier: std::sync::Mutex<Frontier>,
}

impl std::fmt::Debug for PgLedgerStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLedgerStore")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// Longest ledger table name: the index tables add up to 16 characters, within PostgreSQL's 63.
pub const MAX_TABLE_LEN: usize = 47;

/// Longest name of a moved ledger's table (see [`PgLedgerStore::retire`]): with
/// `_consent_records_pkey` after it, PostgreSQL's 63 bytes.
const RETIRED_TABLE_LEN: usize = 63 - "_consent_records_pkey".len();

/// The ledger's tables: `<table>` and the index tables after it.
const TABLE_SUFFIXES: [&str; 7] = [
    "",
    "_nodes",
    "_donations",
    "_consent_records",
    "_consents",
    "_withdrawals",
    "_batches",
];

fn valid_identifier(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= MAX_TABLE_LEN
        && t.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && t.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The advisory lock key of a table: the first 8 bytes of SHA-256 of its name.
fn lock_key(table: &str) -> i64 {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("datadonor-ledger/{table}").as_bytes(),
    );
    let mut k = [0u8; 8];
    k.copy_from_slice(&d.as_ref()[..8]);
    i64::from_be_bytes(k)
}

fn tls_connector(
    ca: &std::path::Path,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let bad = |m: String| StoreError::Remote {
        backend: "postgres",
        message: m,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs =
        CertificateDer::pem_file_iter(ca).map_err(|e| bad(format!("{}: {e}", ca.display())))?;
    for c in certs {
        let c = c.map_err(|e| bad(format!("{}: {e}", ca.display())))?;
        roots
            .add(c)
            .map_err(|e| bad(format!("{}: {e}", ca.display())))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

impl PgLedgerStore {
    /// Connect, create the table if missing, and take the table's advisory lock (waiting up to
    /// `lock_wait` for a connection that is ending to release it).
    pub fn open(opts: &PgOptions) -> Result<Self, StoreError> {
        if !valid_identifier(&opts.table) {
            return Err(StoreError::Remote {
                backend: "postgres",
                message: format!(
                    "the table name must be a lower-case SQL identifier of at most {MAX_TABLE_LEN} characters"
                ),
            });
        }
        let rt = BackendRuntime::new("postgres")?;
        let url = opts.url.clone();
        let tls = opts.ca_cert.as_deref().map(tls_connector).transpose()?;
        let client = rt.run(async move {
            let client = match tls {
                Some(tls) => {
                    let (client, conn) = tokio_postgres::connect(&url, tls).await?;
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::error!(error = %e, "postgres ledger connection ended");
                        }
                    });
                    client
                }
                None => {
                    let (client, conn) =
                        tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::error!(error = %e, "postgres ledger connection ended");
                        }
                    });
                    client
                }
            };
            Ok::<_, tokio_postgres::Error>(client)
        })?;
        let client = client.map_err(|e| pg(&e))?;
        let table = opts.table.clone();
        let key = lock_key(&table);
        let lock_wait = opts.lock_wait;
        let c = Arc::new(Mutex::new(client));
        let c2 = c.clone();
        let t2 = table.clone();
        let locked = rt.run(async move {
            let client = c2.lock().await;
            // Acknowledged means durable: whatever the server's default, this session's
            // commits wait for the WAL flush.
            client
                .batch_execute(&format!(
                    "SET synchronous_commit = on;
                     CREATE TABLE IF NOT EXISTS {t2} (idx bigint PRIMARY KEY, record bytea NOT NULL);
                     CREATE TABLE IF NOT EXISTS {t2}_nodes (height smallint, pos bigint,
                         hash bytea NOT NULL, PRIMARY KEY (height, pos));
                     CREATE TABLE IF NOT EXISTS {t2}_donations (idempotency_key bytea PRIMARY KEY,
                         envelope_sha256 bytea NOT NULL, idx bigint NOT NULL,
                         receipt_size bigint NOT NULL);
                     CREATE TABLE IF NOT EXISTS {t2}_consent_records (study text, record_id bytea,
                         manifest_sha256 bytea NOT NULL, PRIMARY KEY (study, record_id));
                     CREATE TABLE IF NOT EXISTS {t2}_consents (study text, pseudonym bytea,
                         record_id bytea NOT NULL, donor_key bytea NOT NULL, purposes text NOT NULL,
                         expires_at bigint NOT NULL, withdrawn_at bigint,
                         PRIMARY KEY (study, pseudonym));
                     CREATE TABLE IF NOT EXISTS {t2}_withdrawals (sha256 bytea PRIMARY KEY,
                         idx bigint NOT NULL, receipt_size bigint NOT NULL);
                     CREATE TABLE IF NOT EXISTS {t2}_batches (study text, batch_id text,
                         PRIMARY KEY (study, batch_id));"
                ))
                .await?;
            let deadline = Instant::now() + lock_wait;
            loop {
                let row = client
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                    .await?;
                if row.get::<_, bool>(0) {
                    return Ok(true);
                }
                if Instant::now() >= deadline {
                    return Ok(false);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })?;
        match locked {
            Ok(true) => {}
            Ok(false) => return Err(StoreError::Locked(format!("postgres table {table}"))),
            Err(e) => {
                // A concurrent CREATE TABLE IF NOT EXISTS can lose a race on the catalog:
                // report it as it is; a restart succeeds.
                return Err(pg(&e));
            }
        }
        let store = Self {
            rt,
            client: c,
            table,
            next: std::sync::Mutex::new(None),
            frontier: std::sync::Mutex::new(Frontier::new()),
        };
        store.index_backlog()?;
        Ok(store)
    }

    /// After `migrate` has moved this ledger elsewhere: rename its tables (and their primary-key
    /// indexes, found by name in the catalog) to `<table>_moved_<now>`, in one transaction, so
    /// that a configuration still naming `<table>` finds no ledger (and refuses to serve an empty
    /// one) instead of serving the old log next to the new, and the name is free to be used
    /// again. The table name is cut so that every renamed table and index fits PostgreSQL's
    /// identifier limit. Returns the new name.
    pub fn retire(&self, now: i64) -> Result<String, StoreError> {
        let tag = format!("_moved_{now}");
        // The longest suffix ("_consent_records") and "_pkey" after the new name: 63 bytes.
        let keep = RETIRED_TABLE_LEN.saturating_sub(tag.len());
        let new = format!("{}{tag}", &self.table[..self.table.len().min(keep)]);
        if new.len() > RETIRED_TABLE_LEN || !valid_identifier(&new) {
            return Err(StoreError::Remote {
                backend: "postgres",
                message: format!("cannot name the moved ledger table after {now}"),
            });
        }
        let (c, table, to) = (self.client.clone(), self.table.clone(), new.clone());
        self.rt
            .run(async move {
                let mut client = c.lock().await;
                let tx = client.transaction().await?;
                for suffix in TABLE_SUFFIXES {
                    let (old, renamed) = (format!("{table}{suffix}"), format!("{to}{suffix}"));
                    let keys = tx
                        .query(
                            "SELECT c.relname::text FROM pg_index i \
                             JOIN pg_class c ON c.oid = i.indexrelid \
                             WHERE i.indrelid = $1::text::regclass AND i.indisprimary",
                            &[&old],
                        )
                        .await?;
                    tx.batch_execute(&format!("ALTER TABLE {old} RENAME TO {renamed}"))
                        .await?;
                    for k in keys {
                        let key: String = k.try_get(0)?;
                        tx.batch_execute(&format!(
                            "ALTER INDEX \"{}\" RENAME TO {renamed}_pkey",
                            key.replace('"', "\"\"")
                        ))
                        .await?;
                    }
                }
                tx.commit().await
            })?
            .map_err(|e| pg(&e))?;
        Ok(new)
    }

    /// Index the records an older intake wrote without indexes (none for a table this one
    /// writes), then load the tree's right edge.
    fn index_backlog(&self) -> Result<(), StoreError> {
        let size = self.next_index()?;
        let t = self.table.clone();
        let indexed: i64 = self.query_one(
            format!("SELECT COALESCE(MAX(pos) + 1, 0) FROM {t}_nodes WHERE height = 0"),
            |row| row.try_get(0),
        )?;
        let mut frontier = self.load_frontier(indexed)?;
        let mut at = indexed;
        while at < size {
            let (c, t2) = (self.client.clone(), t.clone());
            let (from, f) = (at, frontier.clone());
            let (f, n) = self
                .rt
                .run(async move {
                    let mut client = c.lock().await;
                    let tx = client.transaction().await?;
                    let rows = tx
                        .query(
                            &format!(
                                "SELECT record FROM {t2} WHERE idx >= $1 ORDER BY idx LIMIT $2"
                            ),
                            &[&from, &BACKFILL_PAGE],
                        )
                        .await?;
                    let records: Vec<Vec<u8>> = rows
                        .iter()
                        .map(|r| r.try_get(0))
                        .collect::<Result<_, _>>()?;
                    let n = i64::try_from(records.len()).unwrap_or(0);
                    let rows = IndexRows::derive(&records, from, from + n, f);
                    rows.write(&tx, &t2).await?;
                    tx.commit().await?;
                    Ok::<_, tokio_postgres::Error>((rows.0.frontier, n))
                })?
                .map_err(|e| pg(&e))?;
            if n == 0 {
                return Err(StoreError::Corrupt(format!(
                    "postgres table {t}: no record at index {at}"
                )));
            }
            frontier = f;
            at += n;
            tracing::info!(indexed = at, of = size, "indexing the postgres ledger");
        }
        *self.frontier.lock().map_err(|_| StoreError::Poisoned)? = frontier;
        Ok(())
    }

    fn load_frontier(&self, size: i64) -> Result<Frontier, StoreError> {
        let size = u64::try_from(size).map_err(|_| StoreError::Corrupt("negative size".into()))?;
        let nodes = self.nodes(&root_nodes(size))?;
        Frontier::from_nodes(&nodes, size).map_err(|e| {
            StoreError::Corrupt(format!(
                "postgres table {}_nodes: the tree's edge at {size}: {e}",
                self.table
            ))
        })
    }

    fn query_one<T: Send + 'static>(
        &self,
        sql: String,
        get: impl FnOnce(&tokio_postgres::Row) -> Result<T, tokio_postgres::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let c = self.client.clone();
        self.rt
            .run(async move {
                let client = c.lock().await;
                let row = client.query_one(&sql, &[]).await?;
                get(&row)
            })?
            .map_err(|e| pg(&e))
    }

    fn next_index(&self) -> Result<i64, StoreError> {
        if let Some(n) = *self.next.lock().map_err(|_| StoreError::Poisoned)? {
            return Ok(n);
        }
        let c = self.client.clone();
        let sql = format!("SELECT COALESCE(MAX(idx) + 1, 0) FROM {}", self.table);
        let n = self
            .rt
            .run(async move {
                let client = c.lock().await;
                let row = client.query_one(&sql, &[]).await?;
                Ok::<i64, tokio_postgres::Error>(row.get(0))
            })?
            .map_err(|e| pg(&e))?;
        *self.next.lock().map_err(|_| StoreError::Poisoned)? = Some(n);
        Ok(n)
    }
}

/// The rows one append adds to the index tables ([`Derived`] from its records).
struct IndexRows(Derived);

impl IndexRows {
    fn derive(records: &[Vec<u8>], first: i64, receipt_size: i64, frontier: Frontier) -> Self {
        Self(Derived::new(
            records,
            u64::try_from(first).unwrap_or(0),
            u64::try_from(receipt_size).unwrap_or(0),
            frontier,
        ))
    }

    /// Write the rows (inside the append's transaction). The statements are sent together
    /// (tokio-postgres pipelines futures polled at once), so a group costs one round trip to
    /// the server, not one per table.
    async fn write(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        t: &str,
    ) -> Result<(), tokio_postgres::Error> {
        type Pending<'a> = std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a>,
        >;
        let d = &self.0;
        let big = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let receipt_size = big(d.receipt_size);
        let height: Vec<i16> = d
            .nodes
            .iter()
            .map(|((h, _), _)| i16::try_from(*h).unwrap_or(i16::MAX))
            .collect();
        let pos: Vec<i64> = d.nodes.iter().map(|((_, p), _)| big(*p)).collect();
        let hash: Vec<&[u8]> = d.nodes.iter().map(|(_, h)| &h.0[..]).collect();
        let don_key: Vec<&[u8]> = d.donations.iter().map(|x| &x.0[..]).collect();
        let don_env: Vec<&[u8]> = d.donations.iter().map(|x| &x.1[..]).collect();
        let don_idx: Vec<i64> = d.donations.iter().map(|x| big(x.2)).collect();
        let don_sizes = vec![receipt_size; don_key.len()];
        let rec_study: Vec<&str> = d.consent_records.iter().map(|x| x.0.as_str()).collect();
        let rec_id: Vec<&[u8]> = d.consent_records.iter().map(|x| &x.1[..]).collect();
        let rec_man: Vec<&[u8]> = d.consent_records.iter().map(|x| &x.2[..]).collect();
        let mut g_study = Vec::new();
        let mut g_pseudonym = Vec::new();
        let mut g_record = Vec::new();
        let mut g_donor = Vec::new();
        let mut g_purposes = Vec::new();
        let mut g_expires = Vec::new();
        let mut g_withdrawn: Vec<Option<i64>> = Vec::new();
        for ((st, p), c) in &d.grants {
            g_study.push(st.as_str());
            g_pseudonym.push(&p.0[..]);
            g_record.push(&c.consent_record_id[..]);
            g_donor.push(&c.donor_public_key.0[..]);
            g_purposes.push(serde_json::to_string(&c.purposes).unwrap_or_default());
            g_expires.push(c.expires_at);
            g_withdrawn.push(c.withdrawn_at);
        }
        let w_study: Vec<&str> = d.withdraw_earlier.iter().map(|w| w.0.as_str()).collect();
        let w_pseudonym: Vec<&[u8]> = d.withdraw_earlier.iter().map(|w| &w.1[..]).collect();
        let w_record: Vec<&[u8]> = d.withdraw_earlier.iter().map(|w| &w.2[..]).collect();
        let w_time: Vec<i64> = d.withdraw_earlier.iter().map(|w| w.3).collect();
        let wd_sha: Vec<&[u8]> = d.withdrawals.iter().map(|w| &w.0[..]).collect();
        let wd_idx: Vec<i64> = d.withdrawals.iter().map(|w| big(w.1)).collect();
        let wd_sizes = vec![receipt_size; wd_sha.len()];
        let (b_study, b_batch): (Vec<&str>, Vec<&str>) = d
            .batches
            .iter()
            .map(|(s, b)| (s.as_str(), b.as_str()))
            .unzip();
        let sql = [
            format!(
                "INSERT INTO {t}_nodes (height, pos, hash)
                 SELECT * FROM unnest($1::smallint[], $2::bigint[], $3::bytea[])"
            ),
            format!(
                "INSERT INTO {t}_donations (idempotency_key, envelope_sha256, idx, receipt_size)
                 SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::bigint[], $4::bigint[])"
            ),
            format!(
                "INSERT INTO {t}_consent_records (study, record_id, manifest_sha256)
                 SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[])"
            ),
            format!(
                "INSERT INTO {t}_consents
                     (study, pseudonym, record_id, donor_key, purposes, expires_at, withdrawn_at)
                 SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::bytea[],
                     $5::text[], $6::bigint[], $7::bigint[])
                 ON CONFLICT (study, pseudonym) DO UPDATE SET record_id = EXCLUDED.record_id,
                     donor_key = EXCLUDED.donor_key, purposes = EXCLUDED.purposes,
                     expires_at = EXCLUDED.expires_at, withdrawn_at = EXCLUDED.withdrawn_at"
            ),
            format!(
                "UPDATE {t}_consents c SET withdrawn_at = COALESCE(c.withdrawn_at, u.t)
                 FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::bigint[])
                     AS u(study, pseudonym, record_id, t)
                 WHERE c.study = u.study AND c.pseudonym = u.pseudonym
                     AND c.record_id = u.record_id"
            ),
            format!(
                "INSERT INTO {t}_withdrawals (sha256, idx, receipt_size)
                 SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::bigint[])"
            ),
            format!(
                "INSERT INTO {t}_batches (study, batch_id)
                 SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING"
            ),
        ];
        // The grants' upsert and the earlier consents' withdrawals touch different keys (a
        // withdrawal of a consent granted in this append is folded into its grant), so their
        // order does not matter.
        type Param<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);
        let p_nodes: [Param<'_>; 3] = [&height, &pos, &hash];
        let p_don: [Param<'_>; 4] = [&don_key, &don_env, &don_idx, &don_sizes];
        let p_rec: [Param<'_>; 3] = [&rec_study, &rec_id, &rec_man];
        let p_grant: [Param<'_>; 7] = [
            &g_study,
            &g_pseudonym,
            &g_record,
            &g_donor,
            &g_purposes,
            &g_expires,
            &g_withdrawn,
        ];
        let p_withdraw: [Param<'_>; 4] = [&w_study, &w_pseudonym, &w_record, &w_time];
        let p_wd: [Param<'_>; 3] = [&wd_sha, &wd_idx, &wd_sizes];
        let p_batches: [Param<'_>; 2] = [&b_study, &b_batch];
        let mut pending: Vec<Pending<'_>> = vec![Box::pin(tx.execute(&sql[0], &p_nodes))];
        if !don_key.is_empty() {
            pending.push(Box::pin(tx.execute(&sql[1], &p_don)));
        }
        if !rec_id.is_empty() {
            pending.push(Box::pin(tx.execute(&sql[2], &p_rec)));
        }
        if !g_study.is_empty() {
            pending.push(Box::pin(tx.execute(&sql[3], &p_grant)));
        }
        if !w_study.is_empty() {
            pending.push(Box::pin(tx.execute(&sql[4], &p_withdraw)));
        }
        if !wd_sha.is_empty() {
            pending.push(Box::pin(tx.execute(&sql[5], &p_wd)));
        }
        if !b_study.is_empty() {
            pending.push(Box::pin(tx.execute(&sql[6], &p_batches)));
        }
        futures_util::future::try_join_all(pending).await?;
        Ok(())
    }
}

fn array<const N: usize>(row: &tokio_postgres::Row, i: usize) -> Result<[u8; N], StoreError> {
    let v: Vec<u8> = row.try_get(i).map_err(|e| pg(&e))?;
    v.try_into().map_err(|_| {
        StoreError::Corrupt(format!(
            "postgres index: a {N}-byte column of another length"
        ))
    })
}

fn count(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt("postgres index: a negative index".into()))
}

impl IndexedLedger for PgLedgerStore {
    fn size(&self) -> Result<u64, StoreError> {
        count(self.next_index()?)
    }

    fn lookup(&self, q: &Lookup) -> Result<Found, StoreError> {
        let t = self.table.clone();
        let don: Vec<Vec<u8>> = q.donations.iter().map(|k| k.to_vec()).collect();
        let (rec_study, rec_id): (Vec<String>, Vec<Vec<u8>>) = q
            .consent_records
            .iter()
            .map(|(s, r)| (s.as_str().to_string(), r.to_vec()))
            .unzip();
        let (con_study, con_p): (Vec<String>, Vec<Vec<u8>>) = q
            .consents
            .iter()
            .map(|(s, p)| (s.as_str().to_string(), p.0.to_vec()))
            .unzip();
        let wd: Vec<Vec<u8>> = q.withdrawals.iter().map(|k| k.to_vec()).collect();
        let c = self.client.clone();
        let rows = self
            .rt
            .run(async move {
                let client = c.lock().await;
                let sql = [
                    format!(
                        "SELECT idempotency_key, envelope_sha256, idx, receipt_size
                         FROM {t}_donations WHERE idempotency_key = ANY($1)"
                    ),
                    format!(
                        "SELECT c.study, c.record_id, c.manifest_sha256
                         FROM {t}_consent_records c
                         JOIN unnest($1::text[], $2::bytea[]) AS u(study, record_id)
                         USING (study, record_id)"
                    ),
                    format!(
                        "SELECT c.study, c.pseudonym, c.record_id, c.donor_key, c.purposes,
                             c.expires_at, c.withdrawn_at
                         FROM {t}_consents c
                         JOIN unnest($1::text[], $2::bytea[]) AS u(study, pseudonym)
                         USING (study, pseudonym)"
                    ),
                    format!(
                        "SELECT sha256, idx, receipt_size FROM {t}_withdrawals
                         WHERE sha256 = ANY($1)"
                    ),
                ];
                // One round trip for the four (pipelined).
                let (d, r, s, w) = futures_util::future::try_join4(
                    client.query(&sql[0], &[&don]),
                    client.query(&sql[1], &[&rec_study, &rec_id]),
                    client.query(&sql[2], &[&con_study, &con_p]),
                    client.query(&sql[3], &[&wd]),
                )
                .await?;
                Ok::<_, tokio_postgres::Error>((d, r, s, w))
            })?
            .map_err(|e| pg(&e))?;
        let (d, r, s, w) = rows;
        let study = |row: &tokio_postgres::Row| -> Result<StudyId, StoreError> {
            let v: String = row.try_get(0).map_err(|e| pg(&e))?;
            StudyId::new(&v)
                .map_err(|_| StoreError::Corrupt("postgres index: a bad study id".into()))
        };
        let mut found = Found::default();
        for row in &d {
            found.donations.push((
                array::<16>(row, 0)?,
                DonationRecord {
                    envelope_sha256: array::<32>(row, 1)?,
                    ledger_index: count(row.try_get(2).map_err(|e| pg(&e))?)?,
                    receipt_size: count(row.try_get(3).map_err(|e| pg(&e))?)?,
                },
            ));
        }
        for row in &r {
            found
                .consent_records
                .push(((study(row)?, array::<16>(row, 1)?), array::<32>(row, 2)?));
        }
        for row in &s {
            let purposes: String = row.try_get(4).map_err(|e| pg(&e))?;
            found.consents.push((
                (study(row)?, Pseudonym(array::<32>(row, 1)?)),
                ConsentState {
                    purposes: serde_json::from_str(&purposes).map_err(|_| {
                        StoreError::Corrupt("postgres index: purposes that do not parse".into())
                    })?,
                    expires_at: row.try_get(5).map_err(|e| pg(&e))?,
                    withdrawn_at: row.try_get(6).map_err(|e| pg(&e))?,
                    donor_public_key: datadonor_schemas::signing::PublicKey(array::<32>(row, 3)?),
                    consent_record_id: array::<16>(row, 2)?,
                },
            ));
        }
        for row in &w {
            found.withdrawals.push((
                array::<32>(row, 0)?,
                WithdrawalRecord {
                    ledger_index: count(row.try_get(1).map_err(|e| pg(&e))?)?,
                    receipt_size: count(row.try_get(2).map_err(|e| pg(&e))?)?,
                },
            ));
        }
        Ok(found)
    }

    fn entries(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        let (s, e) = (
            i64::try_from(start).map_err(|_| StoreError::Corrupt("index too large".into()))?,
            i64::try_from(end).map_err(|_| StoreError::Corrupt("index too large".into()))?,
        );
        let c = self.client.clone();
        let sql = format!(
            "SELECT record FROM {} WHERE idx >= $1 AND idx < $2 ORDER BY idx",
            self.table
        );
        let rows = self
            .rt
            .run(async move {
                let client = c.lock().await;
                client.query(&sql, &[&s, &e]).await
            })?
            .map_err(|e| pg(&e))?;
        if rows.len() as u64 != end.saturating_sub(start) {
            return Err(StoreError::Corrupt(format!(
                "postgres table {}: {} records in [{start}, {end})",
                self.table,
                rows.len()
            )));
        }
        rows.iter()
            .map(|r| r.try_get(0).map_err(|e| pg(&e)))
            .collect()
    }

    fn nodes(&self, ids: &[NodeId]) -> Result<HashMap<NodeId, Hash>, StoreError> {
        let height: Vec<i16> = ids
            .iter()
            .map(|(h, _)| i16::try_from(*h).unwrap_or(i16::MAX))
            .collect();
        let pos: Vec<i64> = ids
            .iter()
            .map(|(_, p)| i64::try_from(*p).unwrap_or(i64::MAX))
            .collect();
        let c = self.client.clone();
        let sql = format!(
            "SELECT n.height, n.pos, n.hash FROM {}_nodes n
             JOIN unnest($1::smallint[], $2::bigint[]) AS u(height, pos) USING (height, pos)",
            self.table
        );
        let rows = self
            .rt
            .run(async move {
                let client = c.lock().await;
                client.query(&sql, &[&height, &pos]).await
            })?
            .map_err(|e| pg(&e))?;
        let mut out = HashMap::with_capacity(rows.len());
        for row in &rows {
            let h: i16 = row.try_get(0).map_err(|e| pg(&e))?;
            let p: i64 = row.try_get(1).map_err(|e| pg(&e))?;
            let h = u32::try_from(h)
                .map_err(|_| StoreError::Corrupt("postgres index: a negative height".into()))?;
            out.insert((h, count(p)?), Hash(array::<32>(row, 2)?));
        }
        Ok(out)
    }

    fn names_batch(&self, study: &str, batch_hex: &str) -> Result<bool, StoreError> {
        let c = self.client.clone();
        let (s, b) = (study.to_string(), batch_hex.to_string());
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {}_batches WHERE study = $1 AND batch_id = $2)",
            self.table
        );
        self.rt
            .run(async move {
                let client = c.lock().await;
                let row = client.query_one(&sql, &[&s, &b]).await?;
                row.try_get::<_, bool>(0)
            })?
            .map_err(|e| pg(&e))
    }
}

impl LedgerStore for PgLedgerStore {
    fn as_indexed(&self) -> Option<&dyn IndexedLedger> {
        Some(self)
    }

    fn retire(&self, now: i64) -> Result<Option<String>, StoreError> {
        PgLedgerStore::retire(self, now).map(Some)
    }

    fn recover(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let c = self.client.clone();
        let sql = format!("SELECT idx, record FROM {} ORDER BY idx", self.table);
        let rows = self
            .rt
            .run(async move {
                let client = c.lock().await;
                client.query(&sql, &[]).await
            })?
            .map_err(|e| pg(&e))?;
        let mut out = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let idx: i64 = row.try_get(0).map_err(|e| pg(&e))?;
            if i64::try_from(i).ok() != Some(idx) {
                return Err(StoreError::Corrupt(format!(
                    "postgres table {}: index {idx} where {i} was expected (a gap)",
                    self.table
                )));
            }
            out.push(row.try_get::<_, Vec<u8>>(1).map_err(|e| pg(&e))?);
        }
        let n =
            i64::try_from(out.len()).map_err(|_| StoreError::Corrupt("ledger too long".into()))?;
        *self.next.lock().map_err(|_| StoreError::Poisoned)? = Some(n);
        Ok(out)
    }

    fn append(&self, entries: &[Vec<u8>]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let first = self.next_index()?;
        let count = i64::try_from(entries.len())
            .map_err(|_| StoreError::Corrupt("too many records".into()))?;
        let idx: Vec<i64> = (first..first + count).collect();
        let records: Vec<Vec<u8>> = entries.to_vec();
        let frontier = self
            .frontier
            .lock()
            .map_err(|_| StoreError::Poisoned)?
            .clone();
        let rows = IndexRows::derive(&records, first, first + count, frontier);
        let c = self.client.clone();
        let table = self.table.clone();
        let sql = format!(
            "INSERT INTO {} (idx, record) SELECT * FROM unnest($1::bigint[], $2::bytea[])",
            self.table
        );
        let r = self.rt.run(async move {
            let mut client = c.lock().await;
            let tx = client.transaction().await?;
            // The records and their index rows in one round trip (pipelined).
            futures_util::future::try_join(
                tx.execute(&sql, &[&idx, &records]),
                rows.write(&tx, &table),
            )
            .await?;
            tx.commit().await?;
            Ok::<_, tokio_postgres::Error>(rows.0.frontier)
        })?;
        match r {
            Ok(frontier) => {
                *self.next.lock().map_err(|_| StoreError::Poisoned)? = Some(first + count);
                *self.frontier.lock().map_err(|_| StoreError::Poisoned)? = frontier;
                Ok(())
            }
            Err(e) => {
                if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                    let what = e
                        .as_db_error()
                        .and_then(|d| d.constraint())
                        .unwrap_or("primary key")
                        .to_string();
                    Err(StoreError::Conflict(format!(
                        "postgres table {}: appending at index {first} ({what})",
                        self.table
                    )))
                } else {
                    Err(pg(&e))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://intake:s3cret@db.example:5432/dd?sslmode=require"),
            "postgres://intake:***@db.example:5432/dd?sslmode=require"
        );
        assert_eq!(
            redact_url("postgresql://intake@db/dd?password=s3cret&sslmode=require"),
            "postgresql://intake@db/dd?password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("host=db user=intake password=s3cret dbname=dd"),
            "host=db user=intake password=*** dbname=dd"
        );
        let o = PgOptions {
            url: "postgres://a:topsecret@h/d".into(),
            table: "t".into(),
            ca_cert: None,
            lock_wait: DEFAULT_LOCK_WAIT,
        };
        assert!(!format!("{o:?}").contains("topsecret"));
    }

    #[test]
    fn table_names_are_plain_identifiers() {
        assert!(valid_identifier("datadonor_ledger"));
        for bad in [
            "",
            "Ledger",
            "a;drop table x",
            "1abc",
            "a-b",
            &"a".repeat(64),
        ] {
            assert!(!valid_identifier(bad), "{bad}");
        }
    }
}
