//! Runs the real `sftp-mirror` binary against a private sshd: config files,
//! the daemon process (its log captured), signed events, tree comparisons.

use super::http::{request, Response};
use super::sshd::Sshd;
use sftp_mirror::config::Secret;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The webhook secret every test config uses.
pub const SECRET: &str = "test webhook secret";
/// How long tests wait for the mirror to converge before failing.
pub const CONVERGE: Duration = Duration::from_secs(60);

/// Knobs for the generated config file.
#[derive(Clone, Debug)]
pub struct Opts {
    pub delete: bool,
    pub authorization: Option<String>,
    pub remote_root: Option<PathBuf>,
    pub on_start: bool,
    pub max_body: u64,
    pub extra_mirror: String,
    pub concurrency: usize,
    /// Replaces the `private_key`/`known_hosts` lines of `[sftp]` when set.
    pub sftp_auth: Option<String>,
    /// Extra lines for `[webhook]`, `[admin]`, `[journal]`.
    pub extra_webhook: String,
    pub extra_admin: String,
    pub extra_journal: String,
    /// `admin.listen`.
    pub admin: String,
    /// Whole sections appended at the end (`[hooks]` …).
    pub extra_sections: String,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            delete: true,
            authorization: None,
            remote_root: None,
            on_start: false,
            max_body: 1 << 20,
            extra_mirror: String::new(),
            concurrency: 8,
            sftp_auth: None,
            extra_webhook: String::new(),
            extra_admin: String::new(),
            extra_journal: String::new(),
            admin: "off".into(),
            extra_sections: String::new(),
        }
    }
}

/// A private sshd, a remote folder it serves, and a mirror/journal folder.
pub struct Env {
    pub sshd: Sshd,
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env { sshd: Sshd::start(), dir: tempfile::tempdir().unwrap() }
    }

    /// The remote tree (what the SFTP server serves as `remote_root`).
    pub fn remote(&self) -> &Path {
        self.sshd.remote_dir()
    }

    pub fn mirror(&self) -> PathBuf {
        self.dir.path().join("mirror")
    }

    pub fn journal(&self) -> PathBuf {
        self.dir.path().join("state/journal.db")
    }

    /// Writes a config file and returns its path.
    pub fn config(&self, o: &Opts) -> PathBuf {
        let root = o.remote_root.clone().unwrap_or_else(|| self.remote().to_owned());
        let auth = o.authorization.as_ref().map(|a| format!("authorization = {a:?}\n")).unwrap_or_default();
        let text = format!(
            r#"
[sftp]
host = "127.0.0.1"
port = {port}
username = {user:?}
{sftp_auth}
remote_root = {root:?}
timeout = "10s"

[mirror]
path = {mirror:?}
delete = {delete}
concurrency = {conc}
{extra}

[webhook]
listen = "127.0.0.1:0"
path = "/webhook"
secret = {secret:?}
max_body = {max_body}
{auth}
{extra_webhook}

[admin]
listen = {admin:?}
{extra_admin}

[journal]
path = {journal:?}
{extra_journal}

[reconcile]
on_start = {on_start}
interval = "0s"

{extra_sections}
"#,
            port = self.sshd.port(),
            user = self.sshd.user(),
            sftp_auth = o.sftp_auth.clone().unwrap_or_else(|| format!(
                "private_key = {:?}\nknown_hosts = {:?}",
                self.sshd.client_key_path(),
                self.sshd.known_hosts_path()
            )),
            root = root,
            mirror = self.mirror(),
            delete = o.delete,
            conc = o.concurrency,
            extra = o.extra_mirror,
            secret = SECRET,
            max_body = o.max_body,
            auth = auth,
            journal = self.journal(),
            extra_webhook = o.extra_webhook,
            extra_admin = o.extra_admin,
            extra_journal = o.extra_journal,
            admin = o.admin,
            on_start = o.on_start,
            extra_sections = o.extra_sections,
        );
        let path = self.dir.path().join(format!("config-{}.toml", fastrand::u32(..)));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Starts `serve` with `o` and waits until it listens.
    pub fn serve(&self, o: &Opts) -> Daemon {
        Daemon::start(&self.config(o))
    }

    /// Runs a one-shot command with a config from `o`.
    pub fn run(&self, o: &Opts, args: &[&str]) -> Output {
        let cfg = self.config(o);
        Command::new(bin()).arg("--config").arg(cfg).args(args).output().unwrap()
    }

    /// Writes a remote file (creating parents) with an mtime in the past, later
    /// for each call: a copy made now is not "racy" (SPEC §2: made within a
    /// second of its mtime, so fetched again), and a rewrite still changes the mtime.
    pub fn put(&self, rel: &str, data: &[u8]) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let p = self.remote().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let mtime = now - 1_000_000 + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(std::time::UNIX_EPOCH + Duration::from_secs(mtime))
            .unwrap();
    }
}

/// Where `sftp-mirror` finds an SFTP server, for [`write_config`].
pub struct Target<'a> {
    pub port: u16,
    pub user: &'a str,
    pub key: &'a Path,
    pub known_hosts: &'a Path,
    pub remote_root: &'a str,
    pub timeout: &'a str,
}

/// Writes a minimal config file into `dir` (webhook on a free port, no admin,
/// no periodic reconcile) for `target`, `mirror` and `journal`; returns its path.
pub fn write_config(dir: &Path, target: &Target<'_>, mirror: &Path, journal: &Path) -> PathBuf {
    let text = format!(
        r#"[sftp]
host = "127.0.0.1"
port = {port}
username = {user:?}
private_key = {key:?}
known_hosts = {kh:?}
remote_root = {root:?}
timeout = {timeout:?}

[mirror]
path = {mirror:?}

[webhook]
listen = "127.0.0.1:0"
secret = {secret:?}

[admin]
listen = "off"

[journal]
path = {journal:?}

[reconcile]
on_start = false
interval = "0s"
"#,
        port = target.port,
        user = target.user,
        key = target.key,
        kh = target.known_hosts,
        root = target.remote_root,
        timeout = target.timeout,
        secret = SECRET,
    );
    let path = dir.join(format!("config-{}.toml", fastrand::u32(..)));
    std::fs::write(&path, text).unwrap();
    path
}

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sftp-mirror")
}

/// A running `sftp-mirror serve`.
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub log: Arc<Mutex<String>>,
}

impl Daemon {
    pub fn start(config: &Path) -> Daemon {
        Daemon::start_with_env(config, &[])
    }

    /// [`Daemon::start`] with extra environment variables.
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut child = Command::new(bin())
            .arg("--config")
            .arg(config)
            .arg("-v")
            .arg("serve")
            .envs(env.iter().copied())
            .env("RUST_LOG", "sftp_mirror=debug,info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sftp-mirror serve");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                for (marker, kind) in [
                    ("webhook listening on http://", "w"),
                    ("webhook listening on https://", "w"),
                    ("admin listening on http://", "a"),
                ] {
                    if let Some(i) = line.find(marker) {
                        let rest = &line[i + marker.len()..];
                        let addr = rest.split(['/', ' ']).next().unwrap_or_default().to_string();
                        let _ = tx.send((kind, addr));
                    }
                }
                let mut l = l.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let admin_wanted = !std::fs::read_to_string(config).unwrap().contains("[admin]\nlisten = \"off\"");
        let (mut addr, mut admin) = (None, None);
        while addr.is_none() || (admin_wanted && admin.is_none()) {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(("w", a)) => addr = Some(a.parse().expect("listen address")),
                Ok((_, a)) => admin = Some(a.parse().expect("admin address")),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("daemon did not start; log:\n{}", log.lock().unwrap());
                }
            }
        }
        Daemon { child, addr: addr.unwrap(), admin, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// POSTs `body` signed with [`SECRET`].
    pub fn send(&self, body: &[u8]) -> Response {
        let sig = sftp_mirror::webhook::sign(&Secret::new(SECRET), body);
        request(self.addr, "POST", "/webhook", &[("X-Hub-Signature", &sig), ("Content-Type", "application/json")], body)
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        self.child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A signed-ready event body as SFTP To Go sends it, built with a real JSON
/// encoder, so any `path` (quotes, backslashes, control characters) arrives
/// exactly as given. `path` is the wire form (form-urlencoded).
pub fn event(id: &str, topic: &str, path: &str) -> Vec<u8> {
    let size = if topic == "file.created" { serde_json::json!(12) } else { serde_json::Value::Null };
    serde_json::to_vec(&serde_json::json!({
        "Id": id, "Topic": topic, "CreatedAt": 1_700_000_000_000i64, "UpdatedAt": 1_700_000_000_000i64,
        "Actor": {"Type": "User", "Id": "owner"}, "Resource": "File", "PreviousData": null,
        "Data": {"Path": path, "Size": size},
        "Metadata": {
            "Organization": {"Id": "org"}, "Webhook": {"Id": "wh"},
            "Delivery": {"Id": format!("d-{id}")}, "Attempt": {"Id": format!("a-{id}")},
            "Event": {"Id": id, "Topic": topic},
        },
    }))
    .unwrap()
}

/// Calls `visit(relative path, path, type)` for every entry under `root` except
/// the top-level `.sftp-mirror`, descending into directories. Entries can vanish
/// or be replaced while we look (the daemon is working): those are skipped.
pub fn walk(root: &Path, mut visit: impl FnMut(String, &Path, std::fs::FileType)) {
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
            let Ok(ft) = e.file_type() else { continue };
            if rel == ".sftp-mirror" {
                continue;
            }
            visit(rel, &p, ft);
            if ft.is_dir() {
                stack.push(p);
            }
        }
    }
}

/// What a walk of the mirror saw at one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Dir,
    File(String),
    /// With its target.
    Symlink(String),
    Other,
}

/// Every entry under `root` except the top-level `.sftp-mirror`, tolerating
/// entries that disappear or are replaced during the walk (they are skipped).
pub fn snapshot(root: &Path) -> Vec<(String, Seen)> {
    let mut out = Vec::new();
    walk(root, |rel, p, ft| {
        let seen = if ft.is_dir() {
            Seen::Dir
        } else if ft.is_symlink() {
            Seen::Symlink(std::fs::read_link(p).map(|t| t.display().to_string()).unwrap_or_default())
        } else if ft.is_file() {
            // Open without following a symlink swapped in meanwhile.
            use std::os::unix::fs::OpenOptionsExt;
            let f = std::fs::OpenOptions::new().read(true).custom_flags(0o400000 /* O_NOFOLLOW */).open(p);
            let Ok(mut f) = f else { return };
            let mut buf = Vec::new();
            if std::io::Read::read_to_end(&mut f, &mut buf).is_err() {
                return;
            }
            Seen::File(super::chaos::sha(&buf))
        } else {
            Seen::Other
        };
        out.push((rel, seen));
    });
    out
}

/// Every entry under `root` (skipping `.sftp-mirror`): relative path → file
/// bytes' SHA-256, "dir", "symlink -> target" or "other"; entries that vanish
/// or are replaced while it looks are skipped.
pub fn tree(root: &Path) -> BTreeMap<String, String> {
    snapshot(root)
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Seen::Dir => "dir".to_string(),
                Seen::File(h) => h,
                Seen::Symlink(t) => format!("symlink -> {t}"),
                Seen::Other => "other".to_string(),
            };
            (k, v)
        })
        .collect()
}

/// Waits until files written up to now are out of the "racy" window (SPEC §2:
/// a copy made within a second of its mtime is fetched again by the next
/// pass): for servers whose uploads carry the upload time as mtime.
pub fn wait_out_the_racy_window() {
    let secs = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let written = secs();
    wait_for("two clock seconds", || secs() >= written + 2);
}

/// Polls `f` until it is true or [`CONVERGE`] passes; panics with `what`.
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > CONVERGE {
            panic!("timed out waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the mirror equals the remote.
pub fn wait_mirror_equals_remote(env: &Env) {
    wait_trees_equal(env, CONVERGE, tree);
}

/// Polls until `snap` of the mirror equals `snap` of the remote; after
/// `within`, panics naming the paths that differ.
pub fn wait_trees_equal(env: &Env, within: Duration, snap: fn(&Path) -> BTreeMap<String, String>) {
    let start = Instant::now();
    loop {
        let (r, m) = (snap(env.remote()), snap(&env.mirror()));
        if r == m {
            return;
        }
        if start.elapsed() > within {
            let only_m: Vec<_> = m.iter().filter(|(k, v)| r.get(*k) != Some(*v)).map(|(k, _)| k).collect();
            let only_r: Vec<_> = r.iter().filter(|(k, v)| m.get(*k) != Some(*v)).map(|(k, _)| k).collect();
            panic!("mirror never became equal to the remote: wrong/extra in mirror {only_m:?}, missing {only_r:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Staging files currently present.
pub fn staging_files(env: &Env) -> usize {
    std::fs::read_dir(env.mirror().join(".sftp-mirror/staging")).map(|d| d.count()).unwrap_or(0)
}
