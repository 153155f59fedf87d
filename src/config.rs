//! TEMPORARY stub; replaced by the real loader.
#![allow(missing_docs)]
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);
impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}
impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}
pub const DEFAULT_CONFIG_PATH: &str = "/etc/sftp-mirror/config.toml";
#[derive(Debug, Clone)]
pub struct Settings {
    pub sftp: SftpSettings,
    pub mirror: MirrorSettings,
    pub webhook: WebhookSettings,
    pub admin: AdminSettings,
    pub journal: JournalSettings,
    pub reconcile: ReconcileSettings,
    pub log: LogSettings,
}
#[derive(Debug, Clone)]
pub struct SftpSettings {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub auth: SftpAuth,
    pub host_keys: HostKeyPolicy,
    pub remote_root: String,
    pub connections: usize,
    pub timeout: Duration,
    pub keepalive: Duration,
}
#[derive(Debug, Clone)]
pub enum SftpAuth {
    Password(Secret),
    PrivateKey { path: PathBuf, passphrase: Option<Secret> },
}
#[derive(Debug, Clone)]
pub enum HostKeyPolicy {
    KnownHosts(PathBuf),
    Fingerprints(Vec<String>),
}
#[derive(Debug, Clone)]
pub struct MirrorSettings {
    pub path: PathBuf,
    pub delete: bool,
    pub max_delete_ratio: f64,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub concurrency: usize,
}
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub listen: SocketAddr,
    pub path: String,
    pub secrets: Vec<Secret>,
    pub authorization: Option<Secret>,
    pub allow_unsigned: bool,
    pub max_body: u64,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}
#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: Option<SocketAddr>,
}
#[derive(Debug, Clone)]
pub struct JournalSettings {
    pub path: PathBuf,
    pub keep_done: Duration,
}
#[derive(Debug, Clone)]
pub struct ReconcileSettings {
    pub on_start: bool,
    pub interval: Option<Duration>,
}
#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}
#[derive(Debug, thiserror::Error)]
#[error("{}", problems.join("\n"))]
pub struct ConfigError {
    pub problems: Vec<String>,
}
impl Settings {
    pub fn load(_f: Option<&std::path::Path>) -> Result<Settings, ConfigError> {
        Err(ConfigError { problems: vec!["stub".into()] })
    }
    pub fn load_webhook_secrets(
        _f: Option<&std::path::Path>,
        _e: &std::collections::HashMap<String, String>,
    ) -> Result<Vec<Secret>, ConfigError> {
        Err(ConfigError { problems: vec!["stub".into()] })
    }
}
