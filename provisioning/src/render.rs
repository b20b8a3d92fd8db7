//! What provisioning writes on a host: where everything lives under the
//! install directory ([`Layout`]), the agent's environment file (its settings
//! as `KOBO_*=value` lines, read literally by `kobo-agent supervise`) and the
//! systemd unit. Rendering is pure, so a plan can compare checksums with what
//! the host has without writing anything.

use kobo_inventory::Host;

/// Name of the systemd unit (one agent per machine under systemd).
pub const UNIT_NAME: &str = "kobo-agent.service";
/// Where the unit is installed.
pub const UNIT_PATH: &str = "/etc/systemd/system/kobo-agent.service";
/// The variable that carries the LLM API key to the agent.
const API_KEY_VAR: &str = "KOBO_LLM_API_KEY";

/// The agent's files under one install directory.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub dir: String,
    pub bin_dir: String,
    pub binary: String,
    /// The binary before the last upgrade, for rollback.
    pub previous: String,
    /// Where an upload lands before it is checked and moved into place.
    pub upload: String,
    pub etc_dir: String,
    pub env_file: String,
    pub env_previous: String,
    pub state_dir: String,
    pub cert: String,
    pub ca: String,
    pub run_dir: String,
    pub pid_file: String,
    pub log_dir: String,
    pub log_file: String,
}

impl Layout {
    pub fn new(install_dir: &str) -> Layout {
        let dir = install_dir.trim_end_matches('/').to_string();
        let at = |rest: &str| format!("{dir}/{rest}");
        Layout {
            bin_dir: at("bin"),
            binary: at("bin/kobo-agent"),
            previous: at("bin/kobo-agent.prev"),
            upload: at("bin/.kobo-agent.new"),
            etc_dir: at("etc"),
            env_file: at("etc/agent.env"),
            env_previous: at("etc/agent.env.prev"),
            state_dir: at("state"),
            cert: at("state/node.pem"),
            ca: at("state/ca.pem"),
            run_dir: at("run"),
            pid_file: at("run/supervisor.pid"),
            log_dir: at("log"),
            log_file: at("log/agent.log"),
            dir,
        }
    }
}

/// The agent's environment file for `host`. `coordinator` is the URL the
/// agent dials; `api_key` the resolved secret, if the LLM needs one.
pub fn agent_env(host: &Host, coordinator: &str, api_key: Option<&str>) -> String {
    let layout = Layout::new(&host.install_dir);
    let node = &host.node;
    let mut lines: Vec<(String, String)> = vec![
        ("KOBO_COORDINATOR".into(), coordinator.to_string()),
        ("KOBO_AGENT_DIR".into(), layout.state_dir.clone()),
        ("KOBO_NODE_ID".into(), node.node_id.clone()),
        ("KOBO_REGION".into(), node.location.clone()),
        ("KOBO_CAPABILITIES".into(), node.capabilities.join(",")),
        ("KOBO_MAX_WORKERS".into(), node.max_workers.to_string()),
        ("KOBO_LLM".into(), node.llm.kind.agent_backend().to_string()),
    ];
    if let Some(endpoint) = &node.llm.endpoint {
        lines.push(("KOBO_LLM_ENDPOINT".into(), endpoint.clone()));
    }
    if let Some(model) = &node.llm.model {
        lines.push(("KOBO_LLM_MODEL".into(), model.clone()));
    }
    if !node.llm.models.is_empty() {
        lines.push(("KOBO_MODELS".into(), node.llm.models.join(",")));
    }
    if node.llm.gpu {
        lines.push(("KOBO_GPU".into(), "true".into()));
    }
    if let Some(specialization) = &node.specialization {
        lines.push(("KOBO_SPECIALIZATION".into(), specialization.clone()));
    }
    if let Some((latitude, longitude)) = node.coordinates {
        lines.push(("KOBO_LATITUDE".into(), latitude.to_string()));
        lines.push(("KOBO_LONGITUDE".into(), longitude.to_string()));
    }
    if let Some(key) = api_key {
        lines.push(("KOBO_LLM_API_KEY_ENV".into(), API_KEY_VAR.into()));
        lines.push((API_KEY_VAR.into(), key.to_string()));
    }
    lines.push(("RUST_LOG".into(), "info".into()));
    let mut text = format!(
        "# kobo-agent settings for node {}, written by `kobo-coord provision`; edits are overwritten.\n",
        node.node_id
    );
    for (key, value) in lines {
        // The inventory's checks keep control characters out of values; this
        // keeps one variable a line even if a check is ever loosened.
        let value: String = value.chars().filter(|c| !c.is_control()).collect();
        text.push_str(&format!("{key}={value}\n"));
    }
    text
}

/// The systemd unit: the supervisor in the foreground, restarted by systemd.
pub fn systemd_unit(host: &Host) -> String {
    let layout = Layout::new(&host.install_dir);
    format!(
        "# Written by `kobo-coord provision`; edits are overwritten.
[Unit]
Description=kobo agent (node {node})
Wants=network-online.target
After=network-online.target

[Service]
ExecStart={binary} supervise --no-restart --env-file {env}
Restart=on-failure
RestartSec=2
KillMode=mixed
TimeoutStopSec=90
UMask=0077

[Install]
WantedBy=multi-user.target
",
        node = host.node.node_id,
        binary = layout.binary,
        env = layout.env_file,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Host {
        let text = "hosts:\n  tokyo-01:\n    host: 10.0.0.1\n    install_dir: /srv/kobo/\n    location: ap-northeast-1\n    capabilities: [code_generation, heavy_computation]\n    llm: {model: 'gpt-oss:20b', gpu: true}\n    max_workers: 8\n    specialization: 'コード $(生成) \"特化\"'\n    coordinates: [35.68, 139.69]\n";
        kobo_inventory::parse(std::path::Path::new("t.yaml"), text)
            .unwrap()
            .hosts
            .remove(0)
    }

    #[test]
    fn the_environment_file_carries_the_node_card_literally() {
        let text = agent_env(&host(), "https://coord:7443", Some("s3cret"));
        let lines: Vec<&str> = text.lines().skip(1).collect();
        assert!(lines.contains(&"KOBO_COORDINATOR=https://coord:7443"));
        assert!(lines.contains(&"KOBO_AGENT_DIR=/srv/kobo/state"));
        assert!(lines.contains(&"KOBO_CAPABILITIES=code_generation,heavy_computation"));
        assert!(lines.contains(&"KOBO_LLM=ollama"));
        assert!(lines.contains(&"KOBO_LLM_ENDPOINT=http://127.0.0.1:11434"));
        assert!(lines.contains(&"KOBO_LLM_MODEL=gpt-oss:20b"));
        assert!(lines.contains(&"KOBO_GPU=true"));
        assert!(lines.contains(&"KOBO_MAX_WORKERS=8"));
        assert!(lines.contains(&"KOBO_SPECIALIZATION=コード $(生成) \"特化\""));
        assert!(lines.contains(&"KOBO_LATITUDE=35.68"));
        assert!(lines.contains(&"KOBO_LLM_API_KEY=s3cret"));
        assert!(lines.contains(&"KOBO_LLM_API_KEY_ENV=KOBO_LLM_API_KEY"));
        // the same host renders the same bytes: plans compare checksums
        assert_eq!(
            text,
            agent_env(&host(), "https://coord:7443", Some("s3cret"))
        );
    }

    #[test]
    fn the_unit_runs_the_supervisor_of_the_install_dir() {
        let unit = systemd_unit(&host());
        assert!(unit.contains(
            "ExecStart=/srv/kobo/bin/kobo-agent supervise --no-restart --env-file /srv/kobo/etc/agent.env"
        ));
        assert!(unit.contains("Restart=on-failure"));
        assert_eq!(
            Layout::new("/srv/kobo/").previous,
            "/srv/kobo/bin/kobo-agent.prev"
        );
    }
}
