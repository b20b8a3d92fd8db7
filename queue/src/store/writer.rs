//! The writer thread: group commit of many writes per transaction
//! (`BEGIN IMMEDIATE` on SQLite), each write in its own savepoint, replies
//! sent after `COMMIT`, then the post-commit hook the engine gave it
//! ([`AfterCommit`]). The writer does not know what the hook does: it imports
//! nothing above the store.
//!
//! On PostgreSQL the writer holds one connection; when it breaks (the
//! primary died, Patroni is promoting another) the group's writes fail
//! unacknowledged and the writer reconnects through the URL's hosts, with
//! backoff, before its next group. A [`Fence`] (the leader's epoch) is
//! checked first in every transaction: a deposed leader writes nothing.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use kobo_protocol::{JobId, Lease};
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::oneshot;

use super::sql::{Db, PgConn, args};
use super::{StoreError, unix_now_ms};

/// Upper bound on writes sharing one transaction: keeps one commit's latency
/// bounded when a burst arrives.
const MAX_GROUP: usize = 512;

/// Where a parked lease request waits for the leases granted to it.
pub type LeaseSender = oneshot::Sender<Vec<Lease>>;

/// What a write asks to happen once its transaction is durable.
pub enum Effect {
    /// Hand leases granted in the transaction to a parked lease request.
    Deliver {
        sender: LeaseSender,
        leases: Vec<Lease>,
    },
    /// A job reached a terminal state: wake whoever waits for it.
    Finished(JobId),
    /// A timed event (run_at, lease expiry) may now be earlier than the
    /// timer thinks.
    WakeTimer,
}

/// What the engine does with a group's effects once its transaction is
/// durable. Runs on the writer thread, in commit order; `writer` takes
/// follow-up writes (e.g. giving back leases nobody received).
pub trait AfterCommit: Send + Sync + 'static {
    fn after_commit(self: Arc<Self>, effects: Vec<Effect>, writer: &WriterHandle);
}

/// What a write closure gets: the transaction, the time of the group, and a
/// list of effects to run after commit.
pub struct WriteCtx<'a> {
    pub tx: &'a dyn Db,
    pub now: i64,
    effects: Vec<Effect>,
}

impl WriteCtx<'_> {
    pub fn effect(&mut self, effect: Effect) {
        self.effects.push(effect);
    }
}

trait WriteOp: Send {
    /// Runs the write; false if it failed (its savepoint is rolled back).
    fn run(&mut self, ctx: &mut WriteCtx<'_>) -> bool;
    /// Answers the caller once the group's commit is known.
    fn finish(&mut self, commit: &Result<(), Failed>);
}

struct Op<R, F> {
    work: Option<F>,
    result: Option<Result<R, StoreError>>,
    reply: Option<oneshot::Sender<Result<R, StoreError>>>,
}

impl<R, F> WriteOp for Op<R, F>
where
    R: Send,
    F: FnOnce(&mut WriteCtx<'_>) -> Result<R, StoreError> + Send,
{
    fn run(&mut self, ctx: &mut WriteCtx<'_>) -> bool {
        let result = match self.work.take() {
            // A bug in one write must not take the writer thread (and with it
            // every later write) down: it fails alone and is rolled back.
            Some(work) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(ctx)))
                .unwrap_or_else(|_| {
                    tracing::error!("a store write panicked; rolled back");
                    Err(StoreError::Corrupt("a store write panicked".into()))
                }),
            None => Err(StoreError::Closed),
        };
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(&mut self, commit: &Result<(), Failed>) {
        let result = match (self.result.take(), commit) {
            (Some(Err(err)), _) => Err(err),
            (Some(Ok(value)), Ok(())) => Ok(value),
            (Some(Ok(_)), Err(err)) if err.unavailable => {
                Err(StoreError::Unavailable(err.message.clone()))
            }
            (Some(Ok(_)), Err(err)) if err.disk_full => {
                Err(StoreError::DiskFull(err.message.clone()))
            }
            (Some(Ok(_)), Err(err)) => Err(StoreError::Commit(err.message.clone())),
            (None, _) => Err(StoreError::Closed),
        };
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(result);
        }
    }
}

type BoxedOp = Box<dyn WriteOp>;

/// Why a group's transaction failed, kept for each of its writes.
#[derive(Debug, Clone)]
struct Failed {
    message: String,
    /// SQLITE_FULL: the writes get [`StoreError::DiskFull`].
    disk_full: bool,
    /// The database cannot take writes now (a PostgreSQL failover, a
    /// deposed leader): the writes get [`StoreError::Unavailable`].
    unavailable: bool,
}

impl From<rusqlite::Error> for Failed {
    fn from(err: rusqlite::Error) -> Failed {
        Failed {
            disk_full: err.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull),
            unavailable: false,
            message: err.to_string(),
        }
    }
}

impl From<StoreError> for Failed {
    fn from(err: StoreError) -> Failed {
        Failed {
            disk_full: err.is_disk_full(),
            unavailable: err.is_unavailable(),
            message: err.to_string(),
        }
    }
}

/// Checked at the start of every PostgreSQL write transaction, inside it:
/// an error fails the whole group (nothing of it is written). The leader's
/// epoch check is one.
pub trait Fence: Send + Sync + 'static {
    fn check(&self, tx: &dyn Db) -> Result<(), StoreError>;
}

/// What the writer writes through.
pub(crate) enum Backend {
    Sqlite(Connection),
    Postgres(Box<PgWriter>),
}

/// The PostgreSQL side of the writer: a URL, the connection (none while it
/// is being re-established) and the fence.
pub(crate) struct PgWriter {
    url: String,
    conn: Option<PgConn>,
    fence: Option<Arc<dyn Fence>>,
}

/// How long the writer keeps trying to reach a writable PostgreSQL server
/// for one group before failing it (a Patroni promotion takes longer: the
/// next group tries again).
const RECONNECT_FOR: Duration = Duration::from_secs(5);
const RECONNECT_PAUSE_MAX: Duration = Duration::from_millis(500);

/// A writer session stuck inside a transaction this long (its process
/// SIGSTOPped mid-write, its network cut) is ended by the server, so its row
/// locks do not hold up the next leader's writes.
const IDLE_IN_TRANSACTION_TIMEOUT_MS: u64 = 5_000;

/// Connects the writer's session and sets it up.
fn writer_session(url: &str) -> Result<PgConn, StoreError> {
    let mut conn = PgConn::connect(url)?;
    conn.batch_execute(&format!(
        "SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_TIMEOUT_MS}; SET application_name = 'kobo-writer'"
    ))?;
    Ok(conn)
}

impl PgWriter {
    pub(crate) fn new(url: &str, fence: Option<Arc<dyn Fence>>) -> Result<PgWriter, StoreError> {
        Ok(PgWriter {
            url: url.to_string(),
            conn: Some(writer_session(url)?),
            fence,
        })
    }

    /// The connection, re-established if it broke.
    fn connection(&mut self) -> Result<&mut PgConn, StoreError> {
        if self.conn.as_ref().is_some_and(PgConn::is_closed) {
            tracing::warn!("the store's PostgreSQL connection broke; reconnecting");
            self.conn = None;
        }
        if self.conn.is_none() {
            let started = std::time::Instant::now();
            let mut pause = Duration::from_millis(20);
            loop {
                match writer_session(&self.url) {
                    Ok(conn) => {
                        tracing::info!(
                            after_ms = started.elapsed().as_millis() as u64,
                            "the store reconnected to PostgreSQL"
                        );
                        self.conn = Some(conn);
                        break;
                    }
                    Err(err) if started.elapsed() >= RECONNECT_FOR => {
                        return Err(StoreError::Commit(format!(
                            "no writable PostgreSQL server answers: {err}"
                        )));
                    }
                    Err(_) => {
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(RECONNECT_PAUSE_MAX);
                    }
                }
            }
        }
        self.conn
            .as_mut()
            .ok_or_else(|| StoreError::Commit("no PostgreSQL connection".into()))
    }
}

/// The writer thread's queue of writes; cheap to clone.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<BoxedOp>,
}

impl WriterHandle {
    /// Queues `work` for a later group and does not wait for it: for
    /// follow-up writes of the post-commit hook, which runs on the writer
    /// thread and so must never wait for a write.
    pub fn write_detached<F>(&self, work: F)
    where
        F: FnOnce(&mut WriteCtx<'_>) -> Result<(), StoreError> + Send + 'static,
    {
        let op = Op {
            work: Some(work),
            result: None,
            reply: None::<oneshot::Sender<Result<(), StoreError>>>,
        };
        let _ = self.tx.send(Box::new(op));
    }

    pub(crate) async fn write<R, F>(&self, work: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut WriteCtx<'_>) -> Result<R, StoreError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let op = Op {
            work: Some(work),
            result: None,
            reply: Some(reply),
        };
        self.tx.send(Box::new(op)).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

pub(crate) fn spawn(
    backend: Backend,
    hook: Arc<dyn AfterCommit>,
) -> Result<WriterHandle, StoreError> {
    let (tx, rx) = mpsc::channel::<BoxedOp>();
    let requeue = WriterHandle { tx: tx.clone() };
    std::thread::Builder::new()
        .name("kobo-store-writer".into())
        .spawn(move || run(backend, rx, hook, requeue))
        .map_err(|err| StoreError::Commit(format!("cannot start writer thread: {err}")))?;
    Ok(WriterHandle { tx })
}

fn run(
    mut backend: Backend,
    rx: mpsc::Receiver<BoxedOp>,
    hook: Arc<dyn AfterCommit>,
    own: WriterHandle,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let (commit, effects) = match &mut backend {
            Backend::Sqlite(conn) => run_group(conn, &mut batch),
            Backend::Postgres(pg) => run_group_pg(pg, &mut batch),
        };
        if let Err(err) = &commit {
            tracing::error!(error = %err.message, n_writes = batch.len(), "store commit failed");
        }
        for op in &mut batch {
            op.finish(&commit);
        }
        if commit.is_ok() && !effects.is_empty() {
            hook.clone().after_commit(effects, &own);
        }
    }
    tracing::debug!("store writer stopped");
}

fn run_group(conn: &mut Connection, batch: &mut [BoxedOp]) -> (Result<(), Failed>, Vec<Effect>) {
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(err) => return (Err(Failed::from(err)), Vec::new()),
    };
    let effects = match run_ops(&tx, batch) {
        Ok(effects) => effects,
        Err(err) => return (Err(err), Vec::new()),
    };
    match tx.commit() {
        Ok(()) => (Ok(()), effects),
        Err(err) => (Err(Failed::from(err)), Vec::new()),
    }
}

fn run_group_pg(pg: &mut PgWriter, batch: &mut [BoxedOp]) -> (Result<(), Failed>, Vec<Effect>) {
    let fence = pg.fence.clone();
    let conn = match pg.connection() {
        Ok(conn) => conn,
        Err(err) => return (Err(Failed::from(err)), Vec::new()),
    };
    let result = (|| {
        let tx = conn.transaction()?;
        if let Some(fence) = &fence {
            fence
                .check(&tx)
                .map_err(|err| StoreError::Unavailable(err.to_string()))?;
        }
        let effects = run_ops(&tx, batch).map_err(|f| StoreError::Commit(f.message))?;
        tx.commit()?;
        Ok::<_, StoreError>(effects)
    })();
    match result {
        Ok(effects) => (Ok(()), effects),
        Err(err) => (Err(Failed::from(err)), Vec::new()),
    }
}

/// Runs each write of a group in its own savepoint of `tx`; the effects of
/// those that succeeded, or why the transaction itself failed.
fn run_ops(tx: &dyn Db, batch: &mut [BoxedOp]) -> Result<Vec<Effect>, Failed> {
    let mut ctx = WriteCtx {
        tx,
        now: unix_now_ms(),
        effects: Vec::new(),
    };
    for op in batch.iter_mut() {
        tx.execute("SAVEPOINT op", args![])?;
        let n_effects = ctx.effects.len();
        if op.run(&mut ctx) {
            tx.execute("RELEASE op", args![])?;
        } else {
            ctx.effects.truncate(n_effects);
            tx.execute("ROLLBACK TO op", args![])?;
            tx.execute("RELEASE op", args![])?;
        }
    }
    Ok(ctx.effects)
}
