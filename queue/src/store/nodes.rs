//! Node writes and reads: registration, heartbeats, metrics, listing.

use super::jobs::{Changes, Retry};
use super::leases::release_node_leases;
use super::sql::{Db, args};
use super::{StoreError, parse_list};
use crate::routing::NodeProfile;
use kobo_protocol::{HeartbeatRequest, NodeMetrics, NodeStatus, NodeView, RegisterRequest};

pub const UPSERT_NODE: &str = "INSERT INTO nodes (node_id, instance_id, region, capabilities, max_workers, gpu, backend, models, agent_version, specialization, status, registered_at, last_heartbeat_at, latitude, longitude) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'active', ?11, ?11, ?12, ?13) ON CONFLICT (node_id) DO UPDATE SET instance_id = excluded.instance_id, region = excluded.region, capabilities = excluded.capabilities, max_workers = excluded.max_workers, gpu = excluded.gpu, backend = excluded.backend, models = excluded.models, agent_version = excluded.agent_version, specialization = excluded.specialization, status = CASE WHEN nodes.status IN ('draining', 'drained') THEN nodes.status ELSE 'active' END, registered_at = excluded.registered_at, last_heartbeat_at = excluded.last_heartbeat_at, latitude = excluded.latitude, longitude = excluded.longitude, revoked_at = NULL, retired_at = NULL";
pub const SELECT_INSTANCE: &str = "SELECT instance_id FROM nodes WHERE node_id = ?1";
pub const SELECT_PROFILE: &str = "SELECT node_id, region, capabilities, gpu, models, max_workers, instance_id, status FROM nodes WHERE node_id = ?1";
pub const TOUCH_NODE: &str = "UPDATE nodes SET last_heartbeat_at = max(coalesce(last_heartbeat_at, ?2), ?2), status = CASE WHEN status = 'lost' THEN 'active' ELSE status END WHERE node_id = ?1";
/// A heartbeat in one statement: [`TOUCH_NODE`] and what it reports.
pub const RECORD_HEARTBEAT: &str = "UPDATE nodes SET last_heartbeat_at = max(coalesce(last_heartbeat_at, ?2), ?2), status = CASE WHEN status = 'lost' THEN 'active' ELSE status END, rtt_ms = coalesce(?3, rtt_ms), loaded_models = coalesce(?4, loaded_models) WHERE node_id = ?1";
/// PostgreSQL's scalar maximum is `greatest`.
pub const TOUCH_NODE_PG: &str = "UPDATE nodes SET last_heartbeat_at = greatest(last_heartbeat_at, ?2), status = CASE WHEN status = 'lost' THEN 'active' ELSE status END WHERE node_id = ?1";
pub const RECORD_HEARTBEAT_PG: &str = "UPDATE nodes SET last_heartbeat_at = greatest(last_heartbeat_at, ?2), status = CASE WHEN status = 'lost' THEN 'active' ELSE status END, rtt_ms = coalesce(?3, rtt_ms), loaded_models = coalesce(?4, loaded_models) WHERE node_id = ?1";
pub const INSERT_METRICS: &str = "INSERT OR REPLACE INTO node_metrics (node_id, at, cpu_percent, mem_used_bytes, mem_total_bytes, load_1, load_5, load_15, disk_used_bytes, disk_total_bytes, running) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";
/// PostgreSQL has no `INSERT OR REPLACE`: the same row, replaced in place.
pub const INSERT_METRICS_PG: &str = "INSERT INTO node_metrics (node_id, at, cpu_percent, mem_used_bytes, mem_total_bytes, load_1, load_5, load_15, disk_used_bytes, disk_total_bytes, running) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) ON CONFLICT (node_id, at) DO UPDATE SET cpu_percent = excluded.cpu_percent, mem_used_bytes = excluded.mem_used_bytes, mem_total_bytes = excluded.mem_total_bytes, load_1 = excluded.load_1, load_5 = excluded.load_5, load_15 = excluded.load_15, disk_used_bytes = excluded.disk_used_bytes, disk_total_bytes = excluded.disk_total_bytes, running = excluded.running";
pub const PRUNE_METRICS: &str = "DELETE FROM node_metrics WHERE (node_id, at) IN (SELECT node_id, at FROM node_metrics WHERE at < ?1 LIMIT 5000)";
macro_rules! select_nodes {
    ($avg:literal) => {
        concat!(
            "SELECT n.node_id, n.region, n.status, n.capabilities, n.max_workers, n.gpu, n.backend, n.models, n.agent_version, n.registered_at, n.last_heartbeat_at, n.rtt_ms, n.jobs_succeeded, n.jobs_failed, (SELECT count(*) FROM jobs j WHERE j.state = 'leased' AND j.node_id = n.node_id) , (SELECT ",
            $avg,
            " FROM job_attempts a WHERE a.node_id = n.node_id AND a.outcome = 'succeeded'), n.latitude, n.longitude, n.specialization FROM nodes n WHERE n.retired_at IS NULL ORDER BY n.node_id"
        )
    };
}
pub const SELECT_NODES: &str = select_nodes!("avg(a.duration_ms)");
/// PostgreSQL's `avg` of `bigint` is `numeric`.
pub const SELECT_NODES_PG: &str = select_nodes!("CAST(avg(a.duration_ms) AS DOUBLE PRECISION)");
pub const SELECT_LATEST_METRICS: &str = "SELECT cpu_percent, mem_used_bytes, mem_total_bytes, load_1, load_5, load_15, disk_used_bytes, disk_total_bytes FROM node_metrics WHERE node_id = ?1 ORDER BY at DESC LIMIT 1";
pub const COUNT_RUNNING: &str = "SELECT count(*) FROM jobs WHERE state = 'leased' AND node_id = ?1";

/// A node as the lease path needs it.
#[derive(Debug, Clone)]
pub struct NodeRecord {
    pub profile: NodeProfile,
    pub instance_id: String,
    pub status: NodeStatus,
}

/// Registers (or re-registers) a node. A new instance of a known node means
/// the previous agent process is gone: its leases are released at once.
pub fn register_node(
    db: &dyn Db,
    now: i64,
    req: &RegisterRequest,
    retry: Option<Retry>,
    changes: &mut Changes,
) -> Result<(), StoreError> {
    let previous: Option<String> =
        db.optional(SELECT_INSTANCE, args![req.node_id], |r| r.get(0))?;
    let to_json = |list: &[String]| serde_json::to_string(list).unwrap_or_else(|_| "[]".into());
    db.execute(
        UPSERT_NODE,
        args![
            req.node_id,
            req.instance_id,
            req.region,
            to_json(&req.capabilities),
            req.max_workers,
            req.gpu,
            req.backend,
            to_json(&req.models),
            req.agent_version,
            req.specialization,
            now,
            req.latitude,
            req.longitude
        ],
    )?;
    if let Some(previous) = previous
        && previous != req.instance_id
    {
        let n = release_node_leases(
            db,
            now,
            &req.node_id,
            "node_restarted",
            &format!(
                "node {} restarted: a new agent instance registered",
                req.node_id
            ),
            retry,
            changes,
        )?;
        if n > 0 {
            tracing::info!(node_id = %req.node_id, n_jobs = n, "released leases of the node's previous instance");
        }
    }
    Ok(())
}

/// Loads a node for the lease path; `NodeNotFound` if it never registered.
pub fn load_node(db: &dyn Db, node_id: &str) -> Result<NodeRecord, StoreError> {
    db.optional(SELECT_PROFILE, args![node_id], |row| {
        let status: String = row.get(7)?;
        Ok(NodeRecord {
            profile: NodeProfile {
                node_id: row.get(0)?,
                region: row.get(1)?,
                capabilities: parse_list(&row.get::<String>(2)?)?,
                gpu: row.get(3)?,
                models: parse_list(&row.get::<String>(4)?)?,
                max_workers: row.get(5)?,
            },
            instance_id: row.get(6)?,
            status: NodeStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("node status {status:?}")))?,
        })
    })?
    .ok_or_else(|| StoreError::NodeNotFound(node_id.to_string()))
}

/// Records that the node is alive (a lost node comes back as active).
pub fn touch_node(db: &dyn Db, now: i64, node_id: &str) -> Result<(), StoreError> {
    db.execute(db.pick(TOUCH_NODE, TOUCH_NODE_PG), args![node_id, now])?;
    Ok(())
}

/// Stores what a heartbeat says about the node.
pub fn record_heartbeat(db: &dyn Db, now: i64, req: &HeartbeatRequest) -> Result<(), StoreError> {
    let loaded = req
        .loaded_models
        .as_ref()
        .map(|m| serde_json::to_string(m).unwrap_or_else(|_| "[]".into()));
    db.execute(
        db.pick(RECORD_HEARTBEAT, RECORD_HEARTBEAT_PG),
        args![req.node_id, now, req.rtt_ms, loaded],
    )?;
    if let Some(m) = &req.metrics {
        db.execute(
            db.pick(INSERT_METRICS, INSERT_METRICS_PG),
            args![
                req.node_id,
                now,
                m.cpu_percent as f64,
                m.mem_used_bytes as i64,
                m.mem_total_bytes as i64,
                m.load_1,
                m.load_5,
                m.load_15,
                m.disk_used_bytes as i64,
                m.disk_total_bytes as i64,
                req.running.len() as i64
            ],
        )?;
    }
    Ok(())
}

/// Deletes a bounded number of metrics rows older than `before`.
pub fn prune_metrics(db: &dyn Db, before: i64) -> Result<usize, StoreError> {
    db.execute(PRUNE_METRICS, args![before])
}

/// Every node, for `GET /v1/nodes`.
pub fn list_nodes(db: &dyn Db) -> Result<Vec<NodeView>, StoreError> {
    let mut nodes = db.many(db.pick(SELECT_NODES, SELECT_NODES_PG), args![], |r| {
        let status: String = r.get(2)?;
        Ok(NodeView {
            node_id: r.get(0)?,
            region: r.get(1)?,
            status: NodeStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("node status {status:?}")))?,
            capabilities: parse_list(&r.get::<String>(3)?)?,
            max_workers: r.get(4)?,
            gpu: r.get(5)?,
            backend: r.get(6)?,
            models: parse_list(&r.get::<String>(7)?)?,
            agent_version: r.get(8)?,
            registered_at: r.get(9)?,
            last_heartbeat_at: r.get(10)?,
            rtt_ms: r.get(11)?,
            jobs_succeeded: r.get::<i64>(12)? as u64,
            jobs_failed: r.get::<i64>(13)? as u64,
            running: r.get::<i64>(14)? as u32,
            mean_llm_ms: r.get(15)?,
            latitude: r.get(16)?,
            longitude: r.get(17)?,
            specialization: r.get(18)?,
            metrics: None,
        })
    })?;
    for node in &mut nodes {
        node.metrics = db.optional(SELECT_LATEST_METRICS, args![node.node_id], |r| {
            Ok(NodeMetrics {
                cpu_percent: r.get::<f64>(0)? as f32,
                mem_used_bytes: r.get::<i64>(1)? as u64,
                mem_total_bytes: r.get::<i64>(2)? as u64,
                load_1: r.get(3)?,
                load_5: r.get(4)?,
                load_15: r.get(5)?,
                disk_used_bytes: r.get::<i64>(6)? as u64,
                disk_total_bytes: r.get::<i64>(7)? as u64,
            })
        })?;
    }
    Ok(nodes)
}
