//! `sftp-mirror demo`: the whole pipeline on this machine, no account needed.
//!
//! It plays SFTP To Go: an embedded SFTP server ([`crate::testkit`]) serves a
//! temporary "remote" folder, the real daemon ([`crate::daemon`]) runs on
//! loopback with a generated secret, and the demo changes the remote folder
//! and sends the matching signed webhooks (plus a duplicate, a reordered pair,
//! a forged delete and a bad signature), narrating each step. It ends with a
//! reconcile pass and its own verdict: does the mirror equal the remote?

use crate::config::Secret;
use crate::sync::reconcile;
use crate::testkit::{client_settings, generate_client_key, ServerOptions, TestServer};
use crate::webhook::sign;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// How long one step may take to show up in the mirror.
const STEP_DEADLINE: Duration = Duration::from_secs(15);

/// What went wrong in the demo (it exits non-zero).
#[derive(Debug, thiserror::Error)]
#[error("demo: {0}")]
pub struct DemoError(String);

fn fail(e: impl std::fmt::Display) -> DemoError {
    DemoError(e.to_string())
}

/// The folders the demo leaves behind for inspection.
#[derive(Debug, Clone)]
pub struct DemoPaths {
    /// The folder the embedded SFTP server serves ("the remote").
    pub remote: PathBuf,
    /// The mirror.
    pub mirror: PathBuf,
    /// Config, keys, journal.
    pub state: PathBuf,
}

struct Demo {
    addr: SocketAddr,
    secret: Secret,
    paths: DemoPaths,
    step: u32,
    seq: u32,
}

impl Demo {
    fn say(&mut self, title: &str) {
        self.step += 1;
        println!("\n{}. {title}", self.step);
    }

    fn remote(&self, rel: &str) -> PathBuf {
        self.paths.remote.join(rel)
    }

    fn mirror(&self, rel: &str) -> PathBuf {
        self.paths.mirror.join(rel)
    }

    fn next_id(&mut self) -> String {
        self.seq += 1;
        format!("evt_demo_{:04}", self.seq)
    }

    /// Sends an event as SFTP To Go would (form-urlencoded path, signed body).
    async fn send(&mut self, id: &str, topic: &str, rel: &str, good_signature: bool) -> Result<u16, DemoError> {
        let wire: String = form_urlencoded::byte_serialize(rel.as_bytes()).collect::<String>().replace("%2F", "/");
        let body = serde_json::json!({
            "Id": id, "Topic": topic, "CreatedAt": crate::journal::now_ms(),
            "Actor": {"Type": "User", "Id": "demo"}, "Resource": "File",
            "Data": {"Path": wire, "Size": if topic == "file.created" { serde_json::json!(1) } else { serde_json::Value::Null }},
            "Metadata": {"Event": {"Id": id, "Topic": topic}},
        })
        .to_string();
        let key = if good_signature { self.secret.clone() } else { Secret::new("a guess") };
        let status = post(self.addr, &body, &sign(&key, body.as_bytes())).await?;
        let meaning = match status {
            204 => "accepted and journaled",
            401 => "refused: signature does not match",
            400 => "refused: bad request",
            _ => "unexpected",
        };
        println!("   → POST {topic} {wire:?} … HTTP {status} ({meaning})");
        Ok(status)
    }

    async fn wait(&self, what: &str, mut ok: impl FnMut() -> bool) -> Result<(), DemoError> {
        let start = Instant::now();
        while !ok() {
            if start.elapsed() > STEP_DEADLINE {
                return Err(fail(format!("timed out waiting until {what}")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!("   ✓ {what} ({} ms)", start.elapsed().as_millis());
        Ok(())
    }
}

async fn post(addr: SocketAddr, body: &str, signature: &str) -> Result<u16, DemoError> {
    let mut s = tokio::net::TcpStream::connect(addr).await.map_err(fail)?;
    let req = format!(
        "POST /webhook HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nX-Hub-Signature: {signature}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.map_err(fail)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.map_err(fail)?;
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| fail("no HTTP answer"))
}

/// Every entry under `root` but `.sftp-mirror`: path → content hash or "dir".
pub fn tree(root: &Path) -> BTreeMap<String, String> {
    use sha2::{Digest, Sha256};
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).map(|r| r.to_string_lossy().into_owned()).unwrap_or_default();
            if rel == crate::event::RESERVED_NAME {
                continue;
            }
            match e.file_type() {
                Ok(t) if t.is_dir() => {
                    out.insert(rel, "dir".into());
                    stack.push(p);
                }
                _ => {
                    let h = std::fs::read(&p).map(|b| hex::encode(Sha256::digest(b))).unwrap_or_default();
                    out.insert(rel, h);
                }
            }
        }
    }
    out
}

fn write(path: &Path, data: &[u8]) -> Result<(), DemoError> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(fail)?;
    }
    std::fs::write(path, data).map_err(fail)
}

/// Runs the demo; `keep_running` leaves the daemon up until Ctrl-C.
/// Returns whether the mirror ended equal to the remote.
///
/// # Errors
/// [`DemoError`] when a step cannot be carried out.
pub async fn run(keep_running: bool) -> Result<bool, DemoError> {
    let base = tempfile::Builder::new().prefix("sftp-mirror-demo-").tempdir().map_err(fail)?.keep();
    let paths = DemoPaths { remote: base.join("remote"), mirror: base.join("mirror"), state: base.join("state") };
    std::fs::create_dir_all(&paths.state).map_err(fail)?;

    println!("sftp-mirror demo: the whole pipeline on this machine, no account needed.");
    println!("   remote folder (served by an embedded SFTP server): {}", paths.remote.display());
    println!("   mirror folder:                                     {}", paths.mirror.display());

    // A sample remote tree that no event announces: only reconcile will find it.
    for (rel, data) in [
        ("reports/2026/q1.csv", &b"month,revenue\njan,10\nfeb,12\nmar,9\n"[..]),
        ("reports/2026/q2.csv", b"month,revenue\napr,11\nmay,13\njun,15\n"),
        ("readme.txt", b"Files dropped here are mirrored.\n"),
    ] {
        write(&paths.remote.join(rel), data)?;
    }
    std::fs::create_dir_all(paths.remote.join("archive")).map_err(fail)?;

    // The "SFTP To Go" side: an SSH server with a fresh host key and a client key.
    let (key_path, public) = generate_client_key(&paths.state).map_err(fail)?;
    let mut opts = ServerOptions::new(&paths.remote, "demo");
    opts.authorized_keys = vec![public];
    let server = TestServer::start(opts).await.map_err(fail)?;
    println!("   SFTP server on {} (host key {})", server.addr(), server.host_key_fingerprint());

    let secret = Secret::new(format!("{:032x}", fastrand::u128(..)));
    write(&paths.state.join("webhook-secret"), format!("{}\n", secret.expose()).as_bytes())?;
    let settings =
        client_settings(&server, "demo", &key_path, &paths.state, &paths.mirror, secret.clone()).map_err(fail)?;
    let token = CancellationToken::new();
    let (running, handle) = crate::daemon::start(&settings, token.clone()).await.map_err(fail)?;
    println!(
        "   daemon listening on http://{}/webhook (secret in {})",
        running.webhook_addr,
        paths.state.join("webhook-secret").display()
    );
    let mut d = Demo { addr: running.webhook_addr, secret, paths: paths.clone(), step: 0, seq: 0 };

    d.say("A file is uploaded; SFTP To Go sends file.created (the path is form-urlencoded: '+' is a space).");
    write(&d.remote("incoming/hello world+1.txt"), b"Hello from the remote!\n")?;
    let id = d.next_id();
    d.send(&id, "file.created", "incoming/hello world+1.txt", true).await?;
    let m = d.mirror("incoming/hello world+1.txt");
    d.wait("the file is in the mirror, written atomically", || {
        std::fs::read(&m).is_ok_and(|b| b == b"Hello from the remote!\n")
    })
    .await?;

    d.say("The same delivery arrives again (SFTP To Go delivers at least once).");
    d.send(&id, "file.created", "incoming/hello world+1.txt", true).await?;
    println!("   ✓ answered 204 and recognised by its event Id: nothing is downloaded twice");

    d.say("A directory is created: its path ends with '/'.");
    std::fs::create_dir_all(d.remote("incoming/new folder")).map_err(fail)?;
    let id = d.next_id();
    d.send(&id, "file.created", "incoming/new folder/", true).await?;
    let m = d.mirror("incoming/new folder");
    d.wait("the directory exists in the mirror", || m.is_dir()).await?;

    d.say("A file is replaced, and the two events arrive in the wrong order (deleted before created).");
    write(&d.remote("incoming/hello world+1.txt"), b"Hello again, version 2!\n")?;
    let (a, b) = (d.next_id(), d.next_id());
    d.send(&b, "file.deleted", "incoming/hello world+1.txt", true).await?;
    d.send(&a, "file.created", "incoming/hello world+1.txt", true).await?;
    let m = d.mirror("incoming/hello world+1.txt");
    d.wait("the mirror holds version 2: each event only says where to look, the remote says what is true", || {
        std::fs::read(&m).is_ok_and(|b| b == b"Hello again, version 2!\n")
    })
    .await?;

    d.say("A forged file.deleted arrives for a file that still exists on the remote.");
    let id = d.next_id();
    d.send(&id, "file.deleted", "readme.txt", true).await?;
    let start = Instant::now();
    loop {
        let done = running.journal.list(Some(crate::journal::Status::Done), 100).await.map_err(fail)?;
        if done.iter().any(|r| r.id == id) {
            break;
        }
        if start.elapsed() > STEP_DEADLINE {
            return Err(fail("the forged delete was never processed"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !d.mirror("readme.txt").is_file() {
        return Err(fail("readme.txt should be in the mirror"));
    }
    println!("   ✓ checked with the remote: readme.txt exists there, so it is kept (and mirrored), not deleted");

    d.say("Someone without the signing secret posts a delete.");
    let id = d.next_id();
    let status = d.send(&id, "file.deleted", "incoming/hello world+1.txt", false).await?;
    if status != 401 {
        return Err(fail(format!("a forged signature got HTTP {status}")));
    }
    println!("   ✓ refused with 401 and not recorded");

    d.say("A file is really deleted on the remote.");
    std::fs::remove_file(d.remote("incoming/hello world+1.txt")).map_err(fail)?;
    let id = d.next_id();
    d.send(&id, "file.deleted", "incoming/hello world+1.txt", true).await?;
    let m = d.mirror("incoming/hello world+1.txt");
    d.wait("the file is gone from the mirror", || !m.exists()).await?;

    d.say("Files that no event announced (the sample reports) are found by a reconcile pass.");
    let summary = reconcile::run(
        &running.syncer,
        reconcile::Options::default(),
        settings.mirror.max_delete_ratio,
        settings.mirror.concurrency,
        &reconcile::Quiet,
        &mut |plan| println!("   plan: {} change(s), {} unchanged", plan.ops.len(), plan.unchanged),
    )
    .await
    .map_err(fail)?;
    println!("   ✓ {summary}");

    let (remote_tree, mirror_tree) = (tree(&paths.remote), tree(&paths.mirror));
    let equal = remote_tree == mirror_tree;
    println!("\nVerdict: mirror equals remote: {}", if equal { "yes" } else { "NO" });
    for (path, kind) in &mirror_tree {
        println!("   {}{}", path, if kind == "dir" { "/" } else { "" });
    }
    if !equal {
        for (p, _) in remote_tree.iter().filter(|(p, h)| mirror_tree.get(*p) != Some(h)) {
            println!("   differs: {p}");
        }
    }
    println!("\nFolders kept for inspection: {}", base.display());

    if keep_running {
        let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "sftp-mirror".into());
        println!("\nThe daemon keeps running. Send an event by hand, e.g.:");
        println!("   echo 'new content' > {}/by-hand.txt", paths.remote.display());
        println!("   body='{{\"Id\":\"by-hand-1\",\"Topic\":\"file.created\",\"Data\":{{\"Path\":\"by-hand.txt\"}}}}'");
        println!(
            "   curl -i http://{}/webhook -H \"X-Hub-Signature: $(printf %s \"$body\" | {exe} sign --secret-file {})\" -d \"$body\"",
            running.webhook_addr,
            paths.state.join("webhook-secret").display()
        );
        println!("Press Ctrl-C to stop.");
        let _ = tokio::signal::ctrl_c().await;
    }
    token.cancel();
    let _ = handle.await;
    server.shutdown().await;
    Ok(equal)
}
