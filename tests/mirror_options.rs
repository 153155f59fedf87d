//! SPEC §8 against a real sshd: `mirror.bwlimit` (all downloads together,
//! re-read on SIGHUP) and `mirror.trash`.

use crate::common::*;

/// The `ms=` of the info line that logged `path`'s download.
fn download_ms(log: &str, path: &str) -> u64 {
    let line = log
        .lines()
        .find(|l| l.contains("action=\"download\"") && l.contains(&format!("path={path} ")))
        .unwrap_or_else(|| panic!("no download line for {path}:\n{log}"));
    let ms = line.split("ms=").nth(1).and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next());
    ms.and_then(|m| m.parse().ok()).unwrap_or_else(|| panic!("no ms= in {line}"))
}

/// Asserts that `bytes` took `ms` at `rate` bytes per second, within 15%.
fn assert_paced(bytes: u64, ms: u64, rate: u64, what: &str) {
    let expected_ms = bytes as f64 * 1000.0 / rate as f64;
    let got_rate = bytes as f64 * 1000.0 / ms as f64;
    assert!(
        (ms as f64 - expected_ms).abs() <= 0.15 * expected_ms,
        "{what}: {bytes} B in {ms} ms = {got_rate:.0} B/s; the limit is {rate} B/s (expected {expected_ms:.0} ms ± 15%)"
    );
}

#[test]
fn bwlimit_paces_all_downloads_together_and_an_unlimited_run_is_not_slowed() {
    let env = Env::new();
    // Two files at once share the budget: 2 x 6 MiB at 4 MiB/s is 3 s for both.
    env.put("a.bin", &pattern(6 << 20));
    env.put("b.bin", &pattern(6 << 20));
    let limited = Opts { extra_mirror: "bwlimit = \"4MiB\"".into(), ..Default::default() };
    let out = env.run(&limited, &["reconcile", "--json"]);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert_eq!(std::fs::read(env.mirror().join("b.bin")).unwrap(), pattern(6 << 20));
    let slowest = download_ms(&log, "a.bin").max(download_ms(&log, "b.bin"));
    assert_paced(12 << 20, slowest, 4 << 20, "two files under one limit");

    std::fs::remove_dir_all(env.mirror()).unwrap();
    let out = env.run(&Opts::default(), &["reconcile", "--json"]);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{log}");
    let unlimited = download_ms(&log, "a.bin").max(download_ms(&log, "b.bin"));
    // Loopback carries hundreds of MiB/s: far from the 3 s the limit imposed.
    assert!(unlimited * 3 < slowest, "unlimited took {unlimited} ms, limited {slowest} ms");
}

#[test]
fn sighup_changes_the_bandwidth_limit_of_a_running_daemon() {
    let env = Env::new();
    env.put("first.bin", &pattern(4 << 20));
    env.put("second.bin", &pattern(16 << 20));
    let o = Opts { extra_mirror: "bwlimit = \"2MiB\"".into(), ..Default::default() };
    let cfg = env.config(&o);
    let d = Daemon::start(&cfg);
    assert_eq!(d.send(&event("bw1", "file.created", "first.bin")).status, 204);
    wait_for("first.bin", || env.mirror().join("first.bin").exists());
    wait_for("its log line", || d.log().contains("path=first.bin action=\"download\""));
    assert_paced(4 << 20, download_ms(&d.log(), "first.bin"), 2 << 20, "before SIGHUP");

    let text = std::fs::read_to_string(&cfg).unwrap().replace("bwlimit = \"2MiB\"", "bwlimit = \"8MiB\"");
    std::fs::write(&cfg, text).unwrap();
    assert!(std::process::Command::new("kill").arg("-HUP").arg(d.child.id().to_string()).status().unwrap().success());
    wait_for("the reload", || d.log().contains("mirror.bwlimit now 8.0 MiB/s"));
    assert_eq!(d.send(&event("bw2", "file.created", "second.bin")).status, 204);
    wait_for("second.bin", || env.mirror().join("second.bin").exists());
    wait_for("its log line", || d.log().contains("path=second.bin action=\"download\""));
    assert_paced(16 << 20, download_ms(&d.log(), "second.bin"), 8 << 20, "after SIGHUP");
}

fn today() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()[..10].to_owned()
}

/// Files below `dir`, relative, with their content.
fn files(dir: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    walk(dir, |rel, p, t| {
        if t.is_file() {
            out.insert(rel, std::fs::read_to_string(p).unwrap_or_default());
        }
    });
    out
}

fn set_remote(env: &Env, rel: &str, data: &str, mtime: i64) {
    env.put(rel, data.as_bytes());
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime as u64);
    std::fs::File::options().write(true).open(env.remote().join(rel)).unwrap().set_modified(t).unwrap();
}

#[test]
fn with_a_trash_deleted_and_overwritten_files_are_kept_by_date_and_old_days_are_pruned() {
    let env = Env::new();
    set_remote(&env, "report.csv", "version 1", 1_700_000_000);
    set_remote(&env, "old/a.txt", "a", 1_700_000_000);
    set_remote(&env, "old/deep/b.txt", "b", 1_700_000_000);
    set_remote(&env, "keep.txt", "never touched", 1_700_000_000);
    let o = Opts { extra_mirror: "trash = \"7d\"\nmax_delete_ratio = 1.0".into(), ..Default::default() };
    assert_eq!(env.run(&o, &["reconcile"]).status.code(), Some(0));

    // The remote changes: one file rewritten, one folder deleted.
    set_remote(&env, "report.csv", "version 2", 1_700_000_100);
    std::fs::remove_dir_all(env.remote().join("old")).unwrap();
    let trash = env.mirror().join(".sftp-mirror/trash");
    std::fs::create_dir_all(trash.join("2020-01-01")).unwrap();
    std::fs::write(trash.join("2020-01-01/ancient.txt"), "pruned").unwrap();

    let dry = env.run(&o, &["reconcile", "--dry-run"]);
    let plan = String::from_utf8_lossy(&dry.stdout).into_owned();
    assert!(plan.contains("update   report.csv (9 B) → trash"), "{plan}");
    assert!(plan.contains("delete   old/ (4 entries) → trash"), "{plan}");
    assert!(!plan.contains("keep.txt"), "{plan}");
    assert!(trash.join("2020-01-01").exists(), "a dry run prunes nothing");

    let out = env.run(&o, &["reconcile"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    // The mirror equals the remote; the trash holds exactly what left it.
    assert_eq!(tree(&env.mirror()), tree(env.remote()));
    let day = today();
    let kept = files(&trash);
    let expected: std::collections::BTreeMap<String, String> = [
        (format!("{day}/report.csv"), "version 1"),
        (format!("{day}/old/a.txt"), "a"),
        (format!("{day}/old/deep/b.txt"), "b"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_owned()))
    .collect();
    assert_eq!(kept, expected, "nothing else (keep.txt was never deleted; 2020-01-01 is past 7d)");

    // The trash is not mirror content: the next pass has nothing to do.
    let again = env.run(&o, &["reconcile", "--dry-run"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("plan: 0 change(s)"), "{:?}", again);
}

#[test]
fn an_event_delete_and_a_directory_replaced_by_a_file_go_to_the_trash_in_the_daemon() {
    let env = Env::new();
    set_remote(&env, "inbox/x.txt", "x", 1_700_000_000);
    set_remote(&env, "thing/inner.txt", "inner", 1_700_000_000);
    let o = Opts { on_start: true, extra_mirror: "trash = \"1d\"".into(), ..Default::default() };
    let d = env.serve(&o);
    wait_mirror_equals_remote(&env);

    std::fs::remove_file(env.remote().join("inbox/x.txt")).unwrap();
    assert_eq!(d.send(&event("t1", "file.deleted", "inbox/x.txt")).status, 204);
    std::fs::remove_dir_all(env.remote().join("thing")).unwrap();
    set_remote(&env, "thing", "now a file", 1_700_000_200);
    assert_eq!(d.send(&event("t2", "file.created", "thing")).status, 204);
    wait_mirror_equals_remote(&env);
    let day = today();
    let trash = env.mirror().join(".sftp-mirror/trash");
    wait_for("the trash", || files(&trash).len() == 2);
    let kept = files(&trash);
    assert_eq!(kept.get(&format!("{day}/inbox/x.txt")).map(String::as_str), Some("x"), "{kept:?}");
    assert_eq!(kept.get(&format!("{day}/thing/inner.txt")).map(String::as_str), Some("inner"), "{kept:?}");
}
