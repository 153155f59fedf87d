//! A private OpenSSH `sshd` per test: its own port, keys, config and log, all in a
//! temporary directory that is removed on drop.
//!
//! ```ignore
//! let sshd = common::Sshd::start();
//! // connect to sshd.addr() as sshd.user() with sshd.client_key_path(),
//! // trusting sshd.known_hosts_path(); the remote tree lives in sshd.remote_dir().
//! ```
//!
//! Requires `/usr/sbin/sshd` (package `openssh-server`) and root (CI runs as root):
//! the password user is created with `useradd`, and sshd's privilege-separation
//! directory `/run/sshd` is created if missing. The only state shared between tests
//! is that password user; everything else is per instance.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// sshd insists on being started by absolute path (it re-executes itself).
pub const SSHD_PATH: &str = "/usr/sbin/sshd";
/// System user allowed to log in with [`PASSWORD`].
pub const PASSWORD_USER: &str = "sftpmirror-test";
/// Password of [`PASSWORD_USER`]; contains a space and shell/URL-special characters on purpose.
pub const PASSWORD: &str = "Pa55 w+rd!%";
/// Passphrase of the second client key (see [`Sshd::client_key_with_passphrase`]).
pub const KEY_PASSPHRASE: &str = "s3cret pass-phrase";

const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at a fresh port in `start()` when the chosen one was taken meanwhile.
const START_ATTEMPTS: u32 = 10;
/// Attempts (200 ms apart) at re-binding the same port in `restart()`.
const RESTART_ATTEMPTS: u32 = 25;

const INSTALL_HINT: &str = "OpenSSH server is required by the integration tests: \
     run `bash .ci/run` (installs everything the tests need) or `apt-get install -y openssh-server`";

/// A running (or stopped) private sshd. Dropping it kills the daemon and every
/// session process it forked, then deletes its temporary directory.
pub struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    user: String,
    config_path: PathBuf,
    log_path: PathBuf,
    stderr_path: PathBuf,
    host_key_pub: PathBuf,
    client_key: PathBuf,
    client_key_pass: PathBuf,
    known_hosts: PathBuf,
    remote_dir: PathBuf,
    host_fingerprint: String,
}

enum SpawnError {
    /// The port was in use; worth retrying.
    Bind(String),
    Fatal(String),
}

impl Sshd {
    /// Generates keys and config in a fresh temp dir, starts sshd on a free loopback
    /// port and waits until it answers with an SSH banner. Panics with sshd's output
    /// on failure.
    pub fn start() -> Sshd {
        preflight();
        let user = current_user().to_string();

        let dir = tempfile::Builder::new()
            .prefix("sftp-mirror-sshd-")
            .tempdir()
            .unwrap_or_else(|e| panic!("sshd harness: cannot create temp dir: {e}"));
        // The password user must be able to traverse into remote_dir.
        chmod(dir.path(), 0o755);
        let p = |name: &str| dir.path().join(name);

        let host_key = p("host_key");
        let client_key = p("client_key");
        let client_key_pass = p("client_key_passphrase");
        // The three key generations are independent: run them concurrently.
        let keygens = vec![
            keygen(&host_key, "", "sftp-mirror-test-host"),
            keygen(&client_key, "", "sftp-mirror-test-client"),
            keygen(&client_key_pass, KEY_PASSPHRASE, "sftp-mirror-test-client-passphrase"),
        ];
        for (what, child) in keygens {
            let out = child.wait_with_output().unwrap_or_else(|e| panic!("sshd harness: waiting for {what}: {e}"));
            check_output(&what, &out);
        }

        let authorized_keys = p("authorized_keys");
        let mut keys = read(&pub_path(&client_key));
        keys.push_str(&read(&pub_path(&client_key_pass)));
        write(&authorized_keys, &keys, 0o644);

        let host_key_pub = pub_path(&host_key);
        let host_fingerprint = fingerprint(&host_key_pub);

        let remote_dir = p("remote");
        fs::create_dir(&remote_dir).unwrap_or_else(|e| panic!("sshd harness: mkdir {}: {e}", remote_dir.display()));
        chmod(&remote_dir, 0o755);

        let mut sshd = Sshd {
            port: 0,
            child: None,
            user,
            config_path: p("sshd_config"),
            log_path: p("sshd.log"),
            stderr_path: p("sshd.stderr"),
            host_key_pub,
            client_key,
            client_key_pass,
            known_hosts: p("known_hosts"),
            remote_dir,
            host_fingerprint,
            dir,
        };
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            sshd.port = free_port();
            sshd.write_config(&host_key, &authorized_keys);
            match sshd.spawn() {
                Ok(()) => return sshd,
                Err(SpawnError::Bind(msg)) => last = msg,
                Err(SpawnError::Fatal(msg)) => panic!("{msg}"),
            }
        }
        panic!("sshd harness: no free port after {START_ATTEMPTS} attempts; last failure:\n{last}")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The user for public-key authentication: the current user (root in CI).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Unencrypted ed25519 private key (OpenSSH format) authorized for [`Sshd::user`].
    pub fn client_key_path(&self) -> &Path {
        &self.client_key
    }

    /// A second authorized ed25519 private key, encrypted with the returned passphrase.
    pub fn client_key_with_passphrase(&self) -> (&Path, &str) {
        (&self.client_key_pass, KEY_PASSPHRASE)
    }

    /// `(user, password)` of a system user allowed to log in with that password.
    pub fn password_user(&self) -> (&str, &str) {
        (PASSWORD_USER, PASSWORD)
    }

    /// A known_hosts file holding `[127.0.0.1]:PORT ssh-ed25519 …` for this server.
    pub fn known_hosts_path(&self) -> &Path {
        &self.known_hosts
    }

    /// `SHA256:…` fingerprint of the host key, as `ssh-keygen -lf` prints it.
    pub fn host_key_fingerprint(&self) -> String {
        self.host_fingerprint.clone()
    }

    /// Public half of the host key (`ssh-ed25519 AAAA… comment`).
    pub fn host_public_key(&self) -> String {
        read(&self.host_key_pub).trim().to_string()
    }

    /// A fresh, empty, absolute directory for the test's remote tree (mode 0755,
    /// readable by the password user too).
    pub fn remote_dir(&self) -> &Path {
        &self.remote_dir
    }

    /// Kills sshd and every session process it forked, so established connections
    /// drop too ("server went away"). The port is closed when this returns. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let sessions = descendants(child.id());
            let _ = child.kill();
            let _ = child.wait();
            for pid in sessions {
                sigkill(pid);
            }
        }
    }

    /// Kills the per-connection processes only: established connections drop, the
    /// listener stays up and new connections work.
    pub fn kill_connections(&self) {
        if let Some(child) = &self.child {
            for pid in descendants(child.id()) {
                sigkill(pid);
            }
        }
    }

    /// Whether the daemon is (still) running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Starts sshd again on the same port with the same keys (stopping it first if
    /// it is running). Retries the bind for a few seconds; panics if it cannot.
    pub fn restart(&mut self) {
        self.stop();
        let mut last = String::new();
        for _ in 0..RESTART_ATTEMPTS {
            match self.spawn() {
                Ok(()) => return,
                Err(SpawnError::Bind(msg)) => last = msg,
                Err(SpawnError::Fatal(msg)) => panic!("{msg}"),
            }
            sleep(Duration::from_millis(200));
        }
        panic!(
            "sshd harness: could not re-bind 127.0.0.1:{} after {RESTART_ATTEMPTS} attempts; last failure:\n{last}",
            self.port
        )
    }

    /// sshd's log so far (all runs of this instance; `LogLevel VERBOSE`).
    pub fn log(&self) -> String {
        fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// The `authorized_keys` file (both client public keys).
    pub fn authorized_keys_path(&self) -> PathBuf {
        self.dir.path().join("authorized_keys")
    }

    /// Path of the generated `sshd_config`.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    fn write_config(&self, host_key: &Path, authorized_keys: &Path) {
        let mut allow = vec![self.user.as_str()];
        if self.user != "root" {
            allow.push("root");
        }
        allow.push(PASSWORD_USER);
        let penalties = if has_per_source_penalties() {
            // OpenSSH >= 9.8 would otherwise block 127.0.0.1 after tests of failed logins.
            "PerSourcePenalties no\n"
        } else {
            ""
        };
        let config = format!(
            "# generated by tests/common/sshd.rs\n\
             ListenAddress 127.0.0.1\n\
             Port {port}\n\
             HostKey {host_key}\n\
             PidFile none\n\
             AuthorizedKeysFile {authorized_keys}\n\
             StrictModes no\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication yes\n\
             PermitEmptyPasswords no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             PermitRootLogin yes\n\
             AllowUsers {allow}\n\
             Subsystem sftp internal-sftp\n\
             MaxStartups 100\n\
             MaxSessions 100\n\
             MaxAuthTries 20\n\
             LoginGraceTime 30\n\
             UseDNS no\n\
             PrintMotd no\n\
             PrintLastLog no\n\
             X11Forwarding no\n\
             {penalties}\
             LogLevel VERBOSE\n",
            port = self.port,
            host_key = host_key.display(),
            authorized_keys = authorized_keys.display(),
            allow = allow.join(" "),
        );
        write(&self.config_path, &config, 0o644);

        let host_pub = self.host_public_key();
        let mut fields = host_pub.split_whitespace();
        let (kind, blob) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
        write(&self.known_hosts, &format!("[127.0.0.1]:{} {kind} {blob}\n", self.port), 0o644);
    }

    /// Starts the daemon on `self.port` and waits until it is ready.
    fn spawn(&mut self) -> Result<(), SpawnError> {
        let log_offset = fs::metadata(&self.log_path).map(|m| m.len()).unwrap_or(0);
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .unwrap_or_else(|e| panic!("sshd harness: open {}: {e}", self.stderr_path.display()));
        let child = Command::new(SSHD_PATH)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&self.config_path)
            .arg("-E")
            .arg(&self.log_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| SpawnError::Fatal(format!("sshd harness: cannot run {SSHD_PATH}: {e}\n{INSTALL_HINT}")))?;
        self.child = Some(child);

        let listening = format!("Server listening on 127.0.0.1 port {}.", self.port);
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last_probe = String::from("sshd has not logged that it is listening");
        loop {
            let status = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = status {
                self.child = None;
                let log = self.log_since(log_offset);
                let msg = format!(
                    "sshd harness: {SSHD_PATH} exited ({status}) before it was ready on port {}\n{}",
                    self.port,
                    self.diagnostics(&log)
                );
                let bind_failed = log.contains("Address already in use") || log.contains("Cannot bind any address");
                return Err(if bind_failed { SpawnError::Bind(msg) } else { SpawnError::Fatal(msg) });
            }
            // The log line proves that *our* process owns the port (not some other
            // server that grabbed it); the banner proves it is accepting.
            if self.log_since(log_offset).contains(&listening) {
                match read_banner(self.addr()) {
                    Ok(banner) if banner.starts_with("SSH-2.0-") => return Ok(()),
                    Ok(banner) => last_probe = format!("unexpected banner {banner:?}"),
                    Err(e) => last_probe = format!("probe: {e}"),
                }
            }
            if Instant::now() >= deadline {
                self.stop();
                let log = self.log_since(log_offset);
                return Err(SpawnError::Fatal(format!(
                    "sshd harness: sshd not ready on 127.0.0.1:{} within {READY_TIMEOUT:?} ({last_probe})\n{}",
                    self.port,
                    self.diagnostics(&log)
                )));
            }
            sleep(Duration::from_millis(10));
        }
    }

    fn log_since(&self, offset: u64) -> String {
        let all = fs::read(&self.log_path).unwrap_or_default();
        let start = (offset as usize).min(all.len());
        String::from_utf8_lossy(&all[start..]).into_owned()
    }

    fn diagnostics(&self, log: &str) -> String {
        format!(
            "--- sshd log ({}) ---\n{log}\n--- sshd stderr ---\n{}\n--- sshd_config ---\n{}",
            self.log_path.display(),
            fs::read_to_string(&self.stderr_path).unwrap_or_default(),
            fs::read_to_string(&self.config_path).unwrap_or_default(),
        )
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            // Shown with the failing test's output; the temp dir is about to vanish.
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!("--- sshd on port {} log (last {} lines) ---\n{}", self.port, tail.len(), tail.join("\n"));
        }
    }
}

/// A port that was free on 127.0.0.1 a moment ago (bind `127.0.0.1:0`, read, drop).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("sshd harness: cannot bind 127.0.0.1:0: {e}"))
}

/// Checks for sshd and prepares the machine-wide bits (privsep dir, password user).
fn preflight() {
    if !Path::new(SSHD_PATH).is_file() {
        panic!("sshd harness: {SSHD_PATH} not found. {INSTALL_HINT}");
    }
    // sshd refuses to start without its privilege separation directory; it must be
    // owned by root and not group/world-writable.
    let privsep = Path::new("/run/sshd");
    if !privsep.is_dir() {
        match fs::create_dir_all(privsep) {
            Ok(()) => chmod(privsep, 0o755),
            Err(_) if privsep.is_dir() => {}
            Err(e) => panic!("sshd harness: cannot create {}: {e} (run the tests as root)", privsep.display()),
        }
    }
    static PASSWORD_USER_READY: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(e) = PASSWORD_USER_READY.get_or_init(ensure_password_user) {
        panic!(
            "sshd harness: cannot set up password user {PASSWORD_USER}: {e}\n(the tests must run as root, as CI does)"
        );
    }
}

/// Creates `PASSWORD_USER` if needed and sets its password. Idempotent; tolerates
/// other processes (other test binaries) doing the same at the same time.
fn ensure_password_user() -> Result<(), String> {
    let exists = || {
        Command::new("id")
            .arg("-u")
            .arg(PASSWORD_USER)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    // useradd/chpasswd fail transiently while another process holds the passwd locks.
    let mut last = String::new();
    for _ in 0..50 {
        if exists() {
            break;
        }
        let out = run(Command::new("useradd").args(["-M", "-s", "/bin/sh", PASSWORD_USER]))?;
        // Exit status 9: the user already exists (created concurrently).
        if out.status.success() || out.status.code() == Some(9) {
            break;
        }
        last = describe("useradd", &out);
        sleep(Duration::from_millis(100));
    }
    if !exists() {
        return Err(last);
    }

    // With `UsePAM no`, sshd checks the shadow entry itself: it must hold a real
    // hash (a `!` prefix means locked). chpasswd sets one, which also unlocks.
    let mut set = false;
    for _ in 0..50 {
        let out = run_with_stdin(Command::new("chpasswd"), &format!("{PASSWORD_USER}:{PASSWORD}\n"))?;
        if out.status.success() {
            set = true;
            break;
        }
        last = describe("chpasswd", &out);
        sleep(Duration::from_millis(100));
    }
    if !set {
        return Err(last);
    }

    // Verify: `passwd -S` prints "<user> P …" for a usable password (L = locked, NP = none).
    let out = run(Command::new("passwd").args(["-S", PASSWORD_USER]))?;
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    if status.split_whitespace().nth(1) != Some("P") {
        return Err(format!("password not usable after chpasswd: `passwd -S` says {status:?}"));
    }
    let out = run(Command::new("getent").args(["passwd", PASSWORD_USER]))?;
    let entry = String::from_utf8_lossy(&out.stdout).into_owned();
    let shell = entry.trim_end().rsplit(':').next().unwrap_or("");
    if shell.is_empty() || !Path::new(shell).is_file() {
        return Err(format!("login shell {shell:?} of {PASSWORD_USER} is not usable (getent: {entry:?})"));
    }
    Ok(())
}

fn current_user() -> &'static str {
    static USER: OnceLock<String> = OnceLock::new();
    USER.get_or_init(|| {
        let out = run(Command::new("id").arg("-un")).unwrap_or_else(|e| panic!("sshd harness: {e}"));
        check_output("id -un", &out);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
}

/// OpenSSH 9.8 added `PerSourcePenalties` (on by default); older versions reject the keyword.
fn has_per_source_penalties() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        // `sshd -V` prints e.g. "OpenSSH_9.2, OpenSSL …"; old versions print it in their usage text.
        let Ok(out) = Command::new(SSHD_PATH).arg("-V").stdin(Stdio::null()).output() else {
            return false;
        };
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let Some(rest) = text.split("OpenSSH_").nth(1) else {
            return false;
        };
        let mut nums = rest.split(|c: char| !c.is_ascii_digit()).map(|n| n.parse::<u32>().ok());
        match (nums.next().flatten(), nums.next().flatten()) {
            (Some(major), Some(minor)) => (major, minor) >= (9, 8),
            _ => false,
        }
    })
}

fn keygen(path: &Path, passphrase: &str, comment: &str) -> (String, Child) {
    let what = format!("ssh-keygen -f {}", path.display());
    let child = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", passphrase, "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("sshd harness: cannot run ssh-keygen: {e}\n{INSTALL_HINT}"));
    (what, child)
}

fn fingerprint(pub_key: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(pub_key)
        .output()
        .unwrap_or_else(|e| panic!("sshd harness: cannot run ssh-keygen: {e}\n{INSTALL_HINT}"));
    check_output("ssh-keygen -lf", &out);
    // "256 SHA256:abc… comment (ED25519)"
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .find(|f| f.starts_with("SHA256:"))
        .unwrap_or_else(|| panic!("sshd harness: no SHA256 fingerprint in {text:?}"))
        .to_string()
}

/// Connects and reads the server's identification line.
fn read_banner(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 255 {
        match stream.read(&mut byte)? {
            0 => break,
            _ if byte[0] == b'\n' => break,
            _ => line.push(byte[0]),
        }
    }
    Ok(String::from_utf8_lossy(&line).trim_end().to_string())
}

/// All processes descending from `root` (not `root` itself), from `/proc`.
fn descendants(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid …"; comm may contain spaces and parentheses.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|s| s.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        for &child in children.get(&pid).into_iter().flatten() {
            out.push(child);
            todo.push(child);
        }
    }
    out
}

fn sigkill(pid: u32) {
    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    const SIGKILL: i32 = 9;
    if let Ok(pid) = i32::try_from(pid) {
        if pid > 0 {
            // SAFETY: plain syscall wrapper; a stale pid only yields ESRCH.
            unsafe {
                kill(pid, SIGKILL);
            }
        }
    }
}

fn pub_path(key: &Path) -> PathBuf {
    let mut s = key.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("sshd harness: chmod {mode:o} {}: {e}", path.display()));
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("sshd harness: read {}: {e}", path.display()))
}

fn write(path: &Path, contents: &str, mode: u32) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("sshd harness: write {}: {e}", path.display()));
    chmod(path, mode);
}

fn run(cmd: &mut Command) -> Result<Output, String> {
    cmd.stdin(Stdio::null()).output().map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))
}

fn run_with_stdin(mut cmd: Command, input: &str) -> Result<Output, String> {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(|e| format!("writing to {:?}: {e}", cmd.get_program()))?;
    }
    child.wait_with_output().map_err(|e| format!("waiting for {:?}: {e}", cmd.get_program()))
}

fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn check_output(what: &str, out: &Output) {
    if !out.status.success() {
        panic!("sshd harness: {}", describe(what, out));
    }
}
