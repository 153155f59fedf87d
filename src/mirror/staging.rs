//! Staging files: where a download is written before it is renamed into
//! place, and the resumable ones that survive a failed attempt or a restart.

use crate::event::RemotePath;
use cap_std::fs::Dir;
use std::io;
use std::time::Duration;

/// Empties the staging folder of what an interrupted run left, except
/// resumable downloads (a `.part` with its `.resume` record, younger than
/// [`RESUME_KEEP`]).
pub(super) fn clean_staging(staging: &Dir) -> io::Result<()> {
    let names: Vec<String> = staging.entries()?.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    let fresh = |name: &str| {
        staging
            .symlink_metadata(name)
            .ok()
            .filter(|m| m.is_file())
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.into_std().elapsed().ok())
            .is_some_and(|age| age < RESUME_KEEP)
    };
    for name in &names {
        let keep = if let Some(part) = name.strip_suffix(".resume") {
            part.starts_with("r-") && names.iter().any(|n| n == part) && fresh(name)
        } else {
            name.starts_with("r-") && names.contains(&resume_name(name)) && fresh(&resume_name(name))
        };
        if !keep {
            match staging.symlink_metadata(name) {
                Ok(m) if m.is_dir() => staging.remove_dir_all(name)?,
                Ok(_) => staging.remove_file(name)?,
                Err(_) => {}
            }
        }
    }
    Ok(())
}

/// An open staging file; commit it with [`Mirror::commit`](super::Mirror::commit) or drop it
/// (removed, unless it is resumable: see [`Mirror::resumable_staging`](super::Mirror::resumable_staging)).
pub struct Staging {
    pub(super) name: String,
    pub(super) file: Option<std::fs::File>,
    pub(super) staging: std::sync::Arc<Dir>,
    pub(super) committed: bool,
    /// For a resumable download: its sidecar record and what it records.
    pub(super) resume: Option<ResumeRecord>,
}

/// The sidecar of a resumable staging file: which remote version it holds
/// and how many leading bytes of it are known durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ResumeRecord {
    pub(super) size: u64,
    pub(super) mtime: u64,
}

impl ResumeRecord {
    pub(super) fn encode(&self, durable: u64) -> String {
        format!("{} {} {durable}\n", self.size, self.mtime)
    }

    /// `(record, durable bytes)` from a sidecar's text.
    pub(super) fn decode(text: &str) -> Option<(ResumeRecord, u64)> {
        let mut it = text.split_ascii_whitespace().map(str::parse::<u64>);
        let (size, mtime, durable) = (it.next()?.ok()?, it.next()?.ok()?, it.next()?.ok()?);
        (it.next().is_none() && durable <= size).then_some((ResumeRecord { size, mtime }, durable))
    }
}

impl Staging {
    /// The file to write the download into.
    pub fn file(&mut self) -> &mut std::fs::File {
        self.file.as_mut().expect("file present until commit")
    }

    /// Records that the first `durable` bytes are flushed to disk, so a
    /// download interrupted by a crash resumes there. A no-op for a staging
    /// file that is not resumable; a failed write only costs a longer resume.
    pub fn recorder(&self) -> impl Fn(u64) + Send + Sync + 'static {
        let target = self.resume.and_then(|r| Some((r, self.staging.try_clone().ok()?, resume_name(&self.name))));
        move |durable| {
            if let Some((r, dir, name)) = &target {
                if let Err(e) = dir.write(name, r.encode(durable)) {
                    tracing::debug!(error = %e, "could not record download progress");
                }
            }
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.committed {
            if self.resume.is_some() {
                let _ = self.staging.remove_file(resume_name(&self.name));
            }
        } else if self.resume.is_none() || self.file.as_ref().is_some_and(|f| f.metadata().is_ok_and(|m| m.len() == 0))
        {
            // Nothing to resume from: leave nothing behind.
            let _ = self.staging.remove_file(&self.name);
            if self.resume.is_some() {
                let _ = self.staging.remove_file(resume_name(&self.name));
            }
        }
    }
}

/// The resumable staging file of `rel`: one per path, so a retry finds it.
pub(super) fn partial_name(rel: &RemotePath) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(rel.as_bytes());
    format!("r-{}.part", hex::encode(&digest[..16]))
}

/// The sidecar of resumable staging file `name`.
pub(super) fn resume_name(name: &str) -> String {
    format!("{name}.resume")
}

/// Resumable staging files are kept across restarts this long at most.
pub(super) const RESUME_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);
