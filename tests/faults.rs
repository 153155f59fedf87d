//! Each fault mode of the embedded server against our client: it either
//! reconnects and completes byte-identical, or fails with a clear error and
//! leaves no partial file.

use crate::common::*;
use russh_sftp::protocol::StatusCode;
use sftp_mirror::event::RemotePath;
use sftp_mirror::sync::reconcile;
use sftp_mirror::sync::Action;
use sftp_mirror::testkit::Request;
use std::time::Duration;

fn p(s: &str) -> RemotePath {
    RemotePath::parse(s).unwrap()
}

fn staging_empty(e: &Embedded) -> bool {
    std::fs::read_dir(e.mirror().join(".sftp-mirror/staging")).map(|d| d.count() == 0).unwrap_or(true)
}

#[tokio::test]
async fn a_connection_dropped_mid_download_is_replaced_and_the_file_completes() {
    let e = Embedded::start().await;
    let data = pattern(4 << 20);
    e.put("big.bin", &data);
    e.faults().drop_once_after_read_bytes(1 << 20);
    let s = e.syncer();
    let r = s.apply(&p("big.bin")).await.unwrap();
    assert_eq!(r, Action::Downloaded(4 << 20));
    assert_eq!(std::fs::read(e.mirror().join("big.bin")).unwrap(), data);
    assert!(e.server.connections_accepted() >= 2, "a new connection was made");
    assert!(staging_empty(&e));
}

#[tokio::test]
async fn short_reads_still_give_identical_bytes() {
    let e = Embedded::start().await;
    let data = pattern(700_001);
    e.put("odd.bin", &data);
    e.faults().short_reads(Some(1000));
    let s = e.syncer();
    assert_eq!(s.apply(&p("odd.bin")).await.unwrap(), Action::Downloaded(700_001));
    assert_eq!(std::fs::read(e.mirror().join("odd.bin")).unwrap(), data);
}

#[tokio::test]
async fn a_small_file_held_in_memory_resumes_after_a_dropped_connection() {
    // Under 256 KiB a download is held in memory until its commit: the bytes
    // before the drop are kept and not asked again, in pieces of any size.
    let e = Embedded::start().await;
    let data = pattern(200_001);
    e.put("small.bin", &data);
    e.faults().short_reads(Some(1000));
    e.faults().drop_once_after_read_bytes(150_000);
    let s = e.syncer();
    assert_eq!(s.apply(&p("small.bin")).await.unwrap(), Action::Downloaded(200_001));
    assert_eq!(std::fs::read(e.mirror().join("small.bin")).unwrap(), data);
    assert!(e.server.connections_accepted() >= 2, "the connection was dropped and replaced");
    let served = e.faults().bytes_served();
    assert!(served < 200_001 + 100_000, "{served} bytes served: the held bytes were asked again");
    assert!(staging_empty(&e));
}

#[tokio::test]
async fn a_slow_link_does_not_trip_the_request_timeout_into_a_failure() {
    let mut e = Embedded::start().await;
    // Every reply takes 300 ms and the server answers one request at a time: with
    // 40 reads queued, later ones wait up to 12 s, far beyond the 2 s timeout.
    e.settings.sftp.timeout = Duration::from_secs(2);
    let data = pattern(40 * 255 * 1024 + 17);
    e.put("slow.bin", &data);
    let s = e.syncer();
    s.remote.conn().await.unwrap();
    e.faults().delay_replies(Duration::from_millis(300));
    assert!(matches!(s.apply(&p("slow.bin")).await.unwrap(), Action::Downloaded(_)));
    // But a link that stops answering altogether is a clear timeout error.
    e.faults().delay_replies(Duration::from_secs(5));
    e.put("stuck.bin", b"stuck");
    let err = s.apply(&p("stuck.bin")).await.unwrap_err().to_string();
    assert!(err.contains("timed out"), "{err}");
    assert!(!e.mirror().join("stuck.bin").exists());
    assert_eq!(std::fs::read(e.mirror().join("slow.bin")).unwrap(), data);
}

#[tokio::test]
async fn refused_open_and_stat_fail_clearly_with_no_partial_file() {
    let e = Embedded::start().await;
    e.put("locked.bin", &pattern(100_000));
    e.put("hidden.txt", b"x");
    e.faults().fail(Request::Open, "locked", StatusCode::PermissionDenied);
    e.faults().fail(Request::Stat, "hidden", StatusCode::Failure);
    let s = e.syncer();
    let err = s.apply(&p("locked.bin")).await.unwrap_err().to_string();
    assert!(err.contains("/locked.bin") && err.contains("permission denied"), "{err}");
    let err = s.apply(&p("hidden.txt")).await.unwrap_err().to_string();
    assert!(err.contains("/hidden.txt") && err.contains("failure"), "{err}");
    assert!(!e.mirror().join("locked.bin").exists() && !e.mirror().join("hidden.txt").exists());
    assert!(staging_empty(&e));
    // Once the fault is gone, the same apply succeeds.
    e.faults().clear();
    assert!(matches!(s.apply(&p("locked.bin")).await.unwrap(), Action::Downloaded(100_000)));
}

#[tokio::test]
async fn a_refused_listing_stops_reconcile_before_it_changes_anything() {
    let e = Embedded::start().await;
    e.put("a/x.txt", b"x");
    e.put("b/y.txt", b"y");
    std::fs::create_dir_all(e.mirror()).unwrap();
    std::fs::write(e.mirror().join("local.txt"), b"local").unwrap();
    e.faults().fail(Request::Readdir, "/b", StatusCode::PermissionDenied);
    let s = e.syncer();
    let r = reconcile::run(&s, reconcile::Options::default(), 1.0, 4, &reconcile::Quiet, &mut |_| {}).await;
    let err = r.unwrap_err().to_string();
    assert!(err.contains("/b") && err.contains("permission denied"), "{err}");
    assert!(e.mirror().join("local.txt").exists(), "nothing deleted on a partial listing");
    assert!(!e.mirror().join("a/x.txt").exists(), "nothing changed before the plan was complete");
}

#[tokio::test]
async fn entries_gone_from_the_remote_between_listing_and_applying_converge_without_failures() {
    let e = Embedded::start().await;
    e.put("stay.txt", b"stay");
    e.put("vanishing.txt", b"listed, then deleted");
    e.put("gone-dir/inner.txt", b"listed, then deleted with its directory");
    let s = e.syncer();
    let remote = e.remote();
    // Between the plan and its execution the remote loses a file and a directory.
    let mut on_plan = |plan: &reconcile::Plan| {
        assert!(plan.ops.len() >= 4, "{:?}", plan.ops);
        std::fs::remove_file(remote.join("vanishing.txt")).unwrap();
        std::fs::remove_dir_all(remote.join("gone-dir")).unwrap();
    };
    let r = reconcile::run(&s, reconcile::Options::default(), 1.0, 4, &reconcile::Quiet, &mut on_plan).await.unwrap();
    assert_eq!(r.failed, 0, "gone at apply time is converged, not failed: {r:?}");
    assert!(e.mirror().join("stay.txt").exists());
    assert!(!e.mirror().join("vanishing.txt").exists());
    assert!(!e.mirror().join("gone-dir").exists(), "a directory deleted after listing is not re-created");
}

// Multi-threaded: the embedded server keeps serving while connects wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reconnect_on_one_slot_holds_up_neither_other_callers_nor_invalidate() {
    let mut e = Embedded::start().await;
    e.settings.sftp.timeout = Duration::from_secs(10);
    e.settings.sftp.connections = 2;
    let s = e.syncer();
    // The first connect meets a server that takes TCP and never speaks SSH.
    e.faults().stall_handshakes(1);
    let remote = s.remote.clone();
    let stuck = tokio::spawn(async move { remote.conn().await }); // slot 0, for up to 10 s
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Slot 1 connects; a caller starting at slot 0 meanwhile takes slot 1's
    // connection as soon as it is up instead of waiting out slot 0's stall.
    let (r1, r2) = (s.remote.clone(), s.remote.clone());
    let b = tokio::spawn(async move { r1.conn().await });
    let c = tokio::spawn(async move { r2.conn().await });
    let bound = Duration::from_secs(5);
    let b = tokio::time::timeout(bound, b).await.expect("slot 1 connects").unwrap().unwrap();
    let c = tokio::time::timeout(bound, c).await.expect("waited out another slot's stalled connect").unwrap().unwrap();
    assert!(std::sync::Arc::ptr_eq(&b, &c), "both use the live connection");
    // Dropping a connection does not wait for the stalled connect either.
    tokio::time::timeout(bound, s.remote.invalidate(&b)).await.expect("invalidate waited out a reconnect");
    stuck.abort();
}

#[tokio::test]
async fn the_pool_opens_as_many_connections_as_configured_and_no_more() {
    // Callers took the first live slot, so a second connection was never made:
    // sftp.connections = 2 ran on one. The other slot now connects in the
    // background while its callers use the live one.
    for n in [1u64, 2, 3] {
        let mut e = Embedded::start().await;
        e.settings.sftp.connections = n as usize;
        let s = e.syncer();
        let first = s.remote.conn().await.unwrap();
        let waited = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let mut seen = Vec::new();
                for _ in 0..2 * n {
                    let c = s.remote.conn().await.unwrap();
                    if !seen.iter().any(|x| std::sync::Arc::ptr_eq(x, &c)) {
                        seen.push(c);
                    }
                }
                if seen.len() as u64 == n {
                    return seen.len();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "{n} connection(s) configured, never all in use");
        assert_eq!(e.server.connections_accepted(), n, "connections made for sftp.connections = {n}");
        drop(first);
    }
}

// Multi-threaded: the embedded server keeps serving while the daemon connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_closes_during_login_is_a_lost_connection_not_bad_credentials() {
    let e = Embedded::start().await;
    e.faults().drop_at_login(1);
    let s = e.syncer();
    // russh reports the closed session as a refused login; a daemon taking that
    // for bad credentials would stop with exit 4 while the server restarts.
    let Err(err) = s.remote.conn().await else { panic!("logged in although the server closed the connection") };
    assert!(!err.is_access_error(), "taken for an access error: {err}");
    assert!(err.to_string().contains("closed the connection during login"), "{err}");
    // The next connect logs in (after the pool's connect backoff).
    let ok = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(c) = s.remote.conn().await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "never logged in after the dropped login");
}
