//! Client-side setup for talking to a [`TestServer`]: a generated key and
//! complete [`Settings`] pointing at the server (demo, tests, benchmarks).

use super::TestServer;
use crate::config::{
    AdminSettings, HookSettings, HostKeyPolicy, JournalSettings, LogFormat, LogSettings, MirrorSettings,
    ReconcileSettings, Secret, Settings, SftpAuth, SftpSettings, WebhookSettings,
};
use russh::keys::{Algorithm, PrivateKey, PublicKey};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Writes a fresh ed25519 client key to `dir/id_ed25519` (OpenSSH format) and
/// returns its path and public key (to authorize on the server).
///
/// # Errors
/// When the key cannot be generated or written.
pub fn generate_client_key(dir: &Path) -> io::Result<(PathBuf, PublicKey)> {
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).map_err(io::Error::other)?;
    let pem = key.to_openssh(russh::keys::ssh_key::LineEnding::LF).map_err(io::Error::other)?;
    std::fs::create_dir_all(dir)?;
    let path = dir.join("id_ed25519");
    std::fs::write(&path, pem.as_bytes())?;
    Ok((path, key.public_key().clone()))
}

/// Settings for a client of `server` logging in as `user` with `key`; writes
/// `state/known_hosts` pinning the server's key. The webhook listens on
/// `127.0.0.1:0`, the admin listener is off, no periodic reconcile.
///
/// # Errors
/// When `known_hosts` cannot be written.
pub fn client_settings(
    server: &TestServer,
    user: &str,
    key: &Path,
    state: &Path,
    mirror: &Path,
    secret: Secret,
) -> io::Result<Settings> {
    let known_hosts = state.join("known_hosts");
    std::fs::write(&known_hosts, format!("{}\n", server.known_hosts_line()))?;
    Ok(Settings {
        sftp: SftpSettings {
            host: server.addr().ip().to_string(),
            port: server.addr().port(),
            username: user.into(),
            auth: SftpAuth::PrivateKey { path: key.to_owned(), passphrase: None },
            host_keys: HostKeyPolicy::KnownHosts(known_hosts),
            remote_root: "/".into(),
            connections: 2,
            timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(15),
        },
        mirror: MirrorSettings {
            path: mirror.to_owned(),
            delete: true,
            max_delete_ratio: 0.5,
            include: vec![],
            exclude: vec!["*.filepart".into()],
            concurrency: 8,
            bwlimit: None,
            trash: None,
        },
        webhook: WebhookSettings {
            listen: "127.0.0.1:0".parse().expect("valid address"),
            path: "/webhook".into(),
            secrets: vec![secret],
            authorization: None,
            allow_unsigned: false,
            max_body: 1 << 20,
            tls_cert: None,
            tls_key: None,
            header_timeout: Duration::from_secs(10),
        },
        admin: AdminSettings { listen: None, sftp_down_after: Duration::from_secs(60) },
        journal: JournalSettings {
            path: state.join("journal.db"),
            keep_done: Duration::from_secs(86400),
            max_attempts: crate::journal::MAX_ATTEMPTS,
        },
        reconcile: ReconcileSettings { on_start: false, interval: None },
        log: LogSettings { format: LogFormat::Human },
        hooks: HookSettings {
            on_file: None,
            on_delete: None,
            concurrency: 4,
            timeout: Duration::from_secs(300),
            max_attempts: 5,
        },
    })
}
