//! No job ever goes to a node that violates one of its hard constraints:
//! over random fleets and jobs, both the scoring (`select_best_node`) and the
//! store's lease path only ever choose eligible nodes, with weighted fair
//! share between submitters and their concurrency limits on or off.

use kobo_protocol::{JobId, KeyPolicy};
use kobo_protocol::{NodeStatus, Preferences, Requirements, SubmitJob};
use kobo_queue::routing::{self, JobNeeds, NodeProfile};
use kobo_queue::scoring::{JobRoute, NodeState, Weights, select_best_node};
use kobo_queue::store::{self, Changes, Share};
use kobo_queue::tenancy::{Tenants, key_actor};
use proptest::prelude::*;
use rusqlite::TransactionBehavior;

use crate::{sealer, temp_db};

const KINDS: [&str; 3] = ["code_generation", "general_query", "data_analysis"];
const REGIONS: [&str; 4] = ["ap-northeast-1", "ap-northeast-3", "eu-west-2", "us-east-1"];
const AREAS: [&str; 3] = ["japan", "europe", "us"];
const MODELS: [&str; 2] = ["qwen2.5:latest", "llama3.2:1b"];
/// API key ids submitting the jobs.
const KEYS: [&str; 3] = ["aaaa", "bbbb", "cccc"];

fn node() -> impl Strategy<Value = NodeState> {
    (
        0..REGIONS.len(),
        proptest::collection::vec(0..KINDS.len(), 0..3),
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(0..MODELS.len(), 0..2),
        0u32..4,
        prop_oneof![4 => Just(NodeStatus::Active), 1 => Just(NodeStatus::Draining), 1 => Just(NodeStatus::Lost)],
    )
        .prop_map(|(region, kinds, gpu, confidential, models, running, status)| {
            let mut capabilities: Vec<String> = kinds.iter().map(|k| KINDS[*k].to_string()).collect();
            if confidential {
                capabilities.push(routing::CONFIDENTIAL_CAPABILITY.into());
            }
            NodeState {
                profile: NodeProfile {
                    node_id: String::new(),
                    region: REGIONS[region].into(),
                    capabilities,
                    gpu,
                    models: models.iter().map(|m| MODELS[*m].to_string()).collect(),
                    max_workers: 4,
                },
                status,
                specialization: None,
                coordinates: routing::region_coordinates(REGIONS[region]),
                loaded_models: vec![],
                rtt_ms: Some(5),
                cpu_percent: Some(10.0),
                running,
            }
        })
}

fn job() -> impl Strategy<Value = JobRoute> {
    (
        0..KINDS.len(),
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(0..AREAS.len()),
        proptest::option::of(0..MODELS.len()),
        proptest::option::of(0..REGIONS.len()),
    )
        .prop_map(|(kind, gpu, confidential, area, model, prefer)| JobRoute {
            needs: JobNeeds {
                kind: KINDS[kind].into(),
                capabilities: vec![],
                gpu,
                confidential,
                data_location: area.map(|a| AREAS[a].to_string()),
                model: model.map(|m| MODELS[m].to_string()),
            },
            prefer_region: prefer.map(|r| REGIONS[r].to_string()),
            prefer_node: None,
            session: false,
        })
}

fn fleet() -> impl Strategy<Value = Vec<NodeState>> {
    proptest::collection::vec(node(), 1..8).prop_map(|mut nodes| {
        for (idx, node) in nodes.iter_mut().enumerate() {
            node.profile.node_id = format!("node-{idx}");
        }
        nodes
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn scoring_only_ranks_eligible_active_nodes(nodes in fleet(), jobs in proptest::collection::vec(job(), 1..10)) {
        for job in &jobs {
            let decision = select_best_node(job, &nodes, &|_| None, &Weights::default());
            prop_assert_eq!(decision.ranked.len() + decision.excluded.len(), nodes.len());
            for ranked in &decision.ranked {
                let node = nodes.iter().find(|n| n.profile.node_id == ranked.node).expect("ranked node");
                prop_assert_eq!(node.status, NodeStatus::Active);
                prop_assert!(routing::check(&job.needs, &node.profile).is_ok(), "{} ranked for {:?}", ranked.node, job);
            }
        }
    }

    #[test]
    fn the_lease_path_never_violates_a_hard_constraint(
        nodes in fleet(),
        jobs in proptest::collection::vec((job(), 0..KEYS.len()), 1..30),
        weights in proptest::collection::vec(1u32..5, KEYS.len()),
        limits in proptest::collection::vec(proptest::option::of(1u32..4), KEYS.len()),
        fair_share in any::<bool>(),
    ) {
        let tenants = Tenants::default();
        for (idx, key) in KEYS.iter().enumerate() {
            tenants.set_policy(key, KeyPolicy { weight: weights[idx], max_concurrent: limits[idx], ..KeyPolicy::default() });
        }
        let share = Share { tenants: Some(&tenants), fair_share, expected_ms: &|_| 1000.0 };
        let (_dir, mut conn) = temp_db();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).expect("tx");
        for (idx, (route, key)) in jobs.iter().enumerate() {
            let spec = SubmitJob {
                kind: route.needs.kind.clone(),
                prompt: Some(format!("job {idx}")),
                model: route.needs.model.clone(),
                requirements: Requirements {
                    capabilities: route.needs.capabilities.clone(),
                    gpu: route.needs.gpu,
                    data_location: route.needs.data_location.clone(),
                    confidential: route.needs.confidential,
                },
                preferences: Preferences { region: route.prefer_region.clone(), node: None },
                ..SubmitJob::default()
            };
            store::insert_job(&tx, 1_000, &sealer(), 3, &key_actor(KEYS[*key]), &spec, &mut Changes::default()).expect("insert");
        }
        let mut running: Vec<Vec<JobId>> = vec![Vec::new(); KEYS.len()];
        for node in &nodes {
            let leases = store::lease_for_node(&tx, 2_000, &sealer(), 10_000, &node.profile, 50, &|_| String::new(), &share).expect("lease");
            for lease in leases {
                let (route, key) = &jobs[lease.job_id as usize - 1];
                prop_assert!(
                    routing::check(&route.needs, &node.profile).is_ok(),
                    "job {} ({:?}) leased to {:?}", lease.job_id, route.needs, node.profile
                );
                running[*key].push(lease.job_id);
            }
        }
        for (idx, held) in running.iter().enumerate() {
            if let Some(limit) = limits[idx] {
                prop_assert!(held.len() as u32 <= limit, "{} leased {} over its limit {limit}", KEYS[idx], held.len());
            }
        }
        tx.commit().expect("commit");
    }
}
