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

/// The data-residency area of a cloud-style region name (`ap-northeast-1` →
/// `japan`). Unknown regions are their own area, so `data_location` may also
/// name a region exactly.
pub fn area_of_region(region: &str) -> &str {
    const AREAS: &[(&str, &str)] = &[
        ("ap-northeast-1", "japan"),
        ("ap-northeast-3", "japan"),
        ("ap-northeast-2", "korea"),
        ("ap-southeast-", "asia"),
        ("ap-south-", "india"),
        ("ap-east-", "asia"),
        ("eu-", "europe"),
        ("us-", "us"),
        ("ca-", "canada"),
        ("sa-", "south-america"),
        ("me-", "middle-east"),
        ("af-", "africa"),
    ];
    AREAS
        .iter()
        .find(|(prefix, _)| region.starts_with(prefix))
        .map(|(_, area)| *area)
        .unwrap_or(region)
}

/// Approximate coordinates (latitude, longitude) of cloud-style regions, for
/// nearness when a job prefers a region no node is in, and for the map.
pub fn region_coordinates(region: &str) -> Option<(f64, f64)> {
    const PLACES: &[(&str, (f64, f64))] = &[
        ("ap-northeast-1", (35.68, 139.69)),
        ("ap-northeast-2", (37.57, 126.98)),
        ("ap-northeast-3", (34.69, 135.50)),
        ("ap-southeast-1", (1.35, 103.82)),
        ("ap-southeast-2", (-33.87, 151.21)),
        ("ap-south-1", (19.08, 72.88)),
        ("ap-east-1", (22.32, 114.17)),
        ("eu-west-1", (53.35, -6.26)),
        ("eu-west-2", (51.51, -0.13)),
        ("eu-west-3", (48.86, 2.35)),
        ("eu-central-1", (50.11, 8.68)),
        ("eu-north-1", (59.33, 18.07)),
        ("eu-south-1", (45.46, 9.19)),
        ("us-east-1", (38.95, -77.45)),
        ("us-east-2", (39.96, -83.00)),
        ("us-west-1", (37.77, -122.42)),
        ("us-west-2", (45.52, -122.68)),
        ("ca-central-1", (45.50, -73.57)),
        ("sa-east-1", (-23.55, -46.63)),
        ("me-south-1", (26.07, 50.56)),
        ("af-south-1", (-33.92, 18.42)),
    ];
    PLACES
        .iter()
        .find(|(name, _)| *name == region)
        .map(|(_, at)| *at)
}

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

    #[test]
    fn regions_map_to_areas() {
        assert_eq!(area_of_region("ap-northeast-3"), "japan");
        assert_eq!(area_of_region("eu-west-2"), "europe");
        assert_eq!(area_of_region("us-east-1"), "us");
        assert_eq!(area_of_region("moon-base"), "moon-base");
    }
}
