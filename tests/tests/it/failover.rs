//! Agents that vanish, freeze, or stop: jobs move on, each completes exactly
//! once, and a late result changes nothing.

use std::time::{Duration, Instant};

use kobo_agent::coordinator::{CallError, CoordinatorClient};
use kobo_agent::report::Reporter;
use kobo_protocol::{
    CompleteBatchRequest, CompleteRequest, JobReport, JobState, LeaseRequest, LlmOutput, Outcome,
    RegisterRequest, Usage,
};
use kobo_tests::cluster::{AgentSpec, Cluster};
use nix::sys::signal::Signal;

/// Succeeded attempts and terminal events of a job, from the database.
fn completions(cluster: &Cluster, job_id: i64) -> (i64, i64) {
    let db = cluster.db();
    let attempts: i64 = db
        .query_row(
            "SELECT count(*) FROM job_attempts WHERE job_id = ?1 AND outcome = 'succeeded'",
            [job_id],
            |r| r.get(0),
        )
        .expect("count attempts");
    let terminal_events: i64 = db
        .query_row(
            "SELECT count(*) FROM job_events WHERE job_id = ?1 AND to_state IN ('succeeded', 'dead', 'cancelled')",
            [job_id],
            |r| r.get(0),
        )
        .expect("count events");
    (attempts, terminal_events)
}

/// Registers `node_id` by hand (instance `i1`, general queries).
async fn register(agent: &CoordinatorClient, node_id: &str, max_workers: u32) {
    agent
        .register(&RegisterRequest {
            node_id: node_id.into(),
            instance_id: "i1".into(),
            region: "eu-west-2".into(),
            capabilities: vec!["general_query".into()],
            max_workers,
            gpu: false,
            backend: "sim".into(),
            models: vec![],
            agent_version: "test".into(),
            specialization: None,
            latitude: None,
            longitude: None,
        })
        .await
        .expect("register");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_agent_jobs_complete_elsewhere_exactly_once() {
    let mut cluster = Cluster::builder().start().await;
    cluster.fake.update_behavior(|b| b.latency_ms = 60_000);
    let alpha = cluster
        .agent(AgentSpec::new("alpha", &["general_query"]))
        .await;
    let mut ids = Vec::new();
    for idx in 0..4 {
        ids.push(
            cluster
                .submit_prompt("general_query", &format!("question {idx}"))
                .await,
        );
    }
    for &id in &ids {
        let job = cluster.wait_state(id, JobState::Leased).await;
        assert_eq!(job.node_id.as_deref(), Some("alpha"));
    }
    cluster
        .agent(AgentSpec::new("beta", &["general_query"]))
        .await;
    cluster.fake.update_behavior(|b| b.latency_ms = 50);

    let killed = Instant::now();
    cluster.agents[alpha].signal(Signal::SIGKILL);
    for &id in &ids {
        let done = cluster.wait_done(id).await;
        assert_eq!(done.state, JobState::Succeeded);
        assert_eq!(done.node_id.as_deref(), Some("beta"), "job {id}");
        assert_eq!(
            done.attempts, 2,
            "job {id}: one attempt on alpha, one on beta"
        );
    }
    let elapsed = killed.elapsed();
    let s = &cluster.settings;
    // Lost after 3 missed heartbeats; the slack covers this 2-core machine.
    let bound = Duration::from_millis(3 * s.heartbeat_ms + s.lease_ttl_ms + 2000);
    assert!(
        elapsed < bound,
        "failover took {elapsed:?}, bound {bound:?}"
    );
    for &id in &ids {
        assert_eq!(
            completions(&cluster, id),
            (1, 1),
            "job {id} completed exactly once"
        );
        let outcome: String = cluster
            .db()
            .query_row(
                "SELECT outcome FROM job_attempts WHERE job_id = ?1 AND node_id = 'alpha'",
                [id],
                |r| r.get(0),
            )
            .expect("alpha's attempt");
        assert!(
            outcome == "node_lost" || outcome == "expired",
            "alpha's attempt ended {outcome}"
        );
    }
    let nodes = cluster.client().nodes().await.expect("nodes");
    let alpha = nodes
        .iter()
        .find(|n| n.node_id == "alpha")
        .expect("alpha listed");
    assert_eq!(alpha.status, kobo_protocol::NodeStatus::Lost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstopped_agent_late_result_changes_nothing() {
    let mut cluster = Cluster::builder().start().await;
    // Alpha's call is held at the LLM until the test lets it go: no race
    // between a latency and the SIGSTOP.
    cluster.fake.update_behavior(|b| b.hold = true);
    let alpha = cluster
        .agent(AgentSpec::new("alpha", &["general_query"]))
        .await;
    let id = cluster
        .submit_prompt("general_query", "slow question")
        .await;
    cluster.wait_state(id, JobState::Leased).await;
    cluster
        .wait_until("alpha's call reaches the LLM", || async {
            generation_calls(&cluster) == 1
        })
        .await;
    cluster.agents[alpha].signal(Signal::SIGSTOP);
    cluster
        .agent(AgentSpec::new("beta", &["general_query"]))
        .await;
    // Only once beta holds the lease are the calls let go: alpha's answer
    // then waits in the socket of a frozen process, and its lease token is
    // no longer the job's whatever the machine's load.
    cluster
        .wait_until("beta takes the job over", || async {
            let job = cluster.client().job(id).await.expect("job").job;
            job.state == JobState::Leased && job.node_id.as_deref() == Some("beta")
        })
        .await;
    cluster.fake.update_behavior(|b| b.hold = false);

    let done = cluster.wait_done(id).await;
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.node_id.as_deref(), Some("beta"), "{}", cluster.logs());
    let before = cluster.client().job(id).await.expect("job");
    cluster
        .wait_until("alpha's answer is sent", || async {
            cluster.fake.in_flight() == 0
        })
        .await;
    cluster.agents[alpha].signal(Signal::SIGCONT);
    cluster
        .wait_until("alpha learns the job is no longer its own", || async {
            cluster.agents[alpha].log_text().contains("no longer ours")
        })
        .await;
    let after = cluster.client().job(id).await.expect("job");
    assert_eq!(before.job, after.job, "the late agent changed the job");
    assert_eq!(completions(&cluster, id), (1, 1));
    assert_eq!(after.job.lease_token, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_with_a_stale_lease_token_gets_409_and_changes_nothing() {
    let cluster = Cluster::builder().start().await;
    let agent = cluster.enroll("manual").await;
    register(&agent, "manual", 1).await;
    let id = cluster.submit_prompt("general_query", "hi").await;
    let leases = agent
        .lease(&LeaseRequest {
            node_id: "manual".into(),
            instance_id: "i1".into(),
            max_jobs: 1,
            wait_ms: 5000,
        })
        .await
        .expect("lease")
        .leases;
    assert_eq!(leases.len(), 1);
    let lease = &leases[0];
    assert_eq!((lease.job_id, lease.lease_token, lease.attempt), (id, 1, 1));

    let output = LlmOutput {
        text: "answer".into(),
        model: "sim".into(),
        usage: Usage::default(),
    };
    let report = |token: i64, outcome: Outcome| CompleteRequest {
        node_id: "manual".into(),
        lease_token: token,
        outcome,
    };
    let before = cluster.client().job(id).await.expect("job");
    let stale = agent
        .complete(
            id,
            &report(
                7,
                Outcome::Succeeded {
                    output: output.clone(),
                },
            ),
        )
        .await;
    assert!(matches!(stale, Err(CallError::Stale(_))), "{stale:?}");
    assert_eq!(cluster.client().job(id).await.expect("job"), before);

    let ok = agent
        .complete(
            id,
            &report(
                1,
                Outcome::Succeeded {
                    output: output.clone(),
                },
            ),
        )
        .await
        .expect("complete");
    assert_eq!((ok.state, ok.duplicate), (JobState::Succeeded, false));
    // The same report again (an answer lost on the way back) is accepted as a
    // duplicate and changes nothing.
    let again = agent
        .complete(id, &report(1, Outcome::Succeeded { output }))
        .await
        .expect("duplicate");
    assert!(again.duplicate);
    // A different outcome for a finished lease is a conflict.
    let other = agent
        .complete(
            id,
            &report(
                1,
                Outcome::Failed {
                    error: "late".into(),
                    retryable: true,
                },
            ),
        )
        .await;
    assert!(matches!(other, Err(CallError::Stale(_))), "{other:?}");
    let done = cluster.client().job(id).await.expect("job").job;
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.output.expect("output").text, "answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_report_answers_each_job_on_its_own() {
    let cluster = Cluster::builder().start().await;
    let agent = cluster.enroll("batch").await;
    register(&agent, "batch", 4).await;
    let mut ids = Vec::new();
    for idx in 0..4 {
        ids.push(
            cluster
                .submit_prompt("general_query", &format!("q{idx}"))
                .await,
        );
    }
    let mut leases = Vec::new();
    while leases.len() < 4 {
        leases.extend(
            agent
                .lease(&LeaseRequest {
                    node_id: "batch".into(),
                    instance_id: "i1".into(),
                    max_jobs: 4,
                    wait_ms: 5000,
                })
                .await
                .expect("lease")
                .leases,
        );
    }
    leases.sort_by_key(|l| l.job_id);
    let token = |idx: usize| leases[idx].lease_token;
    let succeeded = |text: &str| Outcome::Succeeded {
        output: LlmOutput {
            text: text.into(),
            model: "sim".into(),
            usage: Usage::default(),
        },
    };
    let report = |job_id: i64, lease_token: i64, outcome: Outcome| JobReport {
        job_id,
        lease_token,
        outcome,
    };

    // Refused before anything is written: the same job twice, or nothing.
    let stale_before = cluster.client().job(ids[1]).await.expect("job");
    for (reports, field) in [
        (
            vec![
                report(ids[0], token(0), succeeded("a")),
                report(ids[0], token(0), succeeded("a")),
            ],
            "reports[1].job_id",
        ),
        (vec![], "reports"),
    ] {
        let refused = agent
            .complete_batch(&CompleteBatchRequest {
                node_id: "batch".into(),
                reports,
            })
            .await;
        match refused {
            Err(CallError::Rejected(message)) => assert!(message.contains(field), "{message}"),
            other => panic!("expected a 400 naming {field}, got {other:?}"),
        }
    }
    assert_eq!(
        cluster.client().job(ids[0]).await.expect("job").job.state,
        JobState::Leased
    );

    // One call: accepted, stale, failed for good, unknown: each answered alone.
    let answer = agent
        .complete_batch(&CompleteBatchRequest {
            node_id: "batch".into(),
            reports: vec![
                report(ids[0], token(0), succeeded("first")),
                report(ids[1], token(1) + 5, succeeded("stale")),
                report(
                    ids[2],
                    token(2),
                    Outcome::Failed {
                        error: "bad prompt".into(),
                        retryable: false,
                    },
                ),
                report(999_999, 1, succeeded("nobody's")),
            ],
        })
        .await
        .expect("batch report");
    let results = answer.results;
    assert_eq!(
        results.iter().map(|r| r.job_id).collect::<Vec<_>>(),
        vec![ids[0], ids[1], ids[2], 999_999]
    );
    assert_eq!(
        (results[0].state, results[0].error.is_none()),
        (Some(JobState::Succeeded), true)
    );
    assert_eq!(
        results[1].error.as_ref().map(|e| e.code.as_str()),
        Some("stale_lease")
    );
    assert_eq!(results[2].state, Some(JobState::Dead));
    assert_eq!(
        results[3].error.as_ref().map(|e| e.code.as_str()),
        Some("not_found")
    );
    let done = cluster.client().job(ids[0]).await.expect("job").job;
    assert_eq!(done.output.expect("output").text, "first");
    assert_eq!(
        cluster.client().job(ids[1]).await.expect("job"),
        stale_before
    );
    assert_eq!(completions(&cluster, ids[0]), (1, 1));

    // The agent's reporter: answers as the one-job call would.
    let reporter = Reporter::spawn(agent.clone(), "batch".into());
    let single = |lease_token: i64, outcome: Outcome| CompleteRequest {
        node_id: "batch".into(),
        lease_token,
        outcome,
    };
    let (late, second, first) = (
        single(token(3) + 1, succeeded("late")),
        single(token(1), succeeded("second")),
        single(token(0), succeeded("first")),
    );
    let (late, ok, repeat) = tokio::join!(
        reporter.complete(ids[3], &late),
        reporter.complete(ids[1], &second),
        reporter.complete(ids[0], &first),
    );
    assert!(matches!(late, Err(CallError::Stale(_))), "{late:?}");
    assert_eq!(ok.expect("reported").state, JobState::Succeeded);
    assert!(repeat.expect("duplicate").duplicate);
    assert_eq!(completions(&cluster, ids[1]), (1, 1));
    assert_eq!(
        cluster.client().job(ids[3]).await.expect("job").job.state,
        JobState::Leased
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_running_jobs_then_exits_zero() {
    // Heartbeats and leases far longer than a loaded machine's stalls: this
    // test is about the drain, and a missed heartbeat would requeue the job.
    let mut cluster = Cluster::builder()
        .heartbeat_ms(1000)
        .lease_ttl_ms(30_000)
        .start()
        .await;
    cluster.fake.update_behavior(|b| b.latency_ms = 1000);
    let alpha = cluster
        .agent(AgentSpec::new("alpha", &["general_query"]))
        .await;
    let id = cluster.submit_prompt("general_query", "finish me").await;
    cluster.wait_state(id, JobState::Leased).await;
    // Running, not only leased: the lease answer may still be on its way to
    // the agent when the coordinator says leased.
    cluster
        .wait_until("alpha's call reaches the LLM", || async {
            generation_calls(&cluster) == 1
        })
        .await;
    cluster.agents[alpha].signal(Signal::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(20), cluster.agents[alpha].child.wait())
        .await
        .expect("agent exits within the drain deadline")
        .expect("wait");
    assert!(status.success(), "agent exit status {status}");
    let job = cluster.client().job(id).await.expect("job").job;
    assert_eq!(
        job.state,
        JobState::Succeeded,
        "the running job was finished and reported"
    );
    assert_eq!(job.attempts, 1);
    // Nothing more is leased by the stopped agent.
    let id2 = cluster.submit_prompt("general_query", "after stop").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        cluster.client().job(id2).await.expect("job").job.state,
        JobState::Queued
    );
}

/// Generation calls the fake LLM received, on any of its APIs.
fn generation_calls(cluster: &Cluster) -> u64 {
    ["/api/generate", "/api/chat", "/v1/chat/completions"]
        .iter()
        .map(|path| cluster.fake.requests_to(path))
        .sum()
}
