//! Configuration (SPEC §5): TOML file < `SFTPTOGO_URL` < `SFTP_MIRROR__SECTION__KEY`
//! environment variables, validated into [`Settings`].
//!
//! Raw values are read key by key from the merged tree rather than through one
//! serde struct, so that *every* problem (unknown key, bad value, missing key,
//! conflicting `x`/`x_file`) is reported at once, each naming its key:
//! `reader.rs` holds the tree and its typed getters (recording the keys asked
//! for: the others are unknown), `sections.rs` one reader per section,
//! `url.rs` what `SFTPTOGO_URL` sets. Nothing
//! downstream re-parses: durations, paths, host-key policy and secrets (read
//! from their `*_file`s) are typed here. Secret values never reach an error.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod reader;
mod sections;
mod url;

pub use sections::parse_rate;
use sections::{settings, webhook_secrets};

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
        let mut r = reader::read(file, env)?;
        let settings = settings(&mut r);
        // Every key was asked for by now: the rest are unknown.
        r.unknown_keys();
        match settings {
            Some(s) if r.problems.is_empty() => Ok(s),
            Some(_) => Err(ConfigError { problems: r.problems }),
            None if r.problems.is_empty() => {
                Err(ConfigError { problems: vec!["configuration: incomplete, but no key was named (a bug)".into()] })
            }
            None => Err(ConfigError { problems: r.problems }),
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
        let mut r = reader::read(file, env)?;
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
        let mut r = reader::read(file, env)?;
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

#[cfg(test)]
mod tests {
    use super::sections::valid_fingerprint;
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
    fn a_mistyped_section_is_named_with_the_closest_one() {
        let f = Fixture::new();
        let text = std::fs::read_to_string(f.minimal()).unwrap() + "\n[mirorr]\ndelete = false\n";
        let ps = problems(Settings::load_from(Some(&f.file(&text)), &env(&[])));
        assert_eq!(ps.len(), 1, "{ps:?}");
        assert!(ps[0].starts_with("mirorr: unknown section") && ps[0].ends_with("did you mean [mirror]?"), "{ps:?}");
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
