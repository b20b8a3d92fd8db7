//! The inventory as written: each level's settings (the defaults, a group's
//! vars, a host's own) with the positions later checks point at. The schema
//! layer fills it in; the resolve layer layers it into hosts.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use crate::model::{Jump, LlmKind, SecretRef};
use crate::yaml::Pos;

/// A value and where it was written.
#[derive(Debug, Clone)]
pub(crate) struct At<T> {
    pub(crate) value: T,
    pub(crate) pos: Pos,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct LlmVars {
    pub(crate) kind: Option<At<(String, LlmKind)>>,
    pub(crate) endpoint: Option<At<String>>,
    pub(crate) model: Option<At<String>>,
    pub(crate) models: Option<At<Vec<String>>>,
    pub(crate) gpu: Option<bool>,
    pub(crate) api_key: Option<SecretRef>,
}

/// Settings as written at one level (defaults, a group, a host).
#[derive(Debug, Clone, Default)]
pub(crate) struct Vars {
    pub(crate) host: Option<At<String>>,
    pub(crate) port: Option<u16>,
    pub(crate) user: Option<String>,
    pub(crate) key: Option<PathBuf>,
    pub(crate) jump: Option<Jump>,
    pub(crate) become_root: Option<bool>,
    pub(crate) host_key: Option<String>,
    pub(crate) install_dir: Option<String>,
    pub(crate) coordinator: Option<String>,
    pub(crate) node_id: Option<At<String>>,
    pub(crate) location: Option<At<String>>,
    pub(crate) coordinates: Option<(f64, f64)>,
    pub(crate) capabilities: Option<Vec<String>>,
    pub(crate) llm: LlmVars,
    pub(crate) max_workers: Option<u32>,
    pub(crate) specialization: Option<String>,
    pub(crate) labels: BTreeMap<String, String>,
}

fn over<T: Clone>(base: &mut Option<T>, top: &Option<T>) {
    if top.is_some() {
        base.clone_from(top);
    }
}

impl Vars {
    /// `top` wins where it says something.
    pub(crate) fn overlay(&mut self, top: &Vars) {
        over(&mut self.host, &top.host);
        over(&mut self.port, &top.port);
        over(&mut self.user, &top.user);
        over(&mut self.key, &top.key);
        over(&mut self.jump, &top.jump);
        over(&mut self.become_root, &top.become_root);
        over(&mut self.host_key, &top.host_key);
        over(&mut self.install_dir, &top.install_dir);
        over(&mut self.coordinator, &top.coordinator);
        over(&mut self.node_id, &top.node_id);
        over(&mut self.location, &top.location);
        over(&mut self.coordinates, &top.coordinates);
        over(&mut self.capabilities, &top.capabilities);
        over(&mut self.llm.kind, &top.llm.kind);
        over(&mut self.llm.endpoint, &top.llm.endpoint);
        over(&mut self.llm.model, &top.llm.model);
        over(&mut self.llm.models, &top.llm.models);
        over(&mut self.llm.gpu, &top.llm.gpu);
        over(&mut self.llm.api_key, &top.llm.api_key);
        over(&mut self.max_workers, &top.max_workers);
        over(&mut self.specialization, &top.specialization);
        self.labels
            .extend(top.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
}

/// A group as written: where its name stands, and its vars.
pub(crate) struct GroupDef {
    pub(crate) pos: Pos,
    pub(crate) vars: Vars,
}

/// A host as written, once however many groups list it.
pub(crate) struct HostDef {
    pub(crate) name: String,
    pub(crate) pos: Pos,
    /// Whether a body (settings) was given; a bare name only joins groups.
    pub(crate) has_body: bool,
    pub(crate) vars: Vars,
    /// Each group path the host appears under, outermost first.
    pub(crate) memberships: Vec<Vec<String>>,
}

/// A pool as written; resolving checks its hosts exist.
#[derive(Debug, Clone)]
pub(crate) struct PoolDef {
    pub(crate) pool: crate::model::Pool,
    /// Each host named under `hosts:`, where it was written.
    pub(crate) host_refs: Vec<At<String>>,
}

/// Everything the schema layer read from one inventory.
#[derive(Default)]
pub(crate) struct Raw {
    pub(crate) defaults: Vars,
    pub(crate) groups: HashMap<String, GroupDef>,
    /// The groups' names in the order written.
    pub(crate) group_order: Vec<String>,
    /// In the order first written.
    pub(crate) hosts: Vec<HostDef>,
    pub(crate) pools: Vec<PoolDef>,
}
