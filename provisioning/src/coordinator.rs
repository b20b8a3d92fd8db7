//! What provisioning needs from the coordinator, as a trait so this crate
//! does not depend on the coordinator's client: sign a CSR made on a node,
//! read a node's check-in (for the health gate), revoke a node, and record
//! each host's outcome in the audit log. `kobo-coord` implements it with its
//! HTTPS client; tests can implement it in memory.

use std::future::Future;

use crate::error::CoordinatorError;

/// A certificate the coordinator's CA issued for a node.
#[derive(Debug, Clone)]
pub struct SignedCert {
    pub certificate_pem: String,
    pub ca_pem: String,
}

/// What the coordinator knows of a node's last check-in.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeCheckIn {
    /// `<version>+<sha256 prefix of the agent's executable>`.
    pub agent_version: String,
    pub active: bool,
    /// Unix milliseconds, coordinator clock.
    pub registered_at: i64,
    pub last_heartbeat_at: i64,
}

/// One host's outcome, for the audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub host: String,
    pub node_id: String,
    /// install, upgrade, reconfigure, renew-cert, restart, nothing, remove, rollback.
    pub action: String,
    /// ok, changed, failed, unreachable.
    pub outcome: String,
    pub detail: String,
}

pub trait Coordinator {
    /// Signs `csr_pem` (made on the node) as a certificate for `node_id`.
    fn sign_csr(
        &self,
        node_id: &str,
        csr_pem: &str,
    ) -> impl Future<Output = Result<SignedCert, CoordinatorError>>;

    /// The node's last check-in, if the coordinator knows the node.
    fn node(
        &self,
        node_id: &str,
    ) -> impl Future<Output = Result<Option<NodeCheckIn>, CoordinatorError>>;

    /// Revokes every certificate of the node; `None` if it was never known.
    fn revoke(&self, node_id: &str) -> impl Future<Output = Result<Option<u32>, CoordinatorError>>;

    /// Appends the host's outcome to the audit log.
    fn record(&self, run: &RunRecord) -> impl Future<Output = Result<(), CoordinatorError>>;
}
