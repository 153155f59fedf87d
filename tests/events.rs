//! Events end to end: real binary, real sshd, bytes on disk.

use crate::common::*;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

#[test]
fn created_and_deleted_events_make_the_mirror_match() {
    let env = Env::new();
    env.put("top.txt", b"top");
    env.put("dir/sub/nested.txt", b"nested");
    env.put("caf\u{e9}/my report+1.txt", "unicode ✓".as_bytes());
    std::fs::create_dir_all(env.remote().join("empty dir")).unwrap();
    let d = env.serve(&Opts::default());
    for (id, path) in
        [("c1", "top.txt"), ("c2", "dir/sub/nested.txt"), ("c3", "caf%C3%A9/my+report%2b1.txt"), ("c4", "empty+dir/")]
    {
        assert_eq!(d.send(&event(id, "file.created", path)).status, 204, "{path}");
    }
    wait_mirror_equals_remote(&env);
    assert_eq!(std::fs::read(env.mirror().join("café/my report+1.txt")).unwrap(), "unicode ✓".as_bytes());
    assert!(env.mirror().join("empty dir").is_dir());

    // Deletions: a file and a whole tree, each only after the remote lost it.
    std::fs::remove_file(env.remote().join("top.txt")).unwrap();
    std::fs::remove_dir_all(env.remote().join("dir")).unwrap();
    assert_eq!(d.send(&event("d1", "file.deleted", "top.txt")).status, 204);
    assert_eq!(d.send(&event("d2", "file.deleted", "dir/")).status, 204);
    wait_mirror_equals_remote(&env);
    assert!(!env.mirror().join("dir").exists());
    assert_eq!(staging_files(&env), 0);
}

#[test]
fn events_are_hints_the_remote_is_the_truth() {
    let env = Env::new();
    env.put("still-here.txt", b"still here");
    let d = env.serve(&Opts::default());
    assert_eq!(d.send(&event("a", "file.created", "still-here.txt")).status, 204);
    wait_for("first copy", || env.mirror().join("still-here.txt").exists());

    // A forged delete for a file the remote still has: it stays.
    assert_eq!(d.send(&event("forged", "file.deleted", "still-here.txt")).status, 204);
    // A created event for a file the remote lacks: nothing appears.
    assert_eq!(d.send(&event("ghost", "file.created", "ghost.txt")).status, 204);
    // Reversed order: the delete arrives before the create of a file that exists.
    env.put("late.txt", b"late");
    assert_eq!(d.send(&event("r2", "file.deleted", "late.txt")).status, 204);
    assert_eq!(d.send(&event("r1", "file.created", "late.txt")).status, 204);
    wait_for("all four events done", || {
        let out = env.run(&Opts::default(), &["events", "--status", "done", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap().as_array().unwrap().len() == 5
    });
    assert_eq!(std::fs::read(env.mirror().join("still-here.txt")).unwrap(), b"still here");
    assert!(!env.mirror().join("ghost.txt").exists());
    assert_eq!(std::fs::read(env.mirror().join("late.txt")).unwrap(), b"late");
    wait_mirror_equals_remote(&env);
}

#[test]
fn a_hundred_duplicates_download_once() {
    let env = Env::new();
    env.put("dup.txt", b"once");
    let cfg = env.config(&Opts::default());
    let d = Daemon::start(&cfg);
    for _ in 0..100 {
        assert_eq!(d.send(&event("same-id", "file.created", "dup.txt")).status, 204);
    }
    // One row for the id, done once (duplicates are answered, not queued).
    wait_for("the event done", || {
        journal_rows(&cfg, &[]).iter().any(|r| r["id"] == "same-id" && r["status"] == "done")
    });
    assert_eq!(journal_rows(&cfg, &[]).len(), 1);
    wait_for("the change in the log", || d.log().contains("downloaded 4 B"));
    let downloads = d.log().lines().filter(|l| l.contains(" INFO ") && l.contains("downloaded 4 B")).count();
    assert_eq!(downloads, 1, "{}", d.log());
}

#[test]
fn a_64_mib_file_arrives_byte_identical() {
    let env = Env::new();
    let data: Vec<u8> = (0..64u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    env.put("big.bin", &data);
    let d = env.serve(&Opts::default());
    assert_eq!(d.send(&event("big", "file.created", "big.bin")).status, 204);
    wait_mirror_equals_remote(&env);
    assert_eq!(std::fs::read(env.mirror().join("big.bin")).unwrap(), data);
}

#[test]
fn a_symlink_planted_in_the_mirror_is_never_followed_out() {
    let env = Env::new();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("victim.txt"), b"do not touch").unwrap();
    std::fs::create_dir_all(env.mirror()).unwrap();
    std::os::unix::fs::symlink(outside.path(), env.mirror().join("link")).unwrap();
    env.put("link/victim.txt", b"from the remote");
    env.put("link/new.txt", b"new");
    let d = env.serve(&Opts::default());
    assert_eq!(d.send(&event("s1", "file.created", "link/victim.txt")).status, 204);
    assert_eq!(d.send(&event("s2", "file.created", "link/new.txt")).status, 204);
    wait_mirror_equals_remote(&env);
    assert_eq!(std::fs::read(outside.path().join("victim.txt")).unwrap(), b"do not touch");
    assert!(!outside.path().join("new.txt").exists());
    assert!(env.mirror().join("link").symlink_metadata().unwrap().is_dir(), "the link was replaced by a directory");

    // A delete through a link removes nothing outside.
    std::os::unix::fs::symlink(outside.path(), env.mirror().join("link2")).unwrap();
    assert_eq!(d.send(&event("s3", "file.deleted", "link2/victim.txt")).status, 204);
    wait_for("s3 applied", || {
        let out = env.run(&Opts::default(), &["events", "--json"]);
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        rows.iter().any(|r| r["id"] == "s3" && r["status"] == "done")
    });
    assert_eq!(std::fs::read(outside.path().join("victim.txt")).unwrap(), b"do not touch");
}

/// Checks every file that shows up under a final name against the remote copy.
fn watch_for_partial_files(env: &Env, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(usize, Vec<String>)> {
    let (remote, mirror) = (env.remote().to_owned(), env.mirror());
    std::thread::spawn(move || {
        let mut checked = 0;
        let mut bad = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            for (rel, hash) in tree(&mirror) {
                if hash == "dir" {
                    continue;
                }
                checked += 1;
                let want = tree(&remote).get(&rel).cloned();
                if want.as_deref() != Some(hash.as_str()) {
                    bad.push(rel);
                }
            }
        }
        (checked, bad)
    })
}

#[test]
fn sigkill_after_204_loses_nothing_and_shows_no_partial_file() {
    let env = Env::new();
    for i in 0..40 {
        // Big enough that some transfers are in flight when the daemon dies.
        env.put(&format!("k/f{i:02}.bin"), &vec![i as u8; 256 * 1024 + i]);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_for_partial_files(&env, stop.clone());
    let mut d = env.serve(&Opts { concurrency: 2, ..Default::default() });
    let ok = AtomicUsize::new(0);
    for i in 0..40 {
        if d.send(&event(&format!("k{i}"), "file.created", &format!("k/f{i:02}.bin"))).status == 204 {
            ok.fetch_add(1, Ordering::Relaxed);
        }
    }
    assert_eq!(ok.load(Ordering::Relaxed), 40);
    d.kill();
    let before = tree(&env.mirror()).len();
    let _d = env.serve(&Opts::default());
    wait_mirror_equals_remote(&env);
    stop.store(true, Ordering::Relaxed);
    let (checked, bad) = watcher.join().unwrap();
    assert!(bad.is_empty(), "partial or wrong files seen under final names: {bad:?}");
    assert!(checked > 0);
    assert_eq!(staging_files(&env), 0);
    eprintln!("files present at the kill: {before} entries; all 40 arrived after restart");
}

#[test]
fn a_directory_event_brings_the_whole_subtree_in_line() {
    let env = Env::new();
    env.put("d/old.txt", b"old");
    env.put("d/sub/deep.txt", b"deep");
    let d = env.serve(&Opts::default());
    assert_eq!(d.send(&event("a1", "file.created", "d/old.txt")).status, 204);
    assert_eq!(d.send(&event("a2", "file.created", "d/sub/deep.txt")).status, 204);
    wait_mirror_equals_remote(&env);

    // The directory is removed and re-created with other content; only the
    // directory's own events arrive (one delete, one create, coalesced or not).
    std::fs::remove_dir_all(env.remote().join("d")).unwrap();
    env.put("d/new.txt", b"new");
    assert_eq!(d.send(&event("a3", "file.deleted", "d/")).status, 204);
    assert_eq!(d.send(&event("a4", "file.created", "d/")).status, 204);
    wait_mirror_equals_remote(&env);
    assert!(!env.mirror().join("d/old.txt").exists() && !env.mirror().join("d/sub").exists());
    assert_eq!(std::fs::read(env.mirror().join("d/new.txt")).unwrap(), b"new");
}

/// Two same-size versions of `name` that both carry `mtime`, each announced by
/// its own `file.created`: the second must land, though size and mtime match.
fn rewrite_with_the_same_size_and_mtime(name: &str, mtime: std::time::SystemTime, v1: &[u8], v2: &[u8]) {
    let env = Env::new();
    let put = |data: &[u8]| {
        env.put(name, data);
        std::fs::File::options().write(true).open(env.remote().join(name)).unwrap().set_modified(mtime).unwrap();
    };
    let mirrored = || std::fs::read(env.mirror().join(name)).unwrap_or_default();
    put(v1);
    let d = env.serve(&Opts::default());
    assert_eq!(d.send(&event("v1", "file.created", name)).status, 204);
    wait_for("the first version", || mirrored() == v1);
    put(v2); // same size, same mtime: only the event says it changed
    assert_eq!(d.send(&event("v2", "file.created", name)).status, 204);
    wait_for("the second version, announced only by its event", || mirrored() == v2);
    // A duplicate of that event is answered and changes nothing more.
    assert_eq!(d.send(&event("v2", "file.created", name)).status, 204);
}

#[test]
fn a_same_size_rewrite_within_the_same_second_is_fetched_on_its_event() {
    // SFTP mtimes are whole seconds. Both versions carry the same one, a little
    // ahead so that our first copy is surely made within that second, as it is
    // for an upload followed at once by its event.
    let mtime = std::time::SystemTime::now() + std::time::Duration::from_secs(2);
    rewrite_with_the_same_size_and_mtime("racy.txt", mtime, b"first", b"again");
}

#[test]
fn an_event_received_after_our_copy_fetches_again_even_with_the_same_size_and_an_old_mtime() {
    // A server that lets clients set mtimes: both versions claim the same old
    // mtime, so size and mtime cannot tell them apart (and the copy is not racy).
    let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
    rewrite_with_the_same_size_and_mtime("kept.txt", old, b"version one", b"version two");
}

#[test]
fn an_event_that_would_empty_a_directory_is_held_until_retry() {
    let env = Env::new();
    for i in 0..100 {
        env.put(&format!("d/f{i:03}.txt"), b"precious");
    }
    let o = Opts::default();
    assert_eq!(env.run(&o, &["reconcile"]).status.code(), Some(0));
    let cfg = env.config(&o);
    let d = Daemon::start(&cfg);
    // The remote directory is emptied (a mistake, a half-finished sync …).
    for i in 0..100 {
        std::fs::remove_file(env.remote().join(format!("d/f{i:03}.txt"))).unwrap();
    }
    assert_eq!(d.send(&event("empty-d", "file.created", "d/")).status, 204);
    let row = |id: &str| journal_rows(&cfg, &[]).into_iter().find(|r| r["id"] == id);
    wait_for("the event to be held", || row("empty-d").is_some_and(|r| r["status"] == "failed"));
    let held = row("empty-d").unwrap();
    assert!(held["last_error"].as_str().unwrap().contains("held by the event delete guard"), "{held}");
    assert_eq!(std::fs::read_dir(env.mirror().join("d")).unwrap().count(), 100, "nothing was deleted");
    // A person decides: retry applies it.
    let out = Command::new(bin()).arg("--config").arg(&cfg).args(["retry", "empty-d"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("the retried event", || row("empty-d").is_some_and(|r| r["status"] == "done"));
    assert_eq!(std::fs::read_dir(env.mirror().join("d")).unwrap().count(), 0);
}

#[test]
fn every_change_is_logged_once_with_its_path_and_event_and_events_shows_the_outcome() {
    let env = Env::new();
    env.put("pre.txt", b"reconciled");
    let cfg = env.config(&Opts { on_start: true, ..Default::default() });
    let d = Daemon::start(&cfg);
    wait_for("the start-up pass", || env.mirror().join("pre.txt").exists());
    env.put("log.txt", b"nine byte");
    assert_eq!(d.send(&event("lg1", "file.created", "log.txt")).status, 204);
    let row = |id: &str| journal_rows(&cfg, &[]).into_iter().find(|r| r["id"] == id);
    wait_for("the event done", || row("lg1").is_some_and(|r| r["status"] == "done"));
    assert_eq!(row("lg1").unwrap()["outcome"], "downloaded 9 B");
    wait_for("the change in the log", || d.log().contains("downloaded 9 B"));
    let log = d.log();
    let info = |l: &&str| l.contains(" INFO ");
    let lines: Vec<&str> = log.lines().filter(info).filter(|l| l.contains("downloaded 9 B")).collect();
    assert_eq!(lines.len(), 1, "logged once at info: {log}");
    assert!(lines[0].contains("log.txt") && lines[0].contains("lg1"), "{}", lines[0]);
    let pre: Vec<&str> =
        log.lines().filter(info).filter(|l| l.contains("downloaded") && l.contains("pre.txt")).collect();
    assert!(pre.len() == 1 && pre[0].contains("reconcile"), "{pre:?}");
    assert!(!log.contains("Downloaded("), "no Rust Debug values in the log: {log}");
}

#[test]
fn events_for_one_path_waiting_together_are_applied_once() {
    let env = Env::new();
    env.put("hot.bin", &pattern(4 << 20));
    // The first download takes about two seconds (bwlimit): every later
    // event for the path is received, and waits, while it runs (half a second
    // was too short for 50 fsynced requests on a loaded machine: 4 applies).
    let o = Opts { admin: "127.0.0.1:0".into(), extra_mirror: "bwlimit = \"2MiB\"".into(), ..Default::default() };
    let cfg = env.config(&o);
    let d = Daemon::start(&cfg);
    for i in 0..50 {
        assert_eq!(d.send(&event(&format!("hot-{i}"), "file.created", "hot.bin")).status, 204);
    }
    wait_for("all 50 done", || {
        let rows = journal_rows(&cfg, &["--limit", "1000"]);
        rows.len() == 50 && rows.iter().all(|r| r["status"] == "done")
    });
    let m = request(d.admin.unwrap(), "GET", "/metrics", &[], b"").body;
    let applies: f64 = m
        .lines()
        .filter(|l| l.starts_with("sftp_mirror_applies_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    // One apply for the first event, one for the rest folded together (a
    // claim boundary may split them once more): not fifty.
    assert!((1.0..=3.0).contains(&applies), "{applies} applies for 50 events on one path:\n{m}");
    assert_eq!(std::fs::read(env.mirror().join("hot.bin")).unwrap(), pattern(4 << 20));
}
