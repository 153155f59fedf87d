//! `mirror.include` / `mirror.exclude`: which remote paths are mirrored.
//!
//! Patterns are globs on the path relative to the remote root (`*` also
//! crosses `/`, so `*.filepart` matches at any depth). `exclude` applies to
//! files and directories, and an excluded directory excludes everything below
//! it; `include` (when not empty) selects files, while directories are always
//! walked so that included files inside them can be reached.

use crate::event::{bytes_path, RemotePath};
use globset::{Glob, GlobSet, GlobSetBuilder};

/// A compiled include/exclude pair.
#[derive(Clone, Debug)]
pub struct Filter {
    include: Option<GlobSet>,
    exclude: GlobSet,
}

fn build(patterns: &[String]) -> Result<GlobSet, globset::Error> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(Glob::new(p.trim_start_matches('/'))?);
    }
    b.build()
}

impl Filter {
    /// Compiles the patterns (already validated by `config`).
    ///
    /// # Errors
    /// A bad glob.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Filter, globset::Error> {
        Ok(Filter { include: (!include.is_empty()).then(|| build(include)).transpose()?, exclude: build(exclude)? })
    }

    /// Whether `path` (a file, or a directory when `path.is_dir()`) is mirrored.
    pub fn allows(&self, path: &RemotePath) -> bool {
        self.allows_bytes(path.as_bytes(), path.is_dir())
    }

    /// Same as [`Filter::allows`] on a relative path string.
    pub fn allows_str(&self, rel: &str, is_dir: bool) -> bool {
        self.allows_bytes(rel.as_bytes(), is_dir)
    }

    /// Same as [`Filter::allows`] on a relative path of bytes (globs match
    /// names that are not UTF-8 too).
    fn allows_bytes(&self, rel: &[u8], is_dir: bool) -> bool {
        // An excluded ancestor excludes its whole subtree.
        let mut prefixes = rel.iter().enumerate().filter(|(_, &c)| c == b'/').map(|(i, _)| &rel[..i]);
        if prefixes.any(|p| self.exclude.is_match(bytes_path(p))) {
            return false;
        }
        let rel = bytes_path(rel);
        if self.exclude.is_match(rel) {
            return false;
        }
        is_dir || self.include.as_ref().is_none_or(|inc| inc.is_match(rel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(inc: &[&str], exc: &[&str]) -> Filter {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Filter::new(&s(inc), &s(exc)).unwrap()
    }

    #[test]
    fn default_excludes_filepart_at_any_depth() {
        let d = f(&[], &["*.filepart"]);
        assert!(!d.allows_str("a.filepart", false));
        assert!(!d.allows_str("x/y/a.txt.filepart", false));
        assert!(d.allows_str("x/y/a.txt", false));
    }

    #[test]
    fn excluded_directory_hides_its_subtree_and_include_selects_files() {
        let d = f(&["reports/**", "*.csv"], &["tmp"]);
        assert!(!d.allows_str("tmp", true));
        assert!(!d.allows_str("tmp/a/b.csv", false));
        assert!(d.allows_str("reports/2024/x.pdf", false));
        assert!(d.allows_str("data/x.csv", false));
        assert!(!d.allows_str("data/x.txt", false));
        assert!(d.allows_str("data", true), "directories are walked to reach included files");
    }
}
