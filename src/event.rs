//! The SFTP To Go event model and [`RemotePath`], the only way a path from the
//! network reaches the rest of the crate.
//!
//! `webhook` parses verified bodies into [`Event`]s; `journal` stores them;
//! `sync` turns a [`RemotePath`] into mirror operations. Every rule of SPEC §2
//! "path safety" lives in [`RemotePath::decode`], so an unsafe path cannot be
//! represented at all.

use serde::Deserialize;
use std::fmt;

/// Longest accepted path, in bytes after decoding (Linux `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest accepted path component, in bytes (Linux `NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;
/// Longest accepted event id; SFTP To Go ids are UUIDs.
pub const MAX_ID_BYTES: usize = 256;
/// The mirror's private folder (staging files); never mirror content.
pub const RESERVED_NAME: &str = ".sftp-mirror";

/// Why a body or a path was refused (answered `400`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The body is not the JSON we expect.
    #[error("malformed body: {0}")]
    Malformed(String),
    /// A required field is missing or empty.
    #[error("missing field {0}")]
    Missing(&'static str),
    /// `Data.Path` is not a safe relative path.
    #[error("unsafe path: {0}")]
    UnsafePath(&'static str),
}

/// What an event asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    /// `file.created`: a file or (trailing `/`) directory appeared.
    Created,
    /// `file.deleted`: a file or directory went away.
    Deleted,
    /// `webhook.ping`: the "Ping" button; no side effects.
    Ping,
    /// Any other topic (`file.downloaded`, `job.execution.*` …): recorded, ignored.
    Other(String),
}

impl Topic {
    fn parse(s: &str) -> Topic {
        match s {
            "file.created" => Topic::Created,
            "file.deleted" => Topic::Deleted,
            "webhook.ping" => Topic::Ping,
            other => Topic::Other(other.to_owned()),
        }
    }

    /// The wire name.
    pub fn as_str(&self) -> &str {
        match self {
            Topic::Created => "file.created",
            Topic::Deleted => "file.deleted",
            Topic::Ping => "webhook.ping",
            Topic::Other(s) => s,
        }
    }

    /// Whether this topic carries a path the mirror must look at.
    pub fn is_file_event(&self) -> bool {
        matches!(self, Topic::Created | Topic::Deleted)
    }
}

/// A parsed, validated event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `Id`: the de-duplication key.
    pub id: String,
    /// `Topic`.
    pub topic: Topic,
    /// `CreatedAt`, epoch milliseconds, when present.
    pub created_at: Option<i64>,
    /// `Data.Path`, decoded and validated; `Some` exactly for file events.
    pub path: Option<RemotePath>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawEvent {
    id: Option<String>,
    topic: Option<String>,
    created_at: Option<serde_json::Value>,
    data: Option<RawData>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawData {
    // A ping's Data is the webhook object, whose Path does not exist: keep it loose.
    path: Option<serde_json::Value>,
}

impl Event {
    /// Parses a body whose signature has already been checked.
    ///
    /// # Errors
    /// [`EventError`] when the JSON is malformed, `Id`/`Topic` are missing, or a
    /// file event's `Data.Path` is missing or unsafe.
    pub fn parse(body: &[u8]) -> Result<Event, EventError> {
        let raw: RawEvent = serde_json::from_slice(body).map_err(|e| {
            // serde_json's message names the line/column and the problem; keep it one line.
            EventError::Malformed(e.to_string().replace('\n', " "))
        })?;
        let id = raw.id.filter(|s| !s.is_empty()).ok_or(EventError::Missing("Id"))?;
        if id.len() > MAX_ID_BYTES || id.chars().any(char::is_control) {
            return Err(EventError::Malformed("Id is too long or has control characters".into()));
        }
        let topic = Topic::parse(&raw.topic.filter(|s| !s.is_empty()).ok_or(EventError::Missing("Topic"))?);
        let created_at = raw.created_at.and_then(|v| v.as_i64());
        let path = if topic.is_file_event() {
            let p = raw.data.and_then(|d| d.path).ok_or(EventError::Missing("Data.Path"))?;
            let s = p.as_str().ok_or(EventError::Malformed("Data.Path is not a string".into()))?;
            Some(RemotePath::decode(s)?)
        } else {
            None
        };
        Ok(Event { id, topic, created_at, path })
    }
}

/// A validated path relative to the remote root (and so to the mirror root).
///
/// Paths are byte strings, as SFTP names and Unix file names are: one that
/// came from a listing is mirrored byte-exact even when it is not UTF-8
/// (event paths are always UTF-8). Invariants: non-empty; components are
/// non-empty, not `.` or `..`, have no `/` or NUL, are at most
/// [`MAX_NAME_BYTES`]; the first is not [`RESERVED_NAME`]. `is_dir` records a
/// trailing `/` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RemotePath {
    rel: Vec<u8>,
    is_dir: bool,
}

impl RemotePath {
    /// Decodes `Data.Path` as SFTP To Go sends it: form-urlencoded (`+` is a
    /// space, `%2b` a plus), one optional leading `/`, trailing `/` = directory.
    ///
    /// # Errors
    /// [`EventError::UnsafePath`] for anything that is not a plain relative path,
    /// and for one that is not UTF-8 after decoding (SFTP To Go sends UTF-8).
    pub fn decode(wire: &str) -> Result<RemotePath, EventError> {
        let bytes: Vec<u8> = form_decode(wire.as_bytes());
        let s = String::from_utf8(bytes).map_err(|_| EventError::UnsafePath("not valid UTF-8 after decoding"))?;
        RemotePath::parse(&s)
    }

    /// Validates an already-decoded path (used for paths we build ourselves
    /// and by [`RemotePath::decode`]).
    ///
    /// # Errors
    /// [`EventError::UnsafePath`] as for [`RemotePath::decode`].
    pub fn parse(s: &str) -> Result<RemotePath, EventError> {
        RemotePath::parse_bytes(s.as_bytes())
    }

    /// [`RemotePath::parse`] on bytes, which need not be UTF-8.
    ///
    /// # Errors
    /// [`EventError::UnsafePath`] as for [`RemotePath::decode`].
    pub fn parse_bytes(s: &[u8]) -> Result<RemotePath, EventError> {
        if s.len() > MAX_PATH_BYTES {
            return Err(EventError::UnsafePath("path too long"));
        }
        if s.contains(&0) {
            return Err(EventError::UnsafePath("NUL byte in path"));
        }
        let s = s.strip_prefix(b"/").unwrap_or(s);
        let (s, is_dir) = match s.strip_suffix(b"/") {
            Some(rest) => (rest, true),
            None => (s, false),
        };
        if s.is_empty() {
            return Err(EventError::UnsafePath("empty path"));
        }
        for (i, c) in s.split(|&b| b == b'/').enumerate() {
            match c {
                b"" => return Err(EventError::UnsafePath("empty path component")),
                b"." | b".." => return Err(EventError::UnsafePath("'.' or '..' component")),
                _ if c.len() > MAX_NAME_BYTES => return Err(EventError::UnsafePath("path component too long")),
                _ if i == 0 && c == RESERVED_NAME.as_bytes() => {
                    return Err(EventError::UnsafePath("path uses the reserved name .sftp-mirror"))
                }
                _ => {}
            }
        }
        Ok(RemotePath { rel: s.to_owned(), is_dir })
    }

    /// The entry `name` inside directory `parent` (`None` = the root), marked
    /// as a directory or not.
    ///
    /// # Errors
    /// [`EventError::UnsafePath`] when the result would not be a safe path.
    pub fn child(parent: Option<&RemotePath>, name: &[u8], is_dir: bool) -> Result<RemotePath, EventError> {
        if name.is_empty() || name.contains(&b'/') {
            return Err(EventError::UnsafePath("an empty name or '/' in a name"));
        }
        let rel = match parent {
            Some(p) => [&p.rel[..], b"/", name].concat(),
            None => name.to_owned(),
        };
        RemotePath::parse_bytes(&rel).map(|p| p.with_dir(is_dir))
    }

    /// The relative path without leading or trailing `/` (`dir/file.txt`), exactly.
    pub fn as_bytes(&self) -> &[u8] {
        &self.rel
    }

    /// The same as a relative file-system path.
    pub fn as_path(&self) -> &std::path::Path {
        bytes_path(&self.rel)
    }

    /// The relative path for people (logs, messages): bytes that are not
    /// UTF-8 are shown as U+FFFD. Never use it to reach a file.
    pub fn lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.rel)
    }

    /// How many components the path has.
    pub fn depth(&self) -> usize {
        self.rel.split(|&b| b == b'/').count()
    }

    /// Whether the event named a directory (trailing `/`).
    pub fn is_dir(&self) -> bool {
        self.is_dir
    }

    /// The same path, marked as a file or directory.
    pub fn with_dir(&self, is_dir: bool) -> RemotePath {
        RemotePath { rel: self.rel.clone(), is_dir }
    }

    /// The parent directory's relative path (empty for an entry of the root)
    /// and the last component.
    pub fn split_parent(&self) -> (&[u8], &[u8]) {
        match self.rel.iter().rposition(|&b| b == b'/') {
            Some(i) => (&self.rel[..i], &self.rel[i + 1..]),
            None => (&[], &self.rel),
        }
    }

    /// Whether `self` is `other` or one of its ancestors or descendants; such
    /// paths must never be worked on at the same time (SPEC §2).
    pub fn overlaps(&self, other: &RemotePath) -> bool {
        let (a, b) = (&self.rel[..], &other.rel[..]);
        let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
        long.starts_with(short) && (long.len() == short.len() || long[short.len()] == b'/')
    }

    /// The wire form (with a trailing `/` for directories), as stored in the
    /// journal. Event paths are UTF-8, so for them this is exact.
    pub fn to_wire(&self) -> String {
        if self.is_dir {
            format!("{}/", self.lossy())
        } else {
            self.lossy().into_owned()
        }
    }
}

impl fmt::Display for RemotePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lossy())?;
        if self.is_dir {
            f.write_str("/")?;
        }
        Ok(())
    }
}

/// A relative path of bytes as a file-system path (Unix paths are bytes).
pub fn bytes_path(b: &[u8]) -> &std::path::Path {
    use std::os::unix::ffi::OsStrExt;
    std::path::Path::new(std::ffi::OsStr::from_bytes(b))
}

/// Joins a remote root and a relative path with exactly one `/`.
pub fn join_remote(root: &str, rel: &[u8]) -> Vec<u8> {
    let root = root.trim_end_matches('/');
    if rel.is_empty() {
        return if root.is_empty() { b"/".to_vec() } else { root.as_bytes().to_vec() };
    }
    [root.as_bytes(), b"/", rel].concat()
}

/// `application/x-www-form-urlencoded` decoding: `+` → space, `%XX` → byte.
/// A `%` not followed by two hex digits is kept literally, as browsers do.
fn form_decode(input: &[u8]) -> Vec<u8> {
    let plus_free: Vec<u8> = input.iter().map(|&b| if b == b'+' { b' ' } else { b }).collect();
    percent_encoding::percent_decode(&plus_free).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    fn ok(wire: &str) -> RemotePath {
        RemotePath::decode(wire).unwrap_or_else(|e| panic!("{wire:?}: {e}"))
    }

    fn bad(wire: &str) {
        assert!(matches!(RemotePath::decode(wire), Err(EventError::UnsafePath(_))), "{wire:?} should be refused");
    }

    #[test]
    fn decodes_form_urlencoding() {
        assert_eq!(ok("dir/file1.txt").lossy(), "dir/file1.txt");
        assert_eq!(ok("my+report%2b1.pdf").lossy(), "my report+1.pdf");
        assert_eq!(ok("/caf%C3%A9/na%C3%AFve+file.txt").lossy(), "café/naïve file.txt");
        assert_eq!(ok("100%").lossy(), "100%");
    }

    #[test]
    fn trailing_slash_is_a_directory_and_one_leading_slash_is_dropped() {
        let d = ok("/a/b/");
        assert!(d.is_dir());
        assert_eq!(d.lossy(), "a/b");
        assert_eq!(d.to_wire(), "a/b/");
        assert!(!ok("a/b").is_dir());
    }

    #[test]
    fn splits_into_parent_and_name() {
        assert_eq!(ok("a/b/c.txt").split_parent(), (&b"a/b"[..], &b"c.txt"[..]));
        assert_eq!(ok("top.txt").split_parent(), (&b""[..], &b"top.txt"[..]));
        assert_eq!(ok("a/b/").split_parent(), (&b"a"[..], &b"b"[..]));
    }

    #[test]
    fn refuses_traversal_and_confusion() {
        for p in [
            "",
            "/",
            "//",
            "..",
            "../x",
            "a/../b",
            "a/./b",
            "./a",
            "a//b",
            "//etc/passwd",
            "%2e%2e/x",
            "%2E%2E%2Fetc",
            "a/%2e%2e/%2e%2e/x",
            "a%00b",
            "a/%2F/b",
            ".sftp-mirror/x",
            "%2esftp-mirror/staging",
            "a/b//",
            "%ff%fe",
        ] {
            bad(p);
        }
        bad(&"x".repeat(256));
        bad(&format!("{}/", ["y"; 3000].join("/")));
        // `.sftp-mirror` is only reserved at the top.
        assert_eq!(ok("a/.sftp-mirror").lossy(), "a/.sftp-mirror");
    }

    #[test]
    fn overlap_is_ancestor_descendant_or_equal() {
        let p = |s| RemotePath::parse(s).unwrap();
        assert!(p("a").overlaps(&p("a/b")));
        assert!(p("a/b").overlaps(&p("a")));
        assert!(p("a/b").overlaps(&p("a/b/")));
        assert!(!p("a/b").overlaps(&p("a/bc")));
        assert!(!p("a/b").overlaps(&p("a/c")));
    }

    #[test]
    fn parses_sftptogo_events() {
        let body = br#"{"Id":"e1","Topic":"file.created","CreatedAt":1700000000000,
            "Actor":{"Type":"User","Id":"u"},"Data":{"Path":"dir/file1.txt","Size":12},
            "Metadata":{"Delivery":{"Id":"d"}},"Extra":1}"#;
        let e = Event::parse(body).unwrap();
        assert_eq!(e.id, "e1");
        assert_eq!(e.topic, Topic::Created);
        assert_eq!(e.created_at, Some(1_700_000_000_000));
        assert_eq!(e.path.unwrap().lossy(), "dir/file1.txt");

        let ping = br#"{"Id":"p","Topic":"webhook.ping","Data":{"Topics":["file.created"],"Url":"https://x"}}"#;
        let e = Event::parse(ping).unwrap();
        assert_eq!((e.topic, e.path), (Topic::Ping, None));

        let dl = br#"{"Id":"x","Topic":"file.downloaded","Data":{"Path":"../../etc"}}"#;
        assert_eq!(Event::parse(dl).unwrap().topic, Topic::Other("file.downloaded".into()));
    }

    #[test]
    fn refuses_bad_bodies() {
        for (body, what) in [
            (&b"not json"[..], "malformed"),
            (br#"{"Topic":"file.created","Data":{"Path":"a"}}"#, "Id"),
            (br#"{"Id":"1","Data":{"Path":"a"}}"#, "Topic"),
            (br#"{"Id":"1","Topic":"file.deleted","Data":{}}"#, "Data.Path"),
            (br#"{"Id":"1","Topic":"file.deleted","Data":{"Path":5}}"#, "string"),
            (br#"{"Id":"1","Id":"2","Topic":"file.deleted","Data":{"Path":"a"}}"#, "duplicate"),
            (br#"{"Id":"1","Topic":"file.created","Data":{"Path":"a/../../b"}}"#, "unsafe"),
            (
                br#"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"#,
                "malformed",
            ),
        ] {
            let err = Event::parse(body).unwrap_err().to_string();
            assert!(err.contains(what), "{err:?} should mention {what}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn listed_names_are_bytes_and_children_stay_inside() {
        let dir = RemotePath::parse("d").unwrap();
        let c = RemotePath::child(Some(&dir), b"caf\xe9.txt", false).unwrap();
        assert_eq!(c.as_bytes(), b"d/caf\xe9.txt");
        assert_eq!(c.as_path(), std::path::Path::new(std::ffi::OsStr::from_bytes(b"d/caf\xe9.txt")));
        assert_eq!(c.lossy(), "d/caf\u{fffd}.txt");
        assert_eq!(c.depth(), 2);
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0"] {
            assert!(RemotePath::child(Some(&dir), bad, false).is_err(), "{bad:?}");
        }
        assert!(RemotePath::child(None, b".sftp-mirror", true).is_err());
        assert!(RemotePath::child(Some(&dir), b".sftp-mirror", true).is_ok());
        // Events stay UTF-8.
        assert!(RemotePath::decode("caf%E9.txt").is_err());
    }
}
