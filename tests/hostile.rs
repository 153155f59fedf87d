//! Issue #7: hostile input against a running daemon. Traversal and confusion
//! paths, links planted in the mirror, symlinks served by the remote, JSON
//! bombs, signature and Authorization tricks, HTTP framing tricks and garbage.
//! Each case asserts the documented status, that nothing outside the mirror
//! changed, and that the daemon is alive and never panicked.

use crate::common::*;
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

fn no_panic(d: &Daemon) {
    assert!(!d.log().contains("panicked"), "the daemon panicked:\n{}", d.log());
}

fn alive(d: &mut Daemon) {
    assert!(matches!(d.child.try_wait(), Ok(None)), "the daemon died:\n{}", d.log());
}

/// Entry names directly in `dir`.
fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

fn post(d: &Daemon, headers: &[(&str, &str)], body: &[u8]) -> Response {
    request(d.addr, "POST", "/webhook", headers, body)
}

fn all_rows(cfg: &Path) -> Vec<serde_json::Value> {
    journal_rows(cfg, &["--limit", "100000"])
}

/// One wire path, the answer it must get, and (for accepted ones) the decoded
/// path the test creates on the remote so that the mirror must hold it.
struct Case {
    wire: String,
    status: u16,
    remote: Option<String>,
    topic: &'static str,
}

fn unsafe_path(wire: impl Into<String>) -> Case {
    Case { wire: wire.into(), status: 400, remote: None, topic: "file.created" }
}

fn unsafe_delete(wire: impl Into<String>) -> Case {
    Case { wire: wire.into(), status: 400, remote: None, topic: "file.deleted" }
}

fn odd(wire: impl Into<String>, decoded: impl Into<String>) -> Case {
    Case { wire: wire.into(), status: 204, remote: Some(decoded.into()), topic: "file.created" }
}

#[test]
fn traversal_and_confusion_paths_get_the_documented_answer_and_nothing_leaves_the_mirror() {
    let env = Env::new();
    // Bait outside the mirror: what a traversal would reach on either side.
    let sshd_dir = env.remote().parent().unwrap().to_owned();
    std::fs::write(sshd_dir.join("outside.txt"), b"remote-side bait").unwrap();
    let canary = env.dir.path().join("canary");
    std::fs::create_dir_all(&canary).unwrap();
    std::fs::write(canary.join("keep.txt"), b"canary").unwrap();
    std::fs::write(env.dir.path().join("outside.txt"), b"local-side bait").unwrap();

    let long_name = "n".repeat(256);
    let max_name = "m".repeat(255);
    let long_path = format!("{}z", "a/".repeat(2100));
    let mut cases = vec![
        // Plain and encoded `..` in every position.
        unsafe_path(".."),
        unsafe_path("../outside.txt"),
        unsafe_path("../../../../../../etc/passwd"),
        unsafe_path("%2e%2e"),
        unsafe_path("%2e%2e/outside.txt"),
        unsafe_path("%2E%2e%2foutside.txt"),
        unsafe_path("..%2foutside.txt"),
        unsafe_path("..%2Foutside.txt"),
        unsafe_path(".%2e/outside.txt"),
        unsafe_path("%2e./outside.txt"),
        unsafe_path("%2e%2e%2f%2e%2e%2fetc%2fpasswd"),
        unsafe_path("a/../../outside.txt"),
        unsafe_path("a/%2e%2e/%2e%2e/outside.txt"),
        unsafe_path("a/b/%2E%2E"),
        unsafe_path("a/.."),
        unsafe_path("/../outside.txt"),
        unsafe_path("..%2f"),
        unsafe_path("../"),
        // Empty components, extra slashes.
        unsafe_path(""),
        unsafe_path("/"),
        unsafe_path("//"),
        unsafe_path("//outside.txt"),
        unsafe_path("///etc/passwd"),
        unsafe_path("a//b"),
        unsafe_path("a/%2f/b"),
        unsafe_path("a//"),
        unsafe_path("%2f%2fetc%2fpasswd"),
        // `.` components.
        unsafe_path("."),
        unsafe_path("%2e"),
        unsafe_path("./x"),
        unsafe_path("x/."),
        unsafe_path("x/./y"),
        unsafe_path("x/%2e/"),
        // NUL, invalid UTF-8 after decoding.
        unsafe_path("%00"),
        unsafe_path("a%00b"),
        unsafe_path("ok.txt%00.jpg"),
        unsafe_path("%ff"),
        unsafe_path("a/%c3"),
        unsafe_path("%c0%ae%c0%ae/outside.txt"),
        unsafe_path("%ed%a0%80"),
        unsafe_path("%fe%ff"),
        // Over-long names and paths.
        unsafe_path(long_name.clone()),
        unsafe_path(format!("dir/{long_name}")),
        unsafe_path(long_path),
        // The reserved staging area.
        unsafe_path(".sftp-mirror"),
        unsafe_path(".sftp-mirror/"),
        unsafe_path(".sftp-mirror/staging/x"),
        unsafe_path("/.sftp-mirror/staging/x"),
        unsafe_path("%2esftp-mirror/staging"),
        // Deletes aimed outside must be refused just the same.
        unsafe_delete("../canary/keep.txt"),
        unsafe_delete("%2e%2e/canary/"),
        unsafe_delete("../outside.txt"),
        unsafe_delete(".sftp-mirror/"),
        unsafe_delete("/"),
        // Safe but odd: literal names on Linux; they must land inside the mirror.
        odd("%252e%252e", "%2e%2e"),
        odd("sub/%252e%252e%252f%252e%252e%252fescape", "sub/%2e%2e%2f%2e%2e%2fescape"),
        odd("..%5c..%5cx", "..\\..\\x"),
        odd("..\\..\\y", "..\\..\\y"),
        odd("...", "..."),
        odd("..../x", "..../x"),
        odd("..+", ".. "),
        odd("+..", " .."),
        odd(".hidden", ".hidden"),
        odd("a/.sftp-mirror", "a/.sftp-mirror"),
        odd(".sftp-mirror2", ".sftp-mirror2"),
        odd("100%", "100%"),
        odd("%zz", "%zz"),
        odd("%%2e%2e", "%.."),
        odd("%E2%80%A5/x", "\u{2025}/x"),
        odd("%EF%BC%8E%EF%BC%8E/x", "\u{ff0e}\u{ff0e}/x"),
        odd(max_name.clone(), max_name.clone()),
        odd("a%0ab", "a\nb"),
        odd("tab%09name", "tab\tname"),
        odd("/lead.txt", "lead.txt"),
        odd("sp+ace%2Bplus", "sp ace+plus"),
        odd("%F0%9F%98%80.txt", "\u{1f600}.txt"),
        odd("caf%C3%A9", "caf\u{e9}"),
    ];
    // Directories (trailing `/`) are created as directories.
    cases.push(Case { wire: "dir-safe/".into(), status: 204, remote: Some("dir-safe/".into()), topic: "file.created" });
    cases.push(Case {
        wire: "/dir2/sub/".into(),
        status: 204,
        remote: Some("dir2/sub/".into()),
        topic: "file.created",
    });
    assert!(cases.len() >= 40);

    for c in &cases {
        if let Some(rel) = &c.remote {
            if let Some(d) = rel.strip_suffix('/') {
                std::fs::create_dir_all(env.remote().join(d)).unwrap();
            } else {
                env.put(rel, format!("content of {rel:?}").as_bytes());
            }
        }
    }
    let cfg = env.config(&Opts::default());
    let mut d = Daemon::start(&cfg);
    let before_dir = names(env.dir.path());
    let before_sshd = names(&sshd_dir);
    let mut accepted = 0;
    for (i, c) in cases.iter().enumerate() {
        let r = d.send(&event(&format!("h{i}"), c.topic, &c.wire));
        assert_eq!(r.status, c.status, "{:?} ({}): {r:?}", c.wire, c.topic);
        if r.status == 400 {
            assert_eq!(r.body.trim().lines().count(), 1, "{:?}: one-line reason, got {:?}", c.wire, r.body);
        } else {
            accepted += 1;
        }
    }
    converge(&env, CONVERGE);
    wait_for("every accepted event done", || {
        let rows = all_rows(&cfg);
        rows.len() == accepted && rows.iter().all(|r| r["status"] == "done")
    });

    // Only safe names in the mirror, each where the remote has it.
    for rel in tree(&env.mirror()).keys() {
        for c in rel.split('/') {
            assert!(!c.is_empty() && c != "." && c != ".." && !c.contains('\0'), "unsafe name in the mirror: {rel:?}");
        }
    }
    // Nothing appeared, changed or vanished around the mirror.
    assert_eq!(names(env.dir.path()), before_dir, "entries next to the mirror changed");
    assert_eq!(names(&sshd_dir), before_sshd, "entries next to the remote root changed");
    assert_eq!(names(&canary), BTreeSet::from(["keep.txt".to_string()]));
    assert_eq!(std::fs::read(canary.join("keep.txt")).unwrap(), b"canary");
    assert_eq!(std::fs::read(env.dir.path().join("outside.txt")).unwrap(), b"local-side bait");
    assert_eq!(std::fs::read(sshd_dir.join("outside.txt")).unwrap(), b"remote-side bait");
    let rows = all_rows(&cfg);
    assert_eq!(rows.len(), accepted, "refused requests must record nothing");
    alive(&mut d);
    no_panic(&d);
}

#[test]
fn links_planted_in_the_mirror_are_replaced_never_written_through() {
    let env = Env::new();
    let outside = env.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let victim = outside.join("victim.txt");
    let victim2 = outside.join("victim2.txt");
    std::fs::write(&victim, b"outside original").unwrap();
    std::fs::write(&victim2, b"outside original 2").unwrap();
    let m = env.mirror();
    std::fs::create_dir_all(&m).unwrap();
    std::fs::hard_link(&victim, m.join("hl.txt")).unwrap();
    std::fs::hard_link(&victim2, m.join("hl-gone.txt")).unwrap();
    std::os::unix::fs::symlink(&victim, m.join("sl.txt")).unwrap();
    std::os::unix::fs::symlink(&outside, m.join("sldir")).unwrap();
    std::os::unix::fs::symlink(&outside, m.join("sldir2")).unwrap();
    // The private staging area itself replaced by a link to outside.
    std::os::unix::fs::symlink(&outside, m.join(".sftp-mirror")).unwrap();
    let before = names(&outside);

    env.put("hl.txt", b"remote content for hl");
    env.put("sl.txt", b"remote content for sl");
    env.put("sldir/inner.txt", b"remote inner");
    std::fs::create_dir_all(env.remote().join("sldir2")).unwrap();
    let cfg = env.config(&Opts::default());
    let mut d = Daemon::start(&cfg);
    for (id, topic, path) in [
        ("l1", "file.deleted", "sldir/victim.txt"),
        ("l2", "file.deleted", "sldir/"),
        ("l3", "file.created", "hl.txt"),
        ("l4", "file.created", "sl.txt"),
        ("l5", "file.created", "sldir/inner.txt"),
        ("l6", "file.created", "sldir2/"),
        ("l7", "file.deleted", "hl-gone.txt"),
    ] {
        assert_eq!(d.send(&event(id, topic, path)).status, 204, "{id}");
    }
    converge(&env, CONVERGE);
    wait_for("all done", || all_rows(&cfg).iter().all(|r| r["status"] == "done"));

    assert_eq!(std::fs::read(&victim).unwrap(), b"outside original", "written through a hard link or symlink");
    assert_eq!(std::fs::read(&victim2).unwrap(), b"outside original 2");
    assert_eq!(names(&outside), before, "files appeared in or vanished from the linked-to directory");
    let (hl, v) = (std::fs::metadata(m.join("hl.txt")).unwrap(), std::fs::metadata(&victim).unwrap());
    assert_ne!(hl.ino(), v.ino(), "hl.txt is still the outside file's inode");
    assert_eq!(v.nlink(), 1, "the outside file is still linked from the mirror");
    for p in ["sl.txt", "sldir", "sldir2", ".sftp-mirror"] {
        assert!(!m.join(p).symlink_metadata().unwrap().is_symlink(), "{p} is still a symlink");
    }
    assert_eq!(staging_files(&env), 0);
    alive(&mut d);
    no_panic(&d);
}

#[test]
fn symlinks_served_by_the_remote_are_never_followed_by_events_or_reconcile() {
    let env = Env::new();
    let secret_dir = env.dir.path().join("secret-dir");
    std::fs::create_dir_all(&secret_dir).unwrap();
    std::fs::write(secret_dir.join("secret.txt"), b"top secret, outside the remote root").unwrap();
    let r = env.remote();
    std::os::unix::fs::symlink("/etc/passwd", r.join("passwd-link")).unwrap();
    std::os::unix::fs::symlink("/etc", r.join("etc-link")).unwrap();
    std::os::unix::fs::symlink(&secret_dir, r.join("out-link")).unwrap();
    std::fs::create_dir_all(r.join("sub")).unwrap();
    std::os::unix::fs::symlink("../../secret-dir", r.join("sub/rel-link")).unwrap();
    env.put("normal.txt", b"normal");
    let forbidden = [sha(&std::fs::read("/etc/passwd").unwrap()), sha(b"top secret, outside the remote root")];

    let cfg = env.config(&Opts::default());
    let d = Daemon::start(&cfg);
    let paths = [
        "passwd-link",
        "etc-link/",
        "etc-link/passwd",
        "etc-link/hostname",
        "out-link/",
        "out-link/secret.txt",
        "sub/rel-link/secret.txt",
        "sub/rel-link/",
        "normal.txt",
    ];
    for (i, p) in paths.iter().enumerate() {
        assert_eq!(d.send(&event(&format!("s{i}"), "file.created", p)).status, 204, "{p}");
    }
    wait_for("every event applied", || {
        let rows = all_rows(&cfg);
        rows.len() == paths.len() && rows.iter().all(|r| r["status"] == "done" || r["status"] == "failed")
    });
    let check = |when: &str, want: &[&str]| {
        let t = tree(&env.mirror());
        for (rel, h) in &t {
            assert!(!forbidden.contains(h), "{when}: {rel} holds a file from outside the remote root");
        }
        let keys: BTreeSet<&str> = t.keys().map(String::as_str).collect();
        assert_eq!(keys, want.iter().copied().collect(), "{when}: the mirror followed a remote symlink");
    };
    check("after events", &["normal.txt"]);
    drop(d);

    let out = env.run(&Opts::default(), &["reconcile", "--json"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "reconcile: {text}{}", String::from_utf8_lossy(&out.stderr));
    check("after reconcile", &["normal.txt", "sub"]);
    let mut d = env.serve(&Opts { on_start: true, ..Default::default() });
    for (i, p) in paths.iter().enumerate() {
        assert_eq!(d.send(&event(&format!("again{i}"), "file.created", p)).status, 204, "{p}");
    }
    // Every one of them applied (or refused) before the mirror is looked at.
    wait_for("the events applied", || {
        let out = env.run(&Opts::default(), &["events", "--json", "--limit", "10000"]);
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let again: Vec<&serde_json::Value> =
            rows.iter().filter(|r| r["id"].as_str().is_some_and(|i| i.starts_with("again"))).collect();
        again.len() == paths.len() && again.iter().all(|r| r["status"] != "pending" && r["status"] != "running")
    });
    check("after the daemon's reconcile and events again", &["normal.txt", "sub"]);
    alive(&mut d);
    no_panic(&d);
}

#[test]
fn json_bombs_are_refused_quickly_and_the_daemon_lives_on() {
    let env = Env::new();
    env.put("alive.txt", b"still alive");
    let cfg = env.config(&Opts::default());
    let mut d = Daemon::start(&cfg);
    let deep_arrays = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_objects = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    let deep_inside = format!(
        r#"{{"Id":"deep","Topic":"file.created","Data":{{"Path":"alive.txt"}},"Extra":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let huge = "a".repeat(900_000);
    let huge_path = format!(r#"{{"Id":"hp","Topic":"file.created","Data":{{"Path":"{huge}"}}}}"#);
    let huge_id = format!(r#"{{"Id":"{huge}","Topic":"file.created","Data":{{"Path":"alive.txt"}}}}"#);
    let mut invalid_utf8 = br#"{"Id":"u","Topic":"file.created","Data":{"Path":"a"#.to_vec();
    invalid_utf8.extend_from_slice(b"\xff\xfe\"}}");
    let mut bom = b"\xef\xbb\xbf".to_vec();
    bom.extend_from_slice(br#"{"Id":"bom","Topic":"file.created","Data":{"Path":"alive.txt"}}"#);
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("100k nested arrays", deep_arrays.into_bytes()),
        ("100k nested objects", deep_objects.into_bytes()),
        ("100k nested arrays in an unknown field", deep_inside.into_bytes()),
        ("900 KB path", huge_path.into_bytes()),
        ("900 KB id", huge_id.into_bytes()),
        ("duplicate Id", br#"{"Id":"d1","Id":"d2","Topic":"file.created","Data":{"Path":"alive.txt"}}"#.to_vec()),
        (
            "duplicate Path",
            br#"{"Id":"d3","Topic":"file.created","Data":{"Path":"alive.txt","Path":"../outside"}}"#.to_vec(),
        ),
        (
            "duplicate Topic",
            br#"{"Id":"d4","Topic":"webhook.ping","Topic":"file.deleted","Data":{"Path":"alive.txt"}}"#.to_vec(),
        ),
        (
            "duplicate Data",
            br#"{"Id":"d5","Topic":"file.created","Data":{"Path":"alive.txt"},"Data":{"Path":"../x"}}"#.to_vec(),
        ),
        ("escaped dots", br#"{"Id":"e1","Topic":"file.created","Data":{"Path":"\u002e\u002e/outside"}}"#.to_vec()),
        ("escaped NUL", br#"{"Id":"e2","Topic":"file.created","Data":{"Path":"a\u0000b"}}"#.to_vec()),
        ("lone surrogate", br#"{"Id":"e3","Topic":"file.created","Data":{"Path":"\ud800"}}"#.to_vec()),
        (
            "number out of range",
            br#"{"Id":"n1","Topic":"file.created","CreatedAt":1e999999,"Data":{"Path":"a"}}"#.to_vec(),
        ),
        ("invalid UTF-8", invalid_utf8),
        ("byte order mark", bom),
        ("trailing garbage", br#"{"Id":"t1","Topic":"file.created","Data":{"Path":"alive.txt"}} x"#.to_vec()),
        ("empty body", Vec::new()),
        ("null", b"null".to_vec()),
        ("array", b"[]".to_vec()),
        ("string", br#""file.created""#.to_vec()),
        ("numeric Id", br#"{"Id":1,"Topic":"file.created","Data":{"Path":"alive.txt"}}"#.to_vec()),
        ("Path is an object", br#"{"Id":"o","Topic":"file.created","Data":{"Path":{"a":1}}}"#.to_vec()),
    ];
    let mut wrong = Vec::new();
    for (what, body) in &bodies {
        assert!(body.len() < 1 << 20, "{what} must fit max_body");
        let t0 = Instant::now();
        let r = d.send(body);
        let took = t0.elapsed();
        // An unknown field is skipped whatever its shape (without recursion): a
        // signed event carrying one is a valid event.
        let want = if what.contains("unknown field") { 204 } else { 400 };
        if r.status != want {
            wrong.push(format!("{what}: {} instead of {want}", r.status));
        }
        if want == 400 {
            assert_eq!(r.body.trim().lines().count(), 1, "{what}: one-line reason");
        }
        assert!(took < Duration::from_secs(2), "{what} took {took:?}");
        alive(&mut d);
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    let rows = all_rows(&cfg);
    assert_eq!(rows.len(), 1, "refused bodies must record nothing: {rows:?}");
    // Still alive and working.
    assert_eq!(d.send(&event("ok", "file.created", "alive.txt")).status, 204);
    wait_for("alive.txt", || env.mirror().join("alive.txt").exists());
    no_panic(&d);
}

#[test]
fn signature_and_authorization_tricks_are_401_and_record_nothing() {
    use base64::Engine;
    let env = Env::new();
    env.put("auth.txt", b"auth");
    let o = Opts { authorization: Some("Bearer t0ken".into()), ..Default::default() };
    let cfg = env.config(&o);
    let mut d = Daemon::start(&cfg);
    let body = event("a1", "file.created", "auth.txt");
    let sig = signature(&body);
    let hexsig = sig.strip_prefix("sha256=").unwrap().to_owned();
    let digest = hex::decode(&hexsig).unwrap();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    // What a SHA-1 signature looks like on the wire: 40 hex digits (here of the right digest's first 20 bytes).
    let sha1 = hexsig[..40].to_owned();
    let other_body_sig = signature(&event("a1", "file.created", "auth.txt2"));
    let auth = ("Authorization", "Bearer t0ken");
    let sig_cases: Vec<(String, &str)> = vec![
        (format!("sha256={}", &hexsig[..63]), "63 hex digits"),
        (format!("sha256={hexsig}0"), "65 hex digits"),
        (format!("sha256={}", &hexsig[..40]), "truncated"),
        (format!("sha1={sha1}"), "sha1= prefix"),
        (format!("sha256={sha1}"), "sha1 digest labelled sha256"),
        (b64(&digest[..31]), "base64 of 31 bytes"),
        (b64(&[digest.clone(), vec![0]].concat()), "base64 of 33 bytes"),
        (base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xfbu8; 32]), "url-safe base64 of other bytes"),
        (format!("sha256=sha256={hexsig}"), "prefix twice"),
        (format!("sha256= {hexsig}"), "space after ="),
        (format!("sha256={}", hexsig.replace('a', "\u{ff41}")), "fullwidth letters"),
        (format!("\u{ff53}\u{ff48}\u{ff41}256={hexsig}"), "fullwidth prefix"),
        (format!("sha256={}\u{e9}", &hexsig[..63]), "non-ASCII last digit"),
        (other_body_sig.clone(), "signature of another body"),
        (String::new(), "empty"),
        ("sha256=".into(), "prefix only"),
    ];
    for (s, why) in &sig_cases {
        let r = post(&d, &[auth, ("X-Hub-Signature", s)], &body);
        assert_eq!(r.status, 401, "{why}: {r:?}");
        assert!(!r.body.contains("t0ken") && !r.body.contains(&hexsig), "{why}: the answer leaks a secret");
    }
    let header_cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![auth, ("X-Hub-Signature", &sig), ("X-Hub-Signature", &sig)], "the right signature twice"),
        (vec![auth, ("X-Hub-Signature", &sig), ("X-Hub-Signature", &other_body_sig)], "right and wrong signature"),
        (vec![auth, ("X-Hub-Signature", &other_body_sig), ("X-Hub-Signature", &sig)], "wrong and right signature"),
        (vec![auth, ("x-hub-signature", &sig), ("X-HUB-SIGNATURE", &sig)], "two spellings of the header"),
        (vec![("Authorization", "bearer t0ken"), ("X-Hub-Signature", &sig)], "lower-case scheme"),
        (vec![("Authorization", "BEARER t0ken"), ("X-Hub-Signature", &sig)], "upper-case scheme"),
        (vec![("Authorization", "Bearer T0KEN"), ("X-Hub-Signature", &sig)], "token case"),
        (vec![("Authorization", "Bearer  t0ken"), ("X-Hub-Signature", &sig)], "two spaces"),
        (vec![("Authorization", "Bearer\tt0ken"), ("X-Hub-Signature", &sig)], "tab"),
        (vec![("Authorization", "Bearer t0ken,Bearer t0ken"), ("X-Hub-Signature", &sig)], "list"),
        (vec![("Authorization", "Bearer t0ke"), ("X-Hub-Signature", &sig)], "prefix of the token"),
        (vec![("Authorization", "Bearer t0ken\u{a0}"), ("X-Hub-Signature", &sig)], "non-breaking space"),
        (vec![("Authorization", ""), ("X-Hub-Signature", &sig)], "empty Authorization"),
        (vec![auth, ("Authorization", "Bearer wrong"), ("X-Hub-Signature", &sig)], "right and wrong Authorization"),
        (vec![("Authorization", "Bearer wrong"), auth, ("X-Hub-Signature", &sig)], "wrong and right Authorization"),
        (vec![("X-Hub-Signature", &sig)], "no Authorization"),
        (vec![auth], "no signature"),
    ];
    for (h, why) in &header_cases {
        let r = post(&d, h, &body);
        assert_eq!(r.status, 401, "{why}: {r:?}");
    }
    assert!(all_rows(&cfg).is_empty(), "401s must record nothing");
    // The right combination still works, in every documented encoding.
    assert_eq!(post(&d, &[auth, ("X-Hub-Signature", &sig)], &body).status, 204);
    let b2 = event("a2", "file.created", "auth.txt");
    let d2 = hex::decode(signature(&b2).strip_prefix("sha256=").unwrap()).unwrap();
    assert_eq!(post(&d, &[auth, ("X-Hub-Signature", &b64(&d2))], &b2).status, 204);
    let b3 = event("a3", "file.created", "auth.txt");
    let h3 = signature(&b3)[7..].to_uppercase();
    assert_eq!(post(&d, &[auth, ("X-Hub-Signature", &h3)], &b3).status, 204);
    wait_for("auth.txt", || env.mirror().join("auth.txt").exists());
    assert_eq!(all_rows(&cfg).len(), 3);
    alive(&mut d);
    no_panic(&d);
}

#[test]
fn http_framing_tricks_and_garbage_never_crash_the_daemon() {
    let env = Env::new();
    env.put("frame.txt", b"framing");
    let cfg = env.config(&Opts { max_body: 4096, ..Default::default() });
    let mut d = Daemon::start(&cfg);
    let a = d.addr;
    let t = Duration::from_secs(5);
    let body = event("f1", "file.created", "frame.txt");
    let sig = signature(&body);

    // Chunked without Content-Length, signed: accepted; also in 1-byte chunks.
    let r = post(&d, &[("X-Hub-Signature", &sig), ("Transfer-Encoding", "chunked")], &body);
    assert_eq!(r.status, 204, "{r:?}");
    let b2 = event("f2", "file.created", "frame.txt");
    let mut req = format!(
        "POST /webhook HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Hub-Signature: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        signature(&b2)
    )
    .into_bytes();
    for b in &b2 {
        req.extend_from_slice(b"1\r\n");
        req.push(*b);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(status_of(&raw(a, &req, false, t)), 204, "1-byte chunks");

    // Larger than max_body, chunked (many chunks, no length announced): 413.
    let big = event("f3", "file.created", &"a".repeat(10_000));
    let mut req = format!(
        "POST /webhook HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Hub-Signature: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        signature(&big)
    )
    .into_bytes();
    for c in big.chunks(100) {
        req.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        req.extend_from_slice(c);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(status_of(&raw(a, &req, false, t)), 413, "chunked over max_body");

    // An absurd Content-Length is refused at once, without waiting for the body.
    let t0 = Instant::now();
    let head = format!(
        "POST /webhook HTTP/1.1\r\nHost: x\r\nX-Hub-Signature: {sig}\r\nContent-Length: 99999999999\r\n\r\n{{\"Id\":"
    );
    assert_eq!(status_of(&raw(a, head.as_bytes(), false, t)), 413, "Content-Length: 99999999999");
    assert!(t0.elapsed() < Duration::from_secs(3), "413 took {:?}", t0.elapsed());

    // A valid request followed by garbage on the same connection: the first is answered.
    let mut pipelined = format!(
        "POST /webhook HTTP/1.1\r\nHost: x\r\nX-Hub-Signature: {}\r\nContent-Length: {}\r\n\r\n",
        signature(&b2),
        b2.len()
    )
    .into_bytes();
    pipelined.extend_from_slice(&b2);
    pipelined.extend_from_slice(b"\x00\xff\xfeGARBAGE \r\n\r\nPOST /webhook HTTP/1.1\r\nContent-Length: zz\r\n\r\n");
    let answer = raw(a, &pipelined, true, t);
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer:?}");

    // Garbage of many shapes: none may crash it or get a 2xx.
    let mut junk: Vec<Vec<u8>> = vec![
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
        b"GET / HTTP/9.9\r\n\r\n".to_vec(),
        b"POST /webhook HTTP/1.1\r\nContent-Length: -1\r\n\r\n".to_vec(),
        b"POST /webhook HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef".to_vec(),
        b"POST /webhook HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
        b"POST /webhook HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        b"POST /webhook HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffffff\r\nx\r\n".to_vec(),
        b"POST /webhook HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".to_vec(),
        b"POST /webhook HTTP/1.1\r\nX\x00Y: 1\r\n\r\n".to_vec(),
        b"POST /webhook\x00 HTTP/1.1\r\n\r\n".to_vec(),
        b"POST http://evil/webhook HTTP/1.1\r\nHost: evil\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00".to_vec(),
        format!("POST /webhook HTTP/1.1\r\nX-Long: {}\r\n\r\n", "a".repeat(200_000)).into_bytes(),
        format!("POST /{} HTTP/1.1\r\n\r\n", "a".repeat(100_000)).into_bytes(),
        (0..300).flat_map(|i| format!("H{i}: v\r\n").into_bytes()).collect(),
        b"\r\n\r\n\r\n\r\n".to_vec(),
    ];
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..30 {
        let n = rng.usize(1..3000);
        junk.push((0..n).map(|_| rng.u8(..)).collect());
    }
    for j in &junk {
        let answer = raw(a, j, true, Duration::from_secs(3));
        let code = status_of(&answer);
        assert!(
            !(200..300).contains(&code),
            "garbage was accepted: {:?} → {answer:?}",
            String::from_utf8_lossy(&j[..j.len().min(80)])
        );
        assert!(code < 500, "garbage caused a {code}");
        alive(&mut d);
    }
    // Still serving, nothing recorded but the valid events.
    let b4 = event("f4", "file.created", "frame.txt");
    assert_eq!(d.send(&b4).status, 204);
    wait_for("frame.txt", || env.mirror().join("frame.txt").exists());
    let ids: BTreeSet<String> = all_rows(&cfg).iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, ["f1", "f2", "f4"].iter().map(|s| s.to_string()).collect());
    no_panic(&d);
}
