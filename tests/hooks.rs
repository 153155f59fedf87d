//! SPEC §9 against a real sshd and the real binary: hooks run after a file is
//! durably in place or an entry was removed, with the documented environment,
//! journaled (retries, `failed`, `retry`), bounded by a timeout that kills the
//! process group, at least once across SIGKILL, and from reconcile passes too.

use crate::common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A hook script that records each run as a file in `runs/`: its
/// `SFTP_MIRROR_*` environment, its argv, and the bytes the file has when it runs.
/// `extra` is shell run after the record is written (its exit ends the hook).
fn recorder(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let runs = dir.join("runs");
    std::fs::create_dir_all(&runs).unwrap();
    let script = dir.join(name);
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             rec={runs}/run.$(date +%s%N).$$\n\
             {{ env | grep '^SFTP_MIRROR_' | sort; echo \"ARGV=$*\"; \
             if [ -f \"$SFTP_MIRROR_FULL_PATH\" ]; then echo \"BYTES=$(wc -c < \"$SFTP_MIRROR_FULL_PATH\" | tr -d ' ')\"; fi; }} > $rec.tmp\n\
             mv $rec.tmp $rec\n\
             echo \"processed $SFTP_MIRROR_PATH\"\n\
             {extra}\n",
            runs = runs.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// The recorded runs, oldest first, each as its variables.
fn runs(dir: &Path) -> Vec<BTreeMap<String, String>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir.join("runs"))
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_none_or(|e| e != "tmp")).collect())
        .unwrap_or_default();
    names.sort();
    names
        .iter()
        .map(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
                .collect()
        })
        .collect()
}

fn hooks_section(on_file: &Path, on_delete: Option<&Path>, extra: &str) -> String {
    let del = on_delete.map(|d| format!("on_delete = [{:?}]\n", d.to_str().unwrap())).unwrap_or_default();
    format!("[hooks]\non_file = [{:?}, \"--from-test\"]\n{del}{extra}\n", on_file.to_str().unwrap())
}

fn events_json(env: &Env, o: &Opts, args: &[&str]) -> Vec<serde_json::Value> {
    let mut a = vec!["events", "--json"];
    a.extend_from_slice(args);
    let out = env.run(o, &a);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn hook_rows(env: &Env, o: &Opts) -> Vec<serde_json::Value> {
    events_json(env, o, &["--limit", "1000"])
        .into_iter()
        .filter(|r| r["topic"].as_str().is_some_and(|t| t.starts_with("hook.")))
        .collect()
}

#[test]
fn on_file_and_on_delete_run_after_the_change_with_the_documented_environment() {
    let env = Env::new();
    let dir = env.dir.path().to_owned();
    let on_file = recorder(&dir, "on-file", "");
    let on_delete = recorder(&dir, "on-delete", "");
    let o = Opts {
        admin: "127.0.0.1:0".into(),
        extra_sections: hooks_section(&on_file, Some(&on_delete), ""),
        ..Default::default()
    };
    let d = env.serve(&o);
    env.put("in/a b.txt", &pattern(100_000));
    assert_eq!(d.send(&event("ev-1", "file.created", "in/a+b.txt")).status, 204);
    wait_for("the on_file run", || runs(&dir).len() == 1);
    let r = &runs(&dir)[0];
    assert_eq!(r["SFTP_MIRROR_PATH"], "in/a b.txt");
    assert_eq!(Path::new(&r["SFTP_MIRROR_FULL_PATH"]), env.mirror().join("in/a b.txt"));
    assert_eq!(r["SFTP_MIRROR_ACTION"], "created");
    assert_eq!(r["SFTP_MIRROR_SIZE"], "100000");
    assert_eq!(r["SFTP_MIRROR_EVENT_ID"], "ev-1");
    assert_eq!(r["ARGV"], "--from-test");
    // It saw the whole file: a hook never runs before the file is in place.
    assert_eq!(r["BYTES"], "100000");
    wait_for("its output in the log", || d.log().contains("processed in/a b.txt"));
    let line = d.log().lines().find(|l| l.contains("processed in/a b.txt")).unwrap().to_owned();
    assert!(line.contains("hook=\"on_file\"") && line.contains("path=in/a b.txt"), "{line}");

    // A new version: updated. A name a shell would run: argv only, nothing runs.
    env.put("in/a b.txt", b"v2");
    assert_eq!(d.send(&event("ev-2", "file.created", "in/a+b.txt")).status, 204);
    env.put("in/x;touch pwned", b"x");
    assert_eq!(d.send(&event("ev-3", "file.created", "in/x%3Btouch+pwned")).status, 204);
    wait_for("two more runs", || runs(&dir).len() == 3);
    let all = runs(&dir);
    let update = all.iter().find(|r| r["SFTP_MIRROR_EVENT_ID"] == "ev-2").expect("the update's run");
    assert_eq!((update["SFTP_MIRROR_ACTION"].as_str(), update["BYTES"].as_str()), ("updated", "2"));
    assert!(!env.mirror().join("pwned").exists() && !dir.join("pwned").exists(), "a file name was run as a command");

    // Removed on the remote: on_delete, after the file is gone.
    std::fs::remove_file(env.remote().join("in/a b.txt")).unwrap();
    assert_eq!(d.send(&event("ev-4", "file.deleted", "in/a+b.txt")).status, 204);
    wait_for("the on_delete run", || runs(&dir).len() == 4);
    let del = runs(&dir).into_iter().find(|r| r["SFTP_MIRROR_EVENT_ID"] == "ev-4").unwrap();
    assert_eq!((del["SFTP_MIRROR_ACTION"].as_str(), del["SFTP_MIRROR_SIZE"].as_str()), ("deleted", ""));
    assert!(!del.contains_key("BYTES"), "the file was gone when on_delete ran: {del:?}");

    // Unchanged: a duplicate delivery of ev-3 and a check of an unchanged file run nothing.
    assert_eq!(d.send(&event("ev-3", "file.created", "in/x%3Btouch+pwned")).status, 204);
    let m = get_metrics(d.admin.unwrap());
    assert!(m.contains("sftp_mirror_hook_runs_total{hook=\"on_file\",result=\"ok\"} 3"), "{m}");
    assert!(m.contains("sftp_mirror_hook_runs_total{hook=\"on_delete\",result=\"ok\"} 1"), "{m}");
    assert!(m.contains("sftp_mirror_hook_duration_seconds_count 4"), "{m}");
    let rows = hook_rows(&env, &o);
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(rows.iter().all(|r| r["status"] == "done"), "{rows:?}");
    assert_eq!(runs(&dir).len(), 4);
}

fn get_metrics(admin: std::net::SocketAddr) -> String {
    request(admin, "GET", "/metrics", &[], b"").body
}

#[test]
fn a_failing_hook_is_retried_then_failed_and_retry_runs_it_again() {
    let env = Env::new();
    let dir = env.dir.path().to_owned();
    // Fails until the file `fixed` exists.
    let flag = dir.join("fixed");
    let hook = recorder(&dir, "flaky", &format!("[ -f {} ] || {{ echo 'not yet' >&2; exit 3; }}", flag.display()));
    let o = Opts { extra_sections: hooks_section(&hook, None, "max_attempts = 2"), ..Default::default() };
    let d = env.serve(&o);
    env.put("f.txt", b"data");
    assert_eq!(d.send(&event("ev-f", "file.created", "f.txt")).status, 204);
    wait_for("two runs, then failed", || hook_rows(&env, &o).first().is_some_and(|r| r["status"] == "failed"));
    assert_eq!(runs(&dir).len(), 2, "max_attempts = 2");
    let row = hook_rows(&env, &o).remove(0);
    assert_eq!(row["last_error"], "exit status 3", "{row}");
    assert_eq!(row["attempts"], 2, "{row}");
    assert!(d.log().contains("not yet") && d.log().contains("stream=\"stderr\""), "{}", d.log());
    assert!(d.log().contains("failed for good"), "{}", d.log());

    std::fs::write(&flag, "").unwrap();
    let id = row["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("hook-"), "{id}");
    let out = env.run(&o, &["retry", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("the retried run to succeed", || hook_rows(&env, &o).first().is_some_and(|r| r["status"] == "done"));
    assert_eq!(runs(&dir).len(), 3);
    // The table names the hook and its event.
    let table = String::from_utf8_lossy(&env.run(&o, &["events"]).stdout).into_owned();
    assert!(table.contains(&id) && table.contains("hook.on_file") && table.contains("(event ev-f)"), "{table}");
}

#[test]
fn a_hook_past_its_timeout_is_killed_with_everything_it_started() {
    let env = Env::new();
    let dir = env.dir.path().to_owned();
    let pidfile = dir.join("child.pid");
    let hook = recorder(&dir, "slow", &format!("sleep 300 & echo $! > {}; wait", pidfile.display()));
    let o =
        Opts { extra_sections: hooks_section(&hook, None, "timeout = \"1s\"\nmax_attempts = 1"), ..Default::default() };
    let d = env.serve(&o);
    env.put("slow.txt", b"s");
    assert_eq!(d.send(&event("ev-s", "file.created", "slow.txt")).status, 204);
    wait_for("failed by the timeout", || hook_rows(&env, &o).first().is_some_and(|r| r["status"] == "failed"));
    let row = hook_rows(&env, &o).remove(0);
    assert_eq!(row["last_error"], "killed after hooks.timeout (1s)", "{row}");
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    wait_for("the hook's own child to be gone too", || !Path::new(&format!("/proc/{pid}")).exists());
    drop(d);
}

#[test]
fn a_hook_cut_short_by_sigkill_runs_again_after_the_restart() {
    let env = Env::new();
    let dir = env.dir.path().to_owned();
    let hook = recorder(&dir, "long", &format!("sleep 2; touch {}/finished", dir.display()));
    let o = Opts { extra_sections: hooks_section(&hook, None, ""), ..Default::default() };
    let cfg = env.config(&o);
    let mut d = Daemon::start(&cfg);
    env.put("k.txt", b"k");
    assert_eq!(d.send(&event("ev-k", "file.created", "k.txt")).status, 204);
    wait_for("the hook to start", || runs(&dir).len() == 1);
    d.kill();
    assert!(!dir.join("finished").exists());
    let _d = Daemon::start(&cfg);
    wait_for("the hook to run to its end after the restart", || dir.join("finished").exists());
    assert_eq!(runs(&dir).len(), 2, "at least once: started again, not resumed");
    wait_for("its row done", || hook_rows(&env, &o).first().is_some_and(|r| r["status"] == "done"));
}

#[test]
fn a_reconcile_pass_fires_hooks_with_no_event_id_and_only_for_what_it_changed() {
    let env = Env::new();
    let dir = env.dir.path().to_owned();
    let hook = recorder(&dir, "on-file", "");
    let on_delete = recorder(&dir, "on-delete", "");
    let o = Opts { extra_sections: hooks_section(&hook, Some(&on_delete), ""), ..Default::default() };
    env.put("r1.txt", b"one");
    env.put("sub/r2.txt", b"two");
    let out = env.run(&o, &["reconcile"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("hooks: 2 run(s), 0 failed"), "{stdout}");
    let all = runs(&dir);
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(
        all.iter().all(|r| r["SFTP_MIRROR_EVENT_ID"].is_empty() && r["SFTP_MIRROR_ACTION"] == "created"),
        "{all:?}"
    );
    let mut paths: Vec<&str> = all.iter().map(|r| r["SFTP_MIRROR_PATH"].as_str()).collect();
    paths.sort();
    assert_eq!(paths, ["r1.txt", "sub/r2.txt"]);

    // Nothing changed: nothing runs. One file removed: one on_delete.
    assert_eq!(env.run(&o, &["reconcile"]).status.code(), Some(0));
    assert_eq!(runs(&dir).len(), 2);
    std::fs::remove_file(env.remote().join("r1.txt")).unwrap();
    let out = env.run(&o, &["reconcile", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let all = runs(&dir);
    assert_eq!(all.len(), 3);
    assert!(all.iter().any(|r| r["SFTP_MIRROR_ACTION"] == "deleted" && r["SFTP_MIRROR_PATH"] == "r1.txt"), "{all:?}");

    // A hook that fails for good makes the pass exit 1 and is in the journal.
    let failing = recorder(&dir, "failing", "exit 1");
    let o2 = Opts { extra_sections: hooks_section(&failing, None, "max_attempts = 1"), ..Default::default() };
    env.put("r3.txt", b"three");
    let out = env.run(&o2, &["reconcile"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 failed for good"));
    let failed = events_json(&env, &o2, &["--status", "failed"]);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["path"], "r3.txt");
}

#[test]
fn a_hook_that_is_not_executable_is_a_configuration_error() {
    let env = Env::new();
    let o =
        Opts { extra_sections: "[hooks]\non_file = [\"/nonexistent/process-upload\"]\n".into(), ..Default::default() };
    let out = env.run(&o, &["reconcile"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("hooks.on_file: /nonexistent/process-upload is not an executable file"), "{err}");
}

#[test]
fn the_readme_example_hook_queues_each_new_file_whole() {
    let env = Env::new();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/examples/queue-upload");
    let queue = env.dir.path().join("queue");
    let o = Opts {
        extra_sections: format!("[hooks]\non_file = [{:?}, {:?}]\n", script.to_str().unwrap(), queue.to_str().unwrap()),
        ..Default::default()
    };
    let d = env.serve(&o);
    env.put("reports/q3.csv", &pattern(300_000));
    env.put("reports/q4.csv", b"q4");
    assert_eq!(d.send(&event("q-1", "file.created", "reports/q3.csv")).status, 204);
    assert_eq!(d.send(&event("q-2", "file.created", "reports/q4.csv")).status, 204);
    let incoming = queue.join("incoming");
    let listed = || -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> =
            std::fs::read_dir(&incoming).map(|r| r.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        v.sort();
        v
    };
    wait_for("two queued files", || listed().len() == 2);
    let mut contents: Vec<Vec<u8>> = listed().iter().map(|p| std::fs::read(p).unwrap()).collect();
    contents.sort_by_key(Vec::len);
    assert_eq!(contents, vec![b"q4".to_vec(), pattern(300_000)]);
    assert!(listed().iter().any(|p| p.to_string_lossy().ends_with("-q3.csv")), "{:?}", listed());
    // The mirror keeps its copy: the queue holds links, not the mirror's files.
    assert_eq!(tree(&env.mirror()), tree(env.remote()));
    wait_for("its output in the log", || d.log().contains("queued reports/q3.csv (300000 bytes)"));
}
