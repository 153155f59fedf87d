//! `mirror.bwlimit`: one byte budget per second shared by every download.
//!
//! A token bucket that may go into debt: a READ takes its length before it is
//! sent, and whoever drives the bucket below zero waits until the debt is
//! paid back at the configured rate. Concurrent transfers thus queue behind
//! each other's reservations and the sum stays at the rate, however many
//! READs are in flight. The rate can change at any time (SIGHUP).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;
// Tokio's clock, so tests can run the pacing on paused time.
use tokio::time::Instant;

/// How much unused budget may pile up: 50 ms worth, so an idle moment does
/// not let the next transfer start far above the rate (a quarter second let
/// a 1 s transfer finish 16% early).
const BURST: Duration = Duration::from_millis(50);

/// The shared budget. `Bandwidth::default()` is unlimited.
#[derive(Debug, Default)]
pub struct Bandwidth {
    /// Whether a rate is set: every READ of every download asks, so the
    /// unlimited case (the default) must not take the lock.
    limited: AtomicBool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Bytes per second; `None` = unlimited.
    rate: Option<u64>,
    /// Bytes that may go now (negative: owed).
    available: f64,
    last: Option<Instant>,
}

impl Bandwidth {
    /// A budget of `rate` bytes per second (`None`: unlimited).
    pub fn new(rate: Option<u64>) -> Bandwidth {
        let b = Bandwidth::default();
        b.set(rate);
        b
    }

    /// Changes the rate; transfers under way follow from their next READ.
    pub fn set(&self, rate: Option<u64>) {
        let mut s = self.state.lock().expect("not poisoned");
        s.rate = rate.filter(|&r| r > 0);
        s.available = s.available.min(0.0);
        s.last = Some(Instant::now());
        self.limited.store(s.rate.is_some(), Ordering::Relaxed);
    }

    /// The rate in bytes per second, if limited.
    pub fn rate(&self) -> Option<u64> {
        self.state.lock().expect("not poisoned").rate
    }

    /// Waits until `n` more bytes may be asked for.
    pub async fn take(&self, n: u64) {
        if !self.limited.load(Ordering::Relaxed) {
            return;
        }
        let wait = {
            let mut s = self.state.lock().expect("not poisoned");
            let Some(rate) = s.rate else { return };
            let now = Instant::now();
            let elapsed = s.last.map_or(0.0, |l| now.duration_since(l).as_secs_f64());
            let rate_f = rate as f64;
            s.available = (s.available + elapsed * rate_f).min(rate_f * BURST.as_secs_f64());
            s.last = Some(now);
            s.available -= n as f64;
            if s.available >= 0.0 {
                return;
            }
            Duration::from_secs_f64(-s.available / rate_f)
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_budget_is_shared_and_paced() {
        let bw = std::sync::Arc::new(Bandwidth::new(Some(1 << 20)));
        let start = tokio::time::Instant::now();
        // Four takers of 1 MiB each in 64 KiB steps: 4 MiB at 1 MiB/s is about
        // 4 s (less the 50 ms of burst the bucket may hold).
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let bw = bw.clone();
                tokio::spawn(async move {
                    for _ in 0..16 {
                        bw.take(64 << 10).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let took = start.elapsed().as_secs_f64();
        assert!((3.9..=4.05).contains(&took), "{took} s");
        bw.set(None);
        let before = tokio::time::Instant::now();
        bw.take(1 << 30).await;
        assert_eq!(before.elapsed(), Duration::ZERO, "unlimited never waits");
    }
}
