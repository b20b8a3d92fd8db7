//! Rows of enrollment keys, and retirement of nodes lost for long.

use kobo_protocol::EnrollKeyView;

use super::StoreError;
use super::security::REVOKE_NODE_CERTIFICATES;
use super::sql::{Db, args};

pub const INSERT_ENROLL_KEY: &str = "INSERT INTO enroll_keys (id, prefix, secret_mac, created_at, created_by, expires_at, max_enrollments) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
pub const SELECT_ENROLL_KEYS: &str = "SELECT id, prefix, created_at, created_by, expires_at, max_enrollments, enrollments, revoked_at, secret_mac FROM enroll_keys WHERE ?1 IS NULL OR id = ?1 ORDER BY created_at, id";
/// PostgreSQL cannot infer the type of a parameter only tested for NULL
/// in every spelling: the same query with the parameter typed.
pub const SELECT_ENROLL_KEYS_PG: &str = "SELECT id, prefix, created_at, created_by, expires_at, max_enrollments, enrollments, revoked_at, secret_mac FROM enroll_keys WHERE CAST(?1 AS TEXT) IS NULL OR id = ?1 ORDER BY created_at, id";
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
    db: &dyn Db,
    now: i64,
    id: &str,
    prefix: &str,
    secret_mac: &[u8],
    created_by: &str,
    expires_at: Option<i64>,
    max_enrollments: Option<u32>,
) -> Result<(), StoreError> {
    db.execute(
        INSERT_ENROLL_KEY,
        args![
            id,
            prefix,
            secret_mac,
            now,
            created_by,
            expires_at,
            max_enrollments
        ],
    )?;
    Ok(())
}

/// Every key (`id` none) or the one key `id`.
pub fn enroll_keys(db: &dyn Db, id: Option<&str>) -> Result<Vec<EnrollKeyRecord>, StoreError> {
    db.many(
        db.pick(SELECT_ENROLL_KEYS, SELECT_ENROLL_KEYS_PG),
        args![id],
        |r| {
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
        },
    )
}

/// Counts one enrollment; false if the key has reached its maximum.
pub fn count_enrollment(db: &dyn Db, id: &str) -> Result<bool, StoreError> {
    Ok(db.execute(COUNT_ENROLLMENT, args![id])? == 1)
}

/// Revokes a key; false if there is no such live key.
pub fn revoke_enroll_key(db: &dyn Db, now: i64, id: &str) -> Result<bool, StoreError> {
    Ok(db.execute(REVOKE_ENROLL_KEY, args![id, now])? == 1)
}

/// The status of the live node named `node_id`, if an agent runs as it.
pub fn live_node_status(db: &dyn Db, node_id: &str) -> Result<Option<String>, StoreError> {
    db.optional(SELECT_LIVE_NODE, args![node_id], |r| r.get(0))
}

/// Nodes lost since before `lost_before`: (node id, last heartbeat).
pub fn retirable_nodes(db: &dyn Db, lost_before: i64) -> Result<Vec<(String, i64)>, StoreError> {
    db.many(SELECT_RETIRABLE, args![lost_before], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
}

/// Revokes every certificate of `node_id`; returns how many.
pub fn revoke_certificates_of(db: &dyn Db, now: i64, node_id: &str) -> Result<usize, StoreError> {
    db.execute(REVOKE_NODE_CERTIFICATES, args![node_id, now])
}

/// Retires a node: marks it retired and revoked and revokes every
/// certificate of it. Returns the certificates revoked.
pub fn retire_node(db: &dyn Db, now: i64, node_id: &str) -> Result<usize, StoreError> {
    db.execute(RETIRE_NODE, args![node_id, now])?;
    revoke_certificates_of(db, now, node_id)
}
