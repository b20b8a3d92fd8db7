//! The writer thread: group commit of many writes per `BEGIN IMMEDIATE`
//! transaction, each write in its own savepoint, replies sent after `COMMIT`,
//! then the post-commit hook the engine gave it ([`AfterCommit`]). The writer
//! does not know what the hook does: it imports nothing above the store.

use std::sync::Arc;
use std::sync::mpsc;

use kobo_protocol::{JobId, Lease};
use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::oneshot;

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
    pub tx: &'a Transaction<'a>,
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
}

impl From<rusqlite::Error> for Failed {
    fn from(err: rusqlite::Error) -> Failed {
        Failed {
            disk_full: err.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull),
            message: err.to_string(),
        }
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
    conn: Connection,
    hook: Arc<dyn AfterCommit>,
) -> Result<WriterHandle, StoreError> {
    let (tx, rx) = mpsc::channel::<BoxedOp>();
    let requeue = WriterHandle { tx: tx.clone() };
    std::thread::Builder::new()
        .name("kobo-store-writer".into())
        .spawn(move || run(conn, rx, hook, requeue))
        .map_err(|err| StoreError::Commit(format!("cannot start writer thread: {err}")))?;
    Ok(WriterHandle { tx })
}

fn run(
    mut conn: Connection,
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
        let (commit, effects) = run_group(&mut conn, &mut batch);
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
    let mut ctx = WriteCtx {
        tx: &tx,
        now: unix_now_ms(),
        effects: Vec::new(),
    };
    for op in batch.iter_mut() {
        if let Err(err) = run_cached(ctx.tx, &["SAVEPOINT op"]) {
            return (Err(Failed::from(err)), Vec::new());
        }
        let n_effects = ctx.effects.len();
        let ok = op.run(&mut ctx);
        let end: &[&str] = if ok {
            &["RELEASE op"]
        } else {
            ctx.effects.truncate(n_effects);
            &["ROLLBACK TO op", "RELEASE op"]
        };
        if let Err(err) = run_cached(ctx.tx, end) {
            return (Err(Failed::from(err)), Vec::new());
        }
    }
    let effects = std::mem::take(&mut ctx.effects);
    match tx.commit() {
        Ok(()) => (Ok(()), effects),
        Err(err) => (Err(Failed::from(err)), Vec::new()),
    }
}

/// Runs statements through the statement cache: a savepoint per write,
/// parsed afresh each time, was a measurable part of a small write.
fn run_cached(tx: &Transaction<'_>, statements: &[&str]) -> rusqlite::Result<()> {
    for sql in statements {
        tx.prepare_cached(sql)?.execute([])?;
    }
    Ok(())
}
