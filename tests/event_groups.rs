//! A burst of events on the files of one directory is answered by one
//! listing of it instead of an `lstat` per file (and per ancestor), with the
//! same outcome as each event on its own (SPEC §2).

use crate::common::*;
use sftp_mirror::event::RemotePath;
use sftp_mirror::sync::{list_bound, Action, LIST_MIN};
use sftp_mirror::testkit::Request;

fn p(s: &str) -> RemotePath {
    RemotePath::parse(s).unwrap()
}

/// Applies an event for each of `paths` (files of directory `dir`) as the
/// dispatcher does for a group: one look at the remote, then each path.
async fn apply_group(e: &Embedded, dir: &str, paths: &[String]) -> Vec<Action> {
    let s = e.syncer();
    let lookup = s.look_up(dir.as_bytes(), paths.len()).await;
    let applies = paths.iter().map(|path| {
        let (s, lookup) = (&s, &lookup);
        async move { s.apply_event_in(lookup, &p(path), None, true).await.unwrap() }
    });
    futures::future::join_all(applies).await
}

#[tokio::test]
async fn forty_events_in_one_directory_cost_one_listing_not_an_lstat_each() {
    let e = Embedded::start().await;
    let mut paths: Vec<String> = (0..40).map(|i| format!("a/b/f{i:02}.txt")).collect();
    for (i, path) in paths.iter().enumerate() {
        e.put(path, &pattern(100 + i));
    }
    // Two the remote no longer has.
    for gone in ["a/b/gone1.txt", "a/b/gone2.txt"] {
        std::fs::create_dir_all(e.mirror().join("a/b")).unwrap();
        std::fs::write(e.mirror().join(gone), b"old").unwrap();
        paths.push(gone.into());
    }
    let (stats, listings) = (e.faults().requests(Request::Stat), e.faults().requests(Request::Readdir));
    let actions = apply_group(&e, "a/b", &paths).await;
    for (i, a) in actions[..40].iter().enumerate() {
        assert_eq!(a, &Action::Downloaded(100 + i as u64), "{}", paths[i]);
        assert_eq!(std::fs::read(e.mirror().join(&paths[i])).unwrap(), pattern(100 + i));
    }
    assert_eq!(&actions[40..], &[Action::Removed, Action::Removed]);
    assert!(!e.mirror().join("a/b/gone1.txt").exists());
    // One lstat per ancestor (a, a/b) and the one confirming each download;
    // an lstat of each path and its ancestors would be 42 × 3 more.
    let stats = e.faults().requests(Request::Stat) - stats;
    assert_eq!(stats, 2 + 40, "lstats");
    assert!(e.faults().requests(Request::Readdir) > listings, "the directory was listed");

    // The directory gone as a whole: its files go too, as the listing says.
    std::fs::remove_dir_all(e.remote().join("a/b")).unwrap();
    let all = apply_group(&e, "a/b", &paths[..LIST_MIN]).await;
    assert!(all.iter().all(|a| a == &Action::Removed), "{all:?}");
    assert!(!e.mirror().join(&paths[0]).exists());
}

#[tokio::test]
async fn a_group_reads_the_mirror_side_from_one_listing_too() {
    // What the mirror has is read from a listing of the local directory, with
    // the same outcomes as an lstat per file: a current copy is left alone and,
    // with mirror.delete = false, a directory where the remote has a file is kept.
    let mut e = Embedded::start().await;
    e.settings.mirror.delete = false;
    let paths: Vec<String> = (0..LIST_MIN as u64 + 2).map(|i| format!("d/f{i}")).collect();
    for (i, path) in paths.iter().enumerate() {
        e.put(path, &pattern(10 + i));
        set_mtime(&e.remote().join(path), 1_600_000_000);
    }
    std::fs::create_dir_all(e.mirror().join("d/f1")).unwrap();
    std::fs::write(e.mirror().join("d/f0"), pattern(10)).unwrap();
    set_mtime(&e.mirror().join("d/f0"), 1_600_000_000);
    let opens = e.faults().requests(Request::Open);
    let actions = apply_group(&e, "d", &paths).await;
    assert_eq!(actions[0], Action::Unchanged);
    assert_eq!(actions[1], Action::KeptNoDelete);
    assert!(e.mirror().join("d/f1").is_dir());
    for (i, a) in actions.iter().enumerate().skip(2) {
        assert_eq!(a, &Action::Downloaded(10 + i as u64), "{}", paths[i]);
    }
    assert_eq!(e.faults().requests(Request::Open) - opens, paths.len() as u64 - 2, "only the others were read");
}

#[tokio::test]
async fn a_directory_too_large_for_its_few_events_is_not_listed() {
    let e = Embedded::start().await;
    let n = list_bound(LIST_MIN) + 1;
    for i in 0..n {
        e.put(&format!("big/f{i:04}"), b"x");
    }
    let paths: Vec<String> = (0..LIST_MIN).map(|i| format!("big/f{i:04}")).collect();
    let (stats, listings) = (e.faults().requests(Request::Stat), e.faults().requests(Request::Readdir));
    let actions = apply_group(&e, "big", &paths).await;
    assert!(actions.iter().all(|a| a == &Action::Downloaded(1)), "{actions:?}");
    // The listing gave up past its bound; each file was then asked alone.
    let read_dirs = e.faults().requests(Request::Readdir) - listings;
    assert!(read_dirs >= 1, "a listing was tried");
    assert!(e.faults().requests(Request::Stat) - stats >= 2 * LIST_MIN as u64, "each file was stat'ed");
}

#[tokio::test]
async fn files_below_a_remote_symlink_are_not_mirrored_by_a_group_either() {
    let e = Embedded::start().await;
    let outside = e.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let paths: Vec<String> = (0..LIST_MIN).map(|i| format!("link/s{i}")).collect();
    for i in 0..LIST_MIN {
        std::fs::write(outside.join(format!("s{i}")), b"secret").unwrap();
    }
    std::os::unix::fs::symlink(&outside, e.remote().join("link")).unwrap();
    let actions = apply_group(&e, "link", &paths).await;
    assert!(actions.iter().all(|a| a == &Action::Skipped("a remote ancestor is a symlink")), "{actions:?}");
    assert!(!e.mirror().join("link").exists());
}

#[test]
fn a_daemon_resuming_a_burst_applies_it_by_directory() {
    // The events are in the journal before the daemon starts (as after a
    // restart during a burst), so its first claim holds all of them.
    let env = Env::new();
    let o = Opts::default();
    let cfg = env.config(&o);
    let n = 60;
    for i in 0..n {
        env.put(&format!("up/f{i:02}.bin"), &pattern(1000 + i));
    }
    {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let journal = sftp_mirror::journal::Journal::open(&env.journal()).unwrap();
        rt.block_on(async {
            for i in 0..n {
                let path = format!("up/f{i:02}.bin");
                let ev = sftp_mirror::journal::NewEvent {
                    event_id: format!("burst-{i}"),
                    topic: "file.created".into(),
                    path: Some(path.clone()),
                    actionable: true,
                    body: event(&format!("burst-{i}"), "file.created", &path),
                };
                journal.record(ev).await.unwrap();
            }
        });
    }
    let d = Daemon::start(&cfg);
    wait_mirror_equals_remote(&env);
    wait_for("every event done", || {
        let out = env.run(&o, &["events", "--status", "done", "--limit", "1000", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap().as_array().unwrap().len() == n
    });
    let log = d.log();
    assert!(log.contains("files=60 listed=true"), "one listing for the 60 files:\n{log}");
    // Each change is still logged once, with its own event.
    for i in [0, 59] {
        let line = log.lines().find(|l| l.contains(&format!("up/f{i:02}.bin")) && l.contains("action=\"download\""));
        let line = line.unwrap_or_else(|| panic!("no download line for f{i:02}:\n{log}"));
        assert!(line.contains(&format!("burst-{i}")), "{line}");
    }
}
