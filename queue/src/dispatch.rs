//! The hub: lease requests parked in long-poll, waiters for finished jobs, and
//! the hand-off of newly ready jobs to parked agents inside the transaction
//! that made them ready, so pickup costs no polling interval and no extra
//! commit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use kobo_protocol::route::RouteHow;
use kobo_protocol::{JobId, Lease};
use tokio::sync::{Notify, oneshot};

use crate::config::QueueConfig;
use kobo_protocol::NodeStatus;

use crate::routing::{self, NodeProfile};
use crate::scoring::{self, Decision, JobRoute, NodeState, Speed};
use crate::security::Sealer;
use crate::store::{
    self, AfterCommit, Completion, Effect, ReadyJob, StoreError, WriteCtx, WriterHandle,
};
use crate::tenancy::Tenants;
use std::sync::Arc;

pub use crate::parked::WaiterSender;
use crate::parked::{Parked, Waiter};

/// Shared, in-memory coordination state; owned by the server, used by the
/// store's writer thread and by handlers.
pub struct Hub {
    pub config: QueueConfig,
    /// Seals and opens confidential prompts and results.
    pub sealer: Sealer,
    /// Nodes as routing sees them: card, status, load, round trip, metrics.
    fleet: Mutex<HashMap<String, NodeState>>,
    /// Measured speed per (kind, model), then per node: a ranking looks its
    /// nodes up without building a key per node.
    speeds: Mutex<HashMap<SpeedKey, HashMap<String, Speed>>>,
    parked: Mutex<Parked>,
    next_waiter_id: AtomicU64,
    /// Shutting down: lease requests are answered at once, never parked.
    closing: std::sync::atomic::AtomicBool,
    finished: Mutex<HashMap<JobId, Vec<oneshot::Sender<()>>>>,
    /// How fast jobs end now.
    pub finish_rate: crate::rate::FinishRate,
    /// Keys' policies and fair-share state.
    pub tenants: Tenants,
    /// Idle nodes' heartbeats, answered and not yet written.
    pub beats: crate::beats::Beats,
    timer: Notify,
}

impl Hub {
    pub fn new(config: QueueConfig, sealer: Sealer) -> Hub {
        Hub {
            config,
            sealer,
            fleet: Mutex::new(HashMap::new()),
            speeds: Mutex::new(HashMap::new()),
            parked: Mutex::new(Parked::default()),
            next_waiter_id: AtomicU64::new(1),
            closing: std::sync::atomic::AtomicBool::new(false),
            finished: Mutex::new(HashMap::new()),
            finish_rate: crate::rate::FinishRate::default(),
            tenants: Tenants::default(),
            beats: crate::beats::Beats::default(),
            timer: Notify::new(),
        }
    }

    /// Parks a lease request of `node`; an earlier parked request of the same
    /// node is dropped (its agent has moved on). Called on the writer thread,
    /// so no job can become ready between the failed lease and the parking.
    pub fn park(&self, node: NodeProfile, max_jobs: u32, sender: WaiterSender) -> u64 {
        let id = self.next_waiter_id.fetch_add(1, Ordering::Relaxed);
        let mut parked = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
        if self.closing.load(Ordering::Acquire) {
            // Dropping the sender answers the request (no work) at once: a
            // request that arrives while the coordinator stops must not
            // hold the shutdown for a whole long poll.
            return id;
        }
        parked.insert(Waiter {
            id,
            node,
            max_jobs: max_jobs.max(1),
            sender,
            granted: Vec::new(),
        });
        id
    }

    /// Whether any lease request is parked.
    pub fn has_parked(&self) -> bool {
        !self
            .parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .waiters
            .is_empty()
    }

    /// A key under a concurrency limit whose running job just ended has room
    /// again: its next queued jobs are offered to parked agents with the jobs
    /// that became ready (hand-off passed them over while the key was full).
    pub fn offer_freed(
        &self,
        ctx: &mut WriteCtx<'_>,
        changes: &mut store::Changes,
    ) -> Result<(), StoreError> {
        if !self.has_parked() {
            // Agents that are not parked pull, and the lease path sees the room.
            return Ok(());
        }
        let mut offered: Vec<&str> = Vec::new();
        for (key, _) in &changes.freed {
            if offered.contains(&key.as_str()) {
                continue;
            }
            offered.push(key);
            let Some(limit) = self.tenants.share_of(key).1 else {
                continue;
            };
            let room = limit.saturating_sub(store::count_leased_by(ctx.tx, key)?);
            if room == 0 {
                continue;
            }
            for job in store::next_queued_of_key(ctx.tx, key, room)? {
                if !changes.ready.iter().any(|r| r.id == job.id) {
                    changes.ready.push(job);
                }
            }
        }
        Ok(())
    }

    /// Removes a parked request; false if a hand-off already claimed it (its
    /// leases are on their way).
    pub fn unpark(&self, waiter_id: u64) -> bool {
        self.parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(waiter_id)
            .is_some()
    }

    /// Adds or replaces a node in the routing view.
    pub fn set_node(&self, state: NodeState) {
        self.fleet
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(state.profile.node_id.clone(), state);
    }

    /// Drops a retired node from the routing view.
    pub fn remove_node(&self, node_id: &str) {
        self.beats.forget(node_id);
        self.fleet
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(node_id);
    }

    /// Changes a node in the routing view, if it is there.
    pub fn update_node(&self, node_id: &str, change: impl FnOnce(&mut NodeState)) {
        if let Some(node) = self
            .fleet
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(node_id)
        {
            change(node);
        }
    }

    /// Whether routing sees the node plainly active.
    pub fn is_active(&self, node_id: &str) -> bool {
        self.fleet
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(node_id)
            .is_some_and(|node| node.status == NodeStatus::Active)
    }

    pub fn fleet(&self) -> Vec<NodeState> {
        let fleet = self.fleet.lock().unwrap_or_else(PoisonError::into_inner);
        let mut nodes: Vec<NodeState> = fleet.values().cloned().collect();
        nodes.sort_by(|a, b| a.profile.node_id.cmp(&b.profile.node_id));
        nodes
    }

    /// Folds a finished attempt into the node's speed for that kind and model.
    pub fn record_completion(&self, done: &Completion) {
        let key = (done.kind.clone(), done.model.clone());
        let tokens_per_s = if done.duration_ms > 0 {
            done.completion_tokens as f64 * 1000.0 / done.duration_ms as f64
        } else {
            0.0
        };
        let mut speeds = self.speeds.lock().unwrap_or_else(PoisonError::into_inner);
        let speed = speeds
            .entry(key)
            .or_default()
            .entry(done.node_id.clone())
            .or_insert(Speed {
                mean_ms: done.duration_ms as f64,
                tokens_per_s,
                samples: 0,
            });
        speed.mean_ms += SPEED_SMOOTHING * (done.duration_ms as f64 - speed.mean_ms);
        speed.tokens_per_s += SPEED_SMOOTHING * (tokens_per_s - speed.tokens_per_s);
        speed.samples = speed.samples.saturating_add(1);
    }

    /// Seeds the speed book (at start, from past attempts).
    pub fn set_speed(&self, node_id: &str, kind: &str, model: Option<&str>, speed: Speed) {
        self.speeds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((kind.to_string(), model.map(str::to_string)))
            .or_default()
            .insert(node_id.to_string(), speed);
    }

    pub fn speed(&self, node_id: &str, kind: &str, model: Option<&str>) -> Option<Speed> {
        self.speeds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(kind.to_string(), model.map(str::to_string)))
            .and_then(|by_node| by_node.get(node_id))
            .copied()
    }

    /// The slot time a job of `route` is expected to take, for fair share:
    /// the mean measured for its kind and model over the nodes that ran it,
    /// or one second before any did.
    pub fn expected_ms(&self, route: &JobRoute) -> f64 {
        let speeds = self.speeds.lock().unwrap_or_else(PoisonError::into_inner);
        speeds
            .get(&(route.needs.kind.clone(), route.needs.model.clone()))
            .filter(|by_node| !by_node.is_empty())
            .map(|by_node| by_node.values().map(|s| s.mean_ms).sum::<f64>() / by_node.len() as f64)
            .filter(|ms| *ms > 0.0)
            .unwrap_or(1000.0)
    }

    /// Routes `route` over `nodes` with this hub's speeds and weights.
    pub fn decide(&self, route: &JobRoute, nodes: &[NodeState]) -> Decision {
        self.decide_over(route, nodes)
    }

    /// Routes `route` over the fleet as it is, read in place: copying a
    /// large fleet for every pulled job cost more than ranking it.
    pub fn decide_fleet(&self, route: &JobRoute) -> Decision {
        let fleet = self.fleet.lock().unwrap_or_else(PoisonError::into_inner);
        self.decide_over(route, fleet.values())
    }

    fn decide_over<'a>(
        &self,
        route: &JobRoute,
        nodes: impl IntoIterator<Item = &'a NodeState>,
    ) -> Decision {
        let speeds = self.speeds.lock().unwrap_or_else(PoisonError::into_inner);
        let by_node = speeds.get(&(route.needs.kind.clone(), route.needs.model.clone()));
        let speed_of = |node: &str| by_node.and_then(|b| b.get(node)).copied();
        scoring::select_best_node(route, nodes, &speed_of, &self.config.weights)
    }

    /// The `route_reason` of a lease `node_id` pulled: the ranking over the
    /// fleet as it is, and where the puller stands in it.
    pub fn explain_pull(&self, route: &JobRoute, node_id: &str) -> String {
        let locality = route.has_preference().then(|| {
            let fleet = self.fleet.lock().unwrap_or_else(PoisonError::into_inner);
            match fleet.get(node_id) {
                Some(node) if route.preferred(node) => preferred_note(route),
                _ => "no preferred node free within the wait bound",
            }
        });
        route_reason(&self.decide_fleet(route), node_id, RouteHow::Pull, locality)
    }
    /// Drops a node's parked lease request (it was told to drain).
    pub fn unpark_node(&self, node_id: &str) {
        self.parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove_node(node_id);
    }

    /// Answers every parked lease request with nothing (at shutdown).
    pub fn unpark_all(&self) {
        *self.parked.lock().unwrap_or_else(PoisonError::into_inner) = Parked::default();
    }

    /// Answers every parked lease request and parks none from now on (the
    /// coordinator is stopping). The flag is set under the parking lock, so
    /// no request parks between the two.
    pub fn close_parking(&self) {
        let mut parked = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
        self.closing.store(true, Ordering::Release);
        *parked = Parked::default();
    }

    /// A future that resolves when `job_id` reaches a terminal state (after
    /// this call). Register before reading the job's state to miss nothing.
    pub fn watch_job(&self, job_id: JobId) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut finished = self.finished.lock().unwrap_or_else(PoisonError::into_inner);
        let senders = finished.entry(job_id).or_default();
        senders.retain(|s| !s.is_closed());
        senders.push(tx);
        rx
    }

    fn job_finished(&self, job_id: JobId) {
        self.finish_rate.record(std::time::Instant::now());
        let senders = self
            .finished
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&job_id);
        for sender in senders.into_iter().flatten() {
            let _ = sender.send(());
        }
    }

    fn wake_timer(&self) {
        self.timer.notify_one();
    }

    pub fn timer(&self) -> &Notify {
        &self.timer
    }
}

/// [`Hub::explain_pull`] for the jobs of one lease request: jobs with the
/// same route share one ranking (nothing in the routing view changes within
/// a write, so they would rank alike). Ranking the whole fleet per pulled
/// job was the costliest part of a lease.
pub struct PullExplainer<'a> {
    hub: &'a Hub,
    node_id: &'a str,
    explained: std::cell::RefCell<Vec<(JobRoute, String)>>,
}

impl<'a> PullExplainer<'a> {
    pub fn new(hub: &'a Hub, node_id: &'a str) -> PullExplainer<'a> {
        PullExplainer {
            hub,
            node_id,
            explained: std::cell::RefCell::new(Vec::new()),
        }
    }

    pub fn explain(&self, route: &JobRoute) -> String {
        if let Some((_, reason)) = self.explained.borrow().iter().find(|(r, _)| r == route) {
            return reason.clone();
        }
        let reason = self.hub.explain_pull(route, self.node_id);
        self.explained
            .borrow_mut()
            .push((route.clone(), reason.clone()));
        reason
    }
}

/// The `locality` of a job given to the node it preferred.
fn preferred_note(route: &JobRoute) -> &'static str {
    if route.session {
        "preferred: served this session last"
    } else {
        "preferred"
    }
}

/// How strongly one attempt moves a node's measured speed (moving average).
const SPEED_SMOOTHING: f64 = 0.3;
/// Runners-up kept in a `route_reason`.
const RUNNERS_UP: usize = 4;

/// (kind, model) of the speed book.
type SpeedKey = (String, Option<String>);

/// The JSON kept in `jobs.route_reason`: a [`RouteReason`], written
/// straight from borrowed parts (who got the job and how, the score terms of
/// the best candidates, and why the others were excluded).
pub fn route_reason(
    decision: &Decision,
    chosen: &str,
    how: RouteHow,
    locality: Option<&str>,
) -> String {
    let position = decision.ranked.iter().position(|r| r.node == chosen);
    let note = match position {
        Some(0) => "best-ranked node".to_string(),
        Some(_) => format!(
            "best-ranked {} was busy; {chosen} was free",
            decision
                .ranked
                .first()
                .map(|r| r.node.as_str())
                .unwrap_or("-")
        ),
        None => "not ranked (joined after the decision)".to_string(),
    };
    // Serialized straight from borrowed parts (keys in the order a
    // `serde_json::Value` would sort them): building a `Value` first cost
    // more than the rest of a lease grant.
    #[derive(serde::Serialize)]
    struct Reason<'a> {
        chosen: &'a str,
        excluded: &'a std::collections::BTreeMap<String, String>,
        how: RouteHow,
        locality: Option<&'a str>,
        note: String,
        ranked: &'a [scoring::Ranked],
    }
    let reason = Reason {
        chosen,
        excluded: &decision.excluded,
        how,
        locality,
        note,
        ranked: &decision.ranked[..decision.ranked.len().min(RUNNERS_UP + 1)],
    };
    serde_json::to_string(&reason).unwrap_or_else(|_| "{}".into())
}

impl Hub {
    /// Hands each newly ready job to the best-scored parked agent that may run
    /// it, granting the lease in the current transaction. A job preferring a
    /// node or region that is alive but busy waits for it up to
    /// `locality_wait_ms` from when it first became ready (delay scheduling; the
    /// wait is never reset), and meanwhile only preferred nodes may take it.
    /// Jobs no parked agent may take stay queued for the next lease request.
    pub fn hand_off(&self, ctx: &mut WriteCtx<'_>, ready: Vec<ReadyJob>) -> Result<(), StoreError> {
        if ready.is_empty() {
            return Ok(());
        }
        let fleet = self.fleet();
        let mut guard = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
        guard.drop_closed();
        // Where each node's parked request is (a node parks at most one; none
        // leaves `parked` before the loop ends).
        let Parked {
            waiters: parked,
            by_node: parked_at,
        } = &mut *guard;
        // The fleet as routing sees it, with parked nodes' exact load, built
        // once and kept current as jobs are granted: cloning the fleet for
        // every ready job was most of a hand-off's cost.
        let mut nodes = fleet;
        for n in &mut nodes {
            if let Some(w) = parked_at
                .get(&n.profile.node_id)
                .and_then(|id| parked.get(id))
            {
                n.running = w.busy();
            }
        }
        let node_at: HashMap<String, usize> = nodes
            .iter()
            .enumerate()
            .map(|(idx, n)| (n.profile.node_id.clone(), idx))
            .collect();
        // Lease slots the parked requests still have: once none is left, the
        // remaining jobs only need their locality decided.
        let mut limits = KeyRoom::default();
        let mut room: u32 = parked
            .values()
            .map(|w| w.max_jobs.saturating_sub(w.granted.len() as u32))
            .sum();
        for job in ready {
            let locality = match job.locality_until {
                Some(until) => until,
                None if job.route.has_preference() => {
                    let preferred_alive = nodes.iter().any(|n| {
                        n.status == NodeStatus::Active
                            && job.route.preferred(n)
                            && routing::check(&job.route.needs, &n.profile).is_ok()
                    });
                    let wait_ms = if job.route.session {
                        self.config.session_wait_ms
                    } else {
                        self.config.locality_wait_ms
                    };
                    let until = if preferred_alive {
                        ctx.now + wait_ms as i64
                    } else {
                        0
                    };
                    store::set_locality(ctx.tx, job.id, until)?;
                    if until > 0 {
                        ctx.effect(Effect::WakeTimer);
                    }
                    until
                }
                None => 0,
            };
            if room == 0 {
                continue;
            }
            if !limits.has_room(ctx, &self.tenants, &job.submitted_by)? {
                // Its key is at its concurrency limit: it is offered again
                // when one of the key's running jobs ends.
                continue;
            }
            let waiting = locality > ctx.now;
            let decision = self.decide(&job.route, &nodes);
            let chosen = decision.ranked.iter().find_map(|ranked| {
                let idx = *parked_at.get(&ranked.node)?;
                let w = parked.get(&idx)?;
                if (w.granted.len() as u32) >= w.max_jobs
                    || routing::check(&job.route.needs, &w.node).is_err()
                {
                    return None;
                }
                let node = &nodes[*node_at.get(&ranked.node)?];
                (!waiting || job.route.preferred(node)).then_some((idx, job.route.preferred(node)))
            });
            let Some((idx, preferred)) = chosen else {
                continue;
            };
            let locality_note = match (job.route.has_preference(), preferred) {
                (false, _) => None,
                (true, true) => Some(preferred_note(&job.route)),
                (true, false) => Some("no preferred node free within the wait bound"),
            };
            let Some(waiter) = parked.get_mut(&idx) else {
                continue;
            };
            let reason = route_reason(
                &decision,
                &waiter.node.node_id,
                RouteHow::HandOff,
                locality_note,
            );
            let ttl = self.config.lease_ttl_ms;
            if let Some(lease) = store::grant_lease(
                ctx.tx,
                ctx.now,
                &self.sealer,
                ttl,
                job.id,
                &waiter.node.node_id,
                &reason,
            )? {
                waiter.granted.push(lease);
                room -= 1;
                limits.took(&job.submitted_by);
                if self.config.fair_share {
                    let (weight, _) = self.tenants.share_of(&job.submitted_by);
                    let expected = self.expected_ms(&job.route);
                    self.tenants
                        .fair()
                        .charge(&job.submitted_by, weight, job.id, expected);
                }
                if let Some(&at) = node_at.get(&waiter.node.node_id) {
                    nodes[at].running = waiter.busy();
                }
            }
        }
        let granted: Vec<u64> = parked
            .values()
            .filter(|w| !w.granted.is_empty())
            .map(|w| w.id)
            .collect();
        for id in granted {
            if let Some(waiter) = guard.remove(id) {
                ctx.effect(Effect::Deliver {
                    sender: waiter.sender,
                    leases: waiter.granted,
                });
            }
        }
        Ok(())
    }
}

/// Leases each key may still take in one hand-off under its concurrency
/// limit, counted once per key per hand-off.
#[derive(Default)]
struct KeyRoom(HashMap<String, u32>);

impl KeyRoom {
    fn has_room(
        &mut self,
        ctx: &WriteCtx<'_>,
        tenants: &Tenants,
        key: &str,
    ) -> Result<bool, StoreError> {
        if let Some(room) = self.0.get(key) {
            return Ok(*room > 0);
        }
        let room = match tenants.share_of(key).1 {
            Some(limit) => limit.saturating_sub(store::count_leased_by(ctx.tx, key)?),
            None => u32::MAX,
        };
        self.0.insert(key.to_string(), room);
        Ok(room > 0)
    }

    fn took(&mut self, key: &str) {
        if let Some(room) = self.0.get_mut(key) {
            *room = room.saturating_sub(1);
        }
    }
}

impl AfterCommit for Hub {
    fn after_commit(self: Arc<Self>, effects: Vec<Effect>, writer: &WriterHandle) {
        for effect in effects {
            match effect {
                Effect::Deliver { sender, leases } => {
                    if let Err(leases) = sender.send(leases) {
                        // The lease request went away between being chosen
                        // and being answered: give the jobs back at once.
                        let hub = self.clone();
                        writer.write_detached(move |ctx| hub.release_undelivered(ctx, &leases));
                    }
                }
                Effect::Finished(job_id) => self.job_finished(job_id),
                Effect::WakeTimer => self.wake_timer(),
            }
        }
    }
}

impl Hub {
    fn release_undelivered(
        &self,
        ctx: &mut WriteCtx<'_>,
        leases: &[Lease],
    ) -> Result<(), StoreError> {
        let mut changes = store::Changes::default();
        store::release_leases(
            ctx.tx,
            ctx.now,
            &leases
                .iter()
                .map(|l| (l.job_id, l.lease_token))
                .collect::<Vec<_>>(),
            "undelivered",
            "lease answer undelivered: the agent's request went away",
            None,
            &mut changes,
        )?;
        self.hand_off(ctx, changes.ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kobo_protocol::RouteReason;
    use kobo_protocol::route::{RankedNode, ScoreTerms};

    #[test]
    fn after_close_parking_no_request_parks_and_each_is_answered_at_once() {
        let hub = Hub::new(QueueConfig::default(), Sealer::new(&[7; 32]));
        let node = |id: &str| NodeProfile {
            node_id: id.into(),
            region: "local".into(),
            capabilities: Vec::new(),
            gpu: false,
            models: Vec::new(),
            max_workers: 1,
        };
        let (before, mut parked_before) = oneshot::channel();
        hub.park(node("a"), 1, before);
        assert!(hub.has_parked());
        hub.close_parking();
        assert!(!hub.has_parked());
        let closed = |rx: &mut oneshot::Receiver<Vec<Lease>>| {
            matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Closed))
        };
        assert!(
            closed(&mut parked_before),
            "the parked request was answered (its sender dropped)"
        );
        let (after, mut parked_after) = oneshot::channel();
        hub.park(node("b"), 1, after);
        assert!(!hub.has_parked(), "nothing parks once closing");
        assert!(closed(&mut parked_after), "and answered at once");
    }

    /// The fast writer and the wire type describe one shape: what the writer
    /// stores reads back as a `RouteReason` that writes out byte for byte
    /// the same.
    #[test]
    fn the_stored_route_reason_is_a_route_reason() {
        let decision = Decision {
            ranked: vec![
                RankedNode {
                    node: "tokyo-01".into(),
                    terms: ScoreTerms {
                        load: 1.5,
                        total: 2.25,
                        ..ScoreTerms::default()
                    },
                },
                RankedNode {
                    node: "osaka-01".into(),
                    terms: ScoreTerms::default(),
                },
            ],
            excluded: [("london-01".to_string(), "lacks capability x".to_string())].into(),
        };
        for (how, locality) in [
            (RouteHow::HandOff, Some("preferred")),
            (RouteHow::Pull, None),
        ] {
            let text = route_reason(&decision, "osaka-01", how, locality);
            let parsed: RouteReason = serde_json::from_str(&text).expect("a RouteReason");
            assert_eq!(serde_json::to_string(&parsed).expect("json"), text);
            assert_eq!(parsed.how, how);
            assert_eq!(parsed.chosen, "osaka-01");
            assert_eq!(parsed.ranked.len(), 2);
            assert!(parsed.note.contains("busy"), "{}", parsed.note);
        }
    }
}
