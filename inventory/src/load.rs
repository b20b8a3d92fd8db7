//! Reading an inventory: the YAML tree is walked once, every key checked
//! against what may stand there, every value against its rules; each host's
//! settings are then resolved (defaults, its groups' vars outermost first, its
//! own) and the fleet checked as a whole (unique node ids, one install per
//! place). All problems are collected, each with its line and column.
//!
//! ```yaml
//! defaults:            # or `vars`
//!   user: root
//!   coordinator: https://coord.example:7443
//! groups:              # or `children`
//!   japan:
//!     vars: {llm: {type: ollama}}
//!     hosts:
//!       tokyo-01: {host: 203.0.113.10, location: ap-northeast-1, capabilities: [code_generation]}
//! hosts:
//!   london-01: {host: 198.51.100.7, location: eu-west-2, capabilities: [data_analysis]}
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::checks;
use crate::error::{Diagnostic, Diagnostics, InventoryError};
use crate::model::*;
use crate::yaml::{self, Node, Pos, Value};

/// Largest inventory file read (a fleet of thousands of hosts fits).
const MAX_FILE_BYTES: u64 = 16 << 20;
/// Most workers an agent may be given.
const MAX_WORKERS: u64 = 1024;

/// Keys of the top level.
const TOP_KEYS: &[&str] = &["defaults", "vars", "groups", "children", "hosts"];
/// Keys of a group.
const GROUP_KEYS: &[&str] = &["vars", "hosts", "children", "groups"];
/// Keys a host, a group's vars or the defaults may set.
const SETTING_KEYS: &[&str] = &[
    "port",
    "user",
    "key",
    "jump",
    "become",
    "install_dir",
    "coordinator",
    "location",
    "region",
    "coordinates",
    "capabilities",
    "llm",
    "max_workers",
    "specialization",
    "labels",
];
/// Keys only a host may set.
const HOST_ONLY_KEYS: &[&str] = &["host", "node_id", "host_key"];
/// Keys of `llm`.
const LLM_KEYS: &[&str] = &["type", "endpoint", "model", "models", "gpu", "api_key"];
/// Keys of `coordinates`.
const COORDINATE_KEYS: &[&str] = &["latitude", "longitude"];

/// Reads and checks the inventory at `path`.
pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
    let read = |source| InventoryError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(read(std::io::Error::other(format!(
            "larger than {MAX_FILE_BYTES} bytes"
        ))));
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    parse(path, &text)
}

/// Checks the inventory `text`; `file` names it in messages.
pub fn parse(file: &Path, text: &str) -> Result<Inventory, InventoryError> {
    let invalid = |items: Vec<Diagnostic>| InventoryError::Invalid {
        diagnostics: Diagnostics {
            file: file.to_path_buf(),
            items,
        },
    };
    let root = match yaml::parse(text) {
        Ok(Some(root)) => root,
        Ok(None) => {
            return Err(invalid(vec![Diagnostic::new(
                Pos { line: 1, column: 1 },
                "the inventory is empty; expected a mapping with `hosts:` (and optionally `defaults:`, `groups:`)",
            )]));
        }
        Err(diagnostic) => return Err(invalid(vec![diagnostic])),
    };
    let mut reader = Reader::default();
    reader.top(&root);
    let inventory = reader.resolve(file);
    let mut items = reader.diags;
    if items.is_empty() {
        return Ok(inventory);
    }
    items.sort_by_key(|d| (d.pos.line, d.pos.column));
    items.dedup();
    Err(invalid(items))
}

#[derive(Debug, Clone)]
struct At<T> {
    value: T,
    pos: Pos,
}

#[derive(Debug, Clone, Default)]
struct LlmVars {
    kind: Option<At<(String, LlmKind)>>,
    endpoint: Option<At<String>>,
    model: Option<At<String>>,
    models: Option<At<Vec<String>>>,
    gpu: Option<bool>,
    api_key: Option<SecretRef>,
}

/// Settings as written at one level (defaults, a group, a host).
#[derive(Debug, Clone, Default)]
struct Vars {
    host: Option<At<String>>,
    port: Option<u16>,
    user: Option<String>,
    key: Option<PathBuf>,
    jump: Option<Jump>,
    become_root: Option<bool>,
    host_key: Option<String>,
    install_dir: Option<String>,
    coordinator: Option<String>,
    node_id: Option<At<String>>,
    location: Option<At<String>>,
    coordinates: Option<(f64, f64)>,
    capabilities: Option<Vec<String>>,
    llm: LlmVars,
    max_workers: Option<u32>,
    specialization: Option<String>,
    labels: BTreeMap<String, String>,
}

fn over<T: Clone>(base: &mut Option<T>, top: &Option<T>) {
    if top.is_some() {
        base.clone_from(top);
    }
}

impl Vars {
    /// `top` wins where it says something.
    fn overlay(&mut self, top: &Vars) {
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

struct HostDef {
    name: String,
    pos: Pos,
    /// Whether a body (settings) was given; a bare name only joins groups.
    has_body: bool,
    vars: Vars,
    /// Each group path the host appears under, outermost first.
    memberships: Vec<Vec<String>>,
}

#[derive(Default)]
struct Reader {
    diags: Vec<Diagnostic>,
    defaults: Vars,
    groups: HashMap<String, (Pos, Vars)>,
    group_order: Vec<String>,
    hosts: Vec<HostDef>,
}

/// `did you mean`: the closest known key within two edits.
fn suggestion(key: &str, known: &[&str]) -> Option<String> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let cur = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
                prev = cur;
            }
        }
        row[b.len()]
    }
    known
        .iter()
        .map(|k| (distance(key, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
}

impl Reader {
    fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.diags.push(Diagnostic::new(pos, message));
    }

    /// Two spellings of one key (`location`/`region`, `children`/`groups`)
    /// may appear once between them: records `key` in `seen` and says true,
    /// or reports the repeat (naming both lines, ending with `why`) and says
    /// false.
    fn synonym_once<'n>(
        &mut self,
        seen: &mut Option<&'n Node>,
        key: &'n Node,
        word: &str,
        why: &str,
    ) -> bool {
        if let Some(first) = seen {
            self.error(
                key.pos,
                format!(
                    "`{word}` repeats `{}` (line {}){why}",
                    first.as_scalar().unwrap_or_default(),
                    first.pos.line
                ),
            );
            return false;
        }
        *seen = Some(key);
        true
    }

    fn unknown_key(&mut self, key: &Node, known: &[&str], what: &str) {
        let name = key.as_scalar().unwrap_or_default();
        let hint = suggestion(name, known).unwrap_or_default();
        self.error(
            key.pos,
            format!(
                "unknown key `{name}` in {what}{hint}; expected one of: {}",
                known.join(", ")
            ),
        );
    }

    fn map<'a>(&mut self, node: &'a Node, what: &str) -> Option<&'a [(Node, Node)]> {
        match &node.value {
            Value::Map(entries) => Some(entries),
            _ if node.is_null() => Some(&[]),
            _ => {
                self.error(
                    node.pos,
                    format!("{what}: expected a mapping, found {}", node.kind()),
                );
                None
            }
        }
    }

    fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.value {
            Value::Scalar { text, .. } if !node.is_null() => Some(text.clone()),
            _ => {
                self.error(
                    node.pos,
                    format!("{what}: expected a string, found {}", node.kind()),
                );
                None
            }
        }
    }

    /// A string that passes `check`.
    fn checked(
        &mut self,
        node: &Node,
        what: &str,
        check: fn(&str) -> Result<(), String>,
    ) -> Option<String> {
        let value = self.string(node, what)?;
        match check(&value) {
            Ok(()) => Some(value),
            Err(expected) => {
                self.error(node.pos, format!("{what}: {expected}"));
                None
            }
        }
    }

    fn integer(&mut self, node: &Node, what: &str, min: u64, max: u64) -> Option<u64> {
        let parsed = match &node.value {
            Value::Scalar { text, plain: true } => text.parse::<u64>().ok(),
            _ => None,
        };
        match parsed {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                let found = node.as_scalar().map_or(node.kind().to_string(), |s| {
                    format!("`{}`", s.escape_debug())
                });
                self.error(
                    node.pos,
                    format!("{what}: expected an integer from {min} to {max}, found {found}"),
                );
                None
            }
        }
    }

    fn float(&mut self, node: &Node, what: &str, limit: f64) -> Option<f64> {
        let parsed = match &node.value {
            Value::Scalar { text, plain: true } => text.parse::<f64>().ok(),
            _ => None,
        };
        match parsed {
            Some(x) if x.is_finite() && x.abs() <= limit => Some(x),
            _ => {
                self.error(
                    node.pos,
                    format!("{what}: expected a number from -{limit} to {limit}"),
                );
                None
            }
        }
    }

    fn boolean(&mut self, node: &Node, what: &str) -> Option<bool> {
        if let Value::Scalar { text, plain: true } = &node.value {
            match text.as_str() {
                "true" | "True" | "TRUE" => return Some(true),
                "false" | "False" | "FALSE" => return Some(false),
                _ => {}
            }
        }
        self.error(
            node.pos,
            format!("{what}: expected true or false, found {}", node.kind()),
        );
        None
    }

    /// A list of names; a single scalar counts as a list of one.
    fn words(&mut self, node: &Node, what: &str) -> Option<Vec<String>> {
        let items: Vec<&Node> = match &node.value {
            Value::Seq(items) => items.iter().collect(),
            Value::Scalar { .. } if !node.is_null() => vec![node],
            _ => {
                self.error(
                    node.pos,
                    format!("{what}: expected a list of names, found {}", node.kind()),
                );
                return None;
            }
        };
        let mut out = Vec::new();
        for item in items {
            out.push(self.checked(item, what, checks::word)?);
        }
        if out.is_empty() {
            self.error(node.pos, format!("{what}: expected at least one name"));
            return None;
        }
        Some(out)
    }

    fn top(&mut self, root: &Node) {
        let Some(entries) = self.map(root, "the inventory") else {
            return;
        };
        let mut defaults_key: Option<&Node> = None;
        let mut groups_key: Option<&Node> = None;
        for (key, value) in entries {
            match key.as_scalar().unwrap_or_default() {
                name @ ("defaults" | "vars") => {
                    if let Some(first) = defaults_key {
                        let first_name = first.as_scalar().unwrap_or_default();
                        self.error(
                            key.pos,
                            format!(
                                "`{name}` repeats `{first_name}` (line {}); use one of them",
                                first.pos.line
                            ),
                        );
                        continue;
                    }
                    defaults_key = Some(key);
                    self.defaults = self.vars(value, false, "defaults");
                }
                name @ ("groups" | "children") => {
                    if let Some(first) = groups_key {
                        let first_name = first.as_scalar().unwrap_or_default();
                        self.error(
                            key.pos,
                            format!(
                                "`{name}` repeats `{first_name}` (line {}); use one of them",
                                first.pos.line
                            ),
                        );
                        continue;
                    }
                    groups_key = Some(key);
                    self.groups_of(value, &[]);
                }
                "hosts" => self.hosts_of(value, &[]),
                _ => self.unknown_key(key, TOP_KEYS, "the inventory"),
            }
        }
    }

    fn groups_of(&mut self, node: &Node, path: &[String]) {
        let Some(entries) = self.map(node, "groups") else {
            return;
        };
        for (key, body) in entries {
            let Some(name) = self.checked(key, "group name", checks::node_id) else {
                continue;
            };
            if let Some((first, _)) = self.groups.get(&name) {
                let first = *first;
                self.error(
                    key.pos,
                    format!(
                        "group `{name}` is defined twice (first at line {}, column {})",
                        first.line, first.column
                    ),
                );
                continue;
            }
            if path.contains(&name) {
                self.error(key.pos, format!("group `{name}` contains itself"));
                continue;
            }
            self.groups.insert(name.clone(), (key.pos, Vars::default()));
            self.group_order.push(name.clone());
            let mut inner = path.to_vec();
            inner.push(name.clone());
            let Some(group) = self.map(body, &format!("group `{name}`")) else {
                continue;
            };
            let mut nested_key: Option<&Node> = None;
            for (gkey, gvalue) in group {
                match gkey.as_scalar().unwrap_or_default() {
                    "vars" => {
                        let vars = self.vars(gvalue, false, &format!("the vars of group `{name}`"));
                        if let Some(entry) = self.groups.get_mut(&name) {
                            entry.1 = vars;
                        }
                    }
                    "hosts" => self.hosts_of(gvalue, &inner),
                    word @ ("children" | "groups") => {
                        if self.synonym_once(&mut nested_key, gkey, word, "; use one of them") {
                            self.groups_of(gvalue, &inner);
                        }
                    }
                    _ => self.unknown_key(gkey, GROUP_KEYS, &format!("group `{name}`")),
                }
            }
        }
    }

    fn hosts_of(&mut self, node: &Node, path: &[String]) {
        let Some(entries) = self.map(node, "hosts") else {
            return;
        };
        for (key, body) in entries {
            let Some(name) = self.checked(key, "host name", checks::node_id) else {
                continue;
            };
            let has_body = !body.is_null();
            let vars = if has_body {
                self.vars(body, true, &format!("host `{name}`"))
            } else {
                Vars::default()
            };
            let membership = path.to_vec();
            match self.hosts.iter().position(|h| h.name == name) {
                Some(idx) => {
                    let existing = &self.hosts[idx];
                    if has_body && existing.has_body {
                        let first = existing.pos;
                        self.error(
                            key.pos,
                            format!("host `{name}` is defined twice (first at line {}, column {}); list it by name alone in other groups", first.line, first.column),
                        );
                        continue;
                    }
                    let def = &mut self.hosts[idx];
                    if has_body {
                        def.has_body = true;
                        def.vars = vars;
                        def.pos = key.pos;
                    }
                    if !def.memberships.contains(&membership) {
                        def.memberships.push(membership);
                    }
                }
                None => self.hosts.push(HostDef {
                    name,
                    pos: key.pos,
                    has_body,
                    vars,
                    memberships: vec![membership],
                }),
            }
        }
    }

    fn vars(&mut self, node: &Node, host_level: bool, what: &str) -> Vars {
        let mut vars = Vars::default();
        let Some(entries) = self.map(node, what) else {
            return vars;
        };
        let mut region_key: Option<&Node> = None;
        for (key, value) in entries {
            let name = key.as_scalar().unwrap_or_default();
            if value.is_null() {
                continue;
            }
            let field = format!("`{name}` of {what}");
            let f = field.as_str();
            match name {
                "host" if host_level => {
                    vars.host = self.checked(value, f, checks::hostname).map(|v| At {
                        value: v,
                        pos: value.pos,
                    });
                }
                "node_id" if host_level => {
                    vars.node_id = self.checked(value, f, checks::node_id).map(|v| At {
                        value: v,
                        pos: value.pos,
                    });
                }
                "host_key" if host_level => {
                    vars.host_key = self.checked(value, f, checks::host_key);
                }
                "host" | "node_id" | "host_key" => {
                    self.error(
                        key.pos,
                        format!("`{name}` can only be set on a host, not in {what}"),
                    );
                }
                "port" => vars.port = self.integer(value, f, 1, 65535).map(|p| p as u16),
                "user" => vars.user = self.checked(value, f, checks::user),
                "key" => {
                    vars.key = self
                        .checked(value, f, checks::text)
                        .filter(|k| !k.is_empty())
                        .map(PathBuf::from);
                }
                "jump" => vars.jump = self.jump(value, f),
                "become" => vars.become_root = self.boolean(value, f),
                "install_dir" => vars.install_dir = self.checked(value, f, checks::install_dir),
                "coordinator" => vars.coordinator = self.checked(value, f, checks::https_url),
                "location" | "region" => {
                    if !self.synonym_once(&mut region_key, key, name, ": they mean the same") {
                        continue;
                    }
                    vars.location = self.checked(value, f, checks::word).map(|v| At {
                        value: v,
                        pos: value.pos,
                    });
                }
                "coordinates" => vars.coordinates = self.coordinates(value, f),
                "capabilities" => vars.capabilities = self.words(value, f),
                "llm" => vars.llm = self.llm(value, what),
                "max_workers" => {
                    vars.max_workers = self.integer(value, f, 1, MAX_WORKERS).map(|n| n as u32);
                }
                "specialization" => vars.specialization = self.checked(value, f, checks::text),
                "labels" => vars.labels = self.labels(value, f),
                _ => {
                    let mut known: Vec<&str> = Vec::new();
                    if host_level {
                        known.extend(HOST_ONLY_KEYS);
                    }
                    known.extend(SETTING_KEYS);
                    self.unknown_key(key, &known, what);
                }
            }
        }
        vars
    }

    fn jump(&mut self, node: &Node, what: &str) -> Option<Jump> {
        let text = self.string(node, what)?;
        let (user, rest) = match text.split_once('@') {
            Some((user, rest)) => (Some(user.to_string()), rest),
            None => (None, text.as_str()),
        };
        let (host, port) = match rest.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((host, tail)) => (host, tail.strip_prefix(':')),
                None => (rest, None),
            },
            None => match rest.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            },
        };
        let port = port.map(|p| p.parse::<u16>().ok().filter(|p| *p > 0));
        let ok = user.as_deref().is_none_or(|u| checks::user(u).is_ok())
            && checks::hostname(host).is_ok()
            && !matches!(port, Some(None));
        if !ok {
            self.error(
                node.pos,
                format!("{what}: expected a bastion as [user@]host[:port] with a valid user, host name and port; got `{}`", text.escape_debug()),
            );
            return None;
        }
        Some(Jump {
            user,
            host: host.to_string(),
            port: port.flatten(),
        })
    }

    fn coordinates(&mut self, node: &Node, what: &str) -> Option<(f64, f64)> {
        let expected = "expected {latitude: N, longitude: E} or [N, E]";
        match &node.value {
            Value::Seq(items) if items.len() == 2 => Some((
                self.float(&items[0], what, 90.0)?,
                self.float(&items[1], what, 180.0)?,
            )),
            Value::Map(entries) => {
                let (mut lat, mut lon) = (None, None);
                for (key, value) in entries {
                    match key.as_scalar().unwrap_or_default() {
                        "latitude" => lat = self.float(value, what, 90.0),
                        "longitude" => lon = self.float(value, what, 180.0),
                        _ => self.unknown_key(key, COORDINATE_KEYS, what),
                    }
                }
                match (lat, lon) {
                    (Some(lat), Some(lon)) => Some((lat, lon)),
                    _ => {
                        self.error(node.pos, format!("{what}: {expected}"));
                        None
                    }
                }
            }
            _ => {
                self.error(node.pos, format!("{what}: {expected}"));
                None
            }
        }
    }

    fn labels(&mut self, node: &Node, what: &str) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        let Some(entries) = self.map(node, what) else {
            return labels;
        };
        for (key, value) in entries {
            if let (Some(k), Some(v)) = (
                self.checked(key, what, checks::word),
                self.checked(value, what, checks::text),
            ) {
                labels.insert(k, v);
            }
        }
        labels
    }

    fn llm(&mut self, node: &Node, what: &str) -> LlmVars {
        let mut llm = LlmVars::default();
        let Some(entries) = self.map(node, &format!("`llm` of {what}")) else {
            return llm;
        };
        for (key, value) in entries {
            let name = key.as_scalar().unwrap_or_default();
            if value.is_null() {
                continue;
            }
            let field = format!("`llm.{name}` of {what}");
            let f = field.as_str();
            match name {
                "type" => {
                    let Some(text) = self.string(value, f) else {
                        continue;
                    };
                    match LLM_TYPES.iter().find(|(n, _)| *n == text) {
                        Some((_, kind)) => {
                            llm.kind = Some(At {
                                value: (text, *kind),
                                pos: value.pos,
                            });
                        }
                        None => {
                            let names: Vec<&str> = LLM_TYPES.iter().map(|(n, _)| *n).collect();
                            let hint = suggestion(&text, &names).unwrap_or_default();
                            self.error(
                                value.pos,
                                format!(
                                    "{f}: unknown LLM type `{}`{hint}; expected one of: {}",
                                    text.escape_debug(),
                                    names.join(", ")
                                ),
                            );
                        }
                    }
                }
                "endpoint" => {
                    llm.endpoint = self.checked(value, f, checks::http_url).map(|v| At {
                        value: v,
                        pos: value.pos,
                    });
                }
                "model" => {
                    llm.model = self.checked(value, f, checks::word).map(|v| At {
                        value: v,
                        pos: value.pos,
                    });
                }
                "models" => {
                    llm.models = self.words(value, f).map(|v| At {
                        value: v,
                        pos: value.pos,
                    });
                }
                "gpu" => llm.gpu = self.boolean(value, f),
                "api_key" => {
                    let Some(text) = self.string(value, f) else {
                        continue;
                    };
                    match checks::secret(&text) {
                        Ok(secret) => llm.api_key = Some(secret),
                        Err(expected) => self.error(value.pos, format!("{f}: {expected}")),
                    }
                }
                _ => self.unknown_key(key, LLM_KEYS, &format!("`llm` of {what}")),
            }
        }
        llm
    }

    /// Each host's settings resolved, then the checks that span fields and hosts.
    fn resolve(&mut self, file: &Path) -> Inventory {
        let mut hosts = Vec::new();
        let mut groups: BTreeMap<String, Vec<String>> = self
            .group_order
            .iter()
            .map(|g| (g.clone(), Vec::new()))
            .collect();
        let defs = std::mem::take(&mut self.hosts);
        for def in &defs {
            let mut vars = self.defaults.clone();
            let mut applied: Vec<&str> = Vec::new();
            for path in &def.memberships {
                for group in path {
                    if applied.contains(&group.as_str()) {
                        continue;
                    }
                    applied.push(group);
                    if let Some((_, group_vars)) = self.groups.get(group) {
                        vars.overlay(group_vars);
                    }
                    if let Some(members) = groups.get_mut(group) {
                        members.push(def.name.clone());
                    }
                }
            }
            vars.overlay(&def.vars);
            if let Some(host) = self.host(def, vars, applied) {
                hosts.push(host);
            }
        }
        if let Some((name, (pos, _))) = self
            .groups
            .iter()
            .find(|(name, _)| defs.iter().any(|d| &d.name == *name))
        {
            let (name, pos) = (name.clone(), *pos);
            self.error(
                pos,
                format!("group `{name}` has the name of a host; --limit could not tell them apart"),
            );
        }
        self.fleet_checks(&hosts);
        Inventory {
            file: file.to_path_buf(),
            hosts,
            groups,
        }
    }

    fn host(&mut self, def: &HostDef, vars: Vars, groups: Vec<&str>) -> Option<Host> {
        let name = &def.name;
        let host = match vars.host {
            Some(host) => host.value,
            None => match checks::hostname(name) {
                Ok(()) => name.clone(),
                Err(expected) => {
                    self.error(
                        def.pos,
                        format!("host `{name}` has no `host:` and its name is not a host name: {expected}"),
                    );
                    return None;
                }
            },
        };
        let node_id = vars.node_id.map_or_else(|| name.clone(), |n| n.value);
        let mut missing = |what: &str, hint: &str| {
            self.diags.push(Diagnostic::new(
                def.pos,
                format!("host `{name}` has no `{what}`: {hint} (set it on the host, one of its groups or defaults)"),
            ));
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
                self.error(
                    pos,
                    format!("host `{name}`: LLM type `{type_name}` needs `llm.endpoint`, the server's URL, e.g. http://127.0.0.1:8000"),
                );
                return None;
            }
        };
        if let (Some(model), Some(_)) = (&vars.llm.model, &vars.llm.models) {
            self.error(
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

    fn fleet_checks(&mut self, hosts: &[Host]) {
        let mut node_ids: HashMap<&str, &Host> = HashMap::new();
        let mut places: HashMap<(String, u16, &str), &Host> = HashMap::new();
        for host in hosts {
            if let Some(first) = node_ids.insert(&host.node.node_id, host) {
                self.diags.push(Diagnostic::new(
                    host.pos,
                    format!(
                        "duplicate node id `{}`: host `{}` has it too (line {}, column {}); node ids must be unique",
                        host.node.node_id, first.name, first.pos.line, first.pos.column
                    ),
                ));
            }
            let place = (
                host.ssh.host.to_ascii_lowercase(),
                host.ssh.port,
                host.install_dir.as_str(),
            );
            if let Some(first) = places.insert(place, host) {
                self.diags.push(Diagnostic::new(
                    host.pos,
                    format!(
                        "host `{}` installs to the same place as `{}` (line {}): {}:{} {}; give one of them another install_dir",
                        host.name, first.name, first.pos.line, host.ssh.host, host.ssh.port, host.install_dir
                    ),
                ));
            }
        }
    }
}
