//! The local side: the only module that touches the mirror folder.
//!
//! Every operation goes through a `cap_std::fs::Dir` opened on the mirror root,
//! so the kernel-level `openat` discipline keeps it inside the mirror even if a
//! symlink was planted there; on top of that, ancestors of a path are checked
//! with `lstat` and a symlink or file found where a directory must be is
//! replaced (the remote said it is a directory), never followed.
//!
//! Downloads land atomically (SPEC §2): [`Mirror::staging_file`] creates a file
//! in `<mirror>/.sftp-mirror/staging/`, the caller writes it, and
//! [`Mirror::commit`] sets the remote mtime, fsyncs the data, renames it into
//! place and fsyncs the directory; directory fsyncs are group-committed, so
//! concurrent commits into one directory share one flush.

mod group_sync;
mod staging;
mod trash;

use group_sync::GroupSync;
pub use staging::Staging;
use staging::{clean_staging, partial_name, resume_name, ResumeRecord};

pub use trash::TRASH;

use crate::event::{RemotePath, RESERVED_NAME};
use cap_std::fs::{Dir, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The staging folder, relative to the mirror root.
const STAGING: &str = ".sftp-mirror/staging";
/// Held (flock) by the one process that writes the mirror: the daemon or a
/// command-line `reconcile`. Another one would delete the first one's staging
/// files on start.
const LOCK: &str = ".sftp-mirror/lock";
/// Downloads of files this large or larger flush their staging file every
/// this many bytes and record how far it is durable, so one interrupted by
/// a crash resumes there; a smaller file is simply fetched again.
pub const RESUMABLE_FROM: u64 = 16 << 20;

/// A local operation failed.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct MirrorError {
    /// What we were doing.
    pub op: &'static str,
    /// The mirror-relative path.
    pub path: String,
    /// The cause.
    #[source]
    pub source: io::Error,
}

fn err(op: &'static str, path: impl AsRef<Path>) -> impl FnOnce(io::Error) -> MirrorError {
    let path = path.as_ref().display().to_string();
    move |source| MirrorError { op, path, source }
}

/// What a mirror path is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symlink (never created by us: planted by someone else).
    Symlink,
    /// A socket, fifo, device …
    Other,
}

/// `lstat` of a mirror path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalEntry {
    /// Type.
    pub kind: LocalKind,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, whole seconds since the epoch.
    pub mtime: u64,
    /// Status change time (when our copy was put in place), seconds since the epoch.
    pub changed: i64,
    /// The same in milliseconds.
    pub changed_ms: i64,
}

impl LocalEntry {
    /// Whether this copy was put in place within a second of its (remote)
    /// mtime. SFTP mtimes are whole seconds, so a same-size rewrite in that
    /// second keeps size and mtime: such a copy cannot be trusted as
    /// unchanged when an event says the file was written again. (Git's "racy
    /// clean" entries, same reasoning.) A remote clock running ahead makes
    /// copies racy for as long as it is ahead, which costs downloads, never
    /// correctness.
    pub fn is_racy(&self) -> bool {
        i64::try_from(self.mtime).map_or(true, |m| self.changed <= m + 1)
    }
}

/// A directory's entries: names (bytes, as on disk) and what each is.
pub type Listing = Vec<(Vec<u8>, LocalEntry)>;

/// The mirror folder.
pub struct Mirror {
    root: Dir,
    /// Shared with every open [`Staging`] (a clone per file cost a dup and a close).
    staging: std::sync::Arc<Dir>,
    path: PathBuf,
    group: GroupSync,
    /// `mirror.trash`: where deleted and overwritten entries go instead.
    trash: Option<trash::Trash>,
    trash_keep: Option<Duration>,
    /// The exclusive lock on [`LOCK`], released when the mirror is dropped.
    _lock: Option<std::fs::File>,
}

impl Mirror {
    /// Opens (creating if needed) the mirror at `path` and empties its staging area,
    /// which can only hold leftovers of an interrupted run.
    ///
    /// # Errors
    /// When the folder cannot be created or opened.
    pub fn open(path: &Path) -> Result<Mirror, MirrorError> {
        Self::open_as(path, true)
    }

    /// Opens the mirror for reading only (`reconcile --dry-run`): no lock, the
    /// staging area is left alone, so it works next to a running daemon.
    ///
    /// # Errors
    /// When the folder cannot be created or opened.
    pub fn open_read_only(path: &Path) -> Result<Mirror, MirrorError> {
        Self::open_as(path, false)
    }

    fn open_as(path: &Path, writer: bool) -> Result<Mirror, MirrorError> {
        if !writer {
            return Self::open_for_reading(path);
        }
        let p = path.display().to_string();
        let root = Self::open_root(path)?;
        // Held open read-only: a file open for writing would keep the filesystem
        // from being remounted read-only while we run.
        if !root.exists(LOCK) {
            drop(root.open_with(LOCK, OpenOptions::new().create(true).truncate(false).write(true)));
        }
        let lock = root.open(LOCK).map_err(err("open", LOCK))?.into_std();
        if let Err(e) = rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            let e = io::Error::from(e);
            let source = if e.kind() == io::ErrorKind::WouldBlock {
                io::Error::other(
                    "another sftp-mirror process (a running daemon, or a reconcile) is writing this mirror; the daemon reconciles by itself on start and every reconcile.interval",
                )
            } else {
                e
            };
            return Err(MirrorError { op: "lock", path: p, source });
        }
        if root.symlink_metadata(STAGING).is_ok_and(|m| !m.is_dir()) {
            root.remove_file(STAGING).map_err(err("clean", STAGING))?;
        }
        root.create_dir_all(STAGING).map_err(err("create", STAGING))?;
        let staging = root.open_dir(STAGING).map_err(err("open", STAGING))?;
        clean_staging(&staging).map_err(err("clean", STAGING))?;
        Ok(Mirror::assemble(root, staging, path, Some(lock)))
    }

    fn assemble(root: Dir, staging: Dir, path: &Path, lock: Option<std::fs::File>) -> Mirror {
        Mirror {
            root,
            staging: std::sync::Arc::new(staging),
            path: path.to_owned(),
            group: GroupSync::default(),
            trash: None,
            trash_keep: None,
            _lock: lock,
        }
    }

    /// The read-only open: creates nothing (no folder, lock or staging area);
    /// a mirror that does not exist yet reads as an empty folder.
    fn open_for_reading(path: &Path) -> Result<Mirror, MirrorError> {
        let p = path.display().to_string();
        let root = match Dir::open_ambient_dir(path, cap_std::ambient_authority()) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Stands in for the mirror to be: a handle on an empty folder of
                // our own, removed at once (the open handle lists nothing).
                let empty = tempfile::tempdir().map_err(err("create an empty stand-in for", &p))?;
                Dir::open_ambient_dir(empty.path(), cap_std::ambient_authority())
                    .map_err(err("open an empty stand-in for", &p))?
            }
            Err(e) => return Err(err("open mirror folder", &p)(e)),
        };
        let staging = root.try_clone().map_err(err("open mirror folder", &p))?;
        Ok(Mirror::assemble(root, staging, path, None))
    }

    /// Turns on `mirror.trash`: from now on deleted and overwritten entries are
    /// moved to `.sftp-mirror/trash/<UTC date>/` and kept `keep` long. A
    /// read-only mirror only remembers that it would (the dry-run plan says so).
    ///
    /// # Errors
    /// When the trash folder cannot be created.
    pub fn use_trash(&mut self, keep: Duration) -> Result<(), MirrorError> {
        self.trash_keep = Some(keep);
        // Opened read-only (no lock): nothing is created.
        if self._lock.is_some() {
            self.trash = Some(trash::Trash::open(&self.root).map_err(err("create", TRASH))?);
        }
        Ok(())
    }

    /// How long the trash keeps entries, when it is on.
    pub fn trash_keep(&self) -> Option<Duration> {
        self.trash_keep
    }

    /// Removes the trash's day folders older than its keep duration; returns
    /// how many went (0 without a trash).
    ///
    /// # Errors
    /// On an I/O error.
    pub fn prune_trash(&self) -> Result<u64, MirrorError> {
        match (&self.trash, self.trash_keep) {
            (Some(t), Some(keep)) => t.prune(SystemTime::now(), keep).map_err(err("prune", TRASH)),
            _ => Ok(0),
        }
    }

    /// Takes `rel` (of `kind`) out of the mirror: into the trash, or removed.
    fn discard(&self, rel: &Path, kind: LocalKind) -> io::Result<()> {
        match (&self.trash, kind) {
            (Some(t), LocalKind::File | LocalKind::Dir) => {
                let to = t.take(&self.root, rel, SystemTime::now())?;
                tracing::debug!(path = %rel.display(), trash = %to.display(), "moved to the trash");
                Ok(())
            }
            // Symlinks and special files are not mirror content: nothing to keep.
            (_, LocalKind::Dir) => self.root.remove_dir_all(rel),
            _ => self.root.remove_file(rel),
        }
    }

    /// Free bytes for us in the mirror's file system.
    ///
    /// # Errors
    /// When the file system cannot be asked.
    pub fn free_space(&self) -> Result<u64, MirrorError> {
        let st = rustix::fs::fstatvfs(&self.staging).map_err(|e| err("statvfs", STAGING)(e.into()))?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// The staging file for downloading `rel` (remote `size` bytes, `mtime`),
    /// resumable from [`RESUMABLE_FROM`] bytes on,
    /// and how many leading bytes of it are already there and durable: an
    /// earlier, interrupted download of the same remote version (same size and
    /// mtime) resumes; another version starts from zero. Unlike
    /// [`Mirror::staging_file`], it survives a failed attempt and a restart.
    ///
    /// # Errors
    /// On an I/O error.
    pub fn resumable_staging(&self, rel: &RemotePath, size: u64, mtime: u64) -> Result<(Staging, u64), MirrorError> {
        let name = partial_name(rel);
        // A smaller file has nothing durable before its commit: no record to
        // keep (it cost 5 file system calls a download, a create and an
        // unlink among them, for nothing).
        let want = (size >= RESUMABLE_FROM).then_some(ResumeRecord { size, mtime });
        let have = want.and_then(|_| self.staging.read_to_string(resume_name(&name)).ok());
        let have = have.and_then(|t| ResumeRecord::decode(&t));
        let file = self
            .staging
            .open_with(&name, OpenOptions::new().read(true).write(true).create(true).truncate(want.is_none()))
            .map_err(err("create staging file", STAGING))?
            .into_std();
        let resume_from = match (want, have) {
            (Some(w), Some((r, durable))) if r == w => {
                let on_disk = file.metadata().map_err(err("stat staging file", STAGING))?.len();
                if durable <= on_disk {
                    durable
                } else {
                    0
                }
            }
            _ => 0,
        };
        if let (Some(w), 0) = (want, resume_from) {
            file.set_len(0).map_err(err("truncate staging file", STAGING))?;
            self.staging.write(resume_name(&name), w.encode(0)).map_err(err("write", STAGING))?;
        }
        let staging = self.staging.clone();
        Ok((Staging { name, file: Some(file), staging, committed: false, resume: want }, resume_from))
    }

    /// Drops an interrupted download of `rel`, if there is one: the remote has
    /// no file there now, so it can never resume.
    pub fn forget_partial(&self, rel: &RemotePath) {
        let name = partial_name(rel);
        let _ = self.staging.remove_file(resume_name(&name));
        let _ = self.staging.remove_file(&name);
    }

    /// Creates the mirror folder and its private `.sftp-mirror` folder.
    fn open_root(path: &Path) -> Result<Dir, MirrorError> {
        let p = path.display().to_string();
        if path.exists() && !path.is_dir() {
            return Err(err("use as the mirror folder", &p)(io::Error::other(
                "it is a file, not a folder: set mirror.path to a folder",
            )));
        }
        std::fs::create_dir_all(path).map_err(err("create mirror folder", &p))?;
        let root = Dir::open_ambient_dir(path, cap_std::ambient_authority()).map_err(err("open mirror folder", &p))?;
        match root.symlink_metadata(RESERVED_NAME) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                root.remove_file(RESERVED_NAME).map_err(err("replace", RESERVED_NAME))?;
                root.create_dir(RESERVED_NAME).map_err(err("create", RESERVED_NAME))?;
            }
            Err(e) if gone(&e) => root.create_dir(RESERVED_NAME).map_err(err("create", RESERVED_NAME))?,
            Err(e) => return Err(err("stat", RESERVED_NAME)(e)),
        }
        Ok(root)
    }

    /// Checks that the mirror can be written (`check`), without taking it over:
    /// a daemon may be running on it.
    ///
    /// # Errors
    /// When the folder or a file in it cannot be created.
    pub fn probe_writable(path: &Path) -> Result<(), MirrorError> {
        let root = Self::open_root(path)?;
        let name = format!(".sftp-mirror/probe-{:016x}", fastrand::u64(..));
        let mut f = root
            .open_with(&name, OpenOptions::new().create_new(true).write(true))
            .map_err(err("create a file in", ".sftp-mirror"))?;
        let r = std::io::Write::write_all(&mut f, b"probe").map_err(err("write", &name));
        let _ = root.remove_file(&name);
        r
    }

    /// The mirror folder on disk.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The staging folder on disk (readers of the mirror should skip `.sftp-mirror`).
    pub fn staging_path(&self) -> PathBuf {
        self.path.join(STAGING)
    }

    /// `lstat` of `rel`; `None` when it does not exist, or when it is only
    /// reachable through a symlink or a non-directory (then it is not mirror content).
    ///
    /// # Errors
    /// On an I/O error other than "not there".
    pub fn stat(&self, rel: &RemotePath) -> Result<Option<LocalEntry>, MirrorError> {
        if !self.ancestors_are_dirs(rel)? {
            return Ok(None);
        }
        self.lstat(rel.as_path())
    }

    /// Whether `rel` (`None` = the root) is a real directory reachable without symlinks.
    ///
    /// # Errors
    /// On an I/O error other than "not there".
    pub fn stat_dir(&self, rel: Option<&RemotePath>) -> Result<bool, MirrorError> {
        match rel {
            None => Ok(true),
            Some(r) => Ok(self.stat(r)?.is_some_and(|e| e.kind == LocalKind::Dir)),
        }
    }

    fn lstat(&self, rel: &Path) -> Result<Option<LocalEntry>, MirrorError> {
        match self.root.symlink_metadata(rel) {
            Ok(m) => Ok(Some(entry_of(&m))),
            Err(e) if gone(&e) => Ok(None),
            Err(e) => Err(err("stat", rel)(e)),
        }
    }

    /// Whether every ancestor of `rel` is a real directory (not a symlink).
    fn ancestors_are_dirs(&self, rel: &RemotePath) -> Result<bool, MirrorError> {
        for prefix in ancestors(rel.as_path()) {
            match self.lstat(prefix)? {
                Some(e) if e.kind == LocalKind::Dir => {}
                _ => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Makes every ancestor of `rel` a real directory, replacing a file or
    /// symlink in the way (the remote has a directory there).
    /// Returns the first directory it had to create, if any: its parent's
    /// entry must be made durable too.
    fn ensure_ancestors<'r>(&self, rel: &'r Path) -> Result<Option<&'r Path>, MirrorError> {
        let mut first = None;
        for prefix in ancestors(rel) {
            if self.ensure_dir_at(prefix)? && first.is_none() {
                first = Some(prefix);
            }
        }
        Ok(first)
    }

    fn ensure_dir_at(&self, rel: &Path) -> Result<bool, MirrorError> {
        match self.lstat(rel)? {
            Some(e) if e.kind == LocalKind::Dir => return Ok(false),
            Some(e) => self.discard(rel, e.kind).map_err(err("replace with a directory", rel))?,
            None => {}
        }
        match self.root.create_dir(rel) {
            Ok(()) => Ok(true),
            // Another task created it between our lstat and mkdir: fine if it is a directory.
            Err(e)
                if e.kind() == io::ErrorKind::AlreadyExists
                    && self.lstat(rel)?.map(|e| e.kind) == Some(LocalKind::Dir) =>
            {
                Ok(false)
            }
            Err(e) => Err(err("create directory", rel)(e)),
        }
    }

    /// Creates directory `rel` and its parents; a file or symlink in the way is
    /// replaced. Returns whether anything was created.
    ///
    /// # Errors
    /// On an I/O error.
    pub fn make_dir(&self, rel: &RemotePath) -> Result<bool, MirrorError> {
        let r = rel.as_path();
        let first = self.ensure_ancestors(r)?;
        let created = self.ensure_dir_at(r)?;
        if let Some(first) = first.or(created.then_some(r)) {
            for p in ancestors(r).chain([r]).filter(|p| p.as_os_str().len() >= first.as_os_str().len()) {
                self.group.sync_dir(&self.root, parent_of(p)).map_err(err("sync directory", p))?;
            }
        }
        Ok(created)
    }

    /// A new, empty staging file.
    ///
    /// # Errors
    /// On an I/O error (e.g. the mirror filesystem is read-only).
    pub fn staging_file(&self) -> Result<Staging, MirrorError> {
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        loop {
            let name = format!("{:016x}.part", fastrand::u64(..));
            match self.staging.open_with(&name, &opts) {
                Ok(f) => {
                    return Ok(Staging {
                        name,
                        file: Some(f.into_std()),
                        staging: self.staging.clone(),
                        committed: false,
                        resume: None,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(err("create staging file", STAGING)(e)),
            }
        }
    }

    /// Writes `data` to a new staging file and commits it to `rel` as
    /// [`Mirror::commit`] does.
    ///
    /// # Errors
    /// On an I/O error; nothing is left behind.
    pub fn commit_bytes(&self, data: &[u8], rel: &RemotePath, mtime: u64) -> Result<(), MirrorError> {
        use std::io::Write;
        let mut staged = self.staging_file()?;
        staged.file().write_all(data).map_err(err("write", STAGING))?;
        self.commit(staged, rel, mtime)
    }

    /// Makes a written staging file durable with `mtime` (seconds) and renames
    /// it to `rel`, replacing whatever is there (a directory tree included: the
    /// caller has confirmed with the remote that `rel` is a file now).
    ///
    /// # Errors
    /// On an I/O error; the staging file is then removed.
    pub fn commit(&self, mut staged: Staging, rel: &RemotePath, mtime: u64) -> Result<(), MirrorError> {
        let r = rel.as_path();
        let f = staged.file();
        f.set_modified(UNIX_EPOCH + Duration::from_secs(mtime)).map_err(err("set mtime", r))?;
        // The data must be durable before the name points at it, or a crash could
        // leave an empty or partial file under the final name.
        f.sync_data().map_err(err("sync data of", r))?;
        let created = self.ensure_ancestors(r)?;
        // The parent opened once for the lstat and the rename: each through the
        // root would open it again (and fail once more for a new file).
        let opened = match r.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(p) => Some(self.root.open_dir(p).map_err(err("open directory", p))?),
            None => None,
        };
        let (dir, name) = (opened.as_ref().unwrap_or(&self.root), Path::new(r.file_name().unwrap_or_default()));
        let here = match dir.symlink_metadata(name) {
            Ok(m) => Some(entry_of(&m).kind),
            Err(e) if gone(&e) => None,
            Err(e) => return Err(err("stat", r)(e)),
        };
        match here {
            Some(LocalKind::Dir) => self.discard(r, LocalKind::Dir).map_err(err("replace directory", r))?,
            // The old version is kept by a second name; the rename below
            // replaces it in one step, so readers never find the path missing.
            Some(LocalKind::File) => {
                if let Some(t) = &self.trash {
                    t.keep_copy(&self.root, r, SystemTime::now()).map_err(err("keep in the trash", r))?;
                }
            }
            _ => {}
        }
        self.staging.rename(&staged.name, dir, name).map_err(err("rename into place", r))?;
        staged.committed = true;
        if let Some(c) = created {
            // New directories: the chain below the first one created is flushed
            // by each child's own directory fsync; the first one needs its parent.
            for prefix in ancestors(r).filter(|p| p.as_os_str().len() >= c.as_os_str().len()) {
                self.group.sync_dir(&self.root, parent_of(prefix)).map_err(err("sync directory", prefix))?;
            }
        }
        self.group.sync_dir(&self.root, parent_of(r)).map_err(err("sync rename of", r))
    }

    /// Removes `rel` (a file, a symlink, or a whole directory tree, never
    /// following links). Returns what was removed, `None` if nothing was there.
    ///
    /// # Errors
    /// On an I/O error.
    pub fn remove(&self, rel: &RemotePath) -> Result<Option<LocalKind>, MirrorError> {
        let Some(entry) = self.stat(rel)? else {
            return Ok(None);
        };
        let r = rel.as_path();
        self.discard(r, entry.kind).or_else(|e| if gone(&e) { Ok(()) } else { Err(e) }).map_err(err("remove", r))?;
        self.group.sync_dir(&self.root, parent_of(r)).map_err(err("sync removal of", r))?;
        Ok(Some(entry.kind))
    }

    /// Entries below directory `rel`, all levels, not following symlinks.
    ///
    /// # Errors
    /// On an I/O error.
    pub fn count_entries(&self, rel: &RemotePath) -> Result<u64, MirrorError> {
        let mut n = 0;
        let mut stack = vec![rel.with_dir(true)];
        while let Some(d) = stack.pop() {
            for (name, e) in self.list_dir(Some(&d))? {
                n += 1;
                if e.kind == LocalKind::Dir {
                    if let Ok(p) = RemotePath::child(Some(&d), &name, true) {
                        stack.push(p);
                    }
                }
            }
        }
        Ok(n)
    }

    /// Lists directory `rel` (`None` = the root) without following symlinks;
    /// the root's `.sftp-mirror` is left out. Names are bytes, exactly as on
    /// disk (UTF-8 or not). A directory that is not there lists nothing.
    ///
    /// # Errors
    /// On an I/O error.
    pub fn list_dir(&self, rel: Option<&RemotePath>) -> Result<Listing, MirrorError> {
        Ok(self.list_dir_upto(rel, usize::MAX)?.unwrap_or_default())
    }

    /// [`Mirror::list_dir`], but `None` as soon as the directory shows more
    /// than `max` entries (a caller that wanted a few of them does better
    /// asking each).
    ///
    /// # Errors
    /// On an I/O error.
    pub fn list_dir_upto(&self, rel: Option<&RemotePath>, max: usize) -> Result<Option<Listing>, MirrorError> {
        use std::os::unix::ffi::OsStringExt;
        let shown = rel.map(|r| r.lossy().into_owned()).unwrap_or_else(|| ".".into());
        let dir = match rel {
            Some(r) => self.root.open_dir(r.as_path()),
            None => self.root.try_clone(),
        };
        let dir = match dir {
            Ok(d) => d,
            // Removed by someone else meanwhile: it lists nothing now.
            Err(e) if gone(&e) => return Ok(Some(Vec::new())),
            Err(e) => return Err(err("open directory", &shown)(e)),
        };
        let mut out = Vec::new();
        for ent in dir.entries().map_err(err("list", &shown))? {
            let ent = ent.map_err(err("list", &shown))?;
            let name = ent.file_name().into_vec();
            if rel.is_none() && name == RESERVED_NAME.as_bytes() {
                continue;
            }
            if out.len() == max {
                return Ok(None);
            }
            // fstatat(dirfd, name, AT_SYMLINK_NOFOLLOW): one syscall, no path walk.
            let meta = match ent.metadata() {
                Ok(m) => m,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(err("stat", format!("{shown}/{}", String::from_utf8_lossy(&name)))(e)),
            };
            out.push((name, entry_of(&meta)));
        }
        Ok(Some(out))
    }
}

fn entry_of(m: &cap_std::fs::Metadata) -> LocalEntry {
    let ft = m.file_type();
    let kind = if ft.is_symlink() {
        LocalKind::Symlink
    } else if ft.is_dir() {
        LocalKind::Dir
    } else if ft.is_file() {
        LocalKind::File
    } else {
        LocalKind::Other
    };
    let mtime = m
        .modified()
        .ok()
        .and_then(|t| t.into_std().duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    use cap_std::fs::MetadataExt;
    let changed_ms = m.ctime().saturating_mul(1000).saturating_add(m.ctime_nsec() / 1_000_000);
    LocalEntry { kind, size: m.len(), mtime, changed: m.ctime(), changed_ms }
}

/// "Not there", including "a component on the way is not a directory" and
/// cap-std's refusal to leave the mirror through a symlink.
fn gone(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory)
        || e.raw_os_error() == Some(20 /* ENOTDIR */)
}

/// `a/b/c` → `a/b`; `c` → `.`.
fn parent_of(rel: &Path) -> &Path {
    rel.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// `a/b/c` → `a`, `a/b` (shortest first).
fn ancestors(rel: &Path) -> impl Iterator<Item = &Path> {
    use std::os::unix::ffi::OsStrExt;
    let b = rel.as_os_str().as_bytes();
    b.iter().enumerate().filter(|(_, &c)| c == b'/').map(move |(i, _)| crate::event::bytes_path(&b[..i]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_copy_made_within_a_second_of_its_mtime_is_racy() {
        let e =
            |changed| LocalEntry { kind: LocalKind::File, size: 1, mtime: 1_000, changed, changed_ms: changed * 1000 };
        assert!(e(999).is_racy() && e(1_000).is_racy() && e(1_001).is_racy());
        assert!(!e(1_002).is_racy());
    }
    use std::io::Write;

    fn p(s: &str) -> RemotePath {
        RemotePath::parse(s).unwrap()
    }

    fn store(m: &Mirror, rel: &str, data: &[u8], mtime: u64) {
        let mut s = m.staging_file().unwrap();
        s.file().write_all(data).unwrap();
        m.commit(s, &p(rel), mtime).unwrap();
    }

    #[test]
    fn store_creates_parents_sets_mtime_and_leaves_no_staging() {
        let dir = tempfile::tempdir().unwrap();
        let m = Mirror::open(dir.path()).unwrap();
        store(&m, "a/b/c.txt", b"hello", 1_600_000_000);
        assert_eq!(std::fs::read(dir.path().join("a/b/c.txt")).unwrap(), b"hello");
        let e = m.stat(&p("a/b/c.txt")).unwrap().unwrap();
        assert_eq!((e.kind, e.size, e.mtime), (LocalKind::File, 5, 1_600_000_000));
        assert_eq!(std::fs::read_dir(m.staging_path()).unwrap().count(), 0);
    }

    #[test]
    fn file_and_directory_replace_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let m = Mirror::open(dir.path()).unwrap();
        store(&m, "x", b"file", 1);
        assert!(m.make_dir(&p("x/y")).unwrap());
        assert!(dir.path().join("x/y").is_dir());
        store(&m, "x", b"file again", 2);
        assert_eq!(std::fs::read(dir.path().join("x")).unwrap(), b"file again");
        assert_eq!(m.remove(&p("x")).unwrap(), Some(LocalKind::File));
        assert_eq!(m.remove(&p("x")).unwrap(), None);
    }

    #[test]
    fn a_directory_swapped_for_a_symlink_to_an_outside_fifo_fails_its_fsync_without_waiting() {
        let outside = tempfile::tempdir().unwrap();
        let fifo = outside.path().join("fifo");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::RWXU, 0).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let m = Arc::new(Mirror::open(dir.path()).unwrap());
        std::os::unix::fs::symlink(&fifo, dir.path().join("d")).unwrap();
        // Opening the FIFO for reading would block until a writer comes: run it
        // on a thread and bound the wait.
        let (tx, rx) = std::sync::mpsc::channel();
        let m2 = m.clone();
        std::thread::spawn(move || tx.send(m2.group.sync_dir(&m2.root, Path::new("d")).is_err()).unwrap());
        let failed = rx.recv_timeout(Duration::from_secs(5)).expect("the directory fsync blocked on the FIFO");
        assert!(failed, "a symlink is not a directory of the mirror");
    }

    #[test]
    fn a_failed_directory_fsync_is_reported_to_its_waiter_even_if_a_later_round_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let m = Arc::new(Mirror::open(dir.path()).unwrap());
        std::fs::create_dir(dir.path().join("ok")).unwrap();
        for _ in 0..200 {
            // Good rounds run around the failing one all the time.
            let busy = Arc::new(std::sync::atomic::AtomicBool::new(true));
            let others: Vec<_> = (0..3)
                .map(|_| {
                    let (m, busy) = (m.clone(), busy.clone());
                    std::thread::spawn(move || {
                        // (Sharing a round with the failing one, they may fail too.)
                        while busy.load(std::sync::atomic::Ordering::Relaxed) {
                            let _ = m.group.sync_dir(&m.root, Path::new("ok"));
                        }
                    })
                })
                .collect();
            let r = m.group.sync_dir(&m.root, Path::new("missing"));
            busy.store(false, std::sync::atomic::Ordering::Relaxed);
            others.into_iter().for_each(|t| t.join().unwrap());
            assert!(r.is_err(), "the waiter of a failed round was told Ok");
        }
    }

    #[test]
    fn a_mirror_path_that_is_a_file_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-folder");
        std::fs::write(&file, b"x").unwrap();
        let e = Mirror::open(&file).err().expect("refused").to_string();
        assert!(e.contains("is a file, not a folder"), "{e}");
    }

    #[test]
    fn a_directory_removed_by_someone_else_lists_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let m = Mirror::open(dir.path()).unwrap();
        assert!(m.list_dir(Some(&p("not/there"))).unwrap().is_empty());
    }

    #[test]
    fn planted_symlinks_are_never_followed_out() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("victim"), b"keep").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let m = Mirror::open(dir.path()).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("victim"), dir.path().join("flink")).unwrap();

        // Reading through the link sees nothing; deleting through it deletes nothing outside.
        assert_eq!(m.stat(&p("link/victim")).unwrap(), None);
        assert_eq!(m.remove(&p("link/victim")).unwrap(), None);
        assert_eq!(std::fs::read(outside.path().join("victim")).unwrap(), b"keep");

        // Writing below the link replaces the link by a real directory.
        store(&m, "link/victim", b"mirror", 5);
        assert!(dir.path().join("link").symlink_metadata().unwrap().is_dir());
        assert_eq!(std::fs::read(outside.path().join("victim")).unwrap(), b"keep");

        // Writing over a file symlink replaces the link itself.
        store(&m, "flink", b"mine", 5);
        assert!(dir.path().join("flink").symlink_metadata().unwrap().is_file());
        assert_eq!(std::fs::read(outside.path().join("victim")).unwrap(), b"keep");

        // Removing a tree that contains a link to outside removes the link only.
        std::fs::create_dir(dir.path().join("tree")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("tree/out")).unwrap();
        assert_eq!(m.remove(&p("tree")).unwrap(), Some(LocalKind::Dir));
        assert_eq!(std::fs::read(outside.path().join("victim")).unwrap(), b"keep");
    }

    #[test]
    fn open_cleans_staging_leftovers_and_list_hides_them() {
        let dir = tempfile::tempdir().unwrap();
        let m = Mirror::open(dir.path()).unwrap();
        let mut s = m.staging_file().unwrap();
        s.file().write_all(b"partial").unwrap();
        std::mem::forget(s); // a crash: the file stays
        assert_eq!(std::fs::read_dir(m.staging_path()).unwrap().count(), 1);
        drop(m);
        let m = Mirror::open(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(m.staging_path()).unwrap().count(), 0);
        assert!(m.list_dir(None).unwrap().is_empty());
    }

    #[test]
    fn only_one_process_writes_a_mirror_but_check_may_probe_it() {
        let dir = tempfile::tempdir().unwrap();
        let m = Mirror::open(dir.path()).unwrap();
        let e = Mirror::open(dir.path()).err().expect("second writer refused").to_string();
        assert!(e.contains("another sftp-mirror process"), "{e}");
        Mirror::probe_writable(dir.path()).unwrap();
        drop(m);
        Mirror::open(dir.path()).unwrap();
    }

    #[test]
    fn dropped_staging_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let m = Mirror::open(dir.path()).unwrap();
        drop(m.staging_file().unwrap());
        assert_eq!(std::fs::read_dir(m.staging_path()).unwrap().count(), 0);
    }
}

#[cfg(test)]
mod trash_tests {
    use super::*;

    #[test]
    fn an_overwritten_file_is_kept_in_the_trash_while_the_new_one_takes_its_place() {
        let t = tempfile::tempdir().unwrap();
        let mut m = Mirror::open(t.path()).unwrap();
        m.use_trash(Duration::from_secs(86_400)).unwrap();
        let rel = RemotePath::parse("r.csv").unwrap();
        for v in ["one", "two"] {
            let mut s = m.staging_file().unwrap();
            std::io::Write::write_all(s.file(), v.as_bytes()).unwrap();
            m.commit(s, &rel, 1_700_000_000).unwrap();
        }
        assert_eq!(std::fs::read_to_string(t.path().join("r.csv")).unwrap(), "two");
        let day = humantime::format_rfc3339_seconds(SystemTime::now()).to_string()[..10].to_owned();
        assert_eq!(std::fs::read_to_string(t.path().join(TRASH).join(day).join("r.csv")).unwrap(), "one");
    }
}
