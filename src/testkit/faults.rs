//! Fault injection for the embedded SFTP server.
//!
//! [`Faults`] is a cheap, cloneable handle onto one shared fault table. Tests keep a
//! clone and change it while the server runs; the SFTP handler (`sftp.rs`) consults
//! it on every request. A fault only changes what goes on the wire (a status code,
//! a shorter READ, a delay, a dropped connection); it never panics the server.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use russh_sftp::protocol::StatusCode;

/// The request families a [`Faults::fail`] rule can target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Request {
    /// `SSH_FXP_OPEN`.
    Open,
    /// `SSH_FXP_STAT`, `SSH_FXP_LSTAT` and `SSH_FXP_FSTAT` (matched on the handle's path).
    Stat,
    /// `SSH_FXP_OPENDIR` and `SSH_FXP_READDIR` (matched on the handle's path).
    Readdir,
}

/// Shared, thread-safe fault table of a test server.
///
/// Cloning gives another handle onto the same table, so a test can keep one and flip
/// faults on and off while clients are connected. The default has no faults.
#[derive(Clone, Default, Debug)]
pub struct Faults(Arc<Mutex<State>>);

#[derive(Default, Debug)]
struct State {
    drop_rule: Option<DropRule>,
    /// Bumped whenever a drop rule is armed, so connections restart their count.
    drop_generation: u64,
    delay: Duration,
    failures: Vec<FailRule>,
    short_read: Option<u32>,
    lies: Lies,
    /// File bytes served by READs, all connections together.
    served: u64,
    /// READs at an offset below one already asked on the same handle: the
    /// client re-asked for the remainder of a short reply out of order.
    rereads: u64,
    /// Connections still to stall (see [`Faults::stall_handshakes`]).
    stall_handshakes: u32,
    /// Logins still to answer by closing the connection (see [`Faults::drop_at_login`]).
    drop_logins: u32,
    /// Requests seen, by family (see [`Faults::requests`]).
    seen: std::collections::HashMap<Request, u64>,
}

/// What a lying server says (see [`Faults::lie`]).
#[derive(Clone, Debug, Default)]
pub struct Lies {
    /// Extra entries every listing of a directory whose path contains the key
    /// shows, as directories: `""`, `"a/b"`, the directory's own name …
    pub extra_dir_entries: Vec<(String, Vec<String>)>,
    /// Sizes reported for files whose path contains the key (stat and listings).
    pub sizes: Vec<(String, u64)>,
    /// Listings of directories whose path contains one of these never end:
    /// every READDIR returns another batch of made-up files.
    pub endless_listings: Vec<String>,
    /// READs are never answered.
    pub stall_reads: bool,
}

impl Faults {
    /// The next `n` connections are accepted and never spoken to (a server
    /// that takes TCP and stalls the SSH handshake).
    pub fn stall_handshakes(&self, n: u32) {
        self.state().stall_handshakes = n;
    }

    /// The next `n` login attempts are answered by closing the connection (a
    /// server that dies or restarts while a client logs in).
    pub fn drop_at_login(&self, n: u32) {
        self.state().drop_logins = n;
    }

    /// Whether this login attempt is to be answered by closing (counts it).
    pub(crate) fn take_dropped_login(&self) -> bool {
        take_one(&mut self.state().drop_logins)
    }

    /// Whether the connection just accepted is to be stalled (counts it).
    pub(crate) fn take_stalled_handshake(&self) -> bool {
        take_one(&mut self.state().stall_handshakes)
    }
}

/// Counts one down from `left`; whether there was one to take.
fn take_one(left: &mut u32) -> bool {
    let had = *left > 0;
    *left = left.saturating_sub(1);
    had
}

#[derive(Clone, Copy, Debug)]
struct DropRule {
    after: u64,
    once: bool,
    generation: u64,
}

#[derive(Clone, Debug)]
struct FailRule {
    op: Request,
    needle: String,
    status: StatusCode,
}

impl Faults {
    /// A fault table with nothing armed (same as `Faults::default()`).
    pub fn new() -> Self {
        Self::default()
    }

    // A poisoned lock only means a panic elsewhere while holding it; the table is
    // plain data and stays usable, and a fault must never take the server down.
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Close the whole SSH connection once `n` file bytes were served on it; `None`
    /// disarms. Persistent: applies to every connection, each counting its own bytes.
    ///
    /// Bytes are counted from the moment the rule is armed (or the connection starts,
    /// if later). READ replies are shortened so that exactly `n` bytes go out; the
    /// first READ after that drops the connection without replying.
    pub fn drop_after_read_bytes(&self, n: Option<u64>) {
        self.arm_drop(n, false);
    }

    /// Like [`Faults::drop_after_read_bytes`] but fires on one connection only, then
    /// disarms itself: the client's reconnect then succeeds.
    pub fn drop_once_after_read_bytes(&self, n: u64) {
        self.arm_drop(Some(n), true);
    }

    fn arm_drop(&self, n: Option<u64>, once: bool) {
        let mut st = self.state();
        st.drop_generation += 1;
        let generation = st.drop_generation;
        st.drop_rule = n.map(|after| DropRule { after, once, generation });
    }

    /// Sleep `d` before each reply (every request type); `Duration::ZERO` turns it off.
    pub fn delay_replies(&self, d: Duration) {
        self.state().delay = d;
    }

    /// Make requests of kind `op` whose normalised path (`/a/b`) contains
    /// `path_contains` fail with `status`. Rules accumulate; the first match wins.
    /// An empty `path_contains` matches every path.
    pub fn fail(&self, op: Request, path_contains: &str, status: StatusCode) {
        self.state().failures.push(FailRule { op, needle: path_contains.to_owned(), status });
    }

    /// Remove every [`Faults::fail`] rule, leaving other faults armed.
    pub fn clear_failures(&self) {
        self.state().failures.clear();
    }

    /// Answer each READ with at most `max` bytes (a valid SFTP short read); `None`
    /// turns it off. `Some(0)` is treated as `Some(1)` so reads still progress.
    pub fn short_reads(&self, max: Option<u32>) {
        self.state().short_read = max.map(|m| m.max(1));
    }

    /// Makes the server lie as `lies` says (replacing earlier lies).
    pub fn lie(&self, lies: Lies) {
        self.state().lies = lies;
    }

    /// Disarm every fault.
    pub fn clear(&self) {
        let mut st = self.state();
        st.drop_rule = None;
        st.delay = Duration::ZERO;
        st.failures.clear();
        st.short_read = None;
        st.lies = Lies::default();
    }

    /// File bytes served by READs so far, all connections together.
    pub fn bytes_served(&self) -> u64 {
        self.state().served
    }

    /// READs that asked below an offset already asked on the same handle
    /// (scattered requests: what a sequential backend serves slowest).
    pub fn out_of_order_reads(&self) -> u64 {
        self.state().rereads
    }

    pub(crate) fn record_read(&self, served: u64, out_of_order: bool) {
        let mut st = self.state();
        st.served += served;
        st.rereads += u64::from(out_of_order);
    }

    /// The lies in force.
    pub(crate) fn lies(&self) -> Lies {
        self.state().lies.clone()
    }

    /// How long to wait before replying to the current request.
    pub(crate) fn reply_delay(&self) -> Duration {
        self.state().delay
    }

    /// The status a request of kind `op` on `path` must fail with, if any.
    pub(crate) fn failure_for(&self, op: Request, path: &str) -> Option<StatusCode> {
        self.state().failures.iter().find(|r| r.op == op && path.contains(&r.needle)).map(|r| r.status)
    }

    /// Counts a request of family `op` (see [`Faults::requests`]).
    pub(crate) fn record_request(&self, op: Request) {
        *self.state().seen.entry(op).or_default() += 1;
    }

    /// Requests of family `op` the server has answered so far, all
    /// connections together (what a client cost the server).
    pub fn requests(&self, op: Request) -> u64 {
        self.state().seen.get(&op).copied().unwrap_or(0)
    }

    /// The largest READ reply currently allowed by [`Faults::short_reads`].
    pub(crate) fn read_cap(&self) -> Option<u32> {
        self.state().short_read
    }

    /// Decide how many bytes the next READ on a connection may serve.
    pub(crate) fn read_allowance(&self, counter: &ReadCounter) -> Allowance {
        let mut st = self.state();
        let Some(rule) = st.drop_rule else {
            return Allowance::Unlimited;
        };
        let mut c = counter.lock();
        if c.generation != rule.generation {
            // Newly armed (or new connection): count from here.
            c.generation = rule.generation;
            c.base = c.served;
        }
        let used = c.served - c.base;
        if used < rule.after {
            return Allowance::Bytes(rule.after - used);
        }
        if rule.once {
            st.drop_rule = None;
        }
        Allowance::DropConnection
    }
}

/// What a READ may do under the drop-after-bytes fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Allowance {
    /// No drop fault armed.
    Unlimited,
    /// Serve at most this many bytes (always > 0).
    Bytes(u64),
    /// The budget is spent: drop the connection instead of replying.
    DropConnection,
}

/// Bytes served on one connection (all its SFTP channels), for the drop fault.
#[derive(Debug, Default)]
pub(crate) struct ReadCounter(Mutex<CounterState>);

#[derive(Debug, Default)]
pub(crate) struct CounterState {
    served: u64,
    generation: u64,
    base: u64,
}

impl ReadCounter {
    fn lock(&self) -> MutexGuard<'_, CounterState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Record `n` bytes sent in a READ reply.
    pub(crate) fn add(&self, n: u64) {
        self.lock().served += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_rules_match_by_op_and_substring() {
        let f = Faults::new();
        f.fail(Request::Open, "x", StatusCode::PermissionDenied);
        assert_eq!(f.failure_for(Request::Open, "/a/x.bin"), Some(StatusCode::PermissionDenied));
        assert_eq!(f.failure_for(Request::Stat, "/a/x.bin"), None);
        assert_eq!(f.failure_for(Request::Open, "/a/y.bin"), None);
        f.clear();
        assert_eq!(f.failure_for(Request::Open, "/a/x.bin"), None);
    }

    #[test]
    fn drop_budget_is_per_connection_and_once_disarms() {
        let f = Faults::new();
        let (a, b) = (ReadCounter::default(), ReadCounter::default());
        f.drop_once_after_read_bytes(10);
        assert_eq!(f.read_allowance(&a), Allowance::Bytes(10));
        a.add(10);
        assert_eq!(f.read_allowance(&b), Allowance::Bytes(10));
        assert_eq!(f.read_allowance(&a), Allowance::DropConnection);
        // One-shot: disarmed after firing.
        assert_eq!(f.read_allowance(&b), Allowance::Unlimited);

        f.drop_after_read_bytes(Some(5));
        // `a` already served 10 bytes, but counting restarts when a rule is armed.
        assert_eq!(f.read_allowance(&a), Allowance::Bytes(5));
        a.add(5);
        assert_eq!(f.read_allowance(&a), Allowance::DropConnection);
        assert_eq!(f.read_allowance(&a), Allowance::DropConnection);
    }
}
