//! Directory listings, streamed batch by batch over `RawSftpSession`.
//!
//! russh-sftp's `read_dir` gathers a whole directory with a quadratic copy per
//! batch and returns the batches reversed; we read batches ourselves, keep
//! them in arrival order and never hold more than the listing itself.

use super::session::Conn;
use super::{RemoteEntry, RemoteError};
use russh_sftp::protocol::StatusCode;

/// One entry of a remote directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteDirEntry {
    /// File name (no `/`).
    pub name: String,
    /// Its attributes as READDIR returned them (lstat-style on OpenSSH).
    pub entry: RemoteEntry,
}

/// Lists the directory at absolute remote `path` (without `.` and `..`).
///
/// # Errors
/// A [`RemoteError`]; `NoSuchFile` when the directory is gone.
pub async fn list_dir(conn: &Conn, path: &str) -> Result<Vec<RemoteDirEntry>, RemoteError> {
    let sftp = &conn.sftp;
    let timeout = |_| RemoteError::Timeout { path: path.to_owned() };
    let handle = tokio::time::timeout(conn.timeout, sftp.opendir(path))
        .await
        .map_err(timeout)?
        .map_err(|e| RemoteError::from_sftp(path, e))?
        .handle;
    let mut out = Vec::new();
    let result = loop {
        let Ok(batch) = tokio::time::timeout(conn.timeout, sftp.readdir(handle.clone())).await else {
            break Err(RemoteError::Timeout { path: path.to_owned() });
        };
        match batch {
            Ok(name) => out.extend(
                name.files
                    .into_iter()
                    .filter(|f| f.filename != "." && f.filename != "..")
                    .map(|f| RemoteDirEntry { entry: RemoteEntry::from_attrs(&f.attrs), name: f.filename }),
            ),
            Err(russh_sftp::client::error::Error::Status(s)) if s.status_code == StatusCode::Eof => break Ok(()),
            Err(e) => break Err(RemoteError::from_sftp(path, e)),
        }
    };
    if !matches!(&result, Err(e) if e.is_transport()) {
        let _ = sftp.close(handle).await;
    }
    result.map(|()| out)
}
