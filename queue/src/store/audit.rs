//! The audit log: append-only rows chained by SHA-256, so that editing or
//! deleting a row shows.

use kobo_protocol::{AuditEntry, AuditVerify};

use super::StoreError;
use super::sql::{Db, Dialect, Row, args};
use crate::security::sha256_hex;

pub const SELECT_LAST_AUDIT_HASH: &str = "SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1";
pub const INSERT_AUDIT: &str = "INSERT INTO audit_log (at, actor, action, target, outcome, source, request_id, detail, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
pub const SELECT_AUDIT: &str = "SELECT id, at, actor, action, target, outcome, source, request_id, detail, hash FROM audit_log WHERE at >= ?1 ORDER BY id LIMIT ?2";
pub const SELECT_AUDIT_ALL: &str = "SELECT id, at, actor, action, target, outcome, source, request_id, detail, hash FROM audit_log ORDER BY id";

/// PostgreSQL: appends take this transaction-level advisory lock before they
/// read the last hash ("audt" in ASCII), so two writers (two coordinators,
/// or two connections of one) append one after the other and never chain
/// two rows to the same predecessor. SQLite's single writer serialises them.
///
/// An advisory lock rather than `SELECT … FOR UPDATE` of the last row: that
/// locks nothing while the log is empty, and under READ COMMITTED a waiter
/// woken by the holder's commit gets back the row it waited on, which is no
/// longer the last. The lock is taken in a statement of its own so the read
/// after it (a new snapshot under READ COMMITTED, which `PgConn::transaction`
/// starts) sees the holder's row; under REPEATABLE READ it would not.
pub const LOCK_AUDIT_PG: &str = "SELECT pg_advisory_xact_lock(?1)";
pub const AUDIT_LOCK_KEY: i64 = 0x6175_6474;

/// The hash of the chain's start.
const GENESIS: &str = "kobo-audit-v1";

/// What to record; `at` and the hash are filled in on append.
#[derive(Debug, Clone, Default)]
pub struct AuditRecord {
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub outcome: &'static str,
    pub source: Option<String>,
    pub request_id: Option<String>,
    pub detail: Option<String>,
}

/// The chained hash of one row: every field length-prefixed, so no two
/// different rows hash alike.
fn row_hash(prev: &str, at: i64, r: &AuditRecord) -> String {
    let mut buf = Vec::new();
    let mut push = |field: Option<&str>| match field {
        Some(text) => {
            buf.extend_from_slice(&(text.len() as u64).to_be_bytes());
            buf.extend_from_slice(text.as_bytes());
        }
        None => buf.extend_from_slice(&u64::MAX.to_be_bytes()),
    };
    push(Some(prev));
    push(Some(&at.to_string()));
    push(Some(&r.actor));
    push(Some(&r.action));
    push(r.target.as_deref());
    push(Some(r.outcome));
    push(r.source.as_deref());
    push(r.request_id.as_deref());
    push(r.detail.as_deref());
    sha256_hex(&buf)
}

/// Appends a row chained to the last one; its id.
pub fn append_audit(db: &dyn Db, now: i64, record: &AuditRecord) -> Result<i64, StoreError> {
    if db.dialect() == Dialect::Postgres {
        db.execute(LOCK_AUDIT_PG, args![AUDIT_LOCK_KEY])?;
    }
    let prev: String = db
        .optional(SELECT_LAST_AUDIT_HASH, args![], |r| r.get(0))?
        .unwrap_or_else(|| GENESIS.to_string());
    let hash = row_hash(&prev, now, record);
    // A plain insert on SQLite: `RETURNING` builds a temporary table on
    // every run there.
    db.insert_id(
        INSERT_AUDIT,
        args![
            now,
            record.actor,
            record.action,
            record.target,
            record.outcome,
            record.source,
            record.request_id,
            record.detail,
            hash
        ],
    )?
    .ok_or_else(|| StoreError::Corrupt("the audit row was not inserted".into()))
}

fn entry(r: &Row<'_>) -> Result<AuditEntry, StoreError> {
    Ok(AuditEntry {
        id: r.get(0)?,
        at: r.get(1)?,
        actor: r.get(2)?,
        action: r.get(3)?,
        target: r.get(4)?,
        outcome: r.get(5)?,
        source: r.get(6)?,
        request_id: r.get(7)?,
        detail: r.get(8)?,
        hash: r.get(9)?,
    })
}

pub fn list_audit(db: &dyn Db, since: i64, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
    db.many(SELECT_AUDIT, args![since, limit], entry)
}

/// Recomputes the chain; reports the first row that does not match.
pub fn verify_audit(db: &dyn Db) -> Result<AuditVerify, StoreError> {
    let mut prev = GENESIS.to_string();
    let mut n = 0u64;
    let mut first_bad_id = None;
    db.for_each(SELECT_AUDIT_ALL, args![], &mut |row| {
        let e = entry(row)?;
        n += 1;
        let outcome: &'static str = match e.outcome.as_str() {
            "ok" => "ok",
            "denied" => "denied",
            _ => "failed",
        };
        let record = AuditRecord {
            actor: e.actor,
            action: e.action,
            target: e.target,
            outcome,
            source: e.source,
            request_id: e.request_id,
            detail: e.detail,
        };
        if row_hash(&prev, e.at, &record) != e.hash || outcome != e.outcome {
            first_bad_id = Some(e.id);
            return Ok(false);
        }
        prev = e.hash;
        Ok(true)
    })?;
    Ok(AuditVerify {
        rows: n,
        ok: first_bad_id.is_none(),
        first_bad_id,
    })
}
