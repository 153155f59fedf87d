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
    let d = env.serve(&Opts::default());
    let ping =
        br#"{"Id":"p1","Topic":"webhook.ping","Data":{"Topics":["file.created"],"State":"Active","Url":"https://x"}}"#;
    assert_eq!(d.send(ping).status, 204);
    assert_eq!(d.send(&event("dl", "file.downloaded", "a.txt")).status, 204);
    assert_eq!(d.send(&event("job", "job.execution.completed", "a.txt")).status, 204);
    let out = env.run(&Opts::default(), &["events", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v.as_array().unwrap().iter().all(|r| r["status"] == "ignored"), "{v}");
    assert_eq!(v.as_array().unwrap().len(), 3);
}

#[test]
fn base64_signature_and_rotation_secrets_are_accepted() {
    use base64::Engine;
    use hmac::{Hmac, KeyInit, Mac};
    let env = Env::new();
    env.put("f.txt", b"x");
    let d = env.serve(&Opts::default());
    let body = event("b64", "file.created", "f.txt");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&body);
    let b64 = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let r = request(d.addr, "POST", "/webhook", &[("X-Hub-Signature", &b64)], &body);
    assert_eq!(r.status, 204, "{r:?}");
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
