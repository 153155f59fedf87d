//! Per-path exclusion (SPEC §2): work on a path never overlaps work on the same
//! path, an ancestor or a descendant. Shared by event workers and reconcile.

use crate::event::RemotePath;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// The set of paths being worked on.
#[derive(Clone, Default)]
pub struct PathLocks {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    held: Mutex<Vec<(u64, RemotePath)>>,
    next: std::sync::atomic::AtomicU64,
    released: Notify,
}

/// Held while working on a path; releases on drop.
pub struct PathGuard {
    inner: Arc<Inner>,
    id: u64,
}

impl Drop for PathGuard {
    fn drop(&mut self) {
        self.inner.held.lock().expect("not poisoned").retain(|(id, _)| *id != self.id);
        self.inner.released.notify_waiters();
    }
}

impl PathLocks {
    /// Takes `path` if nothing overlapping is held.
    pub fn try_lock(&self, path: &RemotePath) -> Option<PathGuard> {
        let mut held = self.inner.held.lock().expect("not poisoned");
        if held.iter().any(|(_, p)| p.overlaps(path)) {
            return None;
        }
        let id = self.inner.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        held.push((id, path.clone()));
        Some(PathGuard { inner: self.inner.clone(), id })
    }

    /// Waits until `path` can be taken, then takes it.
    pub async fn lock(&self, path: &RemotePath) -> PathGuard {
        loop {
            let released = self.inner.released.notified();
            tokio::pin!(released);
            // Register before checking, so a release between check and wait is not missed.
            released.as_mut().enable();
            if let Some(g) = self.try_lock(path) {
                return g;
            }
            released.await;
        }
    }

    /// A future that resolves at the next release (for schedulers that retry
    /// `try_lock`: `enable` it before trying, so no release is missed).
    pub fn released(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.released.notified()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RemotePath {
        RemotePath::parse(s).unwrap()
    }

    #[tokio::test]
    async fn overlapping_paths_exclude_each_other() {
        let l = PathLocks::default();
        let a = l.try_lock(&p("a/b")).unwrap();
        assert!(l.try_lock(&p("a")).is_none());
        assert!(l.try_lock(&p("a/b/c")).is_none());
        let _c = l.try_lock(&p("a/c")).unwrap();
        let l2 = l.clone();
        let waiter = tokio::spawn(async move { l2.lock(&p("a")).await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(a);
        drop(_c);
        waiter.await.unwrap();
    }
}
