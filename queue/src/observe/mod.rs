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
//! from one `GROUP BY` over `jobs` at the first look.

mod metrics;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kobo_protocol::{ClusterStatus, JobState, JobTotals, NodeCard, Recent};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use rusqlite::Connection;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub use crate::regions::place_of;

use crate::store::{self, Store, StoreError, TailEvent};

/// How often the pump looks for changes while a dashboard is connected.
pub const PUMP_INTERVAL: Duration = Duration::from_secs(1);
/// The window of "recent" figures (per-node work, throughput).
pub const RECENT_WINDOW: Duration = Duration::from_secs(3600);
/// Jobs the status lists (newest first).
pub const LATEST_JOBS: u32 = 50;
/// Events read per query when tailing `job_events`.
const TAIL_BATCH: u32 = 5000;
/// Status updates buffered per dashboard; a slower one skips to the newest.
const UPDATES_BUFFER: usize = 16;
const MINUTE_MS: i64 = 60_000;

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

/// One minute of recent activity.
#[derive(Debug, Default, Clone)]
struct Minute {
    succeeded: u64,
    dead: u64,
    failed_attempts: u64,
    run_ms_sum: f64,
    runs: u64,
    pickup_ms_sum: f64,
    pickups: u64,
}

/// What tailing `job_events` has counted so far.
#[derive(Default)]
struct Tail {
    seeded: bool,
    last_event_id: i64,
    /// Jobs in a final state by kind and state (since the database began).
    finished: HashMap<(String, JobState), u64>,
    submitted: u64,
    /// Minute (ms) → activity, the last [`RECENT_WINDOW`] of it.
    minutes: BTreeMap<i64, Minute>,
}

impl Tail {
    /// The activity of the minute of `at`; minutes older than
    /// [`RECENT_WINDOW`] are dropped.
    fn minute(&mut self, at: i64) -> &mut Minute {
        let start = at - at.rem_euclid(MINUTE_MS);
        let keep_from = start - RECENT_WINDOW.as_millis() as i64;
        if !self.minutes.contains_key(&start) {
            self.minutes.retain(|minute, _| *minute >= keep_from);
        }
        self.minutes.entry(start).or_default()
    }
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

    fn catch_up_on(&self, conn: &Connection) -> Result<(), StoreError> {
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
            let minute = tail.minute(event.at);
            match event.to {
                JobState::Succeeded => minute.succeeded += 1,
                JobState::Dead => minute.dead += 1,
                _ => {}
            }
        }
        let Some(since) = event.since else { return };
        let ms = (event.at - since).max(0) as f64;
        if event.to == JobState::Leased {
            self.jobs
                .pickup
                .get_or_create(&labels(&[("kind", kind)]))
                .observe(ms / 1000.0);
            let minute = tail.minute(event.at);
            minute.pickups += 1;
            minute.pickup_ms_sum += ms;
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
            let minute = tail.minute(event.at);
            minute.runs += 1;
            minute.run_ms_sum += ms;
            if outcome == "failed" {
                minute.failed_attempts += 1;
            }
        }
    }

    /// The cluster now: nodes with their place and recent work, the queue,
    /// job totals, recent throughput and the newest jobs.
    pub async fn status(self: &Arc<Self>) -> Result<ClusterStatus, StoreError> {
        self.catch_up().await?;
        let now = store::unix_now_ms();
        let window_ms = RECENT_WINDOW.as_millis() as u64;
        let (nodes, queue, latest_jobs) = self
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
                Ok((nodes, queue, latest))
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
        let from = now - window_ms as i64;
        let mut sum = Minute::default();
        for m in tail.minutes.range(from..).map(|(_, m)| m) {
            sum.succeeded += m.succeeded;
            sum.dead += m.dead;
            sum.failed_attempts += m.failed_attempts;
            sum.run_ms_sum += m.run_ms_sum;
            sum.runs += m.runs;
            sum.pickup_ms_sum += m.pickup_ms_sum;
            sum.pickups += m.pickups;
        }
        let mean = |total: f64, n: u64| (n > 0).then(|| total / n as f64);
        // Attempts come from the database (the whole window, across
        // restarts); dead jobs and pickups from the events this process saw.
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
        Ok(ClusterStatus {
            server_time: now,
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: self.started_at,
            nodes,
            queue,
            totals,
            recent,
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
        metrics::render(&status, &self.jobs, &finished)
            .map_err(|_| StoreError::Corrupt("encoding metrics failed".into()))
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
