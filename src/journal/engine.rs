//! The journal's engine: one writer thread doing group commit (every request
//! waiting at that moment in one transaction, a savepoint each), a sync
//! thread that fdatasyncs the WAL before any caller of a commit is answered,
//! and a read-only connection for queries. The typed API is in `mod.rs`.

use super::{now_ms, JournalError, QUEUE_BOUND};
use rusqlite::{params, Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// Requests committed together at most; bounds the latency of one batch.
const MAX_BATCH: usize = 512;

/// Answers a request's caller once its transaction is durable (or failed).
pub(super) type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;
/// A request runs on the journal thread and says whether it succeeded, plus
/// how to answer after commit, and whether that answer waits for the fsync.
type Request = Box<dyn FnOnce(Option<&Connection>) -> (bool, Reply, Durability) + Send>;

/// When a caller hears its request is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Durability {
    /// Once the commit is on disk (an accepted event, a hook run armed
    /// before its change: promises made to others).
    Synced,
    /// Once it is committed; the fsync follows with the batch. For the
    /// workers' own bookkeeping, which a crash may undo safely: a lost claim
    /// or completion leaves a row `pending`, and it is applied again.
    Committed,
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

/// Handle to the journal threads and the reader. Cloning is cheap; the
/// threads stop when the last handle is dropped.
#[derive(Clone)]
pub(super) struct Engine {
    tx: mpsc::SyncSender<Request>,
    reader: Arc<Mutex<Connection>>,
}

impl Engine {
    /// Opens (creating, migrating) the journal at `path` and starts its
    /// threads; with `resume`, rows left `running` by a previous daemon are
    /// `pending` again.
    pub(super) fn start(path: &Path, resume: bool, faults: Faults) -> Result<Engine, JournalError> {
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
        conn.execute_batch(super::hooks::SCHEMA)?;
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
            .spawn(move || run(conn, rx, sync_tx, &faults))
            .map_err(thread_err)?;
        // Queries (`events`, `/metrics`) get a connection of their own: WAL
        // lets them read the last commit while the writer works and syncs.
        let reader = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
        )?;
        reader.busy_timeout(Duration::from_secs(5))?;
        Ok(Engine { tx, reader: Arc::new(Mutex::new(reader)) })
    }

    /// Runs `f` inside the next group transaction and returns its result once
    /// the transaction is durable. With a full queue, `wait` says whether to
    /// wait for room (the daemon's own bookkeeping) or fail at once with
    /// [`JournalError::Busy`] (intake: a `503` now beats one after a stalled disk).
    pub(super) async fn submit<T, F>(&self, wait: bool, durability: Durability, f: F) -> Result<T, JournalError>
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
            (ok, reply, durability)
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

    /// Runs `f` on the read-only connection (a blocking thread).
    pub(super) async fn read<T, F>(&self, f: F) -> Result<T, JournalError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || f(&reader.lock().expect("not poisoned")))
            .await
            .map_err(|_| JournalError::Closed)?
            .map_err(JournalError::from)
    }
}

/// Fault injection into the journal thread (unit tests only; empty otherwise).
#[derive(Default)]
pub(super) struct Faults {
    /// While set, every BEGIN fails as if the database refused it.
    #[cfg(test)]
    pub(super) fail_begin: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Faults {
    #[cfg(test)]
    fn begin_fails(&self) -> bool {
        self.fail_begin.load(std::sync::atomic::Ordering::Relaxed)
    }

    #[cfg(not(test))]
    fn begin_fails(&self) -> bool {
        false
    }
}

/// The journal thread: block for one request, take every other one already
/// waiting, run them all in one transaction, commit, and hand the answers to
/// the sync thread.
fn run(conn: Connection, rx: mpsc::Receiver<Request>, synced: mpsc::Sender<Vec<Reply>>, faults: &Faults) {
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
        let began = if faults.begin_fails() {
            Err(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR), None))
        } else {
            exec("BEGIN IMMEDIATE")
        };
        let mut replies = Vec::with_capacity(batch.len());
        if began.is_ok() {
            for req in batch {
                // A savepoint per request: a failed request rolls back alone.
                let _ = exec("SAVEPOINT req");
                let (ok, reply, durability) = req(Some(&conn));
                if !ok {
                    let _ = exec("ROLLBACK TO req");
                }
                let _ = exec("RELEASE req");
                replies.push((reply, durability));
            }
        } else {
            replies.extend(batch.into_iter().map(|req| {
                let (_, reply, durability) = req(None);
                (reply, durability)
            }));
        }
        let commit = match began {
            Ok(()) => exec("COMMIT").map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = commit {
            let _ = exec("ROLLBACK");
            for (reply, _) in replies {
                reply(Err(e.clone()));
            }
            continue;
        }
        // Bookkeeping hears at once; promises wait for the fsync.
        let mut to_sync = Vec::with_capacity(replies.len());
        for (reply, durability) in replies {
            match durability {
                Durability::Committed => reply(Ok(())),
                Durability::Synced => to_sync.push(reply),
            }
        }
        if to_sync.is_empty() {
            // Still synced, with the next batch that waits: nothing is owed now.
            continue;
        }
        if let Err(mpsc::SendError(replies)) = synced.send(to_sync) {
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
}
