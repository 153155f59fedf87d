//! The request/reply engine: any number of requests in flight over one byte
//! stream (a russh channel), replies matched by id, a deadline on each.
//!
//! One reader task owns the read half, so cancelling a request (its deadline
//! fired, its caller went away) never leaves half a frame behind; one writer
//! task owns the write half and batches frames that queue up. A frame the
//! server sends is bounded by [`MAX_PACKET`] before anything is allocated, and
//! anything that is not SFTP v3 ends the session: a server that lies once is
//! not believed again on the same stream.

use super::codec::{self, Attrs, DecodeError, NameEntry, Reply, Request, StatusCode, Version, MAX_PACKET};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// The writer coalesces queued frames into one write up to this size.
const WRITE_BATCH: usize = 64 * 1024;
/// A request that sees other replies arrive keeps waiting (a deep pipeline on
/// a slow link), but never longer than this many timeouts in all.
const MAX_WAIT_FACTOR: u32 = 10;

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SftpError {
    /// The server answered with an error status.
    #[error("{code}: {message}")]
    Status {
        /// The code.
        code: StatusCode,
        /// The server's message.
        message: String,
    },
    /// No reply at all for the session's timeout.
    #[error("no reply from the SFTP server within {0:?}")]
    Timeout(Duration),
    /// The stream ended or failed.
    #[error("SFTP session closed: {0}")]
    Closed(String),
    /// The server sent something that is not SFTP v3.
    #[error("the SFTP server broke the protocol: {0}")]
    Protocol(String),
}

impl SftpError {
    fn unexpected(what: &str, got: &Reply) -> SftpError {
        let kind = match got {
            Reply::Status { .. } => "STATUS",
            Reply::Handle(_) => "HANDLE",
            Reply::Data(_) => "DATA",
            Reply::Name(_) => "NAME",
            Reply::Attrs(_) => "ATTRS",
            Reply::Extended(_) => "EXTENDED_REPLY",
        };
        SftpError::Protocol(format!("{kind} in reply to {what}"))
    }
}

type Pending = HashMap<u32, oneshot::Sender<Reply>>;

struct Shared {
    pending: Mutex<Option<Pending>>,
    /// Why the session ended, once it has.
    closed: Mutex<Option<String>>,
    next_id: AtomicU32,
    /// Milliseconds after `epoch` when the last frame arrived.
    last_rx: AtomicU64,
    epoch: Instant,
}

impl Shared {
    fn close(&self, why: String) {
        self.closed.lock().expect("not poisoned").get_or_insert(why);
        // Dropping the senders wakes every waiting request with "closed".
        self.pending.lock().expect("not poisoned").take();
    }

    fn closed_reason(&self) -> String {
        self.closed.lock().expect("not poisoned").clone().unwrap_or_else(|| "stream ended".into())
    }

    fn since_rx(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_rx.load(Ordering::Relaxed)))
    }
}

/// Aborts the session's tasks when the client goes away.
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// An SFTP v3 session over one stream. Methods take `&self`: share it behind an
/// `Arc` and keep as many requests in flight as wanted.
pub struct SftpClient {
    out: mpsc::UnboundedSender<Vec<u8>>,
    shared: Arc<Shared>,
    timeout: Duration,
    _tasks: Tasks,
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Bytes, String> {
    let len = r.read_u32().await.map_err(|e| e.to_string())?;
    if len == 0 || len > MAX_PACKET {
        return Err(format!("the server sent a frame of {len} bytes (at most {MAX_PACKET} accepted)"));
    }
    let mut buf = BytesMut::zeroed(len as usize);
    r.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    Ok(buf.freeze())
}

impl SftpClient {
    /// Sends INIT over `stream`, reads VERSION, and starts the session. Every
    /// request (this one included) fails after `timeout` without any reply.
    ///
    /// # Errors
    /// [`SftpError`] when the server does not answer in time or does not speak v3.
    pub async fn start<S>(stream: S, timeout: Duration) -> Result<(SftpClient, Version), SftpError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let hello = async {
            let mut init = Vec::new();
            codec::encode_init(&mut init);
            wr.write_all(&init).await.map_err(|e| SftpError::Closed(e.to_string()))?;
            wr.flush().await.map_err(|e| SftpError::Closed(e.to_string()))?;
            let frame = read_frame(&mut rd).await.map_err(SftpError::Closed)?;
            codec::decode_version(frame).map_err(|e| SftpError::Protocol(e.to_string()))
        };
        let version = tokio::time::timeout(timeout, hello).await.map_err(|_| SftpError::Timeout(timeout))??;
        if version.version < codec::VERSION {
            return Err(SftpError::Protocol(format!("server speaks SFTP version {}, not 3", version.version)));
        }
        let shared = Arc::new(Shared {
            pending: Mutex::new(Some(HashMap::new())),
            closed: Mutex::new(None),
            next_id: AtomicU32::new(1),
            last_rx: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        let (out, mut queue) = mpsc::unbounded_channel::<Vec<u8>>();
        let reader = {
            let shared = shared.clone();
            tokio::spawn(async move {
                let why = loop {
                    let frame = match read_frame(&mut rd).await {
                        Ok(f) => f,
                        Err(e) => break e,
                    };
                    shared.last_rx.store(shared.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                    let (id, reply) = match codec::decode_reply(frame) {
                        Ok(r) => r,
                        Err(e) => break format!("the server sent a malformed reply: {e}"),
                    };
                    let waiter = shared.pending.lock().expect("not poisoned").as_mut().and_then(|p| p.remove(&id));
                    match waiter {
                        // The requester may have given up (deadline); that is fine.
                        Some(tx) => drop(tx.send(reply)),
                        None => tracing::debug!(id, "SFTP reply to no pending request (late or unknown id)"),
                    }
                };
                shared.close(why);
            })
        };
        let writer = {
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut batch = Vec::with_capacity(WRITE_BATCH);
                while let Some(frame) = queue.recv().await {
                    batch.clear();
                    batch.extend_from_slice(&frame);
                    while batch.len() < WRITE_BATCH {
                        match queue.try_recv() {
                            Ok(f) => batch.extend_from_slice(&f),
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = wr.write_all(&batch).await {
                        shared.close(format!("writing to the server: {e}"));
                        return;
                    }
                    if let Err(e) = wr.flush().await {
                        shared.close(format!("writing to the server: {e}"));
                        return;
                    }
                }
            })
        };
        let client = SftpClient { out, shared, timeout, _tasks: Tasks(vec![reader, writer]) };
        Ok((client, version))
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.lock().expect("not poisoned").is_some()
    }

    /// Sends `req` and waits for its reply (see [`SftpClient::send`]).
    async fn call(&self, req: Request<'_>) -> Result<Reply, SftpError> {
        self.send(req)?.await
    }

    /// Queues `req` now, in call order (pipelined requests reach the server in
    /// the order they were made), and returns the wait for its reply. The
    /// deadline: no reply to it within the timeout *and* no other frame from
    /// the server in that time either (a deep pipeline on a slow link keeps
    /// its requests alive while replies flow), and at most
    /// [`MAX_WAIT_FACTOR`] timeouts in all.
    fn send(
        &self,
        req: Request<'_>,
    ) -> Result<impl std::future::Future<Output = Result<Reply, SftpError>> + '_, SftpError> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = oneshot::channel();
        {
            let mut p = self.shared.pending.lock().expect("not poisoned");
            let Some(p) = p.as_mut() else {
                return Err(SftpError::Closed(self.shared.closed_reason()));
            };
            p.insert(id, tx);
        }
        // Whatever way the wait ends, its slot must not stay behind.
        let slot = Slot { shared: &self.shared, id };
        let mut frame = Vec::with_capacity(64);
        codec::encode(id, &req, &mut frame);
        // Unbounded, but never long: every caller bounds what it has in flight.
        self.out.send(frame).map_err(|_| SftpError::Closed(self.shared.closed_reason()))?;
        let started = tokio::time::Instant::now();
        Ok(async move {
            let _slot = slot;
            let hard = started + self.timeout * MAX_WAIT_FACTOR;
            let mut deadline = started + self.timeout;
            loop {
                tokio::select! {
                    r = &mut rx => return r.map_err(|_| SftpError::Closed(self.shared.closed_reason())),
                    () = tokio::time::sleep_until(deadline) => {
                        let quiet = self.shared.since_rx();
                        let now = tokio::time::Instant::now();
                        if quiet >= self.timeout || now >= hard {
                            return Err(SftpError::Timeout(self.timeout));
                        }
                        deadline = (now + (self.timeout - quiet)).min(hard);
                    }
                }
            }
        })
    }

    async fn expect_ok(&self, what: &str, req: Request<'_>) -> Result<(), SftpError> {
        match self.call(req).await? {
            Reply::Status { code: StatusCode::Ok, .. } => Ok(()),
            Reply::Status { code, message } => Err(SftpError::Status { code, message }),
            other => Err(SftpError::unexpected(what, &other)),
        }
    }

    async fn attrs(&self, what: &str, req: Request<'_>) -> Result<Attrs, SftpError> {
        match self.call(req).await? {
            Reply::Attrs(a) => Ok(a),
            Reply::Status { code, message } => Err(SftpError::Status { code, message }),
            other => Err(SftpError::unexpected(what, &other)),
        }
    }

    async fn handle(&self, what: &str, req: Request<'_>) -> Result<Vec<u8>, SftpError> {
        match self.call(req).await? {
            Reply::Handle(h) => Ok(h),
            Reply::Status { code, message } => Err(SftpError::Status { code, message }),
            other => Err(SftpError::unexpected(what, &other)),
        }
    }

    /// `LSTAT`.
    ///
    /// # Errors
    /// [`SftpError`].
    pub async fn lstat(&self, path: &[u8]) -> Result<Attrs, SftpError> {
        self.attrs("LSTAT", Request::Lstat(path)).await
    }

    /// `OPEN` for reading; returns the handle.
    ///
    /// # Errors
    /// [`SftpError`].
    pub async fn open_read(&self, path: &[u8]) -> Result<Vec<u8>, SftpError> {
        self.handle("OPEN", Request::OpenRead(path)).await
    }

    /// `OPENDIR`; returns the handle.
    ///
    /// # Errors
    /// [`SftpError`].
    pub async fn opendir(&self, path: &[u8]) -> Result<Vec<u8>, SftpError> {
        self.handle("OPENDIR", Request::Opendir(path)).await
    }

    /// `CLOSE`.
    ///
    /// # Errors
    /// [`SftpError`].
    pub async fn close(&self, handle: &[u8]) -> Result<(), SftpError> {
        self.expect_ok("CLOSE", Request::Close(handle)).await
    }

    /// `READ`: `None` at end of file. The data may be shorter than `len`, and
    /// is never longer (a longer reply is a protocol error). The request is
    /// sent when this is called, not when the future is first polled, so
    /// READs made one after another reach the server in that order.
    pub fn read(
        &self,
        handle: &[u8],
        offset: u64,
        len: u32,
    ) -> impl std::future::Future<Output = Result<Option<Bytes>, SftpError>> + '_ {
        let sent = self.send(Request::Read { handle, offset, len });
        async move {
            match sent?.await? {
                Reply::Data(d) if d.len() > len as usize => {
                    Err(SftpError::Protocol(format!("{} bytes in reply to a READ of {len}", d.len())))
                }
                Reply::Data(d) => Ok(Some(d)),
                Reply::Status { code: StatusCode::Eof, .. } => Ok(None),
                Reply::Status { code, message } => Err(SftpError::Status { code, message }),
                other => Err(SftpError::unexpected("READ", &other)),
            }
        }
    }

    /// `READDIR`: the next batch, `None` at the end of the listing.
    ///
    /// # Errors
    /// [`SftpError`].
    pub async fn readdir(&self, handle: &[u8]) -> Result<Option<Vec<NameEntry>>, SftpError> {
        match self.call(Request::Readdir(handle)).await? {
            Reply::Name(n) => Ok(Some(n)),
            Reply::Status { code: StatusCode::Eof, .. } => Ok(None),
            Reply::Status { code, message } => Err(SftpError::Status { code, message }),
            other => Err(SftpError::unexpected("READDIR", &other)),
        }
    }

    /// `limits@openssh.com` (only when the server offered it in VERSION).
    ///
    /// # Errors
    /// [`SftpError`].
    pub async fn limits(&self) -> Result<codec::Limits, SftpError> {
        match self.call(Request::Extended { name: "limits@openssh.com", data: &[] }).await? {
            Reply::Extended(d) => codec::decode_limits(d).map_err(|e: DecodeError| SftpError::Protocol(e.to_string())),
            Reply::Status { code, message } => Err(SftpError::Status { code, message }),
            other => Err(SftpError::unexpected("limits@openssh.com", &other)),
        }
    }
}

/// Removes a request's pending slot when its future ends (reply, deadline or drop).
struct Slot<'a> {
    shared: &'a Shared,
    id: u32,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.shared.pending.lock().expect("not poisoned").as_mut() {
            p.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scripted server on the other end of a duplex pipe: answers VERSION,
    /// then hands each request frame to `answer`, which returns the frames to send.
    fn scripted<F>(answer: F) -> tokio::io::DuplexStream
    where
        F: Fn(u8, u32, &[u8]) -> Vec<Vec<u8>> + Send + 'static,
    {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move {
            let Ok(_init) = read_frame(&mut server).await else { return };
            let version = [&5u32.to_be_bytes()[..], &[2], &3u32.to_be_bytes()].concat();
            if server.write_all(&version).await.is_err() {
                return;
            }
            while let Ok(f) = read_frame(&mut server).await {
                let id = u32::from_be_bytes(f[1..5].try_into().unwrap());
                for reply in answer(f[0], id, &f[5..]) {
                    let framed = [&(reply.len() as u32).to_be_bytes()[..], &reply].concat();
                    if server.write_all(&framed).await.is_err() {
                        return;
                    }
                }
            }
        });
        client
    }

    fn status(id: u32, code: u32) -> Vec<u8> {
        [&[101u8][..], &id.to_be_bytes(), &code.to_be_bytes(), &0u32.to_be_bytes(), &0u32.to_be_bytes()].concat()
    }

    fn data(id: u32, payload: &[u8]) -> Vec<u8> {
        [&[103u8][..], &id.to_be_bytes(), &(payload.len() as u32).to_be_bytes(), payload].concat()
    }

    #[tokio::test]
    async fn replies_are_matched_by_id_out_of_order() {
        // Holds READs until two arrived, then answers the later one first; each
        // reply carries its request's offset so the caller can tell them apart.
        let held = Mutex::new(Vec::<(u32, Vec<u8>)>::new());
        let stream = scripted(move |t, id, body| {
            assert_eq!(t, 5);
            let offset = body[body.len() - 12..body.len() - 4].to_vec();
            let mut held = held.lock().unwrap();
            held.push((id, offset));
            if held.len() < 2 {
                return vec![];
            }
            held.drain(..).rev().map(|(id, off)| data(id, &off)).collect()
        });
        let (c, v) = SftpClient::start(stream, Duration::from_secs(5)).await.unwrap();
        assert_eq!(v.version, 3);
        let (a, b) = tokio::join!(c.read(b"h", 7, 10), c.read(b"h", 9, 10));
        assert_eq!(a.unwrap().unwrap(), Bytes::from(7u64.to_be_bytes().to_vec()));
        assert_eq!(b.unwrap().unwrap(), Bytes::from(9u64.to_be_bytes().to_vec()));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_request_fails_after_the_timeout() {
        let stream = scripted(|t, id, _| if t == 7 && id % 2 == 0 { vec![status(id, 2)] } else { vec![] });
        let (c, _) = SftpClient::start(stream, Duration::from_secs(2)).await.unwrap();
        let t0 = tokio::time::Instant::now();
        let r = c.lstat(b"/x").await; // id 1: never answered
        assert_eq!(r, Err(SftpError::Timeout(Duration::from_secs(2))));
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_secs(2) && waited < Duration::from_secs(3), "{waited:?}");
        // The session is not broken by one lost reply.
        let r = c.lstat(b"/y").await; // id 2: answered "no such file"
        assert!(matches!(r, Err(SftpError::Status { code: StatusCode::NoSuchFile, .. })), "{r:?}");
        assert!(c.shared.pending.lock().unwrap().as_ref().unwrap().is_empty(), "slots are released");
    }

    #[tokio::test]
    async fn a_lying_frame_length_closes_the_session_without_allocating_it() {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let _ = read_frame(&mut server).await;
            let version = [&5u32.to_be_bytes()[..], &[2], &3u32.to_be_bytes()].concat();
            let _ = server.write_all(&version).await;
            let _ = read_frame(&mut server).await;
            // Claims a 4 GiB frame.
            let _ = server.write_all(&u32::MAX.to_be_bytes()).await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        let (c, _) = SftpClient::start(client, Duration::from_secs(5)).await.unwrap();
        let r = c.lstat(b"/x").await;
        assert!(matches!(&r, Err(SftpError::Closed(m)) if m.contains("4294967295")), "{r:?}");
        assert!(c.is_closed());
        assert!(matches!(c.lstat(b"/y").await, Err(SftpError::Closed(_))));
    }

    #[tokio::test]
    async fn a_reply_of_the_wrong_kind_or_size_is_a_protocol_error() {
        let stream = scripted(|t, id, _| match t {
            // READ of 4 answered with 8 bytes.
            5 => vec![data(id, &[0; 8])],
            // LSTAT answered with a HANDLE.
            _ => vec![[&[102u8][..], &id.to_be_bytes(), &1u32.to_be_bytes(), &[0xff]].concat()],
        });
        let (c, _) = SftpClient::start(stream, Duration::from_secs(5)).await.unwrap();
        assert!(matches!(c.read(b"h", 0, 4).await, Err(SftpError::Protocol(m)) if m.contains("8 bytes")));
        assert!(matches!(c.lstat(b"/x").await, Err(SftpError::Protocol(m)) if m.contains("HANDLE")));
    }
}
