//! Heartbeats: those of idle nodes answered from memory and written in bulk.
//!
//! Ten thousand agents heartbeat over three thousand times a second. Most
//! run nothing: their heartbeat renews no lease and changes no state, it
//! only says "still here". Each one used to be a write of its own on the
//! single writer thread (a savepoint, the node's row read back, three
//! statements, a share of an fsync), and the writer fell behind: heartbeats
//! waited seconds in its queue. Now such a heartbeat is answered at once and
//! kept here; within [`FLUSH_DELAY`] one write stores all that arrived
//! meanwhile. Nothing acknowledged depends on it: a heartbeat promises no
//! durability, and losing the last quarter second of "still here" in a crash
//! only makes the restarted coordinator wait for the next one.
//!
//! Exactness where it matters: the lost-node sweep applies what is kept here
//! in its own transaction before it looks at heartbeat times, so a node that
//! was answered is never declared lost for a heartbeat still in memory. A
//! heartbeat that holds leases, or of a node that is not plainly active
//! (draining, lost), or of an instance not seen registering, takes the full
//! write as before.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use kobo_protocol::{HeartbeatRequest, HeartbeatResponse, NodeStatus};

use crate::dispatch::Hub;
use crate::queue::{Queue, current_instance};
use crate::store::sql::Db;
use crate::store::{self, StoreError};

/// How long an idle heartbeat may wait in memory before it is written.
pub const FLUSH_DELAY: Duration = Duration::from_millis(250);

/// A node's system metrics are stored at most this often (every fifth
/// heartbeat at the default interval): the raw series feeds per-minute
/// averages, and routing and the dashboard's live figures come from memory.
pub const SAMPLE_EVERY_MS: i64 = 15_000;

#[derive(Default)]
pub struct Beats {
    /// The agent instance each node registered with, for nodes whose
    /// heartbeats may be kept here.
    instances: Mutex<HashMap<String, String>>,
    /// Heartbeats answered but not yet written, with their arrival times;
    /// a later one of a node replaces an earlier one.
    pending: Mutex<HashMap<String, (i64, HeartbeatRequest)>>,
    /// When each node's metrics were last kept for storing.
    sampled: Mutex<HashMap<String, i64>>,
}

/// What [`Beats::keep`] did with a heartbeat.
#[derive(Debug, PartialEq, Eq)]
pub enum Kept {
    /// Kept; the first since the last write, so a write should be scheduled.
    First,
    /// Kept; a write is already due.
    Queued,
    /// Not for this path: write it in full.
    No,
}

impl Beats {
    /// `instance_id` is the node's agent instance now (it registered, or
    /// its full heartbeat was accepted).
    pub fn admit(&self, node_id: &str, instance_id: &str) {
        let mut instances = self
            .instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if instances.get(node_id).map(String::as_str) != Some(instance_id) {
            instances.insert(node_id.to_string(), instance_id.to_string());
        }
    }

    /// The node is gone (retired, revoked): its heartbeats take the full
    /// path, which refuses them.
    pub fn forget(&self, node_id: &str) {
        self.instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(node_id);
        self.sampled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(node_id);
    }

    /// The heartbeat as it is to be stored: its metrics only if the node's
    /// last stored sample is [`SAMPLE_EVERY_MS`] old.
    pub fn for_storage(&self, at: i64, req: &HeartbeatRequest) -> HeartbeatRequest {
        let mut stored = req.clone();
        if stored.metrics.is_some() {
            let mut sampled = self.sampled.lock().unwrap_or_else(PoisonError::into_inner);
            match sampled.get_mut(&req.node_id) {
                Some(last) if at - *last < SAMPLE_EVERY_MS => stored.metrics = None,
                Some(last) => *last = at,
                None => {
                    sampled.insert(req.node_id.clone(), at);
                }
            }
        }
        stored
    }

    /// Keeps an idle heartbeat of a known instance that arrived `at`.
    /// `active` is whether routing sees the node plainly active.
    pub fn keep(&self, at: i64, req: &HeartbeatRequest, active: bool) -> Kept {
        if !active || !req.running.is_empty() {
            return Kept::No;
        }
        let known = self
            .instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&req.node_id)
            .is_some_and(|instance| *instance == req.instance_id);
        if !known {
            return Kept::No;
        }
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let first = pending.is_empty();
        pending.insert(req.node_id.clone(), (at, self.for_storage(at, req)));
        if first { Kept::First } else { Kept::Queued }
    }

    /// Writes every kept heartbeat in `tx`. Returns how many.
    pub fn write_pending(&self, tx: &dyn Db) -> Result<usize, StoreError> {
        let pending =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        for (at, req) in pending.values() {
            store::record_heartbeat(tx, *at, req)?;
        }
        Ok(pending.len())
    }

    /// Heartbeats kept and not yet written.
    pub fn pending(&self) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Queue {
    pub async fn heartbeat(&self, req: HeartbeatRequest) -> Result<HeartbeatResponse, StoreError> {
        let hub = self.hub.clone();
        let at = store::unix_now_ms();
        match hub.beats.keep(at, &req, hub.is_active(&req.node_id)) {
            Kept::No => {}
            kept => {
                note_heartbeat(&hub, &req, NodeStatus::Active);
                if kept == Kept::First {
                    self.write_beats_soon();
                }
                return Ok(self.heartbeat_answer());
            }
        }
        let answer = self.heartbeat_answer();
        self.store
            .write(move |ctx| {
                let mut node = current_instance(ctx, &req.node_id, &req.instance_id)?;
                store::record_heartbeat(ctx.tx, ctx.now, &hub.beats.for_storage(ctx.now, &req))?;
                // A draining node with nothing left to run has drained.
                if node.status == NodeStatus::Draining
                    && req.running.is_empty()
                    && store::running_on(ctx.tx, &req.node_id)? == 0
                {
                    store::set_node_status(ctx.tx, &req.node_id, NodeStatus::Drained)?;
                    node.status = NodeStatus::Drained;
                    tracing::info!(node_id = %req.node_id, "node drained");
                }
                let status = match node.status {
                    NodeStatus::Lost => NodeStatus::Active,
                    other => other,
                };
                note_heartbeat(&hub, &req, status);
                hub.beats.admit(&req.node_id, &req.instance_id);
                let (cancelled, revoked) = store::renew_leases(
                    ctx.tx,
                    ctx.now,
                    hub.config.lease_ttl_ms,
                    &req.node_id,
                    &req.running,
                )?;
                Ok(HeartbeatResponse {
                    cancelled,
                    revoked,
                    drain: matches!(node.status, NodeStatus::Draining | NodeStatus::Drained),
                    ..answer
                })
            })
            .await
    }

    /// The answer to a heartbeat that cancels, revokes and drains nothing.
    fn heartbeat_answer(&self) -> HeartbeatResponse {
        HeartbeatResponse {
            cancelled: Vec::new(),
            revoked: Vec::new(),
            drain: false,
            lease_ttl_ms: self.hub.config.lease_ttl_ms,
            heartbeat_interval_ms: self.hub.config.heartbeat_interval_ms,
            // The HTTP handler, which sees the whole call, sets it.
            coordinator_ms: 0,
        }
    }

    /// Writes the idle heartbeats kept in memory, all in one write, a
    /// moment from now (see [`crate::beats`]).
    fn write_beats_soon(&self) {
        let hub = self.hub.clone();
        let store = self.store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(FLUSH_DELAY).await;
            let written = store
                .write(move |ctx| hub.beats.write_pending(ctx.tx))
                .await;
            if let Err(err) = written {
                tracing::warn!(error = %err, "writing idle heartbeats failed; the next ones are written again");
            }
        });
    }
}

/// What a heartbeat tells routing about its node.
fn note_heartbeat(hub: &Hub, req: &HeartbeatRequest, status: NodeStatus) {
    hub.update_node(&req.node_id, |n| {
        n.status = status;
        n.running = req.running.len() as u32;
        n.rtt_ms = req.rtt_ms.or(n.rtt_ms);
        if let Some(m) = &req.metrics {
            n.cpu_percent = Some(m.cpu_percent);
        }
        if let Some(loaded) = &req.loaded_models {
            n.loaded_models = loaded.clone();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use kobo_protocol::HeldLease;

    fn beat(node: &str, instance: &str) -> HeartbeatRequest {
        HeartbeatRequest {
            node_id: node.into(),
            instance_id: instance.into(),
            running: Vec::new(),
            metrics: None,
            rtt_ms: Some(3),
            loaded_models: None,
        }
    }

    #[test]
    fn only_idle_heartbeats_of_known_instances_of_active_nodes_are_kept() {
        let beats = Beats::default();
        assert_eq!(
            beats.keep(1, &beat("a", "i1"), true),
            Kept::No,
            "never registered"
        );
        beats.admit("a", "i1");
        assert_eq!(
            beats.keep(1, &beat("a", "i2"), true),
            Kept::No,
            "another instance"
        );
        assert_eq!(
            beats.keep(1, &beat("a", "i1"), false),
            Kept::No,
            "not active"
        );
        let mut busy = beat("a", "i1");
        busy.running.push(HeldLease {
            job_id: 7,
            lease_token: 1,
        });
        assert_eq!(beats.keep(1, &busy, true), Kept::No, "holds a lease");
        assert_eq!(beats.keep(1, &beat("a", "i1"), true), Kept::First);
        assert_eq!(beats.keep(2, &beat("a", "i1"), true), Kept::Queued);
        assert_eq!(
            beats.pending(),
            1,
            "a later heartbeat replaces an earlier one"
        );
        beats.forget("a");
        assert_eq!(beats.keep(3, &beat("a", "i1"), true), Kept::No, "forgotten");
    }

    #[test]
    fn metrics_are_stored_at_most_every_sample_interval() {
        let beats = Beats::default();
        let mut req = beat("a", "i1");
        req.metrics = Some(kobo_protocol::NodeMetrics::default());
        let stored = |at| beats.for_storage(at, &req).metrics.is_some();
        assert!(stored(1_000), "the first sample is stored");
        assert!(!stored(1_000 + SAMPLE_EVERY_MS - 1));
        assert!(stored(1_000 + SAMPLE_EVERY_MS));
        assert!(!stored(1_000 + SAMPLE_EVERY_MS + 3_000));
        let bare = beat("a", "i1");
        assert!(beats.for_storage(99_999, &bare).metrics.is_none());
    }
}
