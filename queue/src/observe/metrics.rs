//! `GET /metrics`: the cluster status and the job counters and histograms
//! as Prometheus metrics, encoded by `prometheus-client` in the OpenMetrics
//! text format. Names follow Prometheus conventions: a `kobo_` prefix, base
//! units (seconds, bytes, ratios) in the name, `_total` on counters, labels
//! `kind`, `state`, `status`, `node_id`, `region`, `model`, `key` and `name` (an
//! API key's, for usage).

use std::fmt;
use std::sync::atomic::AtomicU64;

use kobo_protocol::{ClusterStatus, JobState, NodeStatus, ScalingView, UsageRow};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{JobMetrics, Labels, labels};

type FloatGauges = Family<Labels, Gauge<f64, AtomicU64>>;

/// A gauge family registered under `name`, filled by the caller.
fn gauges(registry: &mut Registry, name: &str, help: &str) -> FloatGauges {
    let family = FloatGauges::default();
    registry.register(name, help, family.clone());
    family
}

fn set(family: &FloatGauges, pairs: &[(&str, &str)], value: f64) {
    family.get_or_create(&labels(pairs)).set(value);
}

/// Encodes `status`, the job metrics, the final-state counts by kind, the
/// usage per key and the scaling groups.
pub(super) fn render(
    status: &ClusterStatus,
    jobs: &JobMetrics,
    finished: &[(String, JobState, u64)],
    usage: &[UsageRow],
    scaling: &[ScalingView],
) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();

    let info = gauges(
        &mut registry,
        "kobo_build_info",
        "kobo-coord version (always 1)",
    );
    set(&info, &[("version", &status.version)], 1.0);
    let started = gauges(
        &mut registry,
        "kobo_coordinator_start_time_seconds",
        "When this coordinator process started, Unix seconds",
    );
    set(&started, &[], status.started_at as f64 / 1000.0);

    registry.register(
        "kobo_jobs_submitted",
        "Jobs submitted, by kind",
        jobs.submitted.clone(),
    );
    registry.register(
        "kobo_jobs_finished",
        "Jobs that reached a final state (succeeded, dead, cancelled), by kind",
        jobs.finished.clone(),
    );
    registry.register(
        "kobo_job_duration_seconds",
        "Run time of an attempt, from lease to report, by kind and outcome",
        jobs.duration.clone(),
    );
    registry.register(
        "kobo_job_pickup_latency_seconds",
        "Time from a job becoming ready to a node leasing it, by kind",
        jobs.pickup.clone(),
    );

    let by_state = gauges(
        &mut registry,
        "kobo_jobs",
        "Jobs by state and kind (final states since the database began)",
    );
    let depth = gauges(
        &mut registry,
        "kobo_queue_depth",
        "Jobs queued (ready, waiting for a node), by kind",
    );
    let oldest = gauges(
        &mut registry,
        "kobo_queue_oldest_age_seconds",
        "Age of the oldest queued job since it became ready, by kind",
    );
    let now_s = status.server_time as f64 / 1000.0;
    for row in &status.queue {
        set(
            &by_state,
            &[("state", row.state.as_str()), ("kind", &row.kind)],
            row.jobs as f64,
        );
        if row.state == JobState::Queued {
            set(&depth, &[("kind", &row.kind)], row.jobs as f64);
            if let Some(at) = row.oldest_at {
                set(
                    &oldest,
                    &[("kind", &row.kind)],
                    (now_s - at as f64 / 1000.0).max(0.0),
                );
            }
        }
    }
    for (kind, state, n) in finished {
        set(
            &by_state,
            &[("state", state.as_str()), ("kind", kind)],
            *n as f64,
        );
    }

    let nodes = gauges(&mut registry, "kobo_nodes", "Nodes by status");
    for state in [
        NodeStatus::Active,
        NodeStatus::Lost,
        NodeStatus::Draining,
        NodeStatus::Drained,
    ] {
        let n = status
            .nodes
            .iter()
            .filter(|card| card.node.status == state)
            .count();
        set(&nodes, &[("status", state.as_str())], n as f64);
    }

    let node_info = gauges(
        &mut registry,
        "kobo_node_info",
        "One per node: its region, status, backend and GPU",
    );
    let up = gauges(
        &mut registry,
        "kobo_node_up",
        "1 if the node is active (heartbeating), else 0",
    );
    let cpu = gauges(
        &mut registry,
        "kobo_node_cpu_ratio",
        "Whole-machine CPU use of the node, 0 to 1, from its last heartbeat",
    );
    let mem_used = gauges(
        &mut registry,
        "kobo_node_memory_used_bytes",
        "Memory in use on the node, from its last heartbeat",
    );
    let mem_total = gauges(
        &mut registry,
        "kobo_node_memory_total_bytes",
        "Memory of the node",
    );
    let load = gauges(
        &mut registry,
        "kobo_node_load1",
        "1-minute load average of the node",
    );
    let running = gauges(
        &mut registry,
        "kobo_node_running_jobs",
        "Jobs leased to the node now",
    );
    let workers = gauges(
        &mut registry,
        "kobo_node_max_workers",
        "Jobs the node runs at once at most",
    );
    let rtt = gauges(
        &mut registry,
        "kobo_node_round_trip_seconds",
        "Round trip of the node's previous heartbeat, as the agent measured it",
    );
    let tokens = gauges(
        &mut registry,
        "kobo_node_tokens_per_second",
        "Completion tokens per second of LLM time over the last hour",
    );
    let last_seen = gauges(
        &mut registry,
        "kobo_node_last_heartbeat_timestamp_seconds",
        "When the node last heartbeat, Unix seconds",
    );
    let succeeded: Family<Labels, Counter> = Family::default();
    let failed: Family<Labels, Counter> = Family::default();
    registry.register(
        "kobo_node_jobs_succeeded",
        "Attempts the node ran successfully (kept in the database)",
        succeeded.clone(),
    );
    registry.register(
        "kobo_node_jobs_failed",
        "Attempts the node reported failed (kept in the database)",
        failed.clone(),
    );
    for card in &status.nodes {
        let node = &card.node;
        let id = [("node_id", node.node_id.as_str()), ("region", &node.region)];
        set(
            &node_info,
            &[
                ("node_id", &node.node_id),
                ("region", &node.region),
                ("status", node.status.as_str()),
                ("backend", &node.backend),
                ("gpu", if node.gpu { "true" } else { "false" }),
            ],
            1.0,
        );
        let active = if node.status == NodeStatus::Active {
            1.0
        } else {
            0.0
        };
        set(&up, &id, active);
        set(&running, &id, node.running as f64);
        set(&workers, &id, node.max_workers as f64);
        set(&last_seen, &id, node.last_heartbeat_at as f64 / 1000.0);
        if let Some(m) = &node.metrics {
            set(&cpu, &id, f64::from(m.cpu_percent) / 100.0);
            set(&mem_used, &id, m.mem_used_bytes as f64);
            set(&mem_total, &id, m.mem_total_bytes as f64);
            set(&load, &id, m.load_1);
        }
        if let Some(ms) = node.rtt_ms {
            set(&rtt, &id, f64::from(ms) / 1000.0);
        }
        if let Some(rate) = card.recent.tokens_per_s {
            set(&tokens, &id, rate);
        }
        succeeded
            .get_or_create(&labels(&id))
            .inc_by(node.jobs_succeeded);
        failed.get_or_create(&labels(&id)).inc_by(node.jobs_failed);
    }

    usage_by_key(&mut registry, usage);
    scaling_gauges(&mut registry, scaling);

    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}

/// The usage table summed per key, as counters: they only grow, since
/// usage rows are only added to.
fn usage_by_key(registry: &mut Registry, usage: &[UsageRow]) {
    let requests: Family<Labels, Counter> = Family::default();
    let prompt: Family<Labels, Counter> = Family::default();
    let completion: Family<Labels, Counter> = Family::default();
    let llm: Family<Labels, Counter<f64, AtomicU64>> = Family::default();
    registry.register(
        "kobo_key_requests",
        "Successful requests (jobs and gateway calls) by submitting key",
        requests.clone(),
    );
    registry.register(
        "kobo_key_prompt_tokens",
        "Prompt tokens the LLM servers reported, by submitting key",
        prompt.clone(),
    );
    registry.register(
        "kobo_key_completion_tokens",
        "Completion tokens the LLM servers reported, by submitting key",
        completion.clone(),
    );
    registry.register(
        "kobo_key_llm_seconds",
        "Time spent in LLM calls, by submitting key",
        llm.clone(),
    );
    for row in usage {
        let id = labels(&[
            ("key", row.key.as_deref().unwrap_or_default()),
            ("name", row.key_name.as_deref().unwrap_or_default()),
        ]);
        requests.get_or_create(&id).inc_by(row.requests);
        prompt.get_or_create(&id).inc_by(row.prompt_tokens);
        completion.get_or_create(&id).inc_by(row.completion_tokens);
        llm.get_or_create(&id).inc_by(row.llm_ms as f64 / 1000.0);
    }
}

/// The backlog per (kind, region, model) and the agents it needs, for
/// autoscalers that read Prometheus (KEDA's prometheus scaler, HPA through
/// an adapter). `region` is the jobs' residency area, `""` for jobs naming
/// none; `model` is `""` for jobs naming none.
fn scaling_gauges(registry: &mut Registry, groups: &[ScalingView]) {
    let backlog = gauges(
        registry,
        "kobo_scaling_backlog",
        "Jobs queued or running, by kind, residency region and model",
    );
    let queued = gauges(
        registry,
        "kobo_scaling_queued",
        "Jobs queued, by kind, residency region and model",
    );
    let needed = gauges(
        registry,
        "kobo_scaling_agents_needed",
        "Agents the backlog needs: ceil(backlog / mean max_workers of live matching agents)",
    );
    let oldest = gauges(
        registry,
        "kobo_scaling_oldest_wait_seconds",
        "How long the oldest queued job has waited since it became ready",
    );
    for group in groups {
        let id = [
            ("kind", group.kind.as_deref().unwrap_or_default()),
            ("region", group.region.as_deref().unwrap_or_default()),
            ("model", group.model.as_deref().unwrap_or_default()),
        ];
        set(&backlog, &id, group.backlog as f64);
        set(&queued, &id, group.queued as f64);
        set(&needed, &id, group.agents_needed as f64);
        set(&oldest, &id, group.oldest_wait_ms as f64 / 1000.0);
    }
}
