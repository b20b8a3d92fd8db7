//! Nodes on every backend: heartbeats with metrics, the listing with its
//! running count and mean LLM time, a lost node's leases put back, and a
//! restarted agent's leases released at registration.

use kobo_protocol::{HeartbeatRequest, HeldLease, NodeMetrics, NodeStatus, RegisterRequest};
use kobo_queue::store::sql::args;
use kobo_queue::store::{self, Changes};

use crate::backends::{Conn, each_backend};
use crate::fixture::submit_and_lease;
use crate::sealer;

const NOW: i64 = 1_800_000_000_000;

fn register(conn: &mut Conn, node_id: &str, instance: &str) {
    let req = RegisterRequest {
        node_id: node_id.into(),
        instance_id: instance.into(),
        region: "eu-west-2".into(),
        capabilities: vec!["a".into()],
        max_workers: 2,
        gpu: true,
        backend: "sim".into(),
        models: vec!["m".into()],
        agent_version: "t".into(),
        specialization: None,
        latitude: Some(51.5),
        longitude: Some(-0.1),
    };
    conn.write(|db| store::register_node(db, NOW, &req, None, &mut Changes::default()))
        .expect("register");
}

fn state(conn: &Conn, id: i64) -> String {
    conn.db()
        .one("SELECT state FROM jobs WHERE id = ?1", args![id], |r| {
            r.get(0)
        })
        .expect("state")
}

#[test]
fn heartbeats_are_listed_with_their_metrics() {
    each_backend(|test| {
        let mut conn = test.connect();
        register(&mut conn, "n1", "i1");
        let (id, lease_token) = submit_and_lease(&mut conn, "n1");
        let beat = HeartbeatRequest {
            node_id: "n1".into(),
            instance_id: "i1".into(),
            running: vec![HeldLease {
                job_id: id,
                lease_token,
            }],
            metrics: Some(NodeMetrics {
                cpu_percent: 12.5,
                mem_used_bytes: 1 << 30,
                mem_total_bytes: 1 << 34,
                load_1: 0.5,
                load_5: 0.25,
                load_15: 0.125,
                disk_used_bytes: 7,
                disk_total_bytes: 9,
            }),
            rtt_ms: Some(3),
            loaded_models: Some(vec!["m".into()]),
        };
        // Twice at one instant: the second replaces the first's metrics row.
        for _ in 0..2 {
            conn.write(|db| store::record_heartbeat(db, NOW + 5, &beat))
                .expect("heartbeat");
        }
        let nodes = store::list_nodes(conn.db()).expect("list");
        assert_eq!(nodes.len(), 1);
        let node = &nodes[0];
        assert_eq!(node.status, NodeStatus::Active);
        assert_eq!((node.running, node.max_workers, node.gpu), (1, 2, true));
        assert_eq!((node.last_heartbeat_at, node.rtt_ms), (NOW + 5, Some(3)));
        assert_eq!((node.latitude, node.longitude), (Some(51.5), Some(-0.1)));
        assert_eq!(node.mean_llm_ms, None);
        assert_eq!(node.metrics, beat.metrics);
        // The mean LLM time is `avg` of bigint: numeric on PostgreSQL, cast.
        let report = kobo_protocol::CompleteRequest {
            node_id: "n1".into(),
            lease_token,
            outcome: kobo_protocol::Outcome::Succeeded {
                output: kobo_protocol::LlmOutput {
                    usage: kobo_protocol::Usage {
                        duration_ms: 40,
                        ..Default::default()
                    },
                    ..Default::default()
                },
            },
        };
        let retry = store::Retry {
            backoff: store::Backoff {
                base_ms: 1,
                cap_ms: 1,
            },
            unit_random: 0.0,
        };
        conn.write(|db| {
            store::complete_job(
                db,
                NOW + 6,
                &sealer(),
                retry,
                id,
                &report,
                &mut Changes::default(),
            )
        })
        .expect("complete");
        let node = &store::list_nodes(conn.db()).expect("list")[0];
        assert_eq!((node.running, node.mean_llm_ms), (0, Some(40.0)));
        let pruned = conn
            .write(|db| store::prune_metrics(db, NOW + 6))
            .expect("prune");
        assert_eq!(pruned, 1);
    });
}

#[test]
fn a_lost_nodes_leases_go_back_to_the_queue() {
    each_backend(|test| {
        let mut conn = test.connect();
        register(&mut conn, "n1", "i1");
        let (id, _) = submit_and_lease(&mut conn, "n1");
        let lost = conn
            .write(|db| store::mark_lost_nodes(db, NOW + 1_000, 999, None, &mut Changes::default()))
            .expect("mark lost");
        assert_eq!(lost, vec!["n1".to_string()]);
        assert_eq!(state(&conn, id), "queued");
        let node = store::load_node(conn.db(), "n1").expect("node");
        assert_eq!(node.status, NodeStatus::Lost);
    });
}

#[test]
fn a_restarted_agents_leases_are_released_when_it_registers() {
    each_backend(|test| {
        let mut conn = test.connect();
        register(&mut conn, "n1", "i1");
        let (id, _) = submit_and_lease(&mut conn, "n1");
        register(&mut conn, "n1", "i1");
        assert_eq!(state(&conn, id), "leased", "same instance keeps its leases");
        register(&mut conn, "n1", "i2");
        assert_eq!(state(&conn, id), "queued");
        let outcome: String = conn
            .db()
            .one(
                "SELECT outcome FROM job_attempts WHERE job_id = ?1",
                args![id],
                |r| r.get(0),
            )
            .expect("attempt");
        assert_eq!(outcome, "node_restarted");
    });
}
