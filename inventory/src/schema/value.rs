//! Reading one YAML node as the value its key expects (a mapping, a string
//! passing one of the [`checks`], an integer or a number in a range, a
//! boolean, a list of names, a bastion, coordinates, labels), reporting what
//! was expected, and where, when it is not.

use std::collections::BTreeMap;

use super::{COORDINATE_KEYS, Walk};
use crate::checks;
use crate::model::Jump;
use crate::raw::At;
use crate::yaml::{Node, Value};

/// `value`, read from `node`, with the position of `node`.
pub(super) fn at<T>(node: &Node, value: Option<T>) -> Option<At<T>> {
    value.map(|value| At {
        value,
        pos: node.pos,
    })
}

/// The text of a plain scalar: only these are read as numbers and booleans
/// (`"22"` stays text).
fn plain(node: &Node) -> Option<&str> {
    match &node.value {
        Value::Scalar { text, plain: true } => Some(text),
        _ => None,
    }
}

impl Walk<'_> {
    pub(super) fn map<'a>(&mut self, node: &'a Node, what: &str) -> Option<&'a [(Node, Node)]> {
        match &node.value {
            Value::Map(entries) => Some(entries),
            _ if node.is_null() => Some(&[]),
            _ => {
                self.problems.report(
                    node.pos,
                    format!("{what}: expected a mapping, found {}", node.kind()),
                );
                None
            }
        }
    }

    pub(super) fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.value {
            Value::Scalar { text, .. } if !node.is_null() => Some(text.clone()),
            _ => {
                self.problems.report(
                    node.pos,
                    format!("{what}: expected a string, found {}", node.kind()),
                );
                None
            }
        }
    }

    /// A string that passes `check`.
    pub(super) fn checked(
        &mut self,
        node: &Node,
        what: &str,
        check: fn(&str) -> Result<(), String>,
    ) -> Option<String> {
        let value = self.string(node, what)?;
        match check(&value) {
            Ok(()) => Some(value),
            Err(expected) => {
                self.problems
                    .report(node.pos, format!("{what}: {expected}"));
                None
            }
        }
    }

    pub(super) fn integer(&mut self, node: &Node, what: &str, min: u64, max: u64) -> Option<u64> {
        match plain(node).and_then(|text| text.parse::<u64>().ok()) {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                let found = node.as_scalar().map_or(node.kind().to_string(), |s| {
                    format!("`{}`", s.escape_debug())
                });
                self.problems.report(
                    node.pos,
                    format!("{what}: expected an integer from {min} to {max}, found {found}"),
                );
                None
            }
        }
    }

    fn float(&mut self, node: &Node, what: &str, limit: f64) -> Option<f64> {
        match plain(node).and_then(|text| text.parse::<f64>().ok()) {
            Some(x) if x.is_finite() && x.abs() <= limit => Some(x),
            _ => {
                self.problems.report(
                    node.pos,
                    format!("{what}: expected a number from -{limit} to {limit}"),
                );
                None
            }
        }
    }

    pub(super) fn boolean(&mut self, node: &Node, what: &str) -> Option<bool> {
        match plain(node) {
            Some("true" | "True" | "TRUE") => return Some(true),
            Some("false" | "False" | "FALSE") => return Some(false),
            _ => {}
        }
        self.problems.report(
            node.pos,
            format!("{what}: expected true or false, found {}", node.kind()),
        );
        None
    }

    /// A list of names; a single scalar counts as a list of one.
    pub(super) fn words(&mut self, node: &Node, what: &str) -> Option<Vec<String>> {
        let items: Vec<&Node> = match &node.value {
            Value::Seq(items) => items.iter().collect(),
            Value::Scalar { .. } if !node.is_null() => vec![node],
            _ => {
                self.problems.report(
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
            self.problems
                .report(node.pos, format!("{what}: expected at least one name"));
            return None;
        }
        Some(out)
    }

    /// A bastion, `[user@]host[:port]`.
    pub(super) fn jump(&mut self, node: &Node, what: &str) -> Option<Jump> {
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
            self.problems.report(
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

    /// (latitude, longitude), as a mapping or a pair.
    pub(super) fn coordinates(&mut self, node: &Node, what: &str) -> Option<(f64, f64)> {
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
                        self.problems
                            .report(node.pos, format!("{what}: {expected}"));
                        None
                    }
                }
            }
            _ => {
                self.problems
                    .report(node.pos, format!("{what}: {expected}"));
                None
            }
        }
    }

    pub(super) fn labels(&mut self, node: &Node, what: &str) -> BTreeMap<String, String> {
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
}
