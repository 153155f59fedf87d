//! Directory listings, streamed batch by batch, bounded: a server that never
//! ends a listing, repeats names or sends names no file system can hold
//! cannot grow our memory or plant entries outside the directory.

use super::session::Conn;
use super::{RemoteEntry, RemoteError};

/// Entries one directory may list at most; a listing past it fails (a server
/// that never sends EOF would otherwise grow memory without end).
pub const MAX_DIR_ENTRIES: usize = 100_000;

/// One entry of a remote directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteDirEntry {
    /// File name exactly as the server sent it: not empty, not `.`/`..`, no `/` or NUL.
    pub name: Vec<u8>,
    /// Its attributes as READDIR returned them (lstat-style on OpenSSH).
    pub entry: RemoteEntry,
}

/// Directory levels below the remote root that are mirrored at most: a server
/// whose directory lists itself (or a loop of symlinks resolved server-side)
/// would otherwise be walked until paths grow too long.
pub const MAX_DEPTH: usize = 64;

/// Why a listed name cannot be a directory entry, if it cannot.
fn bad_name(name: &[u8]) -> Option<&'static str> {
    if name.is_empty() {
        Some("an empty name")
    } else if name.contains(&b'/') {
        Some("a name holding '/'")
    } else if name.contains(&0) {
        Some("a name holding NUL")
    } else {
        None
    }
}

/// Lists the directory at absolute remote `path` (without `.` and `..`).
/// Entries no directory can hold (empty, `/`, NUL) and repeated names are
/// skipped with a warning each.
///
/// # Errors
/// A [`RemoteError`]; `NoSuchFile` when the directory is gone; a status error
/// when the listing exceeds [`MAX_DIR_ENTRIES`].
pub async fn list_dir(conn: &Conn, path: &[u8]) -> Result<Vec<RemoteDirEntry>, RemoteError> {
    match list_dir_upto(conn, path, MAX_DIR_ENTRIES).await? {
        Some(entries) => Ok(entries),
        None => Err(RemoteError::Status {
            path: super::shown(path),
            code: super::StatusCode::Failure,
            message: format!("the directory lists more than {MAX_DIR_ENTRIES} entries; not mirrored"),
        }),
    }
}

/// [`list_dir`] that gives up (`None`) once the directory shows more than
/// `max` entries: for a caller that has a cheaper way to its answer then.
///
/// # Errors
/// As [`list_dir`].
pub async fn list_dir_upto(conn: &Conn, path: &[u8], max: usize) -> Result<Option<Vec<RemoteDirEntry>>, RemoteError> {
    let sftp = &conn.sftp;
    let handle = sftp.opendir(path).await.map_err(|e| RemoteError::from_sftp(path, e))?;
    let dir = super::shown(path);
    let mut out: Vec<RemoteDirEntry> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let result = loop {
        match sftp.readdir(&handle).await {
            Ok(Some(batch)) => {
                for f in batch {
                    if f.name == b"." || f.name == b".." {
                        continue;
                    }
                    if let Some(why) = bad_name(&f.name) {
                        tracing::warn!(dir = %dir, name = %String::from_utf8_lossy(&f.name).escape_debug(), "the server listed {why}; skipped");
                        continue;
                    }
                    if !seen.insert(f.name.clone()) {
                        tracing::warn!(dir = %dir, name = %String::from_utf8_lossy(&f.name).escape_debug(), "the server listed a name twice; the first one counts");
                        continue;
                    }
                    out.push(RemoteDirEntry { entry: RemoteEntry::from_attrs(&f.attrs), name: f.name });
                }
                if out.len() > max {
                    break Ok(false);
                }
            }
            Ok(None) => break Ok(true),
            Err(e) => break Err(RemoteError::from_sftp(path, e)),
        }
    };
    if !matches!(&result, Err(e) if e.is_transport()) {
        let _ = sftp.close(&handle).await;
    }
    result.map(|complete| complete.then_some(out))
}

#[cfg(test)]
mod tests {
    use super::bad_name;

    #[test]
    fn names_no_directory_can_hold_are_refused() {
        assert_eq!(bad_name(b""), Some("an empty name"));
        assert_eq!(bad_name(b"a/b"), Some("a name holding '/'"));
        assert_eq!(bad_name(b"a\0"), Some("a name holding NUL"));
        assert_eq!(bad_name(b"caf\xe9"), None);
        assert_eq!(bad_name(b"..."), None);
    }
}
