//! Pipelined download of one remote file into a local file.
//!
//! We drive `RawSftpSession` READs ourselves instead of russh-sftp's `File`:
//! many requests stay in flight (latency hidden), we ask exactly for the bytes
//! the file has (a small file costs one READ, not a probe plus 16 reads past
//! its end), and the timeout means "no reply at all for `sftp.timeout`", not
//! "this queued request waited long" (russh-sftp starts each request's clock
//! when it is queued, which fails deep pipelines on slow links). Should its
//! backstop timeout still fire, the request is asked again with a smaller window.

use super::session::Conn;
use super::{RemoteEntry, RemoteError};
use futures::stream::{FuturesUnordered, StreamExt};
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use std::collections::VecDeque;
use std::os::unix::fs::FileExt;

/// READ requests in flight per file at most.
pub const MAX_IN_FLIGHT: usize = 64;
/// Bytes written between background flushes of a large download: the final
/// durability flush then has little left to write, instead of a whole file.
const FLUSH_EVERY: u64 = 64 << 20;
/// Timeouts in a row (without a successful READ between them) before giving up.
const MAX_TIMEOUTS_IN_A_ROW: u32 = 8;

/// How a download ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Downloaded {
    /// Bytes written.
    pub bytes: u64,
    /// `false` when the file ended before `size`: it changed under us.
    pub complete: bool,
    /// `lstat` of the path taken right after the last READ (sent together with
    /// CLOSE to save a round trip): the caller compares it with what it expected.
    pub after: Option<RemoteEntry>,
}

/// Reads `size` bytes of remote `path` into `out` at the same offsets.
///
/// Writes go straight to the page cache with positioned writes; they are short
/// and the caller fsyncs once at the end.
///
/// # Errors
/// A [`RemoteError`] on a server error, a lost connection, repeated timeouts,
/// or a local write error (reported as a transport-neutral status).
pub async fn download(conn: &Conn, path: &str, size: u64, out: &std::fs::File) -> Result<Downloaded, LocalOrRemote> {
    if size == 0 {
        let after = conn.lstat(path).await?;
        return Ok(Downloaded { bytes: 0, complete: true, after });
    }
    let sftp = &conn.sftp;
    let handle = sftp
        .open(path, OpenFlags::READ, FileAttributes::default())
        .await
        .map_err(|e| RemoteError::from_sftp(path, e))?
        .handle;
    let chunk = u64::from(conn.read_len.max(1));
    let mut todo: VecDeque<(u64, u32)> =
        (0..size.div_ceil(chunk)).map(|i| (i * chunk, (size - i * chunk).min(chunk) as u32)).collect();
    let mut window = MAX_IN_FLIGHT;
    let mut timeouts = 0;
    let mut written = 0u64;
    let mut eof_at: Option<u64> = None;
    let mut in_flight = FuturesUnordered::new();
    let mut flushed_at = 0u64;
    let mut flushing: Option<tokio::task::JoinHandle<()>> = None;
    let result = loop {
        while in_flight.len() < window {
            let Some((off, len)) = todo.pop_front() else {
                break;
            };
            if eof_at.is_some_and(|e| off >= e) {
                continue;
            }
            let h = handle.clone();
            in_flight.push(async move { (off, len, sftp.read(h, off, len).await) });
        }
        let Some((off, len, r)) = in_flight.next().await else {
            break Ok(());
        };
        match r {
            Ok(data) if !data.data.is_empty() => {
                timeouts = 0;
                let n = data.data.len() as u64;
                if let Err(e) = out.write_all_at(&data.data, off) {
                    break Err(LocalOrRemote::Local(e));
                }
                written += n;
                if written - flushed_at >= FLUSH_EVERY && flushing.as_ref().is_none_or(|h| h.is_finished()) {
                    flushed_at = written;
                    if let Ok(f) = out.try_clone() {
                        // Errors surface in the final, awaited flush of the commit.
                        flushing = Some(tokio::task::spawn_blocking(move || drop(f.sync_data())));
                    }
                }
                if n < u64::from(len) {
                    // A short read is legal SFTP: ask for the rest.
                    todo.push_front((off + n, len - n as u32));
                }
            }
            Ok(_) => eof_at = Some(eof_at.map_or(off, |e| e.min(off))),
            Err(russh_sftp::client::error::Error::Status(s)) if s.status_code == StatusCode::Eof => {
                eof_at = Some(eof_at.map_or(off, |e| e.min(off)));
            }
            Err(russh_sftp::client::error::Error::Timeout) => {
                timeouts += 1;
                if timeouts > MAX_TIMEOUTS_IN_A_ROW {
                    break Err(RemoteError::Timeout { path: path.to_owned() }.into());
                }
                window = (window / 2).max(1);
                tracing::debug!(path, window, "READ timed out; asking again with a smaller window");
                todo.push_front((off, len));
            }
            Err(e) => break Err(RemoteError::from_sftp(path, e).into()),
        }
    };
    drop(in_flight);
    if let Some(h) = flushing {
        let _ = h.await;
    }
    if let Err(e) = result {
        // Close errors do not matter for a read-only handle; don't wait on a dead link.
        if !matches!(&e, LocalOrRemote::Remote(r) if r.is_transport()) {
            let _ = sftp.close(handle).await;
        }
        return Err(e);
    }
    // CLOSE and the confirming LSTAT travel together: one round trip, not two.
    let (_, after) = tokio::join!(sftp.close(handle), conn.lstat(path));
    Ok(Downloaded { bytes: written, complete: eof_at.is_none(), after: after? })
}

/// A download failed on our side (disk) or the server's.
#[derive(Debug, thiserror::Error)]
pub enum LocalOrRemote {
    /// Writing the staging file failed.
    #[error("writing the staging file: {0}")]
    Local(std::io::Error),
    /// The server or the connection failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
}
