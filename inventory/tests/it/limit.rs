//! `--limit`: hosts, groups, globs, labels, exclusions.

use std::path::Path;

use kobo_inventory::{InventoryError, parse, select};

const TEXT: &str = r#"
defaults: {location: r, capabilities: [q]}
groups:
  japan:
    hosts:
      tokyo-01: {host: 10.0.0.1, labels: {tier: gpu}}
      osaka-01: {host: 10.0.0.2}
hosts:
  london-01: {host: 10.0.0.3, labels: {tier: gpu}}
"#;

fn names(limit: Option<&str>) -> Vec<String> {
    let inventory = parse(Path::new("t.yaml"), TEXT).unwrap();
    select(&inventory, limit)
        .unwrap()
        .iter()
        .map(|h| h.name.clone())
        .collect()
}

#[test]
fn limits_select_hosts_groups_globs_and_labels() {
    assert_eq!(names(None), ["tokyo-01", "osaka-01", "london-01"]);
    assert_eq!(names(Some("london-01")), ["london-01"]);
    assert_eq!(names(Some("japan")), ["tokyo-01", "osaka-01"]);
    assert_eq!(names(Some("*-01,!osaka-01")), ["tokyo-01", "london-01"]);
    assert_eq!(names(Some("jap*")), ["tokyo-01", "osaka-01"]);
    assert_eq!(names(Some("tier=gpu")), ["tokyo-01", "london-01"]);
    assert_eq!(names(Some("!japan")), ["london-01"]);
}

#[test]
fn a_limit_that_matches_nothing_is_an_error() {
    let inventory = parse(Path::new("t.yaml"), TEXT).unwrap();
    let err = select(&inventory, Some("japan,paris-01")).unwrap_err();
    assert!(
        matches!(err, InventoryError::LimitMatchesNothing { ref pattern } if pattern == "paris-01")
    );
    assert!(err.to_string().contains("paris-01"));
}
