//! The writer thread: group commit of many writes per `BEGIN IMMEDIATE`
//! transaction, each write in its own savepoint, replies sent after `COMMIT`.

use std::sync::Arc;
use std::sync::mpsc;

use kobo_protocol::{JobId, Lease};
use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::oneshot;

use super::{StoreError, unix_now_ms};
use crate::dispatch::{Hub, WaiterSender};

/// Upper bound on writes sharing one transaction: keeps one commit's latency
/// bounded when a burst arrives.
const MAX_GROUP: usize = 512;

/// What a write asks to happen once its transaction is durable.
pub enum Effect {
    /// Hand leases granted in the transaction to a parked lease request.
    Deliver {
        sender: WaiterSender,
        leases: Vec<Lease>,
    },
    /// A job reached a terminal state: wake whoever waits for it.
    Finished(JobId),
    /// A timed event (run_at, lease expiry) may now be earlier than the
    /// timer thinks.
    WakeTimer,
}

/// What a write closure gets: the transaction, the time of the group, the hub
/// of parked agents, and a list of effects to run after commit.
pub struct WriteCtx<'a> {
    pub tx: &'a Transaction<'a>,
    pub now: i64,
    pub hub: &'a Hub,
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
    fn finish(&mut self, commit: &Result<(), String>);
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

    fn finish(&mut self, commit: &Result<(), String>) {
        let result = match (self.result.take(), commit) {
            (Some(Err(err)), _) => Err(err),
            (Some(Ok(value)), Ok(())) => Ok(value),
            (Some(Ok(_)), Err(err)) => Err(StoreError::Commit(err.clone())),
            (None, _) => Err(StoreError::Closed),
        };
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(result);
        }
    }
}

type BoxedOp = Box<dyn WriteOp>;

#[derive(Clone)]
pub(crate) struct WriterHandle {
    tx: mpsc::Sender<BoxedOp>,
}

impl WriterHandle {
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

pub(crate) fn spawn(conn: Connection, hub: Arc<Hub>) -> Result<WriterHandle, StoreError> {
    let (tx, rx) = mpsc::channel::<BoxedOp>();
    let requeue = WriterHandle { tx: tx.clone() };
    std::thread::Builder::new()
        .name("kobo-store-writer".into())
        .spawn(move || run(conn, rx, hub, requeue))
        .map_err(|err| StoreError::Commit(format!("cannot start writer thread: {err}")))?;
    Ok(WriterHandle { tx })
}

fn run(mut conn: Connection, rx: mpsc::Receiver<BoxedOp>, hub: Arc<Hub>, own: WriterHandle) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let (commit, effects) = run_group(&mut conn, &mut batch, &hub);
        if let Err(err) = &commit {
            tracing::error!(error = %err, n_writes = batch.len(), "store commit failed");
        }
        for op in &mut batch {
            op.finish(&commit);
        }
        if commit.is_ok() {
            apply_effects(effects, &hub, &own);
        }
    }
    tracing::debug!("store writer stopped");
}

fn run_group(
    conn: &mut Connection,
    batch: &mut [BoxedOp],
    hub: &Hub,
) -> (Result<(), String>, Vec<Effect>) {
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(err) => return (Err(err.to_string()), Vec::new()),
    };
    let mut ctx = WriteCtx {
        tx: &tx,
        now: unix_now_ms(),
        hub,
        effects: Vec::new(),
    };
    for op in batch.iter_mut() {
        if let Err(err) = run_cached(ctx.tx, &["SAVEPOINT op"]) {
            return (Err(err.to_string()), Vec::new());
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
            return (Err(err.to_string()), Vec::new());
        }
    }
    let effects = std::mem::take(&mut ctx.effects);
    match tx.commit() {
        Ok(()) => (Ok(()), effects),
        Err(err) => (Err(err.to_string()), Vec::new()),
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

fn apply_effects(effects: Vec<Effect>, hub: &Hub, own: &WriterHandle) {
    for effect in effects {
        match effect {
            Effect::Deliver { sender, leases } => {
                if let Err(leases) = sender.send(leases) {
                    // The lease request went away between being chosen and
                    // being answered: give the jobs back at once.
                    release_undelivered(own, leases);
                }
            }
            Effect::Finished(job_id) => hub.job_finished(job_id),
            Effect::WakeTimer => hub.wake_timer(),
        }
    }
}

fn release_undelivered(own: &WriterHandle, leases: Vec<Lease>) {
    let op = Op {
        work: Some(move |ctx: &mut WriteCtx<'_>| {
            let mut changes = super::Changes::default();
            super::release_leases(
                ctx.tx,
                ctx.now,
                &leases
                    .iter()
                    .map(|l| (l.job_id, l.lease_token))
                    .collect::<Vec<_>>(),
                "undelivered",
                "lease answer undelivered: the agent's request went away",
                &mut changes,
            )?;
            crate::dispatch::hand_off(ctx, changes.ready)
        }),
        result: None,
        reply: None::<oneshot::Sender<Result<(), StoreError>>>,
    };
    let _ = own.tx.send(Box::new(op));
}
