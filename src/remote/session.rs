//! SSH connections: connect with a deadline, verify the host key, log in, open
//! the SFTP subsystem; a pool of slots that reconnect with backoff.

use super::sftp::{SftpClient, StatusCode};
use super::{RemoteEntry, RemoteError};
use crate::config::{HostKeyPolicy, SftpAuth, SftpSettings};
use russh::client::{self, Handle};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Largest READ we ask for: OpenSSH serves up to 261,120 bytes (its 256 KiB
/// packet limit must hold the reply header too); a server that serves less
/// says so in `limits@openssh.com` or by its first short reply.
pub(crate) const MAX_READ_LEN: u32 = 255 * 1024;
/// Smallest read size we learn from a short reply: below it a short reply is
/// taken as a one-off, not as the server's cap.
pub(crate) const MIN_READ_LEN: u32 = 4 * 1024;
/// SSH channel window: lets the server stream many pipelined READ replies
/// without waiting for window adjustments (the 2 MiB default throttles them).
const WINDOW_SIZE: u32 = 32 * 1024 * 1024;
/// First delay after a failed connect; doubles up to [`MAX_CONNECT_BACKOFF`].
const CONNECT_BACKOFF: Duration = Duration::from_millis(250);
/// Longest delay between connect attempts.
const MAX_CONNECT_BACKOFF: Duration = Duration::from_secs(30);
/// Unanswered keepalives before russh declares the connection dead.
const KEEPALIVE_MAX: usize = 3;

/// AES-GCM first: with AES-NI it is ~1.5× faster than the chacha20 OpenSSH picks.
const CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_128_GCM,
    russh::cipher::AES_256_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_256_CTR,
    russh::cipher::AES_128_CTR,
];

/// One live SSH connection with its SFTP session.
pub struct Conn {
    pub(crate) sftp: SftpClient,
    handle: Handle<HostKeyCheck>,
    /// Bytes per READ request on this server: from `limits@openssh.com`, else
    /// learned from the first short reply (see `fetch`).
    pub(crate) read_len: AtomicU32,
    /// Whether `read_len` is the server's real size (stated, or seen served).
    read_len_known: AtomicBool,
    id: u64,
}

impl Conn {
    /// Whether the SSH connection is gone.
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed() || self.sftp.is_closed()
    }

    /// The READ size to use now.
    pub(crate) fn read_len(&self) -> u32 {
        self.read_len.load(Ordering::Relaxed)
    }

    /// Whether the READ size is the server's (see `fetch`).
    pub(crate) fn read_len_known(&self) -> bool {
        self.read_len_known.load(Ordering::Relaxed)
    }

    /// Records that a READ of `len` was served in full.
    pub(crate) fn confirm_read_len(&self, len: u32) {
        if len >= self.read_len() {
            self.read_len_known.store(true, Ordering::Relaxed);
        }
    }

    /// Records that the server served `n` bytes where more were asked and more
    /// exist: its cap, to ask exactly that from now on (contiguous requests).
    pub(crate) fn learn_read_len(&self, n: u32) {
        self.read_len_known.store(true, Ordering::Relaxed);
        if n >= MIN_READ_LEN {
            let old = self.read_len.fetch_min(n, Ordering::Relaxed);
            if n < old {
                tracing::debug!(
                    conn = self.id,
                    read_len = n,
                    "server serves shorter READs; asking for that from now on"
                );
            }
        }
    }

    /// `lstat` of an absolute remote path; `None` when it does not exist.
    ///
    /// # Errors
    /// A [`RemoteError`] for anything but "no such file".
    pub async fn lstat(&self, path: &[u8]) -> Result<Option<RemoteEntry>, RemoteError> {
        match self.sftp.lstat(path).await {
            Ok(a) => Ok(Some(RemoteEntry::from_attrs(&a))),
            Err(e) => match RemoteError::from_sftp(path, e) {
                RemoteError::Status { code: StatusCode::NoSuchFile, .. } => Ok(None),
                other => Err(other),
            },
        }
    }
}

/// What the host-key check saw, kept for the error message.
#[derive(Default)]
struct Seen {
    key: Option<PublicKey>,
    verdict: Option<RemoteError>,
}

/// The russh client handler: its one job is checking the host key against the pinned policy.
pub(crate) struct HostKeyCheck {
    policy: Option<HostKeyPolicy>,
    host: String,
    port: u16,
    seen: Arc<Mutex<Seen>>,
}

impl client::Handler for HostKeyCheck {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            // No CA is configured, so a certificate proves nothing to us.
            return Ok(false);
        };
        let addr = format!("{}:{}", self.host, self.port);
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let algorithm = key.algorithm().to_string();
        let verdict = match &self.policy {
            None => Some(RemoteError::HostKeyUnknown { addr, fingerprint, algorithm }),
            Some(HostKeyPolicy::Fingerprints(pins)) => {
                if pins.iter().any(|p| p == &fingerprint) {
                    None
                } else {
                    Some(RemoteError::HostKeyMismatch {
                        addr,
                        fingerprint,
                        algorithm,
                        recorded: "in sftp.host_key_fingerprint".into(),
                    })
                }
            }
            // Not there yet: it knows no key (`check --trust-host-key` records one).
            Some(HostKeyPolicy::KnownHosts(path)) if !path.exists() => {
                Some(RemoteError::HostKeyUnknown { addr, fingerprint, algorithm })
            }
            Some(HostKeyPolicy::KnownHosts(path)) => {
                match russh::keys::check_known_hosts_path(&self.host, self.port, key, path) {
                    Ok(true) => None,
                    Ok(false) => Some(RemoteError::HostKeyUnknown { addr, fingerprint, algorithm }),
                    Err(russh::keys::Error::KeyChanged { line }) => Some(RemoteError::HostKeyMismatch {
                        addr,
                        fingerprint,
                        algorithm,
                        recorded: format!("in {} line {line}", path.display()),
                    }),
                    Err(e) => Some(RemoteError::Connect { addr, reason: format!("reading {}: {e}", path.display()) }),
                }
            }
        };
        let ok = verdict.is_none();
        let mut seen = self.seen.lock().expect("not poisoned");
        seen.key = Some(key.clone());
        seen.verdict = verdict;
        Ok(ok)
    }
}

/// Host-key algorithms in the order to ask for: those recorded in `known_hosts`
/// for this host first, so the server shows the key we can check.
fn key_order(s: &SftpSettings) -> Cow<'static, [russh::keys::Algorithm]> {
    let default = russh::Preferred::DEFAULT.key;
    let HostKeyPolicy::KnownHosts(path) = &s.host_keys else {
        return default;
    };
    let Ok(known) = russh::keys::known_hosts::known_host_keys_path(&s.host, s.port, path) else {
        return default;
    };
    let mut order: Vec<russh::keys::Algorithm> = Vec::new();
    for (_, k) in known {
        let alg = k.algorithm();
        if alg.clone().is_rsa() {
            for hash in [Some(HashAlg::Sha512), Some(HashAlg::Sha256)] {
                let a = russh::keys::Algorithm::Rsa { hash };
                if !order.contains(&a) {
                    order.push(a);
                }
            }
        } else if !order.contains(&alg) {
            order.push(alg);
        }
    }
    for a in default.iter() {
        if !order.contains(a) {
            order.push(a.clone());
        }
    }
    Cow::Owned(order)
}

fn client_config(s: &SftpSettings) -> client::Config {
    client::Config {
        nodelay: true,
        window_size: WINDOW_SIZE,
        keepalive_interval: Some(s.keepalive),
        keepalive_max: KEEPALIVE_MAX,
        preferred: russh::Preferred { cipher: Cow::Borrowed(CIPHERS), key: key_order(s), ..russh::Preferred::DEFAULT },
        ..Default::default()
    }
}

/// TCP connect and SSH handshake with a deadline; returns the handle (or the
/// reason) and the host key the server presented, if it got that far.
async fn handshake(
    s: &SftpSettings,
    policy: Option<HostKeyPolicy>,
) -> (Result<Handle<HostKeyCheck>, RemoteError>, Option<PublicKey>) {
    let addr = format!("{}:{}", s.host, s.port);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let handler = HostKeyCheck { policy, host: s.host.clone(), port: s.port, seen: seen.clone() };
    let connect = client::connect(Arc::new(client_config(s)), (s.host.as_str(), s.port), handler);
    let r = tokio::time::timeout(s.timeout, connect).await;
    let mut seen = seen.lock().expect("not poisoned");
    let r = match r {
        Err(_) => Err(RemoteError::Connect { addr, reason: format!("no SSH handshake within {:?}", s.timeout) }),
        Ok(Err(e)) => Err(seen.verdict.take().unwrap_or(RemoteError::Connect { addr, reason: e.to_string() })),
        Ok(Ok(h)) => Ok(h),
    };
    (r, seen.key.take())
}

/// Connects, verifies the host key and logs in; returns the SSH handle.
async fn open_ssh(s: &SftpSettings) -> Result<Handle<HostKeyCheck>, RemoteError> {
    let addr = format!("{}:{}", s.host, s.port);
    let mut handle = handshake(s, Some(s.host_keys.clone())).await.0?;
    let auth = async {
        match &s.auth {
            SftpAuth::Password(pw) => handle.authenticate_password(&s.username, pw.expose()).await,
            SftpAuth::PrivateKey { path, passphrase } => {
                let key = russh::keys::load_secret_key(path, passphrase.as_ref().map(|p| p.expose()))
                    .map_err(russh::Error::Keys)?;
                let hash = handle.best_supported_rsa_hash().await?.flatten();
                handle.authenticate_publickey(&s.username, PrivateKeyWithHashAlg::new(Arc::new(key), hash)).await
            }
        }
    };
    let result = match tokio::time::timeout(s.timeout, auth).await {
        Err(_) => return Err(RemoteError::Connect { addr, reason: "login timed out".into() }),
        Ok(Err(russh::Error::Keys(e))) => {
            let path = match &s.auth {
                SftpAuth::PrivateKey { path, .. } => path.display().to_string(),
                SftpAuth::Password(_) => String::new(),
            };
            return Err(RemoteError::Key { path, reason: e.to_string() });
        }
        Ok(Err(e)) => return Err(RemoteError::Connect { addr, reason: format!("login: {e}") }),
        Ok(Ok(r)) => r,
    };
    if !result.success() {
        // russh reports a connection that ended during login as a refused
        // login: that is a server going away (retried), not bad credentials
        // (which stop the daemon with exit 4).
        if handle.is_closed() {
            return Err(RemoteError::Connect { addr, reason: "the server closed the connection during login".into() });
        }
        return Err(RemoteError::Auth { addr, user: s.username.clone() });
    }
    Ok(handle)
}

async fn open_conn(s: &SftpSettings, id: u64) -> Result<Conn, RemoteError> {
    let handle = open_ssh(s).await?;
    let transport = |e: russh::Error| RemoteError::Transport(format!("opening SFTP subsystem: {e}"));
    let setup = async {
        let channel = handle.channel_open_session().await.map_err(transport)?;
        channel.request_subsystem(true, "sftp").await.map_err(transport)?;
        let (sftp, version) = SftpClient::start(channel.into_stream(), s.timeout)
            .await
            .map_err(|e| RemoteError::from_sftp(b"(start of the SFTP session)", e))?;
        let mut read_len = (MAX_READ_LEN, false);
        if version.has("limits@openssh.com") {
            match sftp.limits().await {
                // 0 means "no limit stated"; a lying huge value is capped by MAX_READ_LEN.
                Ok(l) if l.max_read > 0 => {
                    read_len = (MAX_READ_LEN.min(u32::try_from(l.max_read).unwrap_or(u32::MAX)), true);
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "limits@openssh.com failed; learning the read size instead"),
            }
        }
        Ok::<_, RemoteError>((sftp, read_len))
    };
    let (sftp, read_len) = tokio::time::timeout(s.timeout, setup)
        .await
        .map_err(|_| RemoteError::Transport(format!("SFTP subsystem start timed out after {:?}", s.timeout)))??;
    let (read_len, known) = read_len;
    Ok(Conn {
        sftp,
        handle,
        read_len: AtomicU32::new(read_len.max(MIN_READ_LEN)),
        read_len_known: AtomicBool::new(known),
        id,
    })
}

/// Connects once with no trust and returns the key the server shows
/// (`check --trust-host-key`). Nothing is authenticated.
///
/// # Errors
/// When the server cannot be reached.
pub async fn probe_host_key(s: &SftpSettings) -> Result<PublicKey, RemoteError> {
    match handshake(s, None).await {
        (_, Some(key)) => Ok(key),
        (Err(e), None) => Err(e),
        (Ok(_), None) => Err(RemoteError::Transport("handshake finished without a host key".into())),
    }
}

/// Connects and checks the host key against the configured policy, without
/// logging in (`check`). Returns the key the server showed.
///
/// # Errors
/// The host-key verdict or the connect error.
pub async fn verify_host_key(s: &SftpSettings) -> Result<PublicKey, RemoteError> {
    match handshake(s, Some(s.host_keys.clone())).await {
        (Ok(_), Some(k)) => Ok(k),
        (Ok(_), None) => Err(RemoteError::Transport("handshake finished without a host key".into())),
        (Err(e), _) => Err(e),
    }
}

#[derive(Default)]
struct Backoff {
    failures: u32,
    until: Option<Instant>,
    last: String,
}

/// One pooled connection. The live connection sits behind a plain mutex that
/// is never held across an await; `connecting` serialises connects on this
/// slot and is the only lock held through one, so neither `invalidate` nor a
/// caller that could use another slot ever waits out a reconnect.
struct Slot {
    conn: Mutex<Option<Arc<Conn>>>,
    /// Held while the slot connects (an `Arc`: a background connect owns it).
    connecting: Arc<tokio::sync::Mutex<()>>,
}

struct Inner {
    settings: SftpSettings,
    slots: Vec<Slot>,
    next: AtomicUsize,
    ids: AtomicU64,
    connects: AtomicU64,
    backoff: Mutex<Backoff>,
    /// Since when every connect has failed (None while reachable).
    down_since: Mutex<Option<Instant>>,
    /// Notified whenever a slot gets a live connection.
    came_up: tokio::sync::Notify,
}

/// The connection supervisor: a cheap, cloneable handle to a pool of
/// `sftp.connections` SSH connections.
#[derive(Clone)]
pub struct Remote {
    inner: Arc<Inner>,
}

impl Remote {
    /// A pool for `settings`; connects lazily.
    pub fn new(settings: SftpSettings) -> Remote {
        let n = settings.connections.max(1);
        Remote {
            inner: Arc::new(Inner {
                slots: (0..n)
                    .map(|_| Slot { conn: Mutex::new(None), connecting: Arc::new(tokio::sync::Mutex::new(())) })
                    .collect(),
                settings,
                next: AtomicUsize::new(0),
                ids: AtomicU64::new(0),
                connects: AtomicU64::new(0),
                backoff: Mutex::new(Backoff::default()),
                down_since: Mutex::new(None),
                came_up: tokio::sync::Notify::new(),
            }),
        }
    }

    /// The settings in use.
    pub fn settings(&self) -> &SftpSettings {
        &self.inner.settings
    }

    /// The absolute remote path of a mirror-relative path.
    pub fn path_of(&self, rel: &[u8]) -> Vec<u8> {
        crate::event::join_remote(&self.inner.settings.remote_root, rel)
    }

    /// Successful connects so far (the first one included).
    pub fn connects(&self) -> u64 {
        self.inner.connects.load(Ordering::Relaxed)
    }

    /// A live connection, connecting (or reconnecting) if needed. Spreads callers
    /// over the slots round-robin.
    ///
    /// # Errors
    /// [`RemoteError::Backoff`] while recent connects failed; the connect error otherwise.
    pub async fn conn(&self) -> Result<Arc<Conn>, RemoteError> {
        let n = self.inner.slots.len();
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed) % n;
        if let Some(c) = self.live_at(start) {
            return Ok(c);
        }
        if let Some(c) = self.live(start) {
            // This slot is down while another is up: the caller goes on with that
            // one and this slot connects meanwhile, so the pool fills up to
            // `sftp.connections` (callers took the first live slot, so a second
            // connection was never made) without anyone waiting for it.
            if let Ok(connecting) = self.inner.slots[start].connecting.clone().try_lock_owned() {
                let this = self.clone();
                tokio::spawn(async move {
                    let _connecting = connecting;
                    if this.live_at(start).is_none() && this.backoff_left().is_none() {
                        let _ = this.connect_slot(start).await;
                    }
                });
            }
            return Ok(c);
        }
        loop {
            // Registered before looking, so a slot coming up meanwhile is not missed.
            let came_up = self.inner.came_up.notified();
            if let Some(c) = self.live(start) {
                return Ok(c);
            }
            let slot = &self.inner.slots[start];
            // Connect this slot, unless another slot comes up first.
            let _connecting = tokio::select! {
                g = slot.connecting.lock() => g,
                () = came_up => continue,
            };
            if let Some(c) = self.live(start) {
                return Ok(c);
            }
            if let Some((retry_in_ms, last)) = self.backoff_left() {
                return Err(RemoteError::Backoff { retry_in_ms, last });
            }
            return self.connect_slot(start).await;
        }
    }

    /// How long connects still wait after recent failures, and the last error.
    fn backoff_left(&self) -> Option<(u64, String)> {
        let b = self.inner.backoff.lock().expect("not poisoned");
        let until = b.until.filter(|u| *u > Instant::now())?;
        Some(((until - Instant::now()).as_millis() as u64, b.last.clone()))
    }

    /// Connects slot `i`; the caller holds its `connecting` lock.
    async fn connect_slot(&self, i: usize) -> Result<Arc<Conn>, RemoteError> {
        let id = self.inner.ids.fetch_add(1, Ordering::Relaxed);
        match open_conn(&self.inner.settings, id).await {
            Ok(c) => {
                let c = Arc::new(c);
                *self.inner.slots[i].conn.lock().expect("not poisoned") = Some(c.clone());
                self.inner.connects.fetch_add(1, Ordering::Relaxed);
                *self.inner.backoff.lock().expect("not poisoned") = Backoff::default();
                *self.inner.down_since.lock().expect("not poisoned") = None;
                self.inner.came_up.notify_waiters();
                tracing::debug!(conn = id, "SFTP connection established");
                Ok(c)
            }
            Err(e) => {
                let mut b = self.inner.backoff.lock().expect("not poisoned");
                b.failures += 1;
                let exp = CONNECT_BACKOFF.saturating_mul(1 << b.failures.min(8)).min(MAX_CONNECT_BACKOFF);
                b.until = Some(Instant::now() + exp / 2 + exp.mul_f64(fastrand::f64() / 2.0));
                b.last = e.to_string();
                drop(b);
                // Unreachable only when no slot is up (a second connection
                // failing next to a live one is not an outage).
                if self.live(0).is_none() {
                    self.inner.down_since.lock().expect("not poisoned").get_or_insert_with(Instant::now);
                }
                Err(e)
            }
        }
    }

    /// Slot `i`'s connection, if it is live.
    fn live_at(&self, i: usize) -> Option<Arc<Conn>> {
        let mut g = self.inner.slots[i].conn.lock().expect("not poisoned");
        match g.as_ref() {
            Some(c) if !c.is_closed() => Some(c.clone()),
            Some(_) => {
                *g = None;
                None
            }
            None => None,
        }
    }

    /// A live connection, looking at the slots from `start` round-robin.
    fn live(&self, start: usize) -> Option<Arc<Conn>> {
        let n = self.inner.slots.len();
        (0..n).find_map(|i| self.live_at((start + i) % n))
    }

    /// How long the server has been unreachable (every connect failing), if it is.
    pub fn down_for(&self) -> Option<Duration> {
        self.inner.down_since.lock().expect("not poisoned").map(|t| t.elapsed())
    }

    /// The last connect error, if connects are failing.
    pub fn last_error(&self) -> Option<String> {
        let b = self.inner.backoff.lock().expect("not poisoned");
        (b.failures > 0).then(|| b.last.clone())
    }

    /// Drops `conn` from its slot after a transport error, so the next caller reconnects.
    pub async fn invalidate(&self, conn: &Arc<Conn>) {
        for slot in &self.inner.slots {
            let mut g = slot.conn.lock().expect("not poisoned");
            if g.as_ref().is_some_and(|c| c.id == conn.id) {
                tracing::info!(conn = conn.id, "dropping broken SFTP connection");
                *g = None;
            }
        }
    }

    /// `lstat` of a mirror-relative path (`""` is the remote root), reconnecting
    /// once after a transport error.
    ///
    /// # Errors
    /// A [`RemoteError`] for anything but "no such file".
    pub async fn stat(&self, rel: &[u8]) -> Result<Option<RemoteEntry>, RemoteError> {
        let path = self.path_of(rel);
        self.with_retry(|c| {
            let path = path.clone();
            async move { c.lstat(&path).await }
        })
        .await
    }

    /// Runs `op` on a live connection; after a transport error drops that
    /// connection and tries once more on a fresh one.
    ///
    /// # Errors
    /// The operation's error, or the connect error.
    pub async fn with_retry<T, F, Fut>(&self, op: F) -> Result<T, RemoteError>
    where
        F: Fn(Arc<Conn>) -> Fut,
        Fut: std::future::Future<Output = Result<T, RemoteError>>,
    {
        let c = self.conn().await?;
        match op(c.clone()).await {
            Err(e) if e.is_transport() => {
                self.invalidate(&c).await;
                let c = self.conn().await?;
                let r = op(c.clone()).await;
                if matches!(&r, Err(e) if e.is_transport()) {
                    self.invalidate(&c).await;
                }
                r
            }
            r => r,
        }
    }
}
