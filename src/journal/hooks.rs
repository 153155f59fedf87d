//! The journal's `hooks` table (SPEC §9): one row per hook run, written
//! before the mirror change it follows, so a run survives any crash.
//!
//! Life cycle: `armed` (journaled just before the change: not runnable yet) →
//! `pending` once the change is in place → `running` → `done`, or back to
//! `pending` after a backoff, or `failed` after `hooks.max_attempts`. An
//! `armed` row found at start-up belongs to a change that a crash may or may
//! not have completed: the daemon looks at the mirror and fires or drops it.
//! `running` rows found at start-up were cut short and run again.

use super::{backoff, now_ms, EventRow, Journal, JournalError, Status};
use rusqlite::params;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS hooks (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    hook        TEXT    NOT NULL,
    path        BLOB    NOT NULL,
    action      TEXT    NOT NULL,
    size        INTEGER,
    mtime       INTEGER,
    event_id    TEXT    NOT NULL DEFAULT '',
    status      TEXT    NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_at_ms  INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    outcome     TEXT,
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS hooks_due ON hooks(status, next_at_ms, seq);
";

/// The `events` id of a hook row: `hook-<seq>`.
pub const HOOK_ID_PREFIX: &str = "hook-";

/// Which hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    /// `hooks.on_file`: a file is in place.
    OnFile,
    /// `hooks.on_delete`: an entry was removed.
    OnDelete,
}

impl HookKind {
    /// The configuration key and stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::OnFile => "on_file",
            HookKind::OnDelete => "on_delete",
        }
    }

    fn parse(s: &str) -> HookKind {
        if s == "on_delete" {
            HookKind::OnDelete
        } else {
            HookKind::OnFile
        }
    }
}

/// A hook run to journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewHookRun {
    /// Which hook.
    pub hook: HookKind,
    /// The mirror-relative path (bytes; a directory ends with `/`).
    pub path: Vec<u8>,
    /// `created`, `updated` or `deleted`.
    pub action: &'static str,
    /// The file's size (files only).
    pub size: Option<u64>,
    /// The file's mtime, seconds (files only): with the size, how a start-up
    /// tells whether an armed change was made.
    pub mtime: Option<u64>,
    /// The event that caused it; empty for a reconcile pass.
    pub event_id: String,
}

/// A row to run, or an armed one to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookRun {
    /// Row number.
    pub seq: i64,
    /// What it is.
    pub run: NewHookRun,
    /// Runs tried so far.
    pub attempts: u32,
}

fn read_run(r: &rusqlite::Row<'_>) -> rusqlite::Result<HookRun> {
    let action: String = r.get(3)?;
    Ok(HookRun {
        seq: r.get(0)?,
        run: NewHookRun {
            hook: HookKind::parse(&r.get::<_, String>(1)?),
            path: r.get(2)?,
            action: match action.as_str() {
                "created" => "created",
                "updated" => "updated",
                _ => "deleted",
            },
            size: r.get::<_, Option<i64>>(4)?.map(|s| s as u64),
            mtime: r.get::<_, Option<i64>>(5)?.map(|s| s as u64),
            event_id: r.get(6)?,
        },
        attempts: r.get(7)?,
    })
}

const RUN_COLUMNS: &str = "seq, hook, path, action, size, mtime, event_id, attempts";

impl Journal {
    /// Journals a run before the change it follows (`armed`: not runnable
    /// until [`Journal::hook_fire`]). Returns once it is durable.
    ///
    /// # Errors
    /// On a database error (the change must then not be made).
    pub async fn hook_arm(&self, run: NewHookRun) -> Result<i64, JournalError> {
        self.call(move |c| {
            let now = now_ms();
            c.prepare_cached(
                "INSERT INTO hooks (hook, path, action, size, mtime, event_id, status, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'armed', ?7, ?7)",
            )?
            .execute(params![
                run.hook.as_str(),
                run.path,
                run.action,
                run.size.map(|s| s as i64),
                run.mtime.map(|m| m as i64),
                run.event_id,
                now
            ])?;
            Ok(c.last_insert_rowid())
        })
        .await
    }

    /// The change is in place: the armed run may go.
    ///
    /// # Errors
    /// On a database error (the start-up resolution fires it then).
    pub async fn hook_fire(&self, seq: i64) -> Result<(), JournalError> {
        self.call_committed(move |c| {
            c.prepare_cached(
                "UPDATE hooks SET status = 'pending', updated_ms = ?2 WHERE seq = ?1 AND status = 'armed'",
            )?
            .execute(params![seq, now_ms()])?;
            Ok(())
        })
        .await
    }

    /// The change was not made: the armed run is dropped.
    ///
    /// # Errors
    /// On a database error.
    pub async fn hook_disarm(&self, seq: i64) -> Result<(), JournalError> {
        self.call(move |c| {
            c.prepare_cached("DELETE FROM hooks WHERE seq = ?1 AND status = 'armed'")?.execute(params![seq])?;
            Ok(())
        })
        .await
    }

    /// Armed rows left by a crash, to resolve against the mirror.
    ///
    /// # Errors
    /// On a database error.
    pub async fn hooks_armed(&self) -> Result<Vec<HookRun>, JournalError> {
        self.call(|c| {
            let mut st =
                c.prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM hooks WHERE status = 'armed' ORDER BY seq"))?;
            let rows = st.query_map([], read_run)?;
            rows.collect()
        })
        .await
    }

    /// Marks up to `limit` due `pending` runs `running`, oldest first.
    ///
    /// # Errors
    /// On a database error.
    pub async fn hook_claim(&self, limit: usize) -> Result<Vec<HookRun>, JournalError> {
        self.call_committed(move |c| {
            let now = now_ms();
            let runs: Vec<HookRun> = {
                let mut st = c.prepare_cached(&format!(
                    "SELECT {RUN_COLUMNS} FROM hooks WHERE status = 'pending' AND next_at_ms <= ?1 ORDER BY seq LIMIT ?2"
                ))?;
                let rows = st.query_map(params![now, limit as i64], read_run)?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let mut up = c.prepare_cached("UPDATE hooks SET status = 'running', updated_ms = ?2 WHERE seq = ?1")?;
            for r in &runs {
                up.execute(params![r.seq, now])?;
            }
            Ok(runs)
        })
        .await
    }

    /// A run ended: `done` with `outcome`, or (with `error`) `pending` after a
    /// backoff, or `failed` once `max_attempts` runs were made. Returns the new status.
    ///
    /// # Errors
    /// On a database error.
    pub async fn hook_finish(
        &self,
        seq: i64,
        result: Result<String, String>,
        max_attempts: u32,
    ) -> Result<Status, JournalError> {
        self.call_committed(move |c| {
            let now = now_ms();
            let attempts: u32 =
                c.prepare_cached("SELECT attempts FROM hooks WHERE seq = ?1")?.query_row(params![seq], |r| r.get(0))?;
            let attempts = attempts + 1;
            let (status, next, error, outcome) = match result {
                Ok(outcome) => (Status::Done, 0, None, Some(outcome)),
                Err(e) if attempts >= max_attempts => (Status::Failed, 0, Some(e), None),
                Err(e) => (Status::Pending, now + backoff(attempts).as_millis() as i64, Some(e), None),
            };
            c.prepare_cached(
                "UPDATE hooks SET status = ?2, attempts = ?3, next_at_ms = ?4, last_error = ?5, outcome = ?6,
                 updated_ms = ?7 WHERE seq = ?1",
            )?
            .execute(params![seq, status.as_str(), attempts, next, error, outcome, now])?;
            Ok(status)
        })
        .await
    }

    /// Puts running rows back to `pending` without counting a run (shutdown).
    ///
    /// # Errors
    /// On a database error.
    pub async fn hook_release(&self, seqs: Vec<i64>) -> Result<(), JournalError> {
        self.call(move |c| super::release_rows(c, "hooks", &seqs)).await
    }

    /// When the next `pending` run is due (epoch ms), and how many are `pending`.
    ///
    /// # Errors
    /// On a database error.
    pub async fn hooks_outstanding(&self) -> Result<(Option<i64>, u64), JournalError> {
        // A query: on the reader, not through the writer and its fsync (the
        // runner asks on every turn).
        self.read(|c| {
            c.prepare_cached("SELECT MIN(next_at_ms), COUNT(*) FROM hooks WHERE status = 'pending'")?
                .query_row([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
        })
        .await
    }
}

/// Hook rows as `events` shows them (armed ones are internal).
pub(super) fn list(c: &rusqlite::Connection, status: Option<Status>, limit: usize) -> rusqlite::Result<Vec<EventRow>> {
    let mut st = c.prepare_cached(
        "SELECT seq, hook, path, created_ms, status, attempts, last_error, next_at_ms, outcome, event_id
         FROM hooks WHERE status != 'armed' AND (?1 IS NULL OR status = ?1) ORDER BY seq DESC LIMIT ?2",
    )?;
    let rows = st.query_map(params![status.map(Status::as_str), limit as i64], |r| {
        let status = Status::parse(&r.get::<_, String>(4)?).unwrap_or(Status::Failed);
        let event: String = r.get(9)?;
        let outcome: Option<String> = r.get(8)?;
        Ok(EventRow {
            seq: r.get(0)?,
            id: format!("{HOOK_ID_PREFIX}{}", r.get::<_, i64>(0)?),
            topic: format!("hook.{}", r.get::<_, String>(1)?),
            path: Some(String::from_utf8_lossy(&r.get::<_, Vec<u8>>(2)?).into_owned()),
            received_ms: r.get(3)?,
            status,
            attempts: r.get(5)?,
            last_error: r.get(6)?,
            next_attempt_ms: (status == Status::Pending).then(|| r.get(7)).transpose()?,
            outcome: outcome.map(|o| {
                if event.is_empty() {
                    format!("{o} (reconcile)")
                } else {
                    format!("{o} (event {event})")
                }
            }),
        })
    })?;
    rows.collect()
}

/// Queues failed hook rows again (`retry`): all, or the one with this `hook-N` id.
pub(super) fn retry(c: &rusqlite::Connection, id: Option<&str>) -> rusqlite::Result<usize> {
    let seq = match id {
        None => None,
        Some(id) => match id.strip_prefix(HOOK_ID_PREFIX).and_then(|n| n.parse::<i64>().ok()) {
            Some(n) => Some(n),
            None => return Ok(0),
        },
    };
    c.execute(
        "UPDATE hooks SET status = 'pending', attempts = 0, next_at_ms = 0, updated_ms = ?2
         WHERE status = 'failed' AND (?1 IS NULL OR seq = ?1)",
        params![seq, now_ms()],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(path: &str) -> NewHookRun {
        NewHookRun {
            hook: HookKind::OnFile,
            path: path.as_bytes().to_vec(),
            action: "created",
            size: Some(3),
            mtime: Some(1_700_000_000),
            event_id: "e1".into(),
        }
    }

    #[tokio::test]
    async fn an_armed_run_is_not_claimed_until_fired_and_failures_back_off_then_fail() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open_with(&dir.path().join("j.db"), 3).unwrap();
        let a = j.hook_arm(run("a.txt")).await.unwrap();
        let b = j.hook_arm(run("b.txt")).await.unwrap();
        assert!(j.hook_claim(10).await.unwrap().is_empty(), "armed runs wait for their change");
        j.hook_fire(a).await.unwrap();
        j.hook_disarm(b).await.unwrap();
        let claimed = j.hook_claim(10).await.unwrap();
        assert_eq!(claimed.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![a]);
        assert_eq!(claimed[0].run, run("a.txt"));
        assert_eq!(j.hook_finish(a, Err("exit status 1".into()), 2).await.unwrap(), Status::Pending);
        assert_eq!(j.hooks_outstanding().await.unwrap().1, 1);
        assert!(j.hook_claim(10).await.unwrap().is_empty(), "in its backoff");
        assert_eq!(j.hook_finish(a, Err("exit status 1".into()), 2).await.unwrap(), Status::Failed);
        let rows = j.list(Some(Status::Failed), 10).await.unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!((rows[0].id.as_str(), rows[0].topic.as_str()), (format!("hook-{a}").as_str(), "hook.on_file"));
        assert_eq!(rows[0].last_error.as_deref(), Some("exit status 1"));
        assert_eq!(j.retry(Some(vec![format!("hook-{a}")])).await.unwrap(), 1);
        assert_eq!(j.hook_claim(10).await.unwrap().len(), 1);
    }
}
