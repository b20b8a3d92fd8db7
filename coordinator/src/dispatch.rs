//! The hub: lease requests parked in long-poll, waiters for finished jobs, and
//! the hand-off of newly ready jobs to parked agents inside the transaction
//! that made them ready, so pickup costs no polling interval and no extra
//! commit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use kobo_protocol::{JobId, Lease};
use tokio::sync::{Notify, oneshot};

use crate::config::QueueConfig;
use crate::routing::{self, NodeProfile};
use crate::security::Sealer;
use crate::store::{self, Effect, ReadyJob, StoreError, WriteCtx};

/// Where a parked lease request receives its leases.
pub type WaiterSender = oneshot::Sender<Vec<Lease>>;

struct Waiter {
    id: u64,
    node: NodeProfile,
    max_jobs: u32,
    sender: WaiterSender,
    parked_at: i64,
    granted: Vec<Lease>,
}

impl Waiter {
    /// Share of the node's workers busy if it took what it was granted so far.
    fn load(&self) -> f64 {
        let busy =
            self.node.max_workers.saturating_sub(self.max_jobs) as usize + self.granted.len();
        busy as f64 / self.node.max_workers.max(1) as f64
    }
}

/// Shared, in-memory coordination state; owned by the server, used by the
/// store's writer thread and by handlers.
pub struct Hub {
    pub config: QueueConfig,
    /// Seals and opens confidential prompts and results.
    pub sealer: Sealer,
    parked: Mutex<Vec<Waiter>>,
    next_waiter_id: AtomicU64,
    finished: Mutex<HashMap<JobId, Vec<oneshot::Sender<()>>>>,
    timer: Notify,
}

impl Hub {
    pub fn new(config: QueueConfig, sealer: Sealer) -> Hub {
        Hub {
            config,
            sealer,
            parked: Mutex::new(Vec::new()),
            next_waiter_id: AtomicU64::new(1),
            finished: Mutex::new(HashMap::new()),
            timer: Notify::new(),
        }
    }

    /// Parks a lease request of `node`; an earlier parked request of the same
    /// node is dropped (its agent has moved on). Called on the writer thread,
    /// so no job can become ready between the failed lease and the parking.
    pub fn park(&self, node: NodeProfile, max_jobs: u32, sender: WaiterSender, now: i64) -> u64 {
        let id = self.next_waiter_id.fetch_add(1, Ordering::Relaxed);
        let mut parked = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
        parked.retain(|w| w.node.node_id != node.node_id && !w.sender.is_closed());
        parked.push(Waiter {
            id,
            node,
            max_jobs: max_jobs.max(1),
            sender,
            parked_at: now,
            granted: Vec::new(),
        });
        id
    }

    /// Removes a parked request; false if a hand-off already claimed it (its
    /// leases are on their way).
    pub fn unpark(&self, waiter_id: u64) -> bool {
        let mut parked = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
        let before = parked.len();
        parked.retain(|w| w.id != waiter_id);
        parked.len() != before
    }

    /// Answers every parked lease request with nothing (at shutdown).
    pub fn unpark_all(&self) {
        self.parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Node ids with a lease request parked right now.
    pub fn parked_nodes(&self) -> Vec<String> {
        let parked = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
        parked.iter().map(|w| w.node.node_id.clone()).collect()
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

    pub(crate) fn job_finished(&self, job_id: JobId) {
        let senders = self
            .finished
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&job_id);
        for sender in senders.into_iter().flatten() {
            let _ = sender.send(());
        }
    }

    pub(crate) fn wake_timer(&self) {
        self.timer.notify_one();
    }

    pub fn timer(&self) -> &Notify {
        &self.timer
    }
}

/// Hands each newly ready job to the least-loaded parked agent that may run
/// it, granting the lease in the current transaction. Jobs no parked agent
/// may run stay queued for the next lease request.
pub fn hand_off(ctx: &mut WriteCtx<'_>, ready: Vec<ReadyJob>) -> Result<(), StoreError> {
    if ready.is_empty() {
        return Ok(());
    }
    let mut parked = ctx
        .hub
        .parked
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    parked.retain(|w| !w.sender.is_closed());
    if parked.is_empty() {
        return Ok(());
    }
    for job in ready {
        let best = parked
            .iter()
            .enumerate()
            .filter(|(_, w)| (w.granted.len() as u32) < w.max_jobs)
            .filter(|(_, w)| routing::check(&job.needs, &w.node).is_ok())
            .min_by(|(_, a), (_, b)| {
                a.load()
                    .total_cmp(&b.load())
                    .then(a.parked_at.cmp(&b.parked_at))
                    .then(a.node.node_id.cmp(&b.node.node_id))
            })
            .map(|(idx, _)| idx);
        let Some(idx) = best else { continue };
        let waiter = &mut parked[idx];
        let ttl = ctx.hub.config.lease_ttl_ms;
        if let Some(lease) = store::grant_lease(
            ctx.tx,
            ctx.now,
            &ctx.hub.sealer,
            ttl,
            job.id,
            &waiter.node.node_id,
        )? {
            waiter.granted.push(lease);
        }
    }
    let mut idx = 0;
    while idx < parked.len() {
        if parked[idx].granted.is_empty() {
            idx += 1;
            continue;
        }
        let waiter = parked.swap_remove(idx);
        ctx.effect(Effect::Deliver {
            sender: waiter.sender,
            leases: waiter.granted,
        });
    }
    Ok(())
}
