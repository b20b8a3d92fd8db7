//! Observability of a running coordinator: the cluster summary
//! ([`Observer::status`], behind `GET /v1/status`, `kobo-coord status` and
//! the dashboard), Prometheus metrics ([`Observer::metrics_text`]), live
//! updates for the dashboard ([`Observer::subscribe`], pushed by
//! [`Observer::run_pump`]).
//!
//! Counters and histograms of jobs are fed by tailing the committed
//! `job_events` log (by its increasing id) rather than by hooks in the queue:
//! every path that changes a job (lease, hand-off, report, reaper, cancel)
//! writes its event, so nothing is missed, and the cost is paid only when
//! someone looks (a scrape, or a dashboard connected). Job totals are seeded
//! from one `GROUP BY` over `jobs` at the first look; the per-minute activity
//! (the "last hour" figures and the plots, [`series`]) is seeded then by
//! replaying the events of the last day, so it does not depend on when this
//! process first looked.

mod metrics;
mod series;

pub use series::{DAY_STEP_MS, HOUR_STEP_MS, SERIES_SPAN};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kobo_protocol::{ClusterStatus, JobState, JobTotals, NodeCard, Recent, Series};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub use crate::regions::place_of;

use crate::store::sql::Db;
use crate::store::{self, Store, StoreError, TailEvent};

/// How often the pump looks for changes while a dashboard is connected.
pub const PUMP_INTERVAL: Duration = Duration::from_secs(1);
/// The window of "recent" figures (per-node work, throughput).
pub const RECENT_WINDOW: Duration = Duration::from_secs(3600);
/// Jobs the status lists (newest first).
pub const LATEST_JOBS: u32 = 50;
/// Events read per query when tailing `job_events`.
/// The window of the status's per-key usage.
const KEYS_WINDOW_MS: i64 = 24 * 3_600_000;
const TAIL_BATCH: u32 = 5000;
/// Most past events replayed into the per-minute activity at the first
/// look: bounds that first look's time on a busy database (about a second);
/// older minutes of the day then show less than happened.
const MAX_REPLAY_EVENTS: i64 = 500_000;
/// Status updates buffered per dashboard; a slower one skips to the newest.
const UPDATES_BUFFER: usize = 16;
/// Buckets of the hour plot (minutes) and of the day plot (quarter hours).
const HOUR_BUCKETS: usize = 60;
const DAY_BUCKETS: usize = 96;

type Labels = Vec<(String, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // LLM calls: from a tenth of a second to ten minutes.
    Histogram::new([
        0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    ])
}

fn pickup_histogram() -> Histogram {
    // Pickup is a hand-off inside one commit when an agent is parked (ms),
    // or a wait for a free worker (seconds to minutes).
    Histogram::new([
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0,
    ])
}

/// What tailing `job_events` has counted so far.
#[derive(Default)]
struct Tail {
    seeded: bool,
    last_event_id: i64,
    /// Jobs in a final state by kind and state (since the database began).
    finished: HashMap<(String, JobState), u64>,
    submitted: u64,
    /// Activity by minute, the last [`SERIES_SPAN`] of it.
    minutes: series::Minutes,
}

/// Counters and histograms fed by the tail (they live as long as the
/// process; Prometheus handles the reset at a restart).
#[derive(Clone)]
pub struct JobMetrics {
    pub submitted: Family<Labels, Counter>,
    pub finished: Family<Labels, Counter>,
    pub duration: HistogramFamily,
    pub pickup: HistogramFamily,
}

impl Default for JobMetrics {
    fn default() -> Self {
        JobMetrics {
            submitted: Family::default(),
            finished: Family::default(),
            duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            pickup: Family::new_with_constructor(pickup_histogram as fn() -> Histogram),
        }
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Where a node is: the coordinates it states, else its region's.
fn node_place(node: &kobo_protocol::NodeView) -> Option<kobo_protocol::Place> {
    let by_region = place_of(&node.region);
    match (node.latitude, node.longitude) {
        (Some(latitude), Some(longitude)) => Some(kobo_protocol::Place {
            city: by_region.map_or_else(|| node.region.clone(), |p| p.city),
            latitude,
            longitude,
        }),
        _ => by_region,
    }
}

/// The coordinator's observability state; one per process.
/// Most (kind, region, model) series of the `kobo_scaling_*` gauges; the
/// smaller groups are summed into one labelled `other`, so a flood of
/// distinct kinds or models cannot blow up Prometheus' series count.
pub const MAX_SCALING_SERIES: usize = 50;

pub struct Observer {
    store: Store,
    shutdown: CancellationToken,
    started_at: i64,
    tail: Mutex<Tail>,
    jobs: JobMetrics,
    updates: broadcast::Sender<Arc<str>>,
}

impl Observer {
    pub fn new(store: Store, shutdown: CancellationToken) -> Observer {
        Observer {
            store,
            shutdown,
            started_at: store::unix_now_ms(),
            tail: Mutex::new(Tail::default()),
            jobs: JobMetrics::default(),
            updates: broadcast::channel(UPDATES_BUFFER).0,
        }
    }

    /// Cancelled when the coordinator shuts down (live streams end then).
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Reads the events committed since the last look and counts them.
    pub async fn catch_up(self: &Arc<Self>) -> Result<(), StoreError> {
        let this = self.clone();
        self.store.read(move |conn| this.catch_up_on(conn)).await
    }

    fn catch_up_on(&self, conn: &dyn Db) -> Result<(), StoreError> {
        let mut tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
        if !tail.seeded {
            let (counts, last_event_id) = store::job_counts(conn)?;
            for (kind, state, n) in counts {
                tail.submitted += n;
                self.jobs
                    .submitted
                    .get_or_create(&labels(&[("kind", &kind)]))
                    .inc_by(n);
                if state.is_terminal() {
                    *tail.finished.entry((kind.clone(), state)).or_default() += n;
                    self.jobs
                        .finished
                        .get_or_create(&labels(&[("kind", &kind), ("state", state.as_str())]))
                        .inc_by(n);
                }
            }
            // The per-minute activity of the last day, from its events
            // (totals and Prometheus counters are seeded above already).
            let since = store::unix_now_ms() - SERIES_SPAN.as_millis() as i64;
            let mut after =
                (store::first_event_since(conn, since)? - 1).max(last_event_id - MAX_REPLAY_EVENTS);
            while after < last_event_id {
                let events = store::events_after(conn, after, TAIL_BATCH)?;
                for event in events.iter().take_while(|e| e.id <= last_event_id) {
                    tail.minutes.count(event);
                }
                match events.last() {
                    Some(last) if events.len() == TAIL_BATCH as usize => after = last.id,
                    _ => break,
                }
            }
            tail.last_event_id = last_event_id;
            tail.seeded = true;
        }
        loop {
            let events = store::events_after(conn, tail.last_event_id, TAIL_BATCH)?;
            for event in &events {
                self.count(&mut tail, event);
                tail.last_event_id = event.id;
            }
            if events.len() < TAIL_BATCH as usize {
                return Ok(());
            }
        }
    }

    fn count(&self, tail: &mut Tail, event: &TailEvent) {
        tail.minutes.count(event);
        let kind = event.kind.as_str();
        if event.from.is_none() {
            tail.submitted += 1;
            self.jobs
                .submitted
                .get_or_create(&labels(&[("kind", kind)]))
                .inc();
        }
        if event.to.is_terminal() {
            *tail
                .finished
                .entry((event.kind.clone(), event.to))
                .or_default() += 1;
            self.jobs
                .finished
                .get_or_create(&labels(&[("kind", kind), ("state", event.to.as_str())]))
                .inc();
        }
        let Some(since) = event.since else { return };
        let ms = (event.at - since).max(0) as f64;
        if event.to == JobState::Leased {
            self.jobs
                .pickup
                .get_or_create(&labels(&[("kind", kind)]))
                .observe(ms / 1000.0);
        } else if event.from == Some(JobState::Leased) {
            let outcome = match event.to {
                JobState::Succeeded => "succeeded",
                JobState::Cancelled => "cancelled",
                _ => "failed",
            };
            self.jobs
                .duration
                .get_or_create(&labels(&[("kind", kind), ("outcome", outcome)]))
                .observe(ms / 1000.0);
        }
    }

    /// The cluster now: nodes with their place and recent work, the queue,
    /// job totals, recent throughput and the newest jobs.
    pub async fn status(self: &Arc<Self>) -> Result<ClusterStatus, StoreError> {
        self.catch_up().await?;
        let now = store::unix_now_ms();
        let window_ms = RECENT_WINDOW.as_millis() as u64;
        let hour_start = series::window_start(now, HOUR_STEP_MS, HOUR_BUCKETS);
        let day_start = series::window_start(now, DAY_STEP_MS, DAY_BUCKETS);
        let (nodes, queue, latest_jobs, hour_usage, day_usage, mut keys) = self
            .store
            .read(move |conn| {
                let since = now - window_ms as i64;
                let nodes = store::list_nodes(conn)?
                    .into_iter()
                    .map(|node| {
                        Ok(NodeCard {
                            place: node_place(&node),
                            recent: store::node_recent(conn, &node.node_id, since, window_ms)?,
                            node,
                        })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                let queue = store::queue_summary(conn)?;
                let latest = store::latest_jobs(conn, LATEST_JOBS)?;
                let hour_usage = store::node_usage(conn, hour_start, HOUR_STEP_MS)?;
                let day_usage = store::node_usage(conn, day_start, DAY_STEP_MS)?;
                let keys = store::usage(
                    conn,
                    &store::UsageFilter {
                        since: Some(now - KEYS_WINDOW_MS),
                        group: vec![kobo_protocol::UsageGroup::Key],
                        ..store::UsageFilter::default()
                    },
                )?;
                Ok((nodes, queue, latest, hour_usage, day_usage, keys))
            })
            .await?;
        let tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
        let unfinished = |state: JobState| -> u64 {
            queue
                .iter()
                .filter(|row| row.state == state)
                .map(|row| row.jobs)
                .sum()
        };
        let finished = |state: JobState| -> u64 {
            tail.finished
                .iter()
                .filter(|((_, s), _)| *s == state)
                .map(|(_, n)| n)
                .sum()
        };
        let totals = JobTotals {
            submitted: tail.submitted,
            scheduled: unfinished(JobState::Scheduled),
            queued: unfinished(JobState::Queued),
            leased: unfinished(JobState::Leased),
            succeeded: finished(JobState::Succeeded),
            dead: finished(JobState::Dead),
            cancelled: finished(JobState::Cancelled),
        };
        let sum = tail.minutes.sum_since(now - window_ms as i64);
        let node_ids: Vec<String> = nodes.iter().map(|c| c.node.node_id.clone()).collect();
        let series = Series {
            hour: tail.minutes.window(
                now,
                HOUR_STEP_MS,
                HOUR_BUCKETS,
                totals.queued,
                &node_ids,
                &hour_usage,
            ),
            day: tail.minutes.window(
                now,
                DAY_STEP_MS,
                DAY_BUCKETS,
                totals.queued,
                &node_ids,
                &day_usage,
            ),
        };
        let mean = |total: f64, n: u64| (n > 0).then(|| total / n as f64);
        // Attempts come from the database; dead jobs and pickups from the
        // events (the window's replayed at the first look, then tailed).
        let attempts_ok: u64 = nodes.iter().map(|c| c.recent.succeeded).sum();
        let attempts_failed: u64 = nodes.iter().map(|c| c.recent.failed).sum();
        let response_sum: f64 = nodes
            .iter()
            .filter_map(|c| Some(c.recent.mean_response_ms? * c.recent.succeeded as f64))
            .sum();
        let recent = Recent {
            window_ms,
            succeeded: attempts_ok.max(sum.succeeded),
            dead: sum.dead,
            failed_attempts: attempts_failed.max(sum.failed_attempts),
            mean_run_ms: mean(response_sum, attempts_ok).or(mean(sum.run_ms_sum, sum.runs)),
            mean_pickup_ms: mean(sum.pickup_ms_sum, sum.pickups),
        };
        keys.sort_by_key(|k| std::cmp::Reverse(k.prompt_tokens + k.completion_tokens));
        Ok(ClusterStatus {
            keys,
            server_time: now,
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: self.started_at,
            nodes,
            queue,
            totals,
            recent,
            series,
            latest_jobs,
        })
    }

    /// `GET /metrics`: the OpenMetrics text exposition (which Prometheus
    /// reads natively).
    pub async fn metrics_text(self: &Arc<Self>) -> Result<String, StoreError> {
        let status = self.status().await?;
        let finished: Vec<(String, JobState, u64)> = self
            .tail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .finished
            .iter()
            .map(|((kind, state), n)| (kind.clone(), *state, *n))
            .collect();
        let by_key = store::UsageFilter {
            group: vec![kobo_protocol::UsageGroup::Key],
            ..store::UsageFilter::default()
        };
        let usage = self
            .store
            .read(move |conn| store::usage(conn, &by_key))
            .await?;
        let now = store::unix_now_ms();
        let scaling = self
            .store
            .read(move |conn| store::scaling_groups(conn, now, MAX_SCALING_SERIES))
            .await?;
        metrics::render(&status, &self.jobs, &finished, &usage, &scaling)
            .map_err(|_| StoreError::Corrupt("encoding metrics failed".into()))
    }

    /// The backlog of the work `filter` matches and the agents it needs
    /// (`GET /v1/scaling`, `kobo-coord autoscale`).
    pub async fn scaling(
        &self,
        filter: store::ScalingFilter,
    ) -> Result<kobo_protocol::ScalingView, StoreError> {
        let now = store::unix_now_ms();
        self.store
            .read(move |conn| store::scaling(conn, &filter, now))
            .await
    }

    /// Live status updates (JSON of [`ClusterStatus`]), while the pump runs.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.updates.subscribe()
    }

    /// While dashboards are connected, computes the status every
    /// [`PUMP_INTERVAL`] and sends it when it changed. Stops at shutdown.
    pub async fn run_pump(self: Arc<Self>) {
        let mut last: Option<Arc<str>> = None;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(PUMP_INTERVAL) => {}
            }
            if self.updates.receiver_count() == 0 {
                last = None;
                continue;
            }
            let status = match self.status().await {
                Ok(status) => status,
                Err(err) => {
                    tracing::warn!(error = %err, "dashboard status failed");
                    continue;
                }
            };
            // Compare without the clock: send only what changed.
            let mut probe = status.clone();
            probe.server_time = 0;
            let Ok(json) = serde_json::to_string(&probe) else {
                continue;
            };
            if last.as_deref() == Some(json.as_str()) {
                continue;
            }
            let Ok(full) = serde_json::to_string(&status) else {
                continue;
            };
            last = Some(json.into());
            let _ = self.updates.send(full.into());
        }
    }
}
