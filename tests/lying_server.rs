//! The embedded server's hostile modes (SPEC §7: nothing the server says is
//! trusted to be bounded) against our client: lying names and sizes, endless
//! and self-referencing listings, unanswered READs, capped READ replies, and
//! downloads interrupted by a dropped connection or SIGKILL that resume.

use crate::common::*;
use sftp_mirror::event::RemotePath;
use sftp_mirror::sync::{reconcile, Action};
use sftp_mirror::testkit::Lies;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn p(s: &str) -> RemotePath {
    RemotePath::parse(s).unwrap()
}

/// Runs the binary to its end; returns (exit status, stderr, peak RSS in KiB).
fn run_measured(cfg: &std::path::Path, args: &[&str], within: Duration) -> (std::process::ExitStatus, String, u64) {
    let mut child = Command::new(bin())
        .arg("--config")
        .arg(cfg)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let start = Instant::now();
    let mut peak = 0;
    let status = loop {
        if let Some(kib) = vm_hwm_kib(pid) {
            peak = peak.max(kib);
        }
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > within {
            let _ = child.kill();
            panic!("{args:?} still running after {within:?}: {}", log.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, log.join().unwrap(), peak)
}

#[tokio::test]
async fn names_no_directory_can_hold_are_skipped_and_a_self_listing_directory_ends() {
    let e = Embedded::start().await;
    e.put("d/a.txt", b"a");
    e.put("d/b.txt", b"b");
    // "d" lists "", "x/y", "..", a second "a.txt", and itself ("d") twice.
    e.faults().lie(Lies {
        extra_dir_entries: vec![(
            "/d".into(),
            vec!["".into(), "x/y".into(), "..".into(), "a.txt".into(), "d".into(), "d".into()],
        )],
        ..Default::default()
    });
    let s = e.syncer();
    // An event on the directory: its subtree is brought in line, and it ends.
    assert_eq!(s.apply(&p("d/")).await.unwrap(), Action::MadeDir);
    assert_eq!(std::fs::read(e.mirror().join("d/a.txt")).unwrap(), b"a");
    assert!(!e.mirror().join("x").exists() && !e.mirror().join("d/x").exists(), "a name with '/' was not split");
    // The made-up "d/d/d/…" chain stops at the depth bound.
    let depth = |root: &std::path::Path| {
        let mut n = 0;
        let mut at = root.join("d");
        while at.join("d").is_dir() {
            n += 1;
            at = at.join("d");
        }
        n
    };
    // Each listed directory is asked for again before it is created (the one
    // tree diff's rule): the server's own stat does not know "d/d", so the
    // made-up chain is never built, and the walk into it ends at once.
    let levels = depth(&e.mirror());
    assert_eq!(levels, 0, "{levels} levels of a directory the server's stat denies");
    // And a whole pass over it ends, converged, without failures.
    let r = reconcile::run(&s, reconcile::Options::default(), 1.0, 4, &reconcile::Quiet, &mut |_| {}).await.unwrap();
    assert_eq!(r.failed, 0, "{r:?}");
    assert_eq!(std::fs::read(e.mirror().join("d/b.txt")).unwrap(), b"b");
}

#[tokio::test]
async fn a_declared_size_beyond_free_space_is_refused_before_a_byte_is_written() {
    let e = Embedded::start().await;
    e.put("huge.bin", b"small really");
    e.put("large.bin", b"small too");
    e.faults().lie(Lies { sizes: vec![("huge".into(), 1 << 62), ("large".into(), 1 << 44)], ..Default::default() });
    let s = e.syncer();
    for name in ["huge.bin", "large.bin"] {
        let err = s.apply(&p(name)).await.unwrap_err().to_string();
        assert!(err.contains("not enough free space") && err.contains(name), "{err}");
        assert!(!e.mirror().join(name).exists());
    }
    let staged: Vec<_> = std::fs::read_dir(e.mirror().join(".sftp-mirror/staging")).unwrap().flatten().collect();
    assert!(staged.is_empty(), "nothing staged: {staged:?}");
    assert_eq!(e.faults().bytes_served(), 0, "not a byte was read");
}

// Multi-threaded: the embedded server keeps serving while the test thread waits on the binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_listings_and_sizes_neither_crash_nor_grow_the_binary() {
    let e = Embedded::start().await;
    e.put("ok.txt", b"fine");
    e.put("endless/seed.txt", b"x");
    e.put("loop/z.txt", b"z");
    e.put("claims/big.bin", b"tiny");
    e.faults().lie(Lies {
        endless_listings: vec!["/endless".into()],
        extra_dir_entries: vec![("/loop".into(), vec!["loop".into(), "loop".into(), "".into()])],
        sizes: vec![("claims/big".into(), 1 << 62)],
        ..Default::default()
    });
    let cfg = e.config_file("5s");
    let (status, log, peak_kib) = run_measured(&cfg, &["reconcile", "--json"], Duration::from_secs(120));
    // The endless listing fails the pass (exit 1, a clear reason); nothing crashed.
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("more than 100000 entries"), "{log}");
    assert!(peak_kib < 64 * 1024, "peak RSS {peak_kib} KiB");
}

#[tokio::test]
async fn an_unanswered_read_fails_the_transfer_within_the_timeout_and_one_reconnect() {
    let mut e = Embedded::start().await;
    e.settings.sftp.timeout = Duration::from_secs(1);
    e.put("stalled.bin", &pattern(1 << 20));
    e.faults().lie(Lies { stall_reads: true, ..Default::default() });
    let s = e.syncer();
    let start = Instant::now();
    let err = s.apply(&p("stalled.bin")).await.unwrap_err().to_string();
    let took = start.elapsed();
    assert!(err.contains("timed out"), "{err}");
    // Two stalls of 1 s with one reconnect between; a generous bound for a loaded machine.
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(!e.mirror().join("stalled.bin").exists());
}

#[tokio::test]
async fn replies_capped_at_32_kib_are_read_with_contiguous_requests() {
    let e = Embedded::start().await;
    let data = pattern(8 << 20);
    e.put("capped.bin", &data);
    e.put("second.bin", &data[..3 << 20]);
    e.faults().short_reads(Some(32 * 1024));
    let s = e.syncer();
    assert_eq!(s.apply(&p("capped.bin")).await.unwrap(), Action::Downloaded(8 << 20));
    assert_eq!(s.apply(&p("second.bin")).await.unwrap(), Action::Downloaded(3 << 20));
    assert_eq!(std::fs::read(e.mirror().join("capped.bin")).unwrap(), data);
    // One probe READ learns the cap; after it no remainder is asked out of order.
    assert_eq!(e.faults().out_of_order_reads(), 0);
    assert_eq!(e.faults().bytes_served(), (8 << 20) + (3 << 20), "every byte read once");
}

/// Size of the resume tests' file: 1 GiB, as the issue measures; smaller with
/// `SFTP_MIRROR_TEST_RESUME_MIB` on a slow machine.
fn resume_size() -> usize {
    (knob("SFTP_MIRROR_TEST_RESUME_MIB", 1024) as usize) << 20
}

#[tokio::test]
async fn a_download_cut_at_90_percent_by_a_dropped_connection_resumes() {
    let e = Embedded::start().await;
    let size = resume_size();
    let data = bytes_from(9, size);
    e.put("cut.bin", &data);
    e.faults().drop_once_after_read_bytes(size as u64 / 10 * 9);
    let s = e.syncer();
    assert_eq!(s.apply(&p("cut.bin")).await.unwrap(), Action::Downloaded(size as u64));
    assert!(e.server.connections_accepted() >= 2, "the connection was dropped and replaced");
    let served = e.faults().bytes_served();
    assert!(served <= size as u64 * 115 / 100, "read {served} bytes for a {size}-byte file");
    assert!(std::fs::read(e.mirror().join("cut.bin")).unwrap() == data, "byte-identical");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_at_90_percent_by_sigkill_resumes_after_restart() {
    let e = Embedded::start().await;
    let size = resume_size();
    let data = bytes_from(10, size);
    e.put("killed.bin", &data);
    let cfg = e.config_file("10s");
    let mut d = Daemon::start(&cfg);
    assert_eq!(d.send(&event("k1", "file.created", "killed.bin")).status, 204);
    // SIGKILL once about 90% of the file went out.
    let start = Instant::now();
    while e.faults().bytes_served() < size as u64 / 10 * 9 {
        assert!(start.elapsed() < CONVERGE, "the download never got to 90%: {}", d.log());
        std::thread::sleep(Duration::from_millis(5));
    }
    d.kill();
    let before = e.faults().bytes_served();
    let d = Daemon::start(&cfg);
    let target = e.mirror().join("killed.bin");
    wait_for("the resumed download", || std::fs::metadata(&target).is_ok_and(|m| m.len() == size as u64));
    let again = e.faults().bytes_served() - before;
    assert!(again <= size as u64 * 15 / 100, "read {again} bytes again of {size} (log: {})", d.log());
    assert!(d.log().contains("resuming an interrupted download"), "{}", d.log());
    assert!(std::fs::read(&target).unwrap() == data, "byte-identical");
}
