//! The admin listener (`admin.listen`, loopback by default): `GET /healthz`
//! and `GET /metrics` (Prometheus text format). Reads state, changes nothing.

use crate::daemon::LastReconcile;
use crate::journal::Journal;
use crate::sync::Syncer;
use crate::webhook::routes::LATENCY_BUCKETS;
use crate::webhook::Intake;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use warp::http::StatusCode;
use warp::Filter;

/// How long one health probe (journal write, SFTP stat) may take.
const PROBE_DEADLINE: Duration = Duration::from_secs(5);

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    /// Intake counters.
    pub intake: Arc<Intake>,
    /// Sync state and counters.
    pub syncer: Arc<Syncer>,
    /// The journal.
    pub journal: Journal,
    /// The last reconcile pass.
    pub last_reconcile: Arc<Mutex<Option<LastReconcile>>>,
    /// SFTP counts as down after this long unreachable.
    pub sftp_down_after: Duration,
}

/// The admin routes.
pub fn routes(
    state: AdminState,
) -> impl Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible> + Clone {
    let health = warp::path!("healthz").and(warp::get()).then({
        let s = state.clone();
        move || {
            let s = s.clone();
            async move { healthz(&s).await }
        }
    });
    let metrics = warp::path!("metrics").and(warp::get()).then(move || {
        let s = state.clone();
        async move {
            let mut r = warp::reply::Response::new(metrics(&s).await.into());
            r.headers_mut().insert(
                "content-type",
                warp::http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
    });
    health
        .or(metrics)
        .unify()
        .or(warp::any().map(|| {
            let mut r = warp::reply::Response::new("not found\n".into());
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }))
        .unify()
}

async fn healthz(s: &AdminState) -> warp::reply::Response {
    let mut problems: Vec<String> = Vec::new();
    match tokio::time::timeout(PROBE_DEADLINE, s.journal.probe()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => problems.push(format!("journal unwritable: {e}")),
        Err(_) => problems.push("journal unwritable: probe timed out".into()),
    }
    let probe = tokio::time::timeout(PROBE_DEADLINE, s.syncer.remote.stat(b"")).await;
    if let Some(down) = s.syncer.remote.down_for().filter(|d| *d >= s.sftp_down_after) {
        let why = s.syncer.remote.last_error().unwrap_or_default();
        problems.push(format!("SFTP server unreachable for {}s: {why}", down.as_secs()));
    } else if let Ok(Err(e)) = &probe {
        if !e.is_transport()
            && !matches!(e, crate::remote::RemoteError::Connect { .. } | crate::remote::RemoteError::Backoff { .. })
        {
            problems.push(format!("SFTP remote root: {e}"));
        }
    }
    let m = s.syncer.mirror.clone();
    let staging = tokio::task::spawn_blocking(move || m.staging_file().map(drop)).await;
    match staging {
        Ok(Ok(())) => {}
        Ok(Err(e)) => problems.push(format!("staging not writable: {e}")),
        Err(e) => problems.push(format!("staging probe failed: {e}")),
    }
    let last = s.last_reconcile.lock().expect("not poisoned").clone();
    let body = serde_json::json!({
        "status": if problems.is_empty() { "ok" } else { "unhealthy" },
        "reasons": problems,
        "last_reconcile": last.map(|l| serde_json::json!({"at_ms": l.at_ms, "ok": l.ok, "result": l.result})),
    });
    let mut r = warp::reply::Response::new(format!("{body}\n").into());
    *r.status_mut() = if problems.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    r.headers_mut().insert("content-type", warp::http::HeaderValue::from_static("application/json"));
    r
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Renders every metric; names are documented in README.md.
async fn metrics(s: &AdminState) -> String {
    let mut o = String::new();
    let mut family = |name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family("sftp_mirror_webhook_requests_total", "counter", "Webhook requests by topic and result.");
    let results = s.intake.stats.results.lock().expect("not poisoned").clone();
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
        cumulative += s.intake.stats.latency_buckets[i].load(Ordering::Relaxed);
        let _ = writeln!(o, "sftp_mirror_webhook_request_duration_seconds_bucket{{le=\"{b}\"}} {cumulative}");
    }
    cumulative += s.intake.stats.latency_buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
    let _ = writeln!(o, "sftp_mirror_webhook_request_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}");
    let sum = s.intake.stats.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
    let _ = writeln!(o, "sftp_mirror_webhook_request_duration_seconds_sum {sum}");
    let _ = writeln!(o, "sftp_mirror_webhook_request_duration_seconds_count {cumulative}");

    let _ = writeln!(o, "# HELP sftp_mirror_applies_total Mirror operations by action and result.");
    let _ = writeln!(o, "# TYPE sftp_mirror_applies_total counter");
    let applies = s.syncer.stats.applies.lock().expect("not poisoned").clone();
    for ((action, result), n) in applies {
        let _ = writeln!(o, "sftp_mirror_applies_total{{action=\"{action}\",result=\"{result}\"}} {n}");
    }
    let st = &s.syncer.stats;
    for (name, help, v) in [
        ("sftp_mirror_downloaded_bytes_total", "Bytes downloaded into the mirror.", st.bytes.load(Ordering::Relaxed)),
        ("sftp_mirror_downloaded_files_total", "Files downloaded into the mirror.", st.files.load(Ordering::Relaxed)),
        (
            "sftp_mirror_received_bytes_total",
            "Bytes read from the server into staging files as they arrive (retries included): the transfer rate.",
            st.received.load(Ordering::Relaxed),
        ),
        (
            "sftp_mirror_sftp_connects_total",
            "Successful SSH connects (reconnects included).",
            s.syncer.remote.connects(),
        ),
    ] {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
    }
    let _ = writeln!(o, "# HELP sftp_mirror_sftp_up Whether the SFTP server is reachable (no failing connects).");
    let _ = writeln!(
        o,
        "# TYPE sftp_mirror_sftp_up gauge\nsftp_mirror_sftp_up {}",
        u8::from(s.syncer.remote.down_for().is_none())
    );

    if let Some(h) = &s.syncer.hooks {
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
    let counts = s.journal.counts().await.unwrap_or_default();
    for status in ["pending", "running", "done", "failed", "ignored"] {
        let n = counts.iter().find(|(st, _)| st.as_str() == status).map_or(0, |(_, n)| *n);
        let _ = writeln!(o, "sftp_mirror_journal_events{{status=\"{status}\"}} {n}");
    }

    let last = s.last_reconcile.lock().expect("not poisoned").clone();
    let _ = writeln!(
        o,
        "# HELP sftp_mirror_last_reconcile_timestamp_seconds When the last reconcile pass ended (0: none yet)."
    );
    let _ = writeln!(o, "# TYPE sftp_mirror_last_reconcile_timestamp_seconds gauge");
    let _ = writeln!(
        o,
        "sftp_mirror_last_reconcile_timestamp_seconds {}",
        last.as_ref().map_or(0.0, |l| l.at_ms as f64 / 1000.0)
    );
    let _ = writeln!(
        o,
        "# HELP sftp_mirror_last_reconcile_success Whether the last reconcile pass converged without failures."
    );
    let _ = writeln!(o, "# TYPE sftp_mirror_last_reconcile_success gauge");
    let _ = writeln!(o, "sftp_mirror_last_reconcile_success {}", last.map_or(0, |l| u8::from(l.ok)));
    o
}
