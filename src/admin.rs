//! The admin listener (`admin.listen`, loopback by default): `GET /healthz`
//! and `GET /metrics` (Prometheus text format). Reads state, changes nothing.

use crate::journal::Journal;
use crate::sync::reconcile::LastReconcile;
use crate::sync::Syncer;
use crate::webhook::Intake;
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
            let counts = s.journal.counts().await.unwrap_or_default();
            let last = s.last_reconcile.lock().expect("not poisoned").clone();
            let text = crate::metrics::render(&s.intake, &s.syncer, &counts, last.as_ref());
            let mut r = warp::reply::Response::new(text.into());
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
