//! The SFTP server implementations the interop suite runs against (SPEC §7),
//! each started on a free loopback port with its own host key and client key:
//! OpenSSH (through [`Sshd`]), ProFTPD `mod_sftp`, `rclone serve sftp` over a
//! folder and over its bucket-like `:memory:` backend, and an asyncssh server.
//!
//! Every server has a local *truth* folder: the folder it serves, or (for
//! `:memory:`) a shadow that every change is applied to as well, through
//! OpenSSH's `sftp` client. Tests change the remote with [`Server::put`] and
//! friends and compare the mirror with [`Server::truth`].

use super::daemon::{write_config, Target};
use super::sshd::{free_port, Sshd};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Which implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    OpenSsh,
    ProFtpd,
    RcloneDir,
    RcloneMemory,
    AsyncSsh,
}

impl Kind {
    /// Whether the server lists file names as the bytes on disk (rclone
    /// re-encodes names that are not UTF-8; a bucket's keys are UTF-8).
    pub fn passes_raw_names(self) -> bool {
        matches!(self, Kind::OpenSsh | Kind::ProFtpd | Kind::AsyncSsh)
    }

    /// Whether the server keeps empty directories (a bucket has only prefixes).
    pub fn keeps_empty_dirs(self) -> bool {
        self != Kind::RcloneMemory
    }
}

/// A running server and what a client needs to reach it.
pub struct Server {
    pub kind: Kind,
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// The folder whose content the remote has.
    truth: PathBuf,
    /// `sftp.remote_root` for this server.
    pub remote_root: String,
    pub user: String,
    pub client_key: PathBuf,
    pub known_hosts: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    _sshd: Option<Sshd>,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn keygen(path: &Path, args: &[&str]) {
    run(Command::new("ssh-keygen").args(["-q", "-N", "", "-C", "interop"]).args(args).arg("-f").arg(path));
}

fn tool(name: &str, hint: &str) -> String {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin"] {
        let p = format!("{dir}/{name}");
        if Path::new(&p).exists() {
            return p;
        }
    }
    panic!("{name} is required by the interop tests: run `bash scripts/test.sh` as root (installs it) or `apt-get install -y {hint}`");
}

/// Waits until something answers with an SSH banner on `port`.
fn wait_banner(port: u16, child: &mut Child, log: &Path) {
    let start = Instant::now();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    loop {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut line = String::new();
            let _ = s.write_all(b"SSH-2.0-probe\r\n");
            if BufReader::new(&mut s).read_line(&mut line).is_ok() && line.starts_with("SSH-") {
                return;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("server exited ({status}) before listening: {}", std::fs::read_to_string(log).unwrap_or_default());
        }
        assert!(
            start.elapsed() < READY_TIMEOUT,
            "server never listened: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Server {
    pub fn start(kind: Kind) -> Server {
        if kind == Kind::OpenSsh {
            let sshd = Sshd::start();
            return Server {
                kind,
                dir: tempfile::tempdir().unwrap(),
                port: sshd.port(),
                truth: sshd.remote_dir().to_owned(),
                remote_root: sshd.remote_dir().display().to_string(),
                user: sshd.user().to_owned(),
                client_key: sshd.client_key_path().to_owned(),
                known_hosts: sshd.known_hosts_path().to_owned(),
                child: None,
                log: PathBuf::new(),
                _sshd: Some(sshd),
            };
        }
        let dir = tempfile::Builder::new().prefix("sftp-mirror-interop-").tempdir().unwrap();
        let d = dir.path().to_owned();
        let truth = d.join("remote");
        std::fs::create_dir_all(&truth).unwrap();
        let client_key = d.join("client");
        keygen(&client_key, &["-t", "ed25519"]);
        let host_key = d.join("host");
        let log = d.join("server.log");
        let logf = || std::fs::File::create(&log).unwrap();
        let port = free_port();
        let (mut child, remote_root) = match kind {
            Kind::ProFtpd => {
                // mod_sftp wants a PEM host key and RFC 4716 authorized keys.
                keygen(&host_key, &["-t", "ecdsa", "-b", "256", "-m", "PEM"]);
                let out = Command::new("ssh-keygen").arg("-e").arg("-f").arg(d.join("client.pub")).output().unwrap();
                std::fs::write(d.join("authorized_rfc4716"), out.stdout).unwrap();
                let conf = format!(
                    "ServerType standalone\nServerName \"interop\"\nPort {port}\nDefaultAddress 127.0.0.1\n\
                     SocketBindTight on\nUseIPv6 off\nUser root\nGroup root\nRootLogin on\nUseFtpUsers off\n\
                     PidFile {d}/proftpd.pid\nScoreboardFile {d}/scoreboard\nWtmpLog off\nUseReverseDNS off\n\
                     TransferLog none\nSystemLog {d}/system.log\nModulePath /usr/lib/proftpd\nLoadModule mod_sftp.c\n\
                     SFTPEngine on\nSFTPLog {d}/sftp.log\nSFTPHostKey {d}/host\nSFTPAuthMethods publickey\n\
                     SFTPAuthorizedUserKeys file:{d}/authorized_rfc4716\nSFTPCompression off\n",
                    d = d.display()
                );
                std::fs::write(d.join("proftpd.conf"), conf).unwrap();
                let child = Command::new(tool("proftpd", "proftpd-core proftpd-mod-crypto"))
                    .args(["-n", "-q", "-c"])
                    .arg(d.join("proftpd.conf"))
                    .stdout(logf())
                    .stderr(logf())
                    .spawn()
                    .unwrap();
                (child, truth.display().to_string())
            }
            Kind::RcloneDir | Kind::RcloneMemory => {
                keygen(&host_key, &["-t", "ed25519"]);
                std::fs::copy(d.join("client.pub"), d.join("authorized_keys")).unwrap();
                let served = if kind == Kind::RcloneDir { truth.display().to_string() } else { ":memory:".into() };
                let child = Command::new(tool("rclone", "rclone"))
                    .args(["serve", "sftp", &served, "--addr", &format!("127.0.0.1:{port}"), "--config", "/dev/null"])
                    // No directory cache: a listing shows what is there now.
                    .args(["--dir-cache-time", "0s", "--key"])
                    .arg(&host_key)
                    .arg("--authorized-keys")
                    .arg(d.join("authorized_keys"))
                    .stdout(logf())
                    .stderr(logf())
                    .spawn()
                    .unwrap();
                // At the root of a bucket-like backend only buckets (directories)
                // exist, as on S3: the mirror is of one bucket.
                (child, if kind == Kind::RcloneDir { "/".into() } else { "/bucket".into() })
            }
            Kind::AsyncSsh => {
                keygen(&host_key, &["-t", "ed25519"]);
                std::fs::copy(d.join("client.pub"), d.join("authorized_keys")).unwrap();
                let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/servers/asyncssh_sftp.py");
                // Debian's interpreter: python3-asyncssh lives in its dist-packages.
                let child = Command::new("/usr/bin/python3")
                    .args(["-W", "ignore", script])
                    .arg(&truth)
                    .arg(&host_key)
                    .arg(d.join("authorized_keys"))
                    .arg(port.to_string())
                    .stdout(Stdio::null())
                    .stderr(logf())
                    .spawn()
                    .unwrap();
                (child, "/".into())
            }
            Kind::OpenSsh => unreachable!(),
        };
        wait_banner(port, &mut child, &log);
        let pubkey = std::fs::read_to_string(d.join("host.pub")).unwrap();
        let mut it = pubkey.split_whitespace();
        let (alg, key) = (it.next().unwrap(), it.next().unwrap());
        let known_hosts = d.join("known_hosts");
        std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {alg} {key}\n")).unwrap();
        let server = Server {
            kind,
            dir,
            port,
            truth,
            remote_root,
            user: "root".into(),
            client_key,
            known_hosts,
            child: Some(child),
            log,
            _sshd: None,
        };
        if kind == Kind::RcloneMemory {
            server.batch(&format!("mkdir {}\n", server.remote_root));
        }
        server
    }

    /// The local folder equal to the remote's content.
    pub fn truth(&self) -> &Path {
        &self.truth
    }

    /// The server's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs OpenSSH `sftp` batch commands against the server (`:memory:` only).
    fn batch(&self, commands: &str) {
        let mut child = Command::new("sftp")
            .args(["-q", "-b", "-", "-P", &self.port.to_string(), "-i"])
            .arg(&self.client_key)
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .arg(format!("{}@127.0.0.1", self.user))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(commands.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "sftp batch {commands:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `rel` as an absolute, quoted path for sftp's batch mode.
    fn quoted(&self, rel: &str) -> String {
        let abs = format!("{}/{rel}", self.remote_root.trim_end_matches('/'));
        format!("\"{}\"", abs.replace('\\', "\\\\").replace('"', "\\\""))
    }

    /// Creates or replaces remote file `rel` (and its parents).
    pub fn put(&self, rel: &str, data: &[u8]) {
        self.put_all(&[(rel.to_owned(), data.to_vec())]);
    }

    /// [`Server::put`] for many files, in one `sftp` session for `:memory:`.
    pub fn put_all(&self, files: &[(String, Vec<u8>)]) {
        let mut cmds = String::new();
        for (rel, data) in files {
            let p = self.truth.join(rel);
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                self.remove(rel);
            }
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, data).unwrap();
            let mut prefix = String::new();
            for c in rel.split('/').collect::<Vec<_>>().split_last().unwrap().1 {
                prefix = if prefix.is_empty() { (*c).to_owned() } else { format!("{prefix}/{c}") };
                cmds.push_str(&format!("-mkdir {}\n", self.quoted(&prefix)));
            }
            cmds.push_str(&format!("put \"{}\" {}\n", p.display(), self.quoted(rel)));
        }
        if self.kind == Kind::RcloneMemory {
            self.batch(&cmds);
        }
    }

    /// Creates remote directory `rel` (and its parents).
    pub fn mkdir(&self, rel: &str) {
        std::fs::create_dir_all(self.truth.join(rel)).unwrap();
        if self.kind == Kind::RcloneMemory {
            self.batch(&format!("-mkdir {}\n", self.quoted(rel)));
        }
    }

    /// Removes remote `rel`, a file or a whole directory.
    pub fn remove(&self, rel: &str) {
        let p = self.truth.join(rel);
        let is_dir = std::fs::symlink_metadata(&p).map(|m| m.is_dir()).unwrap_or(false);
        if self.kind == Kind::RcloneMemory {
            let mut cmds = String::new();
            if is_dir {
                // Deepest first: sftp's rmdir only removes empty directories.
                let mut entries = Vec::new();
                super::daemon::walk(&p, |r, _, ft| entries.push((format!("{rel}/{r}"), ft.is_dir())));
                entries.sort_by_key(|(r, _)| std::cmp::Reverse(r.matches('/').count()));
                for (r, d) in entries {
                    cmds.push_str(&format!("{} {}\n", if d { "rmdir" } else { "rm" }, self.quoted(&r)));
                }
                cmds.push_str(&format!("-rmdir {}\n", self.quoted(rel)));
            } else {
                cmds.push_str(&format!("rm {}\n", self.quoted(rel)));
            }
            self.batch(&cmds);
        }
        if is_dir {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }

    /// A config file for `sftp-mirror` against this server.
    pub fn config(&self, mirror: &Path, journal: &Path) -> PathBuf {
        let target = Target {
            port: self.port,
            user: &self.user,
            key: &self.client_key,
            known_hosts: &self.known_hosts,
            remote_root: &self.remote_root,
            timeout: "10s",
        };
        write_config(self.dir.path(), &target, mirror, journal)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.kind == Kind::ProFtpd {
            // mod_sftp forks a process per session; end them with the daemon.
            if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("proftpd.pid")) {
                let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
            }
            let _ = Command::new("pkill").arg("-9").arg("-f").arg(self.dir.path().join("proftpd.conf")).status();
        }
    }
}
