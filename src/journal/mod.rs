//! The durable event journal (SPEC §6): an SQLite database in WAL mode that
//! records every accepted event before its `204`, and drives the workers.
//!
//! This file is the typed API; `engine.rs` runs SQLite: one dedicated writer
//! thread that callers send closures to, and a read-only connection that
//! queries (`events`, `/metrics`) use, never behind the writer. The writer
//! drains every request waiting at that moment and runs them in **one**
//! transaction (group commit). Each request runs in its
//! own savepoint, so one failing request never leaves half its writes behind.
//!
//! Durability is pipelined: SQLite commits without syncing (`synchronous =
//! NORMAL`, the WAL stays consistent) and a second thread, `journal-sync`,
//! fdatasyncs the WAL file and only then answers the callers of every commit
//! made before that sync began. The SQL of the next batch runs while the disk
//! flushes the previous one, instead of after it; no caller of a promise (an
//! event accepted before its `204`, a hook run armed before its change) hears
//! "done" before its rows are on disk. The workers' own bookkeeping (claims,
//! outcomes) hears it at commit: a crash can only turn such a row back into
//! `pending`, and it is applied again. (In WAL mode SQLite itself syncs the WAL before
//! each checkpoint and the database after it, so the frames a checkpoint moves
//! out of the WAL stay durable too.)
//!
//! Row life cycle: `pending` → (claimed) `running` → `done`, or back to `pending`
//! with a backoff after a failed apply, or `failed` after [`MAX_ATTEMPTS`].
//! Non-file topics are stored as `ignored`. `running` rows found when the
//! daemon opens the journal were interrupted by its predecessor and become
//! `pending` again; `events`, `retry` and `check` leave them alone.

mod engine;
mod hooks;

use engine::{Durability, Engine, Faults};

pub use hooks::{HookKind, HookRun, NewHookRun, HOOK_ID_PREFIX};

use rusqlite::{params, Connection};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Default applies tried before a row is marked `failed` (`journal.max_attempts`;
/// the periodic reconcile and `retry` still cover it). With the backoff below
/// this spans about 1.5 hours.
pub const MAX_ATTEMPTS: u32 = 20;
/// First retry delay; doubles per attempt.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// A journal failure. Intake answers `503` on any of these.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// SQLite refused (disk full, I/O error, corruption …).
    #[error("journal database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The journal file or its folder could not be created.
    #[error("cannot create journal folder {path}: {source}")]
    Io {
        /// The folder.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The group transaction could not be committed. Text, not a source: one
    /// SQLite error answers every request of the batch, on other threads.
    #[error("journal commit failed: {0}")]
    Commit(String),
    /// The journal thread has stopped.
    #[error("journal is closed")]
    Closed,
    /// More requests are queued than the journal takes (a stalled disk):
    /// answered at once instead of waiting behind them.
    #[error("journal is busy: {QUEUE_BOUND} requests are waiting for the disk")]
    Busy,
}

/// Requests queued for the journal thread at most. Intake is refused (`503`,
/// which SFTP To Go retries) past it; other callers wait for room.
pub const QUEUE_BOUND: usize = 4096;

/// Where a row is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting to be applied (possibly after a backoff).
    Pending,
    /// Being applied now.
    Running,
    /// Applied.
    Done,
    /// Gave up after [`MAX_ATTEMPTS`]; `retry` or a redelivery queues it again.
    Failed,
    /// Recorded only (ping, other topics, filtered paths).
    Ignored,
}

impl Status {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Done => "done",
            Status::Failed => "failed",
            Status::Ignored => "ignored",
        }
    }

    /// Parses a stored or user-given name.
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "pending" => Status::Pending,
            "running" => Status::Running,
            "done" => Status::Done,
            "failed" => Status::Failed,
            "ignored" => Status::Ignored,
            _ => return None,
        })
    }
}

/// An event to record.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The event `Id` (dedup key).
    pub event_id: String,
    /// The topic's wire name.
    pub topic: String,
    /// The decoded path in wire form (trailing `/` for directories), for file events.
    pub path: Option<String>,
    /// Whether the workers must act on it (`false` → stored as `ignored`).
    pub actionable: bool,
    /// The raw body as received (for `events` and audits).
    pub body: Vec<u8>,
}

/// What [`Journal::record`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// New row, queued for the workers.
    Queued,
    /// New row, stored as `ignored`.
    Ignored,
    /// The id was known and not failed: nothing changed.
    Duplicate,
    /// The id was known as `failed`: queued again.
    Requeued,
}

/// A claimed row the workers must apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Row number: the order of receipt.
    pub seq: i64,
    /// The event `Id`.
    pub event_id: String,
    /// The path in wire form.
    pub path: String,
    /// Applies tried so far.
    pub attempts: u32,
    /// When the event was received (ms since the epoch).
    pub received_ms: i64,
    /// Whether it is a `file.created` (a local copy made before it is stale).
    pub created: bool,
    /// Re-queued by `retry` after the event delete guard held it: apply it anyway.
    pub forced: bool,
}

/// One row as `events` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EventRow {
    /// Row number.
    pub seq: i64,
    /// The event `Id`.
    pub id: String,
    /// Topic.
    pub topic: String,
    /// Path in wire form, if any.
    pub path: Option<String>,
    /// When it was received, epoch milliseconds.
    pub received_ms: i64,
    /// Status.
    pub status: Status,
    /// Applies tried.
    pub attempts: u32,
    /// Last apply error, if any.
    pub last_error: Option<String>,
    /// Epoch milliseconds of the next try, for pending rows.
    pub next_attempt_ms: Option<i64>,
    /// What applying it did (`done` rows): "downloaded 9 B", "removed" …
    pub outcome: Option<String>,
}

/// Handle to the journal thread. Cloning is cheap; the thread stops when the
/// last handle is dropped.
#[derive(Clone)]
pub struct Journal {
    engine: Engine,
    max_attempts: u32,
}

/// Puts `running` rows of `table` (events or hooks) back to `pending`,
/// counting no attempt.
fn release_rows(c: &Connection, table: &'static str, seqs: &[i64]) -> rusqlite::Result<()> {
    let mut st =
        c.prepare_cached(&format!("UPDATE {table} SET status = 'pending' WHERE seq = ?1 AND status = 'running'"))?;
    for s in seqs {
        st.execute(params![s])?;
    }
    Ok(())
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The delay before retry number `attempts` (1-based): exponential, capped,
/// with "equal jitter" so a burst of failures does not retry in lockstep.
pub fn backoff(attempts: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << attempts.saturating_sub(1).min(16));
    let d = exp.min(BACKOFF_MAX);
    d / 2 + d.mul_f64(fastrand::f64() / 2.0)
}

impl Journal {
    /// Opens (creating if needed) the journal at `path` for a command that looks
    /// at it or queues rows (`events`, `retry`, `check`) and starts the journal
    /// thread. Rows are left as they are: a `running` row may be one a live
    /// daemon is applying right now.
    ///
    /// # Errors
    /// When the folder cannot be created or SQLite cannot open or migrate the file.
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        Self::open_inner(path, MAX_ATTEMPTS, false)
    }

    /// Opens the journal for the daemon, with the number of applies tried before
    /// a row is `failed`: rows left `running` were interrupted by the end of the
    /// previous daemon and are resumed (`pending` again).
    ///
    /// # Errors
    /// As [`Journal::open`].
    pub fn open_with(path: &Path, max_attempts: u32) -> Result<Journal, JournalError> {
        Self::open_inner(path, max_attempts, true)
    }

    fn open_inner(path: &Path, max_attempts: u32, resume: bool) -> Result<Journal, JournalError> {
        Self::open_inner_with(path, max_attempts, resume, Faults::default())
    }

    fn open_inner_with(path: &Path, max_attempts: u32, resume: bool, faults: Faults) -> Result<Journal, JournalError> {
        let engine = Engine::start(path, resume, faults)?;
        Ok(Journal { engine, max_attempts: max_attempts.max(1) })
    }

    /// `f` in the next group transaction; returns once it is durable
    /// (waiting for room in a full queue).
    async fn call<T, F>(&self, f: F) -> Result<T, JournalError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.engine.submit(true, Durability::Synced, f).await
    }

    /// [`Journal::call`] for the workers' bookkeeping (claims, outcomes):
    /// returns once committed, without waiting for the fsync. A crash can
    /// only undo it to a row that is `pending` again and is applied again
    /// (applies are idempotent), so the workers never wait on the disk.
    async fn call_committed<T, F>(&self, f: F) -> Result<T, JournalError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.engine.submit(true, Durability::Committed, f).await
    }

    /// A query on the read-only connection: never behind the writer's
    /// transaction or its fsync (WAL readers see the last commit).
    async fn read<T, F>(&self, f: F) -> Result<T, JournalError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.engine.read(f).await
    }

    /// Records an accepted event (dedup by id). Returns once it is durable.
    ///
    /// # Errors
    /// [`JournalError`] when it could not be committed (answer `503`).
    pub async fn record(&self, ev: NewEvent) -> Result<Recorded, JournalError> {
        // Intake must not wait for room: a full queue is a `503` now.
        self.engine
            .submit(false, Durability::Synced, move |c| {
                let now = now_ms();
                // Cached statements: parsing the SQL text was the journal thread's
                // largest cost at intake rates (perf). A new id, the common case,
                // costs the one INSERT; a known one is looked at after.
                let status = if ev.actionable { Status::Pending } else { Status::Ignored };
                let inserted = c
                    .prepare_cached(
                        "INSERT INTO events (event_id, topic, path, received_ms, status, updated_ms, body)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?4, ?6) ON CONFLICT (event_id) DO NOTHING",
                    )?
                    .execute(params![ev.event_id, ev.topic, ev.path, now, status.as_str(), ev.body])?;
                if inserted == 1 {
                    return Ok(if ev.actionable { Recorded::Queued } else { Recorded::Ignored });
                }
                let known: String = c
                    .prepare_cached("SELECT status FROM events WHERE event_id = ?1")?
                    .query_row(params![ev.event_id], |r| r.get(0))?;
                if known == "failed" {
                    c.prepare_cached(
                        "UPDATE events SET status = 'pending', attempts = 0, next_at_ms = 0, updated_ms = ?2
                         WHERE event_id = ?1",
                    )?
                    .execute(params![ev.event_id, now])?;
                    Ok(Recorded::Requeued)
                } else {
                    Ok(Recorded::Duplicate)
                }
            })
            .await
    }

    /// Marks up to `limit` due `pending` rows `running`, oldest first, and returns them.
    ///
    /// # Errors
    /// On a database error.
    pub async fn claim(&self, limit: usize) -> Result<Vec<Job>, JournalError> {
        self.call_committed(move |c| {
            let now = now_ms();
            let jobs = {
                let mut st = c.prepare_cached(
                    "SELECT seq, event_id, path, attempts, received_ms, topic, forced FROM events
                     WHERE status = 'pending' AND next_at_ms <= ?1 ORDER BY seq LIMIT ?2",
                )?;
                let rows = st.query_map(params![now, limit as i64], |r| {
                    Ok(Job {
                        seq: r.get(0)?,
                        event_id: r.get(1)?,
                        path: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                        attempts: r.get(3)?,
                        received_ms: r.get(4)?,
                        created: r.get::<_, String>(5)? == "file.created",
                        forced: r.get::<_, i64>(6)? != 0,
                    })
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()?
            };
            let mut up = c.prepare_cached("UPDATE events SET status = 'running', updated_ms = ?2 WHERE seq = ?1")?;
            for j in &jobs {
                up.execute(params![j.seq, now])?;
            }
            Ok(jobs)
        })
        .await
    }

    /// Marks rows `done`, with what was done (`events` shows it).
    ///
    /// # Errors
    /// On a database error.
    pub async fn complete(&self, seqs: Vec<i64>, outcome: String) -> Result<(), JournalError> {
        self.complete_all(vec![(seqs, outcome)]).await
    }

    /// [`Journal::complete`] for several batches in one request (a burst's
    /// completions: one trip to the journal thread instead of one each).
    ///
    /// # Errors
    /// On a database error.
    pub async fn complete_all(&self, done: Vec<(Vec<i64>, String)>) -> Result<(), JournalError> {
        self.call_committed(move |c| {
            let now = now_ms();
            let mut st = c.prepare_cached(
                "UPDATE events SET status = 'done', attempts = attempts + 1, last_error = NULL, updated_ms = ?2,
                 outcome = ?3 WHERE seq = ?1",
            )?;
            for (seqs, outcome) in done {
                for s in seqs {
                    st.execute(params![s, now, outcome])?;
                }
            }
            Ok(())
        })
        .await
    }

    /// Records a failed apply: back to `pending` after a backoff, or `failed`
    /// once [`MAX_ATTEMPTS`] is reached.
    ///
    /// # Errors
    /// On a database error.
    pub async fn fail(&self, seqs: Vec<i64>, error: String) -> Result<(), JournalError> {
        let max_attempts = self.max_attempts;
        self.call_committed(move |c| {
            let now = now_ms();
            let mut get = c.prepare_cached("SELECT attempts FROM events WHERE seq = ?1")?;
            let mut st = c.prepare_cached(
                "UPDATE events SET status = ?2, attempts = ?3, next_at_ms = ?4, last_error = ?5, updated_ms = ?6
                 WHERE seq = ?1",
            )?;
            for s in seqs {
                let attempts: u32 = get.query_row(params![s], |r| r.get::<_, u32>(0))? + 1;
                let status = if attempts >= max_attempts { Status::Failed } else { Status::Pending };
                let next = now + backoff(attempts).as_millis() as i64;
                st.execute(params![s, status.as_str(), attempts, next, error, now])?;
            }
            Ok(())
        })
        .await
    }

    /// Marks rows `failed` at once, with `error` (no retry: the event delete
    /// guard held them until a person decides, with `retry`).
    ///
    /// # Errors
    /// On a database error.
    pub async fn hold(&self, seqs: Vec<i64>, error: String) -> Result<(), JournalError> {
        self.call(move |c| {
            let now = now_ms();
            let mut st = c.prepare_cached(
                "UPDATE events SET status = 'failed', attempts = attempts + 1, last_error = ?2, updated_ms = ?3
                 WHERE seq = ?1",
            )?;
            for s in seqs {
                st.execute(params![s, error, now])?;
            }
            Ok(())
        })
        .await
    }

    /// Puts claimed rows back to `pending` without counting an attempt (shutdown).
    ///
    /// # Errors
    /// On a database error.
    pub async fn release(&self, seqs: Vec<i64>) -> Result<(), JournalError> {
        self.call(move |c| release_rows(c, "events", &seqs)).await
    }

    /// The epoch milliseconds at which the next `pending` row becomes due.
    ///
    /// # Errors
    /// On a database error.
    pub async fn next_due_ms(&self) -> Result<Option<i64>, JournalError> {
        self.read(|c| {
            c.prepare_cached("SELECT MIN(next_at_ms) FROM events WHERE status = 'pending'")?.query_row([], |r| r.get(0))
        })
        .await
    }

    /// Rows, newest first, optionally of one status (read-only: never waits
    /// for the writer).
    ///
    /// # Errors
    /// On a database error.
    pub async fn list(&self, status: Option<Status>, limit: usize) -> Result<Vec<EventRow>, JournalError> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT seq, event_id, topic, path, received_ms, status, attempts, last_error, next_at_ms, outcome
                 FROM events WHERE (?1 IS NULL OR status = ?1) ORDER BY seq DESC LIMIT ?2",
            )?;
            let rows = st.query_map(params![status.map(Status::as_str), limit as i64], |r| {
                let status = Status::parse(&r.get::<_, String>(5)?).unwrap_or(Status::Failed);
                Ok(EventRow {
                    seq: r.get(0)?,
                    id: r.get(1)?,
                    topic: r.get(2)?,
                    path: r.get(3)?,
                    received_ms: r.get(4)?,
                    status,
                    attempts: r.get(6)?,
                    last_error: r.get(7)?,
                    next_attempt_ms: (status == Status::Pending).then(|| r.get(8)).transpose()?,
                    outcome: r.get(9)?,
                })
            })?;
            let mut all = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            // Hook runs are listed with the events, newest first by when they were made.
            all.extend(hooks::list(c, status, limit)?);
            all.sort_by(|a, b| b.received_ms.cmp(&a.received_ms).then(b.seq.cmp(&a.seq)));
            all.truncate(limit);
            Ok(all)
        })
        .await
    }

    /// Queues `failed` rows again (events and hook runs): all of them, or those
    /// with the given ids (`hook-N` for a hook run).
    /// Returns how many were queued.
    ///
    /// # Errors
    /// On a database error.
    pub async fn retry(&self, ids: Option<Vec<String>>) -> Result<usize, JournalError> {
        self.call(move |c| {
            let now = now_ms();
            // A retried row is applied even past the event delete guard: a person asked.
            let sql = "UPDATE events SET status = 'pending', attempts = 0, next_at_ms = 0, updated_ms = ?2, forced = 1
                       WHERE status = 'failed' AND (?1 IS NULL OR event_id = ?1)";
            match ids {
                None => Ok(c.execute(sql, params![None::<String>, now])? + hooks::retry(c, None)?),
                Some(ids) => {
                    let mut n = 0;
                    for id in ids {
                        n += if id.starts_with(HOOK_ID_PREFIX) {
                            hooks::retry(c, Some(&id))?
                        } else {
                            c.execute(sql, params![Some(id), now])?
                        };
                    }
                    Ok(n)
                }
            }
        })
        .await
    }

    /// Deletes `done` and `ignored` rows last updated before `older_than_ms`.
    ///
    /// # Errors
    /// On a database error.
    pub async fn prune(&self, older_than_ms: i64) -> Result<usize, JournalError> {
        self.call(move |c| {
            let hooks =
                c.execute("DELETE FROM hooks WHERE status = 'done' AND updated_ms < ?1", params![older_than_ms])?;
            Ok(hooks
                + c.execute(
                    "DELETE FROM events WHERE status IN ('done', 'ignored') AND updated_ms < ?1",
                    params![older_than_ms],
                )?)
        })
        .await
    }

    /// Proves the journal can still commit a write (for `/healthz`).
    ///
    /// # Errors
    /// On a database error (disk full, read-only …).
    pub async fn probe(&self) -> Result<(), JournalError> {
        self.call(|c| {
            c.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL)", [])?;
            c.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('health_probe', ?1)", params![now_ms()])?;
            Ok(())
        })
        .await
    }

    /// How many rows are in each status.
    ///
    /// # Errors
    /// On a database error.
    pub async fn counts(&self) -> Result<Vec<(Status, u64)>, JournalError> {
        self.read(|c| {
            let mut st = c.prepare_cached("SELECT status, COUNT(*) FROM events GROUP BY status")?;
            let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?;
            let mut out = Vec::new();
            for row in rows {
                let (s, n) = row?;
                if let Some(s) = Status::parse(&s) {
                    out.push((s, n));
                }
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str, path: &str) -> NewEvent {
        NewEvent {
            event_id: id.into(),
            topic: "file.created".into(),
            path: Some(path.into()),
            actionable: true,
            body: b"{}".to_vec(),
        }
    }

    #[tokio::test]
    async fn dedup_claim_complete_and_resume() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("j/journal.db");
        let j = Journal::open(&db).unwrap();
        assert_eq!(j.record(ev("a", "x")).await.unwrap(), Recorded::Queued);
        assert_eq!(j.record(ev("a", "x")).await.unwrap(), Recorded::Duplicate);
        assert_eq!(j.record(ev("b", "y")).await.unwrap(), Recorded::Queued);
        let mut ping = ev("p", "");
        ping.actionable = false;
        assert_eq!(j.record(ping).await.unwrap(), Recorded::Ignored);

        let jobs = j.claim(10).await.unwrap();
        assert_eq!(jobs.iter().map(|j| j.event_id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert!(j.claim(10).await.unwrap().is_empty(), "running rows are not claimed twice");
        j.complete(vec![jobs[0].seq], "unchanged".into()).await.unwrap();
        // A duplicate of a done event is not queued again.
        assert_eq!(j.record(ev("a", "x")).await.unwrap(), Recorded::Duplicate);
        drop(j);

        // Looking at the journal (`events`) leaves the running row alone …
        let look = Journal::open(&db).unwrap();
        assert_eq!(look.list(Some(Status::Running), 10).await.unwrap().len(), 1);
        drop(look);
        // … and "b", running when we "crashed", is resumed by the next daemon.
        let j = Journal::open_with(&db, MAX_ATTEMPTS).unwrap();
        let jobs = j.claim(10).await.unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].event_id, "b");
    }

    #[tokio::test]
    async fn failures_back_off_then_fail_then_requeue_on_redelivery() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("journal.db")).unwrap();
        j.record(ev("a", "x")).await.unwrap();
        let seq = j.claim(1).await.unwrap()[0].seq;
        j.fail(vec![seq], "disk full".into()).await.unwrap();
        assert!(j.claim(1).await.unwrap().is_empty(), "backoff delays the retry");
        let due = j.next_due_ms().await.unwrap().unwrap();
        assert!(due > now_ms() && due <= now_ms() + 1000);
        let row = &j.list(Some(Status::Pending), 10).await.unwrap()[0];
        assert_eq!((row.attempts, row.last_error.as_deref()), (1, Some("disk full")));

        for _ in 1..MAX_ATTEMPTS {
            j.fail(vec![seq], "still".into()).await.unwrap();
        }
        assert_eq!(j.list(Some(Status::Failed), 10).await.unwrap().len(), 1);
        assert_eq!(j.record(ev("a", "x")).await.unwrap(), Recorded::Requeued);
        assert_eq!(j.claim(1).await.unwrap().len(), 1);
        j.fail(vec![seq], "x".into()).await.unwrap();
        for _ in 1..MAX_ATTEMPTS {
            j.fail(vec![seq], "x".into()).await.unwrap();
        }
        assert_eq!(j.retry(None).await.unwrap(), 1);
        assert_eq!(j.claim(1).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn concurrent_records_are_group_committed_and_all_durable() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("journal.db");
        let j = Journal::open(&db).unwrap();
        let tasks: Vec<_> = (0..500)
            .map(|i| {
                let j = j.clone();
                tokio::spawn(async move { j.record(ev(&format!("e{i}"), &format!("f{i}"))).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), Recorded::Queued);
        }
        drop(j);
        let j = Journal::open(&db).unwrap();
        assert_eq!(j.counts().await.unwrap(), vec![(Status::Pending, 500)]);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_intake_at_once_and_loses_nothing_queued() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("journal.db")).unwrap();
        // A stalled disk: the journal thread is stuck inside a transaction.
        let (unstall, stalled) = std::sync::mpsc::channel::<()>();
        let stuck = {
            let j = j.clone();
            tokio::spawn(async move { j.call(move |_| Ok(stalled.recv().ok())).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let queued: Vec<_> = (0..QUEUE_BOUND)
            .map(|i| {
                let j = j.clone();
                tokio::spawn(async move { j.record(ev(&format!("q{i}"), "f")).await })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let over = tokio::time::timeout(std::time::Duration::from_secs(1), j.record(ev("over", "f"))).await;
        assert!(matches!(over, Ok(Err(JournalError::Busy))), "{over:?}");
        unstall.send(()).unwrap();
        stuck.await.unwrap().unwrap();
        for t in queued {
            assert_eq!(t.await.unwrap().unwrap(), Recorded::Queued);
        }
        assert_eq!(j.counts().await.unwrap(), vec![(Status::Pending, QUEUE_BOUND as u64)]);
    }

    #[tokio::test]
    async fn queries_answer_while_the_writer_is_stuck_in_a_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("journal.db")).unwrap();
        assert_eq!(j.record(ev("before", "f")).await.unwrap(), Recorded::Queued);
        let (unstall, stalled) = std::sync::mpsc::channel::<()>();
        let stuck = {
            let j = j.clone();
            tokio::spawn(async move { j.call(move |_| Ok(stalled.recv().ok())).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        // `events` and `/metrics` read the last commit, not behind the stalled writer.
        let rows = tokio::time::timeout(std::time::Duration::from_secs(2), j.list(None, 10)).await;
        assert_eq!(rows.expect("list waited for the writer").unwrap().len(), 1);
        let counts = tokio::time::timeout(std::time::Duration::from_secs(2), j.counts()).await;
        assert_eq!(counts.expect("counts waited for the writer").unwrap(), vec![(Status::Pending, 1)]);
        unstall.send(()).unwrap();
        stuck.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_failed_begin_runs_nothing_so_a_failed_claim_leaves_its_rows_pending() {
        let dir = tempfile::tempdir().unwrap();
        let hooks = Faults::default();
        let fail = hooks.fail_begin.clone();
        let j = Journal::open_inner_with(&dir.path().join("journal.db"), MAX_ATTEMPTS, false, hooks).unwrap();
        j.record(ev("a", "x")).await.unwrap();
        fail.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(j.claim(10).await.is_err(), "the caller hears the failure");
        fail.store(false, std::sync::atomic::Ordering::Relaxed);
        // ... and the row was not marked running behind its back.
        assert_eq!(j.counts().await.unwrap(), vec![(Status::Pending, 1)]);
        assert_eq!(j.claim(10).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn prune_removes_only_old_finished_rows() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("journal.db")).unwrap();
        j.record(ev("a", "x")).await.unwrap();
        j.record(ev("b", "y")).await.unwrap();
        let jobs = j.claim(1).await.unwrap();
        j.complete(vec![jobs[0].seq], "unchanged".into()).await.unwrap();
        assert_eq!(j.prune(now_ms() - 60_000).await.unwrap(), 0);
        assert_eq!(j.prune(now_ms() + 1).await.unwrap(), 1);
        assert_eq!(j.counts().await.unwrap(), vec![(Status::Pending, 1)]);
    }

    #[tokio::test]
    async fn the_journal_runs_in_wal_mode_and_leaves_syncing_to_its_sync_thread() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("journal.db");
        let j = Journal::open(&db).unwrap();
        j.record(ev("e1", "f1")).await.unwrap();
        let modes = j
            .call(|c| {
                let m: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
                let s: i64 = c.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
                Ok((m, s))
            })
            .await
            .unwrap();
        // synchronous = 1 (NORMAL) is only safe because replies wait for the sync thread.
        assert_eq!(modes, ("wal".to_owned(), 1));
        assert!(dir.path().join("journal.db-wal").exists());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) <= Duration::from_secs(1) && backoff(1) >= Duration::from_millis(500));
        assert!(backoff(5) >= Duration::from_secs(8));
        assert!(backoff(60) <= BACKOFF_MAX);
    }
}
