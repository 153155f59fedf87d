//! `reconcile`: compare the whole remote tree with the mirror and repair every
//! difference through the same operations events use (SPEC §2, §4).
//!
//! 1. **Walk and plan**, directory by directory: list the remote directory
//!    (streamed READDIR batches, several directories at once over the pooled
//!    connections) and the local one, compare by type, size and mtime, and
//!    keep only the *differences*. Memory is bounded by the plan (about 150
//!    bytes per change) plus the directories being compared, never the whole
//!    tree: 1,000,000 unchanged entries cost nothing once their directory is done.
//! 2. **Delete guard**: if the plan would remove more than `max_delete_ratio`
//!    of the local entries, refuse before changing anything (a misconfigured
//!    root or an empty listing must not wipe a mirror).
//! 3. **Execute** with `mirror.concurrency` operations at once, each under the
//!    path lock shared with the event workers; a deletion is re-confirmed
//!    with the remote at the moment it happens, and a download re-checks the
//!    file after the copy. Failures are retried a few times, then counted.

use super::apply::{Action, ApplyError, Syncer};
use super::diff::diff_dir;
pub use super::diff::{Op, Plan};
use crate::event::RemotePath;
use crate::human::human_bytes;
use crate::remote::{list_dir, RemoteError};
use futures::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Directories listed at once per SSH connection.
const LISTINGS_PER_CONN: usize = 4;
/// Tries per planned operation before it counts as failed.
const OP_ATTEMPTS: u32 = 3;

/// Command-line switches.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Plan only; change nothing.
    pub dry_run: bool,
    /// Never delete (on top of `mirror.delete`).
    pub no_delete: bool,
    /// Proceed even if the delete guard trips.
    pub force: bool,
}

/// What a pass did (printed, or as JSON with `--json`).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summary {
    /// Files downloaded.
    pub downloaded: u64,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Directories created.
    pub dirs_created: u64,
    /// Local entries removed (a directory counts with its contents).
    pub deleted: u64,
    /// Entries that already matched.
    pub unchanged: u64,
    /// Operations that failed after retries.
    pub failed: u64,
    /// Wall time.
    pub seconds: f64,
    /// Whether this was `--dry-run` (the counts are then what *would* happen).
    pub dry_run: bool,
    /// Paths that failed, with the error (at most 100).
    pub errors: Vec<String>,
}

impl std::fmt::Display for Summary {
    /// The one-line summary `reconcile` and `demo` print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plural = |n: u64, one: &'static str, many: &'static str| if n == 1 { one } else { many };
        write!(
            f,
            "{}{} {} downloaded ({}), {} {} created, {} {} deleted, {} unchanged, {} failed, {:.2} s",
            if self.dry_run { "dry run, nothing changed: would have " } else { "" },
            self.downloaded,
            plural(self.downloaded, "file", "files"),
            human_bytes(self.bytes),
            self.dirs_created,
            plural(self.dirs_created, "directory", "directories"),
            self.deleted,
            plural(self.deleted, "entry", "entries"),
            self.unchanged,
            self.failed,
            self.seconds
        )
    }
}

/// Why a pass did not run or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The remote could not be listed (unreachable, refused, root missing).
    #[error("listing the remote: {0}")]
    Remote(#[from] RemoteError),
    /// The mirror could not be listed.
    #[error("listing the mirror: {0}")]
    Local(#[source] crate::mirror::MirrorError),
    /// The delete guard tripped.
    #[error(
        "refusing to delete {would_delete} of {local_entries} local entries ({pct:.0}% > mirror.max_delete_ratio {ratio_pct:.0}%): \
         is sftp.remote_root right? Nothing was changed; run with --force to delete anyway, or --no-delete to skip deletions",
        pct = 100.0 * *would_delete as f64 / (*local_entries).max(1) as f64,
        ratio_pct = 100.0 * ratio
    )]
    DeleteGuard {
        /// Entries the plan would remove.
        would_delete: u64,
        /// Local entries.
        local_entries: u64,
        /// The configured ratio.
        ratio: f64,
    },
}

/// When the last reconcile pass ended and how.
#[derive(Debug, Clone)]
pub struct LastReconcile {
    /// End time, epoch milliseconds.
    pub at_ms: i64,
    /// Whether it converged with no failure.
    pub ok: bool,
    /// The summary line or the error.
    pub result: String,
}

/// Progress callbacks (a bar on a terminal, nothing otherwise).
pub trait Progress: Send + Sync {
    /// Listing progress: remote entries seen so far.
    fn listed(&self, _entries: u64) {}
    /// Execution starts with this many operations, downloading this many bytes.
    fn executing(&self, _ops: u64, _bytes: u64) {}
    /// One operation finished.
    fn done_one(&self, _op: &Op, _ok: bool) {}
}

/// No progress output.
pub struct Quiet;
impl Progress for Quiet {}

/// Counts a local subtree (for a deletion), without following symlinks.
/// Walks both trees and returns the plan.
///
/// # Errors
/// When the remote root cannot be listed, or the mirror cannot be read.
pub async fn plan(syncer: &Arc<Syncer>, opts: Options, progress: &dyn Progress) -> Result<Plan, ReconcileError> {
    let deletes = syncer.delete && !opts.no_delete;
    let parallel = syncer.remote.settings().connections.max(1) * LISTINGS_PER_CONN;
    let mut total = Plan::default();
    let mut todo: Vec<Option<RemotePath>> = vec![None];
    let mut running = FuturesUnordered::new();
    loop {
        while running.len() < parallel {
            let Some(dir) = todo.pop() else { break };
            let s = syncer.clone();
            running.push(async move {
                let rel = dir.as_ref().map_or(&[][..], |d| d.as_bytes()).to_owned();
                let rpath = s.remote.path_of(&rel);
                let remote = s
                    .remote
                    .with_retry(|c| {
                        let rpath = rpath.clone();
                        async move { list_dir(&c, &rpath).await }
                    })
                    .await;
                let remote = match remote {
                    Ok(r) => r,
                    // A subdirectory that vanished since its parent was listed: nothing to do.
                    Err(e) if e.is_not_found() && dir.is_some() => Vec::new(),
                    Err(e) => return Err(ReconcileError::Remote(e)),
                };
                let d = dir.clone();
                tokio::task::spawn_blocking(move || {
                    let local =
                        if s.mirror.stat_dir(d.as_ref())? { s.mirror.list_dir(d.as_ref())? } else { Vec::new() };
                    diff_dir(d.as_ref(), remote, local, &s.filter, deletes, &mut |p| s.mirror.count_entries(p))
                })
                .await
                .map_err(|e| {
                    // The listing task panicked: said as what it was doing.
                    let source = std::io::Error::other(format!("the listing task failed: {e}"));
                    ReconcileError::Local(crate::mirror::MirrorError { op: "list", path: ".".into(), source })
                })?
                .map_err(ReconcileError::Local)
            });
        }
        let Some(r) = running.next().await else { break };
        let (part, descend) = r?;
        total.merge(part);
        todo.extend(descend.into_iter().map(Some));
        progress.listed(total.remote_entries);
    }
    Ok(total)
}

/// One pass: plan, guard, execute (or only plan with `dry_run`). `on_plan` is
/// called with the plan before anything changes (printing, logging).
///
/// # Errors
/// [`ReconcileError`] when the pass could not run; failures of single
/// operations are counted in the [`Summary`] instead.
pub async fn run(
    syncer: &Arc<Syncer>,
    opts: Options,
    max_delete_ratio: f64,
    concurrency: usize,
    progress: &dyn Progress,
    on_plan: &mut (dyn FnMut(&Plan) + Send),
) -> Result<Summary, ReconcileError> {
    let started = Instant::now();
    let plan = plan(syncer, opts, progress).await?;
    on_plan(&plan);
    let would_delete = plan.deletions();
    if would_delete > 0 && !opts.force && would_delete as f64 > max_delete_ratio * plan.local_entries as f64 {
        return Err(ReconcileError::DeleteGuard {
            would_delete,
            local_entries: plan.local_entries,
            ratio: max_delete_ratio,
        });
    }
    let mut summary = Summary { unchanged: plan.unchanged, dry_run: opts.dry_run, ..Default::default() };
    if opts.dry_run {
        for op in &plan.ops {
            match op {
                Op::Download { entry, .. } => {
                    summary.downloaded += 1;
                    summary.bytes += entry.size;
                }
                Op::MakeDir { .. } => summary.dirs_created += 1,
                Op::Delete { .. } => {}
            }
            summary.deleted += op.removes();
        }
        summary.seconds = started.elapsed().as_secs_f64();
        return Ok(summary);
    }

    let bytes = plan.ops.iter().map(|op| if let Op::Download { entry, .. } = op { entry.size } else { 0 }).sum();
    syncer.prune_trash().await;
    progress.executing(plan.ops.len() as u64, bytes);
    let mut ops = plan.ops.into_iter();
    let mut running = FuturesUnordered::new();
    loop {
        while running.len() < concurrency.max(1) {
            let Some(op) = ops.next() else { break };
            let s = syncer.clone();
            // Changes are logged with `event=reconcile` (events log their id).
            let span = tracing::info_span!("apply", event = "reconcile");
            running.push(tracing::Instrument::instrument(
                async move {
                    let r = execute(&s, &op).await;
                    (op, r)
                },
                span,
            ));
        }
        let Some((op, r)) = running.next().await else { break };
        progress.done_one(&op, r.is_ok());
        match r {
            Ok(Action::Downloaded(n)) => {
                summary.downloaded += 1;
                summary.bytes += n;
                summary.deleted += op.removes();
            }
            Ok(Action::MadeDir) => {
                summary.dirs_created += 1;
                summary.deleted += op.removes();
            }
            Ok(Action::Removed) => summary.deleted += if let Op::Delete { entries, .. } = op { entries } else { 1 },
            Ok(Action::Unchanged | Action::KeptNoDelete | Action::Skipped(_)) => summary.unchanged += 1,
            Err(e) => {
                summary.failed += 1;
                tracing::warn!(path = %op.path(), "reconcile: {e}");
                if summary.errors.len() < 100 {
                    summary.errors.push(format!("{}: {e}", op.path()));
                }
            }
        }
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Runs one planned operation under its path lock, retrying transient failures.
async fn execute(s: &Syncer, op: &Op) -> Result<Action, ApplyError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let r = {
            let _g = s.locks.lock(op.path()).await;
            s.execute(op).await
        };
        match r {
            Err(e) if attempt < OP_ATTEMPTS && !matches!(&e, ApplyError::Remote(r) if r.is_access_error()) => {
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            r => {
                s.count("reconcile", &r);
                return r;
            }
        }
    }
}
