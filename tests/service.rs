//! Running as a service: `check`, `events`/`retry`, SIGTERM, `/healthz`,
//! `/metrics`, TLS with certificate reload on SIGHUP, slow-header clients.

use crate::common::*;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn check_reports_each_step_with_the_documented_exit_codes() {
    let env = Env::new();
    let out = env.run(&Opts::default(), &["check"]);
    let o = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{o}{}", text(&out.stderr));
    for step in ["✓ config", "✓ TCP", "✓ host key", "✓ logged in", "✓ remote root", "✓ mirror", "✓ journal"]
    {
        assert!(o.contains(step), "missing {step:?}: {o}");
    }

    let fp = env.sshd.host_key_fingerprint();
    let wrong = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s";
    let auth = format!("private_key = {:?}\nhost_key_fingerprint = {wrong:?}", env.sshd.client_key_path());
    let out = env.run(&Opts { sftp_auth: Some(auth), ..Default::default() }, &["check"]);
    let o = text(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{o}");
    assert!(o.contains("✗") && o.contains(&fp), "the real fingerprint is printed: {o}");

    let cfg = env.config(&Opts::default());
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap().replace("[mirror]", "[mirror]\nbogus = 1")).unwrap();
    let out = Command::new(bin()).arg("--config").arg(&cfg).arg("check").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stdout).contains("mirror.bogus: unknown key"));
}

#[test]
fn trust_host_key_records_a_line_that_the_next_check_accepts() {
    let env = Env::new();
    let kh = env.dir.path().join("new_known_hosts");
    let auth = format!("private_key = {:?}\nknown_hosts = {kh:?}", env.sshd.client_key_path());
    let o = Opts { sftp_auth: Some(auth), ..Default::default() };
    // A known_hosts not there yet knows no key: the key is shown, exit 4.
    let out = env.run(&o, &["check"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains(&env.sshd.host_key_fingerprint()), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("--trust-host-key"), "{}", text(&out.stdout));
    let out = env.run(&o, &["check", "--trust-host-key"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let line = std::fs::read_to_string(&kh).unwrap();
    assert!(line.starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 ", env.sshd.port())), "{line}");
    let out = env.run(&o, &["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains(&env.sshd.host_key_fingerprint()));

    // A different key already recorded: refused, file untouched.
    let other = "[127.0.0.1]:PORT ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n"
        .replace("PORT", &env.sshd.port().to_string());
    std::fs::write(&kh, &other).unwrap();
    let out = env.run(&o, &["check", "--trust-host-key"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("refusing"));
    assert_eq!(std::fs::read_to_string(&kh).unwrap(), other);
}

#[test]
fn events_and_retry_need_only_the_journal_and_an_unknown_id_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.db");
    // The packaged config before it is filled in: no credentials, no secret.
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, format!("[sftp]\nhost = \"\"\n[journal]\npath = {journal:?}\n")).unwrap();
    let run = |args: &[&str]| Command::new(bin()).arg("--config").arg(&cfg).args(args).output().unwrap();
    let out = run(&["events", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "[]");
    let out = run(&["retry", "nope-id"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("not failed events"), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr).trim().lines().count(), 1, "one line: {}", text(&out.stderr));
}

#[test]
fn events_lists_the_journal_and_retry_requeues_failed_events() {
    let mut env = Env::new();
    env.put("later.txt", b"arrives after retry");
    let o = Opts { extra_journal: "max_attempts = 1".into(), ..Default::default() };
    let d = env.serve(&o);
    env.sshd.stop();
    env.sshd.kill_connections();
    assert_eq!(d.send(&event("r1", "file.created", "later.txt")).status, 204);
    wait_for("the event to fail", || {
        let out = env.run(&o, &["events", "--status", "failed", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap().as_array().unwrap().len() == 1
    });
    let out = env.run(&o, &["events", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = &rows[0];
    assert_eq!(
        (row["id"].as_str(), row["topic"].as_str(), row["path"].as_str()),
        (Some("r1"), Some("file.created"), Some("later.txt"))
    );
    assert_eq!(row["status"], "failed");
    assert!(row["last_error"].as_str().unwrap().contains("127.0.0.1"), "{row}");
    let table = text(&env.run(&o, &["events"]).stdout);
    assert!(table.contains("r1") && table.contains("failed"), "{table}");

    env.sshd.restart();
    let out = env.run(&o, &["retry", "--failed"]);
    assert!(text(&out.stdout).starts_with("1 event(s) queued again"), "{}", text(&out.stdout));
    wait_for("later.txt after retry", || {
        std::fs::read(env.mirror().join("later.txt")).is_ok_and(|b| b == b"arrives after retry")
    });
    drop(d);
}

#[test]
fn sigterm_during_a_burst_exits_0_and_nothing_answered_204_is_lost() {
    let env = Env::new();
    for i in 0..60 {
        env.put(&format!("t/{i}.bin"), &vec![7u8; 100_000 + i]);
    }
    let mut d = env.serve(&Opts { concurrency: 2, ..Default::default() });
    let addr = d.addr;
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = answered.clone();
    let sender = std::thread::spawn(move || {
        let mut accepted = Vec::new();
        for i in 0..60 {
            let body = event(&format!("t{i}"), "file.created", &format!("t/{i}.bin"));
            let sig = sftp_mirror::webhook::sign(&sftp_mirror::config::Secret::new(SECRET), &body);
            let headers = [("X-Hub-Signature", sig.as_str())];
            if let Some(r) = try_request(addr, "POST", "/webhook", &headers, &body, Duration::from_secs(10)) {
                if r.status == 204 {
                    accepted.push(i);
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        accepted
    });
    // The signal lands in the middle of the burst: some answered, more coming.
    wait_for("ten events answered", || answered.load(std::sync::atomic::Ordering::Relaxed) >= 10);
    assert_eq!(d.terminate(), Some(0), "{}", d.log());
    let accepted = sender.join().unwrap();
    assert!(!accepted.is_empty());
    let _d = env.serve(&Opts::default());
    for i in &accepted {
        let p = env.mirror().join(format!("t/{i}.bin"));
        wait_for(&format!("t/{i}.bin"), || std::fs::metadata(&p).is_ok_and(|m| m.len() == 100_000 + *i as u64));
    }
}

fn get(addr: std::net::SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, &[], b"")
}

/// Parses Prometheus text: every non-comment line is `name{labels} value`.
fn metric(body: &str, name_and_labels: &str) -> f64 {
    for line in body.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad metrics line {line:?}"));
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(key.chars().next().unwrap().is_ascii_alphabetic(), "{line:?}");
        if key == name_and_labels {
            return v;
        }
    }
    0.0
}

#[test]
fn healthz_follows_the_sftp_server_and_metrics_count_events() {
    let mut env = Env::new();
    env.put("m.txt", b"metrics");
    let o = Opts { admin: "127.0.0.1:0".into(), extra_admin: "sftp_down_after = \"1s\"".into(), ..Default::default() };
    let d = env.serve(&o);
    let admin = d.admin.expect("admin address");
    let h = get(admin, "/healthz");
    assert_eq!(h.status, 200, "{h:?}");

    let before = get(admin, "/metrics").body;
    assert_eq!(metric(&before, "sftp_mirror_webhook_requests_total{topic=\"file.created\",result=\"queued\"}"), 0.0);
    assert_eq!(d.send(&event("m1", "file.created", "m.txt")).status, 204);
    assert_eq!(d.send(&event("m1", "file.created", "m.txt")).status, 204);
    assert_eq!(request(d.addr, "POST", "/webhook", &[], b"{}").status, 401);
    wait_for("m.txt", || env.mirror().join("m.txt").exists());
    wait_for("metrics to count the download", || {
        let m = get(admin, "/metrics").body;
        metric(&m, "sftp_mirror_applies_total{action=\"download\",result=\"ok\"}") == 1.0
    });
    let m = get(admin, "/metrics").body;
    assert_eq!(metric(&m, "sftp_mirror_webhook_requests_total{topic=\"file.created\",result=\"queued\"}"), 1.0, "{m}");
    assert_eq!(metric(&m, "sftp_mirror_webhook_requests_total{topic=\"file.created\",result=\"duplicate\"}"), 1.0);
    assert_eq!(metric(&m, "sftp_mirror_webhook_requests_total{topic=\"unknown\",result=\"unauthorized\"}"), 1.0);
    assert_eq!(metric(&m, "sftp_mirror_downloaded_bytes_total"), 7.0);
    assert_eq!(metric(&m, "sftp_mirror_received_bytes_total"), 7.0, "{m}");
    assert!(metric(&m, "sftp_mirror_webhook_request_duration_seconds_count") >= 3.0);
    assert_eq!(metric(&m, "sftp_mirror_journal_events{status=\"done\"}"), 1.0);

    env.sshd.stop();
    env.sshd.kill_connections();
    wait_for("/healthz 503 while the SFTP server is down", || get(admin, "/healthz").status == 503);
    assert!(get(admin, "/healthz").body.contains("SFTP server unreachable"));
    env.sshd.restart();
    wait_for("/healthz 200 once it is back", || get(admin, "/healthz").status == 200);
    assert!(metric(&get(admin, "/metrics").body, "sftp_mirror_sftp_connects_total") >= 2.0);
}

/// A CA and a server certificate for 127.0.0.1, made with openssl.
fn make_cert(dir: &Path, ca: &str, name: &str) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl is installed by scripts/test.sh");
        assert!(out.status.success(), "openssl {args:?}: {}", text(&out.stderr));
    };
    if !dir.join(format!("{ca}.pem")).exists() {
        run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={ca}"),
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
        ]);
    }
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        &format!("/CN={name}"),
        "-keyout",
        "new.key",
        "-out",
        "server.csr",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        &format!("{ca}.pem"),
        "-CAkey",
        &format!("{ca}.key"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "new.pem",
    ]);
    // Replace both files the way certbot does: new files, renamed over the old ones.
    std::fs::rename(dir.join("new.pem"), dir.join("fullchain.pem")).unwrap();
    std::fs::rename(dir.join("new.key"), dir.join("privkey.pem")).unwrap();
}

fn curl_https(addr: std::net::SocketAddr, ca: &Path, body: &[u8]) -> (u16, String) {
    let sig = sftp_mirror::webhook::sign(&sftp_mirror::config::Secret::new(SECRET), body);
    let out = Command::new("curl")
        .args(["-sS", "-v", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(ca)
        .args(["-H", &format!("X-Hub-Signature: {sig}"), "--data-binary", &text(body)])
        .arg(format!("https://{addr}/webhook"))
        .output()
        .expect("curl is installed by scripts/test.sh");
    (text(&out.stdout).trim().parse().unwrap_or(0), text(&out.stderr))
}

#[test]
fn tls_serves_https_and_sighup_swaps_the_certificate() {
    let env = Env::new();
    env.put("tls.txt", b"over https");
    let certs = env.dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    make_cert(&certs, "Test CA", "first.example");
    let tls = format!("tls_cert = {:?}\ntls_key = {:?}", certs.join("fullchain.pem"), certs.join("privkey.pem"));
    let d = env.serve(&Opts { extra_webhook: tls, ..Default::default() });
    let ca = certs.join("Test CA.pem");
    let (code, log) = curl_https(d.addr, &ca, &event("h1", "file.created", "tls.txt"));
    assert_eq!(code, 204, "{log}");
    assert!(log.contains("CN=first.example"), "{log}");
    wait_for("tls.txt", || env.mirror().join("tls.txt").exists());

    make_cert(&certs, "Test CA", "second.example");
    Command::new("kill").arg("-HUP").arg(d.child.id().to_string()).status().unwrap();
    wait_for("the new certificate", || {
        curl_https(d.addr, &ca, &event("h2", "file.created", "tls.txt")).1.contains("CN=second.example")
    });
    assert!(d.log().contains("reloaded webhook secrets and TLS certificate"));
    // Plain HTTP on the TLS port is not served (no HTTP answer at all).
    let plain = try_request(d.addr, "POST", "/webhook", &[], b"{}", std::time::Duration::from_secs(10));
    assert!(plain.as_ref().is_none_or(|r| r.status != 204), "{plain:?}");
}

#[test]
fn a_client_sending_headers_a_byte_a_second_is_cut_off_while_others_are_served() {
    let env = Env::new();
    env.put("ok.txt", b"ok");
    let d = env.serve(&Opts { extra_webhook: "header_timeout = \"2s\"".into(), ..Default::default() });
    let addr = d.addr;
    let slow = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let start = Instant::now();
        let req = b"POST /webhook HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        for b in req.iter() {
            if s.write_all(&[*b]).is_err() {
                return start.elapsed();
            }
            std::thread::sleep(Duration::from_secs(1));
            let mut probe = [0u8; 1];
            s.set_nonblocking(true).unwrap();
            let closed = matches!(s.read(&mut probe), Ok(0));
            s.set_nonblocking(false).unwrap();
            if closed {
                return start.elapsed();
            }
        }
        start.elapsed()
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(d.send(&event("ok1", "file.created", "ok.txt")).status, 204, "normal requests are still served");
    let took = slow.join().unwrap();
    assert!(took < Duration::from_secs(10), "the slow client was cut off (after {took:?})");
}

#[test]
fn silent_connections_are_closed_from_accept_and_a_full_house_does_not_lock_out_a_signed_post() {
    let env = Env::new();
    env.put("ok.txt", b"ok");
    let d = env.serve(&Opts { extra_webhook: "header_timeout = \"2s\"".into(), ..Default::default() });
    // More silent connections than the daemon serves at once; some send only
    // the start of the HTTP/2 preface, which the protocol detection waits on.
    let mut silent = Vec::new();
    for i in 0..530 {
        let mut s = std::net::TcpStream::connect(d.addr).unwrap();
        if i % 10 == 0 {
            s.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
        }
        silent.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    // SFTP To Go expects an answer within a few seconds; the full house makes room.
    let start = Instant::now();
    assert_eq!(d.send(&event("full-house", "file.created", "ok.txt")).status, 204);
    let took = start.elapsed();
    // A bound for a loaded 2-core machine; before, it got no answer at all.
    assert!(took < Duration::from_secs(8), "a signed POST waited {took:?} behind silent connections");
    // Every silent connection is closed, within a bound of header_timeout from accept.
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        let mut buf = [0u8; 64];
        loop {
            match s.read(&mut buf) {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                // A signal for another test's child process: read again.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("a silent connection was still open after 8 s more: {e}"),
            }
        }
    }
}

#[test]
fn the_webhook_listens_at_once_while_the_sftp_server_is_silent_and_a_wrong_host_key_still_exits_4() {
    let env = Env::new();
    // Accepts TCP (the kernel does) and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = env.config(&Opts::default());
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&format!("port = {}", env.sshd.port()), &format!("port = {}", silent.local_addr().unwrap().port()));
    std::fs::write(&cfg, text).unwrap();
    let start = Instant::now();
    let d = Daemon::start(&cfg);
    let took = start.elapsed();
    // sftp.timeout is 10 s in these configs: listening must not wait for it.
    assert!(took < Duration::from_secs(5), "the webhook port opened after {took:?}");
    assert_eq!(d.send(&event("while-silent", "file.created", "later.txt")).status, 204);
    let rows = journal_rows(&cfg, &[]);
    assert!(rows.iter().any(|r| r["id"] == "while-silent"), "journaled while SFTP is down: {rows:?}");
    drop(d);

    // A wrong host key is not something to wait out: serve stops with exit 4.
    let wrong = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s";
    let auth = format!("private_key = {:?}\nhost_key_fingerprint = {wrong:?}", env.sshd.client_key_path());
    let cfg = env.config(&Opts { sftp_auth: Some(auth), ..Default::default() });
    let mut child = Command::new(bin())
        .arg("--config")
        .arg(&cfg)
        .arg("serve")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "serve kept running with a wrong host key");
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    assert_eq!(status.code(), Some(4), "{err}");
    assert!(err.contains("HOST KEY MISMATCH"), "{err}");
}

#[test]
fn a_flood_of_refusals_writes_a_line_a_second_per_kind_and_counts_every_one() {
    let env = Env::new();
    let d = env.serve(&Opts { admin: "127.0.0.1:0".into(), ..Default::default() });
    let admin = d.admin.expect("admin address");
    let bad = [("X-Hub-Signature", "sha256=0000000000000000000000000000000000000000000000000000000000000000")];
    let start = Instant::now();
    const N: usize = 1500;
    for i in 0..N {
        let r = request(d.addr, "POST", "/webhook", &bad, format!("{{\"Id\":\"f{i}\"}}").as_bytes());
        assert_eq!(r.status, 401);
    }
    let secs = start.elapsed().as_secs() + 1;
    let metrics = get(admin, "/metrics").body;
    assert_eq!(
        metric(&metrics, "sftp_mirror_webhook_requests_total{topic=\"unknown\",result=\"unauthorized\"}"),
        N as f64
    );
    let lines = d.log().lines().filter(|l| l.contains("webhook refused (401)")).count() as u64;
    assert!(lines >= 1 && lines <= secs + 1, "{lines} log lines for {N} refusals in {secs} s");
    // The next line after a quiet second says how many went unlogged.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(request(d.addr, "POST", "/webhook", &bad, b"{}").status, 401);
    wait_for("the summary line", || d.log().contains("more since the last such line"));
}

#[test]
fn a_client_that_sends_its_whole_oversized_body_first_reads_413() {
    let env = Env::new();
    let d = env.serve(&Opts { max_body: 1 << 20, ..Default::default() });
    let body = vec![b'x'; 2 << 20];
    let mut req = format!(
        "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    // Python's http.client does this: write everything, then read.
    let mut s = std::net::TcpStream::connect(d.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&req).expect("the whole body is taken (no broken pipe)");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text:?}");
    wait_for("the 413 log line", || d.log().contains("webhook refused (413)"));
}

#[test]
fn the_start_up_reconcile_runs_and_healthz_reports_it() {
    let env = Env::new();
    env.put("found/by/reconcile.txt", b"no event announced me");
    let o = Opts { on_start: true, admin: "127.0.0.1:0".into(), ..Default::default() };
    let d = env.serve(&o);
    let admin = d.admin.expect("admin address");
    wait_for("the start-up pass", || get(admin, "/healthz").body.contains("\"last_reconcile\":{"));
    let h: serde_json::Value = serde_json::from_str(&get(admin, "/healthz").body).unwrap();
    assert_eq!(h["last_reconcile"]["ok"], true, "{h}");
    assert!(h["last_reconcile"]["result"].as_str().unwrap().starts_with("1 file downloaded"), "{h}");
    assert_eq!(std::fs::read(env.mirror().join("found/by/reconcile.txt")).unwrap(), b"no event announced me");
    assert!(d.log().contains("reconcile pass done: 1 file downloaded"), "{}", d.log());
    assert!(metric(&get(admin, "/metrics").body, "sftp_mirror_last_reconcile_success") == 1.0);
}

#[test]
fn under_systemd_log_lines_carry_their_priority_and_no_timestamp() {
    let env = Env::new();
    let cfg = env.config(&Opts::default());
    let d = Daemon::start_with_env(&cfg, &[("JOURNAL_STREAM", "8:12345")]);
    let bad = [("X-Hub-Signature", "sha256=00")];
    assert_eq!(request(d.addr, "POST", "/webhook", &bad, b"{}").status, 401);
    wait_for("the refusal line", || d.log().contains("webhook refused (401)") && d.log().contains("webhook listening"));
    let log = d.log();
    let listening = log.lines().find(|l| l.contains("webhook listening")).unwrap();
    assert!(listening.starts_with("<6>"), "{listening}");
    let refused = log.lines().find(|l| l.contains("webhook refused (401)")).unwrap();
    assert!(refused.starts_with("<4>"), "{refused}");
    assert!(!log.contains("Z ") && !log.contains('\u{1b}'), "no timestamps or colour of our own: {log}");
}

#[test]
fn a_taken_port_or_a_missing_tls_key_is_a_setup_error_for_serve_and_check() {
    let env = Env::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = env.config(&Opts::default());
    let base = std::fs::read_to_string(&cfg).unwrap();
    let busy = env.dir.path().join("busy.toml");
    std::fs::write(&busy, base.replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{port}\""))).unwrap();
    let run = |cfg: &Path, cmd: &str| Command::new(bin()).arg("--config").arg(cfg).arg(cmd).output().unwrap();
    let out = run(&busy, "serve");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("cannot listen on"), "{}", text(&out.stderr));
    let out = run(&busy, "check");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("✗ webhook.listen"), "{}", text(&out.stdout));

    let certs = env.dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let cert = certs.join("cert.pem");
    std::fs::write(&cert, "not a certificate").unwrap();
    let tls = env.dir.path().join("tls.toml");
    let extra = format!("tls_cert = {cert:?}\ntls_key = {:?}\n[admin]", certs.join("missing-key.pem"));
    std::fs::write(&tls, base.replacen("[admin]", &extra, 1)).unwrap();
    let out = run(&tls, "serve");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("webhook.tls_"), "{}", text(&out.stderr));
    let out = run(&tls, "check");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    drop(taken);
}

#[test]
fn help_names_the_default_config_and_the_exit_codes() {
    let out = Command::new(bin()).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    assert!(help.contains("/etc/sftp-mirror/config.toml"), "{help}");
    assert!(help.contains("Exit codes: 0 success") && help.contains("4 cannot reach"), "{help}");
}

#[test]
fn a_command_help_keeps_its_own_flags_apart_from_the_global_ones_and_demo_refuses_a_config() {
    let out = Command::new(bin()).args(["reconcile", "--help"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    let (own, global) = help.split_once("Global options:").unwrap_or_else(|| panic!("no global heading: {help}"));
    assert!(own.contains("--dry-run") && !own.contains("--config") && !own.contains("--verbose"), "{help}");
    assert!(global.contains("--config") && global.contains("--verbose") && !global.contains("--dry-run"), "{help}");

    // The demo brings its own server and mirror: a --config would be ignored, so it is refused.
    let out = Command::new(bin()).args(["--config", "/etc/sftp-mirror/config.toml", "demo"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("demo takes no --config"), "{err}");
}

#[test]
fn check_run_as_root_hands_the_files_it_creates_to_the_owner_of_their_folders() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    let (state, mirror) = (env.journal().parent().unwrap().to_owned(), env.mirror());
    for d in [&state, &mirror] {
        std::fs::create_dir_all(d).unwrap();
        std::os::unix::fs::chown(d, Some(65534), Some(65534)).unwrap(); // a service user, not root
    }
    let kh = state.join("known_hosts");
    let auth = format!("private_key = {:?}\nknown_hosts = {kh:?}", env.sshd.client_key_path());
    let out = env.run(&Opts { sftp_auth: Some(auth), ..Default::default() }, &["check", "--trust-host-key"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    for p in [kh, env.journal(), mirror.join(".sftp-mirror")] {
        let uid = std::fs::metadata(&p).unwrap().uid();
        assert_eq!(uid, 65534, "{} belongs to uid {uid}", p.display());
    }
}

#[test]
fn a_failure_names_its_cause_once_on_one_line() {
    let env = Env::new();
    let cfg = env.config(&Opts::default());
    // A mirror folder that cannot be created: the OS error is said once.
    let toml = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&format!("path = {:?}", env.mirror()), "path = \"/proc/no-such-dir/mirror\"");
    std::fs::write(&cfg, toml).unwrap();
    let out = Command::new(bin()).arg("--config").arg(&cfg).arg("reconcile").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/proc/no-such-dir/mirror"), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}
