//! Load generator for `bench/run.sh` (not part of the product).
//!
//! `loadgen intake URL SECRET SECONDS CONNECTIONS [PATH_PREFIX]`: keep-alive
//! HTTP/1.1 connections POST signed `file.created` events, each with a unique
//! id (so the daemon journals every one), for SECONDS; prints one JSON line:
//! requests/s, p50/p99 latency, non-204 count.
//!
//! `loadgen burst URL SECRET REMOTE_DIR MIRROR_DIR CONNECTIONS`: one signed
//! `file.created` for every file already under REMOTE_DIR, sent at once from
//! CONNECTIONS connections (an upload burst); waits until every file is in
//! MIRROR_DIR with its size; prints events, seconds and events/s.
//!
//! `loadgen latency URL SECRET REMOTE_DIR MIRROR_DIR COUNT`: for each of COUNT
//! events, writes a 1 KiB file into REMOTE_DIR, sends its signed event and
//! polls MIRROR_DIR until the file is there; prints p50/p99 of event-to-disk.

use hmac::{Hmac, KeyInit, Mac};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn body(id: &str, path: &str) -> String {
    format!(
        r#"{{"Id":"{id}","Topic":"file.created","CreatedAt":1700000000000,"Actor":{{"Type":"User","Id":"bench"}},"Data":{{"Path":"{path}","Size":1024}}}}"#
    )
}

/// Parses `http://host:port/path`.
fn parse(url: &str) -> (SocketAddr, String) {
    let rest = url.strip_prefix("http://").expect("http:// URL");
    let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
    (hostport.parse().expect("IP:port"), format!("/{path}"))
}

struct Conn {
    reader: BufReader<tokio::io::ReadHalf<tokio::net::TcpStream>>,
    writer: tokio::io::WriteHalf<tokio::net::TcpStream>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).ok();
        let (r, w) = tokio::io::split(s);
        Conn { reader: BufReader::new(r), writer: w }
    }

    /// One request; returns the status code.
    async fn post(&mut self, host: SocketAddr, path: &str, secret: &str, body: &str) -> u16 {
        let sig = sign(secret, body.as_bytes());
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nX-Hub-Signature: {sig}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if self.writer.write_all(req.as_bytes()).await.is_err() {
            return 0;
        }
        let mut line = String::new();
        if self.reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            return 0;
        }
        let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if self.reader.read_line(&mut h).await.unwrap_or(0) == 0 || h == "\r\n" {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut sink = vec![0u8; len];
        let _ = self.reader.read_exact(&mut sink).await;
        status
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("intake") => {
            let (addr, path) = parse(&args[2]);
            let secret = args[3].clone();
            let secs: u64 = args[4].parse().expect("seconds");
            let conns: usize = args[5].parse().expect("connections");
            let prefix = args.get(6).cloned().unwrap_or_else(|| "bench/f".into());
            let deadline = Instant::now() + Duration::from_secs(secs);
            let run = fastrand::u64(..);
            let tasks: Vec<_> = (0..conns)
                .map(|c| {
                    let (path, secret, prefix) = (path.clone(), secret.clone(), prefix.clone());
                    tokio::spawn(async move {
                        let mut conn = Conn::open(addr).await;
                        let (mut lat, mut bad, mut i) = (Vec::new(), 0u64, 0u64);
                        while Instant::now() < deadline {
                            let b = body(&format!("ev-{run:x}-{c}-{i}"), &format!("{prefix}{}", i % 100));
                            let t = Instant::now();
                            let s = conn.post(addr, &path, &secret, &b).await;
                            lat.push(t.elapsed().as_secs_f64() * 1000.0);
                            if s != 204 {
                                bad += 1;
                                if s == 0 {
                                    conn = Conn::open(addr).await;
                                }
                            }
                            i += 1;
                        }
                        (lat, bad)
                    })
                })
                .collect();
            let start = Instant::now();
            let (mut all, mut bad) = (Vec::new(), 0);
            for t in tasks {
                let (l, b) = t.await.expect("task");
                all.extend(l);
                bad += b;
            }
            let n = all.len();
            let rps = n as f64 / start.elapsed().as_secs_f64();
            let (p50, p99) = (pct(&mut all, 0.5), pct(&mut all, 0.99));
            println!(r#"{{"requests":{n},"rps":{rps:.0},"p50_ms":{p50:.2},"p99_ms":{p99:.2},"non_204":{bad}}}"#);
        }
        Some("latency") => {
            let (addr, path) = parse(&args[2]);
            let secret = &args[3];
            let (remote, mirror) = (std::path::PathBuf::from(&args[4]), std::path::PathBuf::from(&args[5]));
            let count: usize = args[6].parse().expect("count");
            std::fs::create_dir_all(remote.join("lat")).expect("remote dir");
            let run = fastrand::u64(..);
            let mut conn = Conn::open(addr).await;
            let mut lat = Vec::new();
            for i in 0..count {
                let name = format!("lat/{run:x}-{i}.bin");
                std::fs::write(remote.join(&name), vec![b'x'; 1024]).expect("write remote file");
                let t = Instant::now();
                let s = conn.post(addr, &path, secret, &body(&format!("lat-{run:x}-{i}"), &name)).await;
                assert_eq!(s, 204, "event not accepted");
                let target = mirror.join(&name);
                while std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0) != 1024 {
                    if t.elapsed() > Duration::from_secs(30) {
                        panic!("{name} never arrived");
                    }
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
            println!(r#"{{"events":{count},"p50_ms":{p50:.2},"p99_ms":{p99:.2}}}"#);
        }
        Some("burst") => {
            let (addr, path) = parse(&args[2]);
            let secret = args[3].clone();
            let (remote, mirror) = (std::path::PathBuf::from(&args[4]), std::path::PathBuf::from(&args[5]));
            let conns: usize = args[6].parse().expect("connections");
            let mut files: Vec<(String, u64)> = Vec::new();
            let mut stack = vec![remote.clone()];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).expect("list remote").flatten() {
                    let m = e.metadata().expect("stat");
                    if m.is_dir() {
                        stack.push(e.path());
                    } else {
                        let rel = e.path().strip_prefix(&remote).unwrap().to_string_lossy().into_owned();
                        files.push((rel, m.len()));
                    }
                }
            }
            files.sort();
            let files = std::sync::Arc::new(files);
            let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            // When each event was sent (ns since the epoch), against the ctime of
            // its file in the mirror (set by the rename that put it there).
            let sent_at: std::sync::Arc<Vec<std::sync::atomic::AtomicU64>> =
                std::sync::Arc::new(files.iter().map(|_| std::sync::atomic::AtomicU64::new(0)).collect());
            let run = fastrand::u64(..);
            let start = Instant::now();
            let senders: Vec<_> = (0..conns)
                .map(|_| {
                    let (path, secret, files, next) = (path.clone(), secret.clone(), files.clone(), next.clone());
                    let sent_at = sent_at.clone();
                    tokio::spawn(async move {
                        let mut conn = Conn::open(addr).await;
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some((rel, _)) = files.get(i) else { break };
                            let b = body(&format!("burst-{run:x}-{i}"), rel);
                            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
                            sent_at[i].store(now.as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
                            while conn.post(addr, &path, &secret, &b).await != 204 {
                                conn = Conn::open(addr).await;
                            }
                        }
                    })
                })
                .collect();
            for t in senders {
                t.await.expect("sender");
            }
            let sent = start.elapsed().as_secs_f64();
            // Done when every file is in the mirror with its size.
            let mut pending: Vec<&(String, u64)> = files.iter().collect();
            while !pending.is_empty() {
                pending.retain(|(rel, len)| std::fs::metadata(mirror.join(rel)).ok().map(|m| m.len()) != Some(*len));
                if start.elapsed() > Duration::from_secs(600) {
                    panic!("{} files never arrived", pending.len());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let secs = start.elapsed().as_secs_f64();
            let n = files.len();
            let mut lat: Vec<f64> = files
                .iter()
                .zip(sent_at.iter())
                .filter_map(|((rel, _), at)| {
                    use std::os::unix::fs::MetadataExt;
                    let m = std::fs::symlink_metadata(mirror.join(rel)).ok()?;
                    let on_disk = m.ctime() as f64 * 1e9 + m.ctime_nsec() as f64;
                    Some((on_disk - at.load(std::sync::atomic::Ordering::Relaxed) as f64) / 1e6)
                })
                .collect();
            let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
            println!(
                r#"{{"events":{n},"seconds":{secs:.2},"sent_seconds":{sent:.2},"per_second":{:.0},"p50_ms":{p50:.1},"p99_ms":{p99:.1}}}"#,
                n as f64 / secs
            );
        }
        _ => {
            eprintln!("usage: loadgen intake URL SECRET SECONDS CONNECTIONS [PATH_PREFIX] | burst URL SECRET REMOTE MIRROR CONNECTIONS | latency URL SECRET REMOTE MIRROR COUNT");
            std::process::exit(2);
        }
    }
}
