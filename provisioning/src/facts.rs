//! Read-only facts about a host, gathered by one fixed script: OS, machine
//! architecture, systemd or not, the installed agent's checksum and version,
//! the checksums of its configuration, its certificate (public) and whether
//! it runs. Nothing on the host changes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::error::ProvisionError;
use crate::render::{Layout, UNIT_NAME, UNIT_PATH};
use crate::ssh::Remote;

/// `$1` install dir, `$2` unit path, `$3` unit name. Prints `key=value` lines.
const FACTS_SCRIPT: &str = r#"d="$1"
echo "os=$(uname -s)"
echo "arch=$(uname -m)"
if [ -r /etc/os-release ]; then echo "distro=$(sed -n 's/^PRETTY_NAME=//p' /etc/os-release | tr -d '"')"; fi
echo "uid=$(id -u)"
if [ -d /run/systemd/system ]; then echo systemd=yes; else echo systemd=no; fi
if command -v sha256sum >/dev/null 2>&1; then echo sha256sum=yes; fi
b="$d/bin/kobo-agent"
if [ -f "$b" ]; then
  echo "agent_sha256=$(sha256sum < "$b" | cut -d' ' -f1)"
  if command -v timeout >/dev/null 2>&1; then echo "agent_version=$(timeout 5 "$b" --version 2>/dev/null | head -n 1)"; fi
fi
if [ -f "$b.prev" ]; then echo "prev_sha256=$(sha256sum < "$b.prev" | cut -d' ' -f1)"; fi
if [ -f "$d/etc/agent.env" ]; then echo "config_sha256=$(sha256sum < "$d/etc/agent.env" | cut -d' ' -f1)"; fi
if [ -f "$d/etc/agent.env.prev" ]; then echo config_prev=yes; fi
if [ -f "$2" ]; then echo "unit_sha256=$(sha256sum < "$2" | cut -d' ' -f1)"; fi
if [ -f "$d/state/node.key" ]; then echo node_key=yes; fi
if [ -f "$d/state/ca.pem" ]; then echo "ca_sha256=$(sha256sum < "$d/state/ca.pem" | cut -d' ' -f1)"; fi
if [ -f "$d/state/node.pem" ]; then echo "cert=$(tr '\n' '|' < "$d/state/node.pem")"; fi
if [ -d /run/systemd/system ] && systemctl is-active --quiet "$3" 2>/dev/null; then echo running=systemd; fi
if [ -f "$d/run/supervisor.pid" ]; then
  p=$(cat "$d/run/supervisor.pid")
  case "$p" in
    ''|*[!0-9]*) ;;
    *) if kill -0 "$p" 2>/dev/null && grep -q supervise "/proc/$p/cmdline" 2>/dev/null; then echo "running=pid:$p"; fi ;;
  esac
fi
"#;

/// What a host is and has.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Facts {
    pub os: String,
    /// `uname -m`: x86_64, aarch64, …
    pub arch: String,
    pub distro: Option<String>,
    /// Effective uid of commands (0 with `become`).
    pub uid: Option<u32>,
    pub systemd: bool,
    pub agent_sha256: Option<String>,
    /// `kobo-agent --version` of the installed binary.
    pub agent_version: Option<String>,
    pub prev_sha256: Option<String>,
    pub config_sha256: Option<String>,
    pub config_prev: bool,
    pub unit_sha256: Option<String>,
    pub node_key: bool,
    pub ca_sha256: Option<String>,
    /// The node certificate, PEM (public).
    #[serde(skip)]
    pub cert_pem: Option<String>,
    pub cert: Option<CertFacts>,
    /// `systemd`, or `pid:<n>` of the supervisor; none when not running.
    pub running: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CertFacts {
    /// The certificate's common name: the node id it was issued for.
    pub node_id: String,
    /// Unix milliseconds.
    pub not_after: i64,
}

impl Facts {
    /// Whether the agent is installed as a systemd service (root and systemd).
    pub fn uses_systemd(&self) -> bool {
        self.systemd && self.uid == Some(0)
    }

    /// The pid of a running supervisor.
    pub fn supervisor_pid(&self) -> Option<u32> {
        self.running.as_deref()?.strip_prefix("pid:")?.parse().ok()
    }

    /// The certificate's time left, if any.
    pub fn cert_left(&self, now: SystemTime) -> Option<Duration> {
        let cert = self.cert.as_ref()?;
        let now_ms = now.duration_since(UNIX_EPOCH).ok()?.as_millis() as i64;
        Some(Duration::from_millis(
            (cert.not_after - now_ms).max(0) as u64
        ))
    }
}

/// Gathers the facts of the host behind `remote` for the agent in `layout`.
pub async fn gather(remote: &Remote, layout: &Layout) -> Result<Facts, ProvisionError> {
    let output = remote
        .script_ok(
            "gathering facts",
            FACTS_SCRIPT,
            &[&layout.dir, UNIT_PATH, UNIT_NAME],
        )
        .await?;
    let facts = parse(&output);
    if facts.os != "Linux" {
        return Err(ProvisionError::Unsupported {
            host: remote.label.clone(),
            detail: format!("uname -s says {:?}; kobo-agent runs on Linux", facts.os),
        });
    }
    Ok(facts)
}

/// Parses the script's `key=value` lines; unknown keys are ignored.
pub fn parse(output: &str) -> Facts {
    let mut facts = Facts::default();
    let sha = |v: &str| {
        (v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())).then(|| v.to_string())
    };
    for line in output.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        match key {
            "os" => facts.os = value.to_string(),
            "arch" => facts.arch = value.to_string(),
            "distro" if !value.is_empty() => facts.distro = Some(value.to_string()),
            "uid" => facts.uid = value.parse().ok(),
            "systemd" => facts.systemd = value == "yes",
            "agent_sha256" => facts.agent_sha256 = sha(value),
            "agent_version" if !value.is_empty() => facts.agent_version = Some(value.to_string()),
            "prev_sha256" => facts.prev_sha256 = sha(value),
            "config_sha256" => facts.config_sha256 = sha(value),
            "config_prev" => facts.config_prev = true,
            "unit_sha256" => facts.unit_sha256 = sha(value),
            "node_key" => facts.node_key = true,
            "ca_sha256" => facts.ca_sha256 = sha(value),
            "cert" => {
                let pem = value.replace('|', "\n");
                facts.cert = cert_facts(&pem);
                facts.cert_pem = Some(pem);
            }
            "running" if !value.is_empty() => facts.running = Some(value.to_string()),
            _ => {}
        }
    }
    facts
}

/// The node id and expiry of a PEM certificate.
pub fn cert_facts(pem: &str) -> Option<CertFacts> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let node_id = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(CertFacts {
        node_id,
        not_after: cert.validity().not_after.timestamp() * 1000,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_facts_script_output_is_parsed_and_garbage_ignored() {
        let sum = "a".repeat(64);
        let output = format!(
            "os=Linux\narch=x86_64\ndistro=Debian GNU/Linux 12 (bookworm)\nuid=0\nsystemd=no\nagent_sha256={sum}\nconfig_sha256=nothex\nnode_key=yes\nrunning=pid:42\nnoise\n"
        );
        let facts = parse(&output);
        assert_eq!(facts.arch, "x86_64");
        assert_eq!(
            facts.distro.as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(facts.uid, Some(0));
        assert!(!facts.uses_systemd());
        assert_eq!(facts.agent_sha256.as_deref(), Some(sum.as_str()));
        assert_eq!(facts.config_sha256, None);
        assert!(facts.node_key);
        assert_eq!(facts.supervisor_pid(), Some(42));
        assert_eq!(facts.cert, None);
    }
}
