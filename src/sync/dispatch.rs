//! The event workers: claim due rows from the journal, run them with per-path
//! ordering and bounded concurrency, record the outcome.
//!
//! Rows are started in the order received. A row whose path overlaps a row
//! still waiting before it, or one running, waits. Waiting rows for the very
//! same path (up to a row on an overlapping, different path) are applied once:
//! one `stat` of the remote answers all of them, since each was received
//! before that `stat` (SPEC §2).

use super::apply::{Action, Syncer};
use crate::event::RemotePath;
use crate::journal::{now_ms, Job, Journal};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// Rows held in memory at most; more wait in the journal.
const WINDOW: usize = 1024;
/// Longest sleep between journal polls when idle: intake wakes us, but rows
/// queued by another process (`sftp-mirror retry`) are only seen by a poll.
const IDLE_POLL: Duration = Duration::from_secs(5);
/// Longest wait between claims while the journal fails.
const MAX_CLAIM_BACKOFF: Duration = Duration::from_secs(30);
/// First wait after a failed journal claim; doubles up to [`MAX_CLAIM_BACKOFF`].
const CLAIM_BACKOFF: Duration = Duration::from_secs(1);
/// How long shutdown waits for running applies before handing them back.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(20);

struct Done {
    seqs: Vec<i64>,
    /// The error, and whether the event delete guard held it.
    result: Result<Action, (bool, String)>,
}

/// Runs the workers until `shutdown`; `wake` is notified by intake after each
/// queued event. Rows not finished at shutdown stay in the journal for the next start.
pub async fn run(
    journal: Journal,
    syncer: Arc<Syncer>,
    wake: Arc<Notify>,
    concurrency: usize,
    shutdown: CancellationToken,
) {
    let mut queue: VecDeque<(Job, RemotePath)> = VecDeque::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let mut running = 0usize;
    let mut next_due: Option<i64> = None;
    let mut tasks = tokio::task::JoinSet::new();
    // After a failed claim: how long to wait before the next (doubling).
    let mut claim_backoff: Option<Duration> = None;
    loop {
        // A JoinSet keeps every finished task (its whole allocation) until it is
        // joined: reap them, or the daemon grows by a few KiB with every apply.
        while tasks.try_join_next().is_some() {}
        if queue.len() < WINDOW / 2 {
            match journal.claim(WINDOW - queue.len()).await {
                Ok(jobs) => {
                    let asked = WINDOW - queue.len();
                    let got = jobs.len();
                    for job in jobs {
                        match RemotePath::parse(&job.path) {
                            Ok(p) => queue.push_back((job, p)),
                            Err(e) => {
                                // Only validated paths are stored; keep going if one is not.
                                let _ = journal.fail(vec![job.seq], format!("stored path is invalid: {e}")).await;
                            }
                        }
                    }
                    next_due = if got < asked { journal.next_due_ms().await.ok().flatten() } else { None };
                    claim_backoff = None;
                }
                Err(e) => {
                    // Never spin on a broken journal (a failed fsync fails every
                    // request at once): wait, longer each time.
                    let wait = claim_backoff.map_or(CLAIM_BACKOFF, |b| (b * 2).min(MAX_CLAIM_BACKOFF));
                    tracing::error!("journal: cannot claim events (next try in {wait:?}): {e}");
                    claim_backoff = Some(wait);
                }
            }
        }

        // Start what may start, in order.
        let mut waiting: Vec<RemotePath> = Vec::new();
        let mut i = 0;
        while running < concurrency && i < queue.len() {
            let path = &queue[i].1;
            if waiting.iter().any(|w| w.overlaps(path)) {
                waiting.push(path.clone());
                i += 1;
                continue;
            }
            let Some(guard) = syncer.locks.try_lock(path) else {
                waiting.push(path.clone());
                i += 1;
                continue;
            };
            let (job, path) = queue.remove(i).expect("index checked");
            let mut seqs = vec![job.seq];
            // SPEC §2: a copy made before a `file.created` was received may be stale.
            let mut since = job.created.then_some(job.received_ms);
            let mut forced = job.forced;
            // Fold in the later rows for the same path, up to the first row on an
            // overlapping but different path (whose order relative to them matters);
            // rows on unrelated paths in between do not matter.
            let mut j = i;
            while let Some((next, p)) = queue.get(j) {
                if p == &path {
                    seqs.push(next.seq);
                    if next.created {
                        since = since.max(Some(next.received_ms));
                    }
                    forced |= next.forced;
                    queue.remove(j);
                } else if p.overlaps(&path) {
                    break;
                } else {
                    j += 1;
                }
            }
            running += 1;
            let (syncer, tx) = (syncer.clone(), done_tx.clone());
            let span = tracing::info_span!("apply", event = %job.event_id, path = %path);
            tasks.spawn(tracing::Instrument::instrument(
                async move {
                    // A panic (a bug) must not keep its rows `running` and its
                    // slot taken until a restart: it is an error like any other.
                    // The hooks of the changes it makes name this event.
                    let apply =
                        crate::hooks::EVENT_ID.scope(job.event_id.clone(), syncer.apply_event(&path, since, !forced));
                    let result = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(apply))
                        .await
                        .unwrap_or_else(|_| Err(super::apply::ApplyError::Internal("the apply panicked".into())));
                    syncer.count("event", &result);
                    let result = result.map_err(|e| (matches!(e, super::apply::ApplyError::Held(_)), e.to_string()));
                    drop(guard);
                    let _ = tx.send(Done { seqs, result });
                },
                span,
            ));
        }

        // Rows held back by locks are woken by a completion; rows in backoff by their due time.
        let sleep_for = match (claim_backoff, next_due) {
            (Some(wait), _) => wait,
            (None, Some(due)) => Duration::from_millis(due.saturating_sub(now_ms()).max(0) as u64).min(IDLE_POLL),
            (None, None) => IDLE_POLL,
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = wake.notified() => {}
            Some(d) = done_rx.recv() => {
                running -= 1;
                finish(&journal, &syncer, d).await;
                while let Ok(d) = done_rx.try_recv() {
                    running -= 1;
                    finish(&journal, &syncer, d).await;
                }
            }
            _ = tokio::time::sleep(sleep_for) => {}
        }
    }

    // Shutdown: let running applies finish within the deadline; hand the rest back.
    let left: Vec<i64> = queue.iter().map(|(j, _)| j.seq).collect();
    let _ = journal.release(left).await;
    let deadline = tokio::time::sleep(DRAIN_DEADLINE);
    tokio::pin!(deadline);
    while running > 0 {
        tokio::select! {
            Some(d) = done_rx.recv() => { running -= 1; finish(&journal, &syncer, d).await; }
            _ = &mut deadline => {
                tracing::warn!(running, "shutdown deadline reached; unfinished events stay in the journal");
                tasks.abort_all();
                break;
            }
        }
    }
}

async fn finish(journal: &Journal, syncer: &Syncer, d: Done) {
    let r = match d.result {
        Ok(action) => {
            // The change itself was logged where it happened (see `Syncer`).
            tracing::debug!(events = d.seqs.len(), "applied: {action}");
            journal.complete(d.seqs, action.to_string()).await
        }
        Err((true, e)) => {
            syncer.stats.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(error = %e, "event held");
            journal.hold(d.seqs, e).await
        }
        Err((false, e)) => {
            syncer.stats.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(error = %e, "apply failed; will retry");
            journal.fail(d.seqs, e).await
        }
    };
    if let Err(e) = r {
        // The rows stay `running` and are resumed on the next start.
        tracing::error!("journal: cannot record an apply result: {e}");
    }
}
