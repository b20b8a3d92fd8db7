//! Rows of enrollment keys, and retirement of nodes lost for long.

use kobo_protocol::EnrollKeyView;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::StoreError;
use super::security::REVOKE_NODE_CERTIFICATES;

pub const INSERT_ENROLL_KEY: &str = "INSERT INTO enroll_keys (id, prefix, secret_mac, created_at, created_by, expires_at, max_enrollments) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
pub const SELECT_ENROLL_KEYS: &str = "SELECT id, prefix, created_at, created_by, expires_at, max_enrollments, enrollments, revoked_at, secret_mac FROM enroll_keys WHERE ?1 IS NULL OR id = ?1 ORDER BY created_at, id";
/// Counts one enrollment unless that would pass the key's maximum: the
/// one statement that decides, so concurrent enrollments cannot overshoot.
pub const COUNT_ENROLLMENT: &str = "UPDATE enroll_keys SET enrollments = enrollments + 1 WHERE id = ?1 AND (max_enrollments IS NULL OR enrollments < max_enrollments)";
pub const REVOKE_ENROLL_KEY: &str =
    "UPDATE enroll_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL";
/// A node of that name an agent is running as: known, not lost, not retired.
pub const SELECT_LIVE_NODE: &str =
    "SELECT status FROM nodes WHERE node_id = ?1 AND retired_at IS NULL AND status <> 'lost'";
pub const SELECT_RETIRABLE: &str = "SELECT node_id, last_heartbeat_at FROM nodes WHERE status = 'lost' AND retired_at IS NULL AND last_heartbeat_at < ?1 ORDER BY last_heartbeat_at LIMIT 500";
pub const RETIRE_NODE: &str =
    "UPDATE nodes SET retired_at = ?2, revoked_at = ?2 WHERE node_id = ?1 AND retired_at IS NULL";

/// An enrollment key row with its secret's hash.
#[derive(Debug, Clone)]
pub struct EnrollKeyRecord {
    pub view: EnrollKeyView,
    pub secret_mac: Vec<u8>,
}

#[allow(clippy::too_many_arguments)]
pub fn insert_enroll_key(
    tx: &Transaction<'_>,
    now: i64,
    id: &str,
    prefix: &str,
    secret_mac: &[u8],
    created_by: &str,
    expires_at: Option<i64>,
    max_enrollments: Option<u32>,
) -> Result<(), StoreError> {
    tx.prepare_cached(INSERT_ENROLL_KEY)?.execute(params![
        id,
        prefix,
        secret_mac,
        now,
        created_by,
        expires_at,
        max_enrollments
    ])?;
    Ok(())
}

/// Every key (`id` none) or the one key `id`.
pub fn enroll_keys(
    conn: &Connection,
    id: Option<&str>,
) -> Result<Vec<EnrollKeyRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(SELECT_ENROLL_KEYS)?;
    let rows = stmt.query_map([id], |r| {
        Ok(EnrollKeyRecord {
            view: EnrollKeyView {
                id: r.get(0)?,
                prefix: r.get(1)?,
                created_at: r.get(2)?,
                created_by: r.get(3)?,
                expires_at: r.get(4)?,
                max_enrollments: r.get(5)?,
                enrollments: r.get(6)?,
                revoked_at: r.get(7)?,
            },
            secret_mac: r.get(8)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Counts one enrollment; false if the key has reached its maximum.
pub fn count_enrollment(tx: &Transaction<'_>, id: &str) -> Result<bool, StoreError> {
    Ok(tx.prepare_cached(COUNT_ENROLLMENT)?.execute([id])? == 1)
}

/// Revokes a key; false if there is no such live key.
pub fn revoke_enroll_key(tx: &Transaction<'_>, now: i64, id: &str) -> Result<bool, StoreError> {
    Ok(tx
        .prepare_cached(REVOKE_ENROLL_KEY)?
        .execute(params![id, now])?
        == 1)
}

/// The status of the live node named `node_id`, if an agent runs as it.
pub fn live_node_status(tx: &Transaction<'_>, node_id: &str) -> Result<Option<String>, StoreError> {
    Ok(tx
        .prepare_cached(SELECT_LIVE_NODE)?
        .query_row([node_id], |r| r.get(0))
        .optional()?)
}

/// Nodes lost since before `lost_before`: (node id, last heartbeat).
pub fn retirable_nodes(
    tx: &Transaction<'_>,
    lost_before: i64,
) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(tx
        .prepare_cached(SELECT_RETIRABLE)?
        .query_map([lost_before], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?)
}

/// Revokes every certificate of `node_id`; returns how many.
pub fn revoke_certificates_of(
    tx: &Transaction<'_>,
    now: i64,
    node_id: &str,
) -> Result<usize, StoreError> {
    Ok(tx
        .prepare_cached(REVOKE_NODE_CERTIFICATES)?
        .execute(params![node_id, now])?)
}

/// Retires a node: marks it retired and revoked and revokes every
/// certificate of it. Returns the certificates revoked.
pub fn retire_node(tx: &Transaction<'_>, now: i64, node_id: &str) -> Result<usize, StoreError> {
    tx.prepare_cached(RETIRE_NODE)?
        .execute(params![node_id, now])?;
    revoke_certificates_of(tx, now, node_id)
}
