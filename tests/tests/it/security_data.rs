//! Confidential jobs: leased only to nodes declaring
//! `confidential_processing`; prompt and result sealed at rest (the raw
//! database file holds no plaintext) and shown only to the submitter and
//! admins; never written to logs.

use kobo_protocol::{AccessRole, JobState, Requirements, SubmitJob};
use kobo_tests::cluster::{AgentSpec, Cluster, job};
use kobo_tests::fake_llm::reply_text;

/// Whether any byte sequence of the database files contains `needle`.
fn database_contains(cluster: &Cluster, needle: &str) -> bool {
    ["kobo.db", "kobo.db-wal"].iter().any(|name| {
        std::fs::read(cluster.data_dir.join(name))
            .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
            .unwrap_or(false)
    })
}

fn confidential(prompt: &str) -> SubmitJob {
    SubmitJob {
        requirements: Requirements {
            confidential: true,
            ..Requirements::default()
        },
        ..job("data_analysis", prompt)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confidential_jobs_stay_on_designated_nodes_and_sealed_at_rest() {
    let mut cluster = Cluster::builder().start().await;
    let secret = format!("SECRET-PROMPT-{:016x}", rand_u64());
    let (submitter, _) = cluster.client_with_role(AccessRole::Submit).await;
    let (reader, _) = cluster.client_with_role(AccessRole::Read).await;

    // No node may run it yet: it waits, and says why.
    let waiting = submitter
        .submit(&confidential(&secret))
        .await
        .expect("submit")
        .id;
    let detail = cluster.client().job(waiting).await.expect("job");
    assert_eq!(detail.job.state, JobState::Queued);
    assert!(
        detail
            .job
            .queue_reason
            .expect("reason")
            .contains("no node has registered")
    );

    cluster
        .agent(AgentSpec::new("tokyo-01", &["data_analysis"]))
        .await;
    let detail = cluster.client().job(waiting).await.expect("job");
    let reason = detail.job.queue_reason.expect("reason");
    assert!(reason.contains("confidential_processing"), "{reason}");
    assert_eq!(detail.job.state, JobState::Queued);

    cluster
        .agent(
            AgentSpec::new("london-01", &["data_analysis", "confidential_processing"])
                .region("eu-west-2"),
        )
        .await;
    let done = cluster.wait_done(waiting).await;
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.node_id.as_deref(), Some("london-01"));
    // More confidential and plain jobs: the confidential ones never leave london.
    let mut ids = Vec::new();
    for idx in 0..6 {
        let spec = if idx % 2 == 0 {
            confidential(&format!("{secret}-{idx}"))
        } else {
            job("data_analysis", &format!("plain {idx}"))
        };
        ids.push((
            idx % 2 == 0,
            submitter.submit(&spec).await.expect("submit").id,
        ));
    }
    for (is_confidential, id) in &ids {
        let done = cluster.wait_done(*id).await;
        assert_eq!(done.state, JobState::Succeeded);
        assert_eq!(done.confidential, *is_confidential);
        if *is_confidential {
            assert_eq!(
                done.node_id.as_deref(),
                Some("london-01"),
                "confidential job {id}"
            );
        }
    }

    // The submitter and admins read it in the clear; a read key does not.
    let expected = reply_text(&secret, cluster.fake.behavior().response_tokens);
    let own = submitter.job(waiting).await.expect("own job");
    assert!(!own.job.redacted);
    assert_eq!(own.request.prompt.as_deref(), Some(secret.as_str()));
    assert_eq!(own.job.output.expect("output").text, expected);
    let admin = cluster.client().job(waiting).await.expect("admin view");
    assert!(!admin.job.redacted && admin.job.output.is_some());
    let other = reader.job(waiting).await.expect("read view");
    assert!(other.job.redacted);
    assert!(other.job.output.is_none() && other.request.prompt.is_none());
    let listed = reader.jobs(&Default::default()).await.expect("list");
    assert!(
        listed
            .jobs
            .iter()
            .filter(|j| j.confidential)
            .all(|j| j.redacted && j.output.is_none())
    );

    // The raw database file holds neither the prompt nor the result.
    assert!(
        !database_contains(&cluster, &secret),
        "confidential prompt stored in the clear"
    );
    assert!(
        !database_contains(&cluster, &expected),
        "confidential result stored in the clear"
    );
    // The plain jobs are stored normally (the check above would see them).
    assert!(database_contains(&cluster, "plain 1"));
    // And no log line carries it.
    let logs = cluster.all_log_text();
    assert!(logs.contains("kobo-coord serving"), "the logs were read");
    assert!(
        !logs.contains("SECRET-PROMPT"),
        "a log holds the confidential prompt"
    );
    let view: String = cluster
        .db()
        .query_row(
            "SELECT result_head FROM v_jobs WHERE id = ?1",
            [waiting],
            |r| r.get(0),
        )
        .expect("v_jobs");
    assert_eq!(view, "(confidential)");
}

fn rand_u64() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7)
}
