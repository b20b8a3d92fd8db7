//! Checkpoints of the write-ahead log on a thread of their own. SQLite's
//! automatic checkpoint runs inside the `COMMIT` that crosses its threshold,
//! on the writer thread: every write of the group (heartbeats, leases,
//! submits) waited for the copy of the log into the database and its fsync.
//! Here the writer never checkpoints; this thread does, PASSIVE (never
//! blocking the writer or a reader), a few times a second.

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{StoreError, schema::open_connection};

/// How often the log is copied into the database file.
const INTERVAL: Duration = Duration::from_millis(250);

/// Keeps the checkpoint thread running; it stops within [`INTERVAL`] of the
/// last handle's drop (its connection then closes, checkpointing the rest).
pub(crate) struct Checkpointer(());

/// Starts checkpointing the database at `path`.
pub(crate) fn spawn(path: &Path) -> Result<Arc<Checkpointer>, StoreError> {
    let conn = open_connection(path)?;
    let alive = Arc::new(Checkpointer(()));
    let watch: Weak<Checkpointer> = Arc::downgrade(&alive);
    std::thread::Builder::new()
        .name("kobo-store-checkpoint".into())
        .spawn(move || {
            while watch.strong_count() > 0 {
                std::thread::sleep(INTERVAL);
                // A busy or failing checkpoint (a full disk) is retried on
                // the next tick; the log keeps every commit meanwhile.
                if let Err(err) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::debug!(error = %err, "checkpoint failed; retried");
                }
            }
        })
        .map_err(|err| StoreError::Commit(format!("cannot start checkpoint thread: {err}")))?;
    Ok(alive)
}
