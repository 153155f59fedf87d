//! HTTP plumbing shared by the webhook and admin listeners: our own accept
//! loop for plain HTTP or TLS (rustls), with a connection limit, certificates that can be swapped
//! while running (SIGHUP), and graceful shutdown that lets in-flight requests
//! finish. warp 0.4 has no TLS, so its filter is served as a tower service.
//!
//! Silent clients cannot hold the door shut: a connection must have its first
//! request under way within `header_timeout` *from accept* (TLS handshake,
//! HTTP/2 preface and headers together), and when every slot is taken the
//! oldest connection with no request in flight is closed to make room for the
//! new one. SFTP To Go pauses a webhook after five unanswered deliveries.

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Connections served at once; past it the oldest idle one is closed.
pub const MAX_CONNECTIONS: usize = 512;
/// How long in-flight requests get to finish at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A TLS setup problem (bad or unreadable PEM files).
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsError(String);

/// The current TLS configuration; replaced on reload, read on every accept.
#[derive(Clone)]
pub struct TlsState(Arc<RwLock<Arc<ServerConfig>>>);

/// Loads a PEM certificate chain and private key (Let's Encrypt's
/// `fullchain.pem` / `privkey.pem`).
///
/// # Errors
/// [`TlsError`] naming the file and the problem.
pub fn load_tls(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError(format!("webhook.tls_cert {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!("webhook.tls_cert {}: no certificate found", cert.display())));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError(format!("webhook.tls_key {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError(format!("certificate and key do not fit together: {e}")))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

impl TlsState {
    /// Wraps a loaded configuration.
    pub fn new(cfg: Arc<ServerConfig>) -> TlsState {
        TlsState(Arc::new(RwLock::new(cfg)))
    }

    /// Swaps in a new configuration; connections already open keep theirs.
    pub fn replace(&self, cfg: Arc<ServerConfig>) {
        *self.0.write().expect("not poisoned") = cfg;
    }

    fn current(&self) -> Arc<ServerConfig> {
        self.0.read().expect("not poisoned").clone()
    }
}

/// What the accept loop knows of one open connection.
struct ConnState {
    /// Closes the connection (eviction).
    close: CancellationToken,
    /// Requests in flight on it.
    inflight: AtomicUsize,
    /// Whether a request has reached the service yet.
    started: AtomicBool,
}

/// The open connections, oldest first, so the idlest can be evicted.
#[derive(Default)]
struct Registry {
    open: Mutex<BTreeMap<u64, Arc<ConnState>>>,
}

impl Registry {
    /// Closes the oldest connection with no request in flight; false if none.
    fn evict_one(&self) -> bool {
        let open = self.open.lock().expect("not poisoned");
        match open.values().find(|c| c.inflight.load(Ordering::Relaxed) == 0 && !c.close.is_cancelled()) {
            Some(c) => {
                c.close.cancel();
                true
            }
            None => false,
        }
    }
}

/// The service of one connection: marks it busy while a request runs.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    state: Arc<ConnState>,
}

impl<S, B> tower_service::Service<warp::http::Request<B>> for Tracked<S>
where
    S: tower_service::Service<
        warp::http::Request<B>,
        Response = warp::reply::Response,
        Error = std::convert::Infallible,
    >,
    S::Future: Send + 'static,
{
    type Response = warp::reply::Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: warp::http::Request<B>) -> Self::Future {
        self.state.started.store(true, Ordering::Relaxed);
        self.state.inflight.fetch_add(1, Ordering::Relaxed);
        let state = self.state.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            state.inflight.fetch_sub(1, Ordering::Relaxed);
            r
        })
    }
}

/// Serves `service` (a warp filter turned into a service with `warp::service`)
/// on `listener` until `shutdown`, then waits up to [`SHUTDOWN_GRACE`] for
/// in-flight requests.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    tls: Option<TlsState>,
    header_timeout: Duration,
    shutdown: CancellationToken,
) where
    S: tower_service::Service<
            warp::http::Request<hyper::body::Incoming>,
            Response = warp::reply::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let registry = Arc::new(Registry::default());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    let mut seq = 0u64;
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let accepted = tokio::time::Instant::now();
        // A full house: make room by closing the idlest connection, else wait
        // for one to finish (every slot has a request in flight).
        let permit = match limit.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if registry.evict_one() {
                    tracing::debug!(%peer, "connection limit reached; closed the oldest idle connection");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    p = limit.clone().acquire_owned() => p.expect("semaphore never closed"),
                }
            }
        };
        let _ = stream.set_nodelay(true);
        seq += 1;
        let id = seq;
        let state = Arc::new(ConnState {
            // Not a child of `shutdown`: at shutdown, requests in flight finish (graceful).
            close: CancellationToken::new(),
            inflight: AtomicUsize::new(0),
            started: AtomicBool::new(false),
        });
        registry.open.lock().expect("not poisoned").insert(id, state.clone());
        let svc = TowerToHyperService::new(Tracked { inner: service.clone(), state: state.clone() });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.as_ref().map(TlsState::current);
        let registry = registry.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let deadline = accepted + header_timeout;
            let outcome = async {
                match tls {
                    None => {
                        let conn = builder.serve_connection(TokioIo::new(stream), svc);
                        run_connection(watcher.watch(conn.into_owned()), &state, deadline).await
                    }
                    Some(cfg) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                        let tls_stream = match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => return format!("TLS handshake failed: {e}"),
                            Err(_) => return "TLS handshake timed out".into(),
                        };
                        let conn = builder.serve_connection(TokioIo::new(tls_stream), svc);
                        run_connection(watcher.watch(conn.into_owned()), &state, deadline).await
                    }
                }
            };
            let why = tokio::select! {
                why = outcome => why,
                () = state.close.cancelled() => "closed to make room or at shutdown".into(),
            };
            tracing::debug!(%peer, "connection ended: {why}");
            registry.open.lock().expect("not poisoned").remove(&id);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!("some webhook connections were still open after {SHUTDOWN_GRACE:?}");
    }
}

/// Drives one connection; closes it if no request has started by `deadline`.
async fn run_connection<F, E>(conn: F, state: &ConnState, deadline: tokio::time::Instant) -> String
where
    F: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    let mut waiting = true;
    loop {
        tokio::select! {
            r = &mut conn => return r.map_or_else(|e| e.to_string(), |()| "closed".into()),
            () = tokio::time::sleep_until(deadline), if waiting => {
                if !state.started.load(Ordering::Relaxed) {
                    return "no request within webhook.header_timeout of accept".into();
                }
                waiting = false;
            }
        }
    }
}
