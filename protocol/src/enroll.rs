//! Enrollment keys: a reusable secret for a fleet that names its own nodes
//! (a Kubernetes Deployment), bound to a node-name prefix, with an expiry
//! and a most number of enrollments. Single-use join tokens do not fit
//! pods that come and go.

use serde::{Deserialize, Serialize};

use crate::UnixMillis;

/// `POST /v1/admin/enroll-keys`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnrollKeyCreate {
    /// Every node enrolled with the key has a name starting with this,
    /// e.g. `k8s-gpu-`.
    pub prefix: String,
    /// Lifetime in milliseconds (none: until revoked).
    #[serde(default)]
    pub ttl_ms: Option<u64>,
    /// Most nodes the key may enroll (none: no limit).
    #[serde(default)]
    pub max_enrollments: Option<u32>,
}

/// The created key: `key` is shown this once (only its hash is stored).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EnrollKeyCreated {
    /// `kobo-enroll.<sha256 of the CA certificate, hex>.<id>.<secret>`.
    pub key: String,
    pub view: EnrollKeyView,
}

/// An enrollment key as `GET /v1/admin/enroll-keys` lists it (no secret).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EnrollKeyView {
    pub id: String,
    pub prefix: String,
    pub created_at: UnixMillis,
    pub created_by: String,
    pub expires_at: Option<UnixMillis>,
    pub max_enrollments: Option<u32>,
    /// Nodes enrolled with it so far.
    pub enrollments: u32,
    pub revoked_at: Option<UnixMillis>,
}

/// `POST /v1/enroll`: the node's name is the key's prefix followed by
/// `name_suffix` (a pod name), or `node_id` in full; exactly one is given.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub key: String,
    #[serde(default)]
    pub name_suffix: Option<String>,
    #[serde(default)]
    pub node_id: Option<String>,
    pub csr_pem: String,
}
