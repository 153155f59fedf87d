//! The read-only SFTP filesystem: a `russh_sftp::server::Handler` over a local folder.
//!
//! One [`SftpHandler`] serves one SFTP session (one SSH channel, or one raw stream
//! for protocol tests). It confines every path to the served root, maps io errors to
//! SFTP status codes the way OpenSSH's `sftp-server` does, keeps a bounded handle
//! table, and consults [`Faults`] before each reply. `server.rs` wires it to russh;
//! [`serve_stream`] runs it over any byte stream (e.g. `tokio::io::duplex`).

use std::collections::HashMap;
use std::fs::{self, Metadata, ReadDir};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use futures::FutureExt;
use russh_sftp::protocol::{Attrs, Data, File, FileAttributes, Handle, Name, OpenFlags, Status, StatusCode, Version};
use russh_sftp::server::StatusReply;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::faults::{Allowance, Faults, ReadCounter, Request};

/// Largest READ reply; bigger requests get a (valid) short read. Matches the
/// 256 KiB packet limit russh-sftp and OpenSSH clients use.
pub const MAX_READ_LEN: u32 = 256 * 1024;

/// Directory entries per READDIR reply. OpenSSH's client rejects replies larger
/// than its packet limit ("Received message too long"), so never send a whole
/// big directory at once.
pub const READDIR_BATCH: usize = 100;

/// Open handles allowed per SFTP session; further OPEN/OPENDIR get `Failure`.
pub const MAX_HANDLES: usize = 1024;

/// What the SFTP handler shares with the rest of its connection.
pub(crate) struct ConnCtx {
    /// File bytes served on this connection, for the drop-after-bytes fault.
    pub(crate) counter: ReadCounter,
    /// Set by `kill`; the session's stream then reports EOF and refuses writes.
    pub(crate) killed: Arc<AtomicBool>,
    /// Tears the whole connection down (TCP shutdown, or EOF on a raw stream).
    pub(crate) kill: Box<dyn Fn() + Send + Sync>,
}

enum OpenHandle {
    File {
        file: Arc<fs::File>,
        vpath: String,
        /// The highest offset asked so far (for [`Faults::out_of_order_reads`]).
        asked: u64,
    },
    Dir {
        vpath: String,
        local: PathBuf,
        /// `None` while a batch is being read on the blocking pool.
        iter: Option<ReadDir>,
        dots_sent: bool,
        done: bool,
    },
}

impl OpenHandle {
    fn vpath(&self) -> &str {
        match self {
            OpenHandle::File { vpath, .. } | OpenHandle::Dir { vpath, .. } => vpath,
        }
    }
}

/// Serves one SFTP session, read-only, over `root`.
pub(crate) struct SftpHandler {
    root: Arc<PathBuf>,
    faults: Faults,
    conn: Arc<ConnCtx>,
    handles: HashMap<String, OpenHandle>,
    next_handle: u64,
}

type Reply<T> = Result<T, StatusReply>;

impl SftpHandler {
    /// `root` must already be canonical (symlink checks compare against it).
    pub(crate) fn new(root: Arc<PathBuf>, faults: Faults, conn: Arc<ConnCtx>) -> Self {
        Self { root, faults, conn, handles: HashMap::new(), next_handle: 0 }
    }

    /// Sleeps for the configured reply delay. Called first in every request, so
    /// even error replies are delayed.
    async fn delay(&self) {
        let delay = self.faults.reply_delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    /// Counts the request, and fails it if a [`Faults::fail`] rule matches `op` on `vpath`.
    fn check(&self, op: Request, vpath: &str) -> Reply<()> {
        self.faults.record_request(op);
        match self.faults.failure_for(op, vpath) {
            Some(status) => Err(StatusReply::new(status).with_message("injected fault")),
            None => Ok(()),
        }
    }

    fn insert_handle(&mut self, h: OpenHandle) -> Reply<String> {
        if self.handles.len() >= MAX_HANDLES {
            return Err(StatusCode::Failure.with_message("too many open handles"));
        }
        self.next_handle += 1;
        let name = self.next_handle.to_string();
        self.handles.insert(name.clone(), h);
        Ok(name)
    }

    fn handle(&self, handle: &str) -> Reply<&OpenHandle> {
        self.handles.get(handle).ok_or_else(|| StatusCode::Failure.with_message("invalid handle"))
    }

    /// Local path for a following operation (stat, open, opendir): symlinks are
    /// resolved and the target must stay under the root.
    async fn resolve_follow(&self, vpath: &str) -> Reply<PathBuf> {
        let root = self.root.clone();
        let local = local_path(&root, vpath);
        blocking(move || {
            let real = fs::canonicalize(&local)?;
            if real.starts_with(&*root) {
                Ok(real)
            } else {
                Err(io::Error::new(io::ErrorKind::PermissionDenied, "symlink leads outside the served root"))
            }
        })
        .await
    }

    /// Local path for a non-following operation (lstat, readlink): the parent is
    /// resolved and confined, the last component is left as is.
    async fn resolve_nofollow(&self, vpath: &str) -> Reply<PathBuf> {
        let root = self.root.clone();
        let local = local_path(&root, vpath);
        blocking(move || {
            if local == *root {
                return Ok(local);
            }
            let (Some(parent), Some(name)) = (local.parent(), local.file_name()) else {
                return Ok(root.to_path_buf());
            };
            let real_parent = fs::canonicalize(parent)?;
            if real_parent.starts_with(&*root) {
                Ok(real_parent.join(name))
            } else {
                Err(io::Error::new(io::ErrorKind::PermissionDenied, "path leads outside the served root"))
            }
        })
        .await
    }
}

impl SftpHandler {
    fn lie_about(&self, vpath: &str, attrs: FileAttributes) -> FileAttributes {
        lie_size(&self.faults.lies(), vpath, attrs)
    }
}

/// The size a lying server reports for `vpath`, if it lies about it.
fn lie_size(lies: &super::faults::Lies, vpath: &str, mut attrs: FileAttributes) -> FileAttributes {
    if attrs.file_type().is_file() {
        if let Some((_, size)) = lies.sizes.iter().find(|(n, _)| vpath.contains(n.as_str())) {
            attrs.size = Some(*size);
        }
    }
    attrs
}

impl russh_sftp::server::Handler for SftpHandler {
    type Error = StatusReply;

    fn unimplemented(&self) -> Self::Error {
        StatusReply::new(StatusCode::OpUnsupported)
    }

    async fn init(&mut self, version: u32, _extensions: HashMap<String, String>) -> Reply<Version> {
        self.delay().await;
        tracing::debug!(version, "sftp init");
        // Plain version 3, no extensions: no limits@openssh.com, no statvfs, etc.
        Ok(Version::new())
    }

    async fn realpath(&mut self, id: u32, path: String) -> Reply<Name> {
        self.delay().await;
        let vpath = normalize(&path)?;
        Ok(Name { id, files: vec![File::dummy(vpath)] })
    }

    async fn stat(&mut self, id: u32, path: String) -> Reply<Attrs> {
        self.delay().await;
        let vpath = normalize(&path)?;
        self.check(Request::Stat, &vpath)?;
        let local = self.resolve_follow(&vpath).await?;
        let md = blocking(move || fs::metadata(local)).await?;
        Ok(Attrs { id, attrs: self.lie_about(&vpath, attrs_of(&md)) })
    }

    async fn lstat(&mut self, id: u32, path: String) -> Reply<Attrs> {
        self.delay().await;
        let vpath = normalize(&path)?;
        self.check(Request::Stat, &vpath)?;
        let local = self.resolve_nofollow(&vpath).await?;
        let md = blocking(move || fs::symlink_metadata(local)).await?;
        Ok(Attrs { id, attrs: self.lie_about(&vpath, attrs_of(&md)) })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Reply<Attrs> {
        self.delay().await;
        let vpath = self.handle(&handle)?.vpath().to_owned();
        self.check(Request::Stat, &vpath)?;
        let md = match self.handle(&handle)? {
            OpenHandle::File { file, .. } => {
                let file = file.clone();
                blocking(move || file.metadata()).await?
            }
            OpenHandle::Dir { local, .. } => {
                let local = local.clone();
                blocking(move || fs::metadata(local)).await?
            }
        };
        Ok(Attrs { id, attrs: attrs_of(&md) })
    }

    async fn open(&mut self, id: u32, filename: String, pflags: OpenFlags, _attrs: FileAttributes) -> Reply<Handle> {
        self.delay().await;
        let vpath = normalize(&filename)?;
        self.check(Request::Open, &vpath)?;
        let writing =
            OpenFlags::WRITE | OpenFlags::APPEND | OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::EXCLUDE;
        if pflags.intersects(writing) {
            return Err(StatusCode::PermissionDenied.with_message("read-only server"));
        }
        let local = self.resolve_follow(&vpath).await?;
        let file = blocking(move || fs::File::open(local)).await?;
        let handle = self.insert_handle(OpenHandle::File { file: Arc::new(file), vpath, asked: 0 })?;
        Ok(Handle { id, handle })
    }

    async fn read(&mut self, id: u32, handle: String, offset: u64, len: u32) -> Reply<Data> {
        self.delay().await;
        if self.faults.lies().stall_reads {
            // Never answered (the session ends with the connection).
            std::future::pending::<()>().await;
        }
        let Some(OpenHandle::File { file, asked, .. }) = self.handles.get_mut(&handle) else {
            return Err(StatusCode::Failure.with_message("not a file handle"));
        };
        let out_of_order = offset < *asked;
        *asked = (*asked).max(offset);
        let file = file.clone();

        let mut want = u64::from(len.min(MAX_READ_LEN));
        if let Some(cap) = self.faults.read_cap() {
            want = want.min(u64::from(cap));
        }
        match self.faults.read_allowance(&self.conn.counter) {
            Allowance::Unlimited => {}
            Allowance::Bytes(n) => want = want.min(n),
            Allowance::DropConnection => {
                tracing::debug!("fault: dropping connection after read budget");
                (self.conn.kill)();
                // Never reaches the client: the transport is gone.
                return Err(StatusCode::Failure.with_message("connection dropped by fault"));
            }
        }
        if want == 0 {
            return Ok(Data { id, data: vec![] });
        }

        // `want` <= MAX_READ_LEN, so it fits in usize.
        let want = want as usize;
        let data = blocking(move || read_full_at(&file, offset, want)).await?;
        if data.is_empty() {
            return Err(StatusCode::Eof.into());
        }
        self.conn.counter.add(data.len() as u64);
        self.faults.record_read(data.len() as u64, out_of_order);
        Ok(Data { id, data })
    }

    async fn close(&mut self, id: u32, handle: String) -> Reply<Status> {
        self.delay().await;
        if self.handles.remove(&handle).is_none() {
            return Err(StatusCode::Failure.with_message("invalid handle"));
        }
        Ok(Status { id, status_code: StatusCode::Ok, error_message: "Ok".to_owned(), language_tag: "en-US".to_owned() })
    }

    async fn opendir(&mut self, id: u32, path: String) -> Reply<Handle> {
        self.delay().await;
        let vpath = normalize(&path)?;
        self.check(Request::Readdir, &vpath)?;
        let local = self.resolve_follow(&vpath).await?;
        let (local, iter) = blocking(move || {
            let iter = fs::read_dir(&local)?;
            Ok((local, iter))
        })
        .await?;
        let handle =
            self.insert_handle(OpenHandle::Dir { vpath, local, iter: Some(iter), dots_sent: false, done: false })?;
        Ok(Handle { id, handle })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Reply<Name> {
        self.delay().await;
        let vpath = self.handle(&handle)?.vpath().to_owned();
        self.check(Request::Readdir, &vpath)?;
        let lies = self.faults.lies();
        if lies.endless_listings.iter().any(|n| vpath.contains(n.as_str())) {
            self.next_handle += 1;
            let md = blocking({
                let root = self.root.clone();
                move || fs::metadata(&*root)
            })
            .await?;
            let mut file_attrs = attrs_of(&md);
            file_attrs.permissions = Some(0o100644);
            let n = self.next_handle;
            let files = (0..READDIR_BATCH)
                .map(|i| File {
                    filename: format!("endless-{n}-{i}-{}", "x".repeat(64)),
                    longname: String::new(),
                    attrs: file_attrs.clone(),
                })
                .collect();
            return Ok(Name { id, files });
        }
        let root = self.root.clone();
        let Some(OpenHandle::Dir { local, iter, dots_sent, done, .. }) = self.handles.get_mut(&handle) else {
            return Err(StatusCode::Failure.with_message("not a directory handle"));
        };
        if *done {
            return Err(StatusCode::Eof.into());
        }
        let Some(mut it) = iter.take() else {
            return Err(StatusCode::Failure.with_message("directory busy"));
        };
        let want_dots = !*dots_sent;
        let dir = local.clone();
        let now = unix_now();
        let res = blocking(move || {
            let mut files = Vec::with_capacity(READDIR_BATCH);
            if want_dots {
                // Real servers list "." and ".." too; clients are expected to skip them.
                let parent = if dir == *root {
                    dir.clone()
                } else {
                    dir.parent().map_or_else(|| dir.clone(), Path::to_path_buf)
                };
                for (name, p) in [(".", &dir), ("..", &parent)] {
                    if let Ok(md) = fs::symlink_metadata(p) {
                        files.push(dir_entry(name, &md, now));
                    }
                }
            }
            let mut exhausted = false;
            while files.len() < READDIR_BATCH {
                let Some(entry) = it.next() else {
                    exhausted = true;
                    break;
                };
                let entry = entry?;
                // Entries that vanish between readdir and lstat are skipped, as OpenSSH does.
                if let Ok(md) = entry.metadata() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    files.push(dir_entry(&name, &md, now));
                }
            }
            Ok((it, files, exhausted))
        })
        .await;

        let (it, files, exhausted) = match res {
            Ok(batch) => batch,
            Err(e) => {
                // The iterator was consumed by the failed batch; end the listing.
                *done = true;
                return Err(e);
            }
        };
        let mut files = files;
        if want_dots {
            // Made-up entries go out with the first batch.
            let dir_attrs = files.first().map(|f| f.attrs.clone()).unwrap_or_default();
            for (needle, names) in &lies.extra_dir_entries {
                if vpath.contains(needle.as_str()) {
                    files.extend(names.iter().map(|n| File {
                        filename: n.clone(),
                        longname: String::new(),
                        attrs: dir_attrs.clone(),
                    }));
                }
            }
        }
        for f in &mut files {
            let child = format!("{}/{}", vpath.trim_end_matches('/'), f.filename);
            f.attrs = lie_size(&lies, &child, f.attrs.clone());
        }
        *iter = Some(it);
        *dots_sent = true;
        *done = exhausted;
        if files.is_empty() {
            return Err(StatusCode::Eof.into());
        }
        Ok(Name { id, files })
    }

    async fn readlink(&mut self, id: u32, path: String) -> Reply<Name> {
        self.delay().await;
        let vpath = normalize(&path)?;
        let local = self.resolve_nofollow(&vpath).await?;
        let target = blocking(move || fs::read_link(local)).await?;
        Ok(Name {
            id,
            files: vec![File {
                filename: target.to_string_lossy().into_owned(),
                longname: String::new(),
                attrs: FileAttributes::empty(),
            }],
        })
    }

    // Everything that would change the tree is refused outright: the server is
    // read-only, and PermissionDenied is what a client would see on a real
    // read-only share (OpUnsupported would suggest a protocol gap instead).

    async fn write(&mut self, _: u32, _: String, _: u64, _: Vec<u8>) -> Reply<Status> {
        self.read_only().await
    }

    async fn setstat(&mut self, _: u32, _: String, _: FileAttributes) -> Reply<Status> {
        self.read_only().await
    }

    async fn fsetstat(&mut self, _: u32, _: String, _: FileAttributes) -> Reply<Status> {
        self.read_only().await
    }

    async fn remove(&mut self, _: u32, _: String) -> Reply<Status> {
        self.read_only().await
    }

    async fn mkdir(&mut self, _: u32, _: String, _: FileAttributes) -> Reply<Status> {
        self.read_only().await
    }

    async fn rmdir(&mut self, _: u32, _: String) -> Reply<Status> {
        self.read_only().await
    }

    async fn rename(&mut self, _: u32, _: String, _: String) -> Reply<Status> {
        self.read_only().await
    }

    async fn symlink(&mut self, _: u32, _: String, _: String) -> Reply<Status> {
        self.read_only().await
    }
}

impl SftpHandler {
    async fn read_only(&self) -> Reply<Status> {
        self.delay().await;
        Err(StatusCode::PermissionDenied.with_message("read-only server"))
    }
}

/// Normalises an SFTP path lexically to an absolute virtual path (`/a/b`).
/// Relative paths are relative to `/`, the session's home. `..` above the root
/// is refused rather than clamped, so escape attempts are visible in tests.
pub(crate) fn normalize(path: &str) -> Reply<String> {
    let mut parts: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(StatusCode::PermissionDenied.with_message("path escapes root"));
                }
            }
            s => parts.push(s),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

fn local_path(root: &Path, vpath: &str) -> PathBuf {
    root.join(vpath.trim_start_matches('/'))
}

/// Maps io errors like OpenSSH's `sftp-server` does.
pub(crate) fn status_of(e: &io::Error) -> StatusReply {
    let code = match e.kind() {
        io::ErrorKind::NotFound => StatusCode::NoSuchFile,
        io::ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
        _ => StatusCode::Failure,
    };
    code.with_message(e.to_string())
}

/// Runs blocking filesystem work off the async workers.
async fn blocking<T, F>(f: F) -> Reply<T>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(status_of(&e)),
        Err(_) => Err(StatusCode::Failure.with_message("internal error")),
    }
}

/// Positioned read of up to `len` bytes; short only at end of file.
fn read_full_at(file: &fs::File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

fn clamp_secs(secs: i64) -> u32 {
    u32::try_from(secs.max(0)).unwrap_or(u32::MAX)
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// SFTPv3 attributes from local metadata: the full `st_mode` (type bits included),
/// whole-second times, numeric owner.
pub(crate) fn attrs_of(md: &Metadata) -> FileAttributes {
    FileAttributes {
        size: Some(md.len()),
        uid: Some(md.uid()),
        user: None,
        gid: Some(md.gid()),
        group: None,
        permissions: Some(md.mode()),
        atime: Some(clamp_secs(md.atime())),
        mtime: Some(clamp_secs(md.mtime())),
    }
}

fn dir_entry(name: &str, md: &Metadata, now: i64) -> File {
    File { filename: name.to_owned(), longname: longname(name, md, now), attrs: attrs_of(md) }
}

/// An `ls -l` line, which OpenSSH's `sftp ls -l` prints verbatim.
pub(crate) fn longname(name: &str, md: &Metadata, now: i64) -> String {
    format!(
        "{} {:>3} {:<8} {:<8} {:>8} {} {}",
        mode_string(md.mode()),
        md.nlink(),
        md.uid(),
        md.gid(),
        md.len(),
        ls_time(md.mtime(), now),
        name
    )
}

fn mode_string(mode: u32) -> String {
    let kind = match mode & 0o170000 {
        0o040000 => 'd',
        0o120000 => 'l',
        0o010000 => 'p',
        0o140000 => 's',
        0o020000 => 'c',
        0o060000 => 'b',
        _ => '-',
    };
    let bit = |m: u32, c: char| if mode & m != 0 { c } else { '-' };
    // The execute slot doubles as setuid/setgid/sticky, as in ls(1).
    let special = |x: u32, s: u32, on: char, off: char| match (mode & x != 0, mode & s != 0) {
        (true, true) => on,
        (false, true) => off,
        (true, false) => 'x',
        (false, false) => '-',
    };
    [
        kind,
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        special(0o100, 0o4000, 's', 'S'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        special(0o010, 0o2000, 's', 'S'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        special(0o001, 0o1000, 't', 'T'),
    ]
    .iter()
    .collect()
}

/// `Mon dd HH:MM` for recent times, `Mon dd  YYYY` otherwise (UTC), like ls(1).
fn ls_time(mtime: i64, now: i64) -> String {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    const HALF_YEAR: i64 = 182 * 86_400;
    let (year, month, day) = civil_from_days(mtime.div_euclid(86_400));
    let secs = mtime.rem_euclid(86_400);
    let mon = MONTHS[(month - 1) as usize];
    if (now - mtime).abs() < HALF_YEAR {
        format!("{mon} {day:>2} {:02}:{:02}", secs / 3600, secs % 3600 / 60)
    } else {
        format!("{mon} {day:>2}  {year}")
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month 1-12, day 1-31).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift the epoch to 0000-03-01 so leap days fall at the end of a 400-year era.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The channel/stream an SFTP session runs over, with two additions russh-sftp's
/// server loop lacks: a kill switch (reads report EOF, writes fail) and an
/// end-of-input hook that runs *before* EOF is reported. The SSH side uses the hook
/// to send exit-status and EOF while the channel is still open; the stream's drop
/// (when russh-sftp's loop ends) then closes the channel.
pub(crate) struct SessionStream<S> {
    inner: S,
    killed: Arc<AtomicBool>,
    on_eof: Option<BoxFuture<'static, ()>>,
}

impl<S> SessionStream<S> {
    pub(crate) fn new(inner: S, killed: Arc<AtomicBool>, on_eof: Option<BoxFuture<'static, ()>>) -> Self {
        Self { inner, killed, on_eof }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SessionStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.killed.load(Ordering::Acquire) {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        if self.on_eof.is_none() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if buf.filled().len() == before {
            // The peer is done sending: finish the hook before reporting EOF.
            if let Some(fut) = self.on_eof.as_mut() {
                ready!(fut.poll_unpin(cx));
            }
            self.on_eof = None;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SessionStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if self.killed.load(Ordering::Acquire) {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves the read-only SFTP protocol over any byte stream, without SSH: the
/// fastest way to test SFTP client code (pair it with `tokio::io::duplex` and
/// `russh_sftp::client::SftpSession::new`).
///
/// The session runs on a background task until the peer closes its end; this
/// function returns as soon as it is started. The drop-after-bytes fault ends the
/// session (the peer sees EOF), as a dropped connection would.
///
/// # Errors
/// Fails if `root` cannot be canonicalised or is not a directory.
pub async fn serve_stream<S>(stream: S, root: impl Into<PathBuf>, faults: Faults) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let root = Arc::new(canonical_root(root.into()).await?);
    let killed = Arc::new(AtomicBool::new(false));
    let flag = killed.clone();
    let conn = Arc::new(ConnCtx {
        counter: ReadCounter::default(),
        killed: killed.clone(),
        kill: Box::new(move || flag.store(true, Ordering::Release)),
    });
    let stream = SessionStream::new(stream, killed, None);
    russh_sftp::server::run(stream, SftpHandler::new(root, faults, conn)).await;
    Ok(())
}

/// Canonicalises the served root (symlink confinement compares against it).
pub(crate) async fn canonical_root(root: PathBuf) -> io::Result<PathBuf> {
    let root = tokio::fs::canonicalize(&root).await?;
    if !tokio::fs::metadata(&root).await?.is_dir() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a directory", root.display())));
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_confines_paths() {
        assert_eq!(normalize(".").unwrap(), "/");
        assert_eq!(normalize("").unwrap(), "/");
        assert_eq!(normalize("/a/./b//c/").unwrap(), "/a/b/c");
        assert_eq!(normalize("a/../b").unwrap(), "/b");
        assert_eq!(normalize("/..").unwrap_err().status_code, StatusCode::PermissionDenied);
        assert_eq!(normalize("a/../../etc/passwd").unwrap_err().status_code, StatusCode::PermissionDenied);
    }

    #[test]
    fn dates_and_modes_look_like_ls() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(ls_time(0, 10 * 365 * 86_400), "Jan  1  1970");
        assert_eq!(ls_time(86_400 + 3_723, 86_400 * 2), "Jan  2 01:02");
        assert_eq!(mode_string(0o100644), "-rw-r--r--");
        assert_eq!(mode_string(0o040755), "drwxr-xr-x");
        assert_eq!(mode_string(0o120777), "lrwxrwxrwx");
        assert_eq!(mode_string(0o041777), "drwxrwxrwt");
        assert_eq!(mode_string(0o104755), "-rwsr-xr-x");
    }

    #[test]
    fn io_errors_map_like_openssh() {
        let st = |k: io::ErrorKind| status_of(&io::Error::from(k)).status_code;
        assert_eq!(st(io::ErrorKind::NotFound), StatusCode::NoSuchFile);
        assert_eq!(st(io::ErrorKind::PermissionDenied), StatusCode::PermissionDenied);
        assert_eq!(st(io::ErrorKind::InvalidInput), StatusCode::Failure);
    }
}
