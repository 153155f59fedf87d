//! `[hooks]` (SPEC §9): run a command when a file is really in the mirror, or
//! after an entry left it.
//!
//! The syncer journals a run (`armed`) before it changes the mirror and fires
//! it once the change is durable, so a hook never sees a partial file, never
//! runs for a change that was not made, and is not lost to a crash anywhere in
//! between (start-up resolves `armed` rows against the mirror). The runner
//! claims due runs from the journal and executes each as an argv, never
//! through a shell, in its own process group so a timeout kills everything it
//! started. Exit 0 is done; anything else is retried with the journal's
//! backoff up to `hooks.max_attempts`, then `failed` (`events`, `retry`).

use crate::config::HookSettings;
use crate::event::RemotePath;
use crate::journal::{now_ms, HookKind, HookRun, Journal, JournalError, NewHookRun, Status};
use crate::mirror::{LocalKind, Mirror};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

tokio::task_local! {
    /// The id of the event being applied (the dispatcher sets it), handed to
    /// the hooks of the changes it makes; unset in a reconcile pass.
    pub static EVENT_ID: String;
}

/// Longest sleep of an idle runner: runs queued by `sftp-mirror retry` in
/// another process are seen by a poll.
const IDLE_POLL: Duration = Duration::from_secs(5);
/// Output lines are logged up to this many bytes (the rest is cut).
const MAX_LINE: u64 = 4096;
/// After a run ended, how long its output may still be read (a grandchild
/// that left the process group may hold the pipes open).
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct HookStats {
    /// Runs by (hook, result: `ok`, `failed`, `timeout`).
    pub runs: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Total run time, microseconds.
    pub micros: AtomicU64,
    /// Runs timed.
    pub timed: AtomicU64,
    /// Runs that ended `failed` (out of attempts).
    pub gave_up: AtomicU64,
}

/// The configured hooks, their journal and their runner.
pub struct Hooks {
    journal: Journal,
    settings: HookSettings,
    mirror: PathBuf,
    wake: Notify,
    /// Counters.
    pub stats: HookStats,
}

/// How one run ended.
enum Ended {
    Ok,
    Failed(String),
    Timeout,
    /// Shutdown: the run is handed back, not counted.
    Stopped,
}

impl Hooks {
    /// The hooks of `settings` for the mirror at `mirror`; `None` when none is configured.
    pub fn new(journal: Journal, settings: &HookSettings, mirror: PathBuf) -> Option<Arc<Hooks>> {
        settings.any().then(|| {
            Arc::new(Hooks {
                journal,
                settings: settings.clone(),
                mirror,
                wake: Notify::new(),
                stats: HookStats::default(),
            })
        })
    }

    fn argv(&self, hook: HookKind) -> Option<&Vec<String>> {
        match hook {
            HookKind::OnFile => self.settings.on_file.as_ref(),
            HookKind::OnDelete => self.settings.on_delete.as_ref(),
        }
    }

    /// Journals the run that follows a change about to be made to `path`;
    /// `None` when no hook is configured for it. The caller makes the change
    /// only once this returned, then calls [`Hooks::fire`] (or [`Hooks::disarm`]).
    ///
    /// # Errors
    /// When the journal cannot record it (the change must wait).
    pub async fn arm(
        &self,
        hook: HookKind,
        path: &RemotePath,
        action: &'static str,
        file: Option<(u64, u64)>,
    ) -> Result<Option<i64>, JournalError> {
        if self.argv(hook).is_none() {
            return Ok(None);
        }
        let mut rel = path.as_bytes().to_vec();
        if path.is_dir() {
            rel.push(b'/');
        }
        let run = NewHookRun {
            hook,
            path: rel,
            action,
            size: file.map(|f| f.0),
            mtime: file.map(|f| f.1),
            event_id: EVENT_ID.try_with(Clone::clone).unwrap_or_default(),
        };
        self.journal.hook_arm(run).await.map(Some)
    }

    /// The change of an armed run is in place: it may run.
    pub async fn fire(&self, seq: Option<i64>) {
        let Some(seq) = seq else { return };
        // Not fatal: the row stays armed and the next start fires it.
        if let Err(e) = self.journal.hook_fire(seq).await {
            tracing::warn!("hook run {seq} not queued ({e}); it is resolved at the next start");
        }
        self.wake.notify_one();
    }

    /// The change of an armed run was not made: drop it.
    pub async fn disarm(&self, seq: Option<i64>) {
        let Some(seq) = seq else { return };
        if let Err(e) = self.journal.hook_disarm(seq).await {
            tracing::warn!("hook run {seq} not dropped ({e}); it is resolved at the next start");
        }
    }

    /// Resolves the armed runs a crash left: fired when the mirror shows their
    /// change (the file with that size and mtime is there; the removed entry
    /// is gone), dropped otherwise. Call before the workers start.
    ///
    /// # Errors
    /// On a journal error.
    pub async fn resolve_armed(&self, mirror: &Arc<Mirror>) -> Result<(), JournalError> {
        for r in self.journal.hooks_armed().await? {
            let made = match RemotePath::parse_bytes(&r.run.path) {
                Err(_) => false,
                Ok(p) => {
                    let (m, q) = (mirror.clone(), p.clone());
                    let now = tokio::task::spawn_blocking(move || m.stat(&q)).await.ok().and_then(Result::ok).flatten();
                    match r.run.hook {
                        HookKind::OnFile => now.is_some_and(|l| {
                            l.kind == LocalKind::File && Some(l.size) == r.run.size && Some(l.mtime) == r.run.mtime
                        }),
                        HookKind::OnDelete => now.is_none(),
                    }
                }
            };
            let path = String::from_utf8_lossy(&r.run.path).into_owned();
            if made {
                tracing::info!(path = %path, hook = r.run.hook.as_str(), "a run armed before a crash is queued: its change is in the mirror");
                self.journal.hook_fire(r.seq).await?;
            } else {
                tracing::debug!(path = %path, hook = r.run.hook.as_str(), "a run armed before a crash is dropped: its change was not made");
                self.journal.hook_disarm(r.seq).await?;
            }
        }
        Ok(())
    }

    /// Runs due hooks, `hooks.concurrency` at once, until `shutdown` (runs
    /// under way are killed and handed back to the journal), or, once `finish`
    /// is cancelled, until no run is pending any more (a one-shot reconcile
    /// waits out the retries of its hooks).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, finish: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        let mut journal_backoff = Duration::ZERO;
        loop {
            while tasks.try_join_next().is_some() {}
            let free = self.settings.concurrency.saturating_sub(tasks.len());
            if free > 0 {
                match self.journal.hook_claim(free).await {
                    Ok(runs) => {
                        journal_backoff = Duration::ZERO;
                        for r in runs {
                            tasks.spawn(self.clone().execute(r, shutdown.clone()));
                        }
                    }
                    Err(e) => {
                        journal_backoff = (journal_backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
                        tracing::warn!("hooks: cannot read the journal ({e}); again in {journal_backoff:?}");
                    }
                }
            }
            let (due, pending) = self.journal.hooks_outstanding().await.unwrap_or((None, 1));
            if finish.is_cancelled() && pending == 0 && tasks.is_empty() {
                break;
            }
            let wait = match due {
                _ if !journal_backoff.is_zero() => journal_backoff,
                Some(at) => Duration::from_millis(at.saturating_sub(now_ms()).max(0) as u64).min(IDLE_POLL),
                None => IDLE_POLL,
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = finish.cancelled(), if !finish.is_cancelled() => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        // Runs under way see the shutdown too: each kills its process group
        // and hands its row back before it ends.
        while tasks.join_next().await.is_some() {}
    }

    /// One run, start to journaled end.
    async fn execute(self: Arc<Self>, r: HookRun, shutdown: CancellationToken) {
        let hook = r.run.hook.as_str();
        let path = String::from_utf8_lossy(&r.run.path).into_owned();
        let started = Instant::now();
        let ended = match self.argv(r.run.hook) {
            None => Ended::Failed(format!("hooks.{hook} is no longer configured")),
            Some(argv) => self.spawn_and_wait(argv, &r, &path, &shutdown).await,
        };
        let took = started.elapsed();
        let (label, result) = match ended {
            Ended::Stopped => {
                if let Err(e) = self.journal.hook_release(vec![r.seq]).await {
                    tracing::warn!("hook run {} not handed back ({e}); it runs again at the next start", r.seq);
                }
                return;
            }
            Ended::Ok => ("ok", Ok(format!("exit 0 in {:.1} s", took.as_secs_f64()))),
            Ended::Failed(e) => ("failed", Err(e)),
            Ended::Timeout => (
                "timeout",
                Err(format!("killed after hooks.timeout ({})", humantime::format_duration(self.settings.timeout))),
            ),
        };
        *self.stats.runs.lock().expect("not poisoned").entry((hook, label)).or_default() += 1;
        self.stats.micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.stats.timed.fetch_add(1, Ordering::Relaxed);
        let ms = took.as_millis() as u64;
        let error = result.as_ref().err().cloned();
        match self.journal.hook_finish(r.seq, result, self.settings.max_attempts).await {
            Ok(Status::Done) => tracing::info!(hook, path = %path, ms, "hook {hook} done"),
            Ok(Status::Failed) => {
                self.stats.gave_up.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    hook, path = %path, attempts = r.attempts + 1,
                    "hook {hook} failed for good: {}; `sftp-mirror retry {}{}` runs it again",
                    error.unwrap_or_default(), crate::journal::HOOK_ID_PREFIX, r.seq
                );
            }
            Ok(_) => {
                tracing::warn!(hook, path = %path, attempt = r.attempts + 1, "hook {hook} failed: {}; retried later", error.unwrap_or_default())
            }
            Err(e) => {
                tracing::warn!(hook, path = %path, "hook {hook} ended but the journal did not record it ({e}): it runs again")
            }
        }
    }

    async fn spawn_and_wait(&self, argv: &[String], r: &HookRun, path: &str, shutdown: &CancellationToken) -> Ended {
        let rel = r.run.path.strip_suffix(b"/").unwrap_or(&r.run.path);
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(&self.mirror)
            .env("SFTP_MIRROR_PATH", OsStr::from_bytes(&r.run.path))
            .env("SFTP_MIRROR_FULL_PATH", self.mirror.join(OsStr::from_bytes(rel)))
            .env("SFTP_MIRROR_ACTION", r.run.action)
            .env("SFTP_MIRROR_SIZE", r.run.size.map(|s| s.to_string()).unwrap_or_default())
            .env("SFTP_MIRROR_EVENT_ID", &r.run.event_id)
            .env("SFTP_MIRROR_HOOK", r.run.hook.as_str())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a timeout kills what it started too.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return Ended::Failed(format!("cannot start {}: {e}", argv[0])),
        };
        let group = child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32));
        let hook = r.run.hook.as_str();
        let out = child.stdout.take().map(|o| tokio::spawn(forward(o, hook, path.to_owned(), "stdout")));
        let err = child.stderr.take().map(|e| tokio::spawn(forward(e, hook, path.to_owned(), "stderr")));
        let kill = |child: &mut tokio::process::Child| {
            if let Some(g) = group {
                let _ = rustix::process::kill_process_group(g, rustix::process::Signal::KILL);
            }
            let _ = child.start_kill();
        };
        let ended = tokio::select! {
            st = child.wait() => match st {
                Ok(s) if s.success() => Ended::Ok,
                Ok(s) => Ended::Failed(describe_exit(s)),
                Err(e) => Ended::Failed(format!("waiting for it: {e}")),
            },
            _ = tokio::time::sleep(self.settings.timeout) => {
                kill(&mut child);
                let _ = child.wait().await;
                Ended::Timeout
            }
            _ = shutdown.cancelled() => {
                kill(&mut child);
                let _ = child.wait().await;
                Ended::Stopped
            }
        };
        // The group is gone (or exited): what it wrote is read to the end, briefly.
        if let Some(g) = group {
            let _ = rustix::process::kill_process_group(g, rustix::process::Signal::KILL);
        }
        for h in [out, err].into_iter().flatten() {
            let abort = h.abort_handle();
            if tokio::time::timeout(OUTPUT_GRACE, h).await.is_err() {
                abort.abort();
            }
        }
        ended
    }
}

/// "exit status 3" or "killed by signal 9".
fn describe_exit(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => s.to_string(),
    }
}

/// Logs each line a hook writes, with its path; lines are cut at [`MAX_LINE`].
async fn forward(stream: impl AsyncRead + Unpin, hook: &'static str, path: String, name: &'static str) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let cut = !line.ends_with(b"\n");
        let text = String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(&line)).into_owned();
        tracing::info!(hook, path = %path, stream = name, "{text}{}", if cut { " …" } else { "" });
        if cut {
            // Skip the rest of an overlong line.
            let mut rest = Vec::new();
            loop {
                rest.clear();
                match (&mut reader).take(MAX_LINE).read_until(b'\n', &mut rest).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) if rest.ends_with(b"\n") => break,
                    Ok(_) => {}
                }
            }
        }
    }
}

/// The `created`/`updated` action of a download onto `local`.
pub fn file_action(replaced_a_file: bool) -> &'static str {
    if replaced_a_file {
        "updated"
    } else {
        "created"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_described_for_people() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(describe_exit(std::process::ExitStatus::from_raw(3 << 8)), "exit status 3");
        assert_eq!(describe_exit(std::process::ExitStatus::from_raw(9)), "killed by signal 9");
    }
}
