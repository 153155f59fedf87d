//! `reconcile` against a real sshd: exactness, dry-run, the delete guard, no-delete.

use crate::common::*;
use std::path::Path;
use std::process::Command;

fn json_summary(out: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line =
        stdout.lines().last().unwrap_or_else(|| panic!("no output; stderr: {}", String::from_utf8_lossy(&out.stderr)));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// A remote tree of 2,000+ files in nested directories, with empty directories
/// and names with spaces and unicode.
fn remote_tree(env: &Env) {
    for d in 0..20 {
        for f in 0..100 {
            let dir = if d % 3 == 0 { format!("d{d}/deep er/ü{d}") } else { format!("d{d}") };
            env.put(&format!("{dir}/file {f} ✓.txt"), format!("content {d}/{f}").as_bytes());
        }
    }
    for e in ["empty", "d1/also empty", "spa ce/ünïcode dir"] {
        std::fs::create_dir_all(env.remote().join(e)).unwrap();
    }
}

fn mess_up_mirror(m: &Path) {
    std::fs::create_dir_all(m.join("d1")).unwrap();
    std::fs::create_dir_all(m.join("extra dir/sub")).unwrap();
    std::fs::write(m.join("extra dir/sub/x"), b"x").unwrap();
    std::fs::write(m.join("extra.txt"), b"extra").unwrap();
    std::fs::write(m.join("d1/file 3 ✓.txt"), b"stale content").unwrap();
    // A file where the remote has a directory, and a directory where it has a file.
    std::fs::write(m.join("d2"), b"I am a file").unwrap();
    std::fs::create_dir_all(m.join("d4/file 7 ✓.txt/inner")).unwrap();
}

#[test]
fn reconcile_makes_the_trees_identical_and_a_second_pass_changes_nothing() {
    let env = Env::new();
    remote_tree(&env);
    mess_up_mirror(&env.mirror());
    let o = Opts { extra_mirror: "max_delete_ratio = 1.0".into(), ..Default::default() };
    let out = env.run(&o, &["reconcile", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let s = json_summary(&out);
    assert!(s["downloaded"].as_u64().unwrap() >= 2000, "{s}");
    assert_eq!(s["failed"], 0);
    assert_eq!(tree(&env.mirror()), tree(env.remote()));

    let out = env.run(&o, &["reconcile", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let s = json_summary(&out);
    assert_eq!(
        (s["downloaded"].as_u64(), s["deleted"].as_u64(), s["dirs_created"].as_u64()),
        (Some(0), Some(0), Some(0)),
        "{s}"
    );
    assert!(s["unchanged"].as_u64().unwrap() >= 2000);
}

#[test]
fn dry_run_changes_nothing_and_prints_the_plan() {
    let env = Env::new();
    env.put("a/new.txt", b"new");
    std::fs::create_dir_all(env.mirror()).unwrap();
    std::fs::write(env.mirror().join("old.txt"), b"old").unwrap();
    std::fs::write(env.mirror().join("keep.txt"), b"k").unwrap();
    env.put("keep.txt", b"k2");
    let before = tree(&env.mirror());
    let out = env.run(&Opts::default(), &["reconcile", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("download a/new.txt (3 B)")
            && text.contains("delete   old.txt")
            && text.contains("update   keep.txt"),
        "{text}"
    );
    // One slash after a directory, and the plan sorted by path.
    assert!(text.contains("mkdir    a/\n") || text.contains("mkdir    a/ "), "{text}");
    assert!(!text.contains("//"), "{text}");
    let paths: Vec<&str> =
        text.lines().filter(|l| l.starts_with("  ")).map(|l| l.split_whitespace().nth(1).unwrap_or("")).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted, "{text}");
    assert_eq!(tree(&env.mirror()), before);
    // Nothing at all appears on disk, not even our private folder (tree() skips it).
    assert!(!env.mirror().join(".sftp-mirror").exists(), "a dry run created .sftp-mirror");

    // A mirror that does not exist yet is planned as empty, and still not created.
    let fresh = env.dir.path().join("not-yet");
    let cfg = env.config(&Opts::default());
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&format!("path = {:?}", env.mirror()), &format!("path = {fresh:?}"));
    std::fs::write(&cfg, text).unwrap();
    let out =
        Command::new(bin()).arg("--config").arg(&cfg).args(["reconcile", "--dry-run", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["downloaded"], 2, "{plan}");
    assert!(!fresh.exists(), "a dry run created the mirror folder");
}

#[test]
fn delete_guard_refuses_then_force_proceeds() {
    let env = Env::new();
    std::fs::create_dir_all(env.mirror().join("sub")).unwrap();
    for i in 0..10 {
        std::fs::write(env.mirror().join(format!("sub/f{i}")), b"precious").unwrap();
    }
    let empty = env.dir.path().join("empty-remote");
    std::fs::create_dir_all(&empty).unwrap();
    let o = Opts { remote_root: Some(empty), ..Default::default() };
    let before = tree(&env.mirror());
    let out = env.run(&o, &["reconcile"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to delete 11 of 11"));
    assert_eq!(tree(&env.mirror()), before);
    let out = env.run(&o, &["reconcile", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(tree(&env.mirror()).is_empty());
}

#[test]
fn directories_replaced_by_files_count_as_deletions_for_the_guard_no_delete_and_the_summary() {
    let env = Env::new();
    for d in ["photos", "docs", "music"] {
        for i in 0..100 {
            let p = env.mirror().join(format!("{d}/f{i:03}"));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"precious").unwrap();
        }
        env.put(d, b"x"); // the remote now has a 1-byte file where the directory was
    }
    let before = tree(&env.mirror());
    let json = |out: &std::process::Output| -> serde_json::Value {
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    };
    // The guard counts the 303 entries the replacements remove.
    let out = env.run(&Opts::default(), &["reconcile"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refusing to delete 303 of 303"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(tree(&env.mirror()), before);
    // --no-delete and mirror.delete = false keep the directories.
    let out = env.run(&Opts::default(), &["reconcile", "--no-delete", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json(&out)["deleted"], 0);
    assert!(String::from_utf8_lossy(&out.stderr).contains("kept"), "a warning per kept entry");
    assert_eq!(tree(&env.mirror()), before);
    let out = env.run(&Opts { delete: false, ..Default::default() }, &["reconcile", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(tree(&env.mirror()), before);
    // An event with mirror.delete = false keeps the directory too.
    let d = env.serve(&Opts { delete: false, ..Default::default() });
    assert_eq!(d.send(&event("replace-1", "file.created", "photos")).status, 204);
    wait_for("the event's outcome", || d.log().contains("kept: the remote has a file here"));
    assert_eq!(tree(&env.mirror()), before);
    drop(d);
    // The plan says what would go, and --force does it, counted.
    let out = env.run(&Opts::default(), &["reconcile", "--dry-run", "--force", "--json"]);
    assert_eq!(json(&out)["deleted"], 303, "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(tree(&env.mirror()), before);
    let out = env.run(&Opts::default(), &["reconcile", "--force", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!((json(&out)["deleted"].as_u64(), json(&out)["downloaded"].as_u64()), (Some(303), Some(3)));
    assert_eq!(std::fs::read(env.mirror().join("photos")).unwrap(), b"x");
}

#[test]
fn no_delete_and_delete_false_remove_nothing() {
    let env = Env::new();
    env.put("r.txt", b"r");
    std::fs::create_dir_all(env.mirror()).unwrap();
    std::fs::write(env.mirror().join("local-only.txt"), b"l").unwrap();
    let o = Opts { extra_mirror: "max_delete_ratio = 1.0".into(), ..Default::default() };
    let out = env.run(&o, &["reconcile", "--no-delete"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(env.mirror().join("local-only.txt").exists() && env.mirror().join("r.txt").exists());
    let out = env.run(&Opts { delete: false, ..o.clone() }, &["reconcile"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(env.mirror().join("local-only.txt").exists());
}

#[test]
fn a_directory_of_20000_entries_lists_completely() {
    let env = Env::new();
    let big = env.remote().join("big");
    std::fs::create_dir_all(&big).unwrap();
    for i in 0..20_000 {
        std::fs::write(big.join(format!("{i:05}")), b"").unwrap();
    }
    let out = env.run(&Opts::default(), &["reconcile", "--dry-run", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let s = json_summary(&out);
    assert_eq!(s["downloaded"], 20_000, "{s}");
}

#[test]
fn reconcile_and_events_on_overlapping_paths_end_exact() {
    let env = Env::new();
    for i in 0..300 {
        env.put(&format!("o/{}/f{i}.txt", i % 7), format!("v1 {i}").as_bytes());
    }
    let d = env.serve(&Opts { on_start: true, ..Default::default() });
    // While the start-up pass runs, the remote changes and events stream in.
    for i in 0..300 {
        let rel = format!("o/{}/f{i}.txt", i % 7);
        match i % 3 {
            0 => {
                std::fs::remove_file(env.remote().join(&rel)).unwrap();
                assert_eq!(d.send(&event(&format!("x{i}"), "file.deleted", &rel)).status, 204);
            }
            1 => {
                env.put(&rel, format!("v2 {i} longer").as_bytes());
                assert_eq!(d.send(&event(&format!("x{i}"), "file.created", &rel)).status, 204);
            }
            _ => assert_eq!(d.send(&event(&format!("x{i}"), "file.created", "o/")).status, 204),
        }
    }
    wait_mirror_equals_remote(&env);
    // A dry run (allowed next to the daemon) agrees there is nothing left to do …
    let out = env.run(&Opts::default(), &["reconcile", "--dry-run", "--json"]);
    let s = json_summary(&out);
    assert_eq!((s["downloaded"].as_u64(), s["deleted"].as_u64()), (Some(0), Some(0)), "{s}");
    // … while a writing pass is refused: the daemon owns the mirror.
    let out = env.run(&Opts::default(), &["reconcile"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another sftp-mirror process"));
}

#[test]
fn output_into_a_closed_pipe_ends_quietly_and_logs_have_no_colour() {
    use std::io::{BufRead, Read};
    use std::os::unix::process::ExitStatusExt;
    let env = Env::new();
    // A plan longer than a pipe buffer (64 KiB).
    for i in 0..3000 {
        env.put(&format!("many/a-rather-long-file-name-for-the-plan-{i:05}.txt"), b"x");
    }
    let cfg = env.config(&Opts::default());
    let mut child = std::process::Command::new(bin())
        .arg("--config")
        .arg(&cfg)
        .args(["reconcile", "--dry-run"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap(); // then `head -1` exits
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let status = child.wait().unwrap();
    assert!(!first.is_empty());
    assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{err}");
    assert!(status.success() || status.signal() == Some(13), "{status:?}: {err}");
    // stderr is a pipe here: no escape sequences in the log.
    let d = env.serve(&Opts::default());
    wait_for("the listening line in the log", || d.log().contains("webhook listening"));
    assert!(!d.log().contains('\u{1b}'), "{}", d.log());
}

/// Runs `cmd` on a pseudo-terminal (util-linux `script`): what a person at a
/// terminal sees, escape sequences included.
fn on_a_terminal(cmd: &[&std::ffi::OsStr], within: std::time::Duration) -> (Option<i32>, String) {
    let line = cmd.iter().map(|a| shell_quote(&a.to_string_lossy())).collect::<Vec<_>>().join(" ");
    let mut child = Command::new("script")
        .args(["-qefc", &line, "/dev/null"])
        .env("TERM", "xterm")
        .env_remove("NO_COLOR")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("script(1) from util-linux");
    let out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || std::io::read_to_string(out).unwrap_or_default());
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > within {
            let _ = child.kill();
            panic!("{line} did not end within {within:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    (status.code(), reader.join().unwrap())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

// Multi-threaded: the embedded server keeps serving while the test thread waits on the binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_the_bar_moves_by_bytes_with_rate_and_eta_while_one_big_file_downloads() {
    let e = Embedded::start().await;
    e.put("small.txt", b"tiny");
    e.put("big/video.bin", &pattern(8 << 20));
    // 64 KiB per READ reply, each 15 ms late: the big file takes about 2 s,
    // long enough for the bar to draw between completions.
    e.faults().short_reads(Some(64 << 10));
    e.faults().delay_replies(std::time::Duration::from_millis(15));
    let cfg = e.config_file("10s");
    let (code, screen) = on_a_terminal(
        &[bin().as_ref(), "--config".as_ref(), cfg.as_os_str(), "reconcile".as_ref()],
        std::time::Duration::from_secs(120),
    );
    assert_eq!(code, Some(0), "{screen}");
    assert_eq!(std::fs::read(e.mirror().join("big/video.bin")).unwrap(), pattern(8 << 20));
    // Frames drawn while the 8 MiB file was under way: a byte count below the
    // total, the total in binary units, a rate, an ETA, and entries second.
    let frames: Vec<&str> = screen.split(['\r', '\n']).filter(|l| l.contains("/8.00 MiB")).collect();
    assert!(
        frames.iter().any(|f| !f.contains("8.00 MiB/8.00 MiB") && f.contains("MiB/s") && f.contains("ETA")),
        "no frame of the download in progress: {screen:?}"
    );
    assert!(frames.iter().any(|f| f.contains("/3 changes")), "entries not shown as the second figure: {screen:?}");
    // What stays on the screen (each line as the terminal last drew it): the
    // plan, the log lines and the summary; no spinner or bar frame left behind.
    let kept: Vec<&str> = screen.split("\r\n").map(|l| l.rsplit('\r').next().unwrap_or(l)).collect();
    for line in &kept {
        assert!(
            !line.contains("changes") && !line.contains("listing"),
            "a frame stayed behind in {line:?}: {screen:?}"
        );
    }
    assert!(kept.iter().any(|l| l.contains("downloaded 8.0 MiB")), "{kept:?}");
    assert_eq!(screen.matches("plan: 3 change(s)").count(), 1, "{screen:?}");
    assert!(screen.contains("mkdir    big/") && screen.contains("download big/video.bin"), "{screen:?}");
}
