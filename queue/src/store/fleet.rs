//! Routing state from the database: nodes as routing sees them (card,
//! status, load, round trip, CPU, loaded models, coordinates), measured
//! speeds, and node status changes (drain, resume).

use kobo_protocol::NodeStatus;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{StoreError, parse_list};
use crate::routing::{self, NodeProfile};
use crate::scoring::{NodeState, Speed};

pub const SELECT_FLEET: &str = "SELECT n.node_id, n.region, n.capabilities, n.gpu, n.models, n.max_workers, n.status, n.specialization, n.latitude, n.longitude, n.loaded_models, n.rtt_ms, (SELECT m.cpu_percent FROM node_metrics m WHERE m.node_id = n.node_id ORDER BY m.at DESC LIMIT 1), (SELECT count(*) FROM jobs j WHERE j.state = 'leased' AND j.node_id = n.node_id) FROM nodes n WHERE n.revoked_at IS NULL";
pub const SELECT_SPEEDS: &str = "SELECT a.node_id, j.kind, j.model, avg(a.duration_ms), 1000.0 * sum(a.completion_tokens) / max(sum(a.duration_ms), 1), count(*) FROM job_attempts a JOIN jobs j ON j.id = a.job_id WHERE a.outcome = 'succeeded' AND a.duration_ms IS NOT NULL AND a.started_at > ?1 GROUP BY a.node_id, j.kind, j.model";
pub const SET_NODE_STATUS: &str = "UPDATE nodes SET status = ?2 WHERE node_id = ?1";

fn node_state(r: &rusqlite::Row<'_>) -> Result<NodeState, StoreError> {
    let status: String = r.get(6)?;
    let region: String = r.get(1)?;
    let stated = r.get::<_, Option<f64>>(8)?.zip(r.get::<_, Option<f64>>(9)?);
    let loaded: Option<String> = r.get(10)?;
    Ok(NodeState {
        profile: NodeProfile {
            node_id: r.get(0)?,
            capabilities: parse_list(&r.get::<_, String>(2)?)?,
            gpu: r.get(3)?,
            models: parse_list(&r.get::<_, String>(4)?)?,
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
        cpu_percent: r.get::<_, Option<f64>>(12)?.map(|c| c as f32),
        running: r.get::<_, i64>(13)? as u32,
    })
}

/// Every node that is not revoked, as routing sees it.
pub fn fleet_states(conn: &Connection) -> Result<Vec<NodeState>, StoreError> {
    let mut stmt = conn.prepare_cached(SELECT_FLEET)?;
    let mut rows = stmt.query([])?;
    let mut nodes = Vec::new();
    while let Some(r) = rows.next()? {
        nodes.push(node_state(r)?);
    }
    Ok(nodes)
}

/// One node as routing sees it.
pub fn fleet_state(conn: &Connection, node_id: &str) -> Result<Option<NodeState>, StoreError> {
    let sql = format!("{SELECT_FLEET} AND n.node_id = ?1");
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query([node_id])?;
    rows.next()?.map(node_state).transpose()
}

/// (node, kind, model, speed).
pub type MeasuredSpeed = (String, String, Option<String>, Speed);

/// Measured speeds per (node, kind, model) over attempts since `since`.
pub fn speeds(conn: &Connection, since: i64) -> Result<Vec<MeasuredSpeed>, StoreError> {
    Ok(conn
        .prepare_cached(SELECT_SPEEDS)?
        .query_map([since], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                Speed {
                    mean_ms: r.get(3)?,
                    tokens_per_s: r.get(4)?,
                    samples: r.get::<_, i64>(5)? as u32,
                },
            ))
        })?
        .collect::<Result<_, _>>()?)
}

/// Sets a node's status; `NodeNotFound` if there is no such node.
pub fn set_node_status(
    tx: &Transaction<'_>,
    node_id: &str,
    status: NodeStatus,
) -> Result<(), StoreError> {
    if tx
        .prepare_cached(SET_NODE_STATUS)?
        .execute(params![node_id, status.as_str()])?
        == 0
    {
        return Err(StoreError::NodeNotFound(node_id.to_string()));
    }
    Ok(())
}

/// A node's status, if it exists.
pub fn node_status(conn: &Connection, node_id: &str) -> Result<Option<NodeStatus>, StoreError> {
    let status: Option<String> = conn
        .prepare_cached("SELECT status FROM nodes WHERE node_id = ?1")?
        .query_row([node_id], |r| r.get(0))
        .optional()?;
    status
        .map(|s| {
            NodeStatus::parse(&s).ok_or_else(|| StoreError::Corrupt(format!("node status {s:?}")))
        })
        .transpose()
}

/// Jobs leased to a node right now.
pub fn running_on(conn: &Connection, node_id: &str) -> Result<u32, StoreError> {
    Ok(conn
        .prepare_cached(super::nodes::COUNT_RUNNING)?
        .query_row([node_id], |r| r.get::<_, i64>(0))? as u32)
}
