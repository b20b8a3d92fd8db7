//! Reading `pools:`, the autoscaler's pools of standby capacity: a list of
//! mappings, each with a name, `min`/`max`, its hosts or its start/stop
//! commands, the work it serves and its timings.
//!
//! ```yaml
//! pools:
//!   - name: gpu-burst
//!     min: 0
//!     max: 2
//!     hosts: [gpu-03, gpu-04]
//!     kind: code_generation
//!     idle_after: 5m
//!     cooldown: 2m
//! ```

use std::time::Duration;

use super::Walk;
use crate::checks;
use crate::model::{DEFAULT_COOLDOWN, DEFAULT_IDLE_AFTER, Pool, PoolProvider};
use crate::raw::{At, PoolDef};
use crate::yaml::{Node, Value};

/// Keys of a pool.
const POOL_KEYS: &[&str] = &[
    "name",
    "min",
    "max",
    "hosts",
    "command",
    "kind",
    "region",
    "model",
    "slots",
    "idle_after",
    "cooldown",
];
/// Keys of a pool's `command`.
const COMMAND_KEYS: &[&str] = &["start", "stop"];
/// Most hosts a pool may scale to.
const MAX_POOL_HOSTS: u64 = 1000;
/// Longest `idle_after` or `cooldown`: a day.
const MAX_POOL_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Longest start or stop command.
const MAX_COMMAND: usize = 4096;

/// `90s`, `5m`, `1h`, `500ms` or plain seconds.
fn duration(text: &str) -> Option<Duration> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let ms = match unit {
        "ms" => n,
        "" | "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

impl Walk<'_> {
    pub(super) fn pools(&mut self, node: &Node) {
        let Value::Seq(items) = &node.value else {
            if !node.is_null() {
                self.problems.report(
                    node.pos,
                    format!("pools: expected a list of pools, found {}", node.kind()),
                );
            }
            return;
        };
        for item in items {
            if let Some(def) = self.pool(item) {
                if let Some(first) = self.raw.pools.iter().find(|p| p.pool.name == def.pool.name) {
                    let line = first.pool.pos.line;
                    self.problems.report(
                        def.pool.pos,
                        format!(
                            "pool `{}` is defined twice (first at line {line})",
                            def.pool.name
                        ),
                    );
                    continue;
                }
                self.raw.pools.push(def);
            }
        }
    }

    fn pool_duration(&mut self, node: &Node, what: &str) -> Option<Duration> {
        let text = self.string(node, what)?;
        match duration(&text).filter(|d| *d <= MAX_POOL_DURATION) {
            Some(d) => Some(d),
            None => {
                self.problems.report(
                    node.pos,
                    format!(
                        "{what}: expected a duration up to 24h such as 90s, 5m or 1h, got `{}`",
                        text.escape_debug()
                    ),
                );
                None
            }
        }
    }

    fn pool(&mut self, node: &Node) -> Option<PoolDef> {
        let entries = self.map(node, "a pool")?;
        let mut name = None;
        let (mut min, mut max, mut min_pos) = (None, None, node.pos);
        let (mut hosts, mut command, mut slots) = (None::<Vec<At<String>>>, None, None);
        let (mut kind, mut region, mut model) = (None, None, None);
        let (mut idle_after, mut cooldown) = (None, None);
        let mut ok = true;
        for (key, value) in entries {
            let word = key.as_scalar().unwrap_or_default();
            let field = format!("`{word}` of a pool");
            let f = field.as_str();
            match word {
                "name" => name = self.checked(value, f, checks::node_id),
                "min" => {
                    min_pos = value.pos;
                    min = self.integer(value, f, 0, MAX_POOL_HOSTS);
                }
                "max" => max = self.integer(value, f, 1, MAX_POOL_HOSTS),
                "hosts" => {
                    let items: Vec<&Node> = match &value.value {
                        Value::Seq(items) => items.iter().collect(),
                        _ => {
                            self.problems.report(
                                value.pos,
                                format!(
                                    "{f}: expected a list of host names, found {}",
                                    value.kind()
                                ),
                            );
                            ok = false;
                            continue;
                        }
                    };
                    let mut names = Vec::new();
                    for item in items {
                        match self.checked(item, f, checks::node_id) {
                            Some(host) => names.push(At {
                                value: host,
                                pos: item.pos,
                            }),
                            None => ok = false,
                        }
                    }
                    hosts = Some(names);
                }
                "command" => {
                    command = self.pool_command(value);
                    ok &= command.is_some();
                }
                "kind" => kind = self.checked(value, f, checks::word),
                "region" => region = self.checked(value, f, checks::word),
                "model" => model = self.checked(value, f, checks::word),
                "slots" => slots = self.integer(value, f, 1, 1024).map(|n| n as u32),
                "idle_after" => idle_after = self.pool_duration(value, f),
                "cooldown" => cooldown = self.pool_duration(value, f),
                _ => self.unknown_key(key, POOL_KEYS, "a pool"),
            }
        }
        let Some(name) = name else {
            self.problems.report(
                node.pos,
                "a pool has no `name`: give each pool a name, e.g. gpu-burst",
            );
            return None;
        };
        let Some(max) = max else {
            self.problems.report(
                node.pos,
                format!("pool `{name}` has no `max`: the most hosts it may run"),
            );
            return None;
        };
        let min = min.unwrap_or(0);
        if min > max {
            self.problems.report(
                min_pos,
                format!("pool `{name}`: min {min} is more than max {max}"),
            );
            return None;
        }
        let (provider, host_refs) = match (hosts, command) {
            (Some(_), Some(_)) => {
                self.problems.report(
                    node.pos,
                    format!("pool `{name}` has both `hosts` and `command`; give one of them"),
                );
                return None;
            }
            (None, None) => {
                if ok {
                    self.problems.report(
                        node.pos,
                        format!("pool `{name}` has neither `hosts` (standby hosts of the inventory) nor `command` (start/stop scripts)"),
                    );
                }
                return None;
            }
            (Some(hosts), None) if (hosts.len() as u64) < max => {
                self.problems.report(
                    node.pos,
                    format!(
                        "pool `{name}`: max {max} but only {} hosts listed",
                        hosts.len()
                    ),
                );
                return None;
            }
            (Some(hosts), None) => (
                PoolProvider::Hosts(hosts.iter().map(|h| h.value.clone()).collect()),
                hosts,
            ),
            (None, Some(command)) => (command, Vec::new()),
        };
        ok.then(|| PoolDef {
            pool: Pool {
                name,
                pos: node.pos,
                min: min as u32,
                max: max as u32,
                provider,
                kind,
                region,
                model,
                slots,
                idle_after: idle_after.unwrap_or(DEFAULT_IDLE_AFTER),
                cooldown: cooldown.unwrap_or(DEFAULT_COOLDOWN),
            },
            host_refs,
        })
    }

    fn pool_command(&mut self, node: &Node) -> Option<PoolProvider> {
        let entries = self.map(node, "`command` of a pool")?;
        let (mut start, mut stop) = (None, None);
        for (key, value) in entries {
            let word = key.as_scalar().unwrap_or_default();
            let f = format!("`command.{word}` of a pool");
            let script = match word {
                "start" | "stop" => match self.string(value, &f) {
                    Some(s)
                        if !s.trim().is_empty() && s.len() <= MAX_COMMAND && !s.contains('\0') =>
                    {
                        s
                    }
                    Some(_) => {
                        self.problems.report(
                            value.pos,
                            format!("{f}: expected a shell command of 1 to {MAX_COMMAND} bytes"),
                        );
                        continue;
                    }
                    None => continue,
                },
                _ => {
                    self.unknown_key(key, COMMAND_KEYS, "`command` of a pool");
                    continue;
                }
            };
            if word == "start" {
                start = Some(script);
            } else {
                stop = Some(script);
            }
        }
        match (start, stop) {
            (Some(start), Some(stop)) => Some(PoolProvider::Command { start, stop }),
            _ => {
                self.problems.report(
                    node.pos,
                    "`command` of a pool: expected both `start` and `stop`",
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::duration;
    use std::time::Duration;

    #[test]
    fn durations_read_with_their_units() {
        assert_eq!(duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(duration("5 m"), None);
        assert_eq!(duration("m"), None);
        assert_eq!(duration("-1s"), None);
    }
}
