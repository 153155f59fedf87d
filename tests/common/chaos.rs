//! Helpers for the reliability, hostile-input and load tests: a tmpfs mount
//! guard, a robust mirror walker (files may vanish while it reads), a
//! non-panicking and a keep-alive HTTP client, raw socket requests, journal
//! queries and process memory figures.

use super::daemon::{bin, tree, wait_trees_equal, Env, SECRET};
use sftp_mirror::config::Secret;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// SHA-256 of `data`, hex.
pub fn sha(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(data))
}

/// `X-Hub-Signature` for `body` with the test secret.
pub fn signature(body: &[u8]) -> String {
    sftp_mirror::webhook::sign(&Secret::new(SECRET), body)
}

/// Writes a remote file atomically (temp file outside the served tree, then
/// rename), with an explicit mtime: readers of the remote only ever see whole versions.
pub fn put_atomic(env: &Env, rel: &str, data: &[u8], mtime: u64) {
    let p = env.remote().join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let tmp = env.remote().parent().unwrap().join(format!(".put-{:016x}", fastrand::u64(..)));
    std::fs::write(&tmp, data).unwrap();
    set_mtime(&tmp, mtime);
    std::fs::rename(&tmp, &p).unwrap();
}

/// Sets a file's modification time (seconds since the epoch).
pub fn set_mtime(p: &Path, secs: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(secs)).unwrap();
}

/// POSTs a signed `body` over a fresh connection; `None` when the daemon is
/// not there or the connection broke before a status line (never panics).
pub fn try_post(addr: SocketAddr, body: &[u8], timeout: Duration) -> Option<u16> {
    let sig = signature(body);
    let headers = [("X-Hub-Signature", sig.as_str()), ("Content-Type", "application/json")];
    super::http::try_request(addr, "POST", "/webhook", &headers, body, timeout).map(|r| r.status)
}

/// Sends raw bytes on a new connection, optionally half-closes, and returns
/// whatever came back within `timeout` (lossy text).
pub fn raw(addr: SocketAddr, bytes: &[u8], half_close: bool, timeout: Duration) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to the daemon");
    s.set_read_timeout(Some(timeout)).unwrap();
    let _ = s.write_all(bytes);
    if half_close {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of the first response in `text` (0 if none).
pub fn status_of(text: &str) -> u16 {
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// A keep-alive HTTP/1.1 client on one connection, reconnecting when the
/// server closes it.
pub struct KeepAlive {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
    pub reconnects: u64,
}

impl KeepAlive {
    pub fn new(addr: SocketAddr) -> KeepAlive {
        KeepAlive { addr, conn: None, reconnects: 0 }
    }

    /// POSTs a signed body; returns the status, or `None` on a connection error.
    pub fn post(&mut self, body: &[u8]) -> Option<u16> {
        for _ in 0..2 {
            if self.conn.is_none() {
                let s = TcpStream::connect(self.addr).ok()?;
                s.set_nodelay(true).ok()?;
                s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
                self.conn = Some(BufReader::new(s));
                self.reconnects += 1;
            }
            match self.exchange(body) {
                Some(code) => return Some(code),
                None => self.conn = None,
            }
        }
        None
    }

    fn exchange(&mut self, body: &[u8]) -> Option<u16> {
        let sig = signature(body);
        let c = self.conn.as_mut()?;
        let head = format!(
            "POST /webhook HTTP/1.1\r\nHost: {}\r\nX-Hub-Signature: {sig}\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        c.get_mut().write_all(&req).ok()?;
        let mut line = String::new();
        if c.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let code: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
        let mut len = 0usize;
        let mut close = false;
        loop {
            let mut h = String::new();
            if c.read_line(&mut h).ok()? == 0 {
                return None;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':')?;
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok()?;
            }
            if k.eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close") {
                close = true;
            }
        }
        let mut rest = vec![0u8; len];
        c.read_exact(&mut rest).ok()?;
        if close {
            self.conn = None;
        }
        Some(code)
    }
}

/// `sftp-mirror events --json` with extra arguments, parsed.
pub fn journal_rows(cfg: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(bin()).arg("--config").arg(cfg).arg("events").arg("--json").args(args).output().unwrap();
    assert!(out.status.success(), "events: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap().as_array().unwrap().clone()
}

/// `VmHWM` (peak resident set) of a process, in KiB.
pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Reads an environment knob, or `default`.
pub fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn run_mount(args: &[&str]) -> Result<(), String> {
    let out = Command::new("mount").args(args).output().map_err(|e| format!("cannot run mount: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("mount {args:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// A tmpfs mounted on a directory for the guard's lifetime (lazily unmounted on drop).
pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `"2m"`) on `dir` (created if needed).
    /// Panics with a clear message when mounting is not possible: these tests
    /// need root, as CI has; they must not pass without having run.
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        if let Err(e) =
            run_mount(&["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs", dir.to_str().unwrap()])
        {
            panic!(
                "disk-fault test needs to mount a tmpfs (run as root, as CI does): {e}\n\
                 this test cannot check anything without it, so it fails instead of passing silently"
            );
        }
        Tmpfs { dir: dir.to_owned() }
    }

    /// `mount -o remount,OPTS`.
    pub fn remount(&self, opts: &str) {
        run_mount(&["-o", &format!("remount,{opts}"), self.dir.to_str().unwrap()])
            .unwrap_or_else(|e| panic!("remount {opts}: {e}"));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Waits (up to `within`) until the mirror equals the remote, while the daemon
/// may still be changing the mirror.
pub fn converge(env: &Env, within: Duration) {
    wait_trees_equal(env, within, tree);
}

/// Incompressible bytes from a seed, fast enough in debug builds for hundreds of MiB.
pub fn bytes_from(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
