//! Loopback tests of the embedded SFTP server: OpenSSH interop, a russh-sftp
//! client, and every fault mode.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use russh::keys::{Algorithm, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::client::{RawSftpSession, SftpSession};
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use sftp_mirror::testkit::{serve_stream, Faults, Request, ServerOptions, TestServer};
use tokio::io::AsyncReadExt;

const USER: &str = "tester";
const PASSWORD: &str = "correct horse";
const BIG_LEN: usize = 5 * 1024 * 1024;

use crate::common::pattern;

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    work: PathBuf,
    big: Vec<u8>,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(root.join("dir250")).unwrap();
    std::fs::create_dir_all(root.join("sub/empty")).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let big = pattern(BIG_LEN);
    std::fs::write(root.join("big.bin"), &big).unwrap();
    std::fs::write(root.join("hello.md"), b"hello\n").unwrap();
    std::fs::write(root.join("x.txt"), b"x marks the spot\n").unwrap();
    std::fs::write(root.join("sub/one.txt"), b"1").unwrap();
    for i in 0..250 {
        std::fs::write(root.join(format!("dir250/f{i:03}")), i.to_string()).unwrap();
    }
    std::os::unix::fs::symlink("hello.md", root.join("link")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("escape")).unwrap();
    Fixture { _tmp: tmp, root, work, big }
}

fn client_key() -> PrivateKey {
    PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap()
}

async fn start(fx: &Fixture, keys: Vec<PublicKey>, faults: Faults) -> TestServer {
    let mut opts = ServerOptions::new(&fx.root, USER);
    opts.password = Some(PASSWORD.to_owned());
    opts.authorized_keys = keys;
    opts.faults = faults;
    TestServer::start(opts).await.unwrap()
}

/// Client handler that accepts exactly the pinned host key.
struct Pinned(PublicKey);

impl russh::client::Handler for Pinned {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(matches!(key, PublicKeyOrCertificate::PublicKey { key, .. } if key.key_data() == self.0.key_data()))
    }
}

enum Cred<'a> {
    Password(&'a str),
    Key(&'a PrivateKey),
}

async fn connect(server: &TestServer, cred: Cred<'_>) -> (russh::client::Handle<Pinned>, bool) {
    let config = Arc::new(russh::client::Config { nodelay: true, ..Default::default() });
    let mut handle = russh::client::connect(config, server.addr(), Pinned(server.host_key().clone())).await.unwrap();
    let ok = match cred {
        Cred::Password(pw) => handle.authenticate_password(USER, pw).await.unwrap(),
        Cred::Key(k) => {
            handle.authenticate_publickey(USER, PrivateKeyWithHashAlg::new(Arc::new(k.clone()), None)).await.unwrap()
        }
    }
    .success();
    (handle, ok)
}

async fn sftp_channel(handle: &russh::client::Handle<Pinned>) -> russh::ChannelStream<russh::client::Msg> {
    let channel = handle.channel_open_session().await.unwrap();
    channel.request_subsystem(true, "sftp").await.unwrap();
    channel.into_stream()
}

async fn open_sftp(server: &TestServer) -> (russh::client::Handle<Pinned>, SftpSession) {
    let (handle, ok) = connect(server, Cred::Password(PASSWORD)).await;
    assert!(ok, "password auth failed");
    let session = SftpSession::new(sftp_channel(&handle).await).await.unwrap();
    (handle, session)
}

/// `unwrap_err` for results whose Ok type has no `Debug`.
fn expect_err<T>(r: Result<T, SftpError>) -> SftpError {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

fn status(err: &SftpError) -> Option<StatusCode> {
    match err {
        SftpError::Status(s) => Some(s.status_code),
        _ => None,
    }
}

async fn read_all(sftp: &SftpSession, path: &str) -> Result<Vec<u8>, std::io::Error> {
    let mut f = sftp.open(path).await.map_err(std::io::Error::other)?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).await?;
    Ok(buf)
}

// ---------------------------------------------------------------- OpenSSH interop

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

async fn run_sftp(server: &TestServer, work: &Path, key: &Path, batch: &str) -> std::process::Output {
    let batch_file = work.join("batch");
    write(&batch_file, batch);
    let known_hosts = work.join("known_hosts");
    write(&known_hosts, &format!("{}\n", server.known_hosts_line()));
    let mut cmd = tokio::process::Command::new("/usr/bin/sftp");
    cmd.arg("-b")
        .arg(&batch_file)
        .arg("-P")
        .arg(server.addr().port().to_string())
        .arg("-i")
        .arg(key)
        .args(["-F", "/dev/null"])
        .args(["-o", "StrictHostKeyChecking=yes"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args(["-o", "GlobalKnownHostsFile=/dev/null"])
        .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
        .arg(format!("{USER}@127.0.0.1"))
        .current_dir(work)
        .kill_on_drop(true);
    // A hang here means the server never closed the channel.
    tokio::time::timeout(Duration::from_secs(60), cmd.output()).await.expect("sftp did not exit").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_sftp_lists_and_downloads() {
    let fx = fixture();
    let key = fx.work.join("id_ed25519");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success());
    let pubkey = PublicKey::from_openssh(&std::fs::read_to_string(key.with_extension("pub")).unwrap()).unwrap();
    let server = start(&fx, vec![pubkey], Faults::new()).await;

    let out = run_sftp(&server, &fx.work, &key, "ls -l\nls -l dir250\nget big.bin got.bin\n").await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sftp failed: {stdout}\n{stderr}");
    let line =
        stdout.lines().find(|l| l.ends_with(" big.bin")).unwrap_or_else(|| panic!("no big.bin in listing:\n{stdout}"));
    assert!(line.starts_with("-rw"), "{line}");
    assert!(line.contains(&BIG_LEN.to_string()), "{line}");
    assert!(stdout.lines().any(|l| l.starts_with('d') && l.ends_with(" sub")), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with('l') && l.ends_with(" link")), "{stdout}");
    assert_eq!(stdout.lines().filter(|l| l.contains(" f2")).count(), 50, "{stdout}");
    assert!(std::fs::read(fx.work.join("got.bin")).unwrap() == fx.big, "download differs");

    let out = run_sftp(&server, &fx.work, &key, "get missing.bin\n").await;
    assert!(!out.status.success(), "get of a missing file must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not found") || stderr.contains("No such file"), "{stderr}");

    // Reads outside the root are refused.
    let out = run_sftp(&server, &fx.work, &key, "get ../../etc/hostname\n").await;
    assert!(!out.status.success());
    server.shutdown().await;
}

// ---------------------------------------------------------------- russh-sftp client

#[tokio::test]
async fn auth_password_and_keys() {
    let fx = fixture();
    let good = client_key();
    let bad = client_key();
    let server = start(&fx, vec![good.public_key().clone()], Faults::new()).await;
    assert!(connect(&server, Cred::Password(PASSWORD)).await.1);
    assert!(!connect(&server, Cred::Password("wrong")).await.1);
    assert!(connect(&server, Cred::Key(&good)).await.1);
    assert!(!connect(&server, Cred::Key(&bad)).await.1);
    assert_eq!(server.connections_accepted(), 4);
    assert!(server.host_key_fingerprint().starts_with("SHA256:"));
    assert!(server.known_hosts_line().starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 AAAA", server.addr().port())));
    server.shutdown().await;
}

#[tokio::test]
async fn russh_sftp_client_reads_tree() {
    let fx = fixture();
    let server = start(&fx, vec![], Faults::new()).await;
    let (_h, sftp) = open_sftp(&server).await;

    assert_eq!(sftp.canonicalize(".").await.unwrap(), "/");
    assert_eq!(sftp.canonicalize("sub/../dir250/").await.unwrap(), "/dir250");

    let names: BTreeSet<String> = sftp.read_dir("dir250").await.unwrap().map(|e| e.file_name()).collect();
    assert_eq!(names.len(), 250);
    assert!(names.contains("f000") && names.contains("f249"));
    assert_eq!(sftp.read_dir("/sub/empty").await.unwrap().count(), 0);
    let one: Vec<_> = sftp.read_dir("/sub").await.unwrap().map(|e| e.file_name()).collect();
    assert_eq!(one.len(), 2, "{one:?}"); // one.txt and empty/

    let md = sftp.metadata("big.bin").await.unwrap();
    let local = std::fs::metadata(fx.root.join("big.bin")).unwrap();
    assert_eq!(md.size, Some(BIG_LEN as u64));
    assert!(md.file_type().is_file());
    assert_eq!(
        md.modified().unwrap(),
        std::time::UNIX_EPOCH + Duration::from_secs(std::os::unix::fs::MetadataExt::mtime(&local) as u64)
    );
    assert!(sftp.metadata("sub").await.unwrap().file_type().is_dir());
    assert!(sftp.metadata("link").await.unwrap().file_type().is_file());
    assert!(sftp.symlink_metadata("link").await.unwrap().file_type().is_symlink());
    assert_eq!(sftp.read_link("link").await.unwrap(), "hello.md");

    assert_eq!(read_all(&sftp, "/big.bin").await.unwrap(), fx.big);
    assert_eq!(read_all(&sftp, "link").await.unwrap(), b"hello\n");
    assert!(read_all(&sftp, "sub/empty/../one.txt").await.unwrap() == b"1");

    // Errors map like OpenSSH's server.
    let e = sftp.metadata("nope").await.unwrap_err();
    assert_eq!(status(&e), Some(StatusCode::NoSuchFile));
    let e = expect_err(sftp.open("nope").await);
    assert_eq!(status(&e), Some(StatusCode::NoSuchFile));
    let e = sftp.metadata("../etc/hostname").await.unwrap_err();
    assert_eq!(status(&e), Some(StatusCode::PermissionDenied));
    let e = sftp.metadata("escape").await.unwrap_err();
    assert_eq!(status(&e), Some(StatusCode::PermissionDenied));
    assert!(sftp.symlink_metadata("escape").await.unwrap().file_type().is_symlink());
    let e = expect_err(sftp.create("new.txt").await);
    assert_eq!(status(&e), Some(StatusCode::PermissionDenied));
    assert!(!fx.root.join("new.txt").exists());
    let e = sftp.remove_file("hello.md").await.unwrap_err();
    assert_eq!(status(&e), Some(StatusCode::PermissionDenied));
    server.shutdown().await;
}

#[tokio::test]
async fn raw_protocol_details() {
    let fx = fixture();
    let server = start(&fx, vec![], Faults::new()).await;
    let (h, _ok) = connect(&server, Cred::Password(PASSWORD)).await;
    let raw = RawSftpSession::new(sftp_channel(&h).await);
    let version = raw.init().await.unwrap();
    assert_eq!(version.version, 3);

    // READDIR comes in bounded batches, then EOF; "." and ".." are listed.
    let dir = raw.opendir("/dir250").await.unwrap().handle;
    let mut total = 0;
    let mut names = BTreeSet::new();
    loop {
        match raw.readdir(dir.as_str()).await {
            Ok(name) => {
                assert!(name.files.len() <= 102);
                total += name.files.len();
                for f in name.files {
                    assert!(!f.longname.is_empty());
                    names.insert(f.filename);
                }
            }
            Err(e) => {
                assert_eq!(status(&e), Some(StatusCode::Eof));
                break;
            }
        }
    }
    assert_eq!(total, 252);
    assert!(names.contains(".") && names.contains(".."));
    raw.close(dir.as_str()).await.unwrap();
    let e = raw.close(dir.as_str()).await.unwrap_err();
    assert_eq!(status(&e), Some(StatusCode::Failure));

    // Reads: up to the requested length, EOF at the end.
    let fh = raw.open("/hello.md", OpenFlags::READ, FileAttributes::default()).await.unwrap().handle;
    assert_eq!(raw.read(fh.as_str(), 0, 4).await.unwrap().data, b"hell");
    assert_eq!(raw.read(fh.as_str(), 4, 100).await.unwrap().data, b"o\n");
    let e = raw.read(fh.as_str(), 6, 100).await.unwrap_err();
    assert_eq!(status(&e), Some(StatusCode::Eof));
    assert_eq!(raw.fstat(fh.as_str()).await.unwrap().attrs.size, Some(6));
    raw.close(fh.as_str()).await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn serve_stream_over_duplex() {
    let fx = fixture();
    let (client, server) = tokio::io::duplex(64 * 1024);
    serve_stream(server, &fx.root, Faults::new()).await.unwrap();
    let sftp = SftpSession::new(client).await.unwrap();
    assert_eq!(sftp.read_dir("dir250").await.unwrap().count(), 250);
    assert_eq!(read_all(&sftp, "big.bin").await.unwrap(), fx.big);
}

#[tokio::test]
async fn shutdown_drops_live_connections() {
    let fx = fixture();
    let server = start(&fx, vec![], Faults::new()).await;
    let addr = server.addr();
    let (h, sftp) = open_sftp(&server).await;
    sftp.metadata("hello.md").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), server.shutdown()).await.unwrap();
    assert!(sftp.metadata("hello.md").await.is_err());
    tokio::time::timeout(Duration::from_secs(5), async {
        while !h.is_closed() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    // Nothing listens there any more. (A connect can still succeed when another
    // test's socket took the freed port meanwhile, or by a TCP self-connect on an
    // ephemeral port: then no SSH server answers on it.)
    if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
        use tokio::io::AsyncReadExt;
        let mut banner = [0u8; 4];
        let got = tokio::time::timeout(Duration::from_millis(500), s.read(&mut banner)).await;
        assert!(!matches!(got, Ok(Ok(4)) if &banner == b"SSH-"), "the server still answers after shutdown");
    }
}

// ---------------------------------------------------------------- faults

#[tokio::test]
async fn fault_fail_returns_status() {
    let fx = fixture();
    let faults = Faults::new();
    faults.fail(Request::Open, "x", StatusCode::PermissionDenied);
    let server = start(&fx, vec![], faults.clone()).await;
    let (_h, sftp) = open_sftp(&server).await;

    let e = expect_err(sftp.open("x.txt").await);
    assert_eq!(status(&e), Some(StatusCode::PermissionDenied));
    assert_eq!(read_all(&sftp, "hello.md").await.unwrap(), b"hello\n");

    server.faults().fail(Request::Stat, "hello", StatusCode::NoSuchFile);
    server.faults().fail(Request::Readdir, "dir250", StatusCode::Failure);
    let e = sftp.metadata("hello.md").await.unwrap_err();
    assert_eq!(status(&e), Some(StatusCode::NoSuchFile));
    let e = sftp.symlink_metadata("/hello.md").await.unwrap_err();
    assert_eq!(status(&e), Some(StatusCode::NoSuchFile));
    let e = expect_err(sftp.read_dir("dir250").await);
    assert_eq!(status(&e), Some(StatusCode::Failure));
    assert_eq!(sftp.read_dir("sub").await.unwrap().count(), 2);

    faults.clear();
    assert!(sftp.open("x.txt").await.is_ok());
    assert!(sftp.metadata("hello.md").await.is_ok());
    assert_eq!(sftp.read_dir("dir250").await.unwrap().count(), 250);
    server.shutdown().await;
}

#[tokio::test]
async fn fault_short_reads() {
    let fx = fixture();
    let faults = Faults::new();
    faults.short_reads(Some(1000));
    let server = start(&fx, vec![], faults).await;
    let (h, sftp) = open_sftp(&server).await;
    assert_eq!(read_all(&sftp, "big.bin").await.unwrap(), fx.big);

    let raw = RawSftpSession::new(sftp_channel(&h).await);
    raw.init().await.unwrap();
    let fh = raw.open("big.bin", OpenFlags::READ, FileAttributes::default()).await.unwrap().handle;
    assert_eq!(raw.read(fh.as_str(), 0, 65536).await.unwrap().data.len(), 1000);
    server.faults().short_reads(None);
    assert_eq!(raw.read(fh.as_str(), 0, 65536).await.unwrap().data.len(), 65536);
    server.shutdown().await;
}

#[tokio::test]
async fn fault_delay_replies() {
    let fx = fixture();
    let server = start(&fx, vec![], Faults::new()).await;
    let (_h, sftp) = open_sftp(&server).await;
    let delay = Duration::from_millis(300);
    server.faults().delay_replies(delay);
    let t = Instant::now();
    sftp.metadata("hello.md").await.unwrap();
    assert!(t.elapsed() >= delay, "{:?}", t.elapsed());
    server.faults().delay_replies(Duration::ZERO);
    let t = Instant::now();
    sftp.metadata("hello.md").await.unwrap();
    assert!(t.elapsed() < delay, "{:?}", t.elapsed());
    server.shutdown().await;
}

#[tokio::test]
async fn fault_drop_after_read_bytes_and_reconnect() {
    let fx = fixture();
    let faults = Faults::new();
    faults.drop_once_after_read_bytes(1024 * 1024);
    let server = start(&fx, vec![], faults.clone()).await;

    let (h, sftp) = open_sftp(&server).await;
    let t = Instant::now();
    let err = read_all(&sftp, "big.bin").await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5), "drop noticed late: {:?}", t.elapsed());
    eprintln!("read after drop failed as expected: {err}");
    assert!(sftp.metadata("hello.md").await.is_err());
    assert_eq!(server.connections_accepted(), 1);
    drop((sftp, h));

    // One-shot: the reconnect goes through.
    let (_h2, sftp2) = open_sftp(&server).await;
    assert_eq!(server.connections_accepted(), 2);
    assert_eq!(read_all(&sftp2, "big.bin").await.unwrap(), fx.big);

    // Persistent: every connection is cut after its budget.
    faults.drop_after_read_bytes(Some(100_000));
    assert!(read_all(&sftp2, "big.bin").await.is_err());
    let (_h3, sftp3) = open_sftp(&server).await;
    assert!(read_all(&sftp3, "big.bin").await.is_err());
    assert_eq!(server.connections_accepted(), 3);
    faults.drop_after_read_bytes(None);
    let (_h4, sftp4) = open_sftp(&server).await;
    assert_eq!(read_all(&sftp4, "big.bin").await.unwrap(), fx.big);
    server.shutdown().await;
}

#[tokio::test]
async fn fault_drop_over_duplex_ends_stream() {
    let fx = fixture();
    let faults = Faults::new();
    faults.drop_after_read_bytes(Some(10_000));
    let (client, server) = tokio::io::duplex(64 * 1024);
    serve_stream(server, &fx.root, faults).await.unwrap();
    let sftp = SftpSession::new(client).await.unwrap();
    assert!(read_all(&sftp, "big.bin").await.is_err());
}
