//! `mirror.trash` (SPEC §8): what the mirror deletes or overwrites is moved to
//! `<mirror>/.sftp-mirror/trash/<UTC date>/<path>` instead, and each day's
//! folder is removed once its last moment is older than the keep duration.
//!
//! Moves are renames inside one file system (no copy); an overwritten file is
//! kept as a hard link taken just before the new version is renamed over it,
//! so readers of the mirror never see the path missing. Every syscall works on
//! a directory handle and one name (`renameat2`/`linkat`): nothing resolves a
//! multi-component path that a planted symlink could redirect.

use cap_std::fs::Dir;
use rustix::fs::{AtFlags, RenameFlags};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The trash folder, relative to the mirror root.
pub const TRASH: &str = ".sftp-mirror/trash";

/// Day folders tried for one path before giving up (`2026-12-04`,
/// `2026-12-04~1`, …): a name taken the same day, or a parent that is a file
/// in the trash, moves on to the next.
const MAX_SLOTS: u32 = 1000;

/// The trash of one mirror.
#[derive(Debug)]
pub struct Trash {
    dir: Dir,
}

/// `YYYY-MM-DD` (UTC) of `t`.
fn utc_date(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()[..10].to_owned()
}

/// The start of the UTC day a trash folder is named after (`2026-12-04` or
/// `2026-12-04~3`); `None` for any other name.
fn day_of(name: &str) -> Option<SystemTime> {
    let day = name.get(..10)?;
    let rest = &name[10..];
    if !(rest.is_empty() || rest.strip_prefix('~').is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))) {
        return None;
    }
    humantime::parse_rfc3339(&format!("{day}T00:00:00Z")).ok()
}

fn split(rel: &Path) -> (&Path, &std::ffi::OsStr) {
    let parent = rel.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    (parent, rel.file_name().unwrap_or(rel.as_os_str()))
}

fn open_parent(root: &Dir, parent: &Path) -> io::Result<Dir> {
    if parent == Path::new(".") {
        root.try_clone()
    } else {
        root.open_dir(parent)
    }
}

impl Trash {
    /// Opens (creating) the trash of the mirror at `root`.
    ///
    /// # Errors
    /// When the folder cannot be created.
    pub fn open(root: &Dir) -> io::Result<Trash> {
        root.create_dir_all(TRASH)?;
        Ok(Trash { dir: root.open_dir(TRASH)? })
    }

    /// Moves `rel` of the mirror `root` (a file or a whole directory tree)
    /// into today's trash folder; returns where it went, relative to the trash.
    ///
    /// # Errors
    /// On an I/O error; `rel` is then left where it was.
    pub fn take(&self, root: &Dir, rel: &Path, now: SystemTime) -> io::Result<PathBuf> {
        let (parent, name) = split(rel);
        let from = open_parent(root, parent)?;
        self.place(rel, now, |to, to_name| {
            rustix::fs::renameat_with(&from, name, to, to_name, RenameFlags::NOREPLACE).map_err(io::Error::from)
        })
    }

    /// Keeps the current content of file `rel` (a hard link into the trash):
    /// the caller is about to rename a new version over it.
    ///
    /// # Errors
    /// On an I/O error.
    pub fn keep_copy(&self, root: &Dir, rel: &Path, now: SystemTime) -> io::Result<PathBuf> {
        let (parent, name) = split(rel);
        let from = open_parent(root, parent)?;
        self.place(rel, now, |to, to_name| {
            rustix::fs::linkat(&from, name, to, to_name, AtFlags::empty()).map_err(io::Error::from)
        })
    }

    /// Finds a free `<day>/<rel>` and calls `put(parent handle, name)` on it.
    fn place(
        &self,
        rel: &Path,
        now: SystemTime,
        put: impl Fn(&Dir, &std::ffi::OsStr) -> io::Result<()>,
    ) -> io::Result<PathBuf> {
        let day = utc_date(now);
        let (parent, name) = split(rel);
        for n in 0..MAX_SLOTS {
            let slot = if n == 0 { day.clone() } else { format!("{day}~{n}") };
            // No "." component: cap-std's create_dir_all would not make `slot` then.
            let target_parent =
                if parent == Path::new(".") { PathBuf::from(&slot) } else { Path::new(&slot).join(parent) };
            match self.dir.create_dir_all(&target_parent) {
                Ok(()) => {}
                // A file of an earlier trashing sits where a folder must be.
                Err(e) if matches!(e.kind(), io::ErrorKind::AlreadyExists | io::ErrorKind::NotADirectory) => continue,
                Err(e) if e.raw_os_error() == Some(20 /* ENOTDIR */) => continue,
                Err(e) => return Err(e),
            }
            let to = self.dir.open_dir(&target_parent)?;
            match put(&to, name) {
                Ok(()) => return Ok(target_parent.join(name)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(format!("no free name in the trash for {} today", rel.display())))
    }

    /// Removes each day folder whose last moment is older than `keep`;
    /// returns how many went.
    ///
    /// # Errors
    /// On an I/O error (folders removed before it stay removed).
    pub fn prune(&self, now: SystemTime, keep: Duration) -> io::Result<u64> {
        let mut removed = 0;
        for ent in self.dir.entries()? {
            let ent = ent?;
            let Some(name) = ent.file_name().to_str().map(str::to_owned) else { continue };
            let Some(start) = day_of(&name) else { continue };
            let end = start + Duration::from_secs(86_400);
            if end + keep <= now {
                match ent.file_type()?.is_dir() {
                    true => self.dir.remove_dir_all(&name)?,
                    false => self.dir.remove_file(&name)?,
                }
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> (tempfile::TempDir, Dir) {
        let t = tempfile::tempdir().unwrap();
        let d = Dir::open_ambient_dir(t.path(), cap_std::ambient_authority()).unwrap();
        (t, d)
    }

    #[test]
    fn day_folders_are_named_and_read_back() {
        let t = humantime::parse_rfc3339("2026-12-04T23:59:59Z").unwrap();
        assert_eq!(utc_date(t), "2026-12-04");
        let start = humantime::parse_rfc3339("2026-12-04T00:00:00Z").unwrap();
        assert_eq!(day_of("2026-12-04"), Some(start));
        assert_eq!(day_of("2026-12-04~12"), Some(start));
        assert_eq!(day_of("2026-12-04x"), None);
        assert_eq!(day_of("notes"), None);
    }

    #[test]
    fn the_same_path_twice_a_day_and_a_file_where_a_folder_must_be_get_their_own_slot() {
        let (t, d) = root();
        let trash = Trash::open(&d).unwrap();
        let now = humantime::parse_rfc3339("2026-12-04T10:00:00Z").unwrap();
        d.write("a", "first").unwrap();
        assert_eq!(trash.take(&d, Path::new("a"), now).unwrap(), Path::new("2026-12-04/a"));
        d.write("a", "second").unwrap();
        assert_eq!(trash.keep_copy(&d, Path::new("a"), now).unwrap(), Path::new("2026-12-04~1/a"));
        assert_eq!(d.read_to_string("a").unwrap(), "second", "a kept copy leaves the file in place");
        // "a" is a file in both slots: "a/b" needs a third one.
        d.remove_file("a").unwrap();
        d.create_dir("a").unwrap();
        d.write("a/b", "inner").unwrap();
        assert_eq!(trash.take(&d, Path::new("a/b"), now).unwrap(), Path::new("2026-12-04~2/a/b"));
        let base = t.path().join(TRASH);
        assert_eq!(std::fs::read_to_string(base.join("2026-12-04/a")).unwrap(), "first");
        assert_eq!(std::fs::read_to_string(base.join("2026-12-04~1/a")).unwrap(), "second");
        assert_eq!(std::fs::read_to_string(base.join("2026-12-04~2/a/b")).unwrap(), "inner");
    }

    #[test]
    fn a_day_folder_goes_once_its_last_moment_is_older_than_the_keep_duration() {
        let (t, d) = root();
        let trash = Trash::open(&d).unwrap();
        let keep = Duration::from_secs(2 * 86_400);
        let base = t.path().join(TRASH);
        for day in ["2026-12-01", "2026-12-01~1", "2026-12-02", "2026-12-03"] {
            std::fs::create_dir_all(base.join(day).join("x")).unwrap();
        }
        std::fs::write(base.join("README"), "not ours to prune").unwrap();
        // 2026-12-01 ended at 12-02T00:00; with 2 days kept it goes at 12-04T00:00.
        let now = humantime::parse_rfc3339("2026-12-04T00:00:00Z").unwrap();
        assert_eq!(trash.prune(now, keep).unwrap(), 2);
        let left: std::collections::BTreeSet<String> =
            std::fs::read_dir(&base).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(left, ["2026-12-02", "2026-12-03", "README"].map(String::from).into());
    }
}
