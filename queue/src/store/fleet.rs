//! Routing state from the database: nodes as routing sees them (card,
//! status, load, round trip, CPU, loaded models, coordinates), measured
//! speeds, and node status changes (drain, resume).

use kobo_protocol::NodeStatus;

use super::sql::{Db, Row, args};
use super::{StoreError, parse_list};
use crate::routing::{self, NodeProfile};
use crate::scoring::{NodeState, Speed};

pub const SELECT_FLEET: &str = "SELECT n.node_id, n.region, n.capabilities, n.gpu, n.models, n.max_workers, n.status, n.specialization, n.latitude, n.longitude, n.loaded_models, n.rtt_ms, (SELECT m.cpu_percent FROM node_metrics m WHERE m.node_id = n.node_id ORDER BY m.at DESC LIMIT 1), (SELECT count(*) FROM jobs j WHERE j.state = 'leased' AND j.node_id = n.node_id) FROM nodes n WHERE n.revoked_at IS NULL";
pub const SELECT_FLEET_NODE: &str = "SELECT n.node_id, n.region, n.capabilities, n.gpu, n.models, n.max_workers, n.status, n.specialization, n.latitude, n.longitude, n.loaded_models, n.rtt_ms, (SELECT m.cpu_percent FROM node_metrics m WHERE m.node_id = n.node_id ORDER BY m.at DESC LIMIT 1), (SELECT count(*) FROM jobs j WHERE j.state = 'leased' AND j.node_id = n.node_id) FROM nodes n WHERE n.revoked_at IS NULL AND n.node_id = ?1";
pub const SELECT_SPEEDS: &str = "SELECT a.node_id, j.kind, j.model, avg(a.duration_ms), 1000.0 * sum(a.completion_tokens) / max(sum(a.duration_ms), 1), count(*) FROM job_attempts a JOIN jobs j ON j.id = a.job_id WHERE a.outcome = 'succeeded' AND a.duration_ms IS NOT NULL AND a.started_at > ?1 GROUP BY a.node_id, j.kind, j.model";
/// PostgreSQL's scalar maximum is `greatest`; its `avg` and `sum` of
/// `bigint` are `numeric`.
pub const SELECT_SPEEDS_PG: &str = "SELECT a.node_id, j.kind, j.model, CAST(avg(a.duration_ms) AS DOUBLE PRECISION), CAST(1000.0 * sum(a.completion_tokens) / greatest(sum(a.duration_ms), 1) AS DOUBLE PRECISION), count(*) FROM job_attempts a JOIN jobs j ON j.id = a.job_id WHERE a.outcome = 'succeeded' AND a.duration_ms IS NOT NULL AND a.started_at > ?1 GROUP BY a.node_id, j.kind, j.model";
pub const SET_NODE_STATUS: &str = "UPDATE nodes SET status = ?2 WHERE node_id = ?1";
pub const SELECT_NODE_STATUS: &str = "SELECT status FROM nodes WHERE node_id = ?1";

fn node_state(r: &Row<'_>) -> Result<NodeState, StoreError> {
    let status: String = r.get(6)?;
    let region: String = r.get(1)?;
    let stated = r.get::<Option<f64>>(8)?.zip(r.get::<Option<f64>>(9)?);
    let loaded: Option<String> = r.get(10)?;
    Ok(NodeState {
        profile: NodeProfile {
            node_id: r.get(0)?,
            capabilities: parse_list(&r.get::<String>(2)?)?,
            gpu: r.get(3)?,
            models: parse_list(&r.get::<String>(4)?)?,
            max_workers: r.get(5)?,
            region: region.clone(),
        },
        status: NodeStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("node status {status:?}")))?,
        specialization: r.get(7)?,
        coordinates: stated.or_else(|| routing::region_coordinates(&region)),
        loaded_models: loaded
            .map(|l| parse_list(&l))
            .transpose()?
            .unwrap_or_default(),
        rtt_ms: r.get(11)?,
        cpu_percent: r.get::<Option<f64>>(12)?.map(|c| c as f32),
        running: r.get::<i64>(13)? as u32,
    })
}

/// Every node that is not revoked, as routing sees it.
pub fn fleet_states(db: &dyn Db) -> Result<Vec<NodeState>, StoreError> {
    db.many(SELECT_FLEET, args![], node_state)
}

/// One node as routing sees it.
pub fn fleet_state(db: &dyn Db, node_id: &str) -> Result<Option<NodeState>, StoreError> {
    db.optional(SELECT_FLEET_NODE, args![node_id], node_state)
}

/// (node, kind, model, speed).
pub type MeasuredSpeed = (String, String, Option<String>, Speed);

/// Measured speeds per (node, kind, model) over attempts since `since`.
pub fn speeds(db: &dyn Db, since: i64) -> Result<Vec<MeasuredSpeed>, StoreError> {
    db.many(
        db.pick(SELECT_SPEEDS, SELECT_SPEEDS_PG),
        args![since],
        |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                Speed {
                    mean_ms: r.get(3)?,
                    tokens_per_s: r.get(4)?,
                    samples: r.get::<i64>(5)? as u32,
                },
            ))
        },
    )
}

/// Sets a node's status; `NodeNotFound` if there is no such node.
pub fn set_node_status(db: &dyn Db, node_id: &str, status: NodeStatus) -> Result<(), StoreError> {
    if db.execute(SET_NODE_STATUS, args![node_id, status.as_str()])? == 0 {
        return Err(StoreError::NodeNotFound(node_id.to_string()));
    }
    Ok(())
}

/// A node's status, if it exists.
pub fn node_status(db: &dyn Db, node_id: &str) -> Result<Option<NodeStatus>, StoreError> {
    let status: Option<String> = db.optional(SELECT_NODE_STATUS, args![node_id], |r| r.get(0))?;
    status
        .map(|s| {
            NodeStatus::parse(&s).ok_or_else(|| StoreError::Corrupt(format!("node status {s:?}")))
        })
        .transpose()
}

/// Jobs leased to a node right now.
pub fn running_on(db: &dyn Db, node_id: &str) -> Result<u32, StoreError> {
    Ok(db.one(super::nodes::COUNT_RUNNING, args![node_id], |r| {
        r.get::<i64>(0)
    })? as u32)
}
