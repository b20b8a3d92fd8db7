//! A Jepsen-style ledger for chaos tests: the clients' side (every submit
//! attempted, with its idempotency key, and every acknowledgement with the
//! id it returned and the end the test expects) checked against the real
//! SQLite file once the run settles.
//!
//! [`Ledger::check`] reports every violation of:
//! - nothing acknowledged is lost: each acknowledged key has its job, with
//!   the acknowledged id;
//! - each acknowledged job ends in a terminal state, the one expected;
//! - each job ends exactly once: a terminal job has exactly one event into
//!   a terminal state, none out of one, and its last event is its state;
//! - exactly one accepted completion: a succeeded job has exactly one
//!   succeeded attempt and a result, any other job none;
//! - attempts stay within `max_attempts`;
//! - nothing unexpected: every job in the database was submitted by this
//!   ledger (its key was attempted), acknowledged or not.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use kobo_client::{ApiClient, ClientError};
use kobo_protocol::{JobId, SubmitJob};

use crate::cluster::open_read_only;

/// How an acknowledged job must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Succeeded,
    Dead,
    /// Any terminal state (succeeded, dead or cancelled).
    Terminal,
}

impl Expect {
    fn allows(self, state: &str) -> bool {
        match self {
            Expect::Succeeded => state == "succeeded",
            Expect::Dead => state == "dead",
            Expect::Terminal => TERMINAL.contains(&state),
        }
    }
}

const TERMINAL: [&str; 3] = ["succeeded", "dead", "cancelled"];

/// The clients' record of a run.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Idempotency keys of every submit sent, answered or not.
    attempted: BTreeSet<String>,
    /// Key → the id the coordinator acknowledged and the expected end.
    acknowledged: BTreeMap<String, (JobId, Expect)>,
    next: u64,
}

/// One job as the database has it.
#[derive(Debug)]
struct Row {
    id: JobId,
    key: Option<String>,
    state: String,
    attempts: i64,
    max_attempts: i64,
    has_result: bool,
    succeeded_attempts: i64,
    terminal_events: i64,
    events_out_of_terminal: i64,
    last_event: Option<String>,
}

const ROWS: &str = "
    SELECT j.id, j.idempotency_key, j.state, j.attempts, j.max_attempts, j.result IS NOT NULL,
           (SELECT count(*) FROM job_attempts a WHERE a.job_id = j.id AND a.outcome = 'succeeded'),
           (SELECT count(*) FROM job_events e WHERE e.job_id = j.id
                AND e.to_state IN ('succeeded', 'dead', 'cancelled')),
           (SELECT count(*) FROM job_events e WHERE e.job_id = j.id
                AND e.from_state IN ('succeeded', 'dead', 'cancelled')),
           (SELECT e.to_state FROM job_events e WHERE e.job_id = j.id ORDER BY e.id DESC LIMIT 1)
    FROM jobs j ORDER BY j.id";

/// What [`Ledger::check`] found.
#[derive(Debug, Default)]
pub struct Verdict {
    pub jobs: usize,
    pub acknowledged: usize,
    /// Submitted but never acknowledged (the answer was lost), yet in the
    /// database: allowed, and checked like the rest.
    pub unacknowledged_in_db: usize,
    pub by_state: BTreeMap<String, usize>,
    pub violations: Vec<String>,
}

impl Verdict {
    /// Panics listing every violation, with `context` (logs) appended.
    pub fn assert_ok(&self, context: &str) {
        assert!(
            self.violations.is_empty(),
            "the ledger check failed ({} violations):\n{}\n{context}",
            self.violations.len(),
            self.violations.join("\n")
        );
        assert!(self.acknowledged > 0, "the ledger acknowledged nothing");
    }
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// The next idempotency key of this ledger.
    fn key(&mut self) -> String {
        self.next += 1;
        format!("ledger-{}", self.next)
    }

    /// Submits `job` under a fresh idempotency key, retrying the same key
    /// while the coordinator is unreachable (a restart) or answers 503 until
    /// `patience` is used up; records the attempt and, if answered, the
    /// acknowledgement.
    pub async fn submit(
        &mut self,
        client: &ApiClient,
        mut job: SubmitJob,
        expect: Expect,
        patience: Duration,
    ) -> Result<JobId, ClientError> {
        let key = self.key();
        job.idempotency_key = Some(key.clone());
        self.attempted.insert(key.clone());
        let deadline = Instant::now() + patience;
        loop {
            match client.submit(&job).await {
                Ok(answer) => {
                    self.acknowledged.insert(key, (answer.id, expect));
                    return Ok(answer.id);
                }
                Err(err)
                    if (err.is_unreachable() || err.status() == Some(503))
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Submits `n` jobs of `kind` with the prompts `"{prompt} {idx}"`, as
    /// [`Ledger::submit`] does each.
    pub async fn submit_many(
        &mut self,
        client: &ApiClient,
        (kind, prompt): (&str, &str),
        n: usize,
        expect: Expect,
        patience: Duration,
    ) -> Result<Vec<JobId>, ClientError> {
        let mut ids = Vec::with_capacity(n);
        for idx in 0..n {
            let job = SubmitJob {
                kind: kind.to_string(),
                prompt: Some(format!("{prompt} {idx}")),
                ..SubmitJob::default()
            };
            ids.push(self.submit(client, job, expect, patience).await?);
        }
        Ok(ids)
    }

    /// Records a submit made elsewhere (with `key` as its idempotency key);
    /// `acknowledged` is its answer, if one came.
    pub fn record(&mut self, key: &str, acknowledged: Option<JobId>, expect: Expect) {
        self.attempted.insert(key.to_string());
        if let Some(id) = acknowledged {
            self.acknowledged.insert(key.to_string(), (id, expect));
        }
    }

    /// The acknowledged ids.
    pub fn acknowledged_ids(&self) -> Vec<JobId> {
        self.acknowledged.values().map(|(id, _)| *id).collect()
    }

    /// Checks the database at `db` against the ledger (once the run settled:
    /// acknowledged jobs must have ended).
    pub fn check(&self, db: &Path) -> Verdict {
        let conn = open_read_only(db);
        let rows: Vec<Row> = conn
            .prepare(ROWS)
            .and_then(|mut s| {
                s.query_map([], |r| {
                    Ok(Row {
                        id: r.get(0)?,
                        key: r.get(1)?,
                        state: r.get(2)?,
                        attempts: r.get(3)?,
                        max_attempts: r.get(4)?,
                        has_result: r.get(5)?,
                        succeeded_attempts: r.get(6)?,
                        terminal_events: r.get(7)?,
                        events_out_of_terminal: r.get(8)?,
                        last_event: r.get(9)?,
                    })
                })?
                .collect()
            })
            .expect("reading the jobs");
        self.verdict(rows)
    }

    /// [`Ledger::check`] of a PostgreSQL database (`--database URL`).
    pub async fn check_postgres(&self, url: &str) -> Verdict {
        let client = crate::pg::connect(url)
            .await
            .expect("connecting to the database");
        let rows = client
            .query(ROWS, &[])
            .await
            .expect("reading the jobs")
            .iter()
            .map(|r| Row {
                id: r.get(0),
                key: r.get(1),
                state: r.get(2),
                attempts: r.get(3),
                max_attempts: r.get(4),
                has_result: r.get(5),
                succeeded_attempts: r.get(6),
                terminal_events: r.get(7),
                events_out_of_terminal: r.get(8),
                last_event: r.get(9),
            })
            .collect();
        self.verdict(rows)
    }

    fn verdict(&self, rows: Vec<Row>) -> Verdict {
        let mut verdict = Verdict {
            jobs: rows.len(),
            acknowledged: self.acknowledged.len(),
            ..Verdict::default()
        };
        let by_key: BTreeMap<&str, &Row> = rows
            .iter()
            .filter_map(|row| row.key.as_deref().map(|k| (k, row)))
            .collect();
        let violations = &mut verdict.violations;
        for (key, (id, expect)) in &self.acknowledged {
            match by_key.get(key.as_str()) {
                None => violations.push(format!(
                    "lost: acknowledged job {id} ({key}) is not in the database"
                )),
                Some(row) if row.id != *id => violations.push(format!(
                    "{key} was acknowledged as job {id} but the database has it as job {}",
                    row.id
                )),
                Some(row) if !expect.allows(&row.state) => violations.push(format!(
                    "job {id} ({key}) ended {} but {expect:?} was expected",
                    row.state
                )),
                Some(_) => {}
            }
        }
        for row in &rows {
            *verdict.by_state.entry(row.state.clone()).or_default() += 1;
            let id = row.id;
            match row.key.as_deref() {
                Some(key) if self.attempted.contains(key) => {
                    if !self.acknowledged.contains_key(key) {
                        verdict.unacknowledged_in_db += 1;
                    }
                }
                other => violations.push(format!(
                    "unexpected: job {id} (key {other:?}) was never submitted by the ledger"
                )),
            }
            let terminal = TERMINAL.contains(&row.state.as_str());
            if terminal && row.terminal_events != 1 {
                violations.push(format!(
                    "job {id} is {} with {} events into a terminal state (one expected)",
                    row.state, row.terminal_events
                ));
            }
            if !terminal && row.terminal_events != 0 {
                violations.push(format!(
                    "job {id} is {} yet has {} events into a terminal state",
                    row.state, row.terminal_events
                ));
            }
            if row.events_out_of_terminal != 0 {
                violations.push(format!(
                    "job {id} left a terminal state {} times",
                    row.events_out_of_terminal
                ));
            }
            if row
                .last_event
                .as_deref()
                .is_some_and(|last| last != row.state)
            {
                violations.push(format!(
                    "job {id} is {} but its last event went to {:?}",
                    row.state, row.last_event
                ));
            }
            let completions = if row.state == "succeeded" { 1 } else { 0 };
            if row.succeeded_attempts != completions {
                violations.push(format!(
                    "job {id} is {} with {} accepted completions ({completions} expected)",
                    row.state, row.succeeded_attempts
                ));
            }
            if row.state == "succeeded" && !row.has_result {
                violations.push(format!("job {id} succeeded without a result"));
            }
            if row.attempts > row.max_attempts {
                violations.push(format!(
                    "job {id} ran {} attempts of at most {}",
                    row.attempts, row.max_attempts
                ));
            }
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database with the schema and the given jobs, made by the engine's
    /// own migrations.
    fn database(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("kobo.db");
        let mut conn = rusqlite::Connection::open(&path).expect("open");
        kobo_queue::store::migrate(&mut conn).expect("migrate");
        path
    }

    fn insert(db: &Path, id: i64, key: &str, state: &str, events: &[(&str, &str)], succeeded: i64) {
        let conn = rusqlite::Connection::open(db).expect("open");
        conn.execute(
            "INSERT INTO jobs (id, state, kind, request, max_attempts, attempts, idempotency_key,
                               run_at, created_at, updated_at, result)
             VALUES (?1, ?2, 'k', '{}', 3, ?4, ?3, 0, 0, 0, CASE WHEN ?2 = 'succeeded' THEN '{}' END)",
            rusqlite::params![id, state, key, succeeded.max(1)],
        )
        .expect("job");
        for (from, to) in events {
            conn.execute(
                "INSERT INTO job_events (job_id, at, from_state, to_state, attempt) VALUES (?1, 0, ?2, ?3, 1)",
                rusqlite::params![id, from, to],
            )
            .expect("event");
        }
        for token in 0..succeeded {
            conn.execute(
                "INSERT INTO job_attempts (job_id, attempt, lease_token, node_id, started_at, outcome)
                 VALUES (?1, 1, ?2, 'n', 0, 'succeeded')",
                rusqlite::params![id, token + 1],
            )
            .expect("attempt");
        }
    }

    #[test]
    fn a_clean_run_passes_and_each_violation_is_named() {
        let dir = tempfile::tempdir().expect("dir");
        let db = database(dir.path());
        let mut ledger = Ledger::new();
        ledger.record("ledger-1", Some(1), Expect::Succeeded);
        ledger.record("ledger-2", None, Expect::Succeeded);
        let done = [("queued", "leased"), ("leased", "succeeded")];
        insert(&db, 1, "ledger-1", "succeeded", &done, 1);
        insert(&db, 2, "ledger-2", "succeeded", &done, 1);
        let verdict = ledger.check(&db);
        assert!(verdict.violations.is_empty(), "{:?}", verdict.violations);
        assert_eq!(verdict.unacknowledged_in_db, 1);

        // Lost, twice completed, left a terminal state, unexpected, wrong end.
        ledger.record("ledger-3", Some(3), Expect::Succeeded);
        ledger.record("ledger-4", Some(4), Expect::Succeeded);
        ledger.record("ledger-5", Some(5), Expect::Dead);
        insert(
            &db,
            4,
            "ledger-4",
            "succeeded",
            &[("leased", "succeeded"), ("succeeded", "succeeded")],
            2,
        );
        insert(&db, 5, "ledger-5", "succeeded", &done, 1);
        insert(&db, 6, "stranger", "queued", &[], 0);
        let violations = ledger.check(&db).violations.join("\n");
        for expected in [
            "lost: acknowledged job 3",
            "job 4 is succeeded with 2 events into a terminal state",
            "job 4 left a terminal state 1 times",
            "job 4 is succeeded with 2 accepted completions",
            "job 5 (ledger-5) ended succeeded but Dead was expected",
            "unexpected: job 6",
        ] {
            assert!(
                violations.contains(expected),
                "{expected:?} in:\n{violations}"
            );
        }
    }
}
