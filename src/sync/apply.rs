//! One path → one action (SPEC §2): ask the remote what the path is now and
//! make the mirror match. Events and reconcile both end here.

use super::diff::{diff_dir, Op};
use super::filter::Filter;
use super::locks::PathLocks;
use crate::event::RemotePath;
use crate::journal::HookKind;
use crate::mirror::{LocalEntry, LocalKind, Mirror, MirrorError};
use crate::remote::{
    download, Bandwidth, DownloadError, Ledger, Out, Progress, Remote, RemoteEntry, RemoteError, RemoteKind,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Entries an event may remove without the event delete guard looking.
pub const EVENT_DELETE_FLOOR: u64 = 50;

/// Files up to this size are downloaded into memory and written to disk with
/// their commit: one trip to a blocking thread, where a staging file costs
/// three more and a writer thread. At most `mirror.concurrency` of them are
/// held at once (4 MiB with the default 16).
const IN_MEMORY_MAX: u64 = 256 << 10;

/// Where a download goes.
enum Dest {
    /// Memory (a small file).
    Memory(Vec<u8>),
    /// A staging file, resumable if large.
    Staged(crate::mirror::Staging),
}

impl Dest {
    /// Where a download records how far it is durable: a large staging
    /// file's resume record; nothing for memory.
    fn recorder(&self) -> Box<dyn Fn(u64) + Send + Sync> {
        match self {
            Dest::Memory(_) => Box::new(|_| {}),
            Dest::Staged(staged) => Box::new(staged.recorder()),
        }
    }

    /// Where the download writes.
    fn out(&mut self) -> Out<'_> {
        match self {
            Dest::Memory(buf) => Out::Memory(buf),
            Dest::Staged(staged) => Out::File(staged.file()),
        }
    }
}

/// Times a download is restarted because the remote file changed under it, or
/// the connection dropped, before the apply fails (and is retried later).
const ATTEMPTS: u32 = 3;

/// Events on files of one directory from which it is listed once instead
/// of an `lstat` per file (see [`Syncer::look_up`]).
pub const LIST_MIN: usize = 8;

/// Entries a directory may show for `n` events on its files to be listed
/// for them: beyond, the `lstat`s are cheaper than the listing.
pub fn list_bound(n: usize) -> usize {
    16 * n + 128
}

/// What the remote said of some files of one directory ([`Syncer::look_up`]).
pub enum Lookup {
    /// Nothing asked: each file is asked about alone.
    EachAlone,
    /// The directory's entries by name (empty: the directory is not there),
    /// and the mirror's, when listed too (else each file is `lstat`ed).
    Entries(HashMap<Vec<u8>, RemoteEntry>, Option<HashMap<Vec<u8>, LocalEntry>>),
    /// This ancestor is a symlink (or another special entry): not mirrored.
    Symlinked(Vec<u8>),
    /// The connection failed: every file's apply fails (and is retried).
    Failed(RemoteError),
}

/// What the ancestors of a path are on the remote.
enum Ancestry<'p> {
    /// All directories.
    Dirs,
    /// This one is a symlink (or another special entry).
    Symlink(&'p [u8]),
    /// One is a file or missing: nothing below it exists.
    Broken,
}

/// The answer for `path` below the remote symlink `ancestor`.
fn symlinked(path: &RemotePath, ancestor: &[u8]) -> Action {
    tracing::info!(path = %path, ancestor = %String::from_utf8_lossy(ancestor), "not mirrored: a remote ancestor is a symlink");
    Action::Skipped("a remote ancestor is a symlink")
}

/// What an apply did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Downloaded this many bytes.
    Downloaded(u64),
    /// Created the directory.
    MadeDir,
    /// Removed a local file or tree.
    Removed,
    /// The mirror already matched.
    Unchanged,
    /// The remote no longer has it, but `mirror.delete = false`.
    KeptNoDelete,
    /// Not mirrored (filtered, or not a file/directory on the remote).
    Skipped(&'static str),
}

/// Why an apply failed; retried later by the journal or reconcile.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The SFTP side failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The mirror side failed.
    #[error(transparent)]
    Local(#[from] MirrorError),
    /// The event delete guard held the event (see [`Syncer::apply_event`]).
    #[error("{0}")]
    Held(String),
    /// A blocking task died (a bug); reported, not fatal.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Counters for `/metrics` and summaries.
#[derive(Debug, Default)]
pub struct SyncStats {
    /// Files downloaded.
    pub files: AtomicU64,
    /// Bytes downloaded (files committed to the mirror).
    pub bytes: AtomicU64,
    /// Bytes written to staging files as they arrive, retried and abandoned
    /// ones included (progress and rates; `bytes` is what landed).
    pub received: AtomicU64,
    /// Directories created.
    pub dirs: AtomicU64,
    /// Entries removed.
    pub removed: AtomicU64,
    /// Applies that failed.
    pub failed: AtomicU64,
    /// Applies by (action, result) for `/metrics`.
    pub applies: std::sync::Mutex<std::collections::BTreeMap<(&'static str, &'static str), u64>>,
}

impl std::fmt::Display for Action {
    /// What was done, for people (`events`, logs).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Downloaded(n) => write!(f, "downloaded {}", crate::human::human_bytes(*n)),
            Action::MadeDir => f.write_str("directory created"),
            Action::Removed => f.write_str("removed"),
            Action::Unchanged => f.write_str("unchanged (the mirror already matched the remote)"),
            Action::KeptNoDelete => f.write_str("kept: gone on the remote, but mirror.delete = false"),
            Action::Skipped(why) => write!(f, "skipped: {why}"),
        }
    }
}

impl Action {
    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Action::Downloaded(_) => "download",
            Action::MadeDir => "mkdir",
            Action::Removed => "remove",
            Action::Unchanged => "unchanged",
            Action::KeptNoDelete => "kept",
            Action::Skipped(_) => "skipped",
        }
    }
}

/// Everything an apply needs: both sides, the rules, and the shared limits.
pub struct Syncer {
    /// The SFTP side.
    pub remote: Remote,
    /// The local side.
    pub mirror: Arc<Mirror>,
    /// include/exclude.
    pub filter: Filter,
    /// `mirror.delete`.
    pub delete: bool,
    /// `mirror.max_delete_ratio`, also the event delete guard's ratio.
    pub max_delete_ratio: f64,
    /// Bounds concurrent transfers (`mirror.concurrency`).
    pub transfers: Arc<Semaphore>,
    /// Bytes per second for all downloads together (`mirror.bwlimit`).
    pub bandwidth: Bandwidth,
    /// `[hooks]`, when configured (and the journal is open).
    pub hooks: Option<Arc<crate::hooks::Hooks>>,
    /// Per-path exclusion shared by events and reconcile.
    pub locks: PathLocks,
    /// Counters.
    pub stats: SyncStats,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, MirrorError> + Send + 'static,
) -> Result<T, ApplyError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApplyError::Internal(e.to_string()))?.map_err(ApplyError::from)
}

impl Syncer {
    /// Journals the hook run of a change about to be made (SPEC §9).
    async fn arm(
        &self,
        hook: HookKind,
        path: &RemotePath,
        action: &'static str,
        file: Option<(u64, u64)>,
    ) -> Result<Option<i64>, ApplyError> {
        match &self.hooks {
            None => Ok(None),
            Some(h) => h.arm(hook, path, action, file).await.map_err(|e| ApplyError::Internal(format!("journal: {e}"))),
        }
    }

    async fn fire(&self, armed: Option<i64>) {
        if let Some(h) = &self.hooks {
            h.fire(armed).await;
        }
    }

    async fn disarm(&self, armed: Option<i64>) {
        if let Some(h) = &self.hooks {
            h.disarm(armed).await;
        }
    }

    /// Empties the trash of day folders past `mirror.trash` (logged; a failure
    /// is a warning: the next round tries again).
    pub async fn prune_trash(&self) {
        let m = self.mirror.clone();
        match tokio::task::spawn_blocking(move || m.prune_trash()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(folders = n, "trash: removed day folders past mirror.trash"),
            Ok(Err(e)) => tracing::warn!("trash: {e}"),
            Err(e) => tracing::warn!("trash: {e}"),
        }
    }

    /// Counts an apply's outcome for `/metrics` (`kind` is "event" or "reconcile").
    pub fn count(&self, kind: &'static str, r: &Result<Action, ApplyError>) {
        let key = match r {
            Ok(a) => (a.label(), "ok"),
            Err(_) => (kind, "error"),
        };
        *self.stats.applies.lock().expect("not poisoned").entry(key).or_default() += 1;
    }

    /// Makes the mirror match the remote for `path`. Takes the path lock.
    ///
    /// # Errors
    /// [`ApplyError`] when either side fails; nothing partial is left behind.
    pub async fn apply(&self, path: &RemotePath) -> Result<Action, ApplyError> {
        let _guard = self.locks.lock(path).await;
        self.apply_locked(path).await
    }

    /// [`Syncer::apply`] for a caller that already holds the path lock.
    ///
    /// # Errors
    /// As [`Syncer::apply`].
    pub async fn apply_locked(&self, path: &RemotePath) -> Result<Action, ApplyError> {
        self.apply_event(path, None, false).await
    }

    /// [`Syncer::apply_locked`] for events: with `since` (when the latest
    /// `file.created` for `path` was received, ms), a local copy made before
    /// then is not trusted as current even with the same size and mtime
    /// (SPEC §2: an upload can keep both). With `guarded`, a removal of more
    /// than [`EVENT_DELETE_FLOOR`] entries that is also more than
    /// `mirror.max_delete_ratio` of the directory's entries is held
    /// ([`ApplyError::Held`]) instead of done.
    ///
    /// # Errors
    /// As [`Syncer::apply`].
    pub async fn apply_event(
        &self,
        path: &RemotePath,
        since: Option<i64>,
        guarded: bool,
    ) -> Result<Action, ApplyError> {
        // Fault injection for the tests (debug builds only): a bug in an apply.
        #[cfg(debug_assertions)]
        if std::env::var_os("SFTP_MIRROR_TEST_PANIC_ON").is_some_and(|p| p.as_encoded_bytes() == path.as_bytes()) {
            panic!("injected panic for {path} (SFTP_MIRROR_TEST_PANIC_ON)");
        }
        if !self.filter.allows(path) {
            return Ok(Action::Skipped("excluded by include/exclude"));
        }
        // The server resolves symlinks in the middle of a path, so `a/b` below a
        // remote symlink `a` is whatever `a` points to, outside the remote root
        // possibly. Check the ancestors together with the path itself (no extra
        // round trip): a symlink is never followed, as reconcile never descends one.
        let (remote, ancestry) = tokio::join!(self.remote.stat(path.as_bytes()), self.ancestry(path.split_parent().0));
        if let Ancestry::Symlink(a) = ancestry? {
            return Ok(symlinked(path, a));
        }
        // Below a file or a missing directory, the path's own stat says it is gone.
        self.apply_seen(path, remote?, since, guarded, None).await
    }

    /// Asks the remote once about the files of directory `dir` (relative;
    /// empty = the root) that `n` events name, for
    /// [`Syncer::apply_event_in`]. From [`LIST_MIN`] events on, the directory
    /// is listed instead of an `lstat` per file: the listing is asked after
    /// every one of them was received, so it answers each as currently as
    /// its own `lstat` would (a directory of more than [`list_bound`]
    /// entries is not listed).
    pub async fn look_up(&self, dir: &[u8], n: usize) -> Lookup {
        if n < LIST_MIN {
            return Lookup::EachAlone;
        }
        let lookup = self.list_for(dir, n).await;
        let listed = !matches!(lookup, Lookup::EachAlone);
        tracing::debug!(dir = %String::from_utf8_lossy(dir), files = n, listed, "files of one directory");
        lookup
    }

    /// [`Syncer::apply_event`] for file `path` of the directory that `lookup`
    /// was made for, answered from it where it can.
    ///
    /// # Errors
    /// As [`Syncer::apply`].
    pub async fn apply_event_in(
        &self,
        lookup: &Lookup,
        path: &RemotePath,
        since: Option<i64>,
        guarded: bool,
    ) -> Result<Action, ApplyError> {
        match lookup {
            Lookup::EachAlone => self.apply_event(path, since, guarded).await,
            _ if !self.filter.allows(path) => Ok(Action::Skipped("excluded by include/exclude")),
            Lookup::Entries(remote, local) => {
                let name = path.split_parent().1;
                let known = local.as_ref().map(|l| l.get(name).copied());
                self.apply_seen(path, remote.get(name).copied(), since, guarded, known).await
            }
            Lookup::Symlinked(a) => Ok(symlinked(path, a)),
            Lookup::Failed(e) => Err(ApplyError::Remote(e.clone())),
        }
    }

    /// Lists directory `dir` for `n` events on its files, with its ancestors'
    /// `lstat`s alongside (a symlink is never followed). [`Lookup::EachAlone`]
    /// when the directory is large, or cannot be listed while its files may
    /// still be stat'ed.
    async fn list_for(&self, dir: &[u8], n: usize) -> Lookup {
        let rpath = self.remote.path_of(dir);
        let max = list_bound(n);
        let listing = self.remote.with_retry(|c| {
            let rpath = rpath.clone();
            async move { crate::remote::list_dir_upto(&c, &rpath, max).await }
        });
        // The mirror's side in one trip too, instead of an `lstat` per file;
        // the files' paths are locked for this group, so it stays current.
        let local = self.list_local(dir, max);
        // The files' ancestors: the directory itself and those above it.
        let (listing, ancestry, local) = tokio::join!(listing, self.ancestry(dir), local);
        match ancestry {
            Err(e) => return Lookup::Failed(e),
            Ok(Ancestry::Symlink(a)) => return Lookup::Symlinked(a.to_vec()),
            Ok(Ancestry::Broken) => return Lookup::Entries(HashMap::new(), local),
            Ok(Ancestry::Dirs) => {}
        }
        match listing {
            Ok(Some(entries)) => Lookup::Entries(entries.into_iter().map(|e| (e.name, e.entry)).collect(), local),
            Ok(None) => Lookup::EachAlone,
            Err(e) if e.is_not_found() => Lookup::Entries(HashMap::new(), local),
            Err(e) if e.is_transport() => Lookup::Failed(e),
            // Not listable (permissions, a server's limit): the files may still be stat'ed.
            Err(_) => Lookup::EachAlone,
        }
    }

    /// The mirror's entries in directory `dir` (relative; empty = the root)
    /// by name, if it shows at most `max` (a directory that is not there, or
    /// not a real directory, shows none). `None` when larger or on an error:
    /// the files are then `lstat`ed one by one, which reports the error.
    async fn list_local(&self, dir: &[u8], max: usize) -> Option<HashMap<Vec<u8>, LocalEntry>> {
        let m = self.mirror.clone();
        let dir = if dir.is_empty() { None } else { Some(RemotePath::parse_bytes(dir).ok()?.with_dir(true)) };
        let listed = blocking(move || match &dir {
            Some(d) if m.stat(d)?.is_none_or(|e| e.kind != LocalKind::Dir) => Ok(Some(Vec::new())),
            d => m.list_dir_upto(d.as_ref(), max),
        });
        Some(listed.await.ok()??.into_iter().collect())
    }

    /// [`Syncer::apply_event`] once the remote was asked: `remote` is what
    /// `path` is now; `local`, what the mirror has there, if known.
    async fn apply_seen(
        &self,
        path: &RemotePath,
        remote: Option<RemoteEntry>,
        since: Option<i64>,
        guarded: bool,
        local: Option<Option<LocalEntry>>,
    ) -> Result<Action, ApplyError> {
        if guarded && remote.is_none() {
            let (m, p) = (self.mirror.clone(), path.with_dir(true));
            let local =
                blocking(move || if m.stat_dir(Some(&p))? { m.count_entries(&p).map(Some) } else { Ok(None) }).await?;
            if let Some(n) = local {
                self.guard(path, 1 + n, 1 + n)?;
            }
        }
        let action = match remote {
            Some(e) if e.kind == RemoteKind::File => self.fetch(&path.with_dir(false), e, since, local).await?,
            other => self.apply_known(path, other).await?,
        };
        if remote.is_some_and(|e| e.kind == RemoteKind::Dir) {
            // An event on a directory may stand for a change of its whole content
            // (removed and re-created, renamed, uploaded as a tree), so the
            // directory's subtree is brought in line with the remote too.
            self.sync_subtree(&path.with_dir(true), guarded).await?;
        }
        Ok(action)
    }

    /// Carries out one planned change of the tree diff; the caller holds a
    /// lock covering its path. The remote is asked again where it matters: a
    /// directory removed since it was listed is not created, and a deletion
    /// (the one destructive act) happens only if the remote confirms it now.
    ///
    /// # Errors
    /// As [`Syncer::apply`].
    pub async fn execute(&self, op: &Op) -> Result<Action, ApplyError> {
        match op {
            // Nothing there when the mirror was listed: not asked again (a file
            // put there meanwhile is replaced by the remote's, as it would be).
            Op::Download { path, entry, local, .. } => {
                match self.apply_listed(path, Some(*entry), local.is_none().then_some(None)).await {
                    // Gone since it was listed: what the remote says now is converged too.
                    Err(ApplyError::Remote(e)) if e.is_not_found() => self.apply_known(path, None).await,
                    r => r,
                }
            }
            Op::MakeDir { path, .. } => match self.remote.stat(path.as_bytes()).await {
                Ok(now) => self.apply_known(path, now).await,
                Err(e) => Err(e.into()),
            },
            // Boxed: a directory that reappeared is synced again, through here.
            Op::Delete { path, .. } => Box::pin(self.apply_locked(path)).await,
        }
    }

    /// The event delete guard: refuses removing `removes` of `total` entries
    /// under `path` when that is past both the floor and the ratio.
    fn guard(&self, path: &RemotePath, removes: u64, total: u64) -> Result<(), ApplyError> {
        if removes > EVENT_DELETE_FLOOR && removes as f64 > self.max_delete_ratio * total as f64 {
            return Err(ApplyError::Held(format!(
                "held by the event delete guard: applying it would delete {removes} of {total} local entries under {path} \
                 (more than {EVENT_DELETE_FLOOR} and than mirror.max_delete_ratio {}); if that is right, \
                 run `sftp-mirror retry <event id>` or `sftp-mirror reconcile --force`",
                self.max_delete_ratio
            )));
        }
        Ok(())
    }

    /// Makes the mirror's subtree under directory `dir` equal the remote one,
    /// by the same diff as reconcile. The caller holds the lock on `dir`,
    /// which covers every descendant.
    async fn sync_subtree(&self, dir: &RemotePath, guarded: bool) -> Result<(), ApplyError> {
        let rpath = self.remote.path_of(dir.as_bytes());
        let remote = self
            .remote
            .with_retry(|c| {
                let rpath = rpath.clone();
                async move { crate::remote::list_dir(&c, &rpath).await }
            })
            .await;
        let remote = match remote {
            Ok(r) => r,
            // Gone meanwhile: the next event (or reconcile) sees that.
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let (m, d, filter, deletes) = (self.mirror.clone(), dir.clone(), self.filter.clone(), self.delete);
        let (plan, descend, total) = blocking(move || {
            let local = if m.stat_dir(Some(&d))? { m.list_dir(Some(&d))? } else { Vec::new() };
            let (plan, descend) = diff_dir(Some(&d), remote, local, &filter, deletes, &mut |p| m.count_entries(p))?;
            // Counted only when the guard may need it: a walk of the subtree.
            let total = if guarded && plan.deletions() > EVENT_DELETE_FLOOR { m.count_entries(&d)? } else { 0 };
            Ok((plan, descend, total))
        })
        .await?;
        if guarded {
            // Everything this directory's events would remove, checked before anything changes.
            self.guard(dir, plan.deletions(), total)?;
        }
        for op in &plan.ops {
            self.execute(op).await?;
        }
        for child in descend {
            Box::pin(self.sync_subtree(&child, guarded)).await?;
        }
        Ok(())
    }

    /// What directory `dir` (relative, `""` = the root, which is taken as
    /// given) and each directory above it are on the remote, asked at once.
    async fn ancestry<'d>(&self, dir: &'d [u8]) -> Result<Ancestry<'d>, RemoteError> {
        let prefixes: Vec<&[u8]> = match dir.is_empty() {
            true => Vec::new(),
            false => dir.iter().enumerate().filter(|(_, &c)| c == b'/').map(|(i, _)| &dir[..i]).chain([dir]).collect(),
        };
        let stats = futures::future::join_all(prefixes.iter().map(|p| self.remote.stat(p))).await;
        for (p, st) in prefixes.into_iter().zip(stats) {
            match st? {
                Some(e) if e.kind == RemoteKind::Dir => {}
                Some(e) if e.kind == RemoteKind::Other => return Ok(Ancestry::Symlink(p)),
                _ => return Ok(Ancestry::Broken),
            }
        }
        Ok(Ancestry::Dirs)
    }

    /// Makes the mirror match `remote`, a fresh `lstat` of `path` (reconcile has
    /// it from the listing). The caller holds the path lock.
    ///
    /// # Errors
    /// As [`Syncer::apply`].
    pub async fn apply_known(&self, path: &RemotePath, remote: Option<RemoteEntry>) -> Result<Action, ApplyError> {
        self.apply_listed(path, remote, None).await
    }

    /// [`Syncer::apply_known`], told what the mirror has at `path` when that
    /// is known (from a listing).
    async fn apply_listed(
        &self,
        path: &RemotePath,
        remote: Option<RemoteEntry>,
        local: Option<Option<LocalEntry>>,
    ) -> Result<Action, ApplyError> {
        match remote {
            Some(e) if e.kind == RemoteKind::File => self.fetch(&path.with_dir(false), e, None, local).await,
            Some(e) if e.kind == RemoteKind::Dir => {
                let (m, p) = (self.mirror.clone(), path.with_dir(true));
                if !self.filter.allows(&p) {
                    return Ok(Action::Skipped("excluded by include/exclude"));
                }
                if !self.delete {
                    let (m, p) = (m.clone(), p.clone());
                    if blocking(move || m.stat(&p)).await?.is_some_and(|l| l.kind != LocalKind::Dir) {
                        tracing::warn!(path = %path, "kept: the remote has a directory here; replacing the local entry is a deletion and mirror.delete = false");
                        return Ok(Action::KeptNoDelete);
                    }
                }
                if blocking(move || m.make_dir(&p)).await? {
                    self.stats.dirs.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(path = %path, action = "mkdir", "directory created");
                    Ok(Action::MadeDir)
                } else {
                    Ok(Action::Unchanged)
                }
            }
            Some(_) => Ok(Action::Skipped("remote entry is neither a file nor a directory")),
            None => self.remove(path).await,
        }
        .inspect(|_| {
            if remote.is_none_or(|e| e.kind != RemoteKind::File) {
                // No file there now: an interrupted download of it can never resume.
                self.mirror.forget_partial(&path.with_dir(false));
            }
        })
    }

    /// Removes `path` locally; the caller has seen the remote confirm it is gone.
    async fn remove(&self, path: &RemotePath) -> Result<Action, ApplyError> {
        let (m, p) = (self.mirror.clone(), path.clone());
        let exists = blocking(move || m.stat(&p)).await?.is_some();
        if !exists {
            return Ok(Action::Unchanged);
        }
        if !self.delete {
            tracing::info!(path = %path, "remote entry is gone; kept locally because mirror.delete = false");
            return Ok(Action::KeptNoDelete);
        }
        let armed = self.arm(HookKind::OnDelete, path, "deleted", None).await?;
        let (m, p) = (self.mirror.clone(), path.clone());
        if let Err(e) = blocking(move || m.remove(&p)).await {
            self.disarm(armed).await;
            return Err(e);
        }
        self.fire(armed).await;
        self.stats.removed.fetch_add(1, Ordering::Relaxed);
        tracing::info!(path = %path, action = "remove", "removed: the remote no longer has it");
        Ok(Action::Removed)
    }

    /// Where the download of `path` (remote `entry`) goes, and how many of
    /// its bytes are already there (an interrupted download resumed).
    async fn destination(&self, path: &RemotePath, entry: RemoteEntry) -> Result<(Dest, u64), ApplyError> {
        if entry.size <= IN_MEMORY_MAX {
            return Ok((Dest::Memory(Vec::new()), 0));
        }
        let (m, p) = (self.mirror.clone(), path.clone());
        let (staged, resumed) = blocking(move || m.resumable_staging(&p, entry.size, entry.mtime)).await?;
        Ok((Dest::Staged(staged), resumed))
    }

    /// Downloads file `path` described by `entry` unless the mirror already has
    /// the same size and mtime in a copy made after that mtime's second ended
    /// (see [`LocalEntry::is_racy`](crate::mirror::LocalEntry::is_racy)).
    async fn fetch(
        &self,
        path: &RemotePath,
        mut entry: RemoteEntry,
        since: Option<i64>,
        local: Option<Option<LocalEntry>>,
    ) -> Result<Action, ApplyError> {
        if !self.filter.allows(path) {
            return Ok(Action::Skipped("excluded by include/exclude"));
        }
        let local = match local {
            Some(known) => known,
            None => {
                let (m, p) = (self.mirror.clone(), path.clone());
                blocking(move || m.stat(&p)).await?
            }
        };
        let replaces_file = local.is_some_and(|l| l.kind == LocalKind::File);
        if !self.delete && local.is_some_and(|l| l.kind != LocalKind::File) {
            tracing::warn!(path = %path, "kept: the remote has a file here; replacing the local entry is a deletion and mirror.delete = false");
            return Ok(Action::KeptNoDelete);
        }
        if local.is_some_and(|l| {
            l.kind == LocalKind::File
                && l.size == entry.size
                && l.mtime == entry.mtime
                && !l.is_racy()
                && since.is_none_or(|t| l.changed_ms > t)
        }) {
            return Ok(Action::Unchanged);
        }
        let started = std::time::Instant::now();
        let rpath = self.remote.path_of(path.as_bytes());
        let shown_path = path.lossy().into_owned();
        let _permit = self.transfers.acquire().await.map_err(|e| ApplyError::Internal(e.to_string()))?;
        let mut last_err = None;
        let mut timeouts = 0;
        let (mut dest, resumed) = self.destination(path, entry).await?;
        let mut progress = Progress { contiguous: resumed };
        if resumed > 0 {
            tracing::info!(path = %path, bytes = resumed, "resuming an interrupted download");
        }
        for _ in 0..ATTEMPTS {
            if let Dest::Staged(_) = dest {
                // The declared size is checked, never trusted: a server claiming 2^62
                // bytes must not fill the disk (nor size any buffer: see `fetch`).
                // A file held in memory is small by then: its write says ENOSPC.
                let m = self.mirror.clone();
                let free = blocking(move || m.free_space()).await?;
                let need = entry.size - progress.contiguous.min(entry.size);
                if need > free {
                    return Err(RemoteError::NoSpace { path: shown_path, size: entry.size, free }.into());
                }
            }
            let conn = self.remote.conn().await;
            let got = match &conn {
                Ok(c) => {
                    let recorder = dest.recorder();
                    let ledger =
                        Ledger { durable: &*recorder, received: &self.stats.received, bandwidth: &self.bandwidth };
                    download(c, &rpath, entry.size, dest.out(), &mut progress, &ledger).await
                }
                Err(e) => Err(DownloadError::Remote(e.clone())),
            };
            let conn = conn?;
            match got {
                Err(DownloadError::Local(e)) => {
                    return Err(MirrorError { op: "write", path: path.to_string(), source: e }.into())
                }
                Err(DownloadError::Remote(e)) if e.is_transport() => {
                    self.remote.invalidate(&conn).await;
                    // `sftp.timeout` bounds a transfer: one reconnect after a stall, not more.
                    if matches!(e, RemoteError::Timeout { .. }) {
                        timeouts += 1;
                        if timeouts > 1 {
                            return Err(e.into());
                        }
                    }
                    tracing::debug!(path = %path, bytes = progress.contiguous, error = %e, "download interrupted; resuming");
                    last_err = Some(e);
                    continue;
                }
                Err(DownloadError::Remote(e)) => return Err(e.into()),
                Ok(d) => {
                    // The remote is the truth *after* the copy too: if it changed while we
                    // read, this copy may be a mix; start again from what it is now.
                    match d.after {
                        Some(n) if d.complete && d.bytes == entry.size && n == entry => {
                            let action = crate::hooks::file_action(replaces_file);
                            let armed =
                                self.arm(HookKind::OnFile, path, action, Some((entry.size, entry.mtime))).await?;
                            let (m, p, mtime) = (self.mirror.clone(), path.clone(), entry.mtime);
                            let committed = blocking(move || match dest {
                                Dest::Memory(data) => m.commit_bytes(&data, &p, mtime),
                                Dest::Staged(staged) => m.commit(staged, &p, mtime),
                            });
                            if let Err(e) = committed.await {
                                self.disarm(armed).await;
                                return Err(e);
                            }
                            self.fire(armed).await;
                            self.stats.files.fetch_add(1, Ordering::Relaxed);
                            self.stats.bytes.fetch_add(d.bytes, Ordering::Relaxed);
                            tracing::info!(
                                path = %path,
                                action = "download",
                                bytes = d.bytes,
                                ms = started.elapsed().as_millis() as u64,
                                "downloaded {}",
                                crate::human::human_bytes(d.bytes)
                            );
                            return Ok(Action::Downloaded(d.bytes));
                        }
                        Some(n) if n.kind == RemoteKind::File => {
                            tracing::debug!(path = %path, "remote file changed during download; again");
                            entry = n;
                            drop(dest);
                            (dest, _) = self.destination(path, entry).await?;
                            progress = Progress::default();
                            last_err = Some(RemoteError::Unstable { path: shown_path.clone() });
                        }
                        // It became a directory or vanished: apply that instead.
                        other => return Box::pin(self.apply_known(path, other)).await,
                    }
                }
            }
        }
        Err(last_err.unwrap_or(RemoteError::Unstable { path: shown_path }).into())
    }
}
