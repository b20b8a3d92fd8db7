//! Why a job went where it went: the [`RouteReason`] recorded on every lease
//! (`jobs.route_reason`), shown by `kobo-coord job`, the dashboard, MCP and
//! `v_jobs`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How a lease was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RouteHow {
    /// The coordinator handed a newly ready job to a parked agent it chose.
    #[serde(rename = "hand-off")]
    HandOff,
    /// An agent asked for work and got the best job it may run.
    #[serde(rename = "pull")]
    Pull,
}

impl RouteHow {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteHow::HandOff => "hand-off",
            RouteHow::Pull => "pull",
        }
    }
}

/// One node's routing score, term by term, each already weighted; `total`
/// is their sum.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScoreTerms {
    pub load: f64,
    pub cpu: f64,
    pub speed: f64,
    pub rtt: f64,
    pub region: f64,
    pub node: f64,
    pub specialization: f64,
    pub model_loaded: f64,
    pub total: f64,
}

/// An eligible node and its score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankedNode {
    pub node: String,
    pub terms: ScoreTerms,
}

/// The routing decision of one lease. Keys serialize in this order (the
/// order of a sorted JSON object), which the coordinator's fast writer of
/// this shape keeps too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteReason {
    /// The node that got the job.
    pub chosen: String,
    /// Nodes that may not run the job, and why.
    #[serde(default)]
    pub excluded: BTreeMap<String, String>,
    pub how: RouteHow,
    /// Delay scheduling's part, when the job preferred a node or region.
    #[serde(default)]
    pub locality: Option<String>,
    /// One line for people: e.g. "best-ranked node".
    pub note: String,
    /// The best candidates, best first, the chosen one among them.
    #[serde(default)]
    pub ranked: Vec<RankedNode>,
}

impl RouteReason {
    /// The chosen node's score, if it was ranked.
    pub fn chosen_score(&self) -> Option<f64> {
        self.ranked
            .iter()
            .find(|r| r.node == self.chosen)
            .map(|r| r.terms.total)
    }

    /// One line: `best-ranked node · via hand-off · score 0.82 · 1 excluded`.
    pub fn summary(&self) -> String {
        let mut parts = vec![self.note.clone(), format!("via {}", self.how.as_str())];
        if let Some(score) = self.chosen_score() {
            parts.push(format!("score {score:.2}"));
        }
        if !self.excluded.is_empty() {
            parts.push(format!("{} excluded", self.excluded.len()));
        }
        parts.join(" · ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_reasons_are_summed_up() {
        let json = r#"{"chosen":"tokyo-01","excluded":{"osaka-01":"kind"},"how":"hand-off","note":"best-ranked node","ranked":[{"node":"tokyo-01","terms":{"total":4.4464}}]}"#;
        let reason: RouteReason = serde_json::from_str(json).expect("a route reason");
        assert_eq!(
            reason.summary(),
            "best-ranked node · via hand-off · score 4.45 · 1 excluded"
        );
    }
}
