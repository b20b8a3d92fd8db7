//! The inventory after loading: every host with its settings resolved
//! (defaults, then its groups' vars, then its own) and checked.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::yaml::Pos;

/// Where agents are installed unless the inventory says otherwise.
pub const DEFAULT_INSTALL_DIR: &str = "/opt/kobo";
/// SSH port unless the inventory says otherwise.
pub const DEFAULT_SSH_PORT: u16 = 22;
/// Jobs at once per agent unless the inventory says otherwise (the agent's default).
pub const DEFAULT_MAX_WORKERS: u32 = 4;
/// Ollama's address on the node unless the inventory says otherwise.
pub const DEFAULT_OLLAMA_ENDPOINT: &str = "http://127.0.0.1:11434";

#[derive(Debug, Clone, PartialEq)]
pub struct Inventory {
    pub file: PathBuf,
    /// In the order they appear in the file.
    pub hosts: Vec<Host>,
    /// Every group name with the hosts in it (nested groups' hosts included).
    pub groups: BTreeMap<String, Vec<String>>,
    /// Autoscaling pools (`kobo-coord autoscale`), in the order written.
    pub pools: Vec<Pool>,
}

impl Inventory {
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }
}

/// How long a pool's host stays up idle unless the pool says otherwise.
pub const DEFAULT_IDLE_AFTER: Duration = Duration::from_secs(300);
/// How long a pool waits after a scale-up before it scales again, unless it
/// says otherwise.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(120);

/// A pool of standby capacity the autoscaler starts and stops: between
/// `min` and `max` hosts, as the backlog of the work it matches needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub name: String,
    /// Where the pool is defined in the file.
    pub pos: Pos,
    pub min: u32,
    pub max: u32,
    pub provider: PoolProvider,
    /// The work the pool serves (`GET /v1/scaling`'s filter).
    pub kind: Option<String>,
    pub region: Option<String>,
    pub model: Option<String>,
    /// Jobs one host runs at once (none: the mean `max_workers` of its hosts,
    /// or the agent's default for a command pool).
    pub slots: Option<u32>,
    /// A host with no leases this long is drained and stopped.
    pub idle_after: Duration,
    /// No scaling of the pool this long after it scaled up.
    pub cooldown: Duration,
}

/// How a pool's hosts come and go.
#[derive(Debug, Clone, PartialEq)]
pub enum PoolProvider {
    /// Standby hosts of the inventory: the agent is installed and started
    /// over SSH (provisioning), stopped the same way.
    Hosts(Vec<String>),
    /// Scripts run where the autoscaler runs (`sh -c`), with `KOBO_POOL`,
    /// `KOBO_HOST` and `KOBO_NODE_ID` in their environment; instance names
    /// are `<pool>-1` … `<pool>-<max>`.
    Command { start: String, stop: String },
}

impl Pool {
    /// The names of the pool's hosts (a command pool's instances), in order.
    pub fn members(&self) -> Vec<String> {
        match &self.provider {
            PoolProvider::Hosts(hosts) => hosts.clone(),
            PoolProvider::Command { .. } => (1..=self.max)
                .map(|i| format!("{}-{i}", self.name))
                .collect(),
        }
    }
}

/// One machine to provision.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    /// The inventory name (the key under `hosts:`).
    pub name: String,
    /// Where the host is defined in the file.
    pub pos: Pos,
    /// Groups the host is in, outermost first.
    pub groups: Vec<String>,
    pub ssh: SshTarget,
    /// Where the agent lives on the host: `bin/`, `etc/`, `state/`, `run/`, `log/`.
    pub install_dir: String,
    /// The coordinator's URL as the agent reaches it, or several
    /// comma-separated (none: the URLs the provisioning client uses).
    pub coordinator: Option<String>,
    pub node: NodeCard,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SshTarget {
    /// DNS name or IP address.
    pub host: String,
    pub port: u16,
    /// Login user (none: ssh's default).
    pub user: Option<String>,
    /// Private key file (none: kobo's deploy key, else ssh's defaults).
    pub key: Option<PathBuf>,
    /// A bastion to go through (`ssh -J`).
    pub jump: Option<Jump>,
    /// Run remote commands through `sudo -n`.
    pub become_root: bool,
    /// A pinned host key: `SHA256:…` fingerprint or `ssh-ed25519 AAAA…`.
    pub host_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Jump {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
}

impl std::fmt::Display for Jump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            write!(f, "{}", self.host)?;
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

/// The node card of the original design: what the agent announces.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeCard {
    pub node_id: String,
    /// The region, e.g. `ap-northeast-1` (decides data residency).
    pub location: String,
    /// (latitude, longitude).
    pub coordinates: Option<(f64, f64)>,
    pub capabilities: Vec<String>,
    pub llm: Llm,
    pub max_workers: u32,
    pub specialization: Option<String>,
    /// Free labels, for `--limit key=value`.
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmKind {
    Ollama,
    /// Any OpenAI-compatible server (vLLM, llama.cpp, LM Studio, a local GPT).
    OpenAi,
    /// The agent's built-in simulated backend.
    Sim,
}

impl LlmKind {
    /// The agent's `--llm` value.
    pub fn agent_backend(self) -> &'static str {
        match self {
            LlmKind::Ollama => "ollama",
            LlmKind::OpenAi => "openai",
            LlmKind::Sim => "sim",
        }
    }
}

/// The inventory's LLM type names and the backend each means.
pub const LLM_TYPES: &[(&str, LlmKind)] = &[
    ("ollama", LlmKind::Ollama),
    ("openai", LlmKind::OpenAi),
    ("openai_compatible", LlmKind::OpenAi),
    ("vllm", LlmKind::OpenAi),
    ("llama_cpp", LlmKind::OpenAi),
    ("lm_studio", LlmKind::OpenAi),
    // The seed's london-01: a GPT served on the node behind an OpenAI-compatible API.
    ("local_gpt4", LlmKind::OpenAi),
    ("sim", LlmKind::Sim),
];

#[derive(Debug, Clone, PartialEq)]
pub struct Llm {
    /// The type as written (`vllm`, `local_gpt4`, …).
    pub type_name: String,
    pub kind: LlmKind,
    pub endpoint: Option<String>,
    /// Model used for jobs naming none.
    pub model: Option<String>,
    /// Models to announce instead of asking the server.
    pub models: Vec<String>,
    pub gpu: bool,
    /// The API key of an OpenAI-compatible server, by reference.
    pub api_key: Option<SecretRef>,
}

/// A secret named, never written inline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// `env:NAME`: the variable NAME where provisioning runs.
    Env(String),
    /// `file:PATH`: a file where provisioning runs.
    File(PathBuf),
}

impl std::fmt::Display for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {name} (named by the inventory) is not set")]
    EnvMissing { name: String },
    #[error("failed to read the secret file {path}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the secret {reference} is empty or spans several lines")]
    Malformed { reference: String },
}

impl SecretRef {
    /// Reads the secret where provisioning runs.
    pub fn resolve(&self) -> Result<String, SecretError> {
        let value = match self {
            SecretRef::Env(name) => std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| SecretError::EnvMissing { name: name.clone() })?,
            SecretRef::File(path) => std::fs::read_to_string(path)
                .map_err(|source| SecretError::File {
                    path: path.clone(),
                    source,
                })?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
        };
        if value.is_empty() || value.chars().any(|c| c.is_control()) {
            return Err(SecretError::Malformed {
                reference: self.to_string(),
            });
        }
        Ok(value)
    }
}
