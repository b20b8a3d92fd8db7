//! The rate at which jobs finish right now, kept in memory by the hub from
//! the jobs it sees end: what a waiting request's expected start and a
//! refused one's `Retry-After` are computed from.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The window the rate is taken over: short, to follow the load.
pub const RATE_WINDOW: Duration = Duration::from_secs(300);

/// Jobs ended per second of the last [`RATE_WINDOW`].
pub struct FinishRate {
    started: Instant,
    /// (second since `started`, jobs that ended in it), oldest first.
    seconds: Mutex<VecDeque<(u64, u64)>>,
}

impl Default for FinishRate {
    fn default() -> Self {
        FinishRate {
            started: Instant::now(),
            seconds: Mutex::new(VecDeque::new()),
        }
    }
}

impl FinishRate {
    fn second(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_secs()
    }

    /// A job ended at `at`.
    pub fn record(&self, at: Instant) {
        let now = self.second(at);
        let mut seconds = self.seconds.lock().unwrap_or_else(PoisonError::into_inner);
        match seconds.back_mut() {
            Some((second, n)) if *second == now => *n += 1,
            _ => seconds.push_back((now, 1)),
        }
        let keep_from = now.saturating_sub(RATE_WINDOW.as_secs());
        while seconds
            .front()
            .is_some_and(|(second, _)| *second < keep_from)
        {
            seconds.pop_front();
        }
    }

    /// Jobs ended per second over the window up to `at` (or since this
    /// process started, when that is later); `None` when none ended.
    pub fn per_second(&self, at: Instant) -> Option<f64> {
        let now = self.second(at);
        let from = now.saturating_sub(RATE_WINDOW.as_secs());
        let seconds = self.seconds.lock().unwrap_or_else(PoisonError::into_inner);
        let ended: u64 = seconds
            .iter()
            .filter(|(second, _)| *second >= from)
            .map(|(_, n)| n)
            .sum();
        let span = at.saturating_duration_since(self.started).min(RATE_WINDOW);
        (ended > 0).then(|| ended as f64 / span.as_secs_f64().max(1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_counts_the_window_and_forgets_older_seconds() {
        let rate = FinishRate::default();
        let t0 = rate.started;
        assert_eq!(rate.per_second(t0), None);
        for i in 0..10 {
            rate.record(t0 + Duration::from_millis(100 * i));
        }
        // Ten jobs in the process's first ten seconds: one a second.
        let r = rate.per_second(t0 + Duration::from_secs(10)).expect("rate");
        assert!((r - 1.0).abs() < 1e-9, "{r}");
        // A window later they are forgotten.
        let later = t0 + RATE_WINDOW + Duration::from_secs(5);
        rate.record(later);
        let r = rate.per_second(later).expect("rate");
        assert!((r - 1.0 / RATE_WINDOW.as_secs_f64()).abs() < 1e-9, "{r}");
        assert_eq!(rate.seconds.lock().expect("lock").len(), 1);
    }
}
