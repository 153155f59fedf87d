//! The one tree diff (SPEC §2), pure: one directory's remote listing against
//! its local listing gives the changes that make them equal. `reconcile`
//! plans whole trees with it; a directory event brings its subtree in line
//! with it. Executing a change asks the remote again first (see
//! [`Syncer::execute`](super::Syncer::execute)): a listing may be stale by then.

use super::filter::Filter;
use crate::event::RemotePath;
use crate::human::human_bytes;
use crate::mirror::{LocalEntry, LocalKind};
use crate::remote::{RemoteDirEntry, RemoteEntry, RemoteKind, MAX_DEPTH};
use std::collections::HashMap;

/// One planned change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Download a file (new, changed, or replacing a local directory/symlink).
    Download {
        /// The path.
        path: RemotePath,
        /// What the listing said.
        entry: RemoteEntry,
        /// What is there locally now, if anything.
        local: Option<LocalKind>,
        /// Local entries the replacement removes (a directory with its
        /// contents, a symlink); 0 for a new file or an update.
        replaces: u64,
    },
    /// Create a directory (replacing a local file/symlink if any).
    MakeDir {
        /// The path.
        path: RemotePath,
        /// What is there locally now, if anything.
        local: Option<LocalKind>,
        /// Local entries the replacement removes (the file or symlink in the way).
        replaces: u64,
    },
    /// Remove a local entry the remote does not have.
    Delete {
        /// The path.
        path: RemotePath,
        /// What it is.
        local: LocalKind,
        /// Entries removed with it (1 for a file, 1 + descendants for a directory).
        entries: u64,
    },
}

impl Op {
    /// The path the operation is on.
    pub fn path(&self) -> &RemotePath {
        match self {
            Op::Download { path, .. } | Op::MakeDir { path, .. } | Op::Delete { path, .. } => path,
        }
    }

    /// Local entries the operation removes.
    pub fn removes(&self) -> u64 {
        match self {
            Op::Download { replaces, .. } | Op::MakeDir { replaces, .. } => *replaces,
            Op::Delete { entries, .. } => *entries,
        }
    }

    /// A one-line, human description.
    pub fn describe(&self, trash: bool) -> String {
        let mut line = self.describe_change();
        if trash && self.trashes() {
            line.push_str(" → trash");
        }
        line
    }

    /// Whether this operation takes a local file or directory out of the
    /// mirror (deleted, replaced or overwritten): with `mirror.trash` it goes there.
    pub fn trashes(&self) -> bool {
        match self {
            Op::Download { local, .. } => matches!(local, Some(LocalKind::File | LocalKind::Dir)),
            Op::MakeDir { local, .. } => matches!(local, Some(LocalKind::File)),
            Op::Delete { local, .. } => matches!(local, LocalKind::File | LocalKind::Dir),
        }
    }

    fn describe_change(&self) -> String {
        let was = |l: &Option<LocalKind>| match l {
            None => String::new(),
            Some(LocalKind::File) => " (replacing a local file)".into(),
            Some(LocalKind::Dir) => format!(" (replacing a local directory: {} entries deleted)", self.removes()),
            Some(LocalKind::Symlink) => " (replacing a local symlink)".into(),
            Some(LocalKind::Other) => " (replacing a local special file)".into(),
        };
        match self {
            Op::Download { path, entry, local, .. } => {
                let verb = if *local == Some(LocalKind::File) { "update  " } else { "download" };
                let was = if *local == Some(LocalKind::File) { String::new() } else { was(local) };
                format!("{verb} {} ({}){was}", path.lossy(), human_bytes(entry.size))
            }
            Op::MakeDir { path, local, .. } => format!("mkdir    {}/{}", path.lossy(), was(local)),
            Op::Delete { path, local, entries } => match local {
                LocalKind::Dir => format!("delete   {}/ ({entries} entries)", path.lossy()),
                _ => format!("delete   {}", path.lossy()),
            },
        }
    }
}

/// The comparison's result.
#[derive(Debug, Default)]
pub struct Plan {
    /// Changes, in walk order.
    pub ops: Vec<Op>,
    /// Local entries seen (for the delete guard).
    pub local_entries: u64,
    /// Entries already equal.
    pub unchanged: u64,
    /// Remote entries seen.
    pub remote_entries: u64,
}

impl Plan {
    /// Entries the plan would remove, replacements included.
    pub fn deletions(&self) -> u64 {
        self.ops.iter().map(Op::removes).sum()
    }

    /// Adds a part (one more directory) to the plan.
    pub fn merge(&mut self, part: Plan) {
        self.ops.extend(part.ops);
        self.local_entries += part.local_entries;
        self.unchanged += part.unchanged;
        self.remote_entries += part.remote_entries;
    }
}

fn child(parent: Option<&RemotePath>, name: &[u8], is_dir: bool) -> Option<RemotePath> {
    RemotePath::child(parent, name, is_dir).ok()
}

/// A replacement that would remove local entries, with deletions off: the
/// local entry stays and the remote one is not mirrored.
fn kept(path: &RemotePath, entries: u64) {
    tracing::warn!(
        path = %path,
        entries,
        "kept: the remote has another kind of entry here, and replacing the local one deletes {entries} entries (deletions are off)"
    );
}

/// Compares one directory `dir` (`None`: the root): its remote listing with
/// its local one. Returns the plan part and the subdirectories to descend
/// into. `count_local(d)` counts the entries below local directory `d` (a
/// replaced or deleted directory goes with its contents); `deletes` is whether
/// anything may leave the mirror.
///
/// # Errors
/// What `count_local` returns.
pub fn diff_dir<E>(
    dir: Option<&RemotePath>,
    remote: Vec<RemoteDirEntry>,
    local: Vec<(Vec<u8>, LocalEntry)>,
    filter: &Filter,
    deletes: bool,
    count_local: &mut dyn FnMut(&RemotePath) -> Result<u64, E>,
) -> Result<(Plan, Vec<RemotePath>), E> {
    let mut plan = Plan::default();
    let mut descend = Vec::new();
    let mut local: HashMap<Vec<u8>, LocalEntry> = local.into_iter().collect();
    for r in remote {
        let Some(path) = child(dir, &r.name, r.entry.kind == RemoteKind::Dir) else {
            // A name we cannot represent safely (e.g. ".sftp-mirror" at the root): not mirrored.
            continue;
        };
        let here = local.remove(&r.name);
        if !filter.allows(&path) {
            continue;
        }
        plan.remote_entries += 1;
        if here.is_some() {
            plan.local_entries += 1;
        }
        match r.entry.kind {
            RemoteKind::File => match here {
                // SPEC §2: same size and mtime, and not a copy made within the
                // second of its mtime (a same-size rewrite then keeps both).
                Some(l)
                    if l.kind == LocalKind::File
                        && l.size == r.entry.size
                        && l.mtime == r.entry.mtime
                        && !l.is_racy() =>
                {
                    plan.unchanged += 1
                }
                Some(l) if l.kind == LocalKind::File => {
                    plan.ops.push(Op::Download { path, entry: r.entry, local: Some(l.kind), replaces: 0 })
                }
                Some(l) => {
                    // The directory goes with its contents: a deletion, for the
                    // guard and for --no-delete / mirror.delete = false too.
                    let replaces = if l.kind == LocalKind::Dir {
                        let n = count_local(&path)?;
                        plan.local_entries += n;
                        1 + n
                    } else {
                        1
                    };
                    if deletes {
                        plan.ops.push(Op::Download { path, entry: r.entry, local: Some(l.kind), replaces });
                    } else {
                        kept(&path, replaces);
                    }
                }
                None => plan.ops.push(Op::Download { path, entry: r.entry, local: None, replaces: 0 }),
            },
            RemoteKind::Dir => {
                match here {
                    Some(l) if l.kind == LocalKind::Dir => plan.unchanged += 1,
                    Some(_) if !deletes => {
                        kept(&path, 1);
                        continue;
                    }
                    other => plan.ops.push(Op::MakeDir {
                        path: path.clone(),
                        local: other.map(|l| l.kind),
                        replaces: u64::from(other.is_some()),
                    }),
                }
                if path.depth() < MAX_DEPTH {
                    descend.push(path);
                } else {
                    tracing::warn!(path = %path, "deeper than {MAX_DEPTH} levels; its content is not mirrored");
                }
            }
            RemoteKind::Other => {}
        }
    }
    // What is left exists only locally.
    for (name, l) in local {
        let Some(path) = child(dir, &name, l.kind == LocalKind::Dir) else { continue };
        if !filter.allows(&path) {
            continue;
        }
        let entries = if l.kind == LocalKind::Dir { 1 + count_local(&path)? } else { 1 };
        plan.local_entries += entries;
        if deletes {
            plan.ops.push(Op::Delete { path, local: l.kind, entries });
        }
    }
    Ok((plan, descend))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RemotePath {
        RemotePath::parse(s).unwrap()
    }

    fn remote(name: &str, kind: RemoteKind, size: u64, mtime: u64) -> RemoteDirEntry {
        RemoteDirEntry { name: name.as_bytes().to_vec(), entry: RemoteEntry { kind, size, mtime } }
    }

    /// A local entry put in place long after its mtime (not racy).
    fn local(name: &str, kind: LocalKind, size: u64, mtime: u64) -> (Vec<u8>, LocalEntry) {
        let changed = mtime as i64 + 3600;
        (name.as_bytes().to_vec(), LocalEntry { kind, size, mtime, changed, changed_ms: changed * 1000 })
    }

    fn run(
        dir: Option<&RemotePath>,
        r: Vec<RemoteDirEntry>,
        l: Vec<(Vec<u8>, LocalEntry)>,
        deletes: bool,
    ) -> (Plan, Vec<RemotePath>) {
        let filter = Filter::new(&[], &["*.filepart".into()]).unwrap();
        // Every local directory holds two entries.
        diff_dir(dir, r, l, &filter, deletes, &mut |_| Ok::<u64, ()>(2)).unwrap()
    }

    #[test]
    fn equal_entries_are_unchanged_and_differences_become_ops() {
        let (plan, descend) = run(
            None,
            vec![
                remote("same.txt", RemoteKind::File, 3, 100),
                remote("newer.txt", RemoteKind::File, 3, 200),
                remote("new.txt", RemoteKind::File, 1, 100),
                remote("dir", RemoteKind::Dir, 0, 100),
                remote("upload.filepart", RemoteKind::File, 9, 100),
            ],
            vec![
                local("same.txt", LocalKind::File, 3, 100),
                local("newer.txt", LocalKind::File, 3, 100),
                local("dir", LocalKind::Dir, 0, 100),
                local("gone.txt", LocalKind::File, 1, 100),
            ],
            true,
        );
        assert_eq!(plan.unchanged, 2, "same.txt and dir");
        let described: Vec<String> = plan.ops.iter().map(|o| o.describe(false)).collect();
        assert_eq!(described, ["update   newer.txt (3 B)", "download new.txt (1 B)", "delete   gone.txt"]);
        assert_eq!(descend, vec![p("dir/")]);
        assert_eq!((plan.remote_entries, plan.local_entries), (4, 4), "the excluded .filepart is not counted");
    }

    #[test]
    fn a_copy_made_within_the_second_of_its_mtime_is_fetched_again() {
        let (mut name, mut racy) = local("r.txt", LocalKind::File, 3, 100);
        racy.changed = 100;
        racy.changed_ms = 100_400;
        name.shrink_to_fit();
        let (plan, _) = run(None, vec![remote("r.txt", RemoteKind::File, 3, 100)], vec![(name, racy)], true);
        assert_eq!(plan.ops.len(), 1, "{:?}", plan.ops);
    }

    #[test]
    fn replacements_are_deletions_and_stay_with_deletions_off() {
        let r = vec![remote("was-dir", RemoteKind::File, 5, 100), remote("was-file", RemoteKind::Dir, 0, 100)];
        let l = || vec![local("was-dir", LocalKind::Dir, 0, 100), local("was-file", LocalKind::File, 1, 100)];
        let (plan, descend) = run(Some(&p("d/")), r.clone(), l(), true);
        // The directory goes with its two entries; the file is one.
        assert_eq!(plan.deletions(), 3 + 1);
        assert_eq!(plan.local_entries, 2 + 2);
        assert_eq!(descend, vec![p("d/was-file/")]);
        let (plan, descend) = run(Some(&p("d/")), r, l(), false);
        assert!(plan.ops.is_empty(), "{:?}", plan.ops);
        assert!(descend.is_empty(), "a directory kept as a local file is not descended into");
    }
}
