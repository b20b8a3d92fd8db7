//! The figures, one module each, and what they share: the run's settings,
//! job bodies, and pre-filling a stopped coordinator's database.

pub(crate) mod depth;
pub(crate) mod failover;
pub(crate) mod fairness;
pub(crate) mod fleet;
pub(crate) mod footprint;
pub(crate) mod gateway;
pub(crate) mod killloop;
pub(crate) mod leader;
pub(crate) mod overhead;
pub(crate) mod pickup;
pub(crate) mod scaling;
pub(crate) mod throughput;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use kobo_protocol::{JobId, SubmitJob};
use kobo_queue::security::Secrets;
use kobo_queue::store::{self, Changes};
use rusqlite::TransactionBehavior;
use tokio::sync::mpsc;

use crate::agents::AgentEvent;
use crate::postgres::Database;

/// Every figure, in the order they run.
pub(crate) const ALL: &[&str] = &[
    "pickup",
    "overhead",
    "throughput",
    "scaling",
    "depth",
    "failover",
    "leader",
    "footprint",
    "gateway",
    "fairness",
    "fleet",
    "kill-loop",
];

/// Jobs inserted per transaction when pre-filling a database directly.
const PREFILL_PER_TRANSACTION: usize = 50_000;
/// Longest a figure waits for one expected agent event.
const EVENT_PATIENCE: Duration = Duration::from_secs(30);

/// What every figure gets: where to put data directories, the sizes to use
/// and how many times to run.
#[derive(Debug, Clone)]
pub(crate) struct Env {
    pub(crate) root: PathBuf,
    pub(crate) quick: bool,
    pub(crate) repeats: usize,
    /// `--fleet-agents`: the fleet figure's size instead of its default.
    pub(crate) fleet_agents: Option<usize>,
    /// `--database`: a PostgreSQL admin URL the figures that support it
    /// also run on (a fresh database each).
    pub(crate) postgres: Option<String>,
    /// This pass of a figure runs its coordinator on PostgreSQL.
    pub(crate) on_postgres: bool,
}

impl Env {
    /// A fresh directory for one figure's coordinator or agents.
    pub(crate) fn dir(&self, name: &str) -> PathBuf {
        if self.on_postgres {
            self.root.join(format!("{name}-postgres"))
        } else {
            self.root.join(name)
        }
    }

    /// The same settings, the store on PostgreSQL (`--database` given).
    pub(crate) fn postgres_pass(&self) -> Option<Env> {
        self.postgres.as_ref().map(|_| Env {
            on_postgres: true,
            ..self.clone()
        })
    }

    /// A fresh database for `figure` when this pass runs on PostgreSQL.
    pub(crate) async fn database(&self, figure: &str) -> anyhow::Result<Option<Database>> {
        match (&self.postgres, self.on_postgres) {
            (Some(admin), true) => Ok(Some(Database::create(admin, figure).await?)),
            _ => Ok(None),
        }
    }

    /// `sqlite` or `postgres` for `--database` runs, `pg` otherwise.
    pub(crate) fn pick_store<T>(&self, sqlite: T, postgres: T) -> T {
        if self.on_postgres { postgres } else { sqlite }
    }

    /// `full` normally, `quick` with `--quick`.
    pub(crate) fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick { quick } else { full }
    }
}

/// A job whose LLM call does nothing worth mentioning.
pub(crate) fn noop(kind: &str) -> SubmitJob {
    SubmitJob {
        kind: kind.into(),
        prompt: Some("noop".into()),
        ..SubmitJob::default()
    }
}

/// Waits for the agent event about `job_id` that `wanted` picks, skipping
/// the others.
pub(crate) async fn wait_event<T>(
    events: &mut mpsc::UnboundedReceiver<AgentEvent>,
    job_id: JobId,
    wanted: impl Fn(&AgentEvent) -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + EVENT_PATIENCE;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .with_context(|| {
                format!("no agent event about job {job_id} within {EVENT_PATIENCE:?}")
            })?
            .context("the agents stopped")?;
        let about = match event {
            AgentEvent::Started { job_id, .. } | AgentEvent::Reported { job_id, .. } => job_id,
        };
        if about == job_id
            && let Some(found) = wanted(&event)
        {
            return Ok(found);
        }
    }
}

/// Inserts `n` queued no-op jobs of `kind` straight into the database of a
/// *stopped* coordinator, through the store's own `insert_job`, in big
/// transactions (the API would take minutes for a million). No audit rows
/// are written for them (a submit through the API writes one per request).
pub(crate) async fn prefill(data_dir: &Path, kind: &str, n: usize) -> anyhow::Result<()> {
    let data_dir = data_dir.to_path_buf();
    let kind = kind.to_string();
    tokio::task::spawn_blocking(move || {
        let secrets = Secrets::load_or_create(&data_dir).context("reading the data key")?;
        let db = kobo_protocol::DataDir::new(&data_dir).database();
        let mut conn = store::open_connection(&db)?;
        let job = noop(&kind);
        let mut left = n;
        while left > 0 {
            let chunk = left.min(PREFILL_PER_TRANSACTION);
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = store::unix_now_ms();
            let mut changes = Changes::default();
            for _ in 0..chunk {
                store::insert_job(
                    &tx,
                    now,
                    &secrets.sealer,
                    3,
                    "bench:prefill",
                    &job,
                    &mut changes,
                )?;
                changes.ready.clear();
            }
            tx.commit()?;
            left -= chunk;
        }
        anyhow::Ok(())
    })
    .await?
}

/// Fails when agents saw errors (a figure measured on failing calls is no
/// figure).
pub(crate) fn check_agents(probe: &crate::agents::Probe, figure: &str) -> anyhow::Result<()> {
    if let Some((n, first)) = probe.errors() {
        bail!("{figure}: {n} agent call(s) failed; first: {first}");
    }
    Ok(())
}

/// Drops a figure's database, if it made one.
pub(crate) async fn drop_database(database: Option<Database>) -> anyhow::Result<()> {
    match database {
        Some(database) => database.drop().await,
        None => Ok(()),
    }
}
