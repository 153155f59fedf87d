//! The dispatcher's queue, pure: which claimed rows may start now, in what
//! batches (SPEC §2).
//!
//! Rows start in the order received. A row whose path overlaps a row still
//! waiting before it, or work under way (a lock the caller could not take),
//! waits. Waiting rows for the very same path (up to a row on an overlapping,
//! different path) are applied as one batch: one `stat` of the remote answers
//! all of them, since each was received before that `stat`.

use crate::event::RemotePath;
use crate::journal::Job;
use std::collections::VecDeque;

/// File batches of one directory started as one task at most.
pub const GROUP_MAX: usize = 256;

/// Rows applied together: one path, one apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The journal rows, oldest first.
    pub seqs: Vec<i64>,
    /// The first row's event id (logs, hooks).
    pub event_id: String,
    /// The path.
    pub path: RemotePath,
    /// When the latest `file.created` among them was received: a local copy
    /// made before then is stale even with the same size and mtime.
    pub since: Option<i64>,
    /// A person re-queued one of them (`retry`): past the event delete guard.
    pub forced: bool,
}

/// Claimed rows not started yet.
#[derive(Debug, Default)]
pub struct Schedule {
    queue: VecDeque<(Job, RemotePath)>,
}

impl Schedule {
    /// Appends a claimed row (claims come oldest first).
    pub fn push(&mut self, job: Job, path: RemotePath) {
        self.queue.push_back((job, path));
    }

    /// Rows waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no row waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Takes up to `free` tasks that may start now. A task is one batch, or
    /// several batches for files of one directory (at most [`GROUP_MAX`]),
    /// which the caller may answer with one listing of that directory.
    /// `lock` is asked for each candidate's path and returns the caller's
    /// guard, or `None` when overlapping work is under way; the guard travels
    /// with its batch.
    pub fn start<G>(&mut self, free: usize, mut lock: impl FnMut(&RemotePath) -> Option<G>) -> Vec<Vec<(Batch, G)>> {
        let mut out: Vec<Vec<(Batch, G)>> = Vec::new();
        // Paths of rows passed over: a later row overlapping one of them waits behind it.
        let mut waiting: Vec<RemotePath> = Vec::new();
        let mut i = 0;
        while out.len() < free && i < self.queue.len() {
            let path = &self.queue[i].1;
            if waiting.iter().any(|w| w.overlaps(path)) {
                waiting.push(path.clone());
                i += 1;
                continue;
            }
            let Some(guard) = lock(path) else {
                waiting.push(path.clone());
                i += 1;
                continue;
            };
            let first = self.take(i);
            let mut task = vec![(first, guard)];
            if !task[0].0.path.is_dir() {
                self.gather(i, &mut task, &waiting, &mut lock);
            }
            out.push(task);
        }
        out
    }

    /// Adds to `task` (a file batch) the later rows for other files of the
    /// same directory that may start now, from queue index `from` on. A row
    /// passed over here holds back the later rows that overlap it, as in
    /// [`Schedule::start`].
    fn gather<G>(
        &mut self,
        from: usize,
        task: &mut Vec<(Batch, G)>,
        waiting: &[RemotePath],
        lock: &mut impl FnMut(&RemotePath) -> Option<G>,
    ) {
        let dir = task[0].0.path.split_parent().0.to_vec();
        // What holds back a file `dir/x`: a row passed over on `dir` or an
        // ancestor (all of them), or on `dir/x` or below it (that name only).
        let mut blocked = Blocked::default();
        for w in waiting {
            blocked.add(&dir, w);
        }
        let mut j = from;
        while task.len() < GROUP_MAX && j < self.queue.len() {
            let path = &self.queue[j].1;
            let (parent, name) = path.split_parent();
            let free = !path.is_dir() && parent == &dir[..] && !blocked.holds(name);
            let guard = if free { lock(path) } else { None };
            match guard {
                Some(guard) => {
                    let batch = self.take(j);
                    task.push((batch, guard));
                }
                None => {
                    blocked.add(&dir, path);
                    j += 1;
                }
            }
        }
    }

    /// Removes row `i` as a batch, folding into it the later rows for the
    /// same path up to the first row on an overlapping but different path
    /// (whose order relative to them matters); rows on unrelated paths in
    /// between do not matter.
    fn take(&mut self, i: usize) -> Batch {
        let (job, path) = self.queue.remove(i).expect("index checked");
        let mut batch = Batch {
            seqs: vec![job.seq],
            event_id: job.event_id,
            since: job.created.then_some(job.received_ms),
            forced: job.forced,
            path,
        };
        let mut j = i;
        while let Some((next, p)) = self.queue.get(j) {
            if p == &batch.path {
                batch.seqs.push(next.seq);
                if next.created {
                    batch.since = batch.since.max(Some(next.received_ms));
                }
                batch.forced |= next.forced;
                self.queue.remove(j);
            } else if p.overlaps(&batch.path) {
                break;
            } else {
                j += 1;
            }
        }
        batch
    }

    /// Empties the queue; returns the rows' seqs (to hand back at shutdown).
    pub fn drain(&mut self) -> Vec<i64> {
        self.queue.drain(..).map(|(j, _)| j.seq).collect()
    }
}

/// Rows passed over, as far as they matter to files of one directory.
#[derive(Default)]
struct Blocked {
    /// The directory itself or one of its ancestors.
    all: bool,
    /// First components below the directory.
    names: std::collections::HashSet<Vec<u8>>,
}

impl Blocked {
    /// Records `path`, passed over, for the files of `dir` ("" = the root).
    fn add(&mut self, dir: &[u8], path: &RemotePath) {
        let p = path.as_bytes();
        let below = if dir.is_empty() { Some(p) } else { p.strip_prefix(dir).and_then(|r| r.strip_prefix(b"/")) };
        match below {
            Some(rest) => {
                let name = rest.split(|&b| b == b'/').next().unwrap_or(rest);
                self.names.insert(name.to_vec());
            }
            // `dir` itself or an ancestor (a prefix of it at a component end).
            None if dir.starts_with(p) && (dir.len() == p.len() || dir[p.len()] == b'/') => self.all = true,
            None => {}
        }
    }

    /// Whether the file `dir/name` must wait.
    fn holds(&self, name: &[u8]) -> bool {
        self.all || self.names.contains(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn job(seq: i64, path: &str, created: bool) -> (Job, RemotePath) {
        let job = Job {
            seq,
            event_id: format!("e{seq}"),
            path: path.into(),
            attempts: 0,
            received_ms: 1000 + seq,
            created,
            forced: false,
        };
        (job, RemotePath::parse(path).unwrap())
    }

    fn schedule(rows: &[(i64, &str, bool)]) -> Schedule {
        let mut s = Schedule::default();
        for &(seq, p, c) in rows {
            let (j, p) = job(seq, p, c);
            s.push(j, p);
        }
        s
    }

    /// Starts with a lock table of paths held by others; returns the tasks,
    /// each as (path, seqs) per batch.
    fn tasks(s: &mut Schedule, free: usize, held: &[&str]) -> Vec<Vec<(String, Vec<i64>)>> {
        let held: Vec<RemotePath> = held.iter().map(|p| RemotePath::parse(p).unwrap()).collect();
        let mut taken: Vec<RemotePath> = Vec::new();
        s.start(free, |p| {
            if held.iter().chain(&taken).any(|h| h.overlaps(p)) {
                return None;
            }
            taken.push(p.clone());
            Some(())
        })
        .into_iter()
        .map(|t| t.into_iter().map(|(b, ())| (b.path.lossy().into_owned(), b.seqs)).collect())
        .collect()
    }

    /// [`tasks`], the batches of all tasks in order.
    fn start(s: &mut Schedule, free: usize, held: &[&str]) -> Vec<(String, Vec<i64>)> {
        tasks(s, free, held).into_iter().flatten().collect()
    }

    #[test]
    fn rows_for_one_path_fold_up_to_an_overlapping_row() {
        let mut s = schedule(&[
            (1, "a.txt", true),
            (2, "b.txt", true),
            (3, "a.txt", true),
            (4, "a.txt/", false),
            (5, "a.txt", true),
        ]);
        let started = start(&mut s, 10, &[]);
        // 1 and 3 fold (b.txt between them is unrelated); 5 stays behind the
        // directory row 4, which overlaps and waits for the batch of a.txt.
        assert_eq!(started, vec![("a.txt".into(), vec![1, 3]), ("b.txt".into(), vec![2])]);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn the_latest_created_time_and_a_forced_row_carry_into_the_batch() {
        let mut s = Schedule::default();
        let (mut j1, p) = job(1, "x", true);
        j1.received_ms = 10;
        let (mut j2, _) = job(2, "x", false);
        j2.forced = true;
        let (mut j3, _) = job(3, "x", true);
        j3.received_ms = 30;
        for j in [j1, j2, j3] {
            s.push(j, p.clone());
        }
        let b = s.start(1, |_| Some(())).remove(0).remove(0).0;
        assert_eq!((b.seqs, b.since, b.forced, b.event_id.as_str()), (vec![1, 2, 3], Some(30), true, "e1"));
    }

    #[test]
    fn a_locked_path_holds_back_every_later_overlapping_row_but_not_others() {
        let mut s = schedule(&[(1, "d/f", true), (2, "d/", false), (3, "e", true), (4, "d/f", true)]);
        // A reconcile holds "d": rows under it wait; "e" goes.
        assert_eq!(start(&mut s, 10, &["d"]), vec![("e".into(), vec![3])]);
        // Released: row 1 goes alone, as row 2 (d/, overlapping) sits between
        // it and row 4, which must not jump ahead of it.
        assert_eq!(start(&mut s, 10, &[]), vec![("d/f".into(), vec![1])]);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn no_more_than_free_tasks_start_and_order_is_kept() {
        let mut s = schedule(&[(1, "a/f", true), (2, "b/f", true), (3, "c/f", true)]);
        assert_eq!(start(&mut s, 2, &[]), vec![("a/f".into(), vec![1]), ("b/f".into(), vec![2])]);
        assert_eq!(s.drain(), vec![3]);
        assert!(s.is_empty());
    }

    #[test]
    fn files_of_one_directory_start_as_one_task() {
        let mut s = schedule(&[
            (1, "d/a", true),
            (2, "e/x", true),
            (3, "d/b", false),
            (4, "d/a", true),
            (5, "d/sub/", false),
            (6, "d/c", true),
            (7, "d/sub/y", true),
        ]);
        // d/a (1, 4 folded), d/b and d/c together; d/sub/ is a directory event
        // and d/sub/y another directory's file: tasks of their own (y behind sub/).
        assert_eq!(
            tasks(&mut s, 10, &[]),
            vec![
                vec![("d/a".into(), vec![1, 4]), ("d/b".into(), vec![3]), ("d/c".into(), vec![6])],
                vec![("e/x".into(), vec![2])],
                vec![("d/sub".into(), vec![5])],
            ]
        );
        assert_eq!(start(&mut s, 10, &[]), vec![("d/sub/y".into(), vec![7])]);
    }

    #[test]
    fn a_group_keeps_order_behind_rows_it_passes_over() {
        // d/ (a directory event) waits behind a lock; the files after it wait
        // behind it, and so does d/b behind d/b/c (a path below it).
        let mut s = schedule(&[(1, "d/a", true), (2, "d/b/c", true), (3, "d/b", true), (4, "d/e", true)]);
        assert_eq!(tasks(&mut s, 10, &["d/b/c"]), vec![vec![("d/a".into(), vec![1]), ("d/e".into(), vec![4])]]);
        let mut s = schedule(&[(1, "d/a", true), (2, "d/", false), (3, "d/e", true)]);
        assert_eq!(tasks(&mut s, 10, &[]), vec![vec![("d/a".into(), vec![1])]]);
        // At the root, every row below counts by its first component.
        let mut s = schedule(&[(1, "a", true), (2, "b/x", true), (3, "b", true), (4, "c", true)]);
        assert_eq!(
            tasks(&mut s, 10, &[]),
            vec![vec![("a".into(), vec![1]), ("c".into(), vec![4])], vec![("b/x".into(), vec![2])]]
        );
    }

    #[test]
    fn no_two_started_batches_overlap() {
        // Property over many random queues: batches that start together never
        // overlap, and every row is started exactly once overall.
        let mut rng = fastrand::Rng::with_seed(7);
        let names = ["a", "a/b", "a/b/c", "b", "b/x", "c"];
        for _ in 0..200 {
            let rows: Vec<(i64, &str, bool)> =
                (0..20).map(|i| (i, names[rng.usize(..names.len())], rng.bool())).collect();
            let mut s = schedule(&rows);
            let mut seen = HashSet::new();
            while !s.is_empty() {
                let started = start(&mut s, 4, &[]);
                assert!(!started.is_empty(), "nothing could start: a row waits on nothing");
                let paths: Vec<RemotePath> = started.iter().map(|(p, _)| RemotePath::parse(p).unwrap()).collect();
                for (i, a) in paths.iter().enumerate() {
                    for b in &paths[i + 1..] {
                        assert!(!a.overlaps(b), "{a} and {b} started together");
                    }
                }
                for (_, seqs) in started {
                    for q in seqs {
                        assert!(seen.insert(q), "row {q} started twice");
                    }
                }
            }
            assert_eq!(seen.len(), 20);
        }
    }
}
