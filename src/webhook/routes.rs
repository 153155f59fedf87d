//! The HTTP answers of SPEC §3, as one warp filter over a shared [`Intake`].
//!
//! Order of checks: path (404), method (405), size (413), signature and
//! Authorization on the raw bytes (401, nothing recorded), JSON and path (400,
//! nothing recorded), durable journal commit (204, or 503 so the sender retries).

use super::verify::{Verifier, VerifyError};
use crate::event::Event;
use crate::journal::{Journal, NewEvent, Recorded};
use crate::sync::Filter;
use bytes::{Buf, BytesMut};
use futures::{Stream, StreamExt};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use warp::http::{HeaderMap, Method, StatusCode};
use warp::Filter as _;

/// How long a journal commit may take before we answer 503: SFTP To Go expects
/// an answer within a few seconds and retries a 503.
pub const JOURNAL_DEADLINE: Duration = Duration::from_secs(4);
/// How long the body may take to arrive.
pub const BODY_DEADLINE: Duration = Duration::from_secs(10);

/// Upper bounds (seconds) of the request latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Intake counters (exposed on `/metrics`).
#[derive(Debug, Default)]
pub struct IntakeStats {
    /// Requests by (topic, result); the topic is "unknown" when the request was
    /// refused before its body was trusted.
    pub results: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// Request latency: counts per bucket of [`LATENCY_BUCKETS`] (cumulative at export), then +Inf.
    pub latency_buckets: [AtomicU64; 13],
    /// Sum of request latencies, microseconds.
    pub latency_sum_us: AtomicU64,
    /// Refusal log lines, at most one per second per kind.
    refusals: RefusalLog,
}

/// At most one log line per second per kind of refusal (SPEC §10): a flood of
/// bad requests must not flood the journal; the counters stay exact.
#[derive(Debug, Default)]
struct RefusalLog {
    /// kind → (when it was last logged, refusals not logged since).
    last: Mutex<BTreeMap<&'static str, (std::time::Instant, u64)>>,
}

impl RefusalLog {
    /// How often one kind may be logged.
    const EVERY: Duration = Duration::from_secs(1);

    fn warn(&self, kind: &'static str, why: &dyn std::fmt::Display) {
        self.log(kind, false, why);
    }

    fn error(&self, kind: &'static str, why: &dyn std::fmt::Display) {
        self.log(kind, true, why);
    }

    fn log(&self, kind: &'static str, error: bool, why: &dyn std::fmt::Display) {
        let now = std::time::Instant::now();
        let mut last = self.last.lock().expect("not poisoned");
        match last.get_mut(kind) {
            Some((at, quiet)) if now.duration_since(*at) < Self::EVERY => *quiet += 1,
            entry => {
                let quiet = entry.map_or(0, |(_, q)| *q);
                last.insert(kind, (now, 0));
                drop(last);
                let more =
                    if quiet > 0 { format!(" (and {quiet} more since the last such line)") } else { String::new() };
                if error {
                    tracing::error!("webhook not recorded ({kind}): {why}{more}");
                } else {
                    tracing::warn!("webhook refused ({kind}): {why}{more}");
                }
            }
        }
    }
}

impl IntakeStats {
    fn count(&self, topic: &str, result: &'static str) {
        *self.results.lock().expect("not poisoned").entry((topic.to_owned(), result)).or_default() += 1;
    }

    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(LATENCY_BUCKETS.len());
        self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
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
            async move {
                let started = std::time::Instant::now();
                let r = handle(&intake, method, path.as_str(), &headers, body).await;
                intake.stats.observe(started.elapsed());
                r
            }
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

/// Bytes of a refused body read and thrown away before answering `413`.
pub const DRAIN_MAX: u64 = 8 << 20;
/// How long that may take.
const DRAIN_DEADLINE: Duration = Duration::from_secs(2);

/// Answers `413` after reading and discarding up to [`DRAIN_MAX`] more of the
/// body (lingering close, as nginx does): a client that sends its whole body
/// before it reads (Python's http.client) then sees the 413, not a reset.
/// Without `drain` (a declared length past what would be drained anyway) it
/// answers at once.
async fn too_large<S, B>(mut body: S, drain: bool) -> warp::reply::Response
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let drain_body = async {
        let mut seen = 0u64;
        while let Some(Ok(chunk)) = body.next().await {
            seen += chunk.remaining() as u64;
            if seen > DRAIN_MAX {
                break;
            }
        }
    };
    if drain {
        let _ = tokio::time::timeout(DRAIN_DEADLINE, drain_body).await;
    }
    let mut r = answer(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
    r.headers_mut().insert("connection", warp::http::HeaderValue::from_static("close"));
    r
}

/// Reads the body, refusing it as soon as it exceeds `max` (chunked bodies included).
async fn read_limited<S, B>(body: &mut S, max: u64) -> Result<Option<BytesMut>, String>
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
    let mut body = Box::pin(body);
    if let Some(n) = declared.filter(|n| *n > intake.max_body) {
        stats.count("unknown", "too_large");
        stats.refusals.warn("413", &format_args!("declared body of {n} bytes > webhook.max_body {}", intake.max_body));
        return too_large(body, n <= DRAIN_MAX).await;
    }
    let body = match tokio::time::timeout(BODY_DEADLINE, read_limited(&mut body, intake.max_body)).await {
        Err(_) => return answer(StatusCode::REQUEST_TIMEOUT, "body not received in time"),
        Ok(Err(e)) => {
            stats.count("unknown", "bad_request");
            return answer(StatusCode::BAD_REQUEST, &format!("cannot read body: {e}"));
        }
        Ok(Ok(None)) => {
            stats.count("unknown", "too_large");
            stats.refusals.warn("413", &format_args!("body over webhook.max_body {}", intake.max_body));
            return too_large(body, true).await;
        }
        Ok(Ok(Some(b))) => b.freeze(),
    };

    let signatures: Vec<&[u8]> = headers.get_all("x-hub-signature").iter().map(|v| v.as_bytes()).collect();
    let authorizations: Vec<&[u8]> = headers.get_all("authorization").iter().map(|v| v.as_bytes()).collect();
    let verifier = intake.verifier.read().expect("not poisoned").clone();
    let checked = match authorizations.as_slice() {
        // Two values are ambiguous (a proxy in front may have checked the other
        // one): refused, like two signatures.
        [_, _, ..] if verifier.checks_authorization() => Err(VerifyError::AuthorizationMismatch),
        a => verifier.verify(&signatures, a.first().copied(), &body),
    };
    let verified = match checked {
        Ok(v) => v,
        Err(e) => {
            stats.count("unknown", "unauthorized");
            stats.refusals.warn("401", &e);
            return answer(StatusCode::UNAUTHORIZED, &e.to_string());
        }
    };
    let event = match Event::parse(verified.bytes()) {
        Ok(e) => e,
        Err(e) => {
            stats.count("unknown", "bad_request");
            stats.refusals.warn("400", &e);
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
                    stats.count(event.topic.as_str(), "queued");
                    intake.wake.notify_one();
                }
                Recorded::Duplicate => {
                    stats.count(event.topic.as_str(), "duplicate");
                }
                Recorded::Ignored => {
                    stats.count(event.topic.as_str(), "ignored");
                }
            }
            tracing::debug!(event = %event.id, topic = event.topic.as_str(),
                path = ?event.path.as_ref().map(|p| p.to_string()), outcome = ?r, "webhook accepted");
            answer(StatusCode::NO_CONTENT, "")
        }
        Ok(Err(e)) => {
            stats.count(event.topic.as_str(), "unavailable");
            stats.refusals.error("503", &format_args!("event {}: {e}", event.id));
            answer(StatusCode::SERVICE_UNAVAILABLE, "journal unavailable, retry later")
        }
        Err(_) => {
            stats.count(event.topic.as_str(), "unavailable");
            stats.refusals.error("503", &format_args!("journal commit took longer than {JOURNAL_DEADLINE:?}"));
            answer(StatusCode::SERVICE_UNAVAILABLE, "journal too slow, retry later")
        }
    }
}
