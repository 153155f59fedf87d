//! One set of interop cases against every SFTP server implementation we know
//! users meet (SPEC §7): OpenSSH, ProFTPD mod_sftp, rclone serve sftp over a
//! folder and over `:memory:` (bucket-like, as S3 gateways are), asyncssh
//! (binary handles). Each case asserts what a user would check: bytes on disk,
//! exit codes, the summary, and convergence after events.

use crate::common::servers::{Kind, Server};
use crate::common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Files in one directory: enough for asyncssh's 4-byte handle counter to pass 0x80.
const MANY: usize = 300;

/// A file name from raw bytes.
fn raw(name: &[u8]) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::OsStr::from_bytes(name).to_owned()
}

fn reconcile(cfg: &Path) -> serde_json::Value {
    let out = Command::new(bin()).arg("--config").arg(cfg).args(["reconcile", "--json"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "reconcile failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// The tree as a user sees it; on a server without empty directories, only
/// the directories that hold something count.
fn seen(root: &Path, kind: Kind) -> BTreeMap<String, String> {
    let mut t = tree(root);
    if !kind.keeps_empty_dirs() {
        let keys: Vec<String> = t.keys().cloned().collect();
        t.retain(|k, v| v != "dir" || keys.iter().any(|o| o.starts_with(&format!("{k}/"))));
    }
    t
}

fn assert_same(server: &Server, mirror: &Path, when: &str) {
    let (want, got) = (seen(server.truth(), server.kind), seen(mirror, server.kind));
    if want != got {
        let wrong: Vec<_> = got.iter().filter(|(k, v)| want.get(*k) != Some(*v)).map(|(k, _)| k).collect();
        let missing: Vec<_> = want.iter().filter(|(k, v)| got.get(*k) != Some(*v)).map(|(k, _)| k).collect();
        panic!(
            "{:?} {when}: wrong/extra in mirror {wrong:?}, missing {missing:?}\nserver log:\n{}",
            server.kind,
            server.log()
        );
    }
}

fn interop(kind: Kind) {
    let server = Server::start(kind);
    let work = tempfile::tempdir().unwrap();
    let mirror = work.path().join("mirror");
    let cfg = server.config(&mirror, &work.path().join("journal.db"));

    // A first pass over names users have, the edge sizes, and many handles.
    let big = bytes_from(64, 64 << 20);
    server.put("with space/caf\u{e9} \u{1F600}.txt", b"unicode and a space");
    server.put("plus+and%25percent.txt", b"plus and percent");
    server.put("zero.bin", b"");
    server.put("big.bin", &big);
    server.put("swap/becomes-dir", b"a file first");
    server.put("swap/dir-becomes-file/inner.txt", b"inside");
    let many: Vec<_> = (0..MANY).map(|i| (format!("many/f{i:03}.txt"), format!("file {i}\n").into_bytes())).collect();
    server.put_all(&many);
    server.mkdir("empty-dir");
    // A name that is not UTF-8 (Latin-1 "café"), where the server passes names through.
    let latin1 = raw(b"caf\xe9.txt");
    if kind.passes_raw_names() {
        std::fs::write(server.truth().join(&latin1), b"a Latin-1 name").unwrap();
    }
    // Uploads carry the upload time as mtime here: copies made at once would
    // be "racy" and fetched again by the next pass (SPEC §2).
    wait_out_the_racy_window();
    let s = reconcile(&cfg);
    assert_eq!(s["failed"], 0, "{s}");
    assert_eq!(s["downloaded"], MANY + 6 + usize::from(kind.passes_raw_names()), "{s}");
    assert_same(&server, &mirror, "after the first pass");
    assert_eq!(std::fs::read(mirror.join("big.bin")).unwrap(), big, "64 MiB byte-identical");
    if kind.passes_raw_names() {
        assert_eq!(std::fs::read(mirror.join(&latin1)).unwrap(), b"a Latin-1 name", "mirrored byte-exact");
    }

    // Nothing changed: nothing to do.
    let s = reconcile(&cfg);
    assert_eq!(
        (s["downloaded"].as_u64(), s["deleted"].as_u64(), s["dirs_created"].as_u64()),
        (Some(0), Some(0), Some(0)),
        "{s}"
    );

    // Rewrites, deletes, and file <-> directory swaps converge; a local entry
    // the remote never had goes, whatever its name.
    std::fs::write(mirror.join("many").join(raw(b"stray\xff.bin")), b"not on the remote").unwrap();
    // Rewrites, deletes, and file <-> directory swaps converge.
    server.put("plus+and%25percent.txt", b"rewritten, and longer than before");
    server.remove("many/f007.txt");
    server.remove("swap/becomes-dir");
    server.put("swap/becomes-dir/now-inside.txt", b"a directory now");
    server.remove("swap/dir-becomes-file");
    server.put("swap/dir-becomes-file", b"a file now");
    let s = reconcile(&cfg);
    assert_eq!(s["failed"], 0, "{s}");
    assert_same(&server, &mirror, "after rewrites, deletes and swaps");

    // Signed events: a new file, a new directory with content, a delete.
    let d = Daemon::start(&cfg);
    server.put("ev/new file.txt", b"arrived by event");
    server.put("evdir/a.txt", b"a");
    server.put("evdir/sub/b.txt", b"b");
    server.remove("many/f008.txt");
    for (id, topic, path) in [
        ("e1", "file.created", "ev/new+file.txt"),
        ("e2", "file.created", "evdir/"),
        ("e3", "file.deleted", "many/f008.txt"),
    ] {
        assert_eq!(d.send(&event(id, topic, path)).status, 204);
    }
    let start = std::time::Instant::now();
    while seen(server.truth(), kind) != seen(&mirror, kind) {
        assert!(start.elapsed() < CONVERGE, "events never converged; daemon log:\n{}", d.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_same(&server, &mirror, "after events");
}

#[test]
fn openssh_sftp_server() {
    interop(Kind::OpenSsh);
}

#[test]
fn proftpd_mod_sftp() {
    interop(Kind::ProFtpd);
}

#[test]
fn rclone_serve_sftp_over_a_folder() {
    interop(Kind::RcloneDir);
}

#[test]
fn rclone_serve_sftp_over_memory_like_a_bucket() {
    interop(Kind::RcloneMemory);
}

#[test]
fn asyncssh_with_binary_handles() {
    interop(Kind::AsyncSsh);
}
