//! Intake: every HTTP answer of SPEC §3, and that refused requests leave no trace.

use crate::common::*;
use sftp_mirror::config::Secret;

fn journal_rows(env: &Env) -> usize {
    let out = env.run(&Opts::default(), &["events", "--json", "--limit", "100000"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array().unwrap().len()
}

#[test]
fn refusals_have_the_documented_status_and_record_nothing() {
    let env = Env::new();
    env.put("keep.txt", b"keep");
    let d = env.serve(&Opts { authorization: Some("Bearer t0ken".into()), max_body: 4096, ..Default::default() });
    let body = event("e1", "file.created", "keep.txt");
    let sig = sftp_mirror::webhook::sign(&Secret::new(SECRET), &body);
    let wrong = sftp_mirror::webhook::sign(&Secret::new("not the secret"), &body);
    let auth = ("Authorization", "Bearer t0ken");
    let post = |h: &[(&str, &str)], b: &[u8]| request(d.addr, "POST", "/webhook", h, b);

    // 401: missing, wrong, truncated, doubled signature; wrong or missing Authorization.
    for (headers, why) in [
        (vec![auth], "no signature"),
        (vec![auth, ("X-Hub-Signature", wrong.as_str())], "wrong signature"),
        (vec![auth, ("X-Hub-Signature", &sig[..40])], "truncated"),
        (vec![auth, ("X-Hub-Signature", sig.as_str()), ("X-Hub-Signature", sig.as_str())], "two headers"),
        (vec![("X-Hub-Signature", sig.as_str())], "no Authorization"),
        (vec![("Authorization", "Bearer t0ken2"), ("X-Hub-Signature", sig.as_str())], "wrong Authorization"),
    ] {
        let r = post(&headers, &body);
        assert_eq!(r.status, 401, "{why}: {r:?}");
        assert!(!r.body.contains("t0ken") && !r.body.contains(&sig[7..]), "{why}: answer leaks a secret");
    }
    // 400: malformed JSON, missing path, traversal (also encoded): signed correctly.
    for (b, why) in [
        (b"{not json".to_vec(), "malformed"),
        (br#"{"Id":"x1","Topic":"file.created","Data":{}}"#.to_vec(), "no path"),
        (event("x2", "file.created", "../outside.txt"), "dotdot"),
        (event("x3", "file.created", "%2e%2e/outside.txt"), "encoded dotdot"),
        (event("x4", "file.deleted", "a/%2e%2e/%2e%2e/x"), "nested encoded dotdot"),
        (event("x5", "file.created", "a//b"), "empty component"),
        (event("x6", "file.created", "a%00b"), "NUL"),
        (event("x7", "file.created", ".sftp-mirror/staging/x"), "reserved"),
    ] {
        let s = sftp_mirror::webhook::sign(&Secret::new(SECRET), &b);
        let r = post(&[auth, ("X-Hub-Signature", &s)], &b);
        assert_eq!(r.status, 400, "{why}: {r:?}");
        assert_eq!(r.body.trim().lines().count(), 1, "{why}: one-line reason, got {:?}", r.body);
    }
    // 413: over max_body, with Content-Length and chunked.
    let big = event("big", "file.created", &"a".repeat(5000));
    let s = sftp_mirror::webhook::sign(&Secret::new(SECRET), &big);
    assert_eq!(post(&[auth, ("X-Hub-Signature", &s)], &big).status, 413);
    assert_eq!(post(&[auth, ("X-Hub-Signature", &s), ("Transfer-Encoding", "chunked")], &big).status, 413);
    // 404 / 405.
    assert_eq!(request(d.addr, "POST", "/other", &[auth, ("X-Hub-Signature", &sig)], &body).status, 404);
    assert_eq!(request(d.addr, "GET", "/webhook", &[auth], b"").status, 405);

    // Nothing was recorded and nothing escaped the mirror.
    assert_eq!(journal_rows(&env), 0);
    assert!(!env.dir.path().join("outside.txt").exists() && !env.mirror().join("../outside.txt").exists());

    // The same request, properly signed and authorized, is accepted (also chunked).
    assert_eq!(post(&[auth, ("X-Hub-Signature", &sig), ("Transfer-Encoding", "chunked")], &body).status, 204);
    wait_for("keep.txt mirrored", || env.mirror().join("keep.txt").exists());
    assert_eq!(journal_rows(&env), 1);
}

#[test]
fn pings_other_topics_and_duplicates_are_204() {
    let env = Env::new();
    env.put("a.txt", b"a");
    let d = env.serve(&Opts::default());
    let ping =
        br#"{"Id":"p1","Topic":"webhook.ping","Data":{"Topics":["file.created"],"State":"Active","Url":"https://x"}}"#;
    assert_eq!(d.send(ping).status, 204);
    assert_eq!(d.send(&event("dl", "file.downloaded", "a.txt")).status, 204);
    assert_eq!(d.send(&event("job", "job.execution.completed", "a.txt")).status, 204);
    // Duplicates (SFTP To Go delivers at least once): answered 204, one row each.
    assert_eq!(d.send(ping).status, 204);
    let created = event("c1", "file.created", "a.txt");
    for _ in 0..3 {
        assert_eq!(d.send(&created).status, 204);
    }
    wait_for("a.txt", || env.mirror().join("a.txt").exists());
    let out = env.run(&Opts::default(), &["events", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v.as_array().unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(rows.len(), 4, "one row per id: {ids:?}");
    assert!(rows.iter().filter(|r| r["id"] != "c1").all(|r| r["status"] == "ignored"), "{v}");
    wait_for("c1 done", || {
        let out = env.run(&Opts::default(), &["events", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array().unwrap().iter().any(|r| r["id"] == "c1" && r["status"] == "done")
    });
}

#[test]
fn base64_signature_and_rotation_secrets_are_accepted() {
    use base64::Engine;
    use hmac::{Hmac, KeyInit, Mac};
    let env = Env::new();
    env.put("f.txt", b"x");
    // During a rotation both the new and the old secret are valid.
    let cfg = env.config(&Opts::default());
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&format!("secret = {SECRET:?}"), &format!("secrets = [\"new-secret\", {SECRET:?}]"));
    std::fs::write(&cfg, text).unwrap();
    let d = Daemon::start(&cfg);
    let b64 = |secret: &str, body: &[u8]| {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    };
    let post = |sig: &str, body: &[u8]| request(d.addr, "POST", "/webhook", &[("X-Hub-Signature", sig)], body).status;
    let (old, new) = (event("old-1", "file.created", "f.txt"), event("new-1", "file.created", "f.txt"));
    // Each secret in each encoding: base64 (the older sample), sha256=hex, bare hex.
    assert_eq!(post(&b64(SECRET, &old), &old), 204, "old secret, base64");
    assert_eq!(post(&b64("new-secret", &new), &new), 204, "new secret, base64");
    let hex = sftp_mirror::webhook::sign(&Secret::new("new-secret"), &event("new-2", "file.created", "f.txt"));
    assert_eq!(post(&hex, &event("new-2", "file.created", "f.txt")), 204, "new secret, sha256=hex");
    let bare = event("new-3", "file.created", "f.txt");
    let bare_sig = sftp_mirror::webhook::sign(&Secret::new("new-secret"), &bare);
    assert_eq!(post(bare_sig.trim_start_matches("sha256="), &bare), 204, "new secret, bare hex");
    // A secret that is neither is refused.
    let forged = event("forged", "file.created", "f.txt");
    assert_eq!(post(&b64("another-secret", &forged), &forged), 401);
    wait_for("f.txt", || env.mirror().join("f.txt").exists());
}

#[test]
fn refuses_to_start_without_verification() {
    let env = Env::new();
    let cfg = env.config(&Opts::default());
    let text = std::fs::read_to_string(&cfg).unwrap().replace(&format!("secret = {SECRET:?}"), "");
    std::fs::write(&cfg, text).unwrap();
    let out = std::process::Command::new(bin()).arg("--config").arg(&cfg).arg("serve").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("allow_unsigned"), "{err}");
}

#[test]
fn sign_prints_the_spec_test_vector() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "Very Secret Secret\n").unwrap();
    let body = dir.path().join("body");
    std::fs::write(&body, "Hello! This is a test payload.").unwrap();
    let out =
        std::process::Command::new(bin()).arg("sign").arg("--secret-file").arg(&secret).arg(&body).output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "sha256=8ba4c47558de1872150c3ec82211c34bf0cbd6d60fc4f9875b97853af06de917"
    );
}
