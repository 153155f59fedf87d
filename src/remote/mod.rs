//! The SFTP side: the only module that talks SSH/SFTP.
//!
//! [`Remote`] is a cheap handle over a small pool of SSH connections (the
//! supervisor): each slot connects lazily, is re-checked before use, and is
//! replaced after a transport error, with exponential backoff and jitter
//! between failed connects. Jobs borrow the current [`Conn`] for one
//! operation and never keep a dead one. `fetch` downloads with deep read
//! pipelining; `walk` lists directories in streamed batches.
//!
//! Host keys are pinned (`known_hosts` or SHA-256 fingerprints); there is no
//! accept-anything mode, and a mismatch names the key the server showed.

pub mod bandwidth;
mod fetch;
mod session;
pub mod sftp;
mod walk;

pub use bandwidth::Bandwidth;
pub use fetch::{download, DownloadError, Downloaded, Ledger, Out, Progress};
pub use session::{probe_host_key, verify_host_key, Conn, Remote};
pub use sftp::StatusCode;
pub use walk::{list_dir, list_dir_upto, RemoteDirEntry, MAX_DEPTH, MAX_DIR_ENTRIES};

use sftp::{Attrs, FileKind, SftpError};

/// A remote failure, classified so callers can branch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RemoteError {
    /// TCP connect failed or the handshake did not finish in time.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The server's host key is not in `known_hosts` / the pinned fingerprints.
    #[error(
        "host key of {addr} is not trusted: the server presented {fingerprint} ({algorithm}); \
         if that is the right key, pin it with `host_key_fingerprint = \"{fingerprint}\"` \
         or record it with `sftp-mirror check --trust-host-key`"
    )]
    HostKeyUnknown {
        /// `host:port`.
        addr: String,
        /// `SHA256:…`.
        fingerprint: String,
        /// e.g. `ssh-ed25519`.
        algorithm: String,
    },
    /// The host key differs from the one recorded: possibly an attack.
    #[error(
        "HOST KEY MISMATCH for {addr}: the server presented {fingerprint} ({algorithm}), \
         which differs from the key recorded {recorded}; refusing to connect"
    )]
    HostKeyMismatch {
        /// `host:port`.
        addr: String,
        /// `SHA256:…` the server presented.
        fingerprint: String,
        /// e.g. `ssh-ed25519`.
        algorithm: String,
        /// Where the recorded key is (file and line, or "in host_key_fingerprint").
        recorded: String,
    },
    /// The server refused our credentials.
    #[error("authentication failed for user {user} on {addr}")]
    Auth {
        /// `host:port`.
        addr: String,
        /// User name.
        user: String,
    },
    /// The private key file could not be loaded.
    #[error("cannot load private key {path}: {reason}")]
    Key {
        /// The key file.
        path: String,
        /// Why (wrong passphrase, bad format …).
        reason: String,
    },
    /// The SSH connection or SFTP channel failed or closed. Text, not a
    /// source: a `RemoteError` is cloned to every caller waiting on the same
    /// connection, and russh's and the SFTP client's errors are not `Clone`.
    #[error("SFTP connection lost: {0}")]
    Transport(String),
    /// Recent connects failed; not retried before the backoff ends.
    #[error("SFTP server unreachable, next try in {retry_in_ms} ms: {last}")]
    Backoff {
        /// Time left.
        retry_in_ms: u64,
        /// The last connect error.
        last: String,
    },
    /// A request got no answer within `sftp.timeout`.
    #[error("{path}: SFTP request timed out")]
    Timeout {
        /// Remote path.
        path: String,
    },
    /// The server answered with an error status.
    #[error("{path}: {code}: {message}")]
    Status {
        /// Remote path.
        path: String,
        /// SFTP status.
        code: StatusCode,
        /// The server's message.
        message: String,
    },
    /// The mirror's file system has less free space than the file declares.
    #[error(
        "{path}: not enough free space in the mirror for {size} bytes ({free} bytes free); \
         free some space, the download is retried later"
    )]
    NoSpace {
        /// Remote path.
        path: String,
        /// Bytes the server declared.
        size: u64,
        /// Bytes free to us.
        free: u64,
    },
    /// The remote file changed while we downloaded it, several times in a row.
    #[error("{path}: file kept changing during download")]
    Unstable {
        /// Remote path.
        path: String,
    },
}

impl RemoteError {
    /// Configuration/trust problems that retrying cannot fix (exit code 4).
    pub fn is_access_error(&self) -> bool {
        matches!(
            self,
            RemoteError::HostKeyUnknown { .. }
                | RemoteError::HostKeyMismatch { .. }
                | RemoteError::Auth { .. }
                | RemoteError::Key { .. }
        )
    }

    /// Whether the connection should be dropped and re-established.
    pub fn is_transport(&self) -> bool {
        matches!(self, RemoteError::Transport(_) | RemoteError::Timeout { .. })
    }

    /// Maps a client error for `path`. A server that breaks the protocol is
    /// treated like a lost connection: it is dropped and reconnected.
    pub(crate) fn from_sftp(path: &[u8], e: SftpError) -> RemoteError {
        let path = shown(path);
        match e {
            SftpError::Status { code, message } => RemoteError::Status { path, code, message },
            SftpError::Timeout(_) => RemoteError::Timeout { path },
            other => RemoteError::Transport(format!("{path}: {other}")),
        }
    }

    /// Whether the remote says the path does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, RemoteError::Status { code: StatusCode::NoSuchFile, .. })
    }
}

/// A remote path for messages (bytes that are not UTF-8 shown as U+FFFD).
pub(crate) fn shown(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// What a remote path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symlink, device … (SFTP To Go has none; never mirrored).
    Other,
}

/// `lstat` of a remote path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteEntry {
    /// Type.
    pub kind: RemoteKind,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds since the epoch (SFTP v3 has whole seconds).
    pub mtime: u64,
}

impl RemoteEntry {
    pub(crate) fn from_attrs(a: &Attrs) -> RemoteEntry {
        let kind = match a.kind() {
            FileKind::File => RemoteKind::File,
            FileKind::Dir => RemoteKind::Dir,
            FileKind::Symlink | FileKind::Other => RemoteKind::Other,
        };
        RemoteEntry { kind, size: a.size.unwrap_or(0), mtime: u64::from(a.mtime.unwrap_or(0)) }
    }
}
