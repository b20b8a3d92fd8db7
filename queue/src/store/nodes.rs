//! Node writes and reads: registration, heartbeats, metrics, listing.

use kobo_protocol::{HeartbeatRequest, NodeMetrics, NodeStatus, NodeView, RegisterRequest};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use super::jobs::{Changes, Retry};
use super::leases::release_node_leases;
use super::{StoreError, parse_list};
use crate::routing::NodeProfile;

pub const UPSERT_NODE: &str = "INSERT INTO nodes (node_id, instance_id, region, capabilities, max_workers, gpu, backend, models, agent_version, specialization, status, registered_at, last_heartbeat_at, latitude, longitude) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'active', ?11, ?11, ?12, ?13) ON CONFLICT (node_id) DO UPDATE SET instance_id = excluded.instance_id, region = excluded.region, capabilities = excluded.capabilities, max_workers = excluded.max_workers, gpu = excluded.gpu, backend = excluded.backend, models = excluded.models, agent_version = excluded.agent_version, specialization = excluded.specialization, status = CASE WHEN nodes.status IN ('draining', 'drained') THEN nodes.status ELSE 'active' END, registered_at = excluded.registered_at, last_heartbeat_at = excluded.last_heartbeat_at, latitude = excluded.latitude, longitude = excluded.longitude, revoked_at = NULL, retired_at = NULL";
pub const SELECT_INSTANCE: &str = "SELECT instance_id FROM nodes WHERE node_id = ?1";
pub const SELECT_PROFILE: &str = "SELECT node_id, region, capabilities, gpu, models, max_workers, instance_id, status FROM nodes WHERE node_id = ?1";
pub const TOUCH_NODE: &str = "UPDATE nodes SET last_heartbeat_at = max(coalesce(last_heartbeat_at, ?2), ?2), status = CASE WHEN status = 'lost' THEN 'active' ELSE status END WHERE node_id = ?1";
/// A heartbeat in one statement: [`TOUCH_NODE`] and what it reports.
pub const RECORD_HEARTBEAT: &str = "UPDATE nodes SET last_heartbeat_at = max(coalesce(last_heartbeat_at, ?2), ?2), status = CASE WHEN status = 'lost' THEN 'active' ELSE status END, rtt_ms = coalesce(?3, rtt_ms), loaded_models = coalesce(?4, loaded_models) WHERE node_id = ?1";
pub const INSERT_METRICS: &str = "INSERT OR REPLACE INTO node_metrics (node_id, at, cpu_percent, mem_used_bytes, mem_total_bytes, load_1, load_5, load_15, disk_used_bytes, disk_total_bytes, running) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";
pub const PRUNE_METRICS: &str = "DELETE FROM node_metrics WHERE (node_id, at) IN (SELECT node_id, at FROM node_metrics WHERE at < ?1 LIMIT 5000)";
pub const SELECT_NODES: &str = "SELECT n.node_id, n.region, n.status, n.capabilities, n.max_workers, n.gpu, n.backend, n.models, n.agent_version, n.registered_at, n.last_heartbeat_at, n.rtt_ms, n.jobs_succeeded, n.jobs_failed, (SELECT count(*) FROM jobs j WHERE j.state = 'leased' AND j.node_id = n.node_id) , (SELECT avg(a.duration_ms) FROM job_attempts a WHERE a.node_id = n.node_id AND a.outcome = 'succeeded'), n.latitude, n.longitude, n.specialization FROM nodes n WHERE n.retired_at IS NULL ORDER BY n.node_id";
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
    tx: &Transaction<'_>,
    now: i64,
    req: &RegisterRequest,
    retry: Option<Retry>,
    changes: &mut Changes,
) -> Result<(), StoreError> {
    let previous: Option<String> = tx
        .prepare_cached(SELECT_INSTANCE)?
        .query_row([&req.node_id], |r| r.get(0))
        .optional()?;
    let to_json = |list: &[String]| serde_json::to_string(list).unwrap_or_else(|_| "[]".into());
    tx.prepare_cached(UPSERT_NODE)?.execute(params![
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
    ])?;
    if let Some(previous) = previous
        && previous != req.instance_id
    {
        let n = release_node_leases(
            tx,
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

fn node_record(row: &Row<'_>) -> rusqlite::Result<(NodeProfile, String, String, String, String)> {
    Ok((
        NodeProfile {
            node_id: row.get(0)?,
            region: row.get(1)?,
            capabilities: Vec::new(),
            gpu: row.get(3)?,
            models: Vec::new(),
            max_workers: row.get(5)?,
        },
        row.get(2)?,
        row.get(4)?,
        row.get(6)?,
        row.get(7)?,
    ))
}

/// Loads a node for the lease path; `NodeNotFound` if it never registered.
pub fn load_node(conn: &Connection, node_id: &str) -> Result<NodeRecord, StoreError> {
    let (mut profile, caps, models, instance_id, status) = conn
        .prepare_cached(SELECT_PROFILE)?
        .query_row([node_id], node_record)
        .optional()?
        .ok_or_else(|| StoreError::NodeNotFound(node_id.to_string()))?;
    profile.capabilities = parse_list(&caps)?;
    profile.models = parse_list(&models)?;
    let status = NodeStatus::parse(&status)
        .ok_or_else(|| StoreError::Corrupt(format!("node status {status:?}")))?;
    Ok(NodeRecord {
        profile,
        instance_id,
        status,
    })
}

/// Records that the node is alive (a lost node comes back as active).
pub fn touch_node(tx: &Transaction<'_>, now: i64, node_id: &str) -> Result<(), StoreError> {
    tx.prepare_cached(TOUCH_NODE)?
        .execute(params![node_id, now])?;
    Ok(())
}

/// Stores what a heartbeat says about the node.
pub fn record_heartbeat(
    tx: &Transaction<'_>,
    now: i64,
    req: &HeartbeatRequest,
) -> Result<(), StoreError> {
    let loaded = req
        .loaded_models
        .as_ref()
        .map(|m| serde_json::to_string(m).unwrap_or_else(|_| "[]".into()));
    tx.prepare_cached(RECORD_HEARTBEAT)?
        .execute(params![req.node_id, now, req.rtt_ms, loaded])?;
    if let Some(m) = &req.metrics {
        tx.prepare_cached(INSERT_METRICS)?.execute(params![
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
        ])?;
    }
    Ok(())
}

/// Deletes a bounded number of metrics rows older than `before`.
pub fn prune_metrics(tx: &Transaction<'_>, before: i64) -> Result<usize, StoreError> {
    Ok(tx.prepare_cached(PRUNE_METRICS)?.execute([before])?)
}

/// Every node, for `GET /v1/nodes`.
pub fn list_nodes(conn: &Connection) -> Result<Vec<NodeView>, StoreError> {
    let mut stmt = conn.prepare_cached(SELECT_NODES)?;
    let mut rows = stmt.query([])?;
    let mut nodes = Vec::new();
    while let Some(r) = rows.next()? {
        let status: String = r.get(2)?;
        nodes.push(NodeView {
            node_id: r.get(0)?,
            region: r.get(1)?,
            status: NodeStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("node status {status:?}")))?,
            capabilities: parse_list(&r.get::<_, String>(3)?)?,
            max_workers: r.get(4)?,
            gpu: r.get(5)?,
            backend: r.get(6)?,
            models: parse_list(&r.get::<_, String>(7)?)?,
            agent_version: r.get(8)?,
            registered_at: r.get(9)?,
            last_heartbeat_at: r.get(10)?,
            rtt_ms: r.get(11)?,
            jobs_succeeded: r.get::<_, i64>(12)? as u64,
            jobs_failed: r.get::<_, i64>(13)? as u64,
            running: r.get::<_, i64>(14)? as u32,
            mean_llm_ms: r.get(15)?,
            latitude: r.get(16)?,
            longitude: r.get(17)?,
            specialization: r.get(18)?,
            metrics: None,
        });
    }
    drop(rows);
    let mut metrics = conn.prepare_cached(SELECT_LATEST_METRICS)?;
    for node in &mut nodes {
        node.metrics = metrics
            .query_row([&node.node_id], |r| {
                Ok(NodeMetrics {
                    cpu_percent: r.get::<_, f64>(0)? as f32,
                    mem_used_bytes: r.get::<_, i64>(1)? as u64,
                    mem_total_bytes: r.get::<_, i64>(2)? as u64,
                    load_1: r.get(3)?,
                    load_5: r.get(4)?,
                    load_15: r.get(5)?,
                    disk_used_bytes: r.get::<_, i64>(6)? as u64,
                    disk_total_bytes: r.get::<_, i64>(7)? as u64,
                })
            })
            .optional()?;
    }
    Ok(nodes)
}
