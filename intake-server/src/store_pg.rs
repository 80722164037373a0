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

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::store::{BackendRuntime, LedgerStore, StoreError};

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
    /// The next index to write: set by `recover`, advanced by each successful append.
    next: std::sync::Mutex<Option<i64>>,
}

impl std::fmt::Debug for PgLedgerStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLedgerStore")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

fn valid_identifier(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 63
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
                message: "the table name must be a lower-case SQL identifier".into(),
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
                     CREATE TABLE IF NOT EXISTS {t2} (idx bigint PRIMARY KEY, record bytea NOT NULL);"
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
        Ok(Self {
            rt,
            client: c,
            table,
            next: std::sync::Mutex::new(None),
        })
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

impl LedgerStore for PgLedgerStore {
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
        let c = self.client.clone();
        let sql = format!(
            "INSERT INTO {} (idx, record) SELECT * FROM unnest($1::bigint[], $2::bytea[])",
            self.table
        );
        let r = self.rt.run(async move {
            let mut client = c.lock().await;
            let tx = client.transaction().await?;
            tx.execute(&sql, &[&idx, &records]).await?;
            tx.commit().await
        })?;
        match r {
            Ok(()) => {
                *self.next.lock().map_err(|_| StoreError::Poisoned)? = Some(first + count);
                Ok(())
            }
            Err(e) => {
                if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                    Err(StoreError::Conflict(format!(
                        "postgres table {}: ledger index {first}",
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
