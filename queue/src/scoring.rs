//! Choosing among eligible nodes: the seed's `select_best_node`, as a pure
//! function of the job, the nodes as they are now, and what each has shown of
//! its speed. Every term is in `[0, 1]`, multiplied by a named weight; the
//! highest total wins, ties go to the lower node id. The whole decision
//! (winner, terms, runners-up, exclusions) is kept as the job's
//! `route_reason`.

use std::collections::BTreeMap;

use kobo_protocol::NodeStatus;
use serde::Serialize;

use crate::routing::{self, Exclusion, JobNeeds, NodeProfile};

/// Weights of the score terms. Defaults favour free capacity, then measured
/// speed and the job's stated preferences.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    /// Free share of the node's workers.
    pub load: f64,
    /// Idle share of the node's CPU.
    pub cpu: f64,
    /// Measured speed for this kind and model, relative to the fastest node.
    pub speed: f64,
    /// Short heartbeat round trip.
    pub rtt: f64,
    /// The job's preferred region (or nearness to it, by coordinates).
    pub region: f64,
    /// The job's preferred node.
    pub node: f64,
    /// The node's specialization names the job's kind.
    pub specialization: f64,
    /// The job's model is already loaded on the node.
    pub model_loaded: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            load: 3.0,
            cpu: 1.0,
            speed: 2.0,
            rtt: 0.5,
            region: 1.5,
            node: 2.0,
            specialization: 0.5,
            model_loaded: 1.0,
        }
    }
}

impl Weights {
    /// Sets one weight by name (`load=3`), for `--route-weight`.
    pub fn set(&mut self, assignment: &str) -> Result<(), String> {
        let (name, value) = assignment
            .split_once('=')
            .ok_or_else(|| format!("{assignment:?}: expected NAME=VALUE"))?;
        let value: f64 = value
            .trim()
            .parse()
            .map_err(|_| format!("{assignment:?}: {value:?} is not a number"))?;
        if !(0.0..=100.0).contains(&value) {
            return Err(format!("{assignment:?}: weights are between 0 and 100"));
        }
        let slot = match name.trim() {
            "load" => &mut self.load,
            "cpu" => &mut self.cpu,
            "speed" => &mut self.speed,
            "rtt" => &mut self.rtt,
            "region" => &mut self.region,
            "node" => &mut self.node,
            "specialization" => &mut self.specialization,
            "model_loaded" => &mut self.model_loaded,
            other => {
                return Err(format!(
                    "unknown weight {other:?}; one of load, cpu, speed, rtt, region, node, specialization, model_loaded"
                ));
            }
        };
        *slot = value;
        Ok(())
    }
}

/// A node as routing sees it right now.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeState {
    pub profile: NodeProfile,
    pub status: NodeStatus,
    pub specialization: Option<String>,
    /// (latitude, longitude), stated by the node or from its region.
    pub coordinates: Option<(f64, f64)>,
    pub loaded_models: Vec<String>,
    pub rtt_ms: Option<u32>,
    pub cpu_percent: Option<f32>,
    /// Jobs it runs now.
    pub running: u32,
}

/// What a job asks of routing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobRoute {
    pub needs: JobNeeds,
    pub prefer_region: Option<String>,
    pub prefer_node: Option<String>,
    /// The preferred node is the one that served the job's session last
    /// (its prompt cache is warm there): waited for the session bound.
    pub session: bool,
}

impl JobRoute {
    pub fn has_preference(&self) -> bool {
        self.prefer_region.is_some() || self.prefer_node.is_some()
    }

    /// Whether `node` is what the job prefers (exact region or node).
    pub fn preferred(&self, node: &NodeState) -> bool {
        self.prefer_node.as_deref() == Some(node.profile.node_id.as_str())
            || self.prefer_region.as_deref() == Some(node.profile.region.as_str())
    }
}

/// A node's measured speed for one kind and model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Speed {
    /// Moving average of the LLM call's duration.
    pub mean_ms: f64,
    /// Moving average of completion tokens per second.
    pub tokens_per_s: f64,
    pub samples: u32,
}

/// An eligible node and its score.
pub use kobo_protocol::route::RankedNode as Ranked;
/// One node's score, term by term (each already weighted).
pub use kobo_protocol::route::ScoreTerms as Terms;

/// The outcome of routing one job over a set of nodes.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Decision {
    /// Eligible nodes, best first.
    pub ranked: Vec<Ranked>,
    /// Nodes that may not run the job, and why.
    pub excluded: BTreeMap<String, String>,
}

impl Decision {
    pub fn best(&self) -> Option<&Ranked> {
        self.ranked.first()
    }
}

/// Great-circle distance in km.
pub fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (lat1, lon1) = (a.0.to_radians(), a.1.to_radians());
    let (lat2, lon2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().asin()
}

/// Half the Earth's circumference: the farthest two places can be.
const MAX_DISTANCE_KM: f64 = 20_015.0;

fn specialized(node: &NodeState, kind: &str) -> bool {
    let Some(spec) = &node.specialization else {
        return false;
    };
    let spec = spec.to_lowercase();
    let kind = kind.to_lowercase();
    spec.contains(&kind) || spec.contains(&kind.replace('_', " "))
}

/// Scores one eligible node.
pub fn score(
    job: &JobRoute,
    node: &NodeState,
    speed: Option<Speed>,
    fastest_ms: Option<f64>,
    w: &Weights,
) -> Terms {
    let max = node.profile.max_workers.max(1) as f64;
    let free = (1.0 - node.running as f64 / max).clamp(0.0, 1.0);
    let cpu_idle = node
        .cpu_percent
        .map(|c| 1.0 - (c as f64 / 100.0).clamp(0.0, 1.0))
        .unwrap_or(0.5);
    let relative_speed = match (speed, fastest_ms) {
        (Some(s), Some(best)) if s.mean_ms > 0.0 => (best / s.mean_ms).clamp(0.0, 1.0),
        // Unmeasured nodes sit in the middle, so they get tried.
        _ => 0.5,
    };
    let rtt = node
        .rtt_ms
        .map(|r| 1.0 / (1.0 + r as f64 / 50.0))
        .unwrap_or(0.5);
    let region = match &job.prefer_region {
        None => 0.0,
        Some(wanted) if *wanted == node.profile.region => 1.0,
        Some(wanted) => match (routing::region_coordinates(wanted), node.coordinates) {
            (Some(a), Some(b)) => 1.0 - (distance_km(a, b) / MAX_DISTANCE_KM).clamp(0.0, 1.0),
            _ => 0.0,
        },
    };
    let preferred_node =
        f64::from(job.prefer_node.as_deref() == Some(node.profile.node_id.as_str()));
    let specialization = f64::from(specialized(node, &job.needs.kind));
    let model_loaded = f64::from(job.needs.model.as_ref().is_some_and(|m| {
        node.loaded_models
            .iter()
            .any(|loaded| routing::same_model(loaded, m))
    }));
    let mut terms = Terms {
        load: w.load * free,
        cpu: w.cpu * cpu_idle,
        speed: w.speed * relative_speed,
        rtt: w.rtt * rtt,
        region: w.region * region,
        node: w.node * preferred_node,
        specialization: w.specialization * specialization,
        model_loaded: w.model_loaded * model_loaded,
        total: 0.0,
    };
    terms.total = terms.load
        + terms.cpu
        + terms.speed
        + terms.rtt
        + terms.region
        + terms.node
        + terms.specialization
        + terms.model_loaded;
    terms
}

/// Routes `job` over `nodes`: hard constraints first (a node that fails one
/// is excluded with the reason), then the score. `speed_of` gives a node's
/// measured speed for this job's kind and model. `nodes` is any sequence of
/// node references (a slice, or the hub's map read in place); their order
/// does not matter, the ranking is total.
pub fn select_best_node<'a>(
    job: &JobRoute,
    nodes: impl IntoIterator<Item = &'a NodeState>,
    speed_of: &dyn Fn(&str) -> Option<Speed>,
    weights: &Weights,
) -> Decision {
    let mut decision = Decision::default();
    let mut eligible = Vec::new();
    for node in nodes {
        let verdict = match routing::check(&job.needs, &node.profile) {
            Err(why) => Err(why),
            Ok(()) if node.status != NodeStatus::Active => Err(Exclusion::Status(node.status)),
            Ok(()) => Ok(()),
        };
        match verdict {
            Ok(()) => eligible.push(node),
            Err(why) => {
                decision
                    .excluded
                    .insert(node.profile.node_id.clone(), why.to_string());
            }
        }
    }
    let speeds: Vec<Option<Speed>> = eligible
        .iter()
        .map(|n| speed_of(&n.profile.node_id))
        .collect();
    let fastest = speeds
        .iter()
        .flatten()
        .map(|s| s.mean_ms)
        .filter(|m| *m > 0.0)
        .fold(None, |best: Option<f64>, m| {
            Some(best.map_or(m, |b| b.min(m)))
        });
    decision.ranked = eligible
        .iter()
        .zip(speeds)
        .map(|(node, speed)| Ranked {
            node: node.profile.node_id.clone(),
            terms: score(job, node, speed, fastest, weights),
        })
        .collect();
    decision.ranked.sort_by(|a, b| {
        b.terms
            .total
            .total_cmp(&a.terms.total)
            .then_with(|| a.node.cmp(&b.node))
    });
    decision
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, region: &str) -> NodeState {
        NodeState {
            profile: NodeProfile {
                node_id: id.into(),
                region: region.into(),
                capabilities: vec!["general_query".into(), "code_generation".into()],
                gpu: false,
                models: vec!["qwen2.5:latest".into()],
                max_workers: 4,
            },
            status: NodeStatus::Active,
            specialization: None,
            coordinates: routing::region_coordinates(region),
            loaded_models: vec![],
            rtt_ms: Some(10),
            cpu_percent: Some(20.0),
            running: 0,
        }
    }

    fn job() -> JobRoute {
        JobRoute {
            needs: JobNeeds {
                kind: "general_query".into(),
                ..JobNeeds::default()
            },
            ..JobRoute::default()
        }
    }

    fn best(job: &JobRoute, nodes: &[NodeState], speeds: &[(&str, f64)]) -> String {
        let speeds: Vec<(String, f64)> = speeds.iter().map(|(n, s)| (n.to_string(), *s)).collect();
        let speed_of = |id: &str| {
            speeds.iter().find(|(n, _)| n == id).map(|(_, ms)| Speed {
                mean_ms: *ms,
                tokens_per_s: 10.0,
                samples: 5,
            })
        };
        select_best_node(job, nodes, &speed_of, &Weights::default())
            .best()
            .map(|r| r.node.clone())
            .unwrap_or_default()
    }

    #[test]
    fn ties_go_to_the_lower_node_id() {
        let nodes = [node("b", "eu-west-2"), node("a", "eu-west-2")];
        assert_eq!(best(&job(), &nodes, &[]), "a");
    }

    #[test]
    fn each_term_moves_the_choice_its_way() {
        let base = || [node("a", "eu-west-2"), node("b", "eu-west-2")];
        // Load: a is busier, so b wins.
        let mut nodes = base();
        nodes[0].running = 3;
        assert_eq!(best(&job(), &nodes, &[]), "b");
        // CPU.
        let mut nodes = base();
        nodes[0].cpu_percent = Some(95.0);
        assert_eq!(best(&job(), &nodes, &[]), "b");
        // Speed: b is four times faster.
        assert_eq!(best(&job(), &base(), &[("a", 800.0), ("b", 200.0)]), "b");
        // Round trip.
        let mut nodes = base();
        nodes[0].rtt_ms = Some(400);
        assert_eq!(best(&job(), &nodes, &[]), "b");
        // Preferred region, exact, and by distance.
        let nodes = [node("a", "eu-west-2"), node("b", "ap-northeast-1")];
        let mut tokyo = job();
        tokyo.prefer_region = Some("ap-northeast-1".into());
        assert_eq!(best(&tokyo, &nodes, &[]), "b");
        let nodes = [node("a", "eu-west-2"), node("b", "ap-northeast-3")];
        assert_eq!(
            best(&tokyo, &nodes, &[]),
            "b",
            "Osaka is nearer Tokyo than London"
        );
        // Preferred node.
        let mut pinned = job();
        pinned.prefer_node = Some("b".into());
        assert_eq!(best(&pinned, &base(), &[]), "b");
        // Specialization.
        let mut nodes = base();
        nodes[1].specialization = Some("general query answering".into());
        assert_eq!(best(&job(), &nodes, &[]), "b");
        // Model already loaded.
        let mut nodes = base();
        nodes[1].loaded_models = vec!["qwen2.5:latest".into()];
        let mut with_model = job();
        with_model.needs.model = Some("qwen2.5".into());
        assert_eq!(best(&with_model, &nodes, &[]), "b");
    }

    #[test]
    fn excluded_nodes_are_listed_with_their_reason() {
        let mut nodes = vec![node("a", "eu-west-2"), node("b", "ap-northeast-1")];
        nodes[1].status = NodeStatus::Draining;
        let mut residency = job();
        residency.needs.data_location = Some("japan".into());
        let decision = select_best_node(&residency, &nodes, &|_| None, &Weights::default());
        assert!(decision.ranked.is_empty());
        assert!(
            decision.excluded["a"].contains("europe"),
            "{:?}",
            decision.excluded
        );
        assert_eq!(decision.excluded["b"], "is draining");
    }

    #[test]
    fn weights_are_set_by_name() {
        let mut w = Weights::default();
        w.set("speed=5").expect("set");
        assert_eq!(w.speed, 5.0);
        assert!(w.set("colour=1").is_err());
        assert!(w.set("load=x").is_err());
        assert!(w.set("load").is_err());
    }

    #[test]
    fn distances_are_great_circle() {
        let tokyo = routing::region_coordinates("ap-northeast-1").expect("tokyo");
        let london = routing::region_coordinates("eu-west-2").expect("london");
        let d = distance_km(tokyo, london);
        assert!((9_400.0..9_800.0).contains(&d), "{d}");
    }
}
