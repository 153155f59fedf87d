//! One reader per section of the configuration: each reads its keys (every
//! problem recorded, naming its key) into its settings struct.

use super::reader::Reader;
use super::*;
use std::path::Path;

/// Validates a `SHA256:` fingerprint as `ssh-keygen -l` prints it.
pub(super) fn valid_fingerprint(f: &str) -> bool {
    use base64::Engine;
    let Some(b64) = f.strip_prefix("SHA256:") else { return false };
    base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64.trim_end_matches('=')).is_ok_and(|b| b.len() == 32)
}

/// Normalises a remote root: absolute, no trailing `/`.
pub(super) fn normalise_root(r: &str) -> Result<String, &'static str> {
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

pub(super) fn webhook_secrets(r: &mut Reader) -> Vec<Secret> {
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

/// Reads every section; `None` only with a problem recorded for what is missing.
pub(super) fn settings(r: &mut Reader) -> Option<Settings> {
    // Each section is read in full (all its problems), before any `?`.
    let (sftp, mirror, webhook) = (sftp(r), mirror(r), webhook(r));
    let (admin, journal, reconcile, log, hooks) = (admin(r), journal(r), reconcile(r), log(r), hooks(r));
    Some(Settings { sftp: sftp?, mirror: mirror?, webhook: webhook?, admin, journal, reconcile, log, hooks })
}

/// `[sftp]`.
pub(super) fn sftp(r: &mut Reader) -> Option<SftpSettings> {
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
    let timeout = r.positive_duration("sftp", "timeout", Duration::from_secs(30));
    let keepalive = r.duration("sftp", "keepalive", Duration::from_secs(15));
    Some(SftpSettings {
        host: host?,
        port,
        username: username?,
        auth: auth?,
        host_keys: host_keys?,
        remote_root,
        connections,
        timeout,
        keepalive,
    })
}

/// `[mirror]`.
pub(super) fn mirror(r: &mut Reader) -> Option<MirrorSettings> {
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
    Some(MirrorSettings { path: mirror_path?, delete, max_delete_ratio, include, exclude, concurrency, bwlimit, trash })
}

/// `[webhook]`.
pub(super) fn webhook(r: &mut Reader) -> Option<WebhookSettings> {
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
    let header_timeout = r.positive_duration("webhook", "header_timeout", Duration::from_secs(10));
    Some(WebhookSettings {
        listen: listen?,
        path,
        secrets,
        authorization,
        allow_unsigned,
        max_body,
        tls_cert,
        tls_key,
        header_timeout,
    })
}

/// `[admin]`.
pub(super) fn admin(r: &mut Reader) -> AdminSettings {
    let admin_listen = match r.string("admin", "listen") {
        Some(s) if s.trim().is_empty() || s.trim().eq_ignore_ascii_case("off") => None,
        _ => r.addr("admin", "listen", "127.0.0.1:9797"),
    };
    let sftp_down_after = r.duration("admin", "sftp_down_after", Duration::from_secs(60));
    AdminSettings { listen: admin_listen, sftp_down_after }
}

/// `[journal]`.
pub(super) fn journal(r: &mut Reader) -> JournalSettings {
    let journal_path = r.path("journal", "path").unwrap_or_else(|| DEFAULT_JOURNAL.into());
    let keep_done = r.duration("journal", "keep_done", Duration::from_secs(7 * 86400));
    let max_attempts = r.number("journal", "max_attempts", crate::journal::MAX_ATTEMPTS, (1, 1000));
    JournalSettings { path: journal_path, keep_done, max_attempts }
}

/// `[reconcile]`.
pub(super) fn reconcile(r: &mut Reader) -> ReconcileSettings {
    let on_start = r.bool("reconcile", "on_start", true);
    let interval = r.duration("reconcile", "interval", Duration::from_secs(3600));
    ReconcileSettings { on_start, interval: (!interval.is_zero()).then_some(interval) }
}

/// `[log]`.
pub(super) fn log(r: &mut Reader) -> LogSettings {
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
    LogSettings { format }
}

/// `[hooks]`.
pub(super) fn hooks(r: &mut Reader) -> HookSettings {
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
    HookSettings {
        on_file,
        on_delete,
        concurrency: r.number("hooks", "concurrency", 4usize, (1, 64)),
        timeout: r.positive_duration("hooks", "timeout", Duration::from_secs(300)),
        max_attempts: r.number("hooks", "max_attempts", 5u32, (1, 100)),
    }
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

pub(super) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
