//! The SFTP client against OpenSSH: every way to log in, and every way the host
//! key check must refuse (exit 4, with the fingerprint the server showed).

use crate::common::*;

fn reconcile_with(env: &Env, auth: String) -> std::process::Output {
    env.run(&Opts { sftp_auth: Some(auth), ..Default::default() }, &["reconcile", "--json"])
}

#[test]
fn password_passphrase_key_and_fingerprint_pin_all_work() {
    let env = Env::new();
    env.put("hello.txt", b"hello");
    let kh = env.sshd.known_hosts_path().to_owned();
    let (user, pw) = env.sshd.password_user();
    let (key, pass) = env.sshd.client_key_with_passphrase();
    let fp = env.sshd.host_key_fingerprint();
    for (what, auth, user) in [
        ("password", format!("password = {pw:?}\nknown_hosts = {kh:?}"), user.to_owned()),
        (
            "passphrase key",
            format!("private_key = {key:?}\nprivate_key_passphrase = {pass:?}\nknown_hosts = {kh:?}"),
            env.sshd.user().to_owned(),
        ),
        (
            "pinned fingerprint",
            format!("private_key = {:?}\nhost_key_fingerprint = {fp:?}", env.sshd.client_key_path()),
            env.sshd.user().to_owned(),
        ),
    ] {
        let cfg = env.config(&Opts { sftp_auth: Some(auth), ..Default::default() });
        let text = std::fs::read_to_string(&cfg)
            .unwrap()
            .replace(&format!("username = {:?}", env.sshd.user()), &format!("username = {user:?}"));
        std::fs::write(&cfg, text).unwrap();
        let _ = std::fs::remove_dir_all(env.mirror());
        let out =
            std::process::Command::new(bin()).arg("--config").arg(&cfg).args(["reconcile", "--json"]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{what}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(std::fs::read(env.mirror().join("hello.txt")).unwrap(), b"hello", "{what}");
    }
}

#[test]
fn wrong_or_unknown_host_keys_and_bad_credentials_exit_4() {
    let env = Env::new();
    let fp = env.sshd.host_key_fingerprint();
    let key = env.sshd.client_key_path().to_owned();

    let wrong = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s";
    let out = reconcile_with(&env, format!("private_key = {key:?}\nhost_key_fingerprint = {wrong:?}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("HOST KEY MISMATCH") && err.contains(&fp), "must print the key seen: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    // A known_hosts that records another key for this host.
    let other = env.dir.path().join("other_known_hosts");
    std::fs::write(
        &other,
        format!(
            "[127.0.0.1]:{} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n",
            env.sshd.port()
        ),
    )
    .unwrap();
    let out = reconcile_with(&env, format!("private_key = {key:?}\nknown_hosts = {other:?}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("MISMATCH") && err.contains(&fp), "{err}");

    // A known_hosts without this host: unknown, with the fix in the message.
    std::fs::write(
        &other,
        "[example.org]:22 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n",
    )
    .unwrap();
    let out = reconcile_with(&env, format!("private_key = {key:?}\nknown_hosts = {other:?}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("not trusted") && err.contains(&fp) && err.contains("--trust-host-key"), "{err}");

    // Wrong password.
    let kh = env.sshd.known_hosts_path().to_owned();
    let out = reconcile_with(&env, format!("password = \"wrong\"\nknown_hosts = {kh:?}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("authentication failed") && !err.contains("wrong"), "{err}");

    // Nothing was written in any of these.
    assert!(tree(&env.mirror()).is_empty());
}

#[test]
fn a_broken_config_exits_2_with_one_line_per_problem() {
    let env = Env::new();
    let cfg = env.config(&Opts::default());
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("port = ", "port = \"nope\"\n#")
        .replace("concurrency = 8", "concurrency = 0");
    std::fs::write(&cfg, text).unwrap();
    let out = std::process::Command::new(bin()).arg("--config").arg(&cfg).arg("reconcile").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sftp.port") && err.contains("mirror.concurrency"), "{err}");
    assert!(tree(&env.mirror()).is_empty());
}

#[test]
fn server_gone_mid_pass_then_back_converges() {
    let mut env = Env::new();
    for i in 0..50 {
        env.put(&format!("f{i}.bin"), &vec![i as u8; 200_000]);
    }
    let d = env.serve(&Opts::default());
    env.sshd.stop();
    for i in 0..50 {
        assert_eq!(d.send(&event(&format!("e{i}"), "file.created", &format!("f{i}.bin"))).status, 204);
    }
    // The outage is seen: an apply failed and its event waits for a retry.
    wait_for("a failed attempt", || {
        let out = env.run(&Opts::default(), &["events", "--json", "--limit", "100"]);
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        rows.iter().any(|r| r["attempts"].as_u64() >= Some(1) && !r["last_error"].is_null())
    });
    env.sshd.restart();
    wait_mirror_equals_remote(&env);
    drop(d);
}
