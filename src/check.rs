//! `sftp-mirror check`: one line per step (config, DNS/TCP, host key, login,
//! remote root, mirror, journal) with ✓/✗, stopping at the first failure, and
//! the exit code of SPEC §4. `--trust-host-key` records the server's key in
//! `known_hosts` on first use, and refuses if a different one is recorded.

use crate::config::{HostKeyPolicy, Settings, SftpAuth};
use crate::journal::Journal;
use crate::mirror::Mirror;
use crate::remote::{probe_host_key, verify_host_key, Remote, RemoteKind};
use russh::keys::HashAlg;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::exit::{ACCESS, CONFIG, FAILED, OK};

/// Run as root, hands what `check` created (`paths` that exist) to the owner
/// of `folder`: the daemon's user must write them later, and root-owned ones
/// stopped it with "attempt to write a readonly database".
fn hand_over(folder: Option<&Path>, paths: &[PathBuf]) {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let Some(owner) = folder.and_then(|f| std::fs::metadata(f).ok()) else { return };
    for p in paths.iter().filter(|p| p.exists()) {
        if let Err(e) = std::os::unix::fs::chown(p, Some(owner.uid()), Some(owner.gid())) {
            tracing::warn!("cannot hand {} to uid {}: {e}", p.display(), owner.uid());
        }
    }
}

fn good(out: &mut dyn Write, msg: impl std::fmt::Display) {
    let _ = writeln!(out, "✓ {msg}");
}

fn bad(out: &mut dyn Write, msg: impl std::fmt::Display, code: u8) -> u8 {
    let _ = writeln!(out, "✗ {msg}");
    code
}

/// Runs every step; returns the exit code.
pub async fn run(config: Option<&Path>, env: &HashMap<String, String>, trust: bool, out: &mut dyn Write) -> u8 {
    let shown = config.map_or_else(|| "(no file; environment only)".to_owned(), |p| p.display().to_string());
    let s = match Settings::load_from(config, env) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(out, "✗ config {shown}:");
            for p in &e.problems {
                let _ = writeln!(out, "    {p}");
            }
            return CONFIG;
        }
    };
    good(out, format!("config {shown}"));

    let addr = format!("{}:{}", s.sftp.host, s.sftp.port);
    let resolved = tokio::time::timeout(s.sftp.timeout, tokio::net::lookup_host(addr.clone())).await;
    let ips: Vec<std::net::SocketAddr> = match resolved {
        Ok(Ok(a)) => a.collect(),
        Ok(Err(e)) => return bad(out, format!("DNS {}: {e}", s.sftp.host), ACCESS),
        Err(_) => return bad(out, format!("DNS {}: timed out", s.sftp.host), ACCESS),
    };
    let Some(first) = ips.first().copied() else { return bad(out, format!("DNS {}: no address", s.sftp.host), ACCESS) };
    match tokio::time::timeout(s.sftp.timeout, tokio::net::TcpStream::connect(first)).await {
        Ok(Ok(_)) => good(out, format!("TCP {addr} ({first}) reachable")),
        Ok(Err(e)) => return bad(out, format!("TCP {addr} ({first}): {e}"), ACCESS),
        Err(_) => return bad(out, format!("TCP {addr} ({first}): timed out"), ACCESS),
    }

    if trust {
        let HostKeyPolicy::KnownHosts(path) = &s.sftp.host_keys else {
            return bad(out, "--trust-host-key needs sftp.known_hosts (a file to record the key in)", CONFIG);
        };
        let key = match probe_host_key(&s.sftp).await {
            Ok(k) => k,
            Err(e) => return bad(out, format!("host key: {e}"), ACCESS),
        };
        let fp = key.fingerprint(HashAlg::Sha256);
        let known = path.exists().then(|| russh::keys::check_known_hosts_path(&s.sftp.host, s.sftp.port, &key, path));
        match known {
            Some(Ok(true)) => good(out, format!("host key {fp} is already recorded in {}", path.display())),
            Some(Err(russh::keys::Error::KeyChanged { line })) => {
                return bad(
                    out,
                    format!(
                        "host key: the server shows {fp}, but {} line {line} records a different key for {addr}; \
                         refusing to replace it (remove that line yourself if the change is expected)",
                        path.display()
                    ),
                    ACCESS,
                )
            }
            Some(Err(e)) => return bad(out, format!("host key: reading {}: {e}", path.display()), CONFIG),
            None | Some(Ok(false)) => {
                let pattern =
                    if s.sftp.port == 22 { s.sftp.host.clone() } else { format!("[{}]:{}", s.sftp.host, s.sftp.port) };
                let line = match key.to_openssh() {
                    Ok(k) => format!("{pattern} {k}\n"),
                    Err(e) => return bad(out, format!("host key: {e}"), FAILED),
                };
                let appended = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .and_then(|mut f| f.write_all(line.as_bytes()).and_then(|()| f.sync_all()));
                if let Err(e) = appended {
                    return bad(out, format!("host key: cannot write {}: {e}", path.display()), FAILED);
                }
                hand_over(path.parent(), std::slice::from_ref(path));
                good(
                    out,
                    format!("host key {fp} ({}) recorded in {} (trust on first use)", key.algorithm(), path.display()),
                );
            }
        }
    }
    match verify_host_key(&s.sftp).await {
        Ok(key) => {
            let how = match &s.sftp.host_keys {
                HostKeyPolicy::KnownHosts(p) => format!("matches {}", p.display()),
                HostKeyPolicy::Fingerprints(_) => "matches sftp.host_key_fingerprint".into(),
            };
            good(out, format!("host key {} ({}) {how}", key.fingerprint(HashAlg::Sha256), key.algorithm()));
        }
        Err(e) => return bad(out, e, ACCESS),
    }

    let remote = Remote::new(s.sftp.clone());
    match remote.conn().await {
        Ok(_) => {
            let how = match s.sftp.auth {
                SftpAuth::Password(_) => "password",
                SftpAuth::PrivateKey { .. } => "public key",
            };
            good(out, format!("logged in as {} ({how}); SFTP session open", s.sftp.username));
        }
        Err(e) => return bad(out, e, ACCESS),
    }
    match remote.stat(b"").await {
        Ok(Some(e)) if e.kind == RemoteKind::Dir => {
            good(out, format!("remote root {} is a directory", s.sftp.remote_root))
        }
        Ok(Some(_)) => return bad(out, format!("remote root {} is not a directory", s.sftp.remote_root), CONFIG),
        Ok(None) => return bad(out, format!("remote root {} does not exist", s.sftp.remote_root), CONFIG),
        Err(e) => return bad(out, format!("remote root: {e}"), ACCESS),
    }

    let mirror = s.mirror.path.clone();
    let probe = tokio::task::spawn_blocking(move || Mirror::probe_writable(&mirror)).await;
    match probe {
        Ok(Ok(())) => {
            hand_over(Some(&s.mirror.path), &[s.mirror.path.join(crate::event::RESERVED_NAME)]);
            good(out, format!("mirror {} is writable", s.mirror.path.display()))
        }
        Ok(Err(e)) => return bad(out, format!("mirror {}: {e}", s.mirror.path.display()), FAILED),
        Err(e) => return bad(out, format!("mirror: {e}"), FAILED),
    }
    let journal = match Journal::open(&s.journal.path) {
        Ok(j) => j.probe().await.map(|()| j),
        Err(e) => Err(e),
    };
    match journal {
        Ok(j) => {
            drop(j);
            let db = &s.journal.path;
            let side = |ext: &str| PathBuf::from(format!("{}{ext}", db.display()));
            hand_over(db.parent(), &[db.clone(), side("-wal"), side("-shm")]);
            good(out, format!("journal {} is writable", db.display()))
        }
        Err(e) => return bad(out, format!("journal {}: {e}", s.journal.path.display()), FAILED),
    }

    // What `serve` will need next: its listeners and the TLS files. (A running
    // daemon holds its own ports: stop it first, or expect these to be taken.)
    let wh = &s.webhook;
    if let (Some(cert), Some(key)) = (&wh.tls_cert, &wh.tls_key) {
        match crate::http::load_tls(cert, key) {
            Ok(_) => good(out, format!("TLS certificate {} and key load", cert.display())),
            Err(e) => return bad(out, e, CONFIG),
        }
    }
    for (what, addr) in [("webhook.listen", Some(wh.listen)), ("admin.listen", s.admin.listen)] {
        let Some(addr) = addr else { continue };
        match std::net::TcpListener::bind(addr) {
            Ok(_) => good(out, format!("{what} {addr} is free")),
            Err(e) => return bad(out, format!("{what} {addr}: cannot listen: {e}"), CONFIG),
        }
    }
    OK
}
