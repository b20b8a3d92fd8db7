//! The plan for one host: what differs between its facts and what the
//! inventory and the binary want. Pure: `--dry-run` prints it, apply
//! carries it out, and a host with nothing to do is left alone.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::facts::Facts;

/// Renew a node certificate with less than this left. Agents renew their own
/// at 2/3 of the lifetime (10 days left of 30), so a running agent normally
/// never gets here; a stopped one does.
pub const RENEW_CERT_BEFORE: Duration = Duration::from_secs(5 * 24 * 3600);

/// One thing to do on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    /// No agent yet: everything.
    Install,
    /// Another binary than the one wanted.
    Upgrade,
    /// No valid certificate for this node from this coordinator's CA.
    RenewCert,
    /// The environment file or unit differs.
    Reconfigure,
    /// Installed and configured, but not running.
    Restart,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Install => "install",
            Change::Upgrade => "upgrade",
            Change::RenewCert => "renew-cert",
            Change::Reconfigure => "reconfigure",
            Change::Restart => "restart",
        }
    }
}

/// What the host should have.
#[derive(Debug, Clone)]
pub struct Desired {
    pub node_id: String,
    pub agent_sha256: String,
    pub config_sha256: String,
    /// Only when the agent runs under systemd.
    pub unit_sha256: Option<String>,
    pub ca_sha256: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Plan {
    /// In the order they are carried out; empty: nothing to do.
    pub changes: Vec<Change>,
    /// Why, one line per change.
    pub reasons: Vec<String>,
}

impl Plan {
    /// The main action, as the recap and the audit log name it.
    pub fn action(&self) -> &'static str {
        self.changes.first().map_or("nothing", |c| c.as_str())
    }

    pub fn has(&self, change: Change) -> bool {
        self.changes.contains(&change)
    }

    fn add(&mut self, change: Change, reason: String) {
        self.changes.push(change);
        self.reasons.push(reason);
    }
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// What to do on a host with `facts` so that it has `desired`.
pub fn plan(facts: &Facts, desired: &Desired, now: SystemTime) -> Plan {
    let mut plan = Plan::default();
    match &facts.agent_sha256 {
        None => {
            plan.add(
                Change::Install,
                format!(
                    "no agent installed; install {}",
                    short(&desired.agent_sha256)
                ),
            );
            return plan;
        }
        Some(sha) if *sha != desired.agent_sha256 => plan.add(
            Change::Upgrade,
            format!("binary {} → {}", short(sha), short(&desired.agent_sha256)),
        ),
        Some(_) => {}
    }
    if let Some(reason) = cert_problem(facts, desired, now) {
        plan.add(Change::RenewCert, reason);
    }
    if facts.config_sha256.as_deref() != Some(desired.config_sha256.as_str()) {
        plan.add(Change::Reconfigure, "agent settings changed".into());
    } else if desired.unit_sha256.is_some() && facts.unit_sha256 != desired.unit_sha256 {
        plan.add(Change::Reconfigure, "systemd unit changed".into());
    }
    if plan.changes.is_empty() && facts.running.is_none() {
        plan.add(Change::Restart, "agent not running".into());
    }
    plan
}

fn cert_problem(facts: &Facts, desired: &Desired, now: SystemTime) -> Option<String> {
    if !facts.node_key {
        return Some("no node key".into());
    }
    let Some(cert) = &facts.cert else {
        return Some("no node certificate".into());
    };
    if cert.node_id != desired.node_id {
        return Some(format!(
            "certificate names node {}, not {}",
            cert.node_id, desired.node_id
        ));
    }
    if facts.ca_sha256.as_deref() != Some(desired.ca_sha256.as_str()) {
        return Some("certificate from another CA".into());
    }
    match facts.cert_left(now) {
        Some(left) if left < RENEW_CERT_BEFORE => {
            Some(format!("certificate expires in {}h", left.as_secs() / 3600))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::CertFacts;

    const NOW_MS: i64 = 1_800_000_000_000;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(NOW_MS as u64)
    }

    fn desired() -> Desired {
        Desired {
            node_id: "tokyo-01".into(),
            agent_sha256: "a".repeat(64),
            config_sha256: "c".repeat(64),
            unit_sha256: None,
            ca_sha256: "d".repeat(64),
        }
    }

    fn installed() -> Facts {
        Facts {
            os: "Linux".into(),
            arch: "x86_64".into(),
            agent_sha256: Some("a".repeat(64)),
            config_sha256: Some("c".repeat(64)),
            node_key: true,
            ca_sha256: Some("d".repeat(64)),
            cert: Some(CertFacts {
                node_id: "tokyo-01".into(),
                not_after: NOW_MS + 20 * 24 * 3600 * 1000,
            }),
            running: Some("pid:7".into()),
            ..Facts::default()
        }
    }

    #[test]
    fn an_empty_host_gets_an_install_and_an_up_to_date_one_nothing() {
        assert_eq!(
            plan(&Facts::default(), &desired(), now()).changes,
            [Change::Install]
        );
        let nothing = plan(&installed(), &desired(), now());
        assert_eq!(nothing.changes, []);
        assert_eq!(nothing.action(), "nothing");
    }

    #[test]
    fn each_difference_gives_its_change() {
        let mut facts = installed();
        facts.agent_sha256 = Some("b".repeat(64));
        facts.config_sha256 = None;
        let p = plan(&facts, &desired(), now());
        assert_eq!(p.changes, [Change::Upgrade, Change::Reconfigure]);
        assert_eq!(p.action(), "upgrade");
        assert!(p.reasons[0].contains("bbbbbbbbbbbb → aaaaaaaaaaaa"));

        let mut facts = installed();
        facts.running = None;
        assert_eq!(plan(&facts, &desired(), now()).changes, [Change::Restart]);

        let mut facts = installed();
        facts.cert.as_mut().unwrap().not_after = NOW_MS + 3600 * 1000;
        assert_eq!(plan(&facts, &desired(), now()).changes, [Change::RenewCert]);

        let mut facts = installed();
        facts.ca_sha256 = Some("e".repeat(64));
        assert_eq!(plan(&facts, &desired(), now()).changes, [Change::RenewCert]);

        let mut wanted = desired();
        wanted.unit_sha256 = Some("f".repeat(64));
        assert_eq!(
            plan(&installed(), &wanted, now()).changes,
            [Change::Reconfigure]
        );
    }
}
