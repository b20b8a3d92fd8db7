//! Connection settings, migrations and the list of every query constant (so a
//! test can prepare them all against a migrated database).

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use super::StoreError;

/// Migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    include_str!("../../../sql/migrations/0001_init.sql"),
    include_str!("../../../sql/migrations/0002_views.sql"),
    include_str!("../../../sql/migrations/0003_security.sql"),
    include_str!("../../../sql/migrations/0004_observability.sql"),
    include_str!("../../../sql/migrations/0005_routing.sql"),
    include_str!("../../../sql/migrations/0006_gateway_mark.sql"),
    include_str!("../../../sql/migrations/0007_tenancy.sql"),
    include_str!("../../../sql/migrations/0008_enrollment.sql"),
    include_str!("../../../sql/migrations/0009_scaler_role.sql"),
];

/// The schema version a migrated database has.
pub const MIGRATIONS_APPLIED: i64 = MIGRATIONS.len() as i64;

/// How long a connection waits for a lock held by another process (an
/// operator's `sqlite3`, say) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Every query constant of the store, for the test that prepares them all.
pub const QUERIES: &[&str] = &[
    super::timed::REFRESH_NODES_AFTER_RESTART,
    super::timed::REFRESH_LEASES_AFTER_RESTART,
    super::jobs::INSERT_JOB,
    super::jobs::FIND_BY_IDEMPOTENCY_KEY,
    super::leases::SELECT_FOR_GRANT,
    super::leases::GRANT_LEASE,
    super::jobs::INSERT_ATTEMPT,
    super::jobs::FINISH_ATTEMPT,
    super::jobs::INSERT_EVENT,
    super::jobs::SELECT_JOB_ROW,
    super::jobs::SELECT_SESSION_NODE,
    super::jobs::ADD_USAGE,
    super::jobs::TOKENS_USED_SINCE,
    super::leases::SELECT_QUEUED_KEYS,
    super::leases::SELECT_QUEUED_OF_KEY,
    super::leases::COUNT_LEASED_BY,
    super::leases::SELECT_NEXT_QUEUED_OF_KEY,
    super::jobs::SELECT_ATTEMPT_OUTCOME,
    super::leases::RENEW_LEASE,
    super::leases::SELECT_LEASED_BY_NODE,
    super::timed::SELECT_DUE_SCHEDULED,
    super::timed::SELECT_EXPIRED_LEASES,
    super::timed::SELECT_LOST_NODES,
    super::timed::SELECT_LOCALITY_EXPIRED,
    super::nodes::UPSERT_NODE,
    super::nodes::SELECT_INSTANCE,
    super::nodes::SELECT_PROFILE,
    super::nodes::TOUCH_NODE,
    super::nodes::RECORD_HEARTBEAT,
    super::nodes::INSERT_METRICS,
    super::nodes::PRUNE_METRICS,
    super::nodes::SELECT_NODES,
    super::nodes::SELECT_LATEST_METRICS,
    super::nodes::COUNT_RUNNING,
];

/// The queries of the store functions ported to [`super::sql::Db`], as
/// (SQLite, PostgreSQL) spellings: a test prepares each on its backend.
pub const PORTED_QUERIES: &[(&str, &str)] = &[
    (super::jobs::INSERT_JOB, super::jobs::INSERT_JOB_PG),
    (
        super::jobs::SELECT_SESSION_NODE,
        super::jobs::SELECT_SESSION_NODE,
    ),
    (
        super::jobs::FIND_BY_IDEMPOTENCY_KEY,
        super::jobs::FIND_BY_IDEMPOTENCY_KEY,
    ),
    (super::jobs::INSERT_ATTEMPT, super::jobs::INSERT_ATTEMPT),
    (super::jobs::FINISH_ATTEMPT, super::jobs::FINISH_ATTEMPT),
    (super::jobs::INSERT_EVENT, super::jobs::INSERT_EVENT),
    (super::jobs::SELECT_JOB_ROW, super::jobs::SELECT_JOB_ROW_PG),
    (
        super::jobs::SELECT_ATTEMPT_OUTCOME,
        super::jobs::SELECT_ATTEMPT_OUTCOME,
    ),
    (super::jobs::ADD_USAGE, super::jobs::ADD_USAGE),
    (
        super::jobs::TOKENS_USED_SINCE,
        super::jobs::TOKENS_USED_SINCE_PG,
    ),
    (
        super::leases::SELECT_QUEUED_KEYS,
        super::leases::SELECT_QUEUED_KEYS,
    ),
    (
        super::leases::SELECT_QUEUED_OF_KEY,
        super::leases::SELECT_QUEUED_OF_KEY_PG,
    ),
    (
        super::leases::COUNT_LEASED_BY,
        super::leases::COUNT_LEASED_BY,
    ),
    (
        super::leases::SELECT_NEXT_QUEUED_OF_KEY,
        super::leases::SELECT_NEXT_QUEUED_OF_KEY,
    ),
    (
        super::leases::SELECT_FOR_GRANT,
        super::leases::SELECT_FOR_GRANT_PG,
    ),
    (super::leases::GRANT_LEASE, super::leases::GRANT_LEASE),
    (super::leases::RENEW_LEASE, super::leases::RENEW_LEASE),
    (
        super::leases::SELECT_LEASED_BY_NODE,
        super::leases::SELECT_LEASED_BY_NODE,
    ),
    (super::nodes::UPSERT_NODE, super::nodes::UPSERT_NODE),
    (super::nodes::SELECT_INSTANCE, super::nodes::SELECT_INSTANCE),
    (super::nodes::SELECT_PROFILE, super::nodes::SELECT_PROFILE),
    (super::nodes::TOUCH_NODE, super::nodes::TOUCH_NODE_PG),
    (
        super::nodes::RECORD_HEARTBEAT,
        super::nodes::RECORD_HEARTBEAT_PG,
    ),
    (
        super::nodes::INSERT_METRICS,
        super::nodes::INSERT_METRICS_PG,
    ),
    (super::nodes::PRUNE_METRICS, super::nodes::PRUNE_METRICS),
    (super::nodes::SELECT_NODES, super::nodes::SELECT_NODES_PG),
    (
        super::nodes::SELECT_LATEST_METRICS,
        super::nodes::SELECT_LATEST_METRICS,
    ),
    (super::nodes::COUNT_RUNNING, super::nodes::COUNT_RUNNING),
    (
        super::timed::SELECT_DUE_SCHEDULED,
        super::timed::SELECT_DUE_SCHEDULED,
    ),
    (
        super::timed::SELECT_EXPIRED_LEASES,
        super::timed::SELECT_EXPIRED_LEASES,
    ),
    (
        super::timed::SELECT_LOST_NODES,
        super::timed::SELECT_LOST_NODES,
    ),
    (
        super::timed::SELECT_LOCALITY_EXPIRED,
        super::timed::SELECT_LOCALITY_EXPIRED,
    ),
    (
        super::timed::REFRESH_NODES_AFTER_RESTART,
        super::timed::REFRESH_NODES_AFTER_RESTART,
    ),
    (
        super::timed::REFRESH_LEASES_AFTER_RESTART,
        super::timed::REFRESH_LEASES_AFTER_RESTART_PG,
    ),
    (
        super::security::INSERT_API_KEY,
        super::security::INSERT_API_KEY,
    ),
    (
        super::security::SELECT_API_KEYS,
        super::security::SELECT_API_KEYS,
    ),
    (
        super::security::REVOKE_API_KEY,
        super::security::REVOKE_API_KEY,
    ),
    (
        super::security::UPDATE_API_KEY_POLICY,
        super::security::UPDATE_API_KEY_POLICY,
    ),
    (super::security::INSERT_TOKEN, super::security::INSERT_TOKEN),
    (
        super::security::SELECT_TOKEN,
        super::security::SELECT_TOKEN_PG,
    ),
    (super::security::USE_TOKEN, super::security::USE_TOKEN),
    (
        super::security::INSERT_CERTIFICATE,
        super::security::INSERT_CERTIFICATE,
    ),
    (
        super::security::SELECT_VALID_CERTIFICATES,
        super::security::SELECT_VALID_CERTIFICATES,
    ),
    (
        super::security::REVOKE_NODE_CERTIFICATES,
        super::security::REVOKE_NODE_CERTIFICATES,
    ),
    (super::security::REVOKE_NODE, super::security::REVOKE_NODE),
    (
        super::enroll::INSERT_ENROLL_KEY,
        super::enroll::INSERT_ENROLL_KEY,
    ),
    (
        super::enroll::SELECT_ENROLL_KEYS,
        super::enroll::SELECT_ENROLL_KEYS_PG,
    ),
    (
        super::enroll::COUNT_ENROLLMENT,
        super::enroll::COUNT_ENROLLMENT,
    ),
    (
        super::enroll::REVOKE_ENROLL_KEY,
        super::enroll::REVOKE_ENROLL_KEY,
    ),
    (
        super::enroll::SELECT_LIVE_NODE,
        super::enroll::SELECT_LIVE_NODE,
    ),
    (
        super::enroll::SELECT_RETIRABLE,
        super::enroll::SELECT_RETIRABLE,
    ),
    (super::enroll::RETIRE_NODE, super::enroll::RETIRE_NODE),
    (
        super::audit::SELECT_LAST_AUDIT_HASH,
        super::audit::SELECT_LAST_AUDIT_HASH,
    ),
    (super::audit::INSERT_AUDIT, super::audit::INSERT_AUDIT),
    (super::audit::SELECT_AUDIT, super::audit::SELECT_AUDIT),
    (
        super::audit::SELECT_AUDIT_ALL,
        super::audit::SELECT_AUDIT_ALL,
    ),
    (
        super::scaling::SELECT_SCALING_COUNTS,
        super::scaling::SELECT_SCALING_COUNTS_PG,
    ),
    (
        super::scaling::SELECT_SCALING_GROUPS,
        super::scaling::SELECT_SCALING_GROUPS_PG,
    ),
    (
        super::views::SELECT_LEASE_HOLDER,
        super::views::SELECT_LEASE_HOLDER,
    ),
    (
        super::views::SELECT_QUEUE_POSITION,
        super::views::SELECT_QUEUE_POSITION,
    ),
    (super::views::SELECT_JOB, super::views::SELECT_JOB),
    (super::views::SELECT_ATTEMPTS, super::views::SELECT_ATTEMPTS),
    (super::views::SELECT_EVENTS, super::views::SELECT_EVENTS),
    (
        super::timed::SELECT_NEXT_WAKEUP,
        super::timed::SELECT_NEXT_WAKEUP_PG,
    ),
    (super::fleet::SELECT_FLEET, super::fleet::SELECT_FLEET),
    (
        super::fleet::SELECT_FLEET_NODE,
        super::fleet::SELECT_FLEET_NODE,
    ),
    (super::fleet::SELECT_SPEEDS, super::fleet::SELECT_SPEEDS_PG),
    (super::fleet::SET_NODE_STATUS, super::fleet::SET_NODE_STATUS),
    (
        super::fleet::SELECT_NODE_STATUS,
        super::fleet::SELECT_NODE_STATUS,
    ),
    (
        super::schedules::INSERT_SCHEDULE,
        super::schedules::INSERT_SCHEDULE_PG,
    ),
    (
        super::schedules::SELECT_SCHEDULES,
        super::schedules::SELECT_SCHEDULES,
    ),
    (
        super::schedules::SELECT_DUE_SCHEDULES,
        super::schedules::SELECT_DUE_SCHEDULES_PG,
    ),
    (
        super::schedules::CLAIM_SCHEDULE,
        super::schedules::CLAIM_SCHEDULE,
    ),
    (
        super::schedules::FIRED_SCHEDULE,
        super::schedules::FIRED_SCHEDULE,
    ),
    (
        super::schedules::PAUSE_SCHEDULE,
        super::schedules::PAUSE_SCHEDULE,
    ),
    (
        super::schedules::DELETE_SCHEDULE,
        super::schedules::DELETE_SCHEDULE,
    ),
    (
        super::schedules::SELECT_SCHEDULE_CRON,
        super::schedules::SELECT_SCHEDULE_CRON,
    ),
    (
        super::observe::SELECT_LAST_ROLLUP,
        super::observe::SELECT_LAST_ROLLUP,
    ),
    (
        super::observe::SELECT_FIRST_RAW_FROM,
        super::observe::SELECT_FIRST_RAW_FROM,
    ),
    (
        super::observe::ROLLUP_METRICS,
        super::observe::ROLLUP_METRICS_PG,
    ),
    (
        super::observe::PRUNE_METRICS_MINUTE,
        super::observe::PRUNE_METRICS_MINUTE,
    ),
    (
        super::observe::SELECT_QUEUE_SUMMARY,
        super::observe::SELECT_QUEUE_SUMMARY,
    ),
    (
        super::observe::SELECT_LATEST_JOBS,
        super::observe::SELECT_LATEST_JOBS,
    ),
    (
        super::observe::SELECT_NODE_RECENT,
        super::observe::SELECT_NODE_RECENT_PG,
    ),
    (
        super::observe::SELECT_JOB_COUNTS_AND_LAST_EVENT,
        super::observe::SELECT_JOB_COUNTS_AND_LAST_EVENT,
    ),
    (
        super::observe::SELECT_EVENTS_AFTER,
        super::observe::SELECT_EVENTS_AFTER,
    ),
    (
        super::observe::SELECT_EVENT_AT_FROM,
        super::observe::SELECT_EVENT_AT_FROM,
    ),
    (
        super::observe::SELECT_EVENT_ID_RANGE,
        super::observe::SELECT_EVENT_ID_RANGE,
    ),
    (
        super::observe::SELECT_USAGE_MINUTES,
        super::observe::SELECT_USAGE_MINUTES_PG,
    ),
    (
        super::observe::SELECT_USAGE_RAW,
        super::observe::SELECT_USAGE_RAW_PG,
    ),
];

/// Opens a connection with kobo's settings and checks that they took.
pub fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let journal: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !journal.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Pragma {
            pragma: "journal_mode",
            actual: journal,
            expected: "wal",
        });
    }
    // temp_store = MEMORY keeps the savepoint sub-journal (one savepoint per
    // write in a group commit) in memory: by default it spills to a temporary
    // file past 64 KiB and every page copy became a pwrite(2). Durability is
    // unchanged: it only ever holds pages of the open transaction.
    conn.execute_batch(
        "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY;",
    )?;
    check_pragma(&conn, "synchronous", 2, "2 (FULL)")?;
    check_pragma(&conn, "foreign_keys", 1, "1 (ON)")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn check_pragma(
    conn: &Connection,
    pragma: &'static str,
    expected: i64,
    expected_text: &'static str,
) -> Result<(), StoreError> {
    let actual: i64 = conn.query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0))?;
    if actual != expected {
        return Err(StoreError::Pragma {
            pragma,
            actual: actual.to_string(),
            expected: expected_text,
        });
    }
    Ok(())
}

/// Brings the schema up to date, each migration in its own transaction.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::SchemaTooNew {
            found: version,
            known,
        });
    }
    for (idx, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", idx + 1))?;
        tx.commit()?;
    }
    Ok(())
}
