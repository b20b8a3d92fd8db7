//! Chaos, checked by the ledger (`kobo_tests::ledger`): a job ten times
//! longer than the lease TTL is never reassigned while its agent
//! heartbeats; a poison job that kills its agent every time ends `dead`
//! after its attempts, each retry backed off, while other jobs flow; the
//! coordinator SIGKILLed at random points ten times under a stream of
//! submits loses nothing acknowledged, completes nothing twice, keeps its
//! database intact and serves within 5 s of each start; agents whose clocks
//! are an hour off (libfaketime) keep their leases and heartbeats.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kobo_protocol::JobState;
use kobo_tests::cluster::{AgentSpec, Cluster, job};
use kobo_tests::ledger::{Expect, Ledger};

/// A submit waits this long for a restarting coordinator.
const SUBMIT_PATIENCE: Duration = Duration::from_secs(60);

/// Waits for every acknowledged job of `ledger` to end.
async fn settle(cluster: &Cluster, ledger: &Ledger) {
    for id in ledger.acknowledged_ids() {
        cluster.wait_done(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_ten_times_the_lease_ttl_is_never_reassigned_while_heartbeating() {
    // The harness's timings: heartbeats every 300 ms, a 1.5 s lease TTL.
    let mut cluster = Cluster::builder().start().await;
    let ttl = Duration::from_millis(cluster.settings.lease_ttl_ms);
    let long = ttl * 10;
    cluster
        .fake
        .update_behavior(|b| b.latency_ms = long.as_millis() as u64);
    cluster
        .agent(AgentSpec::new("tokyo-01", &["general_query"]))
        .await;
    cluster
        .agent(AgentSpec::new("osaka-01", &["general_query"]))
        .await;
    let mut ledger = Ledger::new();
    let id = ledger
        .submit(
            cluster.client(),
            job("general_query", "a long one"),
            Expect::Succeeded,
            SUBMIT_PATIENCE,
        )
        .await
        .expect("submit");
    let leased = cluster.wait_state(id, JobState::Leased).await;
    let started = Instant::now();
    let done = cluster.wait_done(id).await;
    let took = started.elapsed();
    assert_eq!(done.state, JobState::Succeeded, "{}", cluster.logs());
    assert!(
        took >= long - ttl,
        "the job ran about {long:?} (it took {took:?} from its lease)"
    );
    assert_eq!(done.attempts, 1, "one attempt, never reassigned");
    assert_eq!(
        done.node_id, leased.node_id,
        "it finished on the node that leased it"
    );
    let (attempts, releases): (i64, i64) = cluster
        .db()
        .query_row(
            "SELECT (SELECT count(*) FROM job_attempts WHERE job_id = ?1),
                    (SELECT count(*) FROM job_events WHERE job_id = ?1 AND from_state = 'leased'
                        AND to_state <> 'succeeded')",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("attempts");
    assert_eq!(
        (attempts, releases),
        (1, 0),
        "one attempt row, no lease released"
    );
    assert_eq!(
        cluster.fake.requests_to("/api/generate"),
        1,
        "the LLM was called once"
    );
    ledger.check(&cluster.db_path()).assert_ok(&cluster.logs());
    eprintln!(
        "long job: {took:?} ({}x the {ttl:?} lease TTL) on one lease, 1 attempt",
        took.as_millis() / ttl.as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_coordinator_kills_at_random_points_lose_nothing_and_serve_within_5_s() {
    const KILLS: usize = 10;
    const SERVE_WITHIN: Duration = Duration::from_secs(5);
    let mut cluster = Cluster::builder().start().await;
    cluster.fake.update_behavior(|b| b.latency_ms = 100);
    for node in ["tokyo-01", "osaka-01"] {
        cluster
            .agent(AgentSpec::new(node, &["general_query"]).max_workers(3))
            .await;
    }
    // Submits run on through the kills; each waits out a restart.
    let client = cluster.client().clone();
    let stop = Arc::new(AtomicBool::new(false));
    let submitter = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut ledger = Ledger::new();
            let mut idx = 0;
            while !stop.load(Ordering::SeqCst) {
                idx += 1;
                let job = job("general_query", &format!("through the kills {idx}"));
                if let Err(err) = ledger
                    .submit(&client, job, Expect::Succeeded, SUBMIT_PATIENCE)
                    .await
                {
                    panic!("submit {idx} failed for good: {err}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ledger
        }
    });
    let mut serving_after = Vec::new();
    for _ in 0..KILLS {
        // A random point: anywhere in a run of leases, reports and submits.
        let pause = Duration::from_millis(150 + rand_below(600));
        tokio::time::sleep(pause).await;
        cluster.kill_coordinator().await;
        let started = Instant::now();
        cluster.start_coordinator().await;
        serving_after.push(started.elapsed());
    }
    stop.store(true, Ordering::SeqCst);
    let ledger = submitter.await.expect("submitter");
    settle(&cluster, &ledger).await;
    let verdict = ledger.check(&cluster.db_path());
    verdict.assert_ok(&cluster.logs());
    assert_eq!(cluster.integrity_check(), "ok", "PRAGMA integrity_check");
    let slowest = serving_after.iter().max().copied().unwrap_or_default();
    assert!(
        slowest < SERVE_WITHIN,
        "serving within {SERVE_WITHIN:?} of each start: {serving_after:?}"
    );
    eprintln!(
        "kill loop: {KILLS} SIGKILLs; {} jobs acknowledged ({} more in the database unacknowledged), states {:?}; \
         integrity ok; serving {:?}..{slowest:?} after each start",
        verdict.acknowledged,
        verdict.unacknowledged_in_db,
        verdict.by_state,
        serving_after.iter().min().copied().unwrap_or_default(),
    );
}

/// A random number below `n` (the kill points).
fn rand_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    hasher.finish() % n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_job_ends_dead_after_its_attempts_backed_off_while_others_flow() {
    const POISON: &str = "POISON-PILL";
    const OTHERS: usize = 12;
    const RETRY_BASE_MS: i64 = 400;
    let mut cluster = Cluster::builder()
        .retry_base_ms(RETRY_BASE_MS as u64)
        .max_attempts(3)
        .start()
        .await;
    cluster.fake.update_behavior(|b| {
        b.kill_caller_on = Some(POISON.to_string());
        b.latency_ms = 100;
    });
    // One job at a time per agent: the poison never takes a healthy job down.
    let spec =
        |idx: usize| AgentSpec::new(&format!("worker-{idx}"), &["general_query"]).max_workers(1);
    for idx in 0..3 {
        cluster.agent(spec(idx)).await;
    }
    let mut ledger = Ledger::new();
    let poison = ledger
        .submit(
            cluster.client(),
            job("general_query", &format!("{POISON}: take the agent down")),
            Expect::Dead,
            SUBMIT_PATIENCE,
        )
        .await
        .expect("submit the poison");
    ledger
        .submit_many(
            cluster.client(),
            ("general_query", "a healthy job"),
            OTHERS,
            Expect::Succeeded,
            SUBMIT_PATIENCE,
        )
        .await
        .expect("submit");
    // A supervisor's part: each dead agent is started again (a new instance
    // of the same node), until the poison job has ended.
    let mut restarted = std::collections::BTreeSet::new();
    let deadline = Instant::now() + kobo_tests::cluster::PATIENCE * 2;
    loop {
        let state = cluster
            .client()
            .job(poison)
            .await
            .expect("poison job")
            .job
            .state;
        if state.is_terminal() {
            break;
        }
        for idx in 0..cluster.agents.len() {
            let dead = matches!(cluster.agents[idx].child.try_wait(), Ok(Some(_)));
            if dead && restarted.insert(idx) {
                let again = cluster.agents[idx].spec.clone();
                cluster.agent(again).await;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the poison job is still {state}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    settle(&cluster, &ledger).await;
    let done = cluster.wait_done(poison).await;
    assert_eq!(done.state, JobState::Dead, "{}", cluster.logs());
    assert_eq!(done.attempts, 3, "dead after max attempts");
    assert_eq!(
        cluster.fake.poison_kills(),
        3,
        "each attempt killed its agent"
    );
    // Backoff: each released attempt waited at least half of base * 2^(n-1).
    let events: Vec<(i64, String, String, i64)> = cluster
        .db()
        .prepare(
            "SELECT at, coalesce(from_state, ''), to_state, attempt FROM job_events
             WHERE job_id = ?1 ORDER BY id",
        )
        .and_then(|mut s| {
            s.query_map([poison], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect()
        })
        .expect("events");
    let mut waits = Vec::new();
    for pair in events.windows(2) {
        let ((released, from, to, attempt), (queued, next_from, next_to, _)) = (&pair[0], &pair[1]);
        if from == "leased" && to == "scheduled" {
            assert_eq!(
                (next_from.as_str(), next_to.as_str()),
                ("scheduled", "queued"),
                "{events:?}"
            );
            let least = RETRY_BASE_MS * (1 << (attempt - 1)) / 2;
            let waited = queued - released;
            assert!(
                waited >= least,
                "attempt {attempt} was retried after {waited} ms, under its backoff of {least} ms: {events:?}"
            );
            waits.push(waited);
        }
    }
    assert_eq!(
        waits.len(),
        2,
        "two backed-off retries before the end: {events:?}"
    );
    let flowed: i64 = cluster
        .db()
        .query_row(
            "SELECT count(*) FROM jobs WHERE id <> ?1 AND state = 'succeeded'",
            [poison],
            |r| r.get(0),
        )
        .expect("others");
    assert_eq!(flowed, OTHERS as i64, "the other jobs all succeeded");
    ledger.check(&cluster.db_path()).assert_ok(&cluster.logs());
    eprintln!(
        "poison job: dead after {} attempts, {} agents killed and restarted, retries backed off {waits:?} ms \
         (base {RETRY_BASE_MS} ms); {OTHERS} other jobs succeeded",
        done.attempts,
        cluster.fake.poison_kills()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_an_hour_off_keep_their_leases_and_heartbeats() {
    assert!(
        std::path::Path::new("/usr/bin/faketime").exists(),
        "/usr/bin/faketime is missing: install Debian's faketime package (scripts/install-test-deps does)"
    );
    // The harness's timings: heartbeats every 300 ms, a 1.5 s lease TTL.
    let mut cluster = Cluster::builder().start().await;
    let ttl = Duration::from_millis(cluster.settings.lease_ttl_ms);
    // Each call outlives the lease twice over: only heartbeats keep it.
    cluster
        .fake
        .update_behavior(|b| b.latency_ms = (ttl * 3).as_millis() as u64);
    let offsets = [("ahead-01", "+1h"), ("behind-01", "-1h")];
    for (node, offset) in offsets {
        cluster
            .agent(
                AgentSpec::new(node, &["general_query"])
                    .max_workers(2)
                    .under(&["faketime", "-f", offset]),
            )
            .await;
    }
    let mut ledger = Ledger::new();
    ledger
        .submit_many(
            cluster.client(),
            ("general_query", "whatever the clock says"),
            4,
            Expect::Succeeded,
            SUBMIT_PATIENCE,
        )
        .await
        .expect("submit");
    let mut ran_on = std::collections::BTreeSet::new();
    for id in ledger.acknowledged_ids() {
        let done = cluster.wait_done(id).await;
        assert_eq!(done.state, JobState::Succeeded);
        assert_eq!(done.attempts, 1, "job {id} was never reassigned");
        ran_on.extend(done.node_id);
    }
    assert_eq!(ran_on.len(), 2, "both skewed agents ran jobs: {ran_on:?}");
    let released: i64 = cluster
        .db()
        .query_row(
            "SELECT count(*) FROM job_attempts WHERE outcome <> 'succeeded'",
            [],
            |r| r.get(0),
        )
        .expect("attempts");
    assert_eq!(released, 0, "no lease ran out or was released");
    for agent in &cluster.agents {
        let log = agent.log_text();
        assert!(
            !log.contains("heartbeat failed") && !log.contains("heartbeat refused"),
            "{}: heartbeats kept working:\n{log}",
            agent.spec.node_id
        );
    }
    // The agents' own clocks (their log lines' UTC hour) were an hour off.
    let hour_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        / 3600
        % 24;
    for (agent, shift) in cluster.agents.iter().zip([1, 23]) {
        let log = agent.log_text();
        let hour: Option<u64> = log.get(11..13).and_then(|h| h.parse().ok());
        assert_eq!(
            hour,
            Some((hour_now + shift) % 24),
            "{} ran {shift} hours (mod 24) off: {}",
            agent.spec.node_id,
            log.lines().next().unwrap_or_default()
        );
    }
    ledger.check(&cluster.db_path()).assert_ok(&cluster.logs());
    eprintln!(
        "clock: agents at +1h and -1h ran 4 jobs of {:?} each (3x the {ttl:?} TTL) on one lease each; no heartbeat failed",
        ttl * 3
    );
}
