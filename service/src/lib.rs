//! HTTPS serving shared by Datadonor's services (the pseudonymiser instances and the steward's
//! query service): a TLS 1.3 server configuration from PEM files, and the accept loop with its
//! connection limits, timeouts and graceful shutdown. The intake has its own loop (with an idle
//! cut-off per connection) in `datadonor-intake::server`. Also the crash-safe file write the
//! services keep their state with ([`write_atomic`]), and the per-key token buckets their rate
//! limits use ([`ratelimit`]).
#![forbid(unsafe_code)]

pub mod blocking;
pub mod ratelimit;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt as _;

/// The client's address, put into every request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub IpAddr);

/// Connection limits of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections at once.
    pub max_connections: usize,
    /// TLS handshake and request headers within this time.
    pub handshake_timeout: Duration,
    /// A connection is closed politely after this time.
    pub connection_lifetime: Duration,
}

/// A TLS 1.3 server configuration (ALPN `h2`, `http/1.1`) from a PEM certificate chain and key.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A running service: its address, and the switch that stops it.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// `https://127.0.0.1:port`.
    pub fn base_url(&self) -> String {
        format!("https://{}", self.addr)
    }
    /// Stop accepting, let connections finish, and wait.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// Bind `listen` and serve `app` over TLS on a task of the current runtime.
pub async fn start(
    listen: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    limits: ConnLimits,
) -> std::io::Result<Running> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(serve(listener, tls, app, limits, rx));
    Ok(Running {
        addr,
        shutdown: tx,
        task,
    })
}

/// Resolves once shutdown was requested (the watch guard is dropped before returning, so the
/// future stays `Send`).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    limits: ConnLimits,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let handshake = limits.handshake_timeout;
    let lifetime = limits.connection_lifetime;
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stopped(&mut stop) => break,
        };
        let Ok((tcp, peer)) = accepted else {
            continue;
        };
        // Answers go out as soon as they are written (no wait on the peer's delayed ACK).
        let _ = tcp.set_nodelay(true);
        let (acceptor, app, mut stop) = (acceptor.clone(), app.clone(), stop.clone());
        conns.spawn(async move {
            let _permit = permit;
            let Ok(Ok(tls)) = tokio::time::timeout(handshake, acceptor.accept(tcp)).await else {
                return;
            };
            let ip = peer.ip();
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let mut req = req.map(Body::new);
                req.extensions_mut().insert(Peer(ip));
                app.clone().oneshot(req)
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(handshake);
            let conn = builder.serve_connection(TokioIo::new(tls), svc);
            tokio::pin!(conn);
            // At the end of its lifetime, or at shutdown, a connection is closed politely
            // (HTTP/2 GOAWAY, HTTP/1 close after the response in flight) and dropped if it
            // has not finished a few seconds later.
            tokio::select! {
                _ = &mut conn => return,
                _ = tokio::time::sleep(lifetime) => {}
                _ = stopped(&mut stop) => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        });
        while conns.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
}

/// A file write that failed: the path it failed on and why.
#[derive(Debug)]
pub struct FileError {
    /// The file or directory.
    pub path: std::path::PathBuf,
    /// The error.
    pub source: std::io::Error,
}

/// Writes `bytes` to `path` with `mode`, crash-safely: temporary file, fsync, rename, fsync of
/// the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |p: &Path| {
        let path = p.to_path_buf();
        move |source| FileError {
            path: path.clone(),
            source,
        }
    };
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".tmp-{name}"));
    let _ = std::fs::remove_file(&tmp);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}
