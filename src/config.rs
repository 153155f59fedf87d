//! Configuration (SPEC §5): TOML file < `SFTPTOGO_URL` < `SFTP_MIRROR__SECTION__KEY`
//! environment variables, validated into [`Settings`].
//!
//! Raw values are read key by key from the merged tree rather than through one
//! serde struct, so that *every* problem (unknown key, bad value, missing key,
//! conflicting `x`/`x_file`) is reported at once, each naming its key. Nothing
//! downstream re-parses: durations, paths, host-key policy and secrets (read
//! from their `*_file`s) are typed here. Secret values never reach an error.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Environment, File, FileFormat, Value, ValueKind};

/// The default configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/sftp-mirror/config.toml";
/// Environment variable prefix: `SFTP_MIRROR__SFTP__PASSWORD` sets `sftp.password`.
pub const ENV_PREFIX: &str = "SFTP_MIRROR";

/// A secret string: printed as `[redacted]`, never part of an error message.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The value, for the one place that needs it (HMAC key, SSH login).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Validated settings; see `config/sftp-mirror.example.toml` for each key.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[sftp]`
    pub sftp: SftpSettings,
    /// `[mirror]`
    pub mirror: MirrorSettings,
    /// `[webhook]`
    pub webhook: WebhookSettings,
    /// `[admin]`
    pub admin: AdminSettings,
    /// `[journal]`
    pub journal: JournalSettings,
    /// `[reconcile]`
    pub reconcile: ReconcileSettings,
    /// `[log]`
    pub log: LogSettings,
    /// `[hooks]`
    pub hooks: HookSettings,
}

/// `[hooks]` (SPEC §9): commands run after the mirror changed.
#[derive(Debug, Clone)]
pub struct HookSettings {
    /// argv run after a downloaded file is durably in place.
    pub on_file: Option<Vec<String>>,
    /// argv run after an entry was removed.
    pub on_delete: Option<Vec<String>>,
    /// Runs at once at most.
    pub concurrency: usize,
    /// A run past this is killed (its process group too).
    pub timeout: Duration,
    /// Runs tried before one is `failed`.
    pub max_attempts: u32,
}

impl HookSettings {
    /// Whether any hook is configured.
    pub fn any(&self) -> bool {
        self.on_file.is_some() || self.on_delete.is_some()
    }
}

/// `[sftp]`: where and how to connect.
#[derive(Debug, Clone)]
pub struct SftpSettings {
    /// Server name or address.
    pub host: String,
    /// Port (22).
    pub port: u16,
    /// Login.
    pub username: String,
    /// Password or key.
    pub auth: SftpAuth,
    /// How the server's host key is checked.
    pub host_keys: HostKeyPolicy,
    /// Remote directory event paths are relative to; absolute, no trailing `/` (except "/").
    pub remote_root: String,
    /// SSH connections kept open (1–16).
    pub connections: usize,
    /// Connect/handshake/login deadline and per-request SFTP timeout.
    pub timeout: Duration,
    /// SSH keepalive interval.
    pub keepalive: Duration,
}

/// How we log in.
#[derive(Debug, Clone)]
pub enum SftpAuth {
    /// Password authentication.
    Password(Secret),
    /// Public-key authentication with an OpenSSH private key file.
    PrivateKey {
        /// The key file.
        path: PathBuf,
        /// Its passphrase, if encrypted.
        passphrase: Option<Secret>,
    },
}

/// How the server's host key is trusted.
#[derive(Debug, Clone)]
pub enum HostKeyPolicy {
    /// An OpenSSH `known_hosts` file.
    KnownHosts(PathBuf),
    /// Pinned SHA-256 fingerprints (`SHA256:…`).
    Fingerprints(Vec<String>),
}

/// `[mirror]`: the local folder and its rules.
#[derive(Debug, Clone)]
pub struct MirrorSettings {
    /// The mirror folder (absolute).
    pub path: PathBuf,
    /// Propagate deletions.
    pub delete: bool,
    /// Reconcile refuses to delete more than this share of local entries.
    pub max_delete_ratio: f64,
    /// Globs selecting files (empty = all).
    pub include: Vec<String>,
    /// Globs excluding files and directories.
    pub exclude: Vec<String>,
    /// Transfers at once.
    pub concurrency: usize,
    /// Bytes per second for all downloads together; `None` = unlimited.
    pub bwlimit: Option<u64>,
    /// Keep deleted and overwritten entries this long; `None` = remove at once.
    pub trash: Option<Duration>,
}

/// `[webhook]`: the public endpoint.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Listen address.
    pub listen: SocketAddr,
    /// URL path.
    pub path: String,
    /// HMAC secrets; any may match (rotation).
    pub secrets: Vec<Secret>,
    /// Expected `Authorization` header value.
    pub authorization: Option<Secret>,
    /// Accept requests with no verification configured.
    pub allow_unsigned: bool,
    /// Largest body.
    pub max_body: u64,
    /// PEM certificate chain for TLS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    pub tls_key: Option<PathBuf>,
    /// Deadline for a client's TLS handshake and request headers (slowloris).
    pub header_timeout: Duration,
}

/// `[admin]`
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// Health/metrics listener; `None` when disabled.
    pub listen: Option<SocketAddr>,
    /// `/healthz` reports the SFTP server down once unreachable this long.
    pub sftp_down_after: Duration,
}

/// `[journal]`
#[derive(Debug, Clone)]
pub struct JournalSettings {
    /// SQLite file.
    pub path: PathBuf,
    /// How long finished rows are kept.
    pub keep_done: Duration,
    /// Applies tried before an event is marked failed.
    pub max_attempts: u32,
}

/// `[reconcile]`
#[derive(Debug, Clone)]
pub struct ReconcileSettings {
    /// Run a pass when the daemon starts.
    pub on_start: bool,
    /// Period of the daemon's passes; `None` = off.
    pub interval: Option<Duration>,
}

/// `[log]`
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// Output format.
    pub format: LogFormat,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line, for log shippers.
    Json,
    /// For systemd's journal: each line starts with its syslog priority
    /// (`<4>` …, sd-daemon's convention) and carries no timestamp of its own.
    Journald,
}

/// Every problem found, one per line, each naming its key.
#[derive(Debug, thiserror::Error)]
#[error("{}", problems.join("\n"))]
pub struct ConfigError {
    /// The problems.
    pub problems: Vec<String>,
}

/// The keys each section accepts.
const KEYS: &[(&str, &[&str])] = &[
    (
        "sftp",
        &[
            "host",
            "port",
            "username",
            "password",
            "password_file",
            "private_key",
            "private_key_passphrase",
            "private_key_passphrase_file",
            "known_hosts",
            "host_key_fingerprint",
            "remote_root",
            "connections",
            "timeout",
            "keepalive",
        ],
    ),
    ("mirror", &["path", "delete", "max_delete_ratio", "include", "exclude", "concurrency", "bwlimit", "trash"]),
    (
        "webhook",
        &[
            "listen",
            "path",
            "secret",
            "secret_file",
            "secrets",
            "secrets_file",
            "authorization",
            "authorization_file",
            "allow_unsigned",
            "max_body",
            "tls_cert",
            "tls_key",
            "header_timeout",
        ],
    ),
    ("admin", &["listen", "sftp_down_after"]),
    ("journal", &["path", "keep_done", "max_attempts"]),
    ("reconcile", &["on_start", "interval"]),
    ("log", &["format"]),
    ("hooks", &["on_file", "on_delete", "concurrency", "timeout", "max_attempts"]),
];

/// Reads typed values out of the merged tree, collecting problems.
struct Reader {
    tree: HashMap<String, HashMap<String, Value>>,
    problems: Vec<String>,
    /// `JOURNAL_STREAM` is set: stderr goes to systemd's journal.
    under_journal: bool,
}

fn kind_name(v: &Value) -> &'static str {
    match v.kind {
        ValueKind::Nil => "nothing",
        ValueKind::Boolean(_) => "a boolean",
        ValueKind::I64(_) | ValueKind::I128(_) | ValueKind::U64(_) | ValueKind::U128(_) => "a number",
        ValueKind::Float(_) => "a number",
        ValueKind::String(_) => "a string",
        ValueKind::Table(_) => "a table",
        ValueKind::Array(_) => "a list",
    }
}

impl Reader {
    fn raw(&self, s: &str, k: &str) -> Option<&Value> {
        self.tree.get(s).and_then(|t| t.get(k)).filter(|v| !matches!(v.kind, ValueKind::Nil))
    }

    fn problem(&mut self, s: &str, k: &str, msg: impl std::fmt::Display) {
        self.problems.push(format!("{s}.{k}: {msg}"));
    }

    /// A scalar as a string (numbers and booleans too: env values are strings anyway).
    fn string(&mut self, s: &str, k: &str) -> Option<String> {
        let v = self.raw(s, k)?.clone();
        match v.kind {
            ValueKind::Table(_) | ValueKind::Array(_) => {
                let what = kind_name(&v);
                self.problem(s, k, format!("expected a single value, found {what}"));
                None
            }
            _ => v.into_string().ok(),
        }
    }

    /// A secret string; the error never shows the value.
    fn secret_string(&mut self, s: &str, k: &str) -> Option<Secret> {
        let v = self.raw(s, k)?.clone();
        match v.kind {
            ValueKind::String(x) => Some(Secret::new(x)),
            _ => {
                let what = kind_name(&v);
                self.problem(s, k, format!("expected a string, found {what}"));
                None
            }
        }
    }

    fn parsed<T>(&mut self, s: &str, k: &str, what: &str, parse: impl FnOnce(&str) -> Result<T, String>) -> Option<T> {
        let text = self.string(s, k)?;
        match parse(text.trim()) {
            Ok(v) => Some(v),
            Err(e) => {
                self.problem(s, k, format!("invalid value {text:?}: expected {what}{e}"));
                None
            }
        }
    }

    fn bool(&mut self, s: &str, k: &str, default: bool) -> bool {
        self.parsed(s, k, "true or false", |t| match t.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err(String::new()),
        })
        .unwrap_or(default)
    }

    fn number<T>(&mut self, s: &str, k: &str, default: T, range: (T, T)) -> T
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        let what = format!("a number from {} to {}", range.0, range.1);
        self.parsed(s, k, &what, |t| match t.parse::<T>() {
            Ok(n) if n >= range.0 && n <= range.1 => Ok(n),
            _ => Err(String::new()),
        })
        .unwrap_or(default)
    }

    fn duration(&mut self, s: &str, k: &str, default: Duration) -> Duration {
        self.parsed(s, k, "a duration like \"30s\", \"5m\", \"1h\", \"7d\"", |t| {
            humantime::parse_duration(t).map_err(|e| format!(" ({e})"))
        })
        .unwrap_or(default)
    }

    fn path(&mut self, s: &str, k: &str) -> Option<PathBuf> {
        let p = self.string(s, k)?;
        if p.is_empty() {
            self.problem(s, k, "must not be empty");
            return None;
        }
        Some(PathBuf::from(p))
    }

    fn addr(&mut self, s: &str, k: &str, default: &str) -> Option<SocketAddr> {
        let text = self.string(s, k).unwrap_or_else(|| default.to_owned());
        if let Ok(a) = text.trim().parse() {
            return Some(a);
        }
        // A host name (`localhost:8080`): its first address, loopback first.
        let resolved: Vec<SocketAddr> =
            std::net::ToSocketAddrs::to_socket_addrs(text.trim()).map(|a| a.collect()).unwrap_or_default();
        match resolved.iter().find(|a| a.ip().is_loopback()).or(resolved.first()) {
            Some(a) => Some(*a),
            None => {
                self.problem(s, k, format!("invalid value {text:?}: expected an address like \"127.0.0.1:8080\""));
                None
            }
        }
    }

    /// A list of strings: a TOML array, or a comma-separated string (environment).
    fn list(&mut self, s: &str, k: &str) -> Option<Vec<String>> {
        let v = self.raw(s, k)?.clone();
        match v.kind {
            ValueKind::Array(items) => {
                let mut out = Vec::new();
                for item in items {
                    match item.kind {
                        ValueKind::String(x) => out.push(x),
                        _ => {
                            self.problem(s, k, "expected a list of strings");
                            return None;
                        }
                    }
                }
                Some(out)
            }
            ValueKind::String(x) => {
                Some(x.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned).collect())
            }
            _ => {
                self.problem(s, k, "expected a list of strings");
                None
            }
        }
    }

    /// A secret given inline (`k`) or in a file (`k_file`), never both.
    fn secret(&mut self, s: &str, k: &str) -> Option<Secret> {
        let file_key = format!("{k}_file");
        let inline = self.secret_string(s, k);
        let file = self.path(s, &file_key);
        match (inline, file) {
            (Some(_), Some(_)) => {
                self.problem(s, k, format!("give either {s}.{k} or {s}.{file_key}, not both"));
                None
            }
            (Some(v), None) => Some(v),
            (None, Some(p)) => self.read_secret_file(s, &file_key, &p).map(Secret::new),
            (None, None) => None,
        }
    }

    fn read_secret_file(&mut self, s: &str, k: &str, p: &Path) -> Option<String> {
        match std::fs::read_to_string(p) {
            Ok(text) => {
                let v = text.trim_end_matches(['\r', '\n']).to_owned();
                if v.is_empty() {
                    self.problem(s, k, format!("{} is empty", p.display()));
                    return None;
                }
                Some(v)
            }
            Err(e) => {
                self.problem(s, k, format!("cannot read {}: {e}", p.display()));
                None
            }
        }
    }
}

/// Validates a `SHA256:` fingerprint as `ssh-keygen -l` prints it.
fn valid_fingerprint(f: &str) -> bool {
    use base64::Engine;
    let Some(b64) = f.strip_prefix("SHA256:") else { return false };
    base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64.trim_end_matches('=')).is_ok_and(|b| b.len() == 32)
}

/// Parses `SFTPTOGO_URL` into `sftp.*` values (percent-decoded). The error
/// never repeats the URL (it holds the password).
fn parse_sftptogo_url(text: &str) -> Result<Vec<(&'static str, String)>, String> {
    let url = url::Url::parse(text.trim()).map_err(|e| format!("not a valid URL ({e})"))?;
    if url.scheme() != "sftp" {
        return Err(format!("expected an sftp:// URL, found scheme {:?}", url.scheme()));
    }
    let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8().map(|c| c.into_owned());
    let mut out = Vec::new();
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or("the URL has no host")?;
    out.push(("host", host.trim_start_matches('[').trim_end_matches(']').to_owned()));
    if let Some(p) = url.port() {
        out.push(("port", p.to_string()));
    }
    if !url.username().is_empty() {
        out.push(("username", decode(url.username()).map_err(|_| "the user name is not valid UTF-8")?));
    }
    if let Some(pw) = url.password() {
        out.push(("password", decode(pw).map_err(|_| "the password is not valid UTF-8")?));
    }
    let path = decode(url.path()).map_err(|_| "the path is not valid UTF-8")?;
    if !path.is_empty() && path != "/" {
        out.push(("remote_root", path));
    }
    Ok(out)
}

/// Normalises a remote root: absolute, no trailing `/`.
fn normalise_root(r: &str) -> Result<String, &'static str> {
    let r = r.trim();
    if r.contains('\0') {
        return Err("contains a NUL byte");
    }
    if r.split('/').any(|c| c == "..") {
        return Err("must not contain '..'");
    }
    let abs = if r.starts_with('/') { r.to_owned() } else { format!("/{r}") };
    let trimmed = abs.trim_end_matches('/');
    Ok(if trimmed.is_empty() { "/".into() } else { trimmed.to_owned() })
}

impl Settings {
    /// Loads `file` (required when given) and the process environment.
    ///
    /// # Errors
    /// [`ConfigError`] with every problem found.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_from(file, &std::env::vars().collect())
    }

    /// Like [`Settings::load`] with an explicit environment (tests).
    ///
    /// # Errors
    /// As [`Settings::load`].
    pub fn load_from(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Settings, ConfigError> {
        let mut r = reader(file, env)?;
        let settings = validate(&mut r);
        if r.problems.is_empty() {
            Ok(settings.expect("no problems means complete settings"))
        } else {
            Err(ConfigError { problems: r.problems })
        }
    }

    /// Only the webhook secrets (for `sign`), whatever else the file holds.
    ///
    /// # Errors
    /// When the file cannot be read or the secret keys are wrong.
    pub fn load_webhook_secrets(
        file: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<Vec<Secret>, ConfigError> {
        let mut r = reader(file, env)?;
        let secrets = webhook_secrets(&mut r);
        if r.problems.is_empty() {
            Ok(secrets)
        } else {
            Err(ConfigError { problems: r.problems })
        }
    }
}

impl Settings {
    /// Only `journal.path` (for `events` and `retry`, which need nothing else:
    /// the packaged config without its secrets filled in still works for them).
    ///
    /// # Errors
    /// When the file cannot be read or `journal.path` is wrong.
    pub fn load_journal_path(file: Option<&Path>, env: &HashMap<String, String>) -> Result<PathBuf, ConfigError> {
        let mut r = reader(file, env)?;
        let path = r.path("journal", "path").unwrap_or_else(|| DEFAULT_JOURNAL.into());
        let problems: Vec<String> = r.problems.into_iter().filter(|p| p.starts_with("journal.")).collect();
        if problems.is_empty() {
            Ok(path)
        } else {
            Err(ConfigError { problems })
        }
    }
}

/// `journal.path` when none is configured.
const DEFAULT_JOURNAL: &str = "/var/lib/sftp-mirror/journal.db";

/// The known key closest to a mistyped one (at most two edits away).
fn closest<'k>(typo: &str, keys: &[&'k str]) -> Option<&'k str> {
    fn distance(a: &str, b: &str) -> usize {
        let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.iter().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let here = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(here + 1);
                prev = here;
            }
        }
        row[b.len()]
    }
    keys.iter().map(|k| (distance(typo, k), *k)).filter(|(d, _)| *d <= 2).min().map(|(_, k)| k)
}

fn reader(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Reader, ConfigError> {
    let one = |p: String| ConfigError { problems: vec![p] };
    let mut b = config::Config::builder();
    if let Some(f) = file {
        if !f.exists() {
            return Err(one(format!("config file {}: not found", f.display())));
        }
        b = b.add_source(File::from(f).format(FileFormat::Toml).required(true));
    }
    let env_map: config::Map<String, String> =
        env.iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).map(|(k, v)| (k.clone(), v.clone())).collect();
    b = b.add_source(Environment::with_prefix(ENV_PREFIX).prefix_separator("__").separator("__").source(Some(env_map)));
    let cfg = b.build().map_err(|e| {
        let place = file.map(|f| format!("config file {}: ", f.display())).unwrap_or_default();
        one(format!("{place}{e}"))
    })?;
    let top: HashMap<String, Value> = cfg.try_deserialize().map_err(|e| one(format!("configuration: {e}")))?;
    let mut r =
        Reader { tree: HashMap::new(), problems: Vec::new(), under_journal: env.contains_key("JOURNAL_STREAM") };
    for (section, v) in top {
        let Some((_, keys)) = KEYS.iter().find(|(s, _)| *s == section) else {
            r.problems.push(format!(
                "{section}: unknown section (expected one of sftp, mirror, webhook, admin, journal, reconcile, log)"
            ));
            continue;
        };
        match v.kind {
            ValueKind::Table(t) => {
                let mut table = HashMap::new();
                for (k, v) in t {
                    if keys.contains(&k.as_str()) {
                        table.insert(k, v);
                    } else {
                        let var = format!("{ENV_PREFIX}__{}__{}", section.to_ascii_uppercase(), k.to_ascii_uppercase());
                        let from = if env.contains_key(&var) {
                            format!(" (from the environment variable {var})")
                        } else {
                            String::new()
                        };
                        let hint =
                            closest(&k, keys).map(|c| format!("; did you mean {section}.{c}?")).unwrap_or_default();
                        r.problems.push(format!("{section}.{k}: unknown key{from}{hint}"));
                    }
                }
                r.tree.insert(section, table);
            }
            _ => r.problems.push(format!("{section}: expected a table")),
        }
    }
    // SFTPTOGO_URL sits between the file and the explicit SFTP_MIRROR__SFTP__* variables.
    if let Some(url) = env.get("SFTPTOGO_URL").filter(|u| !u.trim().is_empty()) {
        match parse_sftptogo_url(url) {
            Ok(values) => {
                let sftp = r.tree.entry("sftp".into()).or_default();
                let explicit = |k: &str| env.contains_key(&format!("{ENV_PREFIX}__SFTP__{}", k.to_ascii_uppercase()));
                // An explicit credential variable wins over the URL's password.
                let explicit_login = ["password", "password_file", "private_key"].iter().any(|k| explicit(k));
                for (k, v) in values {
                    if k == "password" {
                        // The URL's login replaces the file's (explicit variables stay).
                        for other in ["password_file", "private_key", "private_key_passphrase"] {
                            if !explicit(other) {
                                sftp.remove(other);
                            }
                        }
                    }
                    let overridden = explicit(k) || (k == "password" && explicit_login);
                    if !overridden {
                        sftp.insert(k.into(), Value::new(Some(&"SFTPTOGO_URL".to_string()), v));
                    }
                }
            }
            Err(e) => r.problems.push(format!("SFTPTOGO_URL: {e}")),
        }
    }
    Ok(r)
}

fn webhook_secrets(r: &mut Reader) -> Vec<Secret> {
    let mut secrets: Vec<Secret> = Vec::new();
    if let Some(s) = r.secret("webhook", "secret") {
        secrets.push(s);
    }
    if let Some(list) = r.list("webhook", "secrets") {
        secrets.extend(list.into_iter().map(Secret::new));
    }
    if let Some(p) = r.path("webhook", "secrets_file") {
        if let Some(text) = r.read_secret_file("webhook", "secrets_file", &p) {
            secrets.extend(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(Secret::new));
        }
    }
    if secrets.iter().any(|s| s.expose().is_empty()) {
        r.problems.push("webhook.secrets: a secret must not be empty".into());
    }
    let mut unique: Vec<Secret> = Vec::new();
    for s in secrets {
        if !unique.contains(&s) {
            unique.push(s);
        }
    }
    unique
}

fn validate(r: &mut Reader) -> Option<Settings> {
    // [sftp]
    // After a malformed SFTPTOGO_URL, what it would have filled is not missing too.
    let url_failed = r.problems.iter().any(|p| p.starts_with("SFTPTOGO_URL"));
    let host = r.string("sftp", "host").filter(|h| !h.trim().is_empty());
    if host.is_none() && !url_failed {
        r.problems.push("sftp.host: missing (or set SFTPTOGO_URL)".into());
    }
    let port = r.number("sftp", "port", 22u16, (1, u16::MAX));
    let username = r.string("sftp", "username").filter(|u| !u.is_empty());
    if username.is_none() && !url_failed {
        r.problems.push("sftp.username: missing (or set SFTPTOGO_URL)".into());
    }
    let password = r.secret("sftp", "password");
    let key = r.path("sftp", "private_key");
    let passphrase = r.secret("sftp", "private_key_passphrase");
    let auth = match (password, key) {
        (Some(_), Some(_)) => {
            r.problems.push("sftp: give either password(_file) or private_key, not both".into());
            None
        }
        (Some(p), None) => Some(SftpAuth::Password(p)),
        (None, Some(path)) => {
            if !path.is_file() {
                r.problems.push(format!("sftp.private_key: {} is not a readable file", path.display()));
            }
            Some(SftpAuth::PrivateKey { path, passphrase })
        }
        (None, None) => {
            r.problems.push("sftp: no credentials: set sftp.password(_file) or sftp.private_key".into());
            None
        }
    };
    let known_hosts = r.path("sftp", "known_hosts");
    let fingerprints = r.list("sftp", "host_key_fingerprint");
    let host_keys = match (known_hosts, fingerprints) {
        (Some(_), Some(_)) => {
            r.problems.push("sftp: give either known_hosts or host_key_fingerprint, not both".into());
            None
        }
        (Some(p), None) => {
            // A file not there yet knows no key: connecting shows the key and
            // how to record it (exit 4), as for any unknown key.
            if p.exists() && !p.is_file() {
                r.problems.push(format!("sftp.known_hosts: {} is not a file", p.display()));
            }
            Some(HostKeyPolicy::KnownHosts(p))
        }
        (None, Some(f)) => {
            for bad in f.iter().filter(|f| !valid_fingerprint(f)) {
                r.problems.push(format!(
                    "sftp.host_key_fingerprint: {bad:?} is not a SHA256 fingerprint like \"SHA256:…\" (as `ssh-keygen -lf` prints)"
                ));
            }
            if f.is_empty() {
                r.problems.push("sftp.host_key_fingerprint: empty list".into());
            }
            // `SHA256:…=` (base64 padding) means the same key as ssh-keygen's unpadded form.
            Some(HostKeyPolicy::Fingerprints(f.into_iter().map(|p| p.trim_end_matches('=').to_owned()).collect()))
        }
        (None, None) => {
            r.problems.push(
                "sftp: the server's host key is not pinned: set sftp.known_hosts (and run `sftp-mirror check --trust-host-key` once) \
                 or sftp.host_key_fingerprint = \"SHA256:…\""
                    .into(),
            );
            None
        }
    };
    let remote_root = match r.string("sftp", "remote_root").map(|s| normalise_root(&s)) {
        None => "/".to_owned(),
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            r.problem("sftp", "remote_root", e);
            "/".into()
        }
    };
    let connections = r.number("sftp", "connections", 2usize, (1, 16));
    let timeout = r.duration("sftp", "timeout", Duration::from_secs(30));
    let keepalive = r.duration("sftp", "keepalive", Duration::from_secs(15));
    if timeout.is_zero() {
        r.problem("sftp", "timeout", "must be more than 0s");
    }

    // [mirror]
    let mirror_path = r.path("mirror", "path");
    match &mirror_path {
        None => r.problems.push("mirror.path: missing".into()),
        Some(p) if !p.is_absolute() => r.problem("mirror", "path", format!("{} must be an absolute path", p.display())),
        _ => {}
    }
    let delete = r.bool("mirror", "delete", true);
    let max_delete_ratio = r.number("mirror", "max_delete_ratio", 0.5f64, (0.0, 1.0));
    let include = r.list("mirror", "include").unwrap_or_default();
    let exclude = r.list("mirror", "exclude").unwrap_or_else(|| vec!["*.filepart".into()]);
    for (key, pats) in [("include", &include), ("exclude", &exclude)] {
        for p in pats.iter() {
            if let Err(e) = globset::Glob::new(p) {
                r.problems.push(format!("mirror.{key}: bad pattern {p:?}: {}", e.kind()));
            }
        }
    }
    let concurrency = r.number("mirror", "concurrency", 8usize, (1, 256));
    let bwlimit = match r.string("mirror", "bwlimit").map(|t| parse_rate(&t)) {
        None => None,
        Some(Ok(rate)) => rate,
        Some(Err(e)) => {
            r.problem("mirror", "bwlimit", e);
            None
        }
    };
    let trash = Some(r.duration("mirror", "trash", Duration::ZERO)).filter(|d| !d.is_zero());

    // [webhook]
    let listen = r.addr("webhook", "listen", "127.0.0.1:8080");
    let path = r.string("webhook", "path").unwrap_or_else(|| "/webhook".into());
    if !path.starts_with('/') {
        r.problem("webhook", "path", format!("{path:?} must start with '/'"));
    }
    let before = r.problems.len();
    let secrets = webhook_secrets(r);
    let authorization = r.secret("webhook", "authorization");
    let allow_unsigned = r.bool("webhook", "allow_unsigned", false);
    // A secret that could not be read was reported already: no second line.
    let unreadable = r.problems[before..].iter().any(|p| p.starts_with("webhook."));
    if secrets.is_empty() && authorization.is_none() && !allow_unsigned && !unreadable {
        r.problems.push(
            "webhook: no verification configured: set webhook.secret(_file) and/or webhook.authorization(_file), \
             or webhook.allow_unsigned = true"
                .into(),
        );
    }
    let max_body = r.number("webhook", "max_body", 1u64 << 20, (256, 64 << 20));
    let tls_cert = r.path("webhook", "tls_cert");
    let tls_key = r.path("webhook", "tls_key");
    if tls_cert.is_some() != tls_key.is_some() {
        r.problems.push("webhook: set both tls_cert and tls_key, or neither".into());
    }
    let header_timeout = r.duration("webhook", "header_timeout", Duration::from_secs(10));
    if header_timeout.is_zero() {
        r.problem("webhook", "header_timeout", "must be more than 0s");
    }

    // [admin]
    let admin_listen = match r.string("admin", "listen") {
        Some(s) if s.trim().is_empty() || s.trim().eq_ignore_ascii_case("off") => None,
        _ => r.addr("admin", "listen", "127.0.0.1:9797"),
    };
    let sftp_down_after = r.duration("admin", "sftp_down_after", Duration::from_secs(60));

    // [journal]
    let journal_path = r.path("journal", "path").unwrap_or_else(|| DEFAULT_JOURNAL.into());
    let keep_done = r.duration("journal", "keep_done", Duration::from_secs(7 * 86400));
    let max_attempts = r.number("journal", "max_attempts", crate::journal::MAX_ATTEMPTS, (1, 1000));

    // [reconcile]
    let on_start = r.bool("reconcile", "on_start", true);
    let interval = r.duration("reconcile", "interval", Duration::from_secs(3600));

    // [log]
    let format = match r.string("log", "format").as_deref().map(str::trim) {
        None if r.under_journal => LogFormat::Journald,
        None | Some("human") => LogFormat::Human,
        Some("json") => LogFormat::Json,
        Some("journald") => LogFormat::Journald,
        Some(other) => {
            r.problem(
                "log",
                "format",
                format!("invalid value {other:?}: expected \"human\", \"json\" or \"journald\""),
            );
            LogFormat::Human
        }
    };

    // [hooks]
    let mut argv = |key: &str| {
        let argv = r.list("hooks", key)?;
        match argv.first().map(String::as_str) {
            None | Some("") => {
                r.problem("hooks", key, "empty: give the command as a list, e.g. [\"/usr/local/bin/process-upload\"]");
                None
            }
            // A path is checked now, a bare name is looked up in PATH when it runs.
            Some(cmd) if cmd.contains('/') && !is_executable(Path::new(cmd)) => {
                r.problem("hooks", key, format!("{cmd} is not an executable file"));
                None
            }
            Some(_) => Some(argv),
        }
    };
    let on_file = argv("on_file");
    let on_delete = argv("on_delete");
    let hooks = HookSettings {
        on_file,
        on_delete,
        concurrency: r.number("hooks", "concurrency", 4usize, (1, 64)),
        timeout: r.duration("hooks", "timeout", Duration::from_secs(300)),
        max_attempts: r.number("hooks", "max_attempts", 5u32, (1, 100)),
    };
    if hooks.timeout.is_zero() {
        r.problem("hooks", "timeout", "must be more than 0s");
    }

    Some(Settings {
        sftp: SftpSettings {
            host: host?,
            port,
            username: username?,
            auth: auth?,
            host_keys: host_keys?,
            remote_root,
            connections,
            timeout,
            keepalive,
        },
        mirror: MirrorSettings {
            path: mirror_path?,
            delete,
            max_delete_ratio,
            include,
            exclude,
            concurrency,
            bwlimit,
            trash,
        },
        webhook: WebhookSettings {
            listen: listen?,
            path,
            secrets,
            authorization,
            allow_unsigned,
            max_body,
            tls_cert,
            tls_key,
            header_timeout,
        },
        admin: AdminSettings { listen: admin_listen, sftp_down_after },
        journal: JournalSettings { path: journal_path, keep_done, max_attempts },
        reconcile: ReconcileSettings { on_start, interval: (!interval.is_zero()).then_some(interval) },
        log: LogSettings { format },
        hooks,
    })
}

/// Parses a `mirror.bwlimit` value: bytes per second with an optional unit
/// (`K`, `M`, `G` and `KiB`, `MiB`, `GiB` are powers of 1024 as in rclone's
/// `--bwlimit`; `KB`, `MB`, `GB` powers of 1000), an optional `/s`; `0` or
/// `off` is no limit.
///
/// # Errors
/// A message for the config error line.
pub fn parse_rate(text: &str) -> Result<Option<u64>, String> {
    let t = text.trim();
    let t = t.strip_suffix("/s").unwrap_or(t).trim();
    if t.is_empty() || t.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim());
    let value: f64 = number.parse().map_err(|_| format!("{text:?} is not a rate like \"20MiB\" or \"500K\""))?;
    let scale: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use B, KiB, MiB, GiB, KB, MB or GB)")),
    };
    let bytes = value * scale;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("{text:?} is too large"));
    }
    if bytes == 0.0 {
        return Ok(None);
    }
    if bytes < 1024.0 {
        return Err(format!("{text:?} is below 1 KiB/s: too slow to make progress (0 turns the limit off)"));
    }
    Ok(Some(bytes as u64))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("known_hosts"), "[h]:22 ssh-ed25519 AAAA\n").unwrap();
            std::fs::write(dir.path().join("pw"), "s3cr3t-pw\n").unwrap();
            Fixture { dir }
        }

        fn file(&self, body: &str) -> PathBuf {
            let p = self.dir.path().join("c.toml");
            let kh = self.dir.path().join("known_hosts");
            let text =
                body.replace("KH", &kh.display().to_string()).replace("DIR", &self.dir.path().display().to_string());
            std::fs::write(&p, text).unwrap();
            p
        }

        fn minimal(&self) -> PathBuf {
            self.file(
                "[sftp]\nhost = \"h\"\nusername = \"u\"\npassword_file = \"DIR/pw\"\nknown_hosts = \"KH\"\n\
                 [mirror]\npath = \"/srv/m\"\n[webhook]\nsecret = \"whs\"\n",
            )
        }
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn problems(r: Result<Settings, ConfigError>) -> Vec<String> {
        r.expect_err("should fail").problems
    }

    #[test]
    fn defaults_and_secret_files() {
        let f = Fixture::new();
        let s = Settings::load_from(Some(&f.minimal()), &env(&[])).unwrap();
        assert_eq!(s.sftp.port, 22);
        assert_eq!(s.sftp.remote_root, "/");
        assert!(matches!(&s.sftp.auth, SftpAuth::Password(p) if p.expose() == "s3cr3t-pw"));
        assert_eq!(s.mirror.exclude, vec!["*.filepart"]);
        assert_eq!((s.mirror.concurrency, s.mirror.delete, s.mirror.max_delete_ratio), (8, true, 0.5));
        assert_eq!(s.webhook.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.admin.listen.unwrap().to_string(), "127.0.0.1:9797");
        assert_eq!(s.reconcile.interval, Some(Duration::from_secs(3600)));
        assert_eq!(s.journal.keep_done, Duration::from_secs(7 * 86400));
        let debug = format!("{s:?}");
        assert!(!debug.contains("s3cr3t-pw") && !debug.contains("whs"), "{debug}");
    }

    #[test]
    fn environment_beats_file_and_url_fills_sftp() {
        let f = Fixture::new();
        let e = env(&[
            ("SFTPTOGO_URL", "sftp://us%40er:p%40ss%3Aw%2Frd@example.sftptogo.com:2222/in%20box/"),
            ("SFTP_MIRROR__MIRROR__CONCURRENCY", "3"),
            ("SFTP_MIRROR__MIRROR__EXCLUDE", "*.tmp, *.part"),
            ("SFTP_MIRROR__RECONCILE__INTERVAL", "0s"),
            ("SFTP_MIRROR__ADMIN__LISTEN", "off"),
            ("SFTP_MIRROR__SFTP__USERNAME", "explicit"),
        ]);
        let s = Settings::load_from(Some(&f.minimal()), &e).unwrap();
        assert_eq!((s.sftp.host.as_str(), s.sftp.port), ("example.sftptogo.com", 2222));
        assert_eq!(s.sftp.username, "explicit", "an explicit variable beats the URL");
        assert!(matches!(&s.sftp.auth, SftpAuth::Password(p) if p.expose() == "p@ss:w/rd"));
        assert_eq!(s.sftp.remote_root, "/in box");
        assert_eq!(s.mirror.concurrency, 3);
        assert_eq!(s.mirror.exclude, vec!["*.tmp", "*.part"]);
        assert_eq!(s.reconcile.interval, None);
        assert_eq!(s.admin.listen, None);
        let e = env(&[("SFTPTOGO_URL", "sftp://u:pw@h")]);
        let s = Settings::load_from(Some(&f.minimal()), &e).unwrap();
        assert_eq!(s.sftp.username, "u");
        // An explicit key variable wins over the URL's password (it used to be removed).
        let key = f.dir.path().join("id");
        std::fs::write(&key, "key").unwrap();
        let e = env(&[("SFTPTOGO_URL", "sftp://u:pw@h"), ("SFTP_MIRROR__SFTP__PRIVATE_KEY", key.to_str().unwrap())]);
        let s = Settings::load_from(Some(&f.minimal()), &e).unwrap();
        assert!(matches!(&s.sftp.auth, SftpAuth::PrivateKey { path, .. } if *path == key), "{:?}", s.sftp.auth);
    }

    #[test]
    fn mistakes_get_one_line_each_that_names_the_fix() {
        let f = Fixture::new();
        let p = f.file(
            "[sftp]\nhost = \"h\"\nusername = \"u\"\npassword = \"pw\"\nknown_host = \"KH\"\n\
             [mirror]\npath = \"/m\"\n[webhook]\nsecret_file = \"DIR/nope\"\n",
        );
        let ps = problems(Settings::load_from(Some(&p), &env(&[("SFTP_MIRROR__SFTP__PORTT", "2222")])));
        assert!(
            ps.iter().any(|p| p.contains("sftp.known_host: unknown key; did you mean sftp.known_hosts?")),
            "{ps:?}"
        );
        assert!(
            ps.iter().any(|p| p.contains("sftp.portt: unknown key (from the environment variable SFTP_MIRROR__SFTP__PORTT)")),
            "{ps:?}"
        );
        assert!(ps.iter().any(|p| p.contains("cannot read") && p.contains("No such file")), "{ps:?}");
        assert!(!ps.iter().any(|p| p.contains("no verification configured")), "no follow-on line: {ps:?}");
        // A malformed SFTPTOGO_URL is one problem, not three.
        let ps = problems(Settings::load_from(
            Some(&f.file("[mirror]\npath = \"/m\"\n")),
            &env(&[("SFTPTOGO_URL", "nonsense")]),
        ));
        assert!(ps.iter().any(|p| p.starts_with("SFTPTOGO_URL")), "{ps:?}");
        assert!(!ps.iter().any(|p| p.starts_with("sftp.host") || p.starts_with("sftp.username")), "{ps:?}");
    }

    #[test]
    fn rates_as_rclone_writes_them() {
        assert_eq!(parse_rate("20MiB"), Ok(Some(20 << 20)));
        assert_eq!(parse_rate("20M"), Ok(Some(20 << 20)));
        assert_eq!(parse_rate("1.5 MiB/s"), Ok(Some(3 << 19)));
        assert_eq!(parse_rate("500KB"), Ok(Some(500_000)));
        assert_eq!(parse_rate("1048576"), Ok(Some(1 << 20)));
        assert_eq!(parse_rate("0"), Ok(None));
        assert_eq!(parse_rate("off"), Ok(None));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("20 furlongs").is_err());
        assert!(parse_rate("10").is_err(), "10 B/s would stall every transfer");
        assert!(parse_rate("1e30G").is_err());
    }

    #[test]
    fn bwlimit_reads_rclone_style_rates_and_names_a_bad_one() {
        let f = Fixture::new();
        let s = Settings::load_from(Some(&f.minimal()), &env(&[("SFTP_MIRROR__MIRROR__BWLIMIT", "20MiB")])).unwrap();
        assert_eq!(s.mirror.bwlimit, Some(20 << 20));
        let s = Settings::load_from(Some(&f.minimal()), &env(&[])).unwrap();
        assert_eq!(s.mirror.bwlimit, None);
        let ps = problems(Settings::load_from(Some(&f.minimal()), &env(&[("SFTP_MIRROR__MIRROR__BWLIMIT", "fast")])));
        assert_eq!(ps.len(), 1, "{ps:?}");
        assert!(ps[0].starts_with("mirror.bwlimit: \"fast\" is not a rate"), "{ps:?}");
    }

    #[test]
    fn a_listen_address_may_name_a_host() {
        let f = Fixture::new();
        let text = std::fs::read_to_string(f.minimal()).unwrap() + "[admin]\nlisten = \"localhost:18080\"\n";
        let p = f.dir.path().join("localhost.toml");
        std::fs::write(&p, text).unwrap();
        let s = Settings::load_from(Some(&p), &env(&[])).unwrap();
        let a = s.admin.listen.unwrap();
        assert!(a.ip().is_loopback() && a.port() == 18080, "{a}");
    }

    #[test]
    fn a_padded_fingerprint_matches_the_unpadded_one() {
        let f = Fixture::new();
        let text = std::fs::read_to_string(f.minimal()).unwrap().replace(
            "known_hosts = ",
            "host_key_fingerprint = \"SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s=\"\n#",
        );
        let p = f.dir.path().join("padded.toml");
        std::fs::write(&p, text).unwrap();
        let s = Settings::load_from(Some(&p), &env(&[])).unwrap();
        assert!(
            matches!(&s.sftp.host_keys, HostKeyPolicy::Fingerprints(f) if f == &["SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"]),
            "{:?}",
            s.sftp.host_keys
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_key_and_no_secret() {
        let f = Fixture::new();
        let p = f.file(
            "[sftp]\nport = \"x\"\nusername = \"u\"\npassword = \"hunter2\"\npassword_file = \"DIR/pw\"\n\
             host_key_fingerprint = \"MD5:aa\"\n[mirror]\npath = \"rel\"\nexclude = [\"[\"]\ntypo = 1\n\
             [webhook]\n[reconcile]\ninterval = \"soon\"\n",
        );
        let e = env(&[("SFTPTOGO_URL", "http://u:hunter3@h")]);
        let ps = problems(Settings::load_from(Some(&p), &e));
        let text = ps.join("\n");
        for key in [
            "sftp.port",
            "sftp.host",
            "sftp.password",
            "sftp.host_key_fingerprint",
            "mirror.path",
            "mirror.exclude",
            "mirror.typo: unknown key",
            "webhook: no verification",
            "reconcile.interval",
            "SFTPTOGO_URL",
        ] {
            assert!(text.contains(key), "missing {key} in:\n{text}");
        }
        assert!(!text.contains("hunter2") && !text.contains("hunter3"), "{text}");
    }

    #[test]
    fn an_unreadable_secret_file_is_a_problem_and_a_missing_known_hosts_is_not() {
        let f = Fixture::new();
        let p = f.file(
            "[sftp]\nhost = \"h\"\nusername = \"u\"\npassword_file = \"DIR/nope\"\nknown_hosts = \"DIR/kh2\"\n\
             [mirror]\npath = \"/m\"\n[webhook]\nallow_unsigned = true\n",
        );
        let ps = problems(Settings::load_from(Some(&p), &env(&[])));
        assert!(ps.iter().any(|p| p.starts_with("sftp.password_file: cannot read")), "{ps:?}");
        // A known_hosts not there yet is no configuration problem: connecting
        // shows the key and how to record it (exit 4).
        assert!(!ps.iter().any(|p| p.contains("known_hosts")), "{ps:?}");
    }

    #[test]
    fn bad_toml_names_the_file_and_missing_file_is_an_error() {
        let f = Fixture::new();
        let p = f.file("[sftp\nhost = ");
        let ps = problems(Settings::load_from(Some(&p), &env(&[])));
        assert!(ps[0].contains("c.toml"), "{ps:?}");
        let ps = problems(Settings::load_from(Some(Path::new("/nonexistent/x.toml")), &env(&[])));
        assert!(ps[0].contains("not found"));
    }

    #[test]
    fn webhook_secrets_combine_for_rotation() {
        let f = Fixture::new();
        std::fs::write(f.dir.path().join("ws"), "one\ntwo\n").unwrap();
        let p = f.file("[webhook]\nsecret = \"zero\"\nsecrets = [\"one\", \"three\"]\nsecrets_file = \"DIR/ws\"\n");
        let s = Settings::load_webhook_secrets(Some(&p), &env(&[])).unwrap();
        assert_eq!(s.iter().map(Secret::expose).collect::<Vec<_>>(), ["zero", "one", "three", "two"]);
    }

    #[test]
    fn fingerprints_are_validated() {
        assert!(valid_fingerprint("SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"));
        assert!(!valid_fingerprint("SHA256:short"));
        assert!(!valid_fingerprint("MD5:aa:bb"));
    }

    #[test]
    fn the_example_config_is_valid() {
        let f = Fixture::new();
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/sftp-mirror.example.toml"))
            .unwrap()
            .replace("/var/lib/sftp-mirror/known_hosts", &f.dir.path().join("known_hosts").display().to_string())
            .replace("/etc/sftp-mirror/password", &f.dir.path().join("pw").display().to_string())
            .replace("/etc/sftp-mirror/webhook-secret", &f.dir.path().join("pw").display().to_string());
        let p = f.dir.path().join("example.toml");
        std::fs::write(&p, text).unwrap();
        let s = Settings::load_from(Some(&p), &env(&[])).unwrap();
        assert_eq!(s.sftp.host, "example.sftptogo.com");
    }
}
