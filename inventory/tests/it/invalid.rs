//! Every kind of mistake gives `file:line:column: what was expected`.

use std::path::Path;

use kobo_inventory::{InventoryError, parse};

/// The one-line messages of an invalid inventory.
fn problems(text: &str) -> Vec<String> {
    match parse(Path::new("fleet.yaml"), text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(err @ InventoryError::Invalid { .. }) => err
            .to_string()
            .lines()
            .skip(1)
            .map(str::to_string)
            .collect(),
        Err(other) => panic!("unexpected error {other}"),
    }
}

/// Asserts exactly one problem, at the first occurrence of `at` in `text`,
/// mentioning every `needle`.
fn assert_one(text: &str, at: &str, needles: &[&str]) {
    let found = problems(text);
    assert_eq!(found.len(), 1, "{found:#?}");
    let line = &found[0];
    assert!(
        line.starts_with(&format!("fleet.yaml:{}: ", place(text, at))),
        "{line}"
    );
    for needle in needles {
        assert!(line.contains(needle), "{line:?} lacks {needle:?}");
    }
}

/// `line:column` (1-based) of the first occurrence of `needle`.
fn place(text: &str, needle: &str) -> String {
    let offset = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in {text:?}"));
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .unwrap_or_default()
        .chars()
        .count()
        + 1;
    format!("{line}:{column}")
}

const OK_HOST: &str = "location: r, capabilities: [q]";

#[test]
fn unknown_keys_are_named_with_what_was_expected() {
    assert_one(
        &format!("hosts:\n  a: {{host: 10.0.0.1, {OK_HOST}, prot: 22}}\n"),
        "prot",
        &[
            "unknown key `prot`",
            "did you mean `port`",
            "expected one of: host, node_id",
        ],
    );
    assert_one(
        "hostz: {}\n",
        "hostz",
        &["unknown key `hostz`", "expected one of: defaults"],
    );
    assert_one(
        &format!("hosts:\n  a:\n    {OK_HOST_BLOCK}\n    llm: {{type: ollama, modle: x}}\n"),
        "modle",
        &["unknown key `modle`", "did you mean `model`"],
    );
    assert_one(
        "groups:\n  g:\n    vars: {node_id: x}\n    hosts: {}\n",
        "node_id",
        &["`node_id` can only be set on a host"],
    );
}

const OK_HOST_BLOCK: &str = "location: r\n    capabilities: [q]";

#[test]
fn duplicate_node_ids_point_at_both_hosts() {
    let text = format!(
        "defaults: {{{OK_HOST}}}\nhosts:\n  a: {{host: 10.0.0.1, node_id: n1}}\n  b: {{host: 10.0.0.2, node_id: n1}}\n"
    );
    assert_one(
        &text,
        "b:",
        &[
            "duplicate node id `n1`",
            "host `a` has it too (line 3, column 3)",
        ],
    );
}

#[test]
fn bad_host_names_are_refused_before_ssh_sees_them() {
    for host in [
        "-oProxyCommand=touch_x",
        "\"a;reboot\"",
        "\"$(id)\"",
        "under_score.example",
    ] {
        assert_one(
            &format!("defaults: {{{OK_HOST}}}\nhosts:\n  a: {{host: {host}}}\n"),
            host,
            &["expected a DNS name (RFC 1123"],
        );
    }
}

#[test]
fn bad_ports_say_the_range() {
    for port in ["0", "65536", "ssh", "\"22\"", "-1"] {
        assert_one(
            &format!("defaults: {{{OK_HOST}}}\nhosts:\n  a: {{host: h, port: {port}}}\n"),
            &format!("port: {port}")[6..],
            &["expected an integer from 1 to 65535"],
        );
    }
}

#[test]
fn unknown_llm_types_list_the_known_ones() {
    assert_one(
        &format!("defaults: {{{OK_HOST}}}\nhosts:\n  a: {{llm: {{type: olama}}}}\n"),
        "olama",
        &[
            "unknown LLM type `olama`",
            "did you mean `ollama`",
            "expected one of: ollama, openai",
        ],
    );
}

#[test]
fn inline_secrets_are_refused() {
    assert_one(
        &format!(
            "defaults: {{{OK_HOST}}}\nhosts:\n  a: {{llm: {{type: openai, endpoint: 'http://x:1', api_key: sk-123}}}}\n"
        ),
        "sk-123",
        &["never written inline", "env:NAME or file:PATH"],
    );
}

#[test]
fn missing_settings_duplicates_and_yaml_errors_have_positions() {
    assert_one(
        "hosts:\n  a: {host: 10.0.0.1, capabilities: [q]}\n",
        "a:",
        &["has no `location`"],
    );
    assert_one(
        &format!("hosts:\n  a: {{{OK_HOST}}}\n  a: {{location: r2, capabilities: [q]}}\n"),
        "a: {location: r2",
        &["duplicate key `a` (first at line 2, column 3)"],
    );
    assert_one("hosts: [a, b\n}\n", "}", &["not valid YAML"]);
    assert_one(
        &format!(
            "defaults: {{{OK_HOST}}}\nhosts:\n  a: {{host: 10.0.0.1, install_dir: /opt/../etc}}\n"
        ),
        "/opt/..",
        &["expected an absolute directory"],
    );
    assert_one(
        &format!("defaults: {{{OK_HOST}}}\nhosts:\n  a: {{llm: {{type: vllm}}}}\n"),
        "vllm",
        &["needs `llm.endpoint`"],
    );
    assert_one(
        &format!(
            "defaults: {{{OK_HOST}}}\nhosts:\n  a: {{host: 10.0.0.1}}\n  b: {{host: 10.0.0.1}}\n"
        ),
        "b:",
        &["installs to the same place as `a`"],
    );
}

#[test]
fn every_problem_is_reported_at_once_in_file_order() {
    let found = problems(
        "hosts:\n  a: {host: -x, port: 0, location: r, capabilities: [q]}\n  b: {location: r, capabilities: [q], max_workers: 0}\n",
    );
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(found[0].starts_with("fleet.yaml:2:"), "{found:#?}");
    assert!(found[2].starts_with("fleet.yaml:3:"), "{found:#?}");
}

const POOL_HOSTS: &str = "hosts:\n  a: {host: 10.0.0.1, location: r, capabilities: [q]}\n  b: {host: 10.0.0.2, location: r, capabilities: [q]}\n";

#[test]
fn pools_name_the_line_of_each_mistake() {
    assert_one(
        &format!("{POOL_HOSTS}pools:\n  - {{name: p, min: 3, max: 2, hosts: [a, b]}}\n"),
        "3, max",
        &["pool `p`", "min 3 is more than max 2"],
    );
    assert_one(
        &format!("{POOL_HOSTS}pools:\n  - {{name: p, max: 2, hosts: [a, nope]}}\n"),
        "nope",
        &["pool `p` names host `nope`", "not in the inventory"],
    );
    assert_one(
        &format!(
            "{POOL_HOSTS}pools:\n  - {{name: p, max: 1, hosts: [a]}}\n  - {{name: q, max: 1, hosts: [b, a ]}}\n"
        ),
        "a ]",
        &["host `a` is in pool `p` and pool `q`"],
    );
    assert_one(
        &format!("{POOL_HOSTS}pools:\n  - {{name: p, max: 3, hosts: [a, b]}}\n"),
        "{name: p",
        &["max 3 but only 2 hosts"],
    );
    assert_one(
        &format!("{POOL_HOSTS}pools:\n  - {{name: p, max: 1, hosts: [a], idle_after: soon}}\n"),
        "soon",
        &["idle_after", "expected a duration"],
    );
    assert_one(
        &format!("{POOL_HOSTS}pools:\n  - {{name: p, max: 1, command: {{start: up}}}}\n"),
        "{start",
        &["both `start` and `stop`"],
    );
    assert_one(
        &format!("{POOL_HOSTS}pools:\n  - {{name: p, max: 1, hosts: [a], colldown: 1m}}\n"),
        "colldown",
        &["unknown key `colldown`", "did you mean `cooldown`"],
    );
    assert_one(
        &format!("{POOL_HOSTS}pools:\n  - {{name: p, max: 1}}\n"),
        "{name: p",
        &["neither `hosts`", "nor `command`"],
    );
}
