//! `--limit host,group,glob`: which hosts of the inventory a run touches.
//! Each comma-separated pattern is a host name, a group name (all its
//! hosts), a glob with `*` and `?` over host and group names, or a label
//! `key=value`; a leading `!` excludes what the pattern matches.

use crate::error::InventoryError;
use crate::model::{Host, Inventory};

/// The hosts `limit` selects, in inventory order (all of them without a limit).
pub fn select<'a>(
    inventory: &'a Inventory,
    limit: Option<&str>,
) -> Result<Vec<&'a Host>, InventoryError> {
    let Some(limit) = limit.map(str::trim).filter(|l| !l.is_empty()) else {
        return Ok(inventory.hosts.iter().collect());
    };
    let patterns: Vec<&str> = limit
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let any_positive = patterns.iter().any(|p| !p.starts_with('!'));
    let mut chosen: Vec<bool> = vec![!any_positive; inventory.hosts.len()];
    for pattern in patterns {
        let (exclude, pattern) = match pattern.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, pattern),
        };
        let mut matched = false;
        for (idx, host) in inventory.hosts.iter().enumerate() {
            if matches(inventory, host, pattern) {
                matched = true;
                chosen[idx] = !exclude;
            }
        }
        if !matched {
            return Err(InventoryError::LimitMatchesNothing {
                pattern: pattern.to_string(),
            });
        }
    }
    Ok(inventory
        .hosts
        .iter()
        .zip(chosen)
        .filter_map(|(host, chosen)| chosen.then_some(host))
        .collect())
}

fn matches(inventory: &Inventory, host: &Host, pattern: &str) -> bool {
    if let Some((key, value)) = pattern.split_once('=') {
        return host.node.labels.get(key).is_some_and(|v| v == value);
    }
    let in_group = |group: &str| {
        inventory
            .groups
            .get(group)
            .is_some_and(|members| members.contains(&host.name))
    };
    if pattern.contains(['*', '?']) {
        return glob(pattern, &host.name)
            || glob(pattern, &host.node.node_id)
            || inventory
                .groups
                .keys()
                .any(|g| glob(pattern, g) && in_group(g));
    }
    host.name == pattern || host.node.node_id == pattern || in_group(pattern)
}

/// `*` is any run of characters, `?` any one character.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn globs_match_like_a_shell() {
        assert!(glob("tokyo-*", "tokyo-01"));
        assert!(glob("*-0?", "osaka-01"));
        assert!(glob("*", ""));
        assert!(!glob("tokyo-*", "osaka-01"));
        assert!(!glob("a?", "a"));
        assert!(glob("a*b*c", "axxbyyc"));
    }
}
