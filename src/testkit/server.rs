//! The SSH side of the embedded server: a russh server on `127.0.0.1:0` that
//! authenticates one user (password and/or public keys), accepts `session`
//! channels, and runs the read-only SFTP handler (`sftp.rs`) on each `sftp`
//! subsystem request.
//!
//! The accept loop is our own rather than `russh::server::Server::run_on_socket`,
//! because tests need three things that loop does not give: a count of accepted
//! connections, a way to cut one connection abruptly (the drop-after-bytes fault),
//! and a shutdown that also drops live connections.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use russh::keys::{Algorithm, HashAlg, PrivateKey, PublicKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use super::faults::{Faults, ReadCounter};
use super::sftp::{canonical_root, ConnCtx, SessionStream, SftpHandler};

/// How long [`TestServer::shutdown`] waits for dropped connections to wind down
/// before aborting their tasks.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Rejections are not made constant-time here (it is a test server), only short,
/// so tests exercising a wrong password stay fast.
const AUTH_REJECTION_TIME: Duration = Duration::from_millis(50);

/// What to serve and whom to let in.
#[derive(Clone)]
pub struct ServerOptions {
    /// Local folder served, read-only, as the SFTP root `/`.
    pub root: PathBuf,
    /// The only user name accepted.
    pub username: String,
    /// Password auth is offered only when this is `Some`.
    pub password: Option<String>,
    /// Keys accepted for public-key auth (compared by key data, not comment).
    pub authorized_keys: Vec<PublicKey>,
    /// Initial faults; the server keeps this handle, so later changes apply live.
    pub faults: Faults,
}

impl ServerOptions {
    /// Options for serving `root` to `username`, with no credentials yet and no faults.
    pub fn new(root: impl Into<PathBuf>, username: impl Into<String>) -> Self {
        Self {
            root: root.into(),
            username: username.into(),
            password: None,
            authorized_keys: Vec::new(),
            faults: Faults::default(),
        }
    }
}

impl fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerOptions")
            .field("root", &self.root)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .field("authorized_keys", &self.authorized_keys.len())
            .field("faults", &self.faults)
            .finish()
    }
}

/// A running embedded SFTP server. Dropping it stops it too (without waiting).
pub struct TestServer {
    addr: SocketAddr,
    host_key: PublicKey,
    /// `ssh-ed25519 AAAA…`, precomputed so accessors cannot fail.
    host_key_openssh: String,
    faults: Faults,
    conns: Arc<Connections>,
    stop: watch::Sender<bool>,
    accept_task: Option<JoinHandle<()>>,
}

impl fmt::Debug for TestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestServer")
            .field("addr", &self.addr)
            .field("host_key", &self.host_key_fingerprint())
            .finish_non_exhaustive()
    }
}

impl TestServer {
    /// Binds `127.0.0.1:0`, generates a fresh ed25519 host key and starts serving.
    ///
    /// # Errors
    /// Fails if `opts.root` is missing or not a directory, or binding fails.
    pub async fn start(opts: ServerOptions) -> io::Result<TestServer> {
        let root = Arc::new(canonical_root(opts.root).await?);
        let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).map_err(io::Error::other)?;
        let host_key = key.public_key().clone();
        let host_key_openssh =
            host_key.to_openssh().map_err(io::Error::other)?.split_whitespace().take(2).collect::<Vec<_>>().join(" ");

        let mut methods = MethodSet::empty();
        methods.push(MethodKind::PublicKey);
        if opts.password.is_some() {
            methods.push(MethodKind::Password);
        }
        let config = Arc::new(russh::server::Config {
            methods,
            auth_rejection_time: AUTH_REJECTION_TIME,
            // OpenSSH probes with "none" first; answering at once saves a round of waiting.
            auth_rejection_time_initial: Some(Duration::ZERO),
            keys: vec![key],
            nodelay: true,
            ..Default::default()
        });

        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let conns = Arc::new(Connections::default());
        let ctx = Arc::new(ServerCtx {
            root,
            username: opts.username,
            password: opts.password,
            authorized_keys: opts.authorized_keys,
            faults: opts.faults.clone(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let accept_task = tokio::spawn(accept_loop(listener, config, ctx, conns.clone(), stop_rx));
        tracing::debug!(%addr, "test sftp server listening");

        Ok(TestServer {
            addr,
            host_key,
            host_key_openssh,
            faults: opts.faults,
            conns,
            stop,
            accept_task: Some(accept_task),
        })
    }

    /// The bound address (`127.0.0.1:<ephemeral port>`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's ed25519 host key, for pinning in clients.
    pub fn host_key(&self) -> &PublicKey {
        &self.host_key
    }

    /// `SHA256:…`, as printed by `ssh-keygen -l`.
    pub fn host_key_fingerprint(&self) -> String {
        self.host_key.fingerprint(HashAlg::Sha256).to_string()
    }

    /// `[127.0.0.1]:PORT ssh-ed25519 AAAA…`, one line for a known_hosts file.
    pub fn known_hosts_line(&self) -> String {
        format!("[{}]:{} {}", self.addr.ip(), self.addr.port(), self.host_key_openssh)
    }

    /// Another handle onto the live fault table.
    pub fn faults(&self) -> Faults {
        self.faults.clone()
    }

    /// TCP connections accepted so far (a reconnect shows up as +1).
    pub fn connections_accepted(&self) -> u64 {
        self.conns.accepted.load(Ordering::Relaxed)
    }

    /// Stops accepting, drops every live connection, and waits for the server's
    /// tasks to finish (bounded by a few seconds).
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.accept_task.take() {
            // The accept loop drops the listener and kills live connections on stop.
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "test server accept task failed");
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        self.conns.kill_all();
    }
}

/// Immutable per-server settings shared by all connections.
struct ServerCtx {
    root: Arc<PathBuf>,
    username: String,
    password: Option<String>,
    authorized_keys: Vec<PublicKey>,
    faults: Faults,
}

impl ServerCtx {
    fn key_allowed(&self, user: &str, key: &PublicKey) -> bool {
        user == self.username && self.authorized_keys.iter().any(|k| k.key_data() == key.key_data())
    }
}

/// Live connections, each by a duplicate of its socket: shutting that duplicate
/// down cuts the connection no matter which task owns the original.
#[derive(Default)]
struct Connections {
    accepted: AtomicU64,
    live: Mutex<HashMap<u64, std::net::TcpStream>>,
}

impl Connections {
    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, std::net::TcpStream>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn kill(&self, id: u64) {
        if let Some(sock) = self.live().get(&id) {
            let _ = sock.shutdown(Shutdown::Both);
        }
    }

    /// Forgets a finished connection. Closing the duplicate matters: while it is
    /// open the socket stays open and the client never sees the close.
    fn remove(&self, id: u64) {
        self.live().remove(&id);
    }

    fn kill_all(&self) {
        for (_, sock) in self.live().drain() {
            let _ = sock.shutdown(Shutdown::Both);
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: Arc<russh::server::Config>,
    ctx: Arc<ServerCtx>,
    conns: Arc<Connections>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tasks = JoinSet::new();
    let mut next_id = 0u64;
    loop {
        tokio::select! {
            // Only ever set to true; a dropped sender (TestServer gone) also ends the loop.
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    conns.accepted.fetch_add(1, Ordering::Relaxed);
                    if ctx.faults.take_stalled_handshake() {
                        // Held open, never answered, until the server stops.
                        let mut stop = stop.clone();
                        tasks.spawn(async move {
                            let _tcp = tcp;
                            let _ = stop.changed().await;
                        });
                        continue;
                    }
                    next_id += 1;
                    match register(tcp, next_id, &conns) {
                        Ok((tcp, conn)) => {
                            let fut = serve_connection(
                                tcp, next_id, peer, config.clone(), ctx.clone(), conns.clone(), conn,
                            );
                            tasks.spawn(fut);
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot set up connection"),
                    }
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    conns.kill_all();
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!("test server connections did not end in time; aborting them");
    }
    // Dropping the JoinSet aborts whatever is left.
}

/// Keeps a duplicate of the socket for killing it, and builds the connection's
/// shared context.
fn register(tcp: TcpStream, id: u64, conns: &Arc<Connections>) -> io::Result<(TcpStream, Arc<ConnCtx>)> {
    let _ = tcp.set_nodelay(true);
    let std_tcp = tcp.into_std()?;
    let dup = std_tcp.try_clone()?;
    let tcp = TcpStream::from_std(std_tcp)?;
    conns.live().insert(id, dup);

    let killed = Arc::new(AtomicBool::new(false));
    let conns2 = conns.clone();
    let flag = killed.clone();
    let conn = Arc::new(ConnCtx {
        counter: ReadCounter::default(),
        killed,
        kill: Box::new(move || {
            flag.store(true, Ordering::Release);
            conns2.kill(id);
        }),
    });
    Ok((tcp, conn))
}

async fn serve_connection(
    tcp: TcpStream,
    id: u64,
    peer: SocketAddr,
    config: Arc<russh::server::Config>,
    ctx: Arc<ServerCtx>,
    conns: Arc<Connections>,
    conn: Arc<ConnCtx>,
) {
    let handler = SshHandler { ctx, conn, channels: HashMap::new() };
    match russh::server::run_stream(config, tcp, handler).await {
        Ok(session) => {
            if let Err(e) = session.await {
                tracing::debug!(id, %peer, error = %e, "ssh connection ended with error");
            }
        }
        Err(e) => tracing::debug!(id, %peer, error = %e, "ssh handshake failed"),
    }
    conns.remove(id);
}

/// Per-connection russh handler.
struct SshHandler {
    ctx: Arc<ServerCtx>,
    conn: Arc<ConnCtx>,
    /// Session channels opened but not yet turned into an SFTP subsystem.
    channels: HashMap<ChannelId, Channel<Msg>>,
}

impl russh::server::Handler for SshHandler {
    type Error = russh::Error;

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        if self.ctx.faults.take_dropped_login() {
            return Err(russh::Error::Disconnect);
        }
        let ok = user == self.ctx.username && self.ctx.password.as_deref() == Some(password);
        Ok(if ok { Auth::Accept } else { Auth::reject() })
    }

    async fn auth_publickey_offered(&mut self, user: &str, offer: PublicKeyOffer<'_>) -> Result<Auth, Self::Error> {
        if self.ctx.faults.take_dropped_login() {
            return Err(russh::Error::Disconnect);
        }
        // Refuse unknown keys before the client bothers signing.
        let ok = self.ctx.key_allowed(user, offer.public_key);
        Ok(if ok { Auth::Accept } else { Auth::reject() })
    }

    async fn auth_publickey(&mut self, user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        let ok = self.ctx.key_allowed(user, key.public_key);
        Ok(if ok { Auth::Accept } else { Auth::reject() })
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn channel_close(&mut self, channel: ChannelId, _session: &mut Session) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel_id: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let channel = match (name, self.channels.remove(&channel_id)) {
            ("sftp", Some(channel)) => channel,
            (_, other) => {
                if let Some(channel) = other {
                    self.channels.insert(channel_id, channel);
                }
                session.channel_failure(channel_id)?;
                return Ok(());
            }
        };
        session.channel_success(channel_id)?;

        // russh-sftp's server loop never ends the channel itself. When the client
        // finishes (EOF), send exit-status 0 and EOF; dropping the stream then
        // sends CLOSE. Without this OpenSSH's `sftp` waits forever on exit.
        // Handle messages share one queue with channel data, so they stay ordered.
        let handle = session.handle();
        let on_eof = async move {
            let _ = handle.exit_status_request(channel_id, 0).await;
            let _ = handle.eof(channel_id).await;
        }
        .boxed();
        let stream = SessionStream::new(channel.into_stream(), self.conn.killed.clone(), Some(on_eof));
        let sftp = SftpHandler::new(self.ctx.root.clone(), self.ctx.faults.clone(), self.conn.clone());
        // Spawns the session loop and returns at once.
        russh_sftp::server::run(stream, sftp).await;
        Ok(())
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }
}
