//! `SFTPTOGO_URL` (`sftp://user:password@host[:port][/root]`, as SFTP To Go
//! hands it out): which `sftp.*` values it sets between the file and the
//! explicit `SFTP_MIRROR__SFTP__*` variables.

use super::ENV_PREFIX;
use std::collections::HashMap;

/// What the URL does to the `[sftp]` table.
pub(super) struct SftpValues {
    /// Keys it removes first (its login replaces the file's).
    pub remove: Vec<&'static str>,
    /// Values it sets.
    pub set: Vec<(&'static str, String)>,
}

/// The URL's effect on `[sftp]`: explicit `SFTP_MIRROR__SFTP__*` variables
/// in `env` win over it, and an explicit credential variable over its password.
///
/// # Errors
/// When the URL cannot be parsed (the message never repeats it: it holds the password).
pub(super) fn sftp_values(url: &str, env: &HashMap<String, String>) -> Result<SftpValues, String> {
    let explicit = |k: &str| env.contains_key(&format!("{ENV_PREFIX}__SFTP__{}", k.to_ascii_uppercase()));
    let explicit_login = ["password", "password_file", "private_key"].iter().any(|k| explicit(k));
    let mut out = SftpValues { remove: Vec::new(), set: Vec::new() };
    for (k, v) in parse(url)? {
        if k == "password" {
            out.remove.extend(
                ["password_file", "private_key", "private_key_passphrase"].into_iter().filter(|o| !explicit(o)),
            );
        }
        if !(explicit(k) || (k == "password" && explicit_login)) {
            out.set.push((k, v));
        }
    }
    Ok(out)
}

/// Parses `SFTPTOGO_URL` into `sftp.*` values (percent-decoded). The error
/// never repeats the URL (it holds the password).
fn parse(text: &str) -> Result<Vec<(&'static str, String)>, String> {
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
