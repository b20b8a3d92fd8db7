//! Sharing a fleet: what each API key may use (its weight in fair share,
//! its priority class, its rate, concurrency and budget limits) and the
//! usage it is accounted.

use serde::{Deserialize, Serialize};

use crate::UnixMillis;

/// The two priority classes. Every interactive job is leased before any
/// batch job a node may run; fair share orders the keys within a class.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum PriorityClass {
    Batch,
    Interactive,
}

impl PriorityClass {
    pub const ALL: [PriorityClass; 2] = [PriorityClass::Batch, PriorityClass::Interactive];

    pub fn as_str(self) -> &'static str {
        match self {
            PriorityClass::Batch => "batch",
            PriorityClass::Interactive => "interactive",
        }
    }

    pub fn parse(s: &str) -> Option<PriorityClass> {
        PriorityClass::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The number kept in `jobs.class` (higher leases first).
    pub fn rank(self) -> i64 {
        match self {
            PriorityClass::Batch => 0,
            PriorityClass::Interactive => 1,
        }
    }

    pub fn from_rank(rank: i64) -> PriorityClass {
        if rank > 0 {
            PriorityClass::Interactive
        } else {
            PriorityClass::Batch
        }
    }

    /// The class of a job: the key's own class when it has one, else
    /// interactive for gateway requests and batch for everything else.
    pub fn of_job(key_class: Option<PriorityClass>, gateway: bool) -> PriorityClass {
        key_class.unwrap_or(if gateway {
            PriorityClass::Interactive
        } else {
            PriorityClass::Batch
        })
    }
}

impl std::fmt::Display for PriorityClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The period a token budget covers; it resets at the start of each UTC day
/// or month.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    Day,
    Month,
}

impl BudgetPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Day => "day",
            BudgetPeriod::Month => "month",
        }
    }

    pub fn parse(s: &str) -> Option<BudgetPeriod> {
        [BudgetPeriod::Day, BudgetPeriod::Month]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

/// A token budget: prompt plus completion tokens per period.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub tokens: u64,
    pub period: BudgetPeriod,
}

/// What an API key may use. Every limit is optional (none: unlimited).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyPolicy {
    /// Its share of contended slots relative to other keys (default 1).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Its jobs' priority class; none: interactive for gateway requests,
    /// batch for the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<PriorityClass>,
    /// Requests (jobs submitted) per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    /// Tokens (prompt plus completion) per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Jobs leased (running) at once; more wait in the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
}

fn default_weight() -> u32 {
    1
}

impl Default for KeyPolicy {
    fn default() -> KeyPolicy {
        KeyPolicy {
            weight: default_weight(),
            class: None,
            rpm: None,
            tpm: None,
            max_concurrent: None,
            budget: None,
        }
    }
}

impl KeyPolicy {
    /// The policy in one line (`weight=2 class=batch rpm=60 …`), for the
    /// audit log and the CLI; limits not set are left out.
    pub fn summary(&self) -> String {
        let mut parts = vec![format!("weight={}", self.weight)];
        if let Some(class) = self.class {
            parts.push(format!("class={class}"));
        }
        if let Some(rpm) = self.rpm {
            parts.push(format!("rpm={rpm}"));
        }
        if let Some(tpm) = self.tpm {
            parts.push(format!("tpm={tpm}"));
        }
        if let Some(n) = self.max_concurrent {
            parts.push(format!("max_concurrent={n}"));
        }
        if let Some(b) = self.budget {
            parts.push(format!("budget={}/{}", b.tokens, b.period.as_str()));
        }
        parts.join(" ")
    }
}

/// `PATCH /v1/admin/apikeys/{id}`: the fields given replace the key's;
/// `clear` names limits to remove (`rpm`, `tpm`, `max_concurrent`,
/// `budget`, `class`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyPolicyUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<PriorityClass>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clear: Vec<String>,
}

/// The limits a [`KeyPolicyUpdate`] may clear.
pub const CLEARABLE: [&str; 5] = ["class", "rpm", "tpm", "max_concurrent", "budget"];

impl KeyPolicyUpdate {
    /// `policy` with this update applied; names the field of a bad value.
    pub fn apply(&self, policy: &KeyPolicy) -> Result<KeyPolicy, String> {
        let mut next = policy.clone();
        for name in &self.clear {
            match name.as_str() {
                "class" => next.class = None,
                "rpm" => next.rpm = None,
                "tpm" => next.tpm = None,
                "max_concurrent" => next.max_concurrent = None,
                "budget" => next.budget = None,
                other => {
                    return Err(format!(
                        "clear: unknown limit {other:?} (one of {})",
                        CLEARABLE.join(", ")
                    ));
                }
            }
        }
        if let Some(weight) = self.weight {
            next.weight = weight;
        }
        if self.class.is_some() {
            next.class = self.class;
        }
        if self.rpm.is_some() {
            next.rpm = self.rpm;
        }
        if self.tpm.is_some() {
            next.tpm = self.tpm;
        }
        if self.max_concurrent.is_some() {
            next.max_concurrent = self.max_concurrent;
        }
        if self.budget.is_some() {
            next.budget = self.budget;
        }
        next.validate()?;
        Ok(next)
    }
}

/// Largest weight a key may have.
pub const MAX_WEIGHT: u32 = 10_000;

impl KeyPolicy {
    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.weight == 0 || self.weight > MAX_WEIGHT {
            return Err(format!(
                "weight: must be between 1 and {MAX_WEIGHT}, got {}",
                self.weight
            ));
        }
        if self.rpm == Some(0) {
            return Err("rpm: must be at least 1 (clear it for no limit)".into());
        }
        if self.tpm == Some(0) {
            return Err("tpm: must be at least 1 (clear it for no limit)".into());
        }
        if self.max_concurrent == Some(0) {
            return Err("max_concurrent: must be at least 1 (clear it for no limit)".into());
        }
        if self.budget.is_some_and(|b| b.tokens == 0) {
            return Err("budget.tokens: must be at least 1 (clear it for no budget)".into());
        }
        Ok(())
    }
}

/// One row of usage: what one key used of one model on one node in one
/// hour. `GET /v1/usage` and `kobo-coord usage` answer with these, summed
/// over what was asked; a column not grouped by is left out.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UsageRow {
    /// The actor the jobs were submitted by (`apikey:<id>`, `local`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The key's name, when the actor is an API key that still exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Start of the hour (Unix milliseconds), when grouped by hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hour: Option<UnixMillis>,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub llm_ms: u64,
}

/// `GET /v1/usage` query: `key` an API key id (or an actor such as
/// `local`); usage of the hours overlapping `[since, until)`; `group` a
/// comma list of [`UsageGroup`] names (default `key,model`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<UnixMillis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<UnixMillis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// What usage rows may be grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UsageGroup {
    Hour,
    Key,
    Model,
    Node,
}

impl UsageGroup {
    pub const ALL: [UsageGroup; 4] = [
        UsageGroup::Hour,
        UsageGroup::Key,
        UsageGroup::Model,
        UsageGroup::Node,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UsageGroup::Hour => "hour",
            UsageGroup::Key => "key",
            UsageGroup::Model => "model",
            UsageGroup::Node => "node",
        }
    }

    /// A comma list (`key,model`), in the order given, each once; the error
    /// names the bad part. Empty or absent: `key,model`.
    pub fn parse_list(list: Option<&str>) -> Result<Vec<UsageGroup>, String> {
        let list = list.map(str::trim).filter(|l| !l.is_empty());
        let Some(list) = list else {
            return Ok(vec![UsageGroup::Key, UsageGroup::Model]);
        };
        let mut groups = Vec::new();
        for part in list.split(',').map(str::trim) {
            let group = UsageGroup::ALL
                .into_iter()
                .find(|g| g.as_str() == part)
                .ok_or_else(|| {
                    format!("unknown grouping {part:?} (a comma list of hour, key, model, node)")
                })?;
            if !groups.contains(&group) {
                groups.push(group);
            }
        }
        Ok(groups)
    }
}

/// The actor a `key` parameter names: an API key id, or an actor as is
/// (`local`, `session:…`, anything with a colon).
pub fn usage_actor(key: &str) -> String {
    if key == "local" || key.contains(':') {
        key.to_owned()
    } else {
        format!("apikey:{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_replaces_given_fields_clears_named_ones_and_names_a_bad_field() {
        let policy = KeyPolicy {
            rpm: Some(10),
            tpm: Some(1000),
            ..KeyPolicy::default()
        };
        let update = KeyPolicyUpdate {
            weight: Some(3),
            clear: vec!["rpm".into()],
            ..KeyPolicyUpdate::default()
        };
        let next = update.apply(&policy).expect("valid");
        assert_eq!(next.weight, 3);
        assert_eq!(next.rpm, None);
        assert_eq!(next.tpm, Some(1000));
        let bad = KeyPolicyUpdate {
            weight: Some(0),
            ..KeyPolicyUpdate::default()
        };
        assert!(bad.apply(&policy).unwrap_err().starts_with("weight:"));
        let unknown = KeyPolicyUpdate {
            clear: vec!["rmp".into()],
            ..KeyPolicyUpdate::default()
        };
        assert!(unknown.apply(&policy).unwrap_err().contains("\"rmp\""));
    }

    #[test]
    fn usage_groups_parse_in_order_once_and_name_a_bad_one() {
        assert_eq!(
            UsageGroup::parse_list(None),
            Ok(vec![UsageGroup::Key, UsageGroup::Model])
        );
        assert_eq!(
            UsageGroup::parse_list(Some("node, hour,node")),
            Ok(vec![UsageGroup::Node, UsageGroup::Hour])
        );
        assert!(
            UsageGroup::parse_list(Some("key,modle"))
                .unwrap_err()
                .contains("\"modle\"")
        );
        assert_eq!(usage_actor("abc"), "apikey:abc");
        assert_eq!(usage_actor("local"), "local");
    }

    #[test]
    fn gateway_requests_are_interactive_unless_the_key_says_otherwise() {
        assert_eq!(
            PriorityClass::of_job(None, true),
            PriorityClass::Interactive
        );
        assert_eq!(PriorityClass::of_job(None, false), PriorityClass::Batch);
        assert_eq!(
            PriorityClass::of_job(Some(PriorityClass::Batch), true),
            PriorityClass::Batch
        );
        let policy: KeyPolicy = serde_json::from_str("{}").expect("defaults");
        assert_eq!(policy, KeyPolicy::default());
    }
}
