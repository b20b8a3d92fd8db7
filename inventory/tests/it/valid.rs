//! Inventories that load, and how their settings resolve.

use std::path::Path;

use kobo_inventory::{LlmKind, SecretRef, load, parse};

fn example() -> kobo_inventory::Inventory {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/inventory.yaml");
    load(&path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_shipped_example_holds_the_seeds_three_nodes() {
    let inventory = example();
    let names: Vec<&str> = inventory.hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["tokyo-01", "osaka-01", "london-01"]);

    let tokyo = inventory.host("tokyo-01").unwrap();
    assert_eq!(tokyo.node.location, "ap-northeast-1");
    assert_eq!(
        tokyo.node.capabilities,
        ["code_generation", "heavy_computation"]
    );
    assert_eq!(tokyo.node.llm.kind, LlmKind::Ollama);
    assert_eq!(tokyo.node.llm.model.as_deref(), Some("gpt-oss:20b"));
    assert!(tokyo.node.llm.gpu);
    assert_eq!(tokyo.node.max_workers, 8);
    assert_eq!(tokyo.node.coordinates, Some((35.68, 139.69)));
    assert_eq!(tokyo.node.specialization.as_deref(), Some("コード生成特化"));
    // defaults reach every host
    assert_eq!(tokyo.ssh.user.as_deref(), Some("deploy"));
    assert!(tokyo.ssh.become_root);
    assert_eq!(tokyo.install_dir, "/opt/kobo");
    assert_eq!(
        tokyo.coordinator.as_deref(),
        Some("https://coord.example.net:7443")
    );
    assert_eq!(tokyo.groups, ["japan"]);

    let osaka = inventory.host("osaka-01").unwrap();
    // the group's llm endpoint merges with the host's model
    assert_eq!(
        osaka.node.llm.endpoint.as_deref(),
        Some("http://127.0.0.1:11434")
    );
    assert_eq!(osaka.node.llm.model.as_deref(), Some("gemma2:2b"));
    assert!(!osaka.node.llm.gpu);

    let london = inventory.host("london-01").unwrap();
    assert_eq!(london.node.llm.kind, LlmKind::OpenAi);
    assert_eq!(london.node.llm.type_name, "local_gpt4");
    assert_eq!(
        london.node.llm.api_key,
        Some(SecretRef::Env("LONDON_LLM_KEY".into()))
    );
    let jump = london.ssh.jump.as_ref().unwrap();
    assert_eq!(jump.to_string(), "deploy@bastion.example.net");
    assert!(
        london
            .ssh
            .host_key
            .as_deref()
            .unwrap()
            .starts_with("SHA256:")
    );
    assert_eq!(inventory.groups["europe"], ["london-01"]);
}

#[test]
fn hosts_inherit_defaults_then_groups_outermost_first_then_their_own() {
    let text = r#"
vars:
  port: 2200
  location: default-region
  capabilities: [general_query]
  max_workers: 1
children:
  outer:
    vars: {max_workers: 2, user: outer}
    children:
      inner:
        vars: {max_workers: 3}
        hosts:
          a: {host: 10.0.0.1}
          b: {host: 10.0.0.2, max_workers: 9}
  other:
    vars: {labels: {tier: x}}
    hosts:
      a:
hosts:
  c: {host: 10.0.0.3, port: 22, node_id: node-c, llm: {type: sim}}
"#;
    let inventory = parse(Path::new("t.yaml"), text).unwrap_or_else(|e| panic!("{e}"));
    let a = inventory.host("a").unwrap();
    assert_eq!((a.ssh.port, a.node.max_workers), (2200, 3));
    assert_eq!(a.ssh.user.as_deref(), Some("outer"));
    assert_eq!(a.node.labels["tier"], "x");
    assert_eq!(a.groups, ["outer", "inner", "other"]);
    assert_eq!(inventory.host("b").unwrap().node.max_workers, 9);
    let c = inventory.host("c").unwrap();
    assert_eq!((c.ssh.port, c.node.max_workers), (22, 1));
    assert_eq!(c.node.node_id, "node-c");
    assert_eq!(c.node.llm.kind, LlmKind::Sim);
    assert_eq!(c.node.llm.endpoint, None);
    assert_eq!(inventory.groups["outer"], ["a", "b"]);
    assert_eq!(inventory.groups["other"], ["a"]);
}

#[test]
fn a_host_without_a_host_key_uses_its_name_as_the_address() {
    let text = "hosts:\n  worker-1.example.net: {location: r, capabilities: [q]}\n";
    let inventory = parse(Path::new("t.yaml"), text).unwrap();
    let host = &inventory.hosts[0];
    assert_eq!(host.ssh.host, "worker-1.example.net");
    assert_eq!(host.node.node_id, "worker-1.example.net");
    assert_eq!(
        host.node.llm.endpoint.as_deref(),
        Some("http://127.0.0.1:11434")
    );
}

#[test]
fn pools_load_with_their_hosts_commands_and_defaults() {
    use kobo_inventory::{DEFAULT_COOLDOWN, PoolProvider};
    use std::time::Duration;
    let text = r#"hosts:
  gpu-03: {host: 10.0.0.3, location: tokyo, capabilities: [code_generation], max_workers: 2}
  gpu-04: {host: 10.0.0.4, location: tokyo, capabilities: [code_generation], max_workers: 2}
pools:
  - name: burst
    min: 0
    max: 2
    hosts: [gpu-03, gpu-04]
    kind: code_generation
    region: tokyo
    idle_after: 90s
  - name: cloud
    max: 3
    command: {start: "./vm up", stop: "./vm down"}
    model: "qwen2.5:7b"
    slots: 8
    cooldown: 1m
"#;
    let inventory = parse(Path::new("fleet.yaml"), text).unwrap_or_else(|e| panic!("{e}"));
    let [burst, cloud] = &inventory.pools[..] else {
        panic!("two pools: {:?}", inventory.pools)
    };
    assert_eq!((burst.name.as_str(), burst.min, burst.max), ("burst", 0, 2));
    assert_eq!(
        burst.provider,
        PoolProvider::Hosts(vec!["gpu-03".into(), "gpu-04".into()])
    );
    assert_eq!(burst.kind.as_deref(), Some("code_generation"));
    assert_eq!(burst.region.as_deref(), Some("tokyo"));
    assert_eq!(burst.idle_after, Duration::from_secs(90));
    assert_eq!(burst.cooldown, DEFAULT_COOLDOWN);
    assert_eq!(burst.members(), ["gpu-03", "gpu-04"]);
    assert_eq!(
        cloud.provider,
        PoolProvider::Command {
            start: "./vm up".into(),
            stop: "./vm down".into()
        }
    );
    assert_eq!((cloud.min, cloud.slots), (0, Some(8)));
    assert_eq!(cloud.cooldown, Duration::from_secs(60));
    assert_eq!(cloud.members(), ["cloud-1", "cloud-2", "cloud-3"]);
}
