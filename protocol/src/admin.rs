//! Security and administration: roles, API keys, join tokens, enrollment,
//! certificate renewal, revocation and the audit log.

use serde::{Deserialize, Serialize};

use crate::UnixMillis;

/// Roles of API keys, cumulative: `scaler ⊂ read ⊂ submit ⊂ admin`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum AccessRole {
    /// Only what an autoscaler reads: `GET /v1/scaling` and `GET /metrics`.
    Scaler,
    /// GET routes: jobs, nodes.
    Read,
    /// Read, plus submit jobs and cancel one's own.
    Submit,
    /// Everything: nodes, keys, tokens, revocation, audit, any job.
    Admin,
}

impl AccessRole {
    pub const ALL: [AccessRole; 4] = [
        AccessRole::Scaler,
        AccessRole::Read,
        AccessRole::Submit,
        AccessRole::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AccessRole::Scaler => "scaler",
            AccessRole::Read => "read",
            AccessRole::Submit => "submit",
            AccessRole::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<AccessRole> {
        AccessRole::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for AccessRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `POST /v1/admin/apikeys`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyCreate {
    pub name: String,
    pub role: AccessRole,
    /// Weight, class and limits; all default (weight 1, no limits).
    #[serde(default)]
    pub policy: crate::KeyPolicy,
}

/// The answer to key creation: the only time the secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApiKeyCreated {
    pub id: String,
    pub name: String,
    pub role: AccessRole,
    /// `kobo_<id>_<secret>`.
    pub key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApiKeyView {
    pub id: String,
    pub name: String,
    pub role: AccessRole,
    pub created_at: UnixMillis,
    pub created_by: String,
    pub revoked_at: Option<UnixMillis>,
    #[serde(default)]
    pub policy: crate::KeyPolicy,
}

/// `POST /v1/admin/tokens`: a single-use join token for one node name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    pub node_id: String,
    /// Lifetime in milliseconds.
    pub ttl_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenCreated {
    /// `kobo-join.<sha256 of the CA certificate, hex>.<id>.<secret>`.
    pub token: String,
    pub node_id: String,
    pub expires_at: UnixMillis,
}

/// `POST /v1/join`: enroll with a join token and a certificate signing
/// request whose key was made on the node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub token: String,
    pub csr_pem: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JoinResponse {
    pub node_id: String,
    pub certificate_pem: String,
    pub ca_pem: String,
}

/// `POST /v1/agent/renew`: a fresh certificate for a fresh key, over mTLS.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    pub csr_pem: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RenewResponse {
    pub certificate_pem: String,
    pub not_after: UnixMillis,
}

/// `POST /v1/admin/nodes/{id}/revoke`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RevokeResponse {
    pub node_id: String,
    pub certificates_revoked: u32,
    pub leases_released: u32,
}

/// One row of the audit log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    pub id: i64,
    pub at: UnixMillis,
    /// `apikey:<id>`, `node:<id>`, `local`, `anonymous`.
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    /// `ok`, `denied`, `failed`.
    pub outcome: String,
    pub source: Option<String>,
    pub request_id: Option<String>,
    pub detail: Option<String>,
    /// Hex SHA-256 over the previous row's hash and this row.
    pub hash: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<UnixMillis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditList {
    pub entries: Vec<AuditEntry>,
}

/// The result of checking the audit log's hash chain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditVerify {
    pub rows: u64,
    pub ok: bool,
    /// The first row whose hash does not match, if any.
    pub first_bad_id: Option<i64>,
}

/// `POST /v1/admin/certificates`: provisioning asks the coordinator to sign a
/// CSR made on a node (the node's key never leaves it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertificateIssue {
    pub node_id: String,
    pub csr_pem: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CertificateIssued {
    pub node_id: String,
    pub certificate_pem: String,
    pub ca_pem: String,
    pub not_after: UnixMillis,
}

/// What provisioning did on one host; `scale-up` and `scale-down` are the
/// autoscaler's (`kobo-coord autoscale`) starting and stopping a pool's host.
pub const PROVISION_ACTIONS: &[&str] = &[
    "install",
    "upgrade",
    "reconfigure",
    "renew-cert",
    "restart",
    "nothing",
    "remove",
    "rollback",
    "scale-up",
    "scale-down",
];
/// How it went: `changed` and `ok` (nothing to do) succeeded.
pub const PROVISION_OUTCOMES: &[&str] = &["ok", "changed", "failed", "unreachable"];

/// `POST /v1/admin/provision-runs`: one host's outcome of a provisioning
/// run, kept as an audit row `provision.<action>`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProvisionRun {
    /// The inventory host name.
    pub host: String,
    pub node_id: String,
    /// One of [`PROVISION_ACTIONS`].
    pub action: String,
    /// One of [`PROVISION_OUTCOMES`].
    pub outcome: String,
    #[serde(default)]
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProvisionRecorded {
    pub audit_action: String,
}
