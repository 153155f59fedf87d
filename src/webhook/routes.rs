//! The HTTP answers of SPEC §3, as one warp filter over a shared [`Intake`].
//!
//! Order of checks: path (404), method (405), size (413), signature and
//! Authorization on the raw bytes (401, nothing recorded), JSON and path (400,
//! nothing recorded), durable journal commit (204, or 503 so the sender retries).

use super::verify::Verifier;
use crate::event::Event;
use crate::journal::{Journal, NewEvent, Recorded};
use crate::sync::Filter;
use bytes::{Buf, BytesMut};
use futures::{Stream, StreamExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use warp::http::{HeaderMap, Method, StatusCode};
use warp::Filter as _;

/// How long a journal commit may take before we answer 503: SFTP To Go expects
/// an answer within a few seconds and retries a 503.
pub const JOURNAL_DEADLINE: Duration = Duration::from_secs(4);
/// How long the body may take to arrive.
pub const BODY_DEADLINE: Duration = Duration::from_secs(10);

/// Intake counters (exposed on `/metrics`).
#[derive(Debug, Default)]
pub struct IntakeStats {
    /// Answered 204 and newly queued.
    pub queued: AtomicU64,
    /// Answered 204: duplicate id.
    pub duplicate: AtomicU64,
    /// Answered 204: ping / other topic / filtered path.
    pub ignored: AtomicU64,
    /// Answered 401.
    pub unauthorized: AtomicU64,
    /// Answered 400.
    pub bad_request: AtomicU64,
    /// Answered 413.
    pub too_large: AtomicU64,
    /// Answered 503.
    pub unavailable: AtomicU64,
}

/// Everything the endpoint needs; shared by all requests.
pub struct Intake {
    /// The checks; swapped on SIGHUP.
    pub verifier: RwLock<Arc<Verifier>>,
    /// Where events are recorded.
    pub journal: Journal,
    /// Notified when an event was queued.
    pub wake: Arc<Notify>,
    /// The webhook path, e.g. `/webhook`.
    pub path: String,
    /// Largest accepted body.
    pub max_body: u64,
    /// include/exclude: filtered paths are recorded as ignored.
    pub filter: Filter,
    /// Counters.
    pub stats: IntakeStats,
}

/// The warp filter answering every request (it rejects only when the body cannot be taken).
pub fn routes(
    intake: Arc<Intake>,
) -> impl warp::Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    warp::method().and(warp::path::full()).and(warp::header::headers_cloned()).and(warp::body::stream()).then(
        move |method: Method, path: warp::path::FullPath, headers: HeaderMap, body| {
            let intake = intake.clone();
            async move { handle(&intake, method, path.as_str(), &headers, body).await }
        },
    )
}

fn answer(status: StatusCode, text: &str) -> warp::reply::Response {
    let mut r = warp::reply::Response::new(if text.is_empty() { "".into() } else { format!("{text}\n").into() });
    *r.status_mut() = status;
    if !text.is_empty() {
        r.headers_mut().insert("content-type", warp::http::HeaderValue::from_static("text/plain; charset=utf-8"));
    }
    r
}

/// Reads the body, refusing it as soon as it exceeds `max` (chunked bodies included).
async fn read_limited<S, B>(mut body: S, max: u64) -> Result<Option<BytesMut>, String>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| e.to_string())?;
        if (buf.len() + chunk.remaining()) as u64 > max {
            return Ok(None);
        }
        while chunk.has_remaining() {
            let c = chunk.chunk();
            buf.extend_from_slice(c);
            let n = c.len();
            chunk.advance(n);
        }
    }
    Ok(Some(buf))
}

async fn handle<S, B>(
    intake: &Intake,
    method: Method,
    path: &str,
    headers: &HeaderMap,
    body: S,
) -> warp::reply::Response
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf,
{
    if path != intake.path {
        return answer(StatusCode::NOT_FOUND, "not found");
    }
    if method != Method::POST {
        let mut r = answer(StatusCode::METHOD_NOT_ALLOWED, "only POST is accepted here");
        r.headers_mut().insert("allow", warp::http::HeaderValue::from_static("POST"));
        return r;
    }
    let stats = &intake.stats;
    let declared = headers.get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > intake.max_body) {
        stats.too_large.fetch_add(1, Ordering::Relaxed);
        return answer(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
    }
    let body = match tokio::time::timeout(BODY_DEADLINE, read_limited(Box::pin(body), intake.max_body)).await {
        Err(_) => return answer(StatusCode::REQUEST_TIMEOUT, "body not received in time"),
        Ok(Err(e)) => {
            stats.bad_request.fetch_add(1, Ordering::Relaxed);
            return answer(StatusCode::BAD_REQUEST, &format!("cannot read body: {e}"));
        }
        Ok(Ok(None)) => {
            stats.too_large.fetch_add(1, Ordering::Relaxed);
            return answer(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
        }
        Ok(Ok(Some(b))) => b.freeze(),
    };

    let signatures: Vec<&[u8]> = headers.get_all("x-hub-signature").iter().map(|v| v.as_bytes()).collect();
    let authorization = headers.get("authorization").map(|v| v.as_bytes());
    let verifier = intake.verifier.read().expect("not poisoned").clone();
    let verified = match verifier.verify(&signatures, authorization, &body) {
        Ok(v) => v,
        Err(e) => {
            stats.unauthorized.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("webhook refused (401): {e}");
            return answer(StatusCode::UNAUTHORIZED, &e.to_string());
        }
    };
    let event = match Event::parse(verified.bytes()) {
        Ok(e) => e,
        Err(e) => {
            stats.bad_request.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("webhook refused (400): {e}");
            return answer(StatusCode::BAD_REQUEST, &e.to_string());
        }
    };
    let actionable = event.path.as_ref().is_some_and(|p| intake.filter.allows(p));
    let record = intake.journal.record(NewEvent {
        event_id: event.id.clone(),
        topic: event.topic.as_str().to_owned(),
        path: event.path.as_ref().map(|p| p.to_wire()),
        actionable,
        body: body.to_vec(),
    });
    match tokio::time::timeout(JOURNAL_DEADLINE, record).await {
        Ok(Ok(r)) => {
            match r {
                Recorded::Queued | Recorded::Requeued => {
                    stats.queued.fetch_add(1, Ordering::Relaxed);
                    intake.wake.notify_one();
                }
                Recorded::Duplicate => {
                    stats.duplicate.fetch_add(1, Ordering::Relaxed);
                }
                Recorded::Ignored => {
                    stats.ignored.fetch_add(1, Ordering::Relaxed);
                }
            }
            tracing::debug!(event = %event.id, topic = event.topic.as_str(),
                path = ?event.path.as_ref().map(|p| p.to_string()), outcome = ?r, "webhook accepted");
            answer(StatusCode::NO_CONTENT, "")
        }
        Ok(Err(e)) => {
            stats.unavailable.fetch_add(1, Ordering::Relaxed);
            tracing::error!(event = %event.id, "webhook not recorded (503): {e}");
            answer(StatusCode::SERVICE_UNAVAILABLE, "journal unavailable, retry later")
        }
        Err(_) => {
            stats.unavailable.fetch_add(1, Ordering::Relaxed);
            tracing::error!("webhook not recorded (503): journal commit took longer than {JOURNAL_DEADLINE:?}");
            answer(StatusCode::SERVICE_UNAVAILABLE, "journal too slow, retry later")
        }
    }
}
