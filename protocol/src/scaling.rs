//! What an autoscaler reads (`GET /v1/scaling`, KEDA's metrics-api scaler,
//! `kobo-coord autoscale`): the backlog of the work matching a filter and
//! how many agents it needs. [`agents_needed`] is the one formula; the
//! route, the `/metrics` gauges and the autoscaler's `decide` all use it.

use serde::{Deserialize, Serialize};

/// Slots an agent is assumed to have when no live agent matches and the
/// query gives none: the agent's default `--max-workers`.
pub const DEFAULT_SLOTS_PER_AGENT: f64 = 4.0;
/// Most slots a `slots` override may name (an agent's `max_workers` bound).
pub const MAX_SLOTS: f64 = 1024.0;

/// `GET /v1/scaling?kind=&region=&model=&slots=`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScalingQuery {
    /// Jobs of this kind; agents with it among their capabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Jobs a node of this region may run (no residency, or this region's
    /// area); agents of this region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Jobs naming this model or none; agents serving it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Slots per agent to divide by, instead of the live agents' mean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<f64>,
}

/// The answer: flat numbers, so KEDA's `valueLocation` (`agents_needed`,
/// `backlog`, …) reads each directly; the filters are echoed back.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ScalingView {
    /// `ceil(backlog / slots_per_agent)`; 0 when nothing is queued or leased.
    pub agents_needed: u64,
    /// `queued + leased`.
    pub backlog: u64,
    /// Ready jobs waiting for a node (scheduled ones not yet due are not counted).
    pub queued: u64,
    /// Jobs running now.
    pub leased: u64,
    /// How long the oldest queued job has waited since it became ready (0: none).
    pub oldest_wait_ms: u64,
    /// What `agents_needed` divides by: the `slots` override, else the mean
    /// `max_workers` of the live matching agents, else [`DEFAULT_SLOTS_PER_AGENT`].
    pub slots_per_agent: f64,
    /// Live (active) agents matching the filter.
    pub agents: u64,
    pub kind: Option<String>,
    pub region: Option<String>,
    pub model: Option<String>,
}

/// Agents that run `backlog` jobs at once with `slots_per_agent` each:
/// `ceil(backlog / slots_per_agent)`, 0 for no backlog (scale to zero).
pub fn agents_needed(backlog: u64, slots_per_agent: f64) -> u64 {
    if backlog == 0 {
        return 0;
    }
    let slots = if slots_per_agent.is_finite() && slots_per_agent >= 1.0 {
        slots_per_agent
    } else {
        1.0
    };
    // A tolerance so 8 jobs over 4.0000000001 slots stays 2 agents.
    ((backlog as f64 / slots) - 1e-9).ceil().max(1.0) as u64
}

/// The divisor: the override, else the mean of the live agents' slots,
/// else the default.
pub fn slots_per_agent(slots: Option<f64>, live_agents_slots: &[u32]) -> f64 {
    if let Some(slots) = slots {
        return slots;
    }
    if live_agents_slots.is_empty() {
        return DEFAULT_SLOTS_PER_AGENT;
    }
    live_agents_slots.iter().map(|s| f64::from(*s)).sum::<f64>() / live_agents_slots.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_needed_rounds_up_and_is_zero_without_backlog() {
        assert_eq!(agents_needed(0, 4.0), 0);
        assert_eq!(agents_needed(1, 4.0), 1);
        assert_eq!(agents_needed(4, 4.0), 1);
        assert_eq!(agents_needed(5, 4.0), 2);
        assert_eq!(agents_needed(9, 2.5), 4);
        assert_eq!(agents_needed(3, 0.0), 3);
    }

    #[test]
    fn slots_come_from_the_override_then_live_agents_then_the_default() {
        assert_eq!(slots_per_agent(Some(2.0), &[8, 8]), 2.0);
        assert_eq!(slots_per_agent(None, &[2, 4]), 3.0);
        assert_eq!(slots_per_agent(None, &[]), DEFAULT_SLOTS_PER_AGENT);
    }
}
