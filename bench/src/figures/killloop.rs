//! The kill loop: a coordinator on SQLite with two real agents and a steady
//! stream of submits is SIGKILLed at random points and restarted, again and
//! again; the time until it serves after each start, and a ledger check of
//! the database once the run settles (nothing acknowledged lost, each job
//! ended exactly once with one accepted completion, `integrity_check` ok).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kobo_client::ApiClient;
use kobo_protocol::{JobId, JobState};
use rand::Rng;

use super::{Env, noop};
use crate::coordinator::{Coordinator, Timings};
use crate::real_agent::{RealAgent, RealAgentSpec};
use crate::report::{Bound, FigureResult, Metric};
use crate::stats;

/// SIGKILLs per run.
const KILLS: usize = 50;
const KILLS_QUICK: usize = 3;
/// A kill lands this long after the previous start, uniformly at random.
const KILL_AFTER_MS: std::ops::Range<u64> = 150..750;
/// The bound on the time from a start until the coordinator serves.
const SERVE_WITHIN: Duration = Duration::from_secs(5);
/// The job kind, the agents' LLM time and their workers.
const KIND: &str = "kill-loop";
const SIM_LATENCY: Duration = Duration::from_millis(100);
const WORKERS: u32 = 3;
/// Pause between one acknowledged submit and the next.
const SUBMIT_PACE: Duration = Duration::from_millis(20);
/// How often a submit is retried (same key) while the coordinator is down,
/// and for how long at most.
const RETRY: Duration = Duration::from_millis(50);
const SUBMIT_PATIENCE: Duration = Duration::from_secs(30);
/// Longest the acknowledged jobs may take to end after the last start.
const SETTLE_PATIENCE: Duration = Duration::from_secs(120);
/// A short lease and heartbeat, so jobs held across a kill move on soon.
const HEARTBEAT_MS: u64 = 500;
const LEASE_TTL_MS: u64 = 2000;

/// The clients' side: every key sent, and the id each acknowledged one got.
#[derive(Debug, Default)]
struct Ledger {
    attempted: BTreeSet<String>,
    acknowledged: BTreeMap<String, JobId>,
}

pub(crate) async fn run(env: &Env) -> anyhow::Result<FigureResult> {
    let kills = env.pick(KILLS, KILLS_QUICK);
    let mut runs = Vec::new();
    for rep in 0..env.repeats {
        runs.push(one_run(env, rep, kills).await?);
    }
    Ok(FigureResult {
        id: "kill-loop",
        title: "11. Coordinator kill loop",
        method: format!(
            "`kobo-coord serve --heartbeat-ms {HEARTBEAT_MS} --lease-ttl-ms {LEASE_TTL_MS}` on SQLite, two real `kobo-agent`s (`--llm sim --sim-latency-ms {}`, {WORKERS} workers each); one client submits no-op jobs one after another ({SUBMIT_PACE:?} apart), each under its own idempotency key, retried with the same key every {RETRY:?} while the coordinator is down. The coordinator is SIGKILLed {kills} times, each {}..{} ms after its previous start, and started again at once on the same data directory and port; serving = `GET /v1/nodes` answers. Once every acknowledged job ended, the database is checked: each acknowledged key has exactly one job with the acknowledged id, every job ended succeeded with exactly one event into a terminal state, none out of one, exactly one succeeded attempt and a result; no job the client never sent; `PRAGMA integrity_check` = ok. Any violation fails the figure.",
            SIM_LATENCY.as_millis(),
            KILL_AFTER_MS.start,
            KILL_AFTER_MS.end,
        ),
        runs,
    })
}

async fn one_run(env: &Env, rep: usize, kills: usize) -> anyhow::Result<Vec<Metric>> {
    let timings = Timings {
        heartbeat_ms: Some(HEARTBEAT_MS),
        lease_ttl_ms: Some(LEASE_TTL_MS),
        ..Timings::default()
    };
    let data_dir = env.dir(&format!("kill-loop-{rep}"));
    let mut coordinator = Coordinator::start(&data_dir, timings).await?;
    let admin = coordinator.admin()?;
    let agents_dir = env.dir(&format!("kill-loop-{rep}-agents"));
    let mut agents = Vec::new();
    for node in ["tokyo-01", "osaka-01"] {
        let node_id = format!("{node}-{rep}");
        agents.push(
            RealAgent::join(
                &coordinator,
                &admin,
                RealAgentSpec {
                    node_id: &node_id,
                    kind: KIND,
                    max_workers: WORKERS,
                    sim_latency: SIM_LATENCY,
                    llm_endpoint: None,
                },
                &agents_dir,
            )
            .await?,
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let submitter = tokio::spawn(submit_until(admin.clone(), stop.clone(), rep));
    let mut serving_after = Vec::with_capacity(kills);
    for _ in 0..kills {
        let pause = rand::rng().random_range(KILL_AFTER_MS);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        coordinator.kill().await?;
        let started = Instant::now();
        coordinator
            .restart()
            .await
            .context("starting the coordinator after a kill")?;
        serving_after.push(started.elapsed());
    }
    stop.store(true, Ordering::SeqCst);
    let ledger = submitter.await.context("the submitter panicked")??;
    if ledger.acknowledged.is_empty() {
        bail!("no submit was acknowledged");
    }
    let settle = async {
        for &id in ledger.acknowledged.values() {
            admin.wait_terminal(id).await?;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(SETTLE_PATIENCE, settle)
        .await
        .with_context(|| {
            format!("the acknowledged jobs did not end within {SETTLE_PATIENCE:?}")
        })??;
    for agent in &mut agents {
        agent.stop().await?;
    }
    coordinator.stop().await?;
    let db = kobo_protocol::DataDir::new(&data_dir).database();
    let checked = tokio::task::spawn_blocking(move || check(&db, &ledger)).await??;
    let slowest = serving_after.iter().max().copied().unwrap_or_default();
    eprintln!(
        "kobo-bench:   kill loop: {kills} SIGKILLs, {} jobs acknowledged ({} more in the database unacknowledged), integrity ok, serving after {:?}..{slowest:?}",
        checked.acknowledged,
        checked.unacknowledged_in_db,
        serving_after.iter().min().copied().unwrap_or_default(),
    );
    Ok(vec![
        Metric::new("kills", "coordinator SIGKILLs", "", kills as f64),
        Metric::new(
            "acknowledged",
            "jobs acknowledged, all found ended once",
            "",
            checked.acknowledged as f64,
        ),
        Metric::new(
            "serve_p50_s",
            "start to serving, median",
            "s",
            stats::percentile_ms(&serving_after, 0.5) / 1000.0,
        )
        .target(Bound::AtMost(SERVE_WITHIN.as_secs_f64())),
        Metric::new(
            "serve_p99_s",
            "start to serving, p99",
            "s",
            stats::percentile_ms(&serving_after, 0.99) / 1000.0,
        )
        .target(Bound::AtMost(SERVE_WITHIN.as_secs_f64())),
        Metric::new(
            "serve_max_s",
            "start to serving, slowest",
            "s",
            slowest.as_secs_f64(),
        )
        .target(Bound::AtMost(SERVE_WITHIN.as_secs_f64())),
    ])
}

/// Submits no-op jobs one after another until `stop`, each under its own
/// key, retrying the same key while the coordinator is unreachable or
/// answers 503; fails when one is not acknowledged within the patience.
async fn submit_until(
    admin: ApiClient,
    stop: Arc<AtomicBool>,
    rep: usize,
) -> anyhow::Result<Ledger> {
    let mut ledger = Ledger::default();
    let mut idx = 0u64;
    while !stop.load(Ordering::SeqCst) {
        idx += 1;
        let key = format!("kill-loop-{rep}-{idx}");
        let mut job = noop(KIND);
        job.idempotency_key = Some(key.clone());
        ledger.attempted.insert(key.clone());
        let deadline = Instant::now() + SUBMIT_PATIENCE;
        loop {
            match admin.submit(&job).await {
                Ok(answer) => {
                    ledger.acknowledged.insert(key, answer.id);
                    break;
                }
                Err(err)
                    if (err.is_unreachable() || err.status() == Some(503))
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(RETRY).await;
                }
                Err(err) => {
                    return Err(err).with_context(|| format!("submit {key} failed for good"));
                }
            }
        }
        tokio::time::sleep(SUBMIT_PACE).await;
    }
    Ok(ledger)
}

/// What the database check counted.
struct Checked {
    acknowledged: usize,
    unacknowledged_in_db: usize,
}

/// Every job with its key and what its events, attempts and result say.
const ROWS: &str = "
    SELECT j.id, j.idempotency_key, j.state, j.result IS NOT NULL,
           (SELECT count(*) FROM job_attempts a WHERE a.job_id = j.id AND a.outcome = 'succeeded'),
           (SELECT count(*) FROM job_events e WHERE e.job_id = j.id
                AND e.to_state IN ('succeeded', 'dead', 'cancelled')),
           (SELECT count(*) FROM job_events e WHERE e.job_id = j.id
                AND e.from_state IN ('succeeded', 'dead', 'cancelled'))
    FROM jobs j ORDER BY j.id";

/// Checks the stopped coordinator's database against the ledger; fails
/// listing the violations.
fn check(db: &Path, ledger: &Ledger) -> anyhow::Result<Checked> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening {}", db.display()))?;
    let integrity: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    let mut violations = Vec::new();
    if integrity != "ok" {
        violations.push(format!("PRAGMA integrity_check: {integrity}"));
    }
    let mut by_key: BTreeMap<String, Vec<JobId>> = BTreeMap::new();
    let mut statement = conn.prepare(ROWS)?;
    let mut rows = statement.query([])?;
    let succeeded = JobState::Succeeded.to_string();
    while let Some(row) = rows.next()? {
        let id: JobId = row.get(0)?;
        let key: Option<String> = row.get(1)?;
        let state: String = row.get(2)?;
        let has_result: bool = row.get(3)?;
        let succeeded_attempts: i64 = row.get(4)?;
        let into_terminal: i64 = row.get(5)?;
        let out_of_terminal: i64 = row.get(6)?;
        match &key {
            Some(key) if ledger.attempted.contains(key) => {
                by_key.entry(key.clone()).or_default().push(id);
            }
            _ => violations.push(format!("job {id} (key {key:?}) was never submitted")),
        }
        if state != succeeded {
            violations.push(format!("job {id} ended {state}, not {succeeded}"));
        }
        if into_terminal != 1 || out_of_terminal != 0 {
            violations.push(format!(
                "job {id}: {into_terminal} events into a terminal state, {out_of_terminal} out of one (want 1 and 0)"
            ));
        }
        if succeeded_attempts != 1 || !has_result {
            violations.push(format!(
                "job {id}: {succeeded_attempts} succeeded attempts, result {} (want 1 and one)",
                if has_result { "present" } else { "missing" }
            ));
        }
    }
    for (key, &id) in &ledger.acknowledged {
        match by_key.get(key).map(Vec::as_slice) {
            Some([found]) if *found == id => {}
            Some(found) => violations.push(format!(
                "key {key} acknowledged as job {id}, the database has {found:?}"
            )),
            None => violations.push(format!("key {key} acknowledged as job {id} is lost")),
        }
    }
    for (key, ids) in &by_key {
        if ids.len() > 1 && !ledger.acknowledged.contains_key(key) {
            violations.push(format!("key {key} has {} jobs: {ids:?}", ids.len()));
        }
    }
    if !violations.is_empty() {
        bail!(
            "the ledger check failed ({} violations):\n{}",
            violations.len(),
            violations.join("\n")
        );
    }
    let unacknowledged_in_db = by_key
        .keys()
        .filter(|key| !ledger.acknowledged.contains_key(*key))
        .count();
    Ok(Checked {
        acknowledged: ledger.acknowledged.len(),
        unacknowledged_in_db,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kobo_queue::security::Secrets;
    use kobo_queue::store::{self, Changes};

    /// A database with one queued job under `key`, written by the store.
    fn database_with_one_queued_job(key: &str) -> (std::path::PathBuf, JobId) {
        let dir = std::env::temp_dir().join(format!(
            "kobo-bench-killloop-test-{}-{key}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        let secrets = Secrets::load_or_create(&dir).expect("data key");
        let db = kobo_protocol::DataDir::new(&dir).database();
        let mut conn = store::open_connection(&db).expect("open");
        store::migrate(&mut conn).expect("migrate");
        let mut job = noop(KIND);
        job.idempotency_key = Some(key.into());
        let answer = store::insert_job(
            &conn,
            store::unix_now_ms(),
            &secrets.sealer,
            3,
            "test",
            &job,
            &mut Changes::default(),
        )
        .expect("insert");
        (db, answer.id)
    }

    #[test]
    fn the_check_fails_on_a_job_not_ended_a_lost_key_and_a_stranger() {
        let (db, id) = database_with_one_queued_job("stranger");
        let mut ledger = Ledger::default();
        ledger.attempted.insert("sent".into());
        ledger.acknowledged.insert("sent".into(), id + 1);
        let err = check(&db, &ledger).err().expect("the check must fail");
        let _ = std::fs::remove_dir_all(db.parent().expect("data dir"));
        let text = format!("{err:#}");
        assert!(text.contains("ended queued, not succeeded"), "{text}");
        assert!(text.contains("was never submitted"), "{text}");
        assert!(text.contains("key sent acknowledged as job"), "{text}");
        assert!(text.contains("is lost"), "{text}");
    }

    #[test]
    fn the_check_names_an_acknowledged_job_that_has_not_ended() {
        let (db, id) = database_with_one_queued_job("acked");
        let mut ledger = Ledger::default();
        ledger.attempted.insert("acked".into());
        ledger.acknowledged.insert("acked".into(), id);
        let text = format!("{:#}", check(&db, &ledger).err().expect("must fail"));
        let _ = std::fs::remove_dir_all(db.parent().expect("data dir"));
        assert!(text.contains(&format!("job {id} ended queued")), "{text}");
        assert!(text.contains("0 events into a terminal state"), "{text}");
        assert!(!text.contains("is lost"), "{text}");
    }
}
