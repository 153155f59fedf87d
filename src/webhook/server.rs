//! Our own accept loop for the webhook (and admin) listeners: plain HTTP or
//! TLS (rustls), with a connection limit, a TLS-handshake and header-read
//! deadline against slow clients (slowloris), certificates that can be swapped
//! while running (SIGHUP), and graceful shutdown that lets in-flight requests
//! finish. warp 0.4 has no TLS, so its filter is served as a tower service.

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Connections served at once; more wait in the kernel's accept queue.
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
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = limit.clone().acquire_owned() => p.expect("semaphore never closed"),
        };
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
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(service.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.as_ref().map(TlsState::current);
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(stream), svc);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(%peer, "connection ended: {e}");
                    }
                }
                Some(cfg) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                    let tls_stream = match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, "TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = builder.serve_connection(TokioIo::new(tls_stream), svc);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(%peer, "connection ended: {e}");
                    }
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!("some webhook connections were still open after {SHUTDOWN_GRACE:?}");
    }
}
