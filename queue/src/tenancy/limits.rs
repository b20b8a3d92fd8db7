//! Rate limits per key, checked where a submit is written (in the writer,
//! so two requests can never both take the last slot of a window):
//! requests per minute over an exact sliding window of accepted requests,
//! tokens per minute over the tokens the key's successful attempts reported
//! in the last minute. Budgets are read from the `usage` table instead
//! (see [`budget_period`]): exact across restarts.
//!
//! The windows live in memory: after a restart each key starts with empty
//! windows (at most one minute of leniency), which is why budgets, which
//! span days, are not kept here.

use std::collections::{HashMap, VecDeque};

use kobo_protocol::{BudgetPeriod, KeyPolicy};

/// The sliding window of both rate limits.
pub const WINDOW_MS: i64 = 60_000;

/// Why a request was refused, and when trying again can work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// kobo's error code: `rate_limited` or `budget_exhausted`.
    pub code: &'static str,
    /// What the limit is: `requests`, `tokens` or `budget` (OpenAI's
    /// `x-ratelimit-*` vocabulary for the first two).
    pub limit: &'static str,
    pub message: String,
    /// Milliseconds until a retry can be accepted (at least 1).
    pub retry_after_ms: i64,
}

impl Refusal {
    /// Whole seconds for `Retry-After` (rounded up, at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        (self.retry_after_ms.max(1) as u64).div_ceil(1000)
    }
}

/// One key's windows.
#[derive(Default)]
struct Windows {
    /// Times of accepted requests in the last minute, oldest first.
    requests: VecDeque<i64>,
    /// (time, tokens) of completions in the last minute, oldest first.
    tokens: VecDeque<(i64, u64)>,
    tokens_in_window: u64,
}

impl Windows {
    fn expire(&mut self, now: i64) {
        while self.requests.front().is_some_and(|&t| t <= now - WINDOW_MS) {
            self.requests.pop_front();
        }
        while let Some(&(t, n)) = self.tokens.front() {
            if t > now - WINDOW_MS {
                break;
            }
            self.tokens.pop_front();
            self.tokens_in_window -= n;
        }
    }
}

/// The rate windows of every key with a rate limit.
#[derive(Default)]
pub struct RateLimits {
    keys: HashMap<String, Windows>,
}

impl RateLimits {
    /// Admits `n` requests of `key` (named `name` in messages) at `now`
    /// under `policy`, recording them; or refuses them all.
    pub fn admit(
        &mut self,
        key: &str,
        name: &str,
        policy: &KeyPolicy,
        n: u32,
        now: i64,
    ) -> Result<(), Refusal> {
        if policy.rpm.is_none() && policy.tpm.is_none() {
            return Ok(());
        }
        let windows = self.keys.entry(key.to_string()).or_default();
        windows.expire(now);
        if let Some(rpm) = policy.rpm {
            let used = windows.requests.len() as u64;
            if used + u64::from(n) > u64::from(rpm) {
                // The requests that must leave the window first.
                let must_leave = (used + u64::from(n) - u64::from(rpm)) as usize;
                let retry_after_ms = match windows.requests.get(must_leave - 1) {
                    Some(&t) => t + WINDOW_MS - now,
                    // More in one batch than the limit allows at all.
                    None => WINDOW_MS,
                };
                let asked = if n == 1 {
                    "this request".to_string()
                } else {
                    format!("these {n} requests")
                };
                return Err(Refusal {
                    code: "rate_limited",
                    limit: "requests",
                    message: format!(
                        "API key {name} is limited to {rpm} requests per minute and has made {used} in the last minute; {asked} would go over it"
                    ),
                    retry_after_ms: retry_after_ms.max(1),
                });
            }
        }
        if let Some(tpm) = policy.tpm
            && windows.tokens_in_window >= tpm
        {
            // The oldest completions that must age out to go under.
            let mut left = windows.tokens_in_window;
            let mut at = now;
            for &(t, n) in &windows.tokens {
                left -= n;
                at = t + WINDOW_MS;
                if left < tpm {
                    break;
                }
            }
            return Err(Refusal {
                code: "rate_limited",
                limit: "tokens",
                message: format!(
                    "API key {name} is limited to {tpm} tokens per minute and its answers used {} in the last minute",
                    windows.tokens_in_window
                ),
                retry_after_ms: (at - now).max(1),
            });
        }
        windows
            .requests
            .extend(std::iter::repeat_n(now, n as usize));
        Ok(())
    }

    /// Adds the tokens a successful attempt of `key` reported at `now` (kept
    /// only for keys with a tokens-per-minute limit).
    pub fn record_tokens(&mut self, key: &str, policy: &KeyPolicy, tokens: u64, now: i64) {
        if policy.tpm.is_none() || tokens == 0 {
            return;
        }
        let windows = self.keys.entry(key.to_string()).or_default();
        windows.expire(now);
        windows.tokens.push_back((now, tokens));
        windows.tokens_in_window += tokens;
    }
}

/// The current budget period of `period` at `now` (UTC): its start and end,
/// in Unix milliseconds.
pub fn budget_period(period: BudgetPeriod, now: i64) -> (i64, i64) {
    use chrono::{Datelike, TimeZone, Utc};
    let day = now - now.rem_euclid(86_400_000);
    match period {
        BudgetPeriod::Day => (day, day + 86_400_000),
        BudgetPeriod::Month => {
            let date = Utc
                .timestamp_millis_opt(now)
                .single()
                .unwrap_or_default()
                .date_naive();
            let start = date.with_day(1).unwrap_or(date);
            let next = if start.month() == 12 {
                start
                    .with_year(start.year() + 1)
                    .and_then(|d| d.with_month(1))
            } else {
                start.with_month(start.month() + 1)
            }
            .unwrap_or(start);
            let ms = |d: chrono::NaiveDate| {
                d.and_hms_opt(0, 0, 0)
                    .map(|t| t.and_utc().timestamp_millis())
                    .unwrap_or(day)
            };
            (ms(start), ms(next))
        }
    }
}

/// The refusal of a key whose budget is spent, if it is: `used` tokens of
/// the period ending at `resets_at`.
pub fn budget_refusal(
    name: &str,
    policy: &KeyPolicy,
    used: u64,
    resets_at: i64,
    now: i64,
) -> Option<Refusal> {
    let budget = policy.budget?;
    (used >= budget.tokens).then(|| {
        let reset = chrono::DateTime::from_timestamp_millis(resets_at)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default();
        Refusal {
            code: "budget_exhausted",
            limit: "budget",
            message: format!(
                "API key {name} has spent its budget of {} tokens per {} ({used} used); it resets at {reset}",
                budget.tokens,
                budget.period.as_str()
            ),
            retry_after_ms: (resets_at - now).max(1),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kobo_protocol::Budget;

    fn policy(rpm: Option<u32>, tpm: Option<u64>) -> KeyPolicy {
        KeyPolicy {
            rpm,
            tpm,
            ..KeyPolicy::default()
        }
    }

    #[test]
    fn requests_per_minute_hold_exactly_at_the_window_edge() {
        let mut limits = RateLimits::default();
        let p = policy(Some(5), None);
        let t = 1_000_000;
        for i in 0..5 {
            limits
                .admit("k", "ci", &p, 1, t + i)
                .expect("under the limit");
        }
        let refused = limits
            .admit("k", "ci", &p, 1, t + 59_999)
            .expect_err("the 6th");
        assert_eq!(refused.code, "rate_limited");
        assert_eq!(refused.limit, "requests");
        // The first request leaves the window at t + 60 s.
        assert_eq!(refused.retry_after_ms, 1);
        assert_eq!(refused.retry_after_secs(), 1);
        assert!(
            refused.message.contains("5 requests per minute"),
            "{}",
            refused.message
        );
        limits
            .admit("k", "ci", &p, 1, t + 60_000)
            .expect("the first has left");
        // A batch is admitted whole or not at all.
        let mut limits = RateLimits::default();
        limits.admit("k", "ci", &p, 4, t).expect("4 of 5");
        assert!(limits.admit("k", "ci", &p, 3, t + 1).is_err());
        limits
            .admit("k", "ci", &p, 1, t + 2)
            .expect("the 5th alone");
        let too_big = RateLimits::default()
            .admit("k", "ci", &p, 6, t)
            .expect_err("6 > 5");
        assert_eq!(too_big.retry_after_ms, WINDOW_MS);
    }

    #[test]
    fn tokens_per_minute_count_reported_tokens_until_they_age_out() {
        let mut limits = RateLimits::default();
        let p = policy(None, Some(100));
        let t = 5_000_000;
        limits.admit("k", "ci", &p, 1, t).expect("nothing used");
        limits.record_tokens("k", &p, 60, t);
        limits.admit("k", "ci", &p, 1, t + 1).expect("60 < 100");
        limits.record_tokens("k", &p, 40, t + 10_000);
        let refused = limits
            .admit("k", "ci", &p, 1, t + 20_000)
            .expect_err("100 used");
        assert_eq!(refused.limit, "tokens");
        // Under the limit once the first 60 age out, at t + 60 s.
        assert_eq!(refused.retry_after_ms, 40_000);
        assert!(limits.admit("k", "ci", &p, 1, t + 59_999).is_err());
        limits
            .admit("k", "ci", &p, 1, t + 60_000)
            .expect("40 left in the window");
    }

    #[test]
    fn budgets_reset_at_utc_midnight_and_on_the_first_of_the_month() {
        // 2026-12-31T23:30:00Z.
        let now = 1_798_759_800_000;
        let (start, end) = budget_period(BudgetPeriod::Day, now);
        assert_eq!((now - start, end - now), (84_600_000, 1_800_000));
        let (start, end) = budget_period(BudgetPeriod::Month, now);
        // 2026-12-01T00:00:00Z .. 2027-01-01T00:00:00Z.
        assert_eq!(start, 1_796_083_200_000);
        assert_eq!(end, 1_798_761_600_000);
        let p = KeyPolicy {
            budget: Some(Budget {
                tokens: 1000,
                period: BudgetPeriod::Month,
            }),
            ..KeyPolicy::default()
        };
        assert_eq!(budget_refusal("ci", &p, 999, end, now), None);
        let spent = budget_refusal("ci", &p, 1000, end, now).expect("spent");
        assert_eq!(spent.code, "budget_exhausted");
        assert_eq!(spent.retry_after_ms, 1_800_000);
        assert!(
            spent
                .message
                .contains("budget of 1000 tokens per month (1000 used)")
                && spent.message.contains("resets at 2027-01-01T00:00:00Z"),
            "{}",
            spent.message
        );
    }
}
