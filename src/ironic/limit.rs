//! The cap on concurrent Ironic requests, and the pause after Ironic says it is busy.
//!
//! Ironic's API is one Python process next to its conductor: a cold start of thousands of
//! hosts, each a few requests, would otherwise queue hundreds of requests there at once.
//! Every request holds one permit of a shared semaphore while it is sent and its body read.
//! A 503 (overloaded, restarting behind a load balancer) or a 429 makes the request keep its
//! permit for a growing pause (100 ms doubling to 5 s, or `Retry-After`
//! when Ironic gives one, capped at 30 s), so a busy Ironic sees fewer requests, not more;
//! any other answer resets the pause. The caller still gets the error and retries on its own
//! schedule (the reconciler's per-host backoff).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};
use tokio::sync::{Semaphore, SemaphorePermit};

/// Default number of requests in flight to Ironic per process.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4;
/// First pause after a busy answer.
const PAUSE_MIN: Duration = Duration::from_millis(100);
/// Longest pause without a `Retry-After`.
const PAUSE_MAX: Duration = Duration::from_secs(5);
/// Longest `Retry-After` honoured.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(30);

/// Shared by every clone of one client.
#[derive(Debug)]
pub(crate) struct Limiter {
    permits: Semaphore,
    max: usize,
    busy_streak: AtomicU32,
}

/// What an answer means for the pace of the next requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Ironic is busy (503, 429): pause, optionally as long as it asked.
    Busy(Option<Duration>),
    /// Anything else.
    Normal,
}

impl Limiter {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        let max = max.max(1);
        Arc::new(Self {
            permits: Semaphore::new(max),
            max,
            busy_streak: AtomicU32::new(0),
        })
    }

    /// The configured cap.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Waits for a free slot.
    pub(crate) async fn acquire(&self) -> SemaphorePermit<'_> {
        // The semaphore is never closed, so acquiring cannot fail.
        self.permits
            .acquire()
            .await
            .unwrap_or_else(|_| unreachable!("the semaphore is never closed"))
    }

    /// How long the slot stays taken after `answer` (zero for a normal answer).
    pub(crate) fn pause_after(&self, answer: Answer) -> Duration {
        match answer {
            Answer::Normal => {
                self.busy_streak.store(0, Ordering::Relaxed);
                Duration::ZERO
            }
            Answer::Busy(asked) => {
                let n = self.busy_streak.fetch_add(1, Ordering::Relaxed);
                pause(n, asked)
            }
        }
    }
}

/// The pause after the `streak`-th busy answer in a row.
fn pause(streak: u32, asked: Option<Duration>) -> Duration {
    match asked {
        Some(d) => d.min(RETRY_AFTER_MAX),
        None => PAUSE_MIN.saturating_mul(1 << streak.min(16)).min(PAUSE_MAX),
    }
}

/// Classifies a response: `retry_after` is the raw `Retry-After` header (seconds form only).
pub(crate) fn classify(status: u16, retry_after: Option<&str>) -> Answer {
    let asked = retry_after
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    match status {
        503 | 429 => Answer::Busy(asked),
        // A node lock is one node's short task, not a busy Ironic: `retry_locked` retries
        // that node's write every 200 ms while other nodes proceed at full pace.
        _ => Answer::Normal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_answers_pause_longer_each_time_and_a_normal_one_resets() {
        let l = Limiter::new(2);
        let busy = Answer::Busy(None);
        let pauses: Vec<u128> = (0..8).map(|_| l.pause_after(busy).as_millis()).collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(l.pause_after(Answer::Normal), Duration::ZERO);
        assert_eq!(l.pause_after(busy), PAUSE_MIN);
        assert_eq!(
            l.pause_after(Answer::Busy(Some(Duration::from_secs(3)))),
            Duration::from_secs(3)
        );
        assert_eq!(
            l.pause_after(Answer::Busy(Some(Duration::from_secs(3600)))),
            RETRY_AFTER_MAX
        );
    }

    #[test]
    fn classify_table() {
        let cases = [
            (503, "", None, Answer::Busy(None)),
            (429, "", Some("2"), Answer::Busy(Some(Duration::from_secs(2)))),
            (503, "", Some("Wed, 21 Oct 2015 07:28:00 GMT"), Answer::Busy(None)),
            (409, "Node x is locked by host y", None, Answer::Normal),
            (409, "already exists", None, Answer::Normal),
            (500, "", None, Answer::Normal),
            (200, "", None, Answer::Normal),
            (404, "", None, Answer::Normal),
        ];
        for (status, body, retry, want) in cases {
            assert_eq!(classify(status, retry), want, "{status} {body}");
        }
    }

    #[tokio::test]
    async fn never_more_than_max_permits() {
        let l = Limiter::new(0);
        assert_eq!(l.max(), 1, "a zero cap would deadlock; it means 1");
        let l = Limiter::new(2);
        let a = l.acquire().await;
        let _b = l.acquire().await;
        assert!(l.permits.try_acquire().is_err());
        drop(a);
        assert!(l.permits.try_acquire().is_ok());
    }
}
