//! `sftp-mirror serve`: wires journal, mirror, remote, the webhook listener and
//! the workers together, and runs them until the shutdown token fires.

use crate::admin;
use crate::config::Settings;
use crate::http::{self, load_tls, TlsState};
use crate::journal::{now_ms, Journal, JournalError};
use crate::mirror::{Mirror, MirrorError};
use crate::remote::{Remote, RemoteError};
use crate::sync::reconcile::LastReconcile;
use crate::sync::{dispatch, reconcile, Filter, PathLocks, Syncer};
use crate::webhook::{self, Intake, Verifier};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How often finished journal rows older than `journal.keep_done` are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Why the daemon could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The journal could not be opened.
    #[error("journal {path}: {source}{}", readonly_hint(path, source))]
    Journal {
        /// The database file.
        path: String,
        /// The cause.
        source: JournalError,
    },
    /// The mirror folder could not be prepared.
    #[error(transparent)]
    Mirror(#[from] MirrorError),
    /// The webhook listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The SFTP server refused us (host key, credentials): retrying cannot help.
    #[error(transparent)]
    Access(RemoteError),
    /// The TLS certificate or key could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::http::TlsError),
    /// Bad include/exclude patterns.
    #[error("mirror.include/exclude: {0}")]
    Filter(#[from] globset::Error),
}

/// The shared parts of a running daemon, for tests and the admin endpoint.
pub struct Running {
    /// The bound webhook address.
    pub webhook_addr: SocketAddr,
    /// Intake state.
    pub intake: Arc<Intake>,
    /// Sync state.
    pub syncer: Arc<Syncer>,
    /// The journal.
    pub journal: Journal,
    /// The last reconcile pass, if any ran.
    pub last_reconcile: Arc<std::sync::Mutex<Option<LastReconcile>>>,
    /// The bound admin address, if enabled.
    pub admin_addr: Option<SocketAddr>,
    /// The TLS configuration, when the webhook serves HTTPS.
    pub tls: Option<TlsState>,
    /// Set when the SFTP server refused our host-key check or login: the
    /// daemon stops with it (exit 4).
    pub fatal: Arc<std::sync::Mutex<Option<crate::remote::RemoteError>>>,
}

impl Running {
    /// Applies what can change without a restart: webhook secrets, the
    /// Authorization value, the TLS certificate and `mirror.bwlimit`. In-flight requests finish
    /// with the old values.
    ///
    /// # Errors
    /// When the new certificate cannot be loaded (the old one stays).
    pub fn reload(&self, new: &Settings) -> Result<(), ServeError> {
        let wh = &new.webhook;
        if let (Some(state), Some(cert), Some(key)) = (&self.tls, &wh.tls_cert, &wh.tls_key) {
            state.replace(load_tls(cert, key)?);
        }
        let verifier = Verifier::new(wh.secrets.clone(), wh.authorization.as_ref());
        *self.intake.verifier.write().expect("not poisoned") = Arc::new(verifier);
        if self.syncer.bandwidth.rate() != new.mirror.bwlimit {
            self.syncer.bandwidth.set(new.mirror.bwlimit);
            match new.mirror.bwlimit {
                Some(r) => {
                    tracing::info!(bytes_per_second = r, "mirror.bwlimit now {}/s", crate::human::human_bytes(r))
                }
                None => tracing::info!("mirror.bwlimit now off"),
            }
        }
        tracing::info!("reloaded webhook secrets{}", if self.tls.is_some() { " and TLS certificate" } else { "" });
        Ok(())
    }
}

/// For a journal that cannot be written: which file, who we are, and the fix
/// (a command run as root on the daemon's files leaves them root's).
fn readonly_hint(path: &str, e: &JournalError) -> String {
    let text = e.to_string().to_ascii_lowercase();
    let file = std::path::Path::new(path);
    // SQLite says "readonly", or cannot even open (the -wal/-shm beside it
    // cannot be created): either way the folder or file is not ours to write.
    let folder_unwritable = file
        .parent()
        .filter(|d| d.exists())
        .is_some_and(|d| rustix::fs::access(d, rustix::fs::Access::WRITE_OK).is_err());
    if !(text.contains("readonly") || text.contains("read-only") || folder_unwritable) {
        return String::new();
    }
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(file).map(|m| m.uid().to_string()).unwrap_or_else(|_| "?".into());
    let dir = file.parent().map_or_else(|| ".".into(), |d| d.display().to_string());
    format!(
        "; the daemon runs as uid {} and the file belongs to uid {owner}: make {dir} and its files the daemon's \
         (for the package: `chown -R sftp-mirror:sftp-mirror {dir}`), or mount it read-write",
        rustix::process::geteuid().as_raw()
    )
}

impl ServeError {
    /// Whether the operator must fix the setup (exit 2): retrying cannot help.
    pub fn is_setup(&self) -> bool {
        match self {
            ServeError::Bind { .. } | ServeError::Tls(_) | ServeError::Filter(_) => true,
            ServeError::Mirror(m) => m.op != "lock",
            ServeError::Journal { path, source } => !readonly_hint(path, source).is_empty(),
            ServeError::Access(_) => false,
        }
    }
}

/// How a [`Syncer`] holds the mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorAccess {
    /// The one writer (the daemon, a reconcile): takes the lock.
    Write,
    /// Looks only (`reconcile --dry-run`): no lock, nothing created.
    ReadOnly,
}

/// Builds the [`Syncer`] for `settings` (shared by `serve` and `reconcile`).
/// A writer takes the mirror's lock; a reader (dry runs) creates nothing.
///
/// # Errors
/// When the mirror cannot be opened (or another process writes it) or the
/// filters do not compile.
pub fn syncer(settings: &Settings, access: MirrorAccess) -> Result<Syncer, ServeError> {
    let mut mirror = match access {
        MirrorAccess::Write => Mirror::open(&settings.mirror.path)?,
        MirrorAccess::ReadOnly => Mirror::open_read_only(&settings.mirror.path)?,
    };
    if let Some(keep) = settings.mirror.trash {
        mirror.use_trash(keep)?;
    }
    Ok(Syncer {
        remote: Remote::new(settings.sftp.clone()),
        mirror: Arc::new(mirror),
        filter: Filter::new(&settings.mirror.include, &settings.mirror.exclude)?,
        delete: settings.mirror.delete,
        max_delete_ratio: settings.mirror.max_delete_ratio,
        transfers: Arc::new(tokio::sync::Semaphore::new(settings.mirror.concurrency.max(1))),
        bandwidth: crate::remote::Bandwidth::new(settings.mirror.bwlimit),
        hooks: None,
        locks: PathLocks::default(),
        stats: Default::default(),
    })
}

/// Starts the daemon's tasks; returns once the listener is bound and the
/// journal open (the moment to tell systemd READY). The tasks run until `shutdown`.
///
/// # Errors
/// [`ServeError`] when something needed cannot be set up.
pub async fn start(
    settings: &Settings,
    shutdown: CancellationToken,
) -> Result<(Running, tokio::task::JoinHandle<()>), ServeError> {
    let journal_path = settings.journal.path.display().to_string();
    let journal = Journal::open_with(&settings.journal.path, settings.journal.max_attempts)
        .map_err(|source| ServeError::Journal { path: journal_path.clone(), source })?;
    let mut syncer = syncer(settings, MirrorAccess::Write)?;
    syncer.hooks = crate::hooks::Hooks::new(journal.clone(), &settings.hooks, settings.mirror.path.clone());
    let syncer = Arc::new(syncer);
    if let Some(h) = &syncer.hooks {
        h.resolve_armed(&syncer.mirror)
            .await
            .map_err(|source| ServeError::Journal { path: journal_path.clone(), source })?;
    }

    let wake = Arc::new(Notify::new());
    let wh = &settings.webhook;
    let verifier = Verifier::new(wh.secrets.clone(), wh.authorization.as_ref());
    if !verifier.is_enforcing() {
        tracing::warn!("webhook.allow_unsigned = true: requests are accepted without any verification");
    }
    let intake = Arc::new(Intake {
        verifier: RwLock::new(Arc::new(verifier)),
        journal: journal.clone(),
        wake: wake.clone(),
        path: wh.path.clone(),
        max_body: wh.max_body,
        filter: syncer.filter.clone(),
        stats: Default::default(),
    });
    let tls = match (&wh.tls_cert, &wh.tls_key) {
        (Some(c), Some(k)) => Some(TlsState::new(load_tls(c, k)?)),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(wh.listen)
        .await
        .map_err(|source| ServeError::Bind { addr: wh.listen, source })?;
    let webhook_addr = listener.local_addr().map_err(|source| ServeError::Bind { addr: wh.listen, source })?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!("webhook listening on {scheme}://{webhook_addr}{}", wh.path);

    let mut tasks = tokio::task::JoinSet::new();
    let svc = warp::service(webhook::routes(intake.clone()));
    tasks.spawn(http::serve(listener, svc, tls.clone(), wh.header_timeout, shutdown.clone()));
    if let Some(h) = syncer.hooks.clone() {
        tasks.spawn(h.run(shutdown.clone(), CancellationToken::new()));
    }
    tasks.spawn(dispatch::run(
        journal.clone(),
        syncer.clone(),
        wake,
        settings.mirror.concurrency.max(1),
        shutdown.clone(),
    ));
    let (j, keep, stop, s) = (journal.clone(), settings.journal.keep_done, shutdown.clone(), syncer.clone());
    tasks.spawn(async move {
        loop {
            match j.prune(now_ms() - keep.as_millis() as i64).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "pruned old journal rows"),
                Err(e) => tracing::warn!("journal prune failed: {e}"),
            }
            s.prune_trash().await;
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(PRUNE_EVERY) => {}
            }
        }
    });
    let last_reconcile = Arc::new(std::sync::Mutex::new(None));
    let rc = settings.reconcile.clone();
    if rc.on_start || rc.interval.is_some() {
        let (s, last, stop) = (syncer.clone(), last_reconcile.clone(), shutdown.clone());
        let (ratio, conc) = (settings.mirror.max_delete_ratio, settings.mirror.concurrency);
        tasks.spawn(async move {
            let mut first = true;
            loop {
                if !first || rc.on_start {
                    let pass = reconcile_pass(&s, ratio, conc);
                    let outcome = tokio::select! {
                        _ = stop.cancelled() => break,
                        o = pass => o,
                    };
                    *last.lock().expect("not poisoned") = Some(outcome);
                }
                first = false;
                let Some(every) = rc.interval else { break };
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        });
    }
    let admin_addr = match settings.admin.listen {
        None => None,
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })?;
            let bound = l.local_addr().map_err(|source| ServeError::Bind { addr, source })?;
            let state = admin::AdminState {
                intake: intake.clone(),
                syncer: syncer.clone(),
                journal: journal.clone(),
                last_reconcile: last_reconcile.clone(),
                sftp_down_after: settings.admin.sftp_down_after,
            };
            let svc = warp::service(admin::routes(state));
            tasks.spawn(http::serve(l, svc, None, wh.header_timeout, shutdown.clone()));
            tracing::info!("admin listening on http://{bound} (/healthz, /metrics)");
            Some(bound)
        }
    };
    // Listening first, connecting alongside: an unreachable or silent SFTP server
    // must not keep the webhook port closed (events are journaled meanwhile).
    // A refused host key or login will not heal by itself: it stops the daemon.
    let fatal = Arc::new(std::sync::Mutex::new(None));
    let (s, f, stop, host) = (syncer.clone(), fatal.clone(), shutdown.clone(), settings.sftp.host.clone());
    tasks.spawn(async move {
        match s.remote.conn().await {
            Ok(_) => tracing::info!(host = %host, "connected to the SFTP server"),
            Err(e) if e.is_access_error() => {
                *f.lock().expect("not poisoned") = Some(e);
                stop.cancel();
            }
            Err(e) => tracing::warn!("SFTP server not reachable yet (events are journaled meanwhile): {e}"),
        }
    });
    let handle = tokio::spawn(async move { while tasks.join_next().await.is_some() {} });
    Ok((Running { webhook_addr, intake, syncer, journal, last_reconcile, admin_addr, tls, fatal }, handle))
}

/// One reconcile pass inside the daemon, logged with its summary.
async fn reconcile_pass(syncer: &Arc<Syncer>, ratio: f64, concurrency: usize) -> LastReconcile {
    tracing::info!("reconcile pass starting");
    let r =
        reconcile::run(syncer, reconcile::Options::default(), ratio, concurrency, &reconcile::Quiet, &mut |_| {}).await;
    let (ok, result) = match r {
        Ok(s) => {
            let line = s.to_string();
            if s.failed == 0 {
                tracing::info!("reconcile pass done: {line}");
            } else {
                tracing::warn!("reconcile pass done with failures: {line}");
            }
            (s.failed == 0, line)
        }
        Err(e) => {
            tracing::error!("reconcile pass failed: {e}");
            (false, e.to_string())
        }
    };
    LastReconcile { at_ms: now_ms(), ok, result }
}

/// Runs the daemon until SIGTERM/SIGINT (or `shutdown`), then drains.
/// Tells systemd READY once listening, reloads secrets and certificates from
/// `config` on SIGHUP.
///
/// # Errors
/// As [`start`].
pub async fn serve(
    settings: &Settings,
    config: Option<PathBuf>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    use tokio::signal::unix::{signal, SignalKind};
    let sig = |k| signal(k).map_err(|source| ServeError::Bind { addr: settings.webhook.listen, source });
    let (mut term, mut int, mut hup) =
        (sig(SignalKind::terminate())?, sig(SignalKind::interrupt())?, sig(SignalKind::hangup())?);
    let (running, mut handle) = start(settings, shutdown.clone()).await?;
    notify(&[sd_notify::NotifyState::Ready]);
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = shutdown.cancelled() => break,
            _ = &mut handle => { tracing::error!("all daemon tasks ended"); break; }
            _ = hup.recv() => {
                notify(&[sd_notify::NotifyState::Reloading]);
                match Settings::load(config.as_deref()) {
                    Ok(new) => {
                        if let Err(e) = running.reload(&new) {
                            tracing::error!("reload failed, keeping the old settings: {e}");
                        }
                    }
                    Err(e) => tracing::error!("reload failed, keeping the old settings: invalid configuration: {e}"),
                }
                notify(&[sd_notify::NotifyState::Ready]);
            }
        }
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    shutdown.cancel();
    let _ = handle.await;
    if let Some(e) = running.fatal.lock().expect("not poisoned").take() {
        return Err(ServeError::Access(e));
    }
    tracing::info!("stopped");
    Ok(())
}

/// Tells systemd (Type=notify) about our state; a no-op outside systemd.
fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!("sd_notify: {e}");
    }
}
