//! Running the intake: opening a data directory ([`Intake::open`]: lock, keys, studies, recovery,
//! committer), the TLS 1.3 accept loop ([`start`]), graceful shutdown, and offline key rotation
//! ([`rotate_transport_key`]).
//!
//! Connection handling: at most `server.max_connections` connections are served at once (a
//! semaphore permit is taken *before* `accept`, so excess connections wait in the kernel backlog);
//! the TLS handshake must finish within `handshake_timeout_ms`; HTTP/1 headers within
//! `header_read_timeout_ms`; a request body within `request_body_timeout_ms` (`408 timeout`);
//! a connection with no request in flight on which no request started or finished for
//! `header_read_timeout_ms` is closed, whatever the protocol and whatever bytes arrive (no
//! first request after the handshake, an HTTP/2 connection without streams or trickling an
//! incomplete frame, an idle keep-alive);
//! bodies beyond `limits.max_body_bytes` get `413 body-too-large`. Shutdown stops accepting,
//! tells every connection to finish its in-flight requests (HTTP/2 GOAWAY, HTTP/1 close after the
//! response), waits up to `drain_timeout_ms`, then lets the committer finish its group and stops.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use axum::body::Body;
use axum::Router;
use datadonor_schemas::ledger::LedgerEntry;
use datadonor_schemas::time::{Clock, SystemClock};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt as _;

use crate::app::{app, AppState, ClientAddr, Role, Sequencing, Shared};
use crate::cluster::SequencerClient;
use crate::commit::{self, CommitContext, CommitHandle, RecoveryReport};
use crate::config::Config;
use crate::init::{batches_path, ledger_path, public_key_sha256};
use crate::keys::{self, AuditorTokenHash, TransportKeys, VaultPublicKey};
use crate::ledger::{LedgerSigner, LedgerState};
use crate::metrics::Metrics;
use crate::seal::VaultKey;
use crate::store::{BatchStore, LedgerStore, LocalBatchStore, LocalLedgerStore};
use crate::studies::StudyRegistry;
use crate::Error;

/// The exclusive lock on a data directory, held while serving or rotating.
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
}

impl DirLock {
    /// Take `dir/intake.lock` (released by the OS when the process dies, even by SIGKILL).
    #[allow(clippy::incompatible_msrv)] // File::try_lock is stable since 1.89; the build uses newer.
    pub fn acquire(dir: &Path) -> Result<Self, Error> {
        let p = dir.join("intake.lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(Error::io(format!("opening {}", p.display())))?;
        match f.try_lock() {
            Ok(()) => Ok(Self { _file: f }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked(dir.to_path_buf())),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io("locking data directory")(e)),
        }
    }
}

/// An opened ledger backend and batch backend.
pub type Stores = (Arc<dyn LedgerStore>, Arc<dyn BatchStore>);

/// The ledger and batch backends `[storage]` names: the data directory's by default, PostgreSQL
/// and S3 beyond one machine.
///
/// A PostgreSQL ledger that is still empty is seeded with the records of the local ledger file
/// (what `init` wrote: the first transport key), in one append, so the ledger starts where `init`
/// left it; `ledger/` is then renamed `ledger.moved-<time>`, as `migrate` leaves it. Batches in
/// the bucket while `batches/` still holds sealed batches are refused: those are moved with
/// `datadonor-intake migrate` ([`crate::migrate`]), not left behind.
///
/// A ledger with no record is refused: `init` writes the first one, so an empty ledger is not
/// this intake's (a mistyped `[storage.postgres] table`, a ledger moved away, `ledger/` lost or
/// restored elsewhere), and serving it would start a second log under the same key.
pub fn open_stores(config: &Config) -> Result<Stores, Error> {
    if config.storage.batches == crate::config::BatchBackend::S3 {
        let local = batches_path(&config.data_dir);
        if local.is_dir() {
            let store = LocalBatchStore::open(&local)?;
            let left = store.list()?.len() + store.list_compacted()?.len();
            if left > 0 {
                return Err(Error::Init(format!(
                    "{} holds {left} sealed batches while [storage] names an S3 bucket: move \
                     them with `datadonor-intake migrate` (or delete them if they are not this \
                     ledger's)",
                    local.display()
                )));
            }
        }
    }
    let ledger = open_existing_ledger(config, true)?;
    let batches = open_batch_store(config)?;
    Ok((ledger, batches))
}

/// [`open_ledger_store`] for a ledger `init` started (what serving, `rotate-key` and
/// `migrate`'s source open): a missing ledger file is refused before anything is created in its
/// place, a ledger with no record once opened (see [`open_stores`]).
pub fn open_existing_ledger(config: &Config, seed: bool) -> Result<Arc<dyn LedgerStore>, Error> {
    let file = ledger_path(&config.data_dir);
    if config.storage.ledger == crate::config::LedgerBackend::File && !file.exists() {
        return Err(no_ledger(format!("{} does not exist", file.display())));
    }
    let ledger = open_ledger_store(config, seed)?;
    if let Some(idx) = ledger.as_indexed() {
        if idx.size()? == 0 {
            let which = match &config.storage.postgres {
                Some(pg) if config.storage.ledger == crate::config::LedgerBackend::Postgres => {
                    format!("PostgreSQL table {:?} holds no record", pg.table)
                }
                _ => format!("{} holds no record", file.display()),
            };
            return Err(no_ledger(which));
        }
    }
    Ok(ledger)
}

/// The refusal of a ledger `init` did not start (see [`open_existing_ledger`]).
fn no_ledger(what: String) -> Error {
    Error::Init(format!(
        "{what}: `init` writes a ledger's first record, so this is not this intake's ledger (a \
         mistyped [storage] setting, a ledger moved with `migrate` or lost); serving it would \
         start a second log under the same ledger key. Point the configuration at the ledger, or \
         restore it"
    ))
}

/// The ledger backend `[storage]` names; `seed`: an empty PostgreSQL ledger is seeded with the
/// local ledger file's records (see [`open_stores`]).
pub fn open_ledger_store(config: &Config, seed: bool) -> Result<Arc<dyn LedgerStore>, Error> {
    use crate::config::LedgerBackend;
    let dir = &config.data_dir;
    Ok(match config.storage.ledger {
        LedgerBackend::File => Arc::new(crate::store_index::IndexedLocalLedger::open(
            &ledger_path(dir),
        )?),
        LedgerBackend::Postgres => {
            let pc = config.storage.postgres.as_ref().ok_or_else(|| {
                crate::config::ConfigError::Invalid("[storage.postgres] is missing".into())
            })?;
            let url = match &pc.url {
                Some(u) => u.clone(),
                None => std::env::var(crate::config::POSTGRES_URL_ENV).map_err(|_| {
                    crate::config::ConfigError::Invalid(format!(
                        "storage.postgres.url is not set and neither is {}",
                        crate::config::POSTGRES_URL_ENV
                    ))
                })?,
            };
            let store = crate::store_pg::PgLedgerStore::open(&crate::store_pg::PgOptions {
                url,
                table: pc.table.clone(),
                ca_cert: pc.ca_cert.as_ref().map(|p| dir.join(p)),
                lock_wait: std::time::Duration::from_secs(pc.lock_wait_secs),
            })?;
            let local = ledger_path(dir);
            if seed && crate::store::IndexedLedger::size(&store)? == 0 && local.exists() {
                let seed = LocalLedgerStore::open(&local)?.recover()?;
                if !seed.is_empty() {
                    tracing::info!(
                        records = seed.len(),
                        "postgres ledger is empty: seeding it with the local ledger file"
                    );
                    store.append(&seed)?;
                    // The ledger lives in the table from now on: a table found empty later
                    // (mistyped, lost) must not be seeded again with these first records.
                    crate::migrate::retire_local_ledger(dir, SystemClock.now())?;
                }
            }
            Arc::new(store)
        }
    })
}

/// The batch backend `[storage]` names.
pub fn open_batch_store(config: &Config) -> Result<Arc<dyn BatchStore>, Error> {
    use crate::config::BatchBackend;
    Ok(match config.storage.batches {
        BatchBackend::Local => Arc::new(LocalBatchStore::open(&batches_path(&config.data_dir))?),
        BatchBackend::S3 => {
            let sc = config.storage.s3.as_ref().ok_or_else(|| {
                crate::config::ConfigError::Invalid("[storage.s3] is missing".into())
            })?;
            Arc::new(crate::store_s3::S3BatchStore::open(sc)?)
        }
    })
}

/// An opened data directory: state ready to serve, committer running.
#[derive(Debug)]
pub struct Intake {
    state: AppState,
    /// The committer (a sequencer's; a frontend has none).
    commit: Option<CommitHandle>,
    recovery: RecoveryReport,
    _lock: Option<DirLock>,
}

impl Intake {
    /// Open with the backends `[storage]` names (taking the directory lock).
    pub fn open(config: Config, clock: Arc<dyn Clock>) -> Result<Self, Error> {
        config.validate()?;
        if config.cluster.role == crate::config::Role::Frontend {
            return Self::open_frontend(config, clock);
        }
        let lock = DirLock::acquire(&config.data_dir)?;
        crate::migrate::refuse_if_unfinished(&config.data_dir)?;
        let (ledger, batches) = open_stores(&config)?;
        let mut intake = Self::open_with_stores(config, clock, ledger, batches)?;
        intake._lock = Some(lock);
        Ok(intake)
    }

    /// Open with given backends (keys and studies still come from `config.data_dir`).
    pub fn open_with_stores(
        config: Config,
        clock: Arc<dyn Clock>,
        ledger: Arc<dyn LedgerStore>,
        batches: Arc<dyn BatchStore>,
    ) -> Result<Self, Error> {
        config.validate()?;
        let dir = config.data_dir.clone();
        let now = clock.now();
        let transport = TransportKeys::load(&dir, config.keys.transport_key_grace_secs, now)?;
        let signer = Arc::new(LedgerSigner::new(
            keys::load_ledger_key(&dir)?,
            &config.ledger.origin,
        )?);
        let auditor = AuditorTokenHash::load(&dir)?;
        let analytics = AuditorTokenHash::load_from(&keys::analytics_hash_path(&dir))?;
        let (vault_file, vault_pk) = VaultPublicKey::load(&dir)?;
        let mut studies =
            StudyRegistry::load(&dir.join("studies"), &config.studies.trusted_signers)?;
        let witness_vkeys: Vec<String> = config.witnesses.iter().map(|w| w.vkey.clone()).collect();
        studies.load_bundles(
            &dir.join("studies"),
            &config.studies.trusted_signers,
            &signer.public_key(),
            &witness_vkeys,
        )?;
        let (ledger_state, recovery) = commit::recover(&ledger, &*batches, &signer)?;
        if recovery.orphan_batches_deleted > 0 || recovery.temporaries_deleted > 0 {
            tracing::warn!(
                orphans = recovery.orphan_batches_deleted,
                temporaries = recovery.temporaries_deleted,
                "recovery removed unacknowledged batch files"
            );
        }
        let metrics = Arc::new(Metrics::default());
        metrics.ledger_size(ledger_state.published_size());
        let state = Arc::new(RwLock::new(ledger_state));
        let ctx = CommitContext {
            state: state.clone(),
            signer: signer.clone(),
            ledger,
            batches,
            vault: VaultKey {
                key_id: vault_file.key_id,
                public_key: vault_pk,
            },
            clock: clock.clone(),
            metrics: metrics.clone(),
            poisoned: Arc::new(AtomicBool::new(false)),
            group_max: config.commit.group_max_donations,
            window: Config::ms(config.commit.group_window_ms),
            sweep_every: (config.commit.orphan_sweep_secs > 0)
                .then(|| std::time::Duration::from_secs(config.commit.orphan_sweep_secs)),
        };
        let commit = commit::spawn(ctx, config.commit.queue_capacity)
            .map_err(Error::io("starting the committer"))?;
        let frontends_path = keys::frontend_hash_path(&dir);
        let frontends = frontends_path
            .exists()
            .then(|| AuditorTokenHash::load_from(&frontends_path))
            .transpose()?;
        let verifier = signer.verifier().clone();
        let role = Role::Sequencer(Sequencing {
            signer,
            auditor,
            analytics,
            frontends,
            commit: commit.clone(),
            state,
            cosigned: Arc::default(),
        });
        Ok(Self {
            state: shared(config, studies, transport, verifier, metrics, clock, role),
            commit: Some(commit),
            recovery,
            _lock: None,
        })
    }

    /// A frontend: transport keys, studies and the sequencers' address; no ledger key, vault key,
    /// store or directory lock (it writes nothing).
    fn open_frontend(config: Config, clock: Arc<dyn Clock>) -> Result<Self, Error> {
        let dir = config.data_dir.clone();
        let transport =
            TransportKeys::load(&dir, config.keys.transport_key_grace_secs, clock.now())?;
        let vkey = config.cluster.ledger_vkey.as_deref().unwrap_or_default();
        let verifier =
            datadonor_schemas::checkpoint::NoteVerifier::parse_vkey(vkey).map_err(|e| {
                crate::config::ConfigError::Invalid(format!("cluster.ledger_vkey: {e}"))
            })?;
        let mut studies =
            StudyRegistry::load(&dir.join("studies"), &config.studies.trusted_signers)?;
        studies.load_bundles(
            &dir.join("studies"),
            &config.studies.trusted_signers,
            &datadonor_schemas::signing::PublicKey(*verifier.public_key()),
            &[],
        )?;
        let client = SequencerClient::from_config(&config)?;
        let metrics = Arc::new(Metrics::default());
        let role = Role::Frontend(client);
        Ok(Self {
            state: shared(config, studies, transport, verifier, metrics, clock, role),
            commit: None,
            recovery: RecoveryReport::default(),
            _lock: None,
        })
    }

    /// The handler state.
    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// The router ([`app`] over this state).
    pub fn router(&self) -> Router {
        app(self.state.clone())
    }

    /// What recovery did at open.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Let the committer finish its current group, then stop it.
    pub fn shutdown(self) {
        if let Some(commit) = &self.commit {
            commit.stop();
        }
    }
}

fn shared(
    config: Config,
    studies: StudyRegistry,
    transport: TransportKeys,
    verifier: datadonor_schemas::checkpoint::NoteVerifier,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    role: Role,
) -> AppState {
    let public_reads = datadonor_service::ratelimit::RateLimiter::new(
        config.limits.public_read_burst,
        config.limits.public_reads_per_second,
    );
    AppState(Arc::new(Shared {
        public_reads,
        config,
        studies,
        transport,
        verifier,
        metrics,
        clock,
        role,
    }))
}

/// A running intake (see [`start`]).
#[derive(Debug)]
pub struct RunningIntake {
    addr: SocketAddr,
    data_dir: PathBuf,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), Error>>,
    state: AppState,
}

impl RunningIntake {
    /// The bound address (useful with `listen = "127.0.0.1:0"`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// `https://localhost:<port>` — the name the dev certificate is issued for.
    pub fn base_url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }
    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    /// The dev CA certificate (PEM path) that `init` wrote.
    pub fn ca_pem_path(&self) -> PathBuf {
        self.data_dir.join("tls/ca.pem")
    }
    /// The handler state (metrics, ledger state) for in-process tests.
    pub fn state(&self) -> &AppState {
        &self.state
    }
    /// Stop accepting, drain in-flight requests, flush the committer, release the directory.
    pub async fn shutdown(self) -> Result<(), Error> {
        let _ = self.shutdown.send(true);
        self.wait().await
    }
    /// Wait until the server has stopped (after [`RunningIntake::shutdown_handle`] was used).
    pub async fn wait(self) -> Result<(), Error> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(Error::Tls(format!("server task failed: {e}"))),
        }
    }
    /// A handle that triggers shutdown (e.g. from a signal handler).
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// Start an intake with the system clock.
pub async fn start(config: Config) -> Result<RunningIntake, Error> {
    start_with_clock(config, Arc::new(SystemClock)).await
}

fn tls_config(config: &Config) -> Result<Arc<rustls::ServerConfig>, Error> {
    let cert_path = config.path(&config.server.tls_cert);
    let key_path = config.path(&config.server.tls_key);
    let cert_pem =
        std::fs::read(&cert_path).map_err(Error::io(format!("reading {}", cert_path.display())))?;
    let key_pem = zeroize::Zeroizing::new(
        std::fs::read(&key_path).map_err(Error::io(format!("reading {}", key_path.display())))?,
    );
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("{}: {e}", cert_path.display())))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_slice()).map_err(|e| match e {
        pem::Error::NoItemsFound => Error::Tls(format!("{}: no private key", key_path.display())),
        e => Error::Tls(format!("{}: {e}", key_path.display())),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Start an intake with a given clock: open the directory, bind, and serve until shut down.
pub async fn start_with_clock(
    config: Config,
    clock: Arc<dyn Clock>,
) -> Result<RunningIntake, Error> {
    let tls = tls_config(&config)?;
    let data_dir = config.data_dir.clone();
    let listen = config.server.listen;
    let intake = tokio::task::spawn_blocking(move || Intake::open(config, clock))
        .await
        .map_err(|e| Error::Tls(format!("open task failed: {e}")))??;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(Error::io(format!("binding {listen}")))?;
    let addr = listener
        .local_addr()
        .map_err(Error::io("reading the bound address"))?;
    let (tx, rx) = watch::channel(false);
    let state = intake.state();
    crate::witnessing::spawn(state.clone(), rx.clone())?;
    let task = tokio::spawn(serve(listener, tls, intake, rx));
    tracing::info!(%addr, "intake listening");
    Ok(RunningIntake {
        addr,
        data_dir,
        shutdown: tx,
        task,
        state,
    })
}

/// Resolves once shutdown was requested (the watch guard is dropped before returning, so the
/// future stays `Send`).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// How long an idle connection gets to finish closing politely before it is dropped.
const IDLE_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Requests in flight on one connection and when one last started or finished, for the idle
/// cut-off. Bytes alone do not count as activity: a client trickling an incomplete request (an
/// HTTP/2 frame a byte at a time, say) is as idle as a silent one.
#[derive(Debug)]
struct Activity {
    start: std::time::Instant,
    /// Milliseconds since `start` of the last request start or end (0: the connection's start).
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: std::time::Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Resolves once no request is in flight and none started or finished for `limit`.
    async fn idle(&self, limit: std::time::Duration) {
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        loop {
            let quiet = self
                .now_ms()
                .saturating_sub(self.last_ms.load(Ordering::Relaxed));
            if quiet >= limit_ms && self.in_flight.load(Ordering::Relaxed) == 0 {
                return;
            }
            let wait = if quiet >= limit_ms {
                limit_ms
            } else {
                limit_ms - quiet
            };
            tokio::time::sleep(std::time::Duration::from_millis(wait.max(10))).await;
        }
    }
}

/// Counts a request in flight until dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(a: Arc<Activity>) -> Self {
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        a.touch();
        Self(a)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    intake: Intake,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    let cfg = intake.state.0.config.server.clone();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let router = intake.router();
    let permits = Arc::new(Semaphore::new(cfg.max_connections));
    let mut conns: JoinSet<()> = JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stopped(&mut shutdown) => break,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        while conns.try_join_next().is_some() {}
        // Answers go out as soon as they are written: with Nagle's algorithm an HTTP/2 answer
        // split over several frames waited on the peer's delayed ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let acceptor = acceptor.clone();
        let router = router.clone();
        let mut shutdown = shutdown.clone();
        let cfg = cfg.clone();
        conns.spawn(async move {
            let _permit = permit;
            let hs = Config::ms(cfg.handshake_timeout_ms);
            let stream = match tokio::time::timeout(hs, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                _ => return,
            };
            let activity = Arc::new(Activity::new());
            let in_flight = activity.clone();
            let svc =
                hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ClientAddr(peer));
                    let guard = InFlight::enter(in_flight.clone());
                    let call = router.clone().oneshot(req.map(Body::new));
                    async move {
                        let _guard = guard;
                        call.await
                    }
                });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(Config::ms(cfg.header_read_timeout_ms));
            builder.http2().timer(TokioTimer::new());
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            let mut conn = std::pin::pin!(conn);
            let idle = Config::ms(cfg.header_read_timeout_ms);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = activity.idle(idle) => {
                    // Close politely (HTTP/2 GOAWAY, so a client racing a new request knows it
                    // was not processed and may retry), but give the connection only a moment.
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(IDLE_CLOSE_GRACE, conn.as_mut()).await;
                    tracing::debug!("idle connection closed");
                }
                _ = stopped(&mut shutdown) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    tracing::info!(
        connections = conns.len(),
        "shutting down: draining connections"
    );
    let drain = Config::ms(cfg.drain_timeout_ms);
    if tokio::time::timeout(drain, async { while conns.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!("drain timeout: aborting remaining connections");
        conns.abort_all();
    }
    tokio::task::spawn_blocking(move || intake.shutdown())
        .await
        .map_err(|e| Error::Tls(format!("committer stop failed: {e}")))?;
    tracing::info!("intake stopped");
    Ok(())
}

/// `rotate-key`: create a new transport key (the previous one stays accepted for
/// `keys.transport_key_grace_secs`), and append a `KeyRotated` entry to the ledger. Takes the
/// data directory lock, so it refuses to run while the intake serves; restart the intake after.
pub fn rotate_transport_key(config: &Config, now: i64) -> Result<u32, Error> {
    let _lock = DirLock::acquire(&config.data_dir)?;
    let (store, _) = open_stores(config)?;
    let records = store.recover_records()?;
    let signer = LedgerSigner::new(
        keys::load_ledger_key(&config.data_dir)?,
        &config.ledger.origin,
    )?;
    // Replaying proves the ledger parses before we append to it.
    LedgerState::recover(records, &signer)?;
    let (id, pk) = keys::create_transport_key(&config.data_dir, now)?;
    let entry = LedgerEntry::KeyRotated {
        time: now,
        role: "hpke-transport".into(),
        key_id: id,
        public_key_sha256: public_key_sha256(&pk.0),
    };
    store.append(&[entry.to_bytes()])?;
    Ok(id)
}
