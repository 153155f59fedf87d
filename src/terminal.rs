//! What a person at a terminal sees of a one-shot command: the progress bar
//! of `reconcile`, and log lines written above it instead of through it.

use std::sync::atomic::{AtomicU64, Ordering};

/// The progress bar on the terminal, once there is one: log lines are written
/// above it, never through it.
static SHOWN_BAR: std::sync::OnceLock<indicatif::ProgressBar> = std::sync::OnceLock::new();

/// Stderr for log lines: one event is gathered, then written while the bar
/// (if any) is lifted, so the bar is redrawn below it and no frame is left behind.
pub struct LogWriter(pub Vec<u8>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        use std::io::Write;
        let write = || {
            let _ = std::io::stderr().lock().write_all(&self.0);
        };
        match SHOWN_BAR.get() {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }
}

/// A progress bar on a terminal; nothing otherwise (logs carry the story).
/// While changes apply it moves by bytes (a 1.5 GB file must not look stuck
/// at one entry), with the rate and ETA; entries are the second figure.
pub struct Bar {
    /// The bar itself; `None` off a terminal.
    pub bar: Option<indicatif::ProgressBar>,
    syncer: std::sync::Arc<crate::sync::Syncer>,
    /// `stats.received` when execution began: this pass's bytes are above it.
    base: AtomicU64,
    ops: AtomicU64,
    done: AtomicU64,
    by_bytes: std::sync::atomic::AtomicBool,
}

impl Bar {
    /// A bar on stderr if it is a terminal, reading `syncer`'s byte counter.
    pub fn new(syncer: std::sync::Arc<crate::sync::Syncer>) -> Bar {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.set_message("listing");
            let _ = SHOWN_BAR.set(b.clone());
            b
        });
        Bar {
            bar,
            syncer,
            base: AtomicU64::new(0),
            ops: AtomicU64::new(0),
            done: AtomicU64::new(0),
            by_bytes: false.into(),
        }
    }

    /// Brings the bar up to date with the bytes received so far.
    fn refresh(&self) {
        let Some(b) = &self.bar else { return };
        let (done, ops) = (self.done.load(Ordering::Relaxed), self.ops.load(Ordering::Relaxed));
        if self.by_bytes.load(Ordering::Relaxed) {
            let got = self.syncer.stats.received.load(Ordering::Relaxed) - self.base.load(Ordering::Relaxed);
            // Retried reads count twice on the wire: never past the end.
            b.set_position(got.min(b.length().unwrap_or(u64::MAX)));
            b.set_message(format!("{done}/{ops} changes"));
        } else {
            b.set_position(done);
        }
    }

    /// Keeps the bar moving between completions (one long download).
    pub fn ticker(self: &std::sync::Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        self.bar.as_ref()?;
        let me = self.clone();
        Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                me.refresh();
            }
        }))
    }
}

impl crate::sync::reconcile::Progress for Bar {
    fn listed(&self, entries: u64) {
        if let Some(b) = &self.bar {
            b.set_message(format!("listing: {entries} remote entries"));
            b.tick();
        }
    }
    fn executing(&self, ops: u64, bytes: u64) {
        let Some(b) = &self.bar else { return };
        self.ops.store(ops, Ordering::Relaxed);
        self.base.store(self.syncer.stats.received.load(Ordering::Relaxed), Ordering::Relaxed);
        self.by_bytes.store(bytes > 0, Ordering::Relaxed);
        b.set_message(format!("0/{ops} changes"));
        let template = if bytes > 0 {
            "[{wide_bar}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta} · {msg}"
        } else {
            "[{wide_bar}] {pos}/{len} changes"
        };
        b.set_style(
            indicatif::ProgressStyle::with_template(template)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_length(if bytes > 0 { bytes } else { ops });
        b.set_position(0);
        b.reset_eta();
        b.reset_elapsed();
        self.refresh();
    }
    fn done_one(&self, _op: &crate::sync::reconcile::Op, _ok: bool) {
        self.done.fetch_add(1, Ordering::Relaxed);
        self.refresh();
    }
}
