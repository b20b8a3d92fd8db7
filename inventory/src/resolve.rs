//! The resolve layer: each host's settings from the inventory as written (the
//! defaults, then its groups' vars outermost first, then its own) into a
//! [`Host`] with kobo's defaults filled in, then the checks that span hosts
//! (unique node ids, one install per place, no group named like a host).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::checks;
use crate::error::Problems;
use crate::model::*;
use crate::raw::{HostDef, PoolDef, Raw, Vars};

/// Each host's settings resolved, then the checks that span fields and
/// hosts; every problem goes to `problems`.
pub(crate) fn resolve(raw: Raw, file: &Path, problems: &mut Problems) -> Inventory {
    let mut hosts = Vec::new();
    let mut groups: BTreeMap<String, Vec<String>> = raw
        .group_order
        .iter()
        .map(|g| (g.clone(), Vec::new()))
        .collect();
    for def in &raw.hosts {
        let mut vars = raw.defaults.clone();
        let mut applied: Vec<&str> = Vec::new();
        for path in &def.memberships {
            for group in path {
                if applied.contains(&group.as_str()) {
                    continue;
                }
                applied.push(group);
                if let Some(group_def) = raw.groups.get(group) {
                    vars.overlay(&group_def.vars);
                }
                if let Some(members) = groups.get_mut(group) {
                    members.push(def.name.clone());
                }
            }
        }
        vars.overlay(&def.vars);
        if let Some(host) = host(def, vars, applied, problems) {
            hosts.push(host);
        }
    }
    if let Some((name, group_def)) = raw
        .groups
        .iter()
        .find(|(name, _)| raw.hosts.iter().any(|d| &d.name == *name))
    {
        problems.report(
            group_def.pos,
            format!("group `{name}` has the name of a host; --limit could not tell them apart"),
        );
    }
    fleet_checks(&hosts, problems);
    let pools = pool_checks(raw.pools, &raw.hosts, problems);
    Inventory {
        file: file.to_path_buf(),
        hosts,
        groups,
        pools,
    }
}

/// Every host a pool names is a host of the inventory, in one pool only.
fn pool_checks(pools: Vec<PoolDef>, hosts: &[HostDef], problems: &mut Problems) -> Vec<Pool> {
    let mut owner: HashMap<String, String> = HashMap::new();
    let mut out = Vec::new();
    for def in pools {
        let mut ok = true;
        for host in &def.host_refs {
            if !hosts.iter().any(|h| h.name == host.value) {
                problems.report(
                    host.pos,
                    format!(
                        "pool `{}` names host `{}`, which is not in the inventory's hosts",
                        def.pool.name, host.value
                    ),
                );
                ok = false;
            } else if let Some(other) = owner.insert(host.value.clone(), def.pool.name.clone()) {
                problems.report(
                    host.pos,
                    format!(
                        "host `{}` is in pool `{other}` and pool `{}`; a host belongs to one pool",
                        host.value, def.pool.name
                    ),
                );
                ok = false;
            }
        }
        if ok {
            out.push(def.pool);
        }
    }
    out
}

/// The host `def` with its resolved `vars`, in `groups`; none when a
/// setting it needs is missing or two of them disagree.
fn host(def: &HostDef, vars: Vars, groups: Vec<&str>, problems: &mut Problems) -> Option<Host> {
    let name = &def.name;
    let host = match vars.host {
        Some(host) => host.value,
        None => match checks::hostname(name) {
            Ok(()) => name.clone(),
            Err(expected) => {
                problems.report(
                    def.pos,
                    format!(
                        "host `{name}` has no `host:` and its name is not a host name: {expected}"
                    ),
                );
                return None;
            }
        },
    };
    let node_id = vars.node_id.map_or_else(|| name.clone(), |n| n.value);
    let mut missing = |what: &str, hint: &str| {
        problems.report(
            def.pos,
            format!("host `{name}` has no `{what}`: {hint} (set it on the host, one of its groups or defaults)"),
        );
    };
    let Some(location) = vars.location else {
        missing("location", "the node's region, e.g. ap-northeast-1");
        return None;
    };
    let Some(capabilities) = vars.capabilities else {
        missing(
            "capabilities",
            "the kinds of work the node takes, e.g. [general_query]",
        );
        return None;
    };
    let (type_name, kind) = vars
        .llm
        .kind
        .as_ref()
        .map_or(("ollama".to_string(), LlmKind::Ollama), |k| k.value.clone());
    let endpoint = match (&vars.llm.endpoint, kind) {
        (Some(e), _) => Some(e.value.clone()),
        (None, LlmKind::Ollama) => Some(DEFAULT_OLLAMA_ENDPOINT.to_string()),
        (None, LlmKind::Sim) => None,
        (None, LlmKind::OpenAi) => {
            let pos = vars.llm.kind.as_ref().map_or(def.pos, |k| k.pos);
            problems.report(
                pos,
                format!("host `{name}`: LLM type `{type_name}` needs `llm.endpoint`, the server's URL, e.g. http://127.0.0.1:8000"),
            );
            return None;
        }
    };
    if let (Some(model), Some(_)) = (&vars.llm.model, &vars.llm.models) {
        problems.report(
            model.pos,
            format!("host `{name}`: give `llm.model` (the default model) or `llm.models` (the models to announce), not both"),
        );
        return None;
    }
    let (model, models) = match (vars.llm.model, vars.llm.models) {
        (Some(model), None) => (Some(model.value), Vec::new()),
        (None, Some(models)) => (models.value.first().cloned(), models.value),
        _ => (None, Vec::new()),
    };
    Some(Host {
        name: name.clone(),
        pos: def.pos,
        groups: groups.into_iter().map(str::to_string).collect(),
        ssh: SshTarget {
            host,
            port: vars.port.unwrap_or(DEFAULT_SSH_PORT),
            user: vars.user,
            key: vars.key,
            jump: vars.jump,
            become_root: vars.become_root.unwrap_or(false),
            host_key: vars.host_key,
        },
        install_dir: vars
            .install_dir
            .unwrap_or_else(|| DEFAULT_INSTALL_DIR.to_string()),
        coordinator: vars.coordinator,
        node: NodeCard {
            node_id,
            location: location.value,
            coordinates: vars.coordinates,
            capabilities,
            llm: Llm {
                type_name,
                kind,
                endpoint,
                model,
                models,
                gpu: vars.llm.gpu.unwrap_or(false),
                api_key: vars.llm.api_key,
            },
            max_workers: vars.max_workers.unwrap_or(DEFAULT_MAX_WORKERS),
            specialization: vars.specialization,
            labels: vars.labels,
        },
    })
}

/// The checks across hosts: node ids are unique, and no two hosts install to
/// the same directory of the same machine.
fn fleet_checks(hosts: &[Host], problems: &mut Problems) {
    let mut node_ids: HashMap<&str, &Host> = HashMap::new();
    let mut places: HashMap<(String, u16, &str), &Host> = HashMap::new();
    for host in hosts {
        if let Some(first) = node_ids.insert(&host.node.node_id, host) {
            problems.report(
                host.pos,
                format!(
                    "duplicate node id `{}`: host `{}` has it too (line {}, column {}); node ids must be unique",
                    host.node.node_id, first.name, first.pos.line, first.pos.column
                ),
            );
        }
        let place = (
            host.ssh.host.to_ascii_lowercase(),
            host.ssh.port,
            host.install_dir.as_str(),
        );
        if let Some(first) = places.insert(place, host) {
            problems.report(
                host.pos,
                format!(
                    "host `{}` installs to the same place as `{}` (line {}): {}:{} {}; give one of them another install_dir",
                    host.name, first.name, first.pos.line, host.ssh.host, host.ssh.port, host.install_dir
                ),
            );
        }
    }
}
