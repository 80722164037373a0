//! `datadonor app`: the citizen's app as a local web application.
//!
//! The donor client serves pages on `127.0.0.1` (a random port) to the donor's own browser;
//! import, minimisation, pseudonymisation, signing and sealing stay in this library, in this
//! process. The page is only the interface: study → export → CPR number and postcode →
//! preview (untick rows to leave them out) → consent → donate → verified receipt, and "my
//! donations" with each stored receipt re-verified and a withdrawal behind a confirmation.
//!
//! Who may talk to the server:
//!
//! * it listens on the loopback interface only;
//! * the address it prints carries a one-time token (256 bits from the system's CSPRNG),
//!   exchanged on first visit for an `HttpOnly`, `SameSite=Strict` session cookie holding
//!   another random value (both compared in constant time); every other request without the
//!   cookie is refused with 403;
//! * the `Host` header must be `127.0.0.1:<port>` or `localhost:<port>` (DNS rebinding), and an
//!   `Origin` header on any request that is not `GET`/`HEAD` must be the app's own origin (or
//!   `null`, which browsers send for the app's own form posts under `no-referrer`, together with
//!   the browser-set `Sec-Fetch-Site: same-origin`);
//! * every answer carries a strict Content-Security-Policy, `nosniff`, `no-referrer` and
//!   `no-store`; the CSS and the script are embedded in the binary, nothing is loaded from
//!   elsewhere, and every step works without JavaScript.
//!
//! The CPR number is held in memory (zeroized on drop) only between its form and the donation;
//! it is never rendered, logged or written. The uploaded export is written to a private
//! temporary directory (`0700`), deleted after the donation and when the app stops.
#![forbid(unsafe_code)]

mod flow;
pub mod i18n;
mod pages;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::client::{Intake, WitnessPolicy};
use crate::keystore::{Keystore, Passphrase};

/// The Content-Security-Policy of every answer. `connect-src 'self'` lets the page's script
/// send the export to the app itself (the upload's progress bar); nothing else is allowed.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "datadonor_session";
/// Name of the language cookie.
pub const LANG_COOKIE: &str = "datadonor_lang";
/// Default largest export accepted, in bytes (1 GiB).
pub const DEFAULT_MAX_UPLOAD: u64 = 1 << 30;

/// Errors starting the app.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// The listener or the runtime could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What failed.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// What the app needs: the intake, the key store and the donor's trust choices (the same the
/// CLI's `donate`, `verify` and `withdraw` take).
#[non_exhaustive]
pub struct AppConfig {
    /// The intake (TLS trust, steward key and donor credential already set).
    pub intake: Intake,
    /// The key store (donor key, pinned ledger key and witnesses, receipts).
    pub keystore: Keystore,
    /// The key store's passphrase, if it has one.
    pub passphrase: Option<Passphrase>,
    /// The witnesses every accepted checkpoint must carry (`None`: the ledger's signature).
    pub witnesses: Option<WitnessPolicy>,
    /// The largest export accepted, in bytes.
    pub max_upload_bytes: u64,
}

impl AppConfig {
    /// A configuration without passphrase or witnesses, accepting exports up to
    /// [`DEFAULT_MAX_UPLOAD`].
    pub fn new(intake: Intake, keystore: Keystore) -> Self {
        Self {
            intake,
            keystore,
            passphrase: None,
            witnesses: None,
            max_upload_bytes: DEFAULT_MAX_UPLOAD,
        }
    }

    /// Set the key store passphrase.
    pub fn with_passphrase(mut self, passphrase: Option<Passphrase>) -> Self {
        self.passphrase = passphrase;
        self
    }

    /// Set the witness policy.
    pub fn with_witnesses(mut self, witnesses: Option<WitnessPolicy>) -> Self {
        self.witnesses = witnesses;
        self
    }

    /// Set the largest export accepted.
    pub fn with_max_upload_bytes(mut self, bytes: u64) -> Self {
        self.max_upload_bytes = bytes;
        self
    }
}

/// State shared by the handlers.
pub(crate) struct Shared {
    pub(crate) config: AppConfig,
    port: u16,
    /// The one-time token of the printed address; `None` once exchanged.
    token: Mutex<Option<Zeroizing<String>>>,
    /// The session cookie's value.
    session: Zeroizing<String>,
    /// The donor's progress through the flow.
    pub(crate) flow: Mutex<flow::Flow>,
    /// One donation or withdrawal at a time.
    pub(crate) busy: tokio::sync::Mutex<()>,
    /// Private directory of uploaded exports.
    pub(crate) uploads: tempfile::TempDir,
}

/// A running app server.
pub struct RunningApp {
    addr: SocketAddr,
    token: Zeroizing<String>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RunningApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RunningApp({})", self.addr)
    }
}

impl RunningApp {
    /// The address the server listens on (always loopback).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address to open: the base URL with the one-time token.
    pub fn start_url(&self) -> String {
        format!("http://{}/?token={}", self.addr, self.token.as_str())
    }

    /// Stop serving and wait for the server task.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }
}

fn random_hex(rng: &SystemRandom) -> Result<Zeroizing<String>, AppError> {
    let mut b = Zeroizing::new([0u8; 32]);
    rng.fill(b.as_mut()).map_err(|_| AppError::Random)?;
    Ok(Zeroizing::new(hex::encode(b.as_ref())))
}

/// Bind `127.0.0.1` on a random port and serve the app on the current tokio runtime.
pub async fn start(config: AppConfig) -> Result<RunningApp, AppError> {
    let rng = SystemRandom::new();
    let token = random_hex(&rng)?;
    let session = random_hex(&rng)?;
    let uploads = tempfile::Builder::new()
        .prefix("datadonor-app-")
        .tempdir()
        .map_err(|source| AppError::Io {
            what: "creating the private upload directory",
            source,
        })?;
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(|source| AppError::Io {
            what: "binding 127.0.0.1",
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| AppError::Io {
        what: "the listener's address",
        source,
    })?;
    let shared = Arc::new(Shared {
        config,
        port: addr.port(),
        token: Mutex::new(Some(token.clone())),
        session,
        flow: Mutex::new(flow::Flow::default()),
        busy: tokio::sync::Mutex::new(()),
        uploads,
    });
    let router = flow::routes(shared.clone())
        .layer(axum::middleware::from_fn_with_state(shared.clone(), guard))
        .layer(axum::middleware::map_response(security_headers));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await;
        drop(shared);
    });
    Ok(RunningApp {
        addr,
        token,
        shutdown: Some(tx),
        task,
    })
}

/// Serve the app until Ctrl-C: print the address with its token and, unless `open_browser` is
/// false, open it in the default browser.
pub fn run(config: AppConfig, open_browser: bool) -> Result<(), AppError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| AppError::Io {
            what: "starting the runtime",
            source,
        })?;
    rt.block_on(async move {
        let app = start(config).await?;
        let url = app.start_url();
        println!("The Datadonor app is running on this device only. Open:\n\n    {url}\n");
        println!("The address works once and only in this browser session. Ctrl-C stops the app and deletes the uploaded export.");
        if open_browser {
            if let Err(e) = open_in_browser(&url) {
                println!("(could not open the browser: {e}; open the address above yourself)");
            }
        }
        let _ = tokio::signal::ctrl_c().await;
        // A browser may hold a connection open; the app stops all the same.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), app.shutdown()).await;
        Ok(())
    })
}

/// Open `url` with the platform's opener (`open` on macOS, `xdg-open` elsewhere).
fn open_in_browser(url: &str) -> std::io::Result<()> {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(|_| ())
}

fn forbidden(reason: &str) -> Response {
    (
        StatusCode::FORBIDDEN,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("403 forbidden: {reason}\n"),
    )
        .into_response()
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// Whether a request that changes state comes from the app's own pages: no `Origin` header
/// (not a browser's cross-origin request), or the app's own origin. Under the app's
/// `Referrer-Policy: no-referrer` a browser sends `Origin: null` with its own form posts; that
/// is accepted only with `Sec-Fetch-Site: same-origin`, a header pages cannot set, which a
/// cross-site page's request (also `null` under its own no-referrer policy) does not carry.
fn same_origin(headers: &HeaderMap, own_origin: &str) -> bool {
    match headers.get(header::ORIGIN).map(HeaderValue::as_bytes) {
        None => true,
        Some(o) if o == own_origin.as_bytes() => true,
        Some(b"null") => headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes() == b"same-origin"),
        Some(_) => false,
    }
}

fn ct_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Host, Origin and session checks, and the exchange of the one-time token for the cookie.
async fn guard(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    let port = s.port;
    if host != format!("127.0.0.1:{port}") && host != format!("localhost:{port}") {
        return forbidden("unexpected Host header");
    }
    let own_origin = format!("http://{host}");
    if !matches!(*req.method(), Method::GET | Method::HEAD)
        && !same_origin(req.headers(), &own_origin)
    {
        return forbidden("request from another origin");
    }
    if cookie(req.headers(), SESSION_COOKIE).is_some_and(|c| ct_eq(c, &s.session)) {
        return next.run(req).await;
    }
    if req.method() == Method::GET && req.uri().path() == "/" {
        let offered = req.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("token="))
                .map(str::to_string)
        });
        if let Some(offered) = offered.map(Zeroizing::new) {
            let accepted = {
                let mut t = s.token.lock().unwrap_or_else(|p| p.into_inner());
                let ok = t.as_ref().is_some_and(|t| ct_eq(t, &offered));
                if ok {
                    *t = None;
                }
                ok
            };
            if accepted {
                let set = format!(
                    "{SESSION_COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
                    s.session.as_str()
                );
                let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
                if let Ok(v) = HeaderValue::from_str(&set) {
                    r.headers_mut().insert(header::SET_COOKIE, v);
                }
                return r;
            }
            return forbidden(
                "this address was already used or is wrong; restart `datadonor app` for a new one",
            );
        }
    }
    forbidden("open the address `datadonor app` printed")
}

async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}
