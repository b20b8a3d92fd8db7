//! kobo's `known_hosts`: first contact (`kobo-coord hosts trust` scans a
//! host's key, shows its fingerprint and pins it on confirmation), pinned
//! keys from the inventory (`host_key:`), and the check that the trusted key
//! is the pinned one before any connection. Keys are parsed and
//! fingerprinted with the `ssh-key` crate.

use kobo_protocol::files::{Access, write_atomic};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use kobo_inventory::Host;
use ssh_key::{HashAlg, PublicKey};

use crate::error::ProvisionError;
use crate::ssh::{SshOptions, expand_home, known_hosts_pattern};

/// Extra time a scan gets beyond the connect timeout (key exchange, auth).
const SCAN_GRACE: Duration = Duration::from_secs(10);

/// One host key: the known_hosts pattern it is for, and its fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKey {
    /// `host` or `[host]:port`.
    pub pattern: String,
    /// `ssh-ed25519`, `ecdsa-sha2-nistp256`, …
    pub algorithm: String,
    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// The key in OpenSSH form (`ssh-ed25519 AAAA…`).
    pub key: String,
}

impl HostKey {
    fn from_key(pattern: &str, key_text: &str) -> Option<HostKey> {
        let key = PublicKey::from_openssh(key_text.trim()).ok()?;
        let mut openssh = key.to_openssh().ok()?;
        // Keep `algo base64` only, without the comment.
        if let Some(idx) = openssh.match_indices(' ').nth(1).map(|(i, _)| i) {
            openssh.truncate(idx);
        }
        Some(HostKey {
            pattern: pattern.to_string(),
            algorithm: key.algorithm().to_string(),
            fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
            key: openssh,
        })
    }

    /// The known_hosts line.
    pub fn line(&self) -> String {
        format!("{} {}", self.pattern, self.key)
    }

    /// Whether `pin` (a `SHA256:` fingerprint or a public key) names this key.
    pub fn matches_pin(&self, pin: &str) -> bool {
        if pin.starts_with("SHA256:") {
            return pin.trim_end_matches('=') == self.fingerprint.trim_end_matches('=');
        }
        HostKey::from_key(&self.pattern, pin).is_some_and(|k| k.key == self.key)
    }
}

/// A host to scan: the inventory host, or the bastion it goes through.
#[derive(Debug, Clone)]
pub struct ScanTarget {
    pub label: String,
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub key: Option<std::path::PathBuf>,
    pub jump: Option<String>,
}

impl ScanTarget {
    pub fn of_host(host: &Host) -> ScanTarget {
        ScanTarget {
            label: host.name.clone(),
            host: host.ssh.host.clone(),
            port: host.ssh.port,
            user: host.ssh.user.clone(),
            key: host.ssh.key.clone(),
            jump: host.ssh.jump.as_ref().map(|j| j.to_string()),
        }
    }

    /// The bastion `host` goes through, if any.
    pub fn of_jump(host: &Host) -> Option<ScanTarget> {
        let jump = host.ssh.jump.as_ref()?;
        Some(ScanTarget {
            label: format!("bastion {jump}"),
            host: jump.host.clone(),
            port: jump.port.unwrap_or(22),
            user: jump.user.clone(),
            key: host.ssh.key.clone(),
            jump: None,
        })
    }

    pub fn pattern(&self) -> String {
        known_hosts_pattern(&self.host, self.port)
    }
}

/// The keys `known_hosts` trusts for `pattern` (hashed entries, markers and
/// lines that do not parse are skipped).
pub fn trusted_keys(known_hosts: &Path, pattern: &str) -> Result<Vec<HostKey>, ProvisionError> {
    let text = match std::fs::read_to_string(known_hosts) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ProvisionError::Local {
                path: known_hosts.to_path_buf(),
                source,
            });
        }
    };
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('@'))
        .filter_map(|line| line.split_once(char::is_whitespace))
        .filter(|(patterns, _)| patterns.split(',').any(|p| p == pattern))
        .filter_map(|(_, key)| HostKey::from_key(pattern, key))
        .collect())
}

/// Adds `keys` to `known_hosts`; with `replace`, first drops every line
/// for their patterns.
pub fn add_trusted(
    known_hosts: &Path,
    keys: &[HostKey],
    replace: bool,
) -> Result<(), ProvisionError> {
    let local = |source| ProvisionError::Local {
        path: known_hosts.to_path_buf(),
        source,
    };
    let existing = match std::fs::read_to_string(known_hosts) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(err) => return Err(local(err)),
    };
    let mut text = String::new();
    for line in existing.lines() {
        let pattern_of_line = line.split_whitespace().next().unwrap_or_default();
        let replaced = replace
            && keys
                .iter()
                .any(|k| pattern_of_line.split(',').any(|p| p == k.pattern));
        if !replaced && !line.trim().is_empty() {
            text.push_str(line);
            text.push('\n');
        }
    }
    for key in keys {
        text.push_str(&key.line());
        text.push('\n');
    }
    write_atomic(known_hosts, text.as_bytes(), Access::Private).map_err(local)
}

/// Before connecting: a host with a pinned `host_key` must have exactly that
/// key trusted. A pin that is a whole public key is trusted on first use (the
/// inventory vouches for it); a fingerprint pin needs `hosts trust` first.
pub fn check_pin(host: &Host, options: &SshOptions) -> Result<(), ProvisionError> {
    let Some(pin) = &host.ssh.host_key else {
        return Ok(());
    };
    let pattern = known_hosts_pattern(&host.ssh.host, host.ssh.port);
    let trusted = trusted_keys(&options.known_hosts, &pattern)?;
    if trusted.is_empty() {
        if let Some(key) = HostKey::from_key(&pattern, pin) {
            return add_trusted(&options.known_hosts, &[key], false);
        }
        return Err(ProvisionError::HostKeyUnknown {
            host: host.name.clone(),
            known_hosts: options.known_hosts.clone(),
        });
    }
    if trusted.iter().any(|k| k.matches_pin(pin)) {
        return Ok(());
    }
    Err(ProvisionError::PinMismatch {
        host: host.name.clone(),
        pin: pin.clone(),
        found: trusted
            .iter()
            .map(|k| k.fingerprint.clone())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Connects to `target` once, accepting whatever key it presents into a
/// scratch file (never kobo's `known_hosts`), and returns that key. Nothing
/// runs on the host (`true` at most, if authentication succeeds).
pub async fn scan(
    target: &ScanTarget,
    options: &SshOptions,
) -> Result<Vec<HostKey>, ProvisionError> {
    let scratch = tempfile::Builder::new()
        .prefix("kobo-scan-")
        .tempdir()
        .map_err(|source| ProvisionError::Local {
            path: std::env::temp_dir(),
            source,
        })?;
    let scratch_file = scratch.path().join("known_hosts");
    let mut command = tokio::process::Command::new("ssh");
    command
        .arg("-F")
        .arg(&options.config_file)
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", scratch_file.display()))
        .arg("-o")
        .arg("StrictHostKeyChecking=accept-new")
        .arg("-o")
        .arg(format!(
            "ConnectTimeout={}",
            options.connect_timeout.as_secs().max(1)
        ))
        .arg("-p")
        .arg(target.port.to_string());
    if let Some(user) = &target.user {
        command.arg("-l").arg(user);
    }
    if let Some(key) = target.key.as_deref().or(options.default_key.as_deref()) {
        command
            .arg("-o")
            .arg("IdentitiesOnly=yes")
            .arg("-i")
            .arg(expand_home(key));
    }
    if let Some(jump) = &target.jump {
        command.arg("-J").arg(jump);
    }
    command
        .arg("--")
        .arg(&target.host)
        .arg("true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(options.connect_timeout + SCAN_GRACE, command.output())
        .await
        .map_err(|_| {
            ProvisionError::Other(format!("{}: no answer from ssh in time", target.label))
        })?
        .map_err(|source| ProvisionError::Local {
            path: "ssh".into(),
            source,
        })?;
    let keys = trusted_keys(&scratch_file, &target.pattern())?;
    if keys.is_empty() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no host key received");
        return Err(ProvisionError::Other(format!(
            "{}: could not read the host key: {}",
            target.label,
            reason.trim()
        )));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMyDEMN2Y3AUDPn7iNOEpZ1EqTr2hL5dDwa9zt7ZmKwK";

    #[test]
    fn known_hosts_entries_are_found_by_pattern_and_fingerprinted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        std::fs::write(
            &path,
            format!(
                "# c\n[10.0.0.1]:2222 {KEY}\nother {KEY}\n|1|abc|def {KEY}\n@revoked x {KEY}\n"
            ),
        )
        .unwrap();
        let keys = trusted_keys(&path, "[10.0.0.1]:2222").unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].algorithm, "ssh-ed25519");
        assert!(keys[0].fingerprint.starts_with("SHA256:"));
        assert!(keys[0].matches_pin(&keys[0].fingerprint));
        assert!(keys[0].matches_pin(KEY));
        assert!(!keys[0].matches_pin("SHA256:nope"));

        let replacement = HostKey {
            key: "ssh-ed25519 AAAA".into(),
            ..keys[0].clone()
        };
        add_trusted(&path, &[replacement], true).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("[10.0.0.1]:2222 ssh-ed25519 AAAA\n"));
        assert!(!text.contains(&format!("[10.0.0.1]:2222 {KEY}")));
        assert!(text.contains(&format!("other {KEY}")));
    }
}
