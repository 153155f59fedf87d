//! Issue #7: reliability. SIGKILL storms, a dropped SSH server in the middle
//! of a large transfer, a remote file changing while it is read, a full or
//! read-only mirror disk, and sustained load. Every test checks bytes on disk,
//! HTTP statuses and the journal, never only logs.
//!
//! Scale knobs (environment): `CRASH_EVENTS`, `CRASH_KILLS`, `CRASH_SEED`,
//! `NET_BIG_MIB`, `LOAD_RATE`, `LOAD_SECS`, `LOAD_CONNS`.

use crate::common::*;
use sftp_mirror::event::RemotePath;
use sftp_mirror::sync::Action;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Bytes currently written into staging files (their apparent sizes).
fn staging_bytes(env: &Env) -> u64 {
    std::fs::read_dir(env.mirror().join(".sftp-mirror/staging"))
        .map(|d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

/// The journal row of event `id` (newest `limit` rows searched).
fn row(cfg: &Path, id: &str) -> Option<serde_json::Value> {
    journal_rows(cfg, &["--limit", "100000"]).into_iter().find(|r| r["id"] == id)
}

fn no_panic(log: &str) {
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
}

// ---------------------------------------------------------------------------
// 1. Crash storm
// ---------------------------------------------------------------------------

/// Every content a remote path ever had (SHA-256), recorded *before* it becomes visible on the remote.
type History = Arc<Mutex<HashMap<String, HashSet<String>>>>;

/// Sets the flag when dropped, also while unwinding: the threads of a scope
/// stop when one of them fails, instead of waiting for each other forever.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Sends `body` until it is answered 204, following the daemon across restarts
/// (a dead daemon or a 503 is what SFTP To Go redelivers after). Returns the tries.
fn deliver(addr: &Mutex<SocketAddr>, body: &[u8], stop: &AtomicBool) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut tries = 0;
    loop {
        assert!(!stop.load(Ordering::Relaxed), "stopped: another thread of the test failed");
        tries += 1;
        let a = *addr.lock().unwrap();
        match try_post(a, body, Duration::from_secs(10)) {
            Some(204) => return tries,
            Some(503) | None => {}
            Some(other) => panic!("a valid event was answered {other}: {}", String::from_utf8_lossy(body)),
        }
        assert!(Instant::now() < deadline, "an event could not be delivered for 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn crash_storm() {
    storm(false);
}

/// The same storm with an `on_file` hook and the trash on (SPEC §8, §9).
#[test]
fn crash_storm_with_a_hook_and_the_trash() {
    storm(true);
}

/// An `on_file` hook recording each run (path and the content it saw) as a
/// file of its own in `runs`.
fn storm_hook(dir: &Path) -> std::path::PathBuf {
    let runs = dir.join("hook-runs");
    std::fs::create_dir_all(&runs).unwrap();
    let script = dir.join("storm-hook");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nrec={}/run.$$.$(date +%s%N)\n\
             {{ printf '%s\\n' \"$SFTP_MIRROR_PATH\"; sha256sum < \"$SFTP_MIRROR_FULL_PATH\" | cut -d' ' -f1; }} > $rec.tmp && mv $rec.tmp $rec\n",
            runs.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn storm(extras: bool) {
    let n_events = knob("CRASH_EVENTS", 300) as usize;
    let n_kills = knob("CRASH_KILLS", 6) as usize;
    let seed = knob("CRASH_SEED", fastrand::u64(..));
    eprintln!("crash storm (hook and trash: {extras}): {n_events} events, {n_kills} kills, CRASH_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);

    let env = Env::new();
    let mut opts = Opts { concurrency: 4, ..Default::default() };
    if extras {
        let hook = storm_hook(env.dir.path());
        opts.extra_mirror = "trash = \"7d\"".into();
        opts.extra_sections = format!("[hooks]\non_file = [{:?}]\n", hook.to_str().unwrap());
    }
    let cfg = env.config(&opts);
    // Paths whose file was overwritten or deleted on the remote at least once:
    // only those may have anything in the trash.
    let replaced: Mutex<HashSet<String>> = Default::default();
    let history: History = Default::default();
    let daemon = Mutex::new(Daemon::start(&cfg));
    let addr = Mutex::new(daemon.lock().unwrap().addr);
    let sent = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let logs = Mutex::new(String::new());
    let (mirror, remote) = (env.mirror(), env.remote().to_owned());

    let files: Vec<String> = (0..24).map(|i| format!("f/{}/file{i}.bin", i % 4)).collect();
    let dirs: Vec<String> = (0..6).map(|i| format!("d{i}")).collect();
    let mut kill_points: Vec<usize> = (0..n_kills).map(|_| rng.usize(1..n_events.max(2))).collect();
    kill_points.sort_unstable();
    let mut version = 0u64;
    let base_mtime = now_secs() - 100_000;

    let (total_sent, answered, redelivered, kills, checked, violations) = std::thread::scope(|s| {
        // The watcher: every file under a final name must be a whole version of that path.
        let watcher = s.spawn(|| {
            let (mut checked, mut bad) = (0usize, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                for (rel, seen) in snapshot(&mirror) {
                    match seen {
                        Seen::Dir => {}
                        Seen::File(h) => {
                            checked += 1;
                            let ok = history.lock().unwrap().get(&rel).is_some_and(|set| set.contains(&h));
                            if !ok {
                                bad.push(format!("{rel}: content {h} the remote never had"));
                            }
                        }
                        other => bad.push(format!("{rel}: {other:?}")),
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (checked, bad)
        });

        // The killer: SIGKILL at random moments, restart at once.
        let killer = s.spawn(|| {
            let _fail = StopOnDrop(&stop);
            let mut kills = 0;
            for at in &kill_points {
                while sent.load(Ordering::Relaxed) < *at && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(2));
                }
                std::thread::sleep(Duration::from_millis(fastrand::u64(0..60)));
                let mut d = daemon.lock().unwrap();
                d.kill();
                let log = d.log();
                no_panic(&log);
                logs.lock().unwrap().push_str(&log);
                *d = Daemon::start(&cfg);
                *addr.lock().unwrap() = d.addr;
                kills += 1;
            }
            std::mem::forget(_fail);
            kills
        });

        let _fail = StopOnDrop(&stop);
        // The sender: change the remote, then announce it (a new directory is
        // announced too, as SFTP To Go does for every mkdir).
        let (mut answered, mut redelivered) = (0usize, 0usize);
        let mut ids_sent: Vec<String> = Vec::new();
        let mut send = |body: Vec<u8>| {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            ids_sent.push(v["Id"].as_str().unwrap().to_owned());
            let tries = deliver(&addr, &body, &stop);
            answered += 1;
            if tries > 1 {
                redelivered += 1;
            }
        };
        for i in 0..4 {
            std::fs::create_dir_all(remote.join(format!("f/{i}"))).unwrap();
            send(event(&format!("storm-mkdir-f{i}"), "file.created", &format!("f/{i}/")));
        }
        for i in 0..n_events {
            let id = format!("storm-{i}");
            let roll = rng.u32(0..100);
            let body = if !(45..85).contains(&roll) {
                // Create or overwrite a file (inside a directory of the pool for roll >= 85).
                let rel = if roll < 45 {
                    files[rng.usize(..files.len())].clone()
                } else {
                    let d = &dirs[rng.usize(..dirs.len())];
                    if !remote.join(d).exists() {
                        std::fs::create_dir_all(remote.join(d)).unwrap();
                        send(event(&format!("{id}-mkdir"), "file.created", &format!("{d}/")));
                    }
                    format!("{d}/in{}.bin", rng.u32(0..3))
                };
                version += 1;
                let len = if rng.u32(0..10) == 0 { rng.usize(256 << 10..1536 << 10) } else { rng.usize(0..48 << 10) };
                let data = bytes_from(version, len);
                if remote.join(&rel).exists() {
                    replaced.lock().unwrap().insert(rel.clone());
                }
                history.lock().unwrap().entry(rel.clone()).or_default().insert(sha(&data));
                put_atomic(&env, &rel, &data, base_mtime + version);
                event(&id, "file.created", &rel)
            } else if roll < 60 {
                // Delete a file (the remote first; a delete of an absent file is harmless).
                let rel = &files[rng.usize(..files.len())];
                replaced.lock().unwrap().insert(rel.clone());
                let _ = std::fs::remove_file(remote.join(rel));
                event(&id, "file.deleted", rel)
            } else if roll < 75 {
                let d = &dirs[rng.usize(..dirs.len())];
                std::fs::create_dir_all(remote.join(d)).unwrap();
                event(&id, "file.created", &format!("{d}/"))
            } else {
                // Remove a directory: half the time the way an SFTP client does
                // (each file, then the empty directory, each announced), half the
                // time in one go with only the directory's own event (a directory
                // event brings its whole subtree in line with the remote).
                let d = &dirs[rng.usize(..dirs.len())];
                let prefix = format!("{d}/");
                let inside: Vec<String> =
                    history.lock().unwrap().keys().filter(|k| k.starts_with(&prefix)).cloned().collect();
                replaced.lock().unwrap().extend(inside);
                if rng.bool() {
                    let mut inside: Vec<String> = std::fs::read_dir(remote.join(d))
                        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                        .unwrap_or_default();
                    inside.sort();
                    for (k, name) in inside.iter().enumerate() {
                        std::fs::remove_file(remote.join(d).join(name)).unwrap();
                        send(event(&format!("{id}-rm{k}"), "file.deleted", &format!("{d}/{name}")));
                    }
                }
                let _ = std::fs::remove_dir_all(remote.join(d));
                event(&id, "file.deleted", &format!("{d}/"))
            };
            send(body);
            sent.fetch_add(1, Ordering::Relaxed);
        }
        let kills = killer.join().unwrap();

        // Everything answered 204 ends in the mirror, and is recorded as done.
        converge(&env, Duration::from_secs(120));
        let rows = journal_rows(&cfg, &["--limit", "1000000"]);
        let ids: HashSet<&str> = rows.iter().filter_map(|r| r["id"].as_str()).collect();
        for id in &ids_sent {
            assert!(ids.contains(id.as_str()), "{id} was answered 204 but is not in the journal");
        }
        wait_for("every journal row done", || {
            journal_rows(&cfg, &["--limit", "1000000"]).iter().all(|r| r["status"] == "done")
        });
        converge(&env, Duration::from_secs(10));
        stop.store(true, Ordering::Relaxed);
        let (checked, violations) = watcher.join().unwrap();
        (ids_sent.len(), answered, redelivered, kills, checked, violations)
    });

    assert_eq!(staging_files(&env), 0, "staging files left behind");
    let d = daemon.lock().unwrap();
    no_panic(&d.log());
    if extras {
        check_storm_hooks_and_trash(&env, &history, &replaced.lock().unwrap());
    }
    println!(
        "crash storm: events sent {total_sent} ({n_events} + directory and file announcements), answered 204 {answered} \
         ({redelivered} redelivered after a kill or 503), \
         kills survived {kills}, files checked by the watcher {checked}, violations {}",
        violations.len()
    );
    assert!(violations.is_empty(), "partial or foreign files under final names: {violations:#?}");
    assert_eq!(kills, n_kills);
    assert_eq!(answered, total_sent);
    assert!(checked > 0, "the watcher saw no file at all");
}

/// Every file of the final mirror had its hook run on its final content at
/// least once; the trash holds only versions of paths that were overwritten
/// or deleted, each a content that path really had.
fn check_storm_hooks_and_trash(env: &Env, history: &History, replaced: &HashSet<String>) {
    let mut seen: HashSet<(String, String)> = HashSet::new();
    for e in std::fs::read_dir(env.dir.path().join("hook-runs")).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "tmp") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap();
        let mut lines = text.lines();
        if let (Some(p), Some(h)) = (lines.next(), lines.next()) {
            seen.insert((p.to_owned(), h.to_owned()));
        }
    }
    let mut files = 0;
    for (rel, s) in snapshot(&env.mirror()) {
        if let Seen::File(h) = s {
            files += 1;
            assert!(
                seen.contains(&(rel.clone(), h.clone())),
                "{rel} (content {h}) is in the mirror but its hook never ran on it"
            );
        }
    }
    let trash = env.mirror().join(".sftp-mirror/trash");
    let history = history.lock().unwrap();
    let mut trashed = 0;
    walk(&trash, |rel, p, ft| {
        if !ft.is_file() {
            return;
        }
        trashed += 1;
        // `<date>[~N]/<path>`
        let path = rel.split_once('/').map(|(_, r)| r.to_owned()).unwrap_or_default();
        assert!(replaced.contains(&path), "{rel} is in the trash, but {path} was never overwritten or deleted");
        let h = sha(&std::fs::read(p).unwrap());
        assert!(history.get(&path).is_some_and(|v| v.contains(&h)), "{rel} holds a content {path} never had");
    });
    println!(
        "crash storm: {files} final files each saw its hook, {} hook runs, {trashed} files in the trash",
        seen.len()
    );
    assert!(trashed > 0, "nothing reached the trash: the storm overwrites and deletes");
}

// ---------------------------------------------------------------------------
// 2. Network faults
// ---------------------------------------------------------------------------

#[test]
fn sshd_killed_in_the_middle_of_a_large_download_then_restarted_gives_identical_bytes() {
    let mut env = Env::new();
    let size = (knob("NET_BIG_MIB", 64) as usize) << 20;
    let data = bytes_from(7, size);
    env.put("big/large.bin", &data);
    let cfg = env.config(&Opts::default());
    let d = Daemon::start(&cfg);
    assert_eq!(d.send(&event("big-1", "file.created", "big/large.bin")).status, 204);
    let at = (size as u64 / 8).max(1 << 20);
    wait_for("the download to be under way", || staging_bytes(&env) >= at);
    env.sshd.stop();
    env.sshd.kill_connections();
    let grown = staging_bytes(&env);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!env.mirror().join("big/large.bin").exists(), "a partial file appeared under the final name");
    let r = row(&cfg, "big-1").expect("the event is journaled");
    assert_ne!(r["status"], "done", "{r}");
    env.sshd.restart();
    let target = env.mirror().join("big/large.bin");
    let start = Instant::now();
    wait_for("large.bin complete", || std::fs::metadata(&target).is_ok_and(|m| m.len() == size as u64));
    assert!(std::fs::read(&target).unwrap() == data, "large.bin differs from the remote");
    wait_for("the row done", || row(&cfg, "big-1").is_some_and(|r| r["status"] == "done"));
    assert_eq!(staging_files(&env), 0);
    no_panic(&d.log());
    println!(
        "sshd killed with {} MiB of {} MiB staged; complete {:.1} s after the restart",
        grown >> 20,
        size >> 20,
        start.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_file_changing_during_the_transfer_ends_as_the_new_content_never_a_mix() {
    let e = Embedded::start().await;
    let path = e.remote().join("chg.bin");
    let size = 3 << 20;
    let s = e.syncer();
    s.remote.conn().await.unwrap();
    let staged = |e: &Embedded| -> u64 {
        std::fs::read_dir(e.mirror().join(".sftp-mirror/staging"))
            .map(|d| d.flatten().filter_map(|x| x.metadata().ok()).map(|m| m.len()).sum())
            .unwrap_or(0)
    };

    // Three ways a file changes under a reader: rewritten in place with the same
    // size, truncated and rewritten with another size, replaced by a new inode.
    type Mutate = fn(&Path, &[u8]);
    let in_place: Mutate = |p, d| {
        let mut f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
        f.write_all(d).unwrap();
    };
    let truncate: Mutate = |p, d| std::fs::write(p, d).unwrap();
    let replace: Mutate = |p, d| {
        let tmp = p.with_extension("tmp-outside");
        std::fs::write(&tmp, d).unwrap();
        std::fs::rename(&tmp, p).unwrap();
    };
    for (round, (name, mutate, new_len)) in [
        ("in place, same size", in_place, size),
        ("truncated, new size", truncate, size + 123_457),
        ("renamed over, same size", replace, size),
    ]
    .into_iter()
    .enumerate()
    {
        let old = bytes_from(100 + round as u64, size);
        let new = bytes_from(200 + round as u64, new_len);
        e.faults().clear();
        std::fs::write(&path, &old).unwrap();
        // An old mtime, so that the change is visible even within the same second.
        set_mtime(&path, now_secs() - 3600);
        e.faults().delay_replies(Duration::from_millis(40));
        let task = tokio::spawn({
            let s = s.clone();
            async move { s.apply(&RemotePath::parse("chg.bin").unwrap()).await }
        });
        let t0 = Instant::now();
        while staged(&e) < 256 << 10 {
            assert!(t0.elapsed() < Duration::from_secs(30), "{name}: the transfer never started");
            assert!(!task.is_finished(), "{name}: the transfer finished before the change");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        mutate(&path, &new);
        if name.starts_with("renamed") {
            set_mtime(&path, now_secs());
        }
        assert!(!task.is_finished(), "{name}: the change came too late to test anything");
        e.faults().delay_replies(Duration::from_millis(2));
        let r = task.await.unwrap().unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(r, Action::Downloaded(new_len as u64), "{name}");
        let got = std::fs::read(e.mirror().join("chg.bin")).unwrap();
        assert!(got == new, "{name}: the mirror holds {} bytes that are not the new content", got.len());
        assert_eq!(staged(&e), 0, "{name}: staging left behind");
    }
}

// ---------------------------------------------------------------------------
// 3. Disk faults
// ---------------------------------------------------------------------------

/// Kilobytes used on the filesystem holding `dir`.
fn used_kib(dir: &Path) -> u64 {
    let out = std::process::Command::new("df").args(["--output=used", "-k"]).arg(dir).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap()
}

/// Waits until the row of `id` is pending after a failed attempt and returns it.
fn wait_failed_attempt(cfg: &Path, id: &str) -> serde_json::Value {
    let mut found = None;
    wait_for(&format!("{id} to fail an attempt"), || {
        found = row(cfg, id).filter(|r| r["status"] == "pending" && r["attempts"].as_u64() >= Some(1));
        found.is_some()
    });
    found.unwrap()
}

/// Between two attempts (a pending row not yet due), nothing may be left in staging.
fn check_quiet_between_attempts(env: &Env, cfg: &Path, id: &str) {
    let start = Instant::now();
    loop {
        let r1 = row(cfg, id).unwrap();
        let due = r1["next_attempt_ms"].as_i64().unwrap_or(0);
        if r1["status"] == "pending" && due > now_ms() + 300 {
            let (files, used) = (staging_files(env), used_kib(&env.mirror()));
            let r2 = row(cfg, id).unwrap();
            if r2["attempts"] == r1["attempts"] && r2["status"] == "pending" {
                assert_eq!(files, 0, "staging file left after a failed attempt");
                assert!(used < 256, "{used} KiB still used on the mirror after a failed attempt (unlinked but open?)");
                return;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(60), "never saw a moment between two attempts");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_full_or_read_only_mirror_disk_keeps_events_pending_with_a_clear_error_then_they_complete() {
    let env = Env::new();
    let disk = Tmpfs::mount(&env.mirror(), "2m");
    let data = bytes_from(5, 5 << 20);
    env.put("big5.bin", &data);
    let cfg = env.config(&Opts::default());
    let d = Daemon::start(&cfg);

    // Full disk.
    assert_eq!(d.send(&event("full-1", "file.created", "big5.bin")).status, 204);
    let r = wait_failed_attempt(&cfg, "full-1");
    let err = r["last_error"].as_str().unwrap_or_default();
    // Refused before a byte is written: the declared size does not fit.
    assert!(err.contains("not enough free space") && err.contains("big5.bin"), "unclear error: {r}");
    assert!(!env.mirror().join("big5.bin").exists(), "a partial file under the final name");
    check_quiet_between_attempts(&env, &cfg, "full-1");
    disk.remount("size=20m");
    let target = env.mirror().join("big5.bin");
    wait_for("big5.bin after the disk grew", || std::fs::read(&target).is_ok_and(|b| b == data));
    wait_for("full-1 done", || row(&cfg, "full-1").is_some_and(|r| r["status"] == "done"));

    // Read-only disk.
    env.put("ro/after.txt", b"written once the disk is writable again");
    disk.remount("ro");
    assert_eq!(d.send(&event("ro-1", "file.created", "ro/after.txt")).status, 204);
    let r = wait_failed_attempt(&cfg, "ro-1");
    let err = r["last_error"].as_str().unwrap_or_default();
    assert!(err.contains("Read-only file system"), "unclear error: {r}");
    assert!(!env.mirror().join("ro").exists());
    disk.remount("rw");
    let target = env.mirror().join("ro/after.txt");
    wait_for("ro/after.txt after remount rw", || {
        std::fs::read(&target).is_ok_and(|b| b == b"written once the disk is writable again")
    });
    wait_for("ro-1 done", || row(&cfg, "ro-1").is_some_and(|r| r["status"] == "done"));
    assert_eq!(staging_files(&env), 0);
    // The big file survived all this intact.
    assert!(std::fs::read(env.mirror().join("big5.bin")).unwrap() == data);
    no_panic(&d.log());
    drop(d);
    drop(disk);
}

// ---------------------------------------------------------------------------
// The journal seen from the command line while the daemon works
// ---------------------------------------------------------------------------

#[test]
fn looking_at_the_journal_does_not_disturb_the_running_daemon() {
    let env = Env::new();
    let size = 48 << 20;
    let data = bytes_from(11, size);
    env.put("watched.bin", &data);
    let cfg = env.config(&Opts::default());
    let d = Daemon::start(&cfg);
    assert_eq!(d.send(&event("watched-1", "file.created", "watched.bin")).status, 204);
    wait_for("the download to be under way", || staging_bytes(&env) >= 4 << 20);
    // `events` is a read-only look: the row being applied stays `running`.
    let r = row(&cfg, "watched-1").unwrap();
    let r2 = row(&cfg, "watched-1").unwrap();
    let target = env.mirror().join("watched.bin");
    wait_for("watched.bin", || std::fs::metadata(&target).is_ok_and(|m| m.len() == size as u64));
    wait_for("watched-1 done", || row(&cfg, "watched-1").is_some_and(|r| r["status"] == "done"));
    std::thread::sleep(Duration::from_millis(500));
    let done = row(&cfg, "watched-1").unwrap();
    assert_eq!(r["status"], "running", "`events` changed a running row: {r}");
    assert_eq!(r2["status"], "running", "`events` changed a running row: {r2}");
    assert_eq!(done["attempts"], 1, "the event was applied more than once: {done}");
    no_panic(&d.log());
}

// ---------------------------------------------------------------------------
// 6. Load
// ---------------------------------------------------------------------------

fn metric(body: &str, key: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.rsplit_once(' ').filter(|(k, _)| *k == key).and_then(|(_, v)| v.parse().ok()))
        .unwrap_or(0.0)
}

/// `VmRSS` (current resident set) of a process, in KiB.
fn vm_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Sends events `range` over `conns` keep-alive connections at `rate` per
/// second (paced from the phase's start); returns answers by status and latencies (µs).
fn load_phase(
    addr: SocketAddr,
    range: std::ops::Range<usize>,
    conns: usize,
    rate: u64,
    path_of: &(dyn Fn(usize) -> String + Sync),
) -> (BTreeMap<u16, usize>, Vec<u32>) {
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let first = range.start;
    let results: Vec<(BTreeMap<u16, usize>, Vec<u32>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..conns)
            .map(|t| {
                let range = range.clone();
                s.spawn(move || {
                    let mut client = KeepAlive::new(addr);
                    let mut codes = BTreeMap::new();
                    let mut lat = Vec::new();
                    for i in (range.start + t..range.end).step_by(conns) {
                        let due = start + interval * (i - first) as u32;
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        let body = event(&format!("load-{i}"), "file.created", &path_of(i));
                        let t0 = Instant::now();
                        let code = client.post(&body).unwrap_or(0);
                        lat.push(t0.elapsed().as_micros() as u32);
                        *codes.entry(code).or_insert(0) += 1;
                    }
                    (codes, lat)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let mut codes: BTreeMap<u16, usize> = BTreeMap::new();
    let mut lat: Vec<u32> = Vec::new();
    for (c, l) in results {
        for (k, v) in c {
            *codes.entry(k).or_insert(0) += v;
        }
        lat.extend(l);
    }
    (codes, lat)
}

/// Waits until the journal holds `total` done rows and nothing pending or running.
fn wait_drained(admin: SocketAddr, total: usize) -> Duration {
    let start = Instant::now();
    loop {
        let m = request(admin, "GET", "/metrics", &[], b"").body;
        let (pending, running, done) = (
            metric(&m, "sftp_mirror_journal_events{status=\"pending\"}"),
            metric(&m, "sftp_mirror_journal_events{status=\"running\"}"),
            metric(&m, "sftp_mirror_journal_events{status=\"done\"}"),
        );
        if pending == 0.0 && running == 0.0 && done as usize == total {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(120 + total as u64 / 100),
            "the queue did not drain: pending {pending}, running {running}, done {done} of {total}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn sustained_load_is_answered_204_within_memory_and_drains_completely() {
    let rate = knob("LOAD_RATE", 1000);
    let secs = knob("LOAD_SECS", 5);
    let conns = knob("LOAD_CONNS", 16) as usize;
    let total = (rate * secs) as usize;
    let half = total / 2;
    let n_files = 300;
    let env = Env::new();
    for i in 0..n_files {
        env.put(&format!("load/{}/f{i:03}.txt", i % 10), &bytes_from(1000 + i as u64, 100 + i * 13));
    }
    let cfg = env.config(&Opts { admin: "127.0.0.1:0".into(), ..Default::default() });
    let d = Daemon::start(&cfg);
    let (addr, admin, pid) = (d.addr, d.admin.unwrap(), d.child.id());
    let path_of = |i: usize| {
        let f = (i * 7919) % n_files;
        format!("load/{}/f{f:03}.txt", f % 10)
    };

    let peak = Arc::new(Mutex::new(0u64));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(k) = vm_hwm_kib(pid) {
                    let mut p = peak.lock().unwrap();
                    *p = (*p).max(k);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    // Two equal phases, each drained before the next: a daemon that keeps
    // something per event grows in the second as much as in the first; one
    // that does not has reached its working set after the first.
    let start = Instant::now();
    let (mut codes, mut lat) = load_phase(addr, 0..half, conns, rate, &path_of);
    let sending1 = start.elapsed();
    wait_drained(admin, half);
    let rss1 = vm_rss_kib(pid);
    let start2 = Instant::now();
    let (codes2, lat2) = load_phase(addr, half..total, conns, rate, &path_of);
    let sending = sending1 + start2.elapsed();
    let drained = wait_drained(admin, total);
    let rss2 = vm_rss_kib(pid);
    for (k, v) in codes2 {
        *codes.entry(k).or_insert(0) += v;
    }
    lat.extend(lat2);
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0;

    assert!(journal_rows(&cfg, &["--status", "pending", "--limit", "10"]).is_empty());
    assert!(journal_rows(&cfg, &["--status", "failed", "--limit", "10"]).is_empty());
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let hwm = vm_hwm_kib(pid).unwrap_or(0).max(*peak.lock().unwrap());

    let referenced: HashSet<String> = (0..total).map(path_of).collect();
    for rel in &referenced {
        let want = std::fs::read(env.remote().join(rel)).unwrap();
        assert_eq!(std::fs::read(env.mirror().join(rel)).ok(), Some(want), "{rel} missing or wrong in the mirror");
    }
    no_panic(&d.log());
    let m = request(admin, "GET", "/metrics", &[], b"").body;
    let growth = rss2 as i64 - rss1 as i64;
    println!(
        "load: {total} events over {conns} connections in {:.1} s of sending ({:.0}/s, asked {rate}/s); \
         answers {codes:?}; latency p50 {:.1} ms p99 {:.1} ms max {:.1} ms; daemon VmHWM {:.1} MiB, \
         VmRSS {:.1} MiB after the first half and {:.1} MiB after the second ({:+.1} MiB); \
         drained {:.1} s after the last send; {} distinct files, {} downloads",
        sending.as_secs_f64(),
        total as f64 / sending.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        pct(1.0),
        hwm as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        rss2 as f64 / 1024.0,
        growth as f64 / 1024.0,
        drained.as_secs_f64(),
        referenced.len(),
        metric(&m, "sftp_mirror_downloaded_files_total"),
    );
    assert_eq!(codes.get(&204).copied().unwrap_or(0), total, "not every event was answered 204: {codes:?}");
    assert!(hwm < 200 * 1024, "daemon peak RSS {hwm} KiB exceeds 200 MiB");
    // Memory must not grow with the number of events handled (a leak per event).
    assert!(
        growth < 8 * 1024,
        "the daemon's memory grew by {growth} KiB over {} more events: something is kept per event",
        total - half
    );
}

#[test]
fn a_broken_journal_does_not_make_the_dispatcher_spin() {
    let mut env = Env::new();
    env.put("later.txt", b"waits for the server");
    let cfg = env.config(&Opts::default());
    let d = Daemon::start(&cfg);
    // A row in backoff: the SFTP server is gone, so its apply fails.
    env.sshd.stop();
    assert_eq!(d.send(&event("spin-1", "file.created", "later.txt")).status, 204);
    wait_failed_attempt(&cfg, "spin-1");
    // Then the journal breaks: with its WAL gone, every request fails at once.
    std::fs::remove_file(env.journal().with_extension("db-wal")).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let errors = d.log().lines().filter(|l| l.contains("cannot claim events")).count();
    // Backoff 1 s, 2 s, 4 s …: a handful of lines, not one per loop turn.
    assert!(
        errors <= 5,
        "{errors} claim errors in 4 s:\n{}",
        d.log().lines().rev().take(5).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn an_apply_that_panics_fails_its_event_and_frees_its_slot() {
    let env = Env::new();
    env.put("boom.txt", b"its apply panics");
    env.put("after.txt", b"applied after the panic");
    // One apply at a time: a slot that stayed taken would stop everything.
    let cfg = env.config(&Opts { concurrency: 1, ..Default::default() });
    let d = Daemon::start_with_env(&cfg, &[("SFTP_MIRROR_TEST_PANIC_ON", "boom.txt")]);
    assert_eq!(d.send(&event("boom-1", "file.created", "boom.txt")).status, 204);
    let r = wait_failed_attempt(&cfg, "boom-1");
    assert!(r["last_error"].as_str().unwrap_or_default().contains("panicked"), "{r}");
    assert_eq!(d.send(&event("after-1", "file.created", "after.txt")).status, 204);
    wait_for("the next event", || std::fs::read(env.mirror().join("after.txt")).is_ok());
}

#[test]
fn a_journal_the_daemon_cannot_write_names_the_file_the_user_and_the_fix_and_exits_2() {
    let env = Env::new();
    let state = env.journal().parent().unwrap().to_owned();
    let disk = Tmpfs::mount(&state, "8m");
    let cfg = env.config(&Opts::default());
    // The journal exists (as after a run), then its file system turns read-only.
    let out = Command::new(bin()).arg("--config").arg(&cfg).args(["events", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    disk.remount("ro");
    let out = Command::new(bin()).arg("--config").arg(&cfg).arg("serve").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a setup problem, not worth a restart loop: {err}");
    assert!(
        err.contains(&env.journal().display().to_string()) && err.contains("uid") && err.contains("chown"),
        "{err}"
    );
    disk.remount("rw");
}
