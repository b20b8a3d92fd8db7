//! Rows of the security tables: API keys, join tokens, issued certificates,
//! node revocation.

use kobo_protocol::{AccessRole, ApiKeyView};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::StoreError;
use super::jobs::Changes;
use super::leases::release_node_leases;

pub const INSERT_API_KEY: &str = "INSERT INTO api_keys (id, name, role, secret_mac, created_at, created_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
pub const SELECT_API_KEYS: &str = "SELECT id, name, role, secret_mac, created_at, created_by, revoked_at FROM api_keys ORDER BY created_at, id";
pub const REVOKE_API_KEY: &str =
    "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL";
pub const INSERT_TOKEN: &str = "INSERT INTO join_tokens (id, node_id, secret_mac, created_at, created_by, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
pub const SELECT_TOKEN: &str =
    "SELECT node_id, secret_mac, expires_at, used_at FROM join_tokens WHERE id = ?1";
pub const USE_TOKEN: &str = "UPDATE join_tokens SET used_at = ?2 WHERE id = ?1 AND used_at IS NULL";
pub const INSERT_CERTIFICATE: &str = "INSERT INTO certificates (serial, node_id, issued_at, not_after, issued_by) VALUES (?1, ?2, ?3, ?4, ?5)";
pub const SELECT_VALID_CERTIFICATES: &str =
    "SELECT serial, node_id FROM certificates WHERE revoked_at IS NULL";
pub const REVOKE_NODE_CERTIFICATES: &str =
    "UPDATE certificates SET revoked_at = ?2 WHERE node_id = ?1 AND revoked_at IS NULL";
pub const REVOKE_NODE: &str = "UPDATE nodes SET revoked_at = ?2 WHERE node_id = ?1";

/// An API key as the authentication cache holds it.
#[derive(Debug, Clone)]
pub struct ApiKeyRecord {
    pub view: ApiKeyView,
    pub secret_mac: Vec<u8>,
}

pub fn insert_api_key(
    tx: &Transaction<'_>,
    now: i64,
    id: &str,
    name: &str,
    role: AccessRole,
    secret_mac: &[u8],
    created_by: &str,
) -> Result<(), StoreError> {
    tx.prepare_cached(INSERT_API_KEY)?.execute(params![
        id,
        name,
        role.as_str(),
        secret_mac,
        now,
        created_by
    ])?;
    Ok(())
}

pub fn list_api_keys(conn: &Connection) -> Result<Vec<ApiKeyRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(SELECT_API_KEYS)?;
    let mut rows = stmt.query([])?;
    let mut keys = Vec::new();
    while let Some(r) = rows.next()? {
        let role: String = r.get(2)?;
        keys.push(ApiKeyRecord {
            view: ApiKeyView {
                id: r.get(0)?,
                name: r.get(1)?,
                role: AccessRole::parse(&role)
                    .ok_or_else(|| StoreError::Corrupt(format!("api key role {role:?}")))?,
                created_at: r.get(4)?,
                created_by: r.get(5)?,
                revoked_at: r.get(6)?,
            },
            secret_mac: r.get(3)?,
        });
    }
    Ok(keys)
}

/// Revokes a key; false if there is no such live key.
pub fn revoke_api_key(tx: &Transaction<'_>, now: i64, id: &str) -> Result<bool, StoreError> {
    Ok(tx
        .prepare_cached(REVOKE_API_KEY)?
        .execute(params![id, now])?
        == 1)
}

pub fn insert_token(
    tx: &Transaction<'_>,
    now: i64,
    id: &str,
    node_id: &str,
    secret_mac: &[u8],
    created_by: &str,
    expires_at: i64,
) -> Result<(), StoreError> {
    tx.prepare_cached(INSERT_TOKEN)?.execute(params![
        id, node_id, secret_mac, now, created_by, expires_at
    ])?;
    Ok(())
}

/// A join token row: (node id, secret MAC, expires at, used at).
pub type TokenRow = (String, Vec<u8>, i64, Option<i64>);

pub fn find_token(tx: &Transaction<'_>, id: &str) -> Result<Option<TokenRow>, StoreError> {
    Ok(tx
        .prepare_cached(SELECT_TOKEN)?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .optional()?)
}

/// Marks a token used; false if it already was (a concurrent join won).
pub fn use_token(tx: &Transaction<'_>, now: i64, id: &str) -> Result<bool, StoreError> {
    Ok(tx.prepare_cached(USE_TOKEN)?.execute(params![id, now])? == 1)
}

pub fn insert_certificate(
    tx: &Transaction<'_>,
    now: i64,
    serial: &str,
    node_id: &str,
    not_after: i64,
    issued_by: &str,
) -> Result<(), StoreError> {
    tx.prepare_cached(INSERT_CERTIFICATE)?
        .execute(params![serial, node_id, now, not_after, issued_by])?;
    Ok(())
}

/// (serial, node id) of every certificate not revoked.
pub fn valid_certificates(conn: &Connection) -> Result<Vec<(String, String)>, StoreError> {
    Ok(conn
        .prepare_cached(SELECT_VALID_CERTIFICATES)?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?)
}

/// Revokes every certificate of `node_id`, marks the node revoked and
/// releases its leases. Returns (certificates revoked, leases released).
pub fn revoke_node(
    tx: &Transaction<'_>,
    now: i64,
    node_id: &str,
    changes: &mut Changes,
) -> Result<(usize, usize), StoreError> {
    let certs = tx
        .prepare_cached(REVOKE_NODE_CERTIFICATES)?
        .execute(params![node_id, now])?;
    let nodes = tx
        .prepare_cached(REVOKE_NODE)?
        .execute(params![node_id, now])?;
    if certs == 0 && nodes == 0 {
        return Err(StoreError::NodeNotFound(node_id.to_string()));
    }
    let leases = release_node_leases(
        tx,
        now,
        node_id,
        "node_lost",
        &format!("node {node_id} revoked"),
        None,
        changes,
    )?;
    Ok((certs, leases))
}
