//! Rows of the security tables: API keys, join tokens, issued certificates,
//! node revocation.

use kobo_protocol::{AccessRole, ApiKeyView, Budget, BudgetPeriod, KeyPolicy, PriorityClass};

use super::StoreError;
use super::jobs::Changes;
use super::leases::release_node_leases;
use super::sql::{Db, Row, args};

pub const INSERT_API_KEY: &str = "INSERT INTO api_keys (id, name, role, secret_mac, created_at, created_by, weight, class, rpm, tpm, max_concurrent, budget_tokens, budget_period) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";
pub const SELECT_API_KEYS: &str = "SELECT id, name, role, secret_mac, created_at, created_by, revoked_at, weight, class, rpm, tpm, max_concurrent, budget_tokens, budget_period FROM api_keys ORDER BY created_at, id";
pub const UPDATE_API_KEY_POLICY: &str = "UPDATE api_keys SET weight = ?2, class = ?3, rpm = ?4, tpm = ?5, max_concurrent = ?6, budget_tokens = ?7, budget_period = ?8 WHERE id = ?1";
pub const REVOKE_API_KEY: &str =
    "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL";
pub const INSERT_TOKEN: &str = "INSERT INTO join_tokens (id, node_id, secret_mac, created_at, created_by, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
pub const SELECT_TOKEN: &str =
    "SELECT node_id, secret_mac, expires_at, used_at FROM join_tokens WHERE id = ?1";
/// PostgreSQL: the token's row is locked until the join commits, so of two
/// joins with one token the second reads it used (SQLite's single writer
/// serialised them; [`USE_TOKEN`] alone also refuses the second).
pub const SELECT_TOKEN_PG: &str =
    "SELECT node_id, secret_mac, expires_at, used_at FROM join_tokens WHERE id = ?1 FOR UPDATE";
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

#[allow(clippy::too_many_arguments)]
pub fn insert_api_key(
    db: &dyn Db,
    now: i64,
    id: &str,
    name: &str,
    role: AccessRole,
    secret_mac: &[u8],
    created_by: &str,
    policy: &KeyPolicy,
) -> Result<(), StoreError> {
    db.execute(
        INSERT_API_KEY,
        args![
            id,
            name,
            role.as_str(),
            secret_mac,
            now,
            created_by,
            policy.weight,
            policy.class.map(PriorityClass::as_str),
            policy.rpm,
            policy.tpm.map(|t| t as i64),
            policy.max_concurrent,
            policy.budget.map(|b| b.tokens as i64),
            policy.budget.map(|b| b.period.as_str()),
        ],
    )?;
    Ok(())
}

/// Replaces a key's weight, class and limits; false if there is no such key.
pub fn update_api_key_policy(
    db: &dyn Db,
    id: &str,
    policy: &KeyPolicy,
) -> Result<bool, StoreError> {
    Ok(db.execute(
        UPDATE_API_KEY_POLICY,
        args![
            id,
            policy.weight,
            policy.class.map(PriorityClass::as_str),
            policy.rpm,
            policy.tpm.map(|t| t as i64),
            policy.max_concurrent,
            policy.budget.map(|b| b.tokens as i64),
            policy.budget.map(|b| b.period.as_str()),
        ],
    )? == 1)
}

/// The policy columns of an `api_keys` row, from column `first` on.
fn policy_of(r: &Row<'_>, first: usize) -> Result<KeyPolicy, StoreError> {
    let class: Option<String> = r.get(first + 1)?;
    let budget_tokens: Option<i64> = r.get(first + 5)?;
    let budget_period: Option<String> = r.get(first + 6)?;
    let budget = match (budget_tokens, budget_period) {
        (Some(tokens), Some(period)) => Some(Budget {
            tokens: tokens as u64,
            period: BudgetPeriod::parse(&period)
                .ok_or_else(|| StoreError::Corrupt(format!("api key budget period {period:?}")))?,
        }),
        _ => None,
    };
    Ok(KeyPolicy {
        weight: r.get(first)?,
        class: class
            .map(|c| {
                PriorityClass::parse(&c)
                    .ok_or_else(|| StoreError::Corrupt(format!("api key class {c:?}")))
            })
            .transpose()?,
        rpm: r.get(first + 2)?,
        tpm: r.get::<Option<i64>>(first + 3)?.map(|t| t as u64),
        max_concurrent: r.get(first + 4)?,
        budget,
    })
}

pub fn list_api_keys(db: &dyn Db) -> Result<Vec<ApiKeyRecord>, StoreError> {
    db.many(SELECT_API_KEYS, args![], |r| {
        let role: String = r.get(2)?;
        Ok(ApiKeyRecord {
            view: ApiKeyView {
                id: r.get(0)?,
                name: r.get(1)?,
                role: AccessRole::parse(&role)
                    .ok_or_else(|| StoreError::Corrupt(format!("api key role {role:?}")))?,
                created_at: r.get(4)?,
                created_by: r.get(5)?,
                revoked_at: r.get(6)?,
                policy: policy_of(r, 7)?,
            },
            secret_mac: r.get(3)?,
        })
    })
}

/// Revokes a key; false if there is no such live key.
pub fn revoke_api_key(db: &dyn Db, now: i64, id: &str) -> Result<bool, StoreError> {
    Ok(db.execute(REVOKE_API_KEY, args![id, now])? == 1)
}

pub fn insert_token(
    db: &dyn Db,
    now: i64,
    id: &str,
    node_id: &str,
    secret_mac: &[u8],
    created_by: &str,
    expires_at: i64,
) -> Result<(), StoreError> {
    db.execute(
        INSERT_TOKEN,
        args![id, node_id, secret_mac, now, created_by, expires_at],
    )?;
    Ok(())
}

/// A join token row: (node id, secret MAC, expires at, used at).
pub type TokenRow = (String, Vec<u8>, i64, Option<i64>);

pub fn find_token(db: &dyn Db, id: &str) -> Result<Option<TokenRow>, StoreError> {
    db.optional(db.pick(SELECT_TOKEN, SELECT_TOKEN_PG), args![id], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    })
}

/// Marks a token used; false if it already was (a concurrent join won).
pub fn use_token(db: &dyn Db, now: i64, id: &str) -> Result<bool, StoreError> {
    Ok(db.execute(USE_TOKEN, args![id, now])? == 1)
}

pub fn insert_certificate(
    db: &dyn Db,
    now: i64,
    serial: &str,
    node_id: &str,
    not_after: i64,
    issued_by: &str,
) -> Result<(), StoreError> {
    db.execute(
        INSERT_CERTIFICATE,
        args![serial, node_id, now, not_after, issued_by],
    )?;
    Ok(())
}

/// (serial, node id) of every certificate not revoked.
pub fn valid_certificates(db: &dyn Db) -> Result<Vec<(String, String)>, StoreError> {
    db.many(SELECT_VALID_CERTIFICATES, args![], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
}

/// Revokes every certificate of `node_id`, marks the node revoked and
/// releases its leases. Returns (certificates revoked, leases released).
pub fn revoke_node(
    db: &dyn Db,
    now: i64,
    node_id: &str,
    changes: &mut Changes,
) -> Result<(usize, usize), StoreError> {
    let certs = db.execute(REVOKE_NODE_CERTIFICATES, args![node_id, now])?;
    let nodes = db.execute(REVOKE_NODE, args![node_id, now])?;
    if certs == 0 && nodes == 0 {
        return Err(StoreError::NodeNotFound(node_id.to_string()));
    }
    let leases = release_node_leases(
        db,
        now,
        node_id,
        "node_lost",
        &format!("node {node_id} revoked"),
        None,
        changes,
    )?;
    Ok((certs, leases))
}
