//! The durable event journal (SPEC §6): an SQLite database in WAL mode that
//! records every accepted event before its `204`, and drives the workers.
//!
//! SQLite lives on one dedicated thread; callers hold a cheap [`Journal`] handle
//! and send it closures. The thread drains every request waiting at that moment
//! and runs them in **one** transaction (group commit). Each request runs in its
//! own savepoint, so one failing request never leaves half its writes behind.
//!
//! Durability is pipelined: SQLite commits without syncing (`synchronous =
//! NORMAL`, the WAL stays consistent) and a second thread, `journal-sync`,
//! fdatasyncs the WAL file and only then answers the callers of every commit
//! made before that sync began. The SQL of the next batch runs while the disk
//! flushes the previous one, instead of after it; no caller hears "done"
//! before its rows are on disk. (In WAL mode SQLite itself syncs the WAL before
//! each checkpoint and the database after it, so the frames a checkpoint moves
//! out of the WAL stay durable too.)
//!
//! Row life cycle: `pending` → (claimed) `running` → `done`, or back to `pending`
//! with a backoff after a failed apply, or `failed` after [`MAX_ATTEMPTS`].
//! Non-file topics are stored as `ignored`. `running` rows found when the
//! daemon opens the journal were interrupted by its predecessor and become
//! `pending` again; `events`, `retry` and `check` leave them alone.

mod hooks;

pub use hooks::{HookKind, HookRun, NewHookRun, HOOK_ID_PREFIX};

use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// Default applies tried before a row is marked `failed` (`journal.max_attempts`;
/// the periodic reconcile and `retry` still cover it). With the backoff below
/// this spans about 1.5 hours.
pub const MAX_ATTEMPTS: u32 = 20;
/// First retry delay; doubles per attempt.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Requests committed together at most; bounds the latency of one batch.
const MAX_BATCH: usize = 512;

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
    /// The group transaction could not be committed.
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

type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;
/// A request runs on the journal thread and says whether it succeeded, plus how to answer after commit.
type Request = Box<dyn FnOnce(Option<&Connection>) -> (bool, Reply) + Send>;

/// Handle to the journal thread. Cloning is cheap; the thread stops when the
/// last handle is dropped.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::SyncSender<Request>,
    max_attempts: u32,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT    NOT NULL UNIQUE,
    topic       TEXT    NOT NULL,
    path        TEXT,
    received_ms INTEGER NOT NULL,
    status      TEXT    NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_at_ms  INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    updated_ms  INTEGER NOT NULL,
    body        BLOB    NOT NULL,
    forced      INTEGER NOT NULL DEFAULT 0,
    outcome     TEXT
);
CREATE INDEX IF NOT EXISTS events_due ON events(status, next_at_ms, seq);
";

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
        Self::open_hooked(path, max_attempts, resume, Hooks::default())
    }

    fn open_hooked(path: &Path, max_attempts: u32, resume: bool, hooks: Hooks) -> Result<Journal, JournalError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|source| JournalError::Io { path: dir.display().to_string(), source })?;
        }
        let conn = Connection::open(path)?;
        // WAL: readers never block the writer. NORMAL: commits do not sync; the
        // journal-sync thread does, before any caller is answered (module docs).
        let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        // Without WAL (a file system without shared memory) SQLite syncs each commit itself.
        let wal = mode.eq_ignore_ascii_case("wal").then(|| PathBuf::from(format!("{}-wal", conn.path().unwrap_or(""))));
        conn.pragma_update(None, "synchronous", if wal.is_some() { "NORMAL" } else { "FULL" })?;
        // A checkpoint runs inside a commit and stalls every request behind it;
        // one per 64 MiB of WAL instead of SQLite's 4 MiB writes hot pages once
        // instead of sixteen times and took the intake p99 from 14 to 11 ms (loadgen A/B).
        // After a checkpoint the WAL is cut back to 16 MiB.
        conn.pragma_update(None, "wal_autocheckpoint", 16384)?;
        conn.pragma_update(None, "journal_size_limit", 16i64 << 20)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        // Room for every statement the daemon uses, so none is parsed twice.
        conn.set_prepared_statement_cache_capacity(64);
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(hooks::SCHEMA)?;
        // Journals made by earlier versions lack the newer columns.
        for (column, decl) in [("forced", "INTEGER NOT NULL DEFAULT 0"), ("outcome", "TEXT")] {
            let has: bool =
                conn.prepare("SELECT 1 FROM pragma_table_info('events') WHERE name = ?1")?.exists([column])?;
            if !has {
                conn.execute_batch(&format!("ALTER TABLE events ADD COLUMN {column} {decl}"))?;
            }
        }
        if resume {
            conn.execute(
                "UPDATE events SET status = 'pending', updated_ms = ?1 WHERE status = 'running'",
                params![now_ms()],
            )?;
            // A hook cut short by the end of the previous daemon runs again (at least once).
            conn.execute(
                "UPDATE hooks SET status = 'pending', updated_ms = ?1 WHERE status = 'running'",
                params![now_ms()],
            )?;
        }
        let (tx, rx) = mpsc::sync_channel::<Request>(QUEUE_BOUND);
        let (sync_tx, sync_rx) = mpsc::channel::<Vec<Reply>>();
        let thread_err = |source| JournalError::Io { path: "journal thread".into(), source };
        std::thread::Builder::new()
            .name("journal-sync".into())
            .spawn(move || sync(wal.as_deref(), sync_rx))
            .map_err(thread_err)?;
        std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || run(conn, rx, sync_tx, &hooks))
            .map_err(thread_err)?;
        Ok(Journal { tx, max_attempts: max_attempts.max(1) })
    }

    /// Runs `f` inside the next group transaction and returns its result once
    /// the transaction is durable. With a full queue, `wait` says whether to
    /// wait for room (the daemon's own bookkeeping) or fail at once with
    /// [`JournalError::Busy`] (intake: a `503` now beats one after a stalled disk).
    async fn submit<T, F>(&self, wait: bool, f: F) -> Result<T, JournalError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T, JournalError>>();
        // Run with `None` when no transaction could be begun: `f` is not run
        // at all (outside a transaction its writes would stick while its caller
        // hears it failed) and the reply carries the error.
        let mut req: Request = Box::new(move |conn| {
            let r = conn.map(f);
            let ok = r.as_ref().is_some_and(Result::is_ok);
            let reply: Reply = Box::new(move |commit: Result<(), String>| {
                let out = match (commit, r) {
                    (Ok(()), Some(r)) => r.map_err(JournalError::from),
                    (Ok(()), None) => Err(JournalError::Commit("not run".into())),
                    (Err(e), _) => Err(JournalError::Commit(e)),
                };
                let _ = tx.send(out);
            });
            (ok, reply)
        });
        loop {
            match self.tx.try_send(req) {
                Ok(()) => break,
                Err(mpsc::TrySendError::Disconnected(_)) => return Err(JournalError::Closed),
                Err(mpsc::TrySendError::Full(_)) if !wait => return Err(JournalError::Busy),
                Err(mpsc::TrySendError::Full(back)) => {
                    req = back;
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
        }
        rx.await.map_err(|_| JournalError::Closed)?
    }

    /// [`Journal::submit`], waiting for room.
    async fn call<T, F>(&self, f: F) -> Result<T, JournalError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.submit(true, f).await
    }

    /// Records an accepted event (dedup by id). Returns once it is durable.
    ///
    /// # Errors
    /// [`JournalError`] when it could not be committed (answer `503`).
    pub async fn record(&self, ev: NewEvent) -> Result<Recorded, JournalError> {
        self.submit(false, move |c| {
            let now = now_ms();
            // Cached statements: parsing the SQL text was the journal thread's
            // largest cost at intake rates (perf).
            let known: Option<String> = c
                .prepare_cached("SELECT status FROM events WHERE event_id = ?1")?
                .query_row(params![ev.event_id], |r| r.get(0))
                .optional()?;
            match known.as_deref() {
                Some("failed") => {
                    c.prepare_cached(
                        "UPDATE events SET status = 'pending', attempts = 0, next_at_ms = 0, updated_ms = ?2
                         WHERE event_id = ?1",
                    )?
                    .execute(params![ev.event_id, now])?;
                    Ok(Recorded::Requeued)
                }
                Some(_) => Ok(Recorded::Duplicate),
                None => {
                    let status = if ev.actionable { Status::Pending } else { Status::Ignored };
                    c.prepare_cached(
                        "INSERT INTO events (event_id, topic, path, received_ms, status, updated_ms, body)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?4, ?6)",
                    )?
                    .execute(params![
                        ev.event_id,
                        ev.topic,
                        ev.path,
                        now,
                        status.as_str(),
                        ev.body
                    ])?;
                    Ok(if ev.actionable { Recorded::Queued } else { Recorded::Ignored })
                }
            }
        })
        .await
    }

    /// Marks up to `limit` due `pending` rows `running`, oldest first, and returns them.
    ///
    /// # Errors
    /// On a database error.
    pub async fn claim(&self, limit: usize) -> Result<Vec<Job>, JournalError> {
        self.call(move |c| {
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
        self.call(move |c| {
            let now = now_ms();
            let mut st = c.prepare_cached(
                "UPDATE events SET status = 'done', attempts = attempts + 1, last_error = NULL, updated_ms = ?2,
                 outcome = ?3 WHERE seq = ?1",
            )?;
            for s in seqs {
                st.execute(params![s, now, outcome])?;
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
        self.call(move |c| {
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
        self.call(move |c| {
            let mut st =
                c.prepare_cached("UPDATE events SET status = 'pending' WHERE seq = ?1 AND status = 'running'")?;
            for s in seqs {
                st.execute(params![s])?;
            }
            Ok(())
        })
        .await
    }

    /// The epoch milliseconds at which the next `pending` row becomes due.
    ///
    /// # Errors
    /// On a database error.
    pub async fn next_due_ms(&self) -> Result<Option<i64>, JournalError> {
        self.call(|c| {
            c.prepare_cached("SELECT MIN(next_at_ms) FROM events WHERE status = 'pending'")?.query_row([], |r| r.get(0))
        })
        .await
    }

    /// Rows, newest first, optionally of one status.
    ///
    /// # Errors
    /// On a database error.
    pub async fn list(&self, status: Option<Status>, limit: usize) -> Result<Vec<EventRow>, JournalError> {
        self.call(move |c| {
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
        self.call(|c| {
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

/// The journal thread: block for one request, take every other one already
/// waiting, run them all in one transaction, commit, and hand the answers to
/// the sync thread.
/// Fault injection into the journal thread (unit tests only; empty otherwise).
#[derive(Default)]
struct Hooks {
    /// While set, every BEGIN fails as if the database refused it.
    #[cfg(test)]
    fail_begin: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Hooks {
    #[cfg(test)]
    fn begin_fails(&self) -> bool {
        self.fail_begin.load(std::sync::atomic::Ordering::Relaxed)
    }

    #[cfg(not(test))]
    fn begin_fails(&self) -> bool {
        false
    }
}

fn run(conn: Connection, rx: mpsc::Receiver<Request>, synced: mpsc::Sender<Vec<Reply>>, hooks: &Hooks) {
    // Control statements are prepared once too; `execute_batch` would parse them
    // again for every request.
    let exec = |sql: &str| conn.prepare_cached(sql).and_then(|mut st| st.execute([])).map(drop);
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let began = if hooks.begin_fails() {
            Err(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR), None))
        } else {
            exec("BEGIN IMMEDIATE")
        };
        let mut replies = Vec::with_capacity(batch.len());
        if began.is_ok() {
            for req in batch {
                // A savepoint per request: a failed request rolls back alone.
                let _ = exec("SAVEPOINT req");
                let (ok, reply) = req(Some(&conn));
                if !ok {
                    let _ = exec("ROLLBACK TO req");
                }
                let _ = exec("RELEASE req");
                replies.push(reply);
            }
        } else {
            replies.extend(batch.into_iter().map(|req| req(None).1));
        }
        let commit = match began {
            Ok(()) => exec("COMMIT").map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = commit {
            let _ = exec("ROLLBACK");
            for reply in replies {
                reply(Err(e.clone()));
            }
            continue;
        }
        if let Err(mpsc::SendError(replies)) = synced.send(replies) {
            for reply in replies {
                reply(Err("the journal sync thread has stopped".into()));
            }
        }
    }
}

/// The sync thread: take every committed batch waiting, fdatasync the WAL once
/// for all of them, then answer their callers. The file is opened for each
/// sync (fsync acts on the file, not the descriptor), so a WAL SQLite has
/// recreated is never missed. `None`: not in WAL mode, SQLite synced already.
fn sync(wal: Option<&Path>, rx: mpsc::Receiver<Vec<Reply>>) {
    sync_loop(rx, || match wal {
        None => Ok(()),
        Some(wal) => match std::fs::File::open(wal) {
            Err(e) => Err(SyncFailure::Open(format!("cannot open {} to sync it: {e}", wal.display()))),
            Ok(f) => f.sync_data().map_err(|e| SyncFailure::Flush(format!("syncing {} failed: {e}", wal.display()))),
        },
    })
}

/// Why a WAL sync failed.
enum SyncFailure {
    /// The file could not be opened: nothing lost, its pages stay dirty for the next sync.
    Open(String),
    /// fsync itself failed.
    Flush(String),
}

fn sync_loop(rx: mpsc::Receiver<Vec<Reply>>, mut flush: impl FnMut() -> Result<(), SyncFailure>) {
    // After a failed fsync Linux may drop the dirty pages and report the next
    // fsync as clean, so nothing committed afterwards can be called durable:
    // every later request fails until a restart reopens what is on disk.
    let mut broken: Option<String> = None;
    while let Ok(first) = rx.recv() {
        let mut batches = vec![first];
        batches.extend(rx.try_iter());
        let synced = match &broken {
            Some(e) => Err(e.clone()),
            None => match flush() {
                Ok(()) => Ok(()),
                Err(SyncFailure::Open(e)) => Err(e),
                Err(SyncFailure::Flush(e)) => {
                    let e = format!("{e}; the journal refuses events until sftp-mirror is restarted");
                    broken = Some(e.clone());
                    Err(e)
                }
            },
        };
        if let Err(e) = &synced {
            tracing::error!("{e}");
        }
        for reply in batches.into_iter().flatten() {
            reply(synced.clone());
        }
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
        let (unstall, stalled) = mpsc::channel::<()>();
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
    async fn a_failed_begin_runs_nothing_so_a_failed_claim_leaves_its_rows_pending() {
        let dir = tempfile::tempdir().unwrap();
        let hooks = Hooks::default();
        let fail = hooks.fail_begin.clone();
        let j = Journal::open_hooked(&dir.path().join("journal.db"), MAX_ATTEMPTS, false, hooks).unwrap();
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

    #[test]
    fn no_caller_hears_done_when_the_wal_sync_fails() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel::<Vec<Reply>>();
        let (heard_tx, heard) = mpsc::channel();
        for i in 0..3 {
            let h = heard_tx.clone();
            tx.send(vec![Box::new(move |r: Result<(), String>| h.send((i, r)).unwrap()) as Reply]).unwrap();
        }
        drop(tx);
        sync(Some(&dir.path().join("missing-wal")), rx);
        let answers: Vec<_> = heard.try_iter().collect();
        assert_eq!(answers.len(), 3);
        assert!(answers.iter().all(|(_, r)| r.as_ref().is_err_and(|e| e.contains("to sync it"))), "{answers:?}");
    }

    #[test]
    fn after_a_failed_fsync_nothing_is_called_durable_again() {
        // Each batch is sent only after the previous one was answered, so each
        // gets a sync of its own: open error, good, fsync error, good, good.
        let mut outcomes = vec![
            Err(SyncFailure::Open("cannot open".into())),
            Ok(()),
            Err(SyncFailure::Flush("EIO".into())),
            Ok(()),
            Ok(()),
        ]
        .into_iter();
        let (tx, rx) = mpsc::channel::<Vec<Reply>>();
        let (heard_tx, heard) = mpsc::channel();
        let t = std::thread::spawn(move || sync_loop(rx, || outcomes.next().unwrap_or(Ok(()))));
        let mut answers = Vec::new();
        for _ in 0..5 {
            let h = heard_tx.clone();
            tx.send(vec![Box::new(move |r: Result<(), String>| h.send(r).unwrap()) as Reply]).unwrap();
            answers.push(heard.recv().unwrap().is_ok());
        }
        drop(tx);
        t.join().unwrap();
        // An open error loses nothing: the next sync counts. An fsync error is final.
        assert_eq!(answers, [false, true, false, false, false]);
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
