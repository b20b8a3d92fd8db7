//! kobo-coord integration tests at the store level: the schema and every
//! query, leasing cost against queue depth, and the lease state machine
//! against a simple model; the job lifecycle, nodes, the security tables,
//! the audit chain, usage, observability reads, views, saved queries and
//! schedules on SQLite and PostgreSQL.

mod audit;
mod backends;
mod depth;
mod fixture;
mod leader;
mod lease_model;
mod lifecycle;
mod nodes;
mod observe;
mod reporting;
mod routing_props;
mod schedules;
mod schema;
mod security;

use kobo_queue::store;
use rusqlite::Connection;

/// A migrated database in a temporary directory (a real file, WAL and all).
pub(crate) fn temp_db() -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut conn = store::open_connection(&dir.path().join("kobo.db")).expect("open");
    store::migrate(&mut conn).expect("migrate");
    (dir, conn)
}

/// A sealer with a fixed test key.
pub(crate) fn sealer() -> kobo_queue::security::Sealer {
    kobo_queue::security::Sealer::new(&[7; 32])
}
