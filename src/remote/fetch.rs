//! Pipelined, resumable download of one remote file into a local file.
//!
//! Many READs stay in flight (latency hidden) and stay *contiguous*: the read
//! size is the server's own (`limits@openssh.com`, else learned from the first
//! short reply on the connection), so a server that caps replies at 32 KiB is
//! asked for 32 KiB pieces in order, which is what a gateway reading its
//! backend sequentially serves fastest. Requests are made lazily from an
//! offset, never a list sized from what the server declares; the bytes in
//! flight are bounded by [`WINDOW_BYTES`]. Every request has the session's
//! reply deadline; one that passes fails the transfer, which the caller
//! resumes on a fresh connection from the contiguous prefix already written.

use super::session::Conn;
use super::{Bandwidth, RemoteEntry, RemoteError};
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::{BTreeMap, VecDeque};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes of READ replies in flight per file at most.
const WINDOW_BYTES: u64 = 16 << 20;
/// READ requests in flight per file: at least this many…
const MIN_IN_FLIGHT: u64 = 4;
/// …and at most this many (small read sizes on a fast link).
const MAX_IN_FLIGHT: u64 = 256;
/// Bytes written between background flushes of a large download: the final
/// durability flush then has little left to write, and a download interrupted
/// by a crash resumes from the last flushed prefix.
const FLUSH_EVERY: u64 = crate::mirror::RESUMABLE_FROM;

/// How a download ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Downloaded {
    /// Bytes the local file holds now (resumed prefix included).
    pub bytes: u64,
    /// `false` when the file ended before `size`: it changed under us.
    pub complete: bool,
    /// `lstat` of the path taken right after the last READ (sent together with
    /// CLOSE to save a round trip): the caller compares it with what it expected.
    pub after: Option<RemoteEntry>,
}

/// Where a download stands, kept by the caller across attempts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Every byte below this offset is written to the local file.
    pub contiguous: u64,
}

impl Progress {
    /// Notes that `off..end` is written; `done` holds the ranges written above
    /// the contiguous prefix.
    fn advance(&mut self, done: &mut BTreeMap<u64, u64>, off: u64, end: u64) {
        done.insert(off, end);
        while let Some(end) = done.remove(&self.contiguous) {
            self.contiguous = end;
        }
    }
}

/// What a download reports to and draws from, beyond its own bytes.
pub struct Ledger<'a> {
    /// Called with `n` when every byte below `n` is flushed to disk (to record
    /// where a crashed download can resume).
    pub durable: &'a (dyn Fn(u64) + Sync),
    /// Counts each byte as it is written (progress bars, rates).
    pub received: &'a AtomicU64,
    /// The budget every READ is asked of before it is sent (`mirror.bwlimit`).
    pub bandwidth: &'a Bandwidth,
}

/// Where a download's bytes go.
pub enum Out<'a> {
    /// A staging file, written at the same offsets by a blocking thread.
    File(&'a std::fs::File),
    /// Memory, for a small file (the caller bounds its size): its bytes are
    /// written to disk once, with the commit, in one trip to a blocking
    /// thread instead of one per piece plus a writer thread per file.
    /// Resized to the declared size.
    Memory(&'a mut Vec<u8>),
}

/// Reads remote `path` (declared `size` bytes) into `out` at the same offsets,
/// starting at `progress.contiguous` (bytes already staged), accounting in `ledger`.
///
/// # Errors
/// A [`RemoteError`] on a server error, a lost connection or a request past
/// its deadline, or a local write error. `progress` says how far it got.
pub async fn download(
    conn: &Conn,
    path: &[u8],
    size: u64,
    out: Out<'_>,
    progress: &mut Progress,
    ledger: &Ledger<'_>,
) -> Result<Downloaded, DownloadError> {
    if progress.contiguous >= size {
        let after = conn.lstat(path).await?;
        return Ok(Downloaded { bytes: size, complete: true, after });
    }
    let sftp = &conn.sftp;
    let handle = sftp.open_read(path).await.map_err(|e| RemoteError::from_sftp(path, e))?;
    let result = pump(conn, path, &handle, size, out, progress, ledger).await;
    if let Err(e) = result {
        // Close errors do not matter for a read-only handle; don't wait on a dead link.
        if !matches!(&e, DownloadError::Remote(r) if r.is_transport()) {
            let _ = sftp.close(&handle).await;
        }
        return Err(e);
    }
    let eof_at = result.ok().flatten();
    // CLOSE and the confirming LSTAT travel together: one round trip, not two.
    let (_, after) = tokio::join!(sftp.close(&handle), conn.lstat(path));
    Ok(Downloaded { bytes: eof_at.unwrap_or(size).min(progress.contiguous), complete: eof_at.is_none(), after: after? })
}

/// The READ loop; returns the offset where the file ended early, if it did.
async fn pump(
    conn: &Conn,
    path: &[u8],
    handle: &[u8],
    size: u64,
    out: Out<'_>,
    progress: &mut Progress,
    ledger: &Ledger<'_>,
) -> Result<Option<u64>, DownloadError> {
    let sftp = &conn.sftp;
    let mut next = progress.contiguous;
    // Remainders of short replies, asked again before anything new.
    let mut again: VecDeque<(u64, u32)> = VecDeque::new();
    // Ranges written above the contiguous prefix (at most one per request in flight).
    let mut done: BTreeMap<u64, u64> = BTreeMap::new();
    let mut eof_at: Option<u64> = None;
    let mut in_flight = FuturesUnordered::new();
    let mut flushed_at = progress.contiguous;
    let mut flushing: Option<(u64, tokio::task::JoinHandle<bool>)> = None;
    let mut sink = Sink::new(out, size)?;
    let mut writing = 0usize;
    loop {
        let chunk = u64::from(conn.read_len());
        let window = (WINDOW_BYTES / chunk).clamp(MIN_IN_FLIGHT, MAX_IN_FLIGHT) as usize;
        // Until the connection knows its server's read size, one READ goes alone:
        // its reply tells, and the pipeline behind it is then cut to fit.
        let window = if conn.read_len_known() { window } else { 1 };
        while in_flight.len() < window {
            let (off, len) = if let Some(r) = again.pop_front() {
                r
            } else if next < size && eof_at.is_none_or(|e| next < e) {
                let len = (size - next).min(chunk) as u32;
                next += u64::from(len);
                (next - u64::from(len), len)
            } else {
                break;
            };
            ledger.bandwidth.take(u64::from(len)).await;
            let reply = sftp.read(handle, off, len);
            in_flight.push(async move { (off, len, reply.await) });
        }
        if in_flight.is_empty() && writing == 0 {
            break;
        }
        tokio::select! {
            Some(w) = sink.written(), if writing > 0 => {
                writing -= 1;
                let (off, end) = w.map_err(DownloadError::Local)?;
                ledger.received.fetch_add(end - off, Ordering::Relaxed);
                progress.advance(&mut done, off, end);
            }
            Some((off, len, r)) = in_flight.next(), if !in_flight.is_empty() => {
                match r.map_err(|e| RemoteError::from_sftp(path, e))? {
                    Some(data) if !data.is_empty() => {
                        let n = data.len() as u64;
                        if n < u64::from(len) {
                            // A short reply is legal SFTP. In the middle of the file it is
                            // the server's cap: ask that size from now on, and for the rest
                            // in order: by moving the next offset back when this was the
                            // last request made (the probe READ always is), else asking
                            // for the remainder first.
                            conn.learn_read_len(n as u32);
                            if off + u64::from(len) == next {
                                next = off + n;
                            } else {
                                again.push_back((off + n, len - n as u32));
                            }
                        } else {
                            conn.confirm_read_len(len);
                        }
                        match &mut sink {
                            Sink::Thread { writer, .. } => {
                                writer.write(off, data).await.map_err(DownloadError::Local)?;
                                writing += 1;
                            }
                            Sink::Memory(buf) => {
                                // The client refuses a reply longer than asked, and no
                                // READ asks past `size`: this never fails.
                                let end = off + n;
                                let past = || super::sftp::SftpError::Protocol(format!("a READ reply past {size} bytes"));
                                let to = buf
                                    .get_mut(off as usize..end as usize)
                                    .ok_or_else(|| RemoteError::from_sftp(path, past()))?;
                                to.copy_from_slice(&data);
                                ledger.received.fetch_add(n, Ordering::Relaxed);
                                progress.advance(&mut done, off, end);
                            }
                        }
                    }
                    // End of file before `size`: the file shrank; the caller re-checks.
                    _ => eof_at = Some(eof_at.map_or(off, |e| e.min(off))),
                }
            }
        }
        if let Some((upto, h)) = flushing.take_if(|(_, h)| h.is_finished()) {
            if h.await.unwrap_or(false) {
                (ledger.durable)(upto);
            }
        }
        if progress.contiguous - flushed_at >= FLUSH_EVERY && flushing.is_none() {
            flushed_at = progress.contiguous;
            if let Some(Ok(f)) = sink.file().map(std::fs::File::try_clone) {
                // Errors surface in the final, awaited flush of the commit.
                flushing = Some((flushed_at, tokio::task::spawn_blocking(move || f.sync_data().is_ok())));
            }
        }
    }
    if let Some((upto, h)) = flushing {
        if h.await.unwrap_or(false) {
            (ledger.durable)(upto);
        }
    }
    Ok(eof_at)
}

/// Where [`pump`] puts the bytes it receives.
enum Sink<'a> {
    /// A file, through its writer thread, which reports each finished write.
    Thread { file: &'a std::fs::File, writer: Writer, written: Written },
    /// Memory: a write is done when it is copied.
    Memory(&'a mut Vec<u8>),
}

impl<'a> Sink<'a> {
    fn new(out: Out<'a>, size: u64) -> Result<Sink<'a>, DownloadError> {
        Ok(match out {
            Out::File(file) => {
                // Positioned writes block: they run on a blocking thread of their own,
                // never on the async workers that serve the webhook and the other transfers.
                let (writer, written) = Writer::start(file).map_err(DownloadError::Local)?;
                Sink::Thread { file, writer, written }
            }
            Out::Memory(buf) => {
                let size =
                    usize::try_from(size).map_err(|_| DownloadError::Local(std::io::ErrorKind::OutOfMemory.into()))?;
                buf.resize(size, 0);
                Sink::Memory(buf)
            }
        })
    }

    /// The next finished write of the writer thread (never, for memory).
    async fn written(&mut self) -> Option<std::io::Result<(u64, u64)>> {
        match self {
            Sink::Thread { written, .. } => written.recv().await,
            Sink::Memory(_) => std::future::pending().await,
        }
    }

    fn file(&self) -> Option<&'a std::fs::File> {
        match self {
            Sink::Thread { file, .. } => Some(file),
            Sink::Memory(_) => None,
        }
    }
}

/// Writes queued at most per download (bounds the memory they hold).
const WRITE_QUEUE: usize = 32;

/// A blocking thread doing one download's positioned writes, in order.
struct Writer {
    queue: tokio::sync::mpsc::Sender<(u64, bytes::Bytes)>,
}

/// Each write's range once it is in the file (or why it is not).
type Written = tokio::sync::mpsc::UnboundedReceiver<std::io::Result<(u64, u64)>>;

impl Writer {
    fn start(out: &std::fs::File) -> std::io::Result<(Writer, Written)> {
        let file = out.try_clone()?;
        let (queue, mut rx) = tokio::sync::mpsc::channel::<(u64, bytes::Bytes)>(WRITE_QUEUE);
        let (tx, written) = tokio::sync::mpsc::unbounded_channel();
        // Ends when the download drops its end of the queue.
        tokio::task::spawn_blocking(move || {
            while let Some((off, data)) = rx.blocking_recv() {
                let r = file.write_all_at(&data, off).map(|()| (off, off + data.len() as u64));
                if tx.send(r).is_err() {
                    break;
                }
            }
        });
        Ok((Writer { queue }, written))
    }

    async fn write(&self, off: u64, data: bytes::Bytes) -> std::io::Result<()> {
        self.queue.send((off, data)).await.map_err(|_| std::io::Error::other("the writer thread stopped"))
    }
}

/// A download failed on our side (disk) or the server's.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// Writing the staging file failed.
    #[error("writing the staging file: {0}")]
    Local(std::io::Error),
    /// The server or the connection failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
}
