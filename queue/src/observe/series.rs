//! The cluster over time, minute by minute, for the dashboard's plots and
//! the "last hour" figures: what tailing `job_events` counted per minute
//! ([`Minute`], kept for [`SERIES_SPAN`]), turned into the buckets of a
//! [`SeriesWindow`] with the nodes' CPU and memory read from the store.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use kobo_protocol::{JobState, NodeSeries, SeriesWindow};

use crate::store::{TailEvent, UsageBucket};

pub(super) const MINUTE_MS: i64 = 60_000;
/// How far back the per-minute activity goes: the longest plot.
pub const SERIES_SPAN: Duration = Duration::from_secs(24 * 3600);
/// The hour plot: one bucket a minute.
pub const HOUR_STEP_MS: u64 = 60_000;
/// The day plot: one bucket a quarter hour.
pub const DAY_STEP_MS: u64 = 15 * 60_000;

/// Growth of one latency bucket over the previous: a percentile read from
/// the buckets is within about ±10 % of the exact one (0.1 ms near zero).
const LATENCY_GROWTH: f64 = 1.2;

/// Latencies of a minute (or a bucket), counted in logarithmic buckets:
/// percentiles without keeping every sample. `counts[i]` holds the
/// latencies `ms` with `⌊ln(1 + ms) / ln 1.2⌋ = i` (a day fits in 100).
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Latencies {
    counts: Vec<u32>,
}

impl Latencies {
    pub(super) fn add(&mut self, ms: f64) {
        let idx = ((1.0 + ms.max(0.0)).ln() / LATENCY_GROWTH.ln()) as usize;
        if self.counts.len() <= idx {
            self.counts.resize(idx + 1, 0);
        }
        self.counts[idx] += 1;
    }

    fn merge(&mut self, other: &Latencies) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
    }

    /// The `q` quantile (0..=1), as the geometric middle of its bucket.
    pub(super) fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.counts.iter().map(|&c| u64::from(c)).sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (idx, &count) in self.counts.iter().enumerate() {
            seen += u64::from(count);
            if seen >= rank {
                return Some((LATENCY_GROWTH.powf(idx as f64 + 0.5) - 1.0).max(0.0));
            }
        }
        None
    }
}

/// One minute of activity, as the events tell it.
#[derive(Debug, Default, Clone)]
pub(super) struct Minute {
    pub(super) succeeded: u64,
    pub(super) dead: u64,
    pub(super) cancelled: u64,
    pub(super) failed_attempts: u64,
    pub(super) run_ms_sum: f64,
    pub(super) runs: u64,
    pub(super) pickup_ms_sum: f64,
    pub(super) pickups: u64,
    pub(super) pickup: Latencies,
    pub(super) run: Latencies,
    /// Jobs that became queued less those that left `queued`.
    pub(super) queued_delta: i64,
    /// The highest `queued_delta` reached within the minute (at least 0):
    /// the peak depth is the depth at the start plus this.
    pub(super) queued_peak: i64,
    /// Completion tokens of the jobs that succeeded, in all and by node.
    pub(super) tokens: u64,
    pub(super) node_tokens: HashMap<String, u64>,
}

impl Minute {
    /// Counts `event` (which happened in this minute).
    pub(super) fn count(&mut self, event: &TailEvent) {
        if event.to == JobState::Queued {
            self.queued_delta += 1;
        }
        if event.from == Some(JobState::Queued) {
            self.queued_delta -= 1;
        }
        self.queued_peak = self.queued_peak.max(self.queued_delta);
        match event.to {
            JobState::Succeeded => {
                self.succeeded += 1;
                let tokens = event.tokens.unwrap_or(0);
                self.tokens += tokens;
                if let Some(node) = &event.node_id {
                    *self.node_tokens.entry(node.clone()).or_default() += tokens;
                }
            }
            JobState::Dead => self.dead += 1,
            JobState::Cancelled => self.cancelled += 1,
            _ => {}
        }
        let Some(since) = event.since else { return };
        let ms = (event.at - since).max(0) as f64;
        if event.to == JobState::Leased {
            self.pickups += 1;
            self.pickup_ms_sum += ms;
            self.pickup.add(ms);
        } else if event.from == Some(JobState::Leased) {
            self.runs += 1;
            self.run_ms_sum += ms;
            self.run.add(ms);
            if !matches!(event.to, JobState::Succeeded | JobState::Cancelled) {
                self.failed_attempts += 1;
            }
        }
    }

    /// Adds `other`, which comes after `self` in time (the peak depends on
    /// the order).
    fn merge(&mut self, other: &Minute) {
        self.queued_peak = self.queued_peak.max(self.queued_delta + other.queued_peak);
        self.succeeded += other.succeeded;
        self.dead += other.dead;
        self.cancelled += other.cancelled;
        self.failed_attempts += other.failed_attempts;
        self.run_ms_sum += other.run_ms_sum;
        self.runs += other.runs;
        self.pickup_ms_sum += other.pickup_ms_sum;
        self.pickups += other.pickups;
        self.pickup.merge(&other.pickup);
        self.run.merge(&other.run);
        self.queued_delta += other.queued_delta;
        self.tokens += other.tokens;
        for (node, tokens) in &other.node_tokens {
            *self.node_tokens.entry(node.clone()).or_default() += tokens;
        }
    }
}

/// The minutes of activity, keyed by the minute's start (ms).
#[derive(Debug, Default)]
pub(super) struct Minutes(BTreeMap<i64, Minute>);

impl Minutes {
    /// Counts `event` in its minute; minutes older than [`SERIES_SPAN`]
    /// are dropped.
    pub(super) fn count(&mut self, event: &TailEvent) {
        let start = event.at - event.at.rem_euclid(MINUTE_MS);
        if !self.0.contains_key(&start) {
            let keep_from = start - SERIES_SPAN.as_millis() as i64;
            self.0.retain(|minute, _| *minute >= keep_from);
        }
        self.0.entry(start).or_default().count(event);
    }

    /// Everything from `from` (ms) on, summed.
    pub(super) fn sum_since(&self, from: i64) -> Minute {
        let mut sum = Minute::default();
        for minute in self
            .0
            .range(from - from.rem_euclid(MINUTE_MS)..)
            .map(|(_, m)| m)
        {
            sum.merge(minute);
        }
        sum
    }

    /// `n_buckets` buckets of `step_ms` ending with the one holding `now`;
    /// `queued_now` is the queue's depth now (the depth at each bucket's
    /// end is worked back from it); `nodes` the node ids to plot and
    /// `usage` their CPU and memory from the store (buckets from `start`).
    pub(super) fn window(
        &self,
        now: i64,
        step_ms: u64,
        n_buckets: usize,
        queued_now: u64,
        nodes: &[String],
        usage: &[UsageBucket],
    ) -> SeriesWindow {
        let start = window_start(now, step_ms, n_buckets);
        let step = step_ms as i64;
        let mut buckets = vec![Minute::default(); n_buckets];
        for (&minute, activity) in self.0.range(start..) {
            let idx = ((minute - start) / step) as usize;
            if let Some(bucket) = buckets.get_mut(idx) {
                bucket.merge(activity);
            }
        }
        // Depth at the end of bucket i is now's less what the later buckets
        // added; its peak, the depth at its start plus its highest rise.
        let mut queued = vec![0u64; n_buckets];
        let mut depth = queued_now as i64;
        for idx in (0..n_buckets).rev() {
            let at_start = depth - buckets[idx].queued_delta;
            queued[idx] = (at_start + buckets[idx].queued_peak).max(0) as u64;
            depth = at_start;
        }
        // Per second of the whole bucket, the last one too (it fills up as
        // its time passes): a value that does not move with the clock alone,
        // so an idle cluster sends the dashboard nothing new.
        let per_s = |tokens: u64| tokens as f64 / (step_ms as f64 / 1000.0);
        let mut node_series: Vec<NodeSeries> = nodes
            .iter()
            .map(|node_id| NodeSeries {
                node_id: node_id.clone(),
                cpu_percent: vec![None; n_buckets],
                mem_percent: vec![None; n_buckets],
                tokens_per_s: (0..n_buckets)
                    .map(|idx| {
                        let tokens = buckets[idx].node_tokens.get(node_id).copied();
                        per_s(tokens.unwrap_or(0))
                    })
                    .collect(),
            })
            .collect();
        let mut sums: HashMap<(&str, usize), (f64, f64, u64)> = HashMap::new();
        for row in usage.iter().filter(|row| row.bucket < n_buckets) {
            let sum = sums.entry((row.node_id.as_str(), row.bucket)).or_default();
            sum.0 += row.cpu_percent_sum;
            sum.1 += row.mem_percent_sum;
            sum.2 += row.samples;
        }
        for series in &mut node_series {
            for idx in 0..n_buckets {
                if let Some(&(cpu, mem, n)) = sums.get(&(series.node_id.as_str(), idx))
                    && n > 0
                {
                    series.cpu_percent[idx] = Some(cpu / n as f64);
                    series.mem_percent[idx] = Some(mem / n as f64);
                }
            }
        }
        SeriesWindow {
            start,
            step_ms,
            succeeded: buckets.iter().map(|b| b.succeeded).collect(),
            dead: buckets.iter().map(|b| b.dead).collect(),
            cancelled: buckets.iter().map(|b| b.cancelled).collect(),
            queued,
            pickup_p50_ms: buckets.iter().map(|b| b.pickup.quantile(0.5)).collect(),
            pickup_p95_ms: buckets.iter().map(|b| b.pickup.quantile(0.95)).collect(),
            run_p50_ms: buckets.iter().map(|b| b.run.quantile(0.5)).collect(),
            run_p95_ms: buckets.iter().map(|b| b.run.quantile(0.95)).collect(),
            tokens_per_s: buckets.iter().map(|b| per_s(b.tokens)).collect(),
            nodes: node_series,
        }
    }
}

/// The start of the first of `n_buckets` buckets of `step_ms`, the last of
/// which holds `now`.
pub(super) fn window_start(now: i64, step_ms: u64, n_buckets: usize) -> i64 {
    let step = step_ms as i64;
    now - now.rem_euclid(step) - (n_buckets as i64 - 1) * step
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(at: i64, from: Option<JobState>, to: JobState, since: Option<i64>) -> TailEvent {
        TailEvent {
            id: 0,
            at,
            from,
            to,
            kind: "k".into(),
            since,
            node_id: Some("n1".into()),
            tokens: (to == JobState::Succeeded).then_some(120),
        }
    }

    #[test]
    fn percentiles_come_within_a_tenth_of_the_samples() {
        let mut latencies = Latencies::default();
        assert_eq!(latencies.quantile(0.5), None);
        for ms in 1..=1000 {
            latencies.add(ms as f64);
        }
        let p50 = latencies.quantile(0.5).expect("p50");
        let p95 = latencies.quantile(0.95).expect("p95");
        assert!((450.0..=550.0).contains(&p50), "{p50}");
        assert!((855.0..=1045.0).contains(&p95), "{p95}");
        let mut zero = Latencies::default();
        zero.add(0.0);
        assert!(zero.quantile(0.5).expect("p50") < 1.0);
    }

    #[test]
    fn a_window_buckets_jobs_depth_latency_and_tokens() {
        use JobState::*;
        let base = 1_000 * MINUTE_MS;
        let mut minutes = Minutes::default();
        // Minute 0: two jobs queued; one leased after 40 ms.
        minutes.count(&event(base, None, Queued, None));
        minutes.count(&event(base + 10, None, Queued, None));
        minutes.count(&event(base + 50, Some(Queued), Leased, Some(base + 10)));
        // Minute 2: it succeeds after 2 s; the other is cancelled.
        let done = base + 2 * MINUTE_MS;
        minutes.count(&event(done, Some(Leased), Succeeded, Some(done - 2000)));
        minutes.count(&event(done + 1, Some(Queued), Cancelled, None));
        let now = base + 2 * MINUTE_MS + 30_000;
        let usage = [UsageBucket {
            node_id: "n1".into(),
            bucket: 1,
            cpu_percent_sum: 150.0,
            mem_percent_sum: 30.0,
            samples: 3,
        }];
        let window = minutes.window(now, HOUR_STEP_MS, 3, 0, &["n1".into()], &usage);
        assert_eq!(window.start, base);
        assert_eq!(window.succeeded, [0, 0, 1]);
        assert_eq!(window.cancelled, [0, 0, 1]);
        assert_eq!(window.queued, [2, 1, 1], "the peak depth of each bucket");
        assert!(window.pickup_p50_ms[0].is_some_and(|ms| (36.0..=44.0).contains(&ms)));
        assert_eq!(window.pickup_p50_ms[1], None);
        assert!(window.run_p95_ms[2].is_some_and(|ms| (1800.0..=2200.0).contains(&ms)));
        // 120 tokens in the last minute's bucket.
        assert_eq!(window.tokens_per_s, [0.0, 0.0, 2.0]);
        let node = &window.nodes[0];
        assert_eq!(node.cpu_percent, [None, Some(50.0), None]);
        assert_eq!(node.mem_percent[1], Some(10.0));
        assert_eq!(node.tokens_per_s[2], 2.0);
        // The sum since minute 1 holds minute 2 only.
        let sum = minutes.sum_since(base + MINUTE_MS + 5);
        assert_eq!((sum.succeeded, sum.cancelled, sum.pickups), (1, 1, 0));
    }
}
