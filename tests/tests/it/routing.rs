//! Routing end to end: hard constraints hold (residency, GPU, confidential),
//! faster nodes get more work, a busy preferred node is waited for only up to
//! the bound (and the wait is not reset by other jobs finishing), drain lets
//! running jobs finish and takes no new ones, schedules fire once per slot
//! across a coordinator restart.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kobo_protocol::{JobState, NodeStatus, Preferences, Requirements, ScheduleCreate, SubmitJob};
use kobo_tests::cluster::{AgentSpec, Cluster, job};

fn sim(node: &str, region: &str, kinds: &[&str], latency_ms: u64, workers: u32) -> AgentSpec {
    AgentSpec::new(node, kinds)
        .backend("sim")
        .region(region)
        .max_workers(workers)
        .arg("--sim-latency-ms")
        .arg(&latency_ms.to_string())
}

fn with(requirements: Requirements, kind: &str, prompt: &str) -> SubmitJob {
    SubmitJob {
        requirements,
        ..job(kind, prompt)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_constraints_hold_and_every_lease_explains_itself() {
    let mut cluster = Cluster::builder().start().await;
    let kinds = ["general_query", "data_analysis"];
    cluster
        .agent(sim("tokyo-01", "ap-northeast-1", &kinds, 30, 4).arg("--gpu"))
        .await;
    cluster
        .agent(sim("osaka-01", "ap-northeast-3", &kinds, 30, 4))
        .await;
    cluster
        .agent(
            sim(
                "london-01",
                "eu-west-2",
                &["general_query", "data_analysis", "confidential_processing"],
                30,
                4,
            )
            .arg("--gpu"),
        )
        .await;
    let mut expected: Vec<(i64, &[&str])> = Vec::new();
    for idx in 0..6 {
        let japan = Requirements {
            data_location: Some("japan".into()),
            ..Requirements::default()
        };
        expected.push((
            cluster
                .submit(&with(japan, "general_query", &format!("jp {idx}")))
                .await,
            &["tokyo-01", "osaka-01"],
        ));
        let gpu = Requirements {
            gpu: true,
            ..Requirements::default()
        };
        expected.push((
            cluster
                .submit(&with(gpu, "data_analysis", &format!("gpu {idx}")))
                .await,
            &["tokyo-01", "london-01"],
        ));
        let secret = Requirements {
            confidential: true,
            ..Requirements::default()
        };
        expected.push((
            cluster
                .submit(&with(secret, "data_analysis", &format!("secret {idx}")))
                .await,
            &["london-01"],
        ));
        let europe = Requirements {
            data_location: Some("europe".into()),
            ..Requirements::default()
        };
        expected.push((
            cluster
                .submit(&with(europe, "general_query", &format!("eu {idx}")))
                .await,
            &["london-01"],
        ));
    }
    for (id, allowed) in expected {
        let done = cluster.wait_done(id).await;
        assert_eq!(done.state, JobState::Succeeded, "job {id}");
        let node = done.node_id.clone().expect("node");
        assert!(
            allowed.contains(&node.as_str()),
            "job {id} ran on {node}, allowed {allowed:?}"
        );
        let reason = serde_json::to_value(
            done.route_reason
                .expect("every lease records its route_reason"),
        )
        .expect("json");
        assert_eq!(reason["chosen"], node.as_str(), "{reason}");
        assert!(
            reason["ranked"].as_array().is_some_and(|r| !r.is_empty()),
            "{reason}"
        );
    }
    // A residency no node satisfies waits, saying why.
    let nowhere = Requirements {
        data_location: Some("us".into()),
        ..Requirements::default()
    };
    let id = cluster
        .submit(&with(nowhere, "general_query", "us only"))
        .await;
    let detail = cluster.client().job(id).await.expect("job");
    assert_eq!(detail.job.state, JobState::Queued);
    let why = detail.job.queue_reason.expect("reason");
    assert!(why.contains("data must stay in us"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faster_nodes_get_more_work() {
    let mut cluster = Cluster::builder().start().await;
    cluster
        .agent(sim("fast", "eu-west-2", &["general_query"], 25, 2))
        .await;
    cluster
        .agent(sim("slow", "eu-west-2", &["general_query"], 300, 2))
        .await;
    let jobs: Vec<SubmitJob> = (0..60)
        .map(|i| job("general_query", &format!("q {i}")))
        .collect();
    let ids: Vec<i64> = cluster
        .client()
        .submit_batch(jobs)
        .await
        .expect("batch")
        .jobs
        .iter()
        .map(|j| j.id)
        .collect();
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for id in ids {
        let done = cluster.wait_done(id).await;
        *per_node.entry(done.node_id.expect("node")).or_default() += 1;
    }
    let (fast, slow) = (per_node["fast"], per_node.get("slow").copied().unwrap_or(0));
    assert!(fast > 3 * slow, "fast did {fast}, slow did {slow}");
}

/// When the job was leased, relative to its creation (ms).
fn lease_delay(cluster: &Cluster, id: i64) -> i64 {
    cluster
        .db()
        .query_row(
            "SELECT e.at - j.created_at FROM job_events e JOIN jobs j ON j.id = e.job_id WHERE e.job_id = ?1 AND e.to_state = 'leased' ORDER BY e.id LIMIT 1",
            [id],
            |r| r.get(0),
        )
        .expect("lease event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_preferred_node_is_waited_for_only_up_to_the_bound() {
    const BOUND_MS: i64 = 1500;
    let mut cluster = Cluster::builder()
        .serve_arg("--locality-wait-ms")
        .serve_arg(&BOUND_MS.to_string())
        .start()
        .await;
    cluster
        .agent(sim(
            "preferred",
            "ap-northeast-1",
            &["general_query"],
            8000,
            1,
        ))
        .await;
    cluster
        .agent(sim("other", "eu-west-2", &["general_query"], 40, 4))
        .await;
    let pinned = |prompt: &str| SubmitJob {
        preferences: Preferences {
            node: Some("preferred".into()),
            region: None,
        },
        ..job("general_query", prompt)
    };
    // The preferred node takes the first job and is busy for 8 s.
    let first = cluster.submit(&pinned("occupy")).await;
    let busy = cluster.wait_state(first, JobState::Leased).await;
    assert_eq!(busy.node_id.as_deref(), Some("preferred"));
    // This one prefers it too: it waits, however many other jobs come and go.
    let started = Instant::now();
    let waiting = cluster.submit(&pinned("wait for it")).await;
    let mut others = Vec::new();
    while started.elapsed() < Duration::from_millis(BOUND_MS as u64 + 200) {
        others.push(cluster.submit_prompt("general_query", "meanwhile").await);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let done = cluster.wait_done(waiting).await;
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(
        done.node_id.as_deref(),
        Some("other"),
        "the bound passed while preferred was busy"
    );
    let delay = lease_delay(&cluster, waiting);
    assert!(
        (BOUND_MS - 100..BOUND_MS + 1500).contains(&delay),
        "leased {delay} ms after submit; the bound is {BOUND_MS} ms and must not be reset"
    );
    let reason = serde_json::to_value(done.route_reason.expect("route reason")).expect("json");
    assert_eq!(
        reason["locality"], "no preferred node free within the wait bound",
        "{reason}"
    );
    for id in others {
        let done = cluster.wait_done(id).await;
        assert_eq!(done.node_id.as_deref(), Some("other"));
        assert!(
            lease_delay(&cluster, id) < 1000,
            "jobs without a preference never wait"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_running_jobs_and_takes_no_new_ones() {
    let mut cluster = Cluster::builder().start().await;
    cluster
        .agent(sim("alpha", "eu-west-2", &["general_query"], 1500, 2))
        .await;
    let running = cluster.submit_prompt("general_query", "finish me").await;
    cluster.wait_state(running, JobState::Leased).await;
    let answer = cluster.client().drain("alpha").await.expect("drain");
    assert_eq!(answer["status"], "draining");
    let later = cluster
        .submit_prompt("general_query", "not on a draining node")
        .await;
    let done = cluster.wait_done(running).await;
    assert_eq!(done.state, JobState::Succeeded, "the running job finished");
    cluster
        .wait_until("alpha drained", || async {
            cluster.client().nodes().await.is_ok_and(|nodes| {
                nodes
                    .iter()
                    .any(|n| n.node_id == "alpha" && n.status == NodeStatus::Drained)
            })
        })
        .await;
    let detail = cluster.client().job(later).await.expect("job");
    assert_eq!(
        detail.job.state,
        JobState::Queued,
        "a drained node takes no new job"
    );
    assert!(
        detail
            .job
            .queue_reason
            .expect("reason")
            .contains("is drained")
    );
    cluster.client().resume("alpha").await.expect("resume");
    let done = cluster.wait_done(later).await;
    assert_eq!(done.node_id.as_deref(), Some("alpha"));
    let audit: i64 = cluster
        .db()
        .query_row(
            "SELECT count(*) FROM audit_log WHERE action IN ('node.drain', 'node.resume')",
            [],
            |r| r.get(0),
        )
        .expect("audit");
    assert_eq!(audit, 2);
}

/// Slots (ms) of the jobs a schedule fired, in order.
fn fired_slots(cluster: &Cluster, name: &str) -> Vec<i64> {
    let mut stmt = cluster
        .db()
        .prepare("SELECT idempotency_key FROM jobs WHERE idempotency_key LIKE ?1")
        .expect("prepare")
        .query_map([format!("schedule:{name}:%")], |r| r.get::<_, String>(0))
        .expect("query")
        .map(|k| {
            k.expect("key")
                .rsplit(':')
                .next()
                .expect("slot")
                .parse::<i64>()
                .expect("ms")
        })
        .collect::<Vec<_>>();
    stmt.sort();
    stmt
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_fire_once_per_slot_and_catch_up_once_after_a_restart() {
    let mut cluster = Cluster::builder().start().await;
    cluster
        .agent(sim("alpha", "eu-west-2", &["general_query"], 10, 4))
        .await;
    let created = cluster
        .client()
        .schedule_create(&ScheduleCreate {
            name: "tick".into(),
            cron: "*/2 * * * * *".into(),
            job: job("general_query", "every two seconds"),
            catch_up: Default::default(),
        })
        .await
        .expect("schedule");
    assert_eq!(created.timezone, "UTC");
    cluster
        .wait_until("two slots fired", || async {
            fired_slots(&cluster, "tick").len() >= 2
        })
        .await;
    let down_at = kobo_queue::store::unix_now_ms();
    cluster.kill_coordinator().await;
    tokio::time::sleep(Duration::from_millis(5200)).await;
    cluster.start_coordinator().await;
    let up_at = kobo_queue::store::unix_now_ms();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let slots = fired_slots(&cluster, "tick");
    // Each slot at most once (the key is unique), every slot on the 2 s grid.
    assert!(
        slots
            .windows(2)
            .all(|w| w[1] > w[0] && (w[1] - w[0]) % 2000 == 0),
        "{slots:?}"
    );
    let missed: Vec<i64> = slots
        .iter()
        .copied()
        .filter(|s| *s > down_at && *s <= up_at)
        .collect();
    assert_eq!(
        missed.len(),
        1,
        "the 2-3 slots missed while down are caught up once: {slots:?}"
    );
    assert!(
        slots.iter().any(|s| *s > up_at),
        "it keeps firing after the restart: {slots:?}"
    );
    let listed = cluster.client().schedules().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert!(listed[0].last_job_id.is_some());
    cluster
        .client()
        .schedule_pause("tick", true)
        .await
        .expect("pause");
    let before = fired_slots(&cluster, "tick").len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        fired_slots(&cluster, "tick").len(),
        before,
        "a paused schedule does not fire"
    );
    cluster
        .client()
        .schedule_remove("tick")
        .await
        .expect("remove");
    assert!(cluster.client().schedules().await.expect("list").is_empty());
}
