//! `/metrics` in the Prometheus text format: the counters of intake, the
//! syncer and the hooks, the journal's rows by status, the last reconcile.
//! Pure rendering; the admin listener gathers what it reads.

use crate::journal::Status;
use crate::sync::reconcile::LastReconcile;
use crate::sync::Syncer;
use crate::webhook::routes::LATENCY_BUCKETS;
use crate::webhook::Intake;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

/// Renders every metric from the daemon's counters, the journal's row counts
/// by status and the last reconcile pass; names are documented in README.md.
pub fn render(intake: &Intake, syncer: &Syncer, counts: &[(Status, u64)], last: Option<&LastReconcile>) -> String {
    let mut o = String::new();
    let mut family = |name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family("sftp_mirror_webhook_requests_total", "counter", "Webhook requests by topic and result.");
    let results = intake.stats.results.lock().expect("not poisoned").clone();
    let mut lines = String::new();
    for ((topic, result), n) in results {
        let _ =
            writeln!(lines, "sftp_mirror_webhook_requests_total{{topic=\"{}\",result=\"{result}\"}} {n}", esc(&topic));
    }
    o.push_str(&lines);

    o.push_str("# HELP sftp_mirror_webhook_request_duration_seconds Webhook request latency.\n");
    o.push_str("# TYPE sftp_mirror_webhook_request_duration_seconds histogram\n");
    let mut cumulative = 0;
    for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
        cumulative += intake.stats.latency_buckets[i].load(Ordering::Relaxed);
        let _ = writeln!(o, "sftp_mirror_webhook_request_duration_seconds_bucket{{le=\"{b}\"}} {cumulative}");
    }
    cumulative += intake.stats.latency_buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
    let _ = writeln!(o, "sftp_mirror_webhook_request_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}");
    let sum = intake.stats.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
    let _ = writeln!(o, "sftp_mirror_webhook_request_duration_seconds_sum {sum}");
    let _ = writeln!(o, "sftp_mirror_webhook_request_duration_seconds_count {cumulative}");

    let _ = writeln!(o, "# HELP sftp_mirror_applies_total Mirror operations by action and result.");
    let _ = writeln!(o, "# TYPE sftp_mirror_applies_total counter");
    let applies = syncer.stats.applies.lock().expect("not poisoned").clone();
    for ((action, result), n) in applies {
        let _ = writeln!(o, "sftp_mirror_applies_total{{action=\"{action}\",result=\"{result}\"}} {n}");
    }
    let st = &syncer.stats;
    for (name, help, v) in [
        ("sftp_mirror_downloaded_bytes_total", "Bytes downloaded into the mirror.", st.bytes.load(Ordering::Relaxed)),
        ("sftp_mirror_downloaded_files_total", "Files downloaded into the mirror.", st.files.load(Ordering::Relaxed)),
        (
            "sftp_mirror_received_bytes_total",
            "Bytes read from the server into staging files as they arrive (retries included): the transfer rate.",
            st.received.load(Ordering::Relaxed),
        ),
        ("sftp_mirror_sftp_connects_total", "Successful SSH connects (reconnects included).", syncer.remote.connects()),
    ] {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
    }
    let _ = writeln!(o, "# HELP sftp_mirror_sftp_up Whether the SFTP server is reachable (no failing connects).");
    let _ = writeln!(
        o,
        "# TYPE sftp_mirror_sftp_up gauge\nsftp_mirror_sftp_up {}",
        u8::from(syncer.remote.down_for().is_none())
    );

    if let Some(h) = &syncer.hooks {
        let _ = writeln!(o, "# HELP sftp_mirror_hook_runs_total Hook runs by hook and result (ok, failed, timeout).");
        let _ = writeln!(o, "# TYPE sftp_mirror_hook_runs_total counter");
        let runs = h.stats.runs.lock().expect("not poisoned").clone();
        for ((hook, result), n) in runs {
            let _ = writeln!(o, "sftp_mirror_hook_runs_total{{hook=\"{hook}\",result=\"{result}\"}} {n}");
        }
        let _ = writeln!(o, "# HELP sftp_mirror_hook_duration_seconds How long hook runs took.");
        let _ = writeln!(o, "# TYPE sftp_mirror_hook_duration_seconds summary");
        let _ = writeln!(
            o,
            "sftp_mirror_hook_duration_seconds_sum {}\nsftp_mirror_hook_duration_seconds_count {}",
            h.stats.micros.load(Ordering::Relaxed) as f64 / 1e6,
            h.stats.timed.load(Ordering::Relaxed)
        );
    }

    let _ = writeln!(o, "# HELP sftp_mirror_journal_events Journal rows by status.");
    let _ = writeln!(o, "# TYPE sftp_mirror_journal_events gauge");
    for status in ["pending", "running", "done", "failed", "ignored"] {
        let n = counts.iter().find(|(st, _)| st.as_str() == status).map_or(0, |(_, n)| *n);
        let _ = writeln!(o, "sftp_mirror_journal_events{{status=\"{status}\"}} {n}");
    }

    let _ = writeln!(
        o,
        "# HELP sftp_mirror_last_reconcile_timestamp_seconds When the last reconcile pass ended (0: none yet)."
    );
    let _ = writeln!(o, "# TYPE sftp_mirror_last_reconcile_timestamp_seconds gauge");
    let _ =
        writeln!(o, "sftp_mirror_last_reconcile_timestamp_seconds {}", last.map_or(0.0, |l| l.at_ms as f64 / 1000.0));
    let _ = writeln!(
        o,
        "# HELP sftp_mirror_last_reconcile_success Whether the last reconcile pass converged without failures."
    );
    let _ = writeln!(o, "# TYPE sftp_mirror_last_reconcile_success gauge");
    let _ = writeln!(o, "sftp_mirror_last_reconcile_success {}", last.map_or(0, |l| u8::from(l.ok)));
    o
}

/// A label value, escaped as the text format requires.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
