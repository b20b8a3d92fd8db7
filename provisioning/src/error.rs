//! Provisioning errors. Each says which host and what step; whether a host is
//! reported `unreachable` (it could not be reached or not be trusted) or
//! `failed` (something went wrong on it) follows from the variant.

use std::path::PathBuf;

/// An error from the coordinator side (signing, node status, revocation).
pub type CoordinatorError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("failed to connect to {host}: {reason}")]
    Connect {
        host: String,
        reason: String,
        #[source]
        source: openssh::Error,
    },
    #[error(
        "host key verification failed for {host}: the key it presents is not the one pinned in {known_hosts}; if it changed legitimately, check it and run `kobo-coord hosts trust --replace`"
    )]
    HostKeyMismatch { host: String, known_hosts: PathBuf },
    #[error(
        "{host} has no trusted host key in {known_hosts}: run `kobo-coord hosts trust` first (or pass --accept-new)"
    )]
    HostKeyUnknown { host: String, known_hosts: PathBuf },
    #[error("the pinned host key of {host} ({pin}) does not match the trusted key ({found})")]
    PinMismatch {
        host: String,
        pin: String,
        found: String,
    },
    #[error(
        "sudo on {host} wants a password; `become: true` needs passwordless sudo (sudo -n) for the login user"
    )]
    SudoNeedsPassword { host: String },
    #[error("ssh to {host} failed while {what}")]
    Ssh {
        host: String,
        what: String,
        #[source]
        source: openssh::Error,
    },
    #[error("{what} failed on {host} (exit {code}): {stderr}")]
    Remote {
        host: String,
        what: String,
        code: i32,
        stderr: String,
    },
    #[error("failed to read {path}")]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to stream the agent binary to {host}")]
    Upload {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the upload to {host} is corrupt: sha256 {found} instead of {expected}")]
    Checksum {
        host: String,
        expected: String,
        found: String,
    },
    #[error("no agent binary for {arch} (host {host}); pass --agent-binary {arch}=PATH")]
    NoBinary { host: String, arch: String },
    #[error("{host} does not look like a Linux host with a POSIX shell: {detail}")]
    Unsupported { host: String, detail: String },
    #[error("the coordinator refused while {what} for {host}")]
    Coordinator {
        host: String,
        what: String,
        #[source]
        source: CoordinatorError,
    },
    #[error("{secret} for host {host} cannot be read")]
    Secret {
        host: String,
        secret: String,
        #[source]
        source: kobo_inventory::model::SecretError,
    },
    #[error("{0}")]
    Other(String),
}

impl ProvisionError {
    /// Whether the host was never reached (or not trusted) rather than failed.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ProvisionError::Connect { .. }
                | ProvisionError::HostKeyMismatch { .. }
                | ProvisionError::HostKeyUnknown { .. }
                | ProvisionError::PinMismatch { .. }
        )
    }
}
