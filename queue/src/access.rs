//! Who is calling: the principal behind a request (API key, node certificate,
//! or nobody), the roles routes require, and the in-memory cache of API keys
//! and valid certificates that makes those checks cheap per request.
//! Revocations update the cache in the same process that commits them, so
//! they take effect on the very next request.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use kobo_protocol::AccessRole;

use crate::pki::NodeCert;
use crate::security::{SecretHasher, parse_api_key};
use crate::store::ApiKeyRecord;

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Anonymous,
    ApiKey {
        id: String,
        name: String,
        role: AccessRole,
    },
    Node {
        node_id: String,
        serial: String,
    },
    /// The coordinator itself (timer, demo, local maintenance).
    Local,
    /// A dashboard session cookie; `via` is how it was opened
    /// (`apikey:<id>` or `login-url`). Sessions are read only.
    Session {
        via: String,
        role: AccessRole,
    },
}

impl Principal {
    /// The audit log's name for this principal.
    pub fn actor(&self) -> String {
        match self {
            Principal::Anonymous => "anonymous".into(),
            Principal::ApiKey { id, .. } => format!("apikey:{id}"),
            Principal::Node { node_id, .. } => format!("node:{node_id}"),
            Principal::Local => "local".into(),
            Principal::Session { via, .. } => format!("session:{via}"),
        }
    }

    /// The role of an API key; nodes and anonymous callers have none.
    pub fn role(&self) -> Option<AccessRole> {
        match self {
            Principal::ApiKey { role, .. } => Some(*role),
            Principal::Local => Some(AccessRole::Admin),
            Principal::Session { role, .. } => Some(*role),
            _ => None,
        }
    }
}

/// A request's caller: principal, address and request id, for decisions and
/// the audit log.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub source: Option<String>,
    pub request_id: Option<String>,
}

impl Caller {
    pub fn local() -> Caller {
        Caller {
            principal: Principal::Local,
            source: None,
            request_id: None,
        }
    }

    pub fn actor(&self) -> String {
        self.principal.actor()
    }
}

/// Why credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed, unknown or revoked API key (401).
    BadKey(String),
    /// A certificate that is not (or no longer) valid for a node (403).
    BadCertificate(String),
}

/// API keys and valid certificate serials, mirrored from the database.
pub struct AccessCache {
    hasher: SecretHasher,
    keys: RwLock<HashMap<String, ApiKeyRecord>>,
    /// serial → node id, for certificates not revoked.
    certs: RwLock<HashMap<String, String>>,
}

impl AccessCache {
    pub fn new(
        hasher: SecretHasher,
        keys: Vec<ApiKeyRecord>,
        certs: Vec<(String, String)>,
    ) -> AccessCache {
        AccessCache {
            hasher,
            keys: RwLock::new(keys.into_iter().map(|k| (k.view.id.clone(), k)).collect()),
            certs: RwLock::new(certs.into_iter().collect()),
        }
    }

    pub fn hasher(&self) -> &SecretHasher {
        &self.hasher
    }

    /// Replaces every key and certificate with the database's (a
    /// coordinator taking the lead: others changed them meanwhile).
    pub fn replace(&self, keys: Vec<ApiKeyRecord>, certs: Vec<(String, String)>) {
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) =
            keys.into_iter().map(|k| (k.view.id.clone(), k)).collect();
        *self.certs.write().unwrap_or_else(PoisonError::into_inner) = certs.into_iter().collect();
    }

    pub fn put_key(&self, record: ApiKeyRecord) {
        self.keys
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(record.view.id.clone(), record);
    }

    pub fn revoke_key(&self, id: &str, at: i64) {
        if let Some(key) = self
            .keys
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(id)
        {
            key.view.revoked_at = Some(at);
        }
    }

    pub fn put_cert(&self, serial: &str, node_id: &str) {
        self.certs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(serial.to_string(), node_id.to_string());
    }

    pub fn revoke_node_certs(&self, node_id: &str) {
        self.certs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, node| node != node_id);
    }

    /// The principal of a bearer API key.
    pub fn api_key(&self, presented: &str) -> Result<Principal, Refusal> {
        let (id, secret) =
            parse_api_key(presented).ok_or_else(|| Refusal::BadKey("malformed API key".into()))?;
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        let key = keys
            .get(id)
            .ok_or_else(|| Refusal::BadKey(format!("unknown API key {id}")))?;
        if !self.hasher.verify(secret, &key.secret_mac) {
            return Err(Refusal::BadKey(format!("wrong secret for API key {id}")));
        }
        if key.view.revoked_at.is_some() {
            return Err(Refusal::BadKey(format!("API key {id} is revoked")));
        }
        Ok(Principal::ApiKey {
            id: key.view.id.clone(),
            name: key.view.name.clone(),
            role: key.view.role,
        })
    }

    /// Whether API key `id` exists and is not revoked (dashboard sessions
    /// opened with it die with it).
    pub fn key_active(&self, id: &str) -> bool {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        keys.get(id)
            .is_some_and(|key| key.view.revoked_at.is_none())
    }

    /// The principal of a client certificate the handshake verified.
    pub fn node(&self, cert: &NodeCert) -> Result<Principal, Refusal> {
        let certs = self.certs.read().unwrap_or_else(PoisonError::into_inner);
        match certs.get(&cert.serial) {
            Some(node) if *node == cert.node_id => Ok(Principal::Node {
                node_id: cert.node_id.clone(),
                serial: cert.serial.clone(),
            }),
            _ => Err(Refusal::BadCertificate(format!(
                "certificate {} of node {} is revoked or unknown",
                cert.serial, cert.node_id
            ))),
        }
    }
}
