//! Hard constraints: which nodes may run which jobs, and the words that say why
//! not. (Scoring among eligible nodes lives in `dispatch`.)

use kobo_protocol::NodeStatus;

/// The capability a node must declare to receive confidential jobs.
pub const CONFIDENTIAL_CAPABILITY: &str = "confidential_processing";

/// What a job demands of its node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobNeeds {
    pub kind: String,
    pub capabilities: Vec<String>,
    pub gpu: bool,
    pub confidential: bool,
    pub data_location: Option<String>,
    pub model: Option<String>,
}

/// What a node offers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeProfile {
    pub node_id: String,
    pub region: String,
    pub capabilities: Vec<String>,
    pub gpu: bool,
    pub models: Vec<String>,
    pub max_workers: u32,
}

/// Why a node may not run a job; `Display` says it in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exclusion {
    Kind(String),
    Capability(String),
    Gpu,
    Confidential,
    Residency { wanted: String, node_area: String },
    Model(String),
    Status(NodeStatus),
}

impl std::fmt::Display for Exclusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exclusion::Kind(kind) => write!(f, "kind {kind} is not among its capabilities"),
            Exclusion::Capability(cap) => write!(f, "lacks capability {cap}"),
            Exclusion::Gpu => f.write_str("has no gpu"),
            Exclusion::Confidential => {
                write!(f, "does not declare {CONFIDENTIAL_CAPABILITY}")
            }
            Exclusion::Residency { wanted, node_area } => {
                write!(f, "is in {node_area}, job data must stay in {wanted}")
            }
            Exclusion::Model(model) => write!(f, "does not serve model {model}"),
            Exclusion::Status(status) => write!(f, "is {}", status.as_str()),
        }
    }
}

/// Checks every hard constraint of `job` against `node`.
pub fn check(job: &JobNeeds, node: &NodeProfile) -> Result<(), Exclusion> {
    let has = |cap: &str| node.capabilities.iter().any(|c| c == cap);
    if !has(&job.kind) {
        return Err(Exclusion::Kind(job.kind.clone()));
    }
    if let Some(missing) = job.capabilities.iter().find(|cap| !has(cap)) {
        return Err(Exclusion::Capability(missing.clone()));
    }
    if job.gpu && !node.gpu {
        return Err(Exclusion::Gpu);
    }
    if job.confidential && !has(CONFIDENTIAL_CAPABILITY) {
        return Err(Exclusion::Confidential);
    }
    if let Some(wanted) = &job.data_location {
        let node_area = area_of_region(&node.region);
        if !node_area.eq_ignore_ascii_case(wanted) {
            return Err(Exclusion::Residency {
                wanted: wanted.clone(),
                node_area: node_area.to_string(),
            });
        }
    }
    if let Some(model) = &job.model
        && !node.models.iter().any(|served| same_model(served, model))
    {
        return Err(Exclusion::Model(model.clone()));
    }
    Ok(())
}

/// Ollama's naming: `qwen2.5` means `qwen2.5:latest`.
pub fn same_model(a: &str, b: &str) -> bool {
    fn normal(name: &str) -> std::borrow::Cow<'_, str> {
        if name.contains(':') {
            name.into()
        } else {
            format!("{name}:latest").into()
        }
    }
    a == b || normal(a) == normal(b)
}

pub use crate::regions::{area_of_region, region_coordinates};

#[cfg(test)]
mod tests {
    use super::*;

    fn tokyo() -> NodeProfile {
        NodeProfile {
            node_id: "tokyo-01".into(),
            region: "ap-northeast-1".into(),
            capabilities: vec!["code_generation".into(), "heavy_computation".into()],
            gpu: true,
            models: vec!["qwen2.5:latest".into()],
            max_workers: 8,
        }
    }

    fn needs(kind: &str) -> JobNeeds {
        JobNeeds {
            kind: kind.into(),
            ..JobNeeds::default()
        }
    }

    #[test]
    fn kind_must_be_a_capability() {
        assert_eq!(check(&needs("code_generation"), &tokyo()), Ok(()));
        assert_eq!(
            check(&needs("documentation"), &tokyo()),
            Err(Exclusion::Kind("documentation".into()))
        );
    }

    #[test]
    fn each_hard_constraint_excludes() {
        let mut node = tokyo();
        node.gpu = false;
        let job = JobNeeds {
            gpu: true,
            ..needs("code_generation")
        };
        assert_eq!(check(&job, &node), Err(Exclusion::Gpu));

        let job = JobNeeds {
            confidential: true,
            ..needs("code_generation")
        };
        assert_eq!(check(&job, &tokyo()), Err(Exclusion::Confidential));

        let job = JobNeeds {
            data_location: Some("europe".into()),
            ..needs("code_generation")
        };
        assert!(matches!(
            check(&job, &tokyo()),
            Err(Exclusion::Residency { .. })
        ));
        let job = JobNeeds {
            data_location: Some("japan".into()),
            ..needs("code_generation")
        };
        assert_eq!(check(&job, &tokyo()), Ok(()));

        let job = JobNeeds {
            model: Some("llama3".into()),
            ..needs("code_generation")
        };
        assert_eq!(
            check(&job, &tokyo()),
            Err(Exclusion::Model("llama3".into()))
        );
        let job = JobNeeds {
            model: Some("qwen2.5".into()),
            ..needs("code_generation")
        };
        assert_eq!(check(&job, &tokyo()), Ok(()));
    }
}
