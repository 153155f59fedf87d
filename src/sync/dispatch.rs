//! The event workers: claim due rows from the journal, start what
//! [`Schedule`] lets start (per-path order, folding), bounded by
//! `mirror.concurrency`, and record each outcome.

use super::apply::{Action, ApplyError, Syncer};
use super::schedule::{Batch, Schedule};
use crate::event::RemotePath;
use crate::journal::{now_ms, Journal};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
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

/// What one batch's apply came to.
struct Done {
    seqs: Vec<i64>,
    result: Result<Action, ApplyError>,
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
    let mut schedule = Schedule::default();
    let mut next_due: Option<i64> = None;
    let mut tasks: tokio::task::JoinSet<Vec<Done>> = tokio::task::JoinSet::new();
    // After a failed claim: how long to wait before the next (doubling).
    let mut claim_backoff: Option<Duration> = None;
    // Whether the journal may hold rows we have not claimed: after intake's
    // wake-up, a full claim, a timer (rows in backoff, `retry` from another
    // process) or a row handed back for a retry. Not after a mere completion:
    // a claim per completion cost a journal round trip in a burst's hot loop.
    let mut may_have_rows = true;
    loop {
        if schedule.len() < WINDOW / 2 && may_have_rows {
            let asked = WINDOW - schedule.len();
            match journal.claim(asked).await {
                Ok(jobs) => {
                    let got = jobs.len();
                    for job in jobs {
                        match RemotePath::parse(&job.path) {
                            Ok(p) => schedule.push(job, p),
                            Err(e) => {
                                // Only validated paths are stored; keep going if one is not.
                                let _ = journal.fail(vec![job.seq], format!("stored path is invalid: {e}")).await;
                            }
                        }
                    }
                    next_due = if got < asked { journal.next_due_ms().await.ok().flatten() } else { None };
                    claim_backoff = None;
                    may_have_rows = got == asked;
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

        // Registered before the locks are tried: a release in between is not missed.
        let released = syncer.locks.released();
        tokio::pin!(released);
        released.as_mut().enable();
        let free = concurrency.saturating_sub(tasks.len());
        for task in schedule.start(free, |p| syncer.locks.try_lock(p)) {
            let syncer = syncer.clone();
            tasks.spawn(async move {
                // Files of one directory (a burst of uploads): one look at the
                // remote for all of them (a lone batch asks nothing here).
                let dir = task.first().map(|(b, _)| b.path.split_parent().0.to_vec()).unwrap_or_default();
                let lookup = &syncer.look_up(&dir, task.len()).await;
                let applies = task.into_iter().map(|(batch, guard)| {
                    let syncer = &syncer;
                    let span = tracing::info_span!("apply", event = %batch.event_id, path = %batch.path);
                    tracing::Instrument::instrument(
                        async move {
                            let Batch { seqs, event_id, path, since, forced } = batch;
                            // The hooks of the changes it makes name this event.
                            let apply = crate::hooks::EVENT_ID
                                .scope(event_id, syncer.apply_event_in(lookup, &path, since, !forced));
                            // A panic (a bug) must not keep its rows `running` and its
                            // slot taken until a restart: it is an error like any other.
                            let result = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(apply))
                                .await
                                .unwrap_or_else(|_| Err(ApplyError::Internal("the apply panicked".into())));
                            syncer.count("event", &result);
                            drop(guard);
                            Done { seqs, result }
                        },
                        span,
                    )
                });
                // A group runs as many at once as the daemon's slots (the
                // transfers themselves are bounded by `mirror.concurrency`).
                futures::StreamExt::collect(futures::StreamExt::buffer_unordered(
                    futures::stream::iter(applies),
                    concurrency,
                ))
                .await
            });
        }

        // Rows held back by a lock wait for its release (a completion here, or
        // a reconcile pass letting go); rows in backoff for their due time.
        let sleep_for = match (claim_backoff, next_due) {
            (Some(wait), _) => wait,
            (None, Some(due)) => Duration::from_millis(due.saturating_sub(now_ms()).max(0) as u64).min(IDLE_POLL),
            (None, None) => IDLE_POLL,
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = wake.notified() => may_have_rows = true,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                let mut ready = vec![done];
                while let Some(done) = tasks.try_join_next() {
                    ready.push(done);
                }
                // Recorded together: one journal request for all of them.
                may_have_rows |= finish(&journal, &syncer, ready.into_iter().filter_map(Result::ok).flatten()).await;
            }
            _ = &mut released, if !schedule.is_empty() => {}
            _ = tokio::time::sleep(sleep_for) => may_have_rows = true,
        }
    }

    // Shutdown: let running applies finish within the deadline; hand the rest back.
    let _ = journal.release(schedule.drain()).await;
    let deadline = tokio::time::sleep(DRAIN_DEADLINE);
    tokio::pin!(deadline);
    while !tasks.is_empty() {
        tokio::select! {
            Some(done) = tasks.join_next() => {
                // An aborted task's rows stay `running` and resume at the next start.
                finish(&journal, &syncer, done.into_iter().flatten()).await;
            }
            _ = &mut deadline => {
                tracing::warn!(running = tasks.len(), "shutdown deadline reached; unfinished events stay in the journal");
                tasks.abort_all();
                break;
            }
        }
    }
}

/// Records the outcomes of finished batches; returns whether rows of one
/// went back to `pending` (a retry is due later: the loop must look at the
/// journal's due times again). (An apply task only ends early when aborted
/// at shutdown: its rows stay `running` and resume at the next start.)
async fn finish(journal: &Journal, syncer: &Syncer, done: impl IntoIterator<Item = Done>) -> bool {
    let mut completed = Vec::new();
    let mut others = Vec::new();
    let mut retried = false;
    for d in done {
        match d.result {
            Ok(action) => {
                // The change itself was logged where it happened (see `Syncer`).
                tracing::debug!(events = d.seqs.len(), "applied: {action}");
                completed.push((d.seqs, action.to_string()));
            }
            Err(e) => {
                syncer.stats.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let ApplyError::Held(_) = e {
                    tracing::warn!(error = %e, "event held");
                    others.push(futures::FutureExt::boxed(journal.hold(d.seqs, e.to_string())));
                } else {
                    tracing::warn!(error = %e, "apply failed; will retry");
                    others.push(futures::FutureExt::boxed(journal.fail(d.seqs, e.to_string())));
                    retried = true;
                }
            }
        }
    }
    if !completed.is_empty() {
        others.push(futures::FutureExt::boxed(journal.complete_all(completed)));
    }
    // Sent together: the journal commits them in one transaction (a burst
    // failing as a whole while the server is down must not cost a round
    // trip each, one after the other).
    for r in futures::future::join_all(others).await {
        if let Err(e) = r {
            // The rows stay `running` and are resumed on the next start.
            tracing::error!("journal: cannot record an apply result: {e}");
        }
    }
    retried
}
