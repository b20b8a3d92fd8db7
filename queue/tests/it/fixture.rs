//! A small fleet's history, written through the store's functions on any
//! backend: two nodes, six jobs in every state, heartbeats folded into
//! per-minute rows, and a schedule. The observability, view and reporting
//! tests read it back.

use kobo_protocol::{
    CatchUp, CompleteRequest, HeartbeatRequest, LlmOutput, NodeMetrics, Outcome, RegisterRequest,
    SubmitJob, Usage,
};
use kobo_queue::store::{self, Changes};

use crate::backends::Conn;
use crate::sealer;

/// 2027-01-15 08:00:00 UTC, on a minute.
pub(crate) const T0: i64 = 1_800_000_000_000;
pub(crate) const TTL: u64 = 600_000;
/// When the fixture's metrics were folded: two minutes and a bit after T0.
pub(crate) const FOLDED_AT: i64 = T0 + 125_000;

/// The ids of the fixture's jobs.
pub(crate) struct Jobs {
    /// Kind `a`, model `m`: leased by n1 at T0+1000, succeeded at T0+2500.
    pub succeeded: i64,
    /// Kind `a`: leased by n1 at T0+3100, failed (not retryable) at T0+3600.
    pub dead: i64,
    /// Kind `a`: leased by n2 at T0+4100, still running.
    pub leased: i64,
    /// Kind `b`, residency `europe`: queued since T0+5000.
    pub queued: i64,
    /// Kind `a`: scheduled for T0 + 1 h.
    pub scheduled: i64,
    /// Kind `b`, confidential: queued since T0+6000.
    pub confidential: i64,
}

pub(crate) fn register(
    conn: &mut Conn,
    node_id: &str,
    region: &str,
    kinds: &[&str],
    models: &[&str],
    max_workers: u32,
) {
    let req = RegisterRequest {
        node_id: node_id.into(),
        instance_id: "i".into(),
        region: region.into(),
        capabilities: kinds.iter().map(|k| k.to_string()).collect(),
        max_workers,
        gpu: false,
        backend: "sim".into(),
        models: models.iter().map(|m| m.to_string()).collect(),
        agent_version: "t".into(),
        specialization: None,
        latitude: None,
        longitude: None,
    };
    conn.write(|db| store::register_node(db, T0, &req, None, &mut Changes::default()))
        .expect("register");
}

pub(crate) fn submit(conn: &mut Conn, now: i64, job: &SubmitJob) -> i64 {
    conn.write(|db| store::insert_job(db, now, &sealer(), 3, "local", job, &mut Changes::default()))
        .expect("submit")
        .id
}

/// Leases one job to `node_id`; its lease token.
pub(crate) fn lease_one(conn: &mut Conn, now: i64, node_id: &str) -> i64 {
    let leases = conn
        .write(|db| {
            let node = store::load_node(db, node_id)?;
            store::lease_for_node(
                db,
                now,
                &sealer(),
                TTL,
                &node.profile,
                1,
                &|_| "test".into(),
                &store::Share::OFF,
            )
        })
        .expect("lease");
    assert_eq!(leases.len(), 1, "{node_id} leased one job");
    leases[0].lease_token
}

pub(crate) fn report(
    conn: &mut Conn,
    now: i64,
    job_id: i64,
    node_id: &str,
    token: i64,
    outcome: Outcome,
) {
    let report = CompleteRequest {
        node_id: node_id.into(),
        lease_token: token,
        outcome,
    };
    conn.write(|db| {
        store::complete_job(
            db,
            now,
            &sealer(),
            store::Retry {
                backoff: store::Backoff {
                    base_ms: 1000,
                    cap_ms: 10_000,
                },
                unit_random: 0.5,
            },
            job_id,
            &report,
            &mut Changes::default(),
        )
    })
    .expect("report");
}

pub(crate) fn heartbeat(conn: &mut Conn, at: i64, node_id: &str, cpu: f32, mem_used: u64) {
    let beat = HeartbeatRequest {
        node_id: node_id.into(),
        instance_id: "i".into(),
        running: vec![],
        metrics: Some(NodeMetrics {
            cpu_percent: cpu,
            mem_used_bytes: mem_used,
            mem_total_bytes: 1000,
            load_1: 0.5,
            load_5: 0.25,
            load_15: 0.125,
            disk_used_bytes: 10,
            disk_total_bytes: 100,
        }),
        rtt_ms: Some(3),
        loaded_models: None,
    };
    conn.write(|db| store::record_heartbeat(db, at, &beat))
        .expect("heartbeat");
}

fn kind(kind: &str) -> SubmitJob {
    SubmitJob {
        kind: kind.into(),
        prompt: Some("p".into()),
        ..SubmitJob::default()
    }
}

/// Writes the fixture (see the module's doc) into a fresh database.
pub(crate) fn fill(conn: &mut Conn) -> Jobs {
    register(conn, "n1", "eu-west-2", &["a", "b"], &["m"], 4);
    register(conn, "n2", "ap-northeast-1", &["a"], &[], 2);

    let succeeded = submit(
        conn,
        T0,
        &SubmitJob {
            model: Some("m".into()),
            ..kind("a")
        },
    );
    let token = lease_one(conn, T0 + 1000, "n1");
    let output = LlmOutput {
        text: "done".into(),
        model: "m".into(),
        usage: Usage {
            prompt_tokens: 40,
            completion_tokens: 60,
            duration_ms: 1200,
            ..Usage::default()
        },
    };
    report(
        conn,
        T0 + 2500,
        succeeded,
        "n1",
        token,
        Outcome::Succeeded { output },
    );

    let dead = submit(conn, T0 + 3000, &kind("a"));
    let token = lease_one(conn, T0 + 3100, "n1");
    let failed = Outcome::Failed {
        error: "HTTP 500 from the model server".into(),
        retryable: false,
    };
    report(conn, T0 + 3600, dead, "n1", token, failed);

    let leased = submit(conn, T0 + 4000, &kind("a"));
    lease_one(conn, T0 + 4100, "n2");

    let mut europe = kind("b");
    europe.requirements.data_location = Some("europe".into());
    let queued = submit(conn, T0 + 5000, &europe);
    let scheduled = submit(
        conn,
        T0 + 5500,
        &SubmitJob {
            run_at: Some(T0 + 3_600_000),
            ..kind("a")
        },
    );
    let mut secret = kind("b");
    secret.requirements.confidential = true;
    let confidential = submit(conn, T0 + 6000, &secret);

    // Minute 0: two heartbeats; minute 1: one; minute 2 (current): one.
    heartbeat(conn, T0 + 1000, "n1", 10.0, 100);
    heartbeat(conn, T0 + 30_000, "n1", 30.0, 300);
    heartbeat(conn, T0 + 61_000, "n1", 50.0, 500);
    heartbeat(conn, T0 + 121_000, "n1", 70.0, 700);
    let retention = store::MetricsRetention {
        raw: std::time::Duration::from_secs(24 * 3600),
        minute: std::time::Duration::from_secs(30 * 24 * 3600),
    };
    conn.write(|db| store::maintain_metrics(db, FOLDED_AT, &retention))
        .expect("fold metrics");

    let nightly = kind("a");
    conn.write(|db| {
        store::insert_schedule(
            db,
            T0,
            &sealer(),
            store::NewSchedule {
                name: "nightly",
                cron: "0 0 3 * * *",
                job: &nightly,
                catch_up: CatchUp::Once,
            },
            "admin",
        )
    })
    .expect("schedule");

    Jobs {
        succeeded,
        dead,
        leased,
        queued,
        scheduled,
        confidential,
    }
}

/// The time [`submit_and_lease`] submits and leases at.
pub(crate) const LEASED_AT: i64 = 1_800_000_000_000;

/// Submits one job of kind `a` and leases it to `node_id` (registered):
/// the job's id and its lease token.
pub(crate) fn submit_and_lease(conn: &mut Conn, node_id: &str) -> (i64, i64) {
    conn.write(|db| {
        let job = kobo_protocol::SubmitJob {
            kind: "a".into(),
            prompt: Some("p".into()),
            ..Default::default()
        };
        let id = store::insert_job(
            db,
            LEASED_AT,
            &sealer(),
            3,
            "local",
            &job,
            &mut Changes::default(),
        )?
        .id;
        let node = store::load_node(db, node_id)?;
        let leases = store::lease_for_node(
            db,
            LEASED_AT,
            &sealer(),
            10_000,
            &node.profile,
            1,
            &|_| "test".into(),
            &store::Share::OFF,
        )?;
        assert_eq!(leases.len(), 1);
        Ok((id, leases[0].lease_token))
    })
    .expect("submit and lease")
}
