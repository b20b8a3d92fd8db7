//! The coordinator's clock: the wall clock as read once, at the first look,
//! then advanced by the monotonic clock. Every time the engine stores or
//! compares (lease expiries, heartbeat deadlines, `run_at`, retries, event
//! and audit times, certificate validity) comes from here, so a step of the
//! system clock while the coordinator runs (an NTP correction, a VM resumed,
//! an operator's `date -s`) moves no deadline: leases do not expire at once
//! on a jump forward, nodes are not noticed lost late on a jump backward.
//! The price: such a step shows in kobo's timestamps only after a restart.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

static ANCHOR: OnceLock<(i64, Instant)> = OnceLock::new();

/// Milliseconds since the Unix epoch, now, as the coordinator counts them.
pub fn unix_now_ms() -> i64 {
    let (wall, at) = ANCHOR.get_or_init(|| (system_now_ms(), Instant::now()));
    wall + at.elapsed().as_millis() as i64
}

/// [`unix_now_ms`] as a `SystemTime` (for certificate validity).
pub fn system_time() -> SystemTime {
    UNIX_EPOCH + std::time::Duration::from_millis(unix_now_ms().max(0) as u64)
}

fn system_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_never_goes_back_and_keeps_to_the_wall_clock() {
        let mut last = unix_now_ms();
        for _ in 0..1000 {
            let now = unix_now_ms();
            assert!(now >= last);
            last = now;
        }
        assert!((unix_now_ms() - system_now_ms()).abs() < 1000);
    }
}
