//! The schema layer: which keys may stand where (the top level, a group, the
//! settings of defaults, groups and hosts, `llm`, `coordinates`), and one walk
//! over the YAML tree that checks every key against them and reads every value
//! into the inventory as written ([`Raw`]), reporting each problem where it is.

use std::path::PathBuf;

use crate::checks;
use crate::error::Problems;
use crate::model::LLM_TYPES;
use crate::raw::{At, GroupDef, HostDef, LlmVars, Raw, Vars};
use crate::yaml::Node;

mod pools;
mod value;

use value::at;

/// Most workers an agent may be given.
const MAX_WORKERS: u64 = 1024;

/// Keys of the top level.
const TOP_KEYS: &[&str] = &["defaults", "vars", "groups", "children", "hosts", "pools"];
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

/// Walks the tree `root` into the inventory as written, reporting every
/// problem to `problems`.
pub(crate) fn read(root: &Node, problems: &mut Problems) -> Raw {
    let mut walk = Walk {
        problems,
        raw: Raw::default(),
    };
    walk.top(root);
    walk.raw
}

/// One walk over the tree: what it has read so far, and where problems go.
struct Walk<'p> {
    problems: &'p mut Problems,
    raw: Raw,
}

/// What to say after an unknown `name`: the closest of `known` within two
/// edits (`did you mean`), then all of them.
fn one_of(name: &str, known: &[&str]) -> String {
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
    let hint = known
        .iter()
        .map(|k| (distance(name, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default();
    format!("{hint}; expected one of: {}", known.join(", "))
}

impl Walk<'_> {
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
            self.problems.report(
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
        self.problems.report(
            key.pos,
            format!("unknown key `{name}` in {what}{}", one_of(name, known)),
        );
    }

    /// The entries of the settings mapping `node` that say something, each
    /// with its key's name: a key with no value (`port:`, `port: ~`) sets
    /// nothing, so it overrides nothing.
    fn settings<'a>(
        &mut self,
        node: &'a Node,
        what: &str,
    ) -> impl Iterator<Item = (&'a Node, &'a str, &'a Node)> + use<'a> {
        self.map(node, what)
            .unwrap_or_default()
            .iter()
            .filter(|(_, value)| !value.is_null())
            .map(|(key, value)| (key, key.as_scalar().unwrap_or_default(), value))
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
                    if self.synonym_once(&mut defaults_key, key, name, "; use one of them") {
                        self.raw.defaults = self.vars(value, false, "defaults");
                    }
                }
                name @ ("groups" | "children") => {
                    if self.synonym_once(&mut groups_key, key, name, "; use one of them") {
                        self.groups_of(value, &[]);
                    }
                }
                "hosts" => self.hosts_of(value, &[]),
                "pools" => self.pools(value),
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
            if let Some(first) = self.raw.groups.get(&name) {
                let first = first.pos;
                self.problems.report(
                    key.pos,
                    format!(
                        "group `{name}` is defined twice (first at line {}, column {})",
                        first.line, first.column
                    ),
                );
                continue;
            }
            if path.contains(&name) {
                self.problems
                    .report(key.pos, format!("group `{name}` contains itself"));
                continue;
            }
            self.raw.groups.insert(
                name.clone(),
                GroupDef {
                    pos: key.pos,
                    vars: Vars::default(),
                },
            );
            self.raw.group_order.push(name.clone());
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
                        if let Some(group) = self.raw.groups.get_mut(&name) {
                            group.vars = vars;
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
            match self.raw.hosts.iter().position(|h| h.name == name) {
                Some(idx) => {
                    let existing = &self.raw.hosts[idx];
                    if has_body && existing.has_body {
                        let first = existing.pos;
                        self.problems.report(
                            key.pos,
                            format!("host `{name}` is defined twice (first at line {}, column {}); list it by name alone in other groups", first.line, first.column),
                        );
                        continue;
                    }
                    let def = &mut self.raw.hosts[idx];
                    if has_body {
                        def.has_body = true;
                        def.vars = vars;
                        def.pos = key.pos;
                    }
                    if !def.memberships.contains(&membership) {
                        def.memberships.push(membership);
                    }
                }
                None => self.raw.hosts.push(HostDef {
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
        let mut region_key: Option<&Node> = None;
        for (key, name, value) in self.settings(node, what) {
            let field = format!("`{name}` of {what}");
            let f = field.as_str();
            match name {
                "host" if host_level => {
                    vars.host = at(value, self.checked(value, f, checks::hostname));
                }
                "node_id" if host_level => {
                    vars.node_id = at(value, self.checked(value, f, checks::node_id));
                }
                "host_key" if host_level => {
                    vars.host_key = self.checked(value, f, checks::host_key);
                }
                "host" | "node_id" | "host_key" => {
                    self.problems.report(
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
                "coordinator" => vars.coordinator = self.checked(value, f, checks::https_urls),
                "location" | "region" => {
                    if !self.synonym_once(&mut region_key, key, name, ": they mean the same") {
                        continue;
                    }
                    vars.location = at(value, self.checked(value, f, checks::word));
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

    fn llm(&mut self, node: &Node, what: &str) -> LlmVars {
        let mut llm = LlmVars::default();
        for (key, name, value) in self.settings(node, &format!("`llm` of {what}")) {
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
                            self.problems.report(
                                value.pos,
                                format!(
                                    "{f}: unknown LLM type `{}`{}",
                                    text.escape_debug(),
                                    one_of(&text, &names)
                                ),
                            );
                        }
                    }
                }
                "endpoint" => llm.endpoint = at(value, self.checked(value, f, checks::http_url)),
                "model" => llm.model = at(value, self.checked(value, f, checks::word)),
                "models" => llm.models = at(value, self.words(value, f)),
                "gpu" => llm.gpu = self.boolean(value, f),
                "api_key" => {
                    let Some(text) = self.string(value, f) else {
                        continue;
                    };
                    match checks::secret(&text) {
                        Ok(secret) => llm.api_key = Some(secret),
                        Err(expected) => {
                            self.problems.report(value.pos, format!("{f}: {expected}"))
                        }
                    }
                }
                _ => self.unknown_key(key, LLM_KEYS, &format!("`llm` of {what}")),
            }
        }
        llm
    }
}
