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
    env.put("second.bin", &pattern(8 << 20));
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
    assert_paced(8 << 20, download_ms(&d.log(), "second.bin"), 8 << 20, "after SIGHUP");
}
