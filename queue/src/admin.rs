//! Security operations: API keys, join tokens, enrollment and renewal of node
//! certificates, certificates for provisioning, revocation, and the audit
//! log (provisioning runs included). Each change is one store
//! write that also appends its audit row, so the two commit together.

use std::sync::Arc;

use kobo_protocol::{
    AccessRole, ApiKeyCreated, ApiKeyView, AuditEntry, AuditVerify, CertificateIssued,
    JoinResponse, KeyPolicy, KeyPolicyUpdate, ProvisionRecorded, ProvisionRun, RenewResponse,
    RevokeResponse, TokenCreated,
};

use crate::access::{AccessCache, Caller, Principal};
use crate::dispatch::Hub;
use crate::pki::{Ca, IssuedCert};
use crate::security::{JoinToken, new_api_key};
use crate::store::{self, ApiKeyRecord, AuditRecord, Changes, Effect, Store, StoreError, WriteCtx};

/// Longest a join token may live.
pub const MAX_TOKEN_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// The security operations; cheap to clone.
#[derive(Clone)]
pub struct Admin {
    pub(crate) store: Store,
    pub(crate) hub: Arc<Hub>,
    pub(crate) ca: Arc<Ca>,
    pub(crate) access: Arc<AccessCache>,
}

/// An audit row for `caller`.
pub fn record(
    caller: &Caller,
    action: &str,
    target: Option<String>,
    outcome: &'static str,
    detail: Option<String>,
) -> AuditRecord {
    AuditRecord {
        actor: caller.actor(),
        action: action.to_string(),
        target,
        outcome,
        source: caller.source.clone(),
        request_id: caller.request_id.clone(),
        detail,
    }
}

fn released(hub: &Hub, ctx: &mut WriteCtx<'_>, changes: Changes) -> Result<(), StoreError> {
    for job_id in changes.finished {
        ctx.effect(Effect::Finished(job_id));
    }
    hub.hand_off(ctx, changes.ready)
}

impl Admin {
    pub fn new(store: Store, hub: Arc<Hub>, ca: Arc<Ca>, access: Arc<AccessCache>) -> Admin {
        Admin {
            store,
            hub,
            ca,
            access,
        }
    }

    /// Reads the API keys, their policies and the valid certificates from
    /// the database again: the start of a leadership term, when another
    /// coordinator may have changed them.
    pub async fn reload_access(&self) -> Result<(), StoreError> {
        let (keys, certs) = self
            .store
            .read(|db| Ok((store::list_api_keys(db)?, store::valid_certificates(db)?)))
            .await?;
        self.hub.tenants.load(&keys);
        self.access.replace(keys, certs);
        Ok(())
    }

    /// The CA certificate (PEM) agents and clients pin.
    pub fn ca_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    /// The cache of API keys and certificates this process serves from.
    pub fn access(&self) -> &Arc<AccessCache> {
        &self.access
    }

    /// Appends one audit row in its own write (denials, which change nothing
    /// else).
    pub async fn audit(&self, entry: AuditRecord) -> Result<(), StoreError> {
        self.store
            .write(move |ctx| store::append_audit(ctx.tx, ctx.now, &entry).map(|_| ()))
            .await
    }

    pub async fn create_api_key(
        &self,
        caller: &Caller,
        name: String,
        role: AccessRole,
        policy: KeyPolicy,
    ) -> Result<ApiKeyCreated, StoreError> {
        policy.validate().map_err(StoreError::Invalid)?;
        let (id, secret, key) = new_api_key();
        let mac = self.access.hasher().hash(&secret);
        let caller = caller.clone();
        let (view, mac) = self
            .store
            .write(move |ctx| {
                store::insert_api_key(
                    ctx.tx,
                    ctx.now,
                    &id,
                    &name,
                    role,
                    &mac,
                    &caller.actor(),
                    &policy,
                )?;
                store::append_audit(
                    ctx.tx,
                    ctx.now,
                    &record(
                        &caller,
                        "apikey.create",
                        Some(format!("apikey:{id}")),
                        "ok",
                        Some(format!("name={name} role={role} {}", policy.summary())),
                    ),
                )?;
                Ok((
                    ApiKeyView {
                        id,
                        name,
                        role,
                        created_at: ctx.now,
                        created_by: caller.actor(),
                        revoked_at: None,
                        policy,
                    },
                    mac,
                ))
            })
            .await?;
        self.hub.tenants.set_policy(&view.id, view.policy.clone());
        self.hub.tenants.set_name(&view.id, &view.name);
        self.access.put_key(ApiKeyRecord {
            view: view.clone(),
            secret_mac: mac,
        });
        Ok(ApiKeyCreated {
            id: view.id,
            name: view.name,
            role: view.role,
            key,
        })
    }

    pub async fn list_api_keys(&self) -> Result<Vec<ApiKeyView>, StoreError> {
        let keys = self.store.read(|conn| store::list_api_keys(conn)).await?;
        Ok(keys.into_iter().map(|k| k.view).collect())
    }

    /// Changes a key's weight, class, limits or budget; the lease and
    /// submit paths use the new policy from the next request on. Returns
    /// the key as it is now.
    pub async fn update_api_key(
        &self,
        caller: &Caller,
        id: String,
        update: KeyPolicyUpdate,
    ) -> Result<ApiKeyView, StoreError> {
        let caller = caller.clone();
        let view = self
            .store
            .write(move |ctx| {
                let Some(mut key) = store::list_api_keys(ctx.tx)?
                    .into_iter()
                    .find(|k| k.view.id == id)
                else {
                    return Err(StoreError::NotFound(format!("no API key {id}")));
                };
                if key.view.revoked_at.is_some() {
                    return Err(StoreError::Conflict(format!("API key {id} is revoked")));
                }
                let policy = update
                    .apply(&key.view.policy)
                    .map_err(StoreError::Invalid)?;
                store::update_api_key_policy(ctx.tx, &id, &policy)?;
                store::append_audit(
                    ctx.tx,
                    ctx.now,
                    &record(
                        &caller,
                        "apikey.update",
                        Some(format!("apikey:{id}")),
                        "ok",
                        Some(policy.summary()),
                    ),
                )?;
                key.view.policy = policy;
                Ok(key.view)
            })
            .await?;
        self.hub.tenants.set_policy(&view.id, view.policy.clone());
        Ok(view)
    }

    pub async fn revoke_api_key(&self, caller: &Caller, id: String) -> Result<(), StoreError> {
        let caller = caller.clone();
        let target = id.clone();
        let at = self
            .store
            .write(move |ctx| {
                if !store::revoke_api_key(ctx.tx, ctx.now, &target)? {
                    let known = store::list_api_keys(ctx.tx)?
                        .iter()
                        .any(|k| k.view.id == target);
                    return Err(not_revoked(known, "API key", &target));
                }
                store::append_audit(
                    ctx.tx,
                    ctx.now,
                    &record(
                        &caller,
                        "apikey.revoke",
                        Some(format!("apikey:{target}")),
                        "ok",
                        None,
                    ),
                )?;
                Ok(ctx.now)
            })
            .await?;
        self.access.revoke_key(&id, at);
        Ok(())
    }

    pub async fn create_token(
        &self,
        caller: &Caller,
        node_id: String,
        ttl_ms: u64,
    ) -> Result<TokenCreated, StoreError> {
        let token = JoinToken::generate(&self.ca.cert_sha256);
        let mac = self.access.hasher().hash(&token.secret);
        let caller = caller.clone();
        let text = token.to_string();
        self.store
            .write(move |ctx| {
                let expires_at = ctx.now + ttl_ms as i64;
                store::insert_token(
                    ctx.tx,
                    ctx.now,
                    &token.id,
                    &node_id,
                    &mac,
                    &caller.actor(),
                    expires_at,
                )?;
                store::append_audit(
                    ctx.tx,
                    ctx.now,
                    &record(
                        &caller,
                        "token.create",
                        Some(format!("node:{node_id}")),
                        "ok",
                        Some(format!("token {} expires {expires_at}", token.id)),
                    ),
                )?;
                Ok(TokenCreated {
                    token: text,
                    node_id,
                    expires_at,
                })
            })
            .await
    }

    /// Enrolls a node: checks the single-use token, signs the CSR. A refused
    /// token is audited and answered as `Forbidden`.
    pub async fn join(
        &self,
        caller: &Caller,
        token: &str,
        csr_pem: String,
    ) -> Result<JoinResponse, StoreError> {
        let Some(token) = JoinToken::parse(token) else {
            self.audit(record(
                caller,
                "node.enroll",
                None,
                "denied",
                Some("malformed join token".into()),
            ))
            .await?;
            return Err(StoreError::Forbidden("malformed join token".into()));
        };
        let caller = caller.clone();
        let admin = self.clone();
        let outcome = self
            .store
            .write(move |ctx| {
                let refuse = |ctx: &mut WriteCtx<'_>, why: String| -> Result<Result<(String, IssuedCert), String>, StoreError> {
                    store::append_audit(ctx.tx, ctx.now, &record(&caller, "node.enroll", Some(format!("token:{}", token.id)), "denied", Some(why.clone())))?;
                    Ok(Err(why))
                };
                let Some((node_id, mac, expires_at, used_at)) = store::find_token(ctx.tx, &token.id)? else {
                    return refuse(ctx, format!("unknown join token {}", token.id));
                };
                if !admin.access.hasher().verify(&token.secret, &mac) {
                    return refuse(ctx, format!("wrong secret for join token {}", token.id));
                }
                if used_at.is_some() {
                    return refuse(ctx, format!("join token {} was already used", token.id));
                }
                if expires_at <= ctx.now {
                    return refuse(ctx, format!("join token {} expired", token.id));
                }
                if token.ca_hash != admin.ca.cert_sha256 {
                    return refuse(ctx, "join token pins another CA".into());
                }
                let issued = match admin.ca.sign_node_csr(&csr_pem, &node_id, ctx.now) {
                    Ok(issued) => issued,
                    Err(err) => return refuse(ctx, format!("bad certificate signing request: {err}")),
                };
                if !store::use_token(ctx.tx, ctx.now, &token.id)? {
                    return refuse(ctx, format!("join token {} was already used", token.id));
                }
                store::insert_certificate(ctx.tx, ctx.now, &issued.serial, &node_id, issued.not_after_ms, "join")?;
                store::append_audit(
                    ctx.tx,
                    ctx.now,
                    &record(&caller, "node.enroll", Some(format!("node:{node_id}")), "ok", Some(format!("certificate {} via token {}", issued.serial, token.id))),
                )?;
                Ok(Ok((node_id, issued)))
            })
            .await?;
        let (node_id, issued) = outcome.map_err(StoreError::Forbidden)?;
        self.access.put_cert(&issued.serial, &node_id);
        Ok(JoinResponse {
            node_id,
            certificate_pem: issued.pem,
            ca_pem: self.ca.cert_pem.clone(),
        })
    }

    /// Issues a fresh certificate to a node for a fresh key (mTLS).
    pub async fn renew(
        &self,
        caller: &Caller,
        csr_pem: String,
    ) -> Result<RenewResponse, StoreError> {
        let Principal::Node { node_id, serial } = &caller.principal else {
            return Err(StoreError::Forbidden(
                "renewal needs a node certificate".into(),
            ));
        };
        let (node_id, old_serial) = (node_id.clone(), serial.clone());
        let caller = caller.clone();
        let ca = self.ca.clone();
        let issued = self
            .store
            .write(move |ctx| {
                let issued = ca.sign_node_csr(&csr_pem, &node_id, ctx.now).map_err(|e| {
                    StoreError::Invalid(format!("bad certificate signing request: {e}"))
                })?;
                store::insert_certificate(
                    ctx.tx,
                    ctx.now,
                    &issued.serial,
                    &node_id,
                    issued.not_after_ms,
                    "renew",
                )?;
                store::append_audit(
                    ctx.tx,
                    ctx.now,
                    &record(
                        &caller,
                        "node.renew",
                        Some(format!("node:{node_id}")),
                        "ok",
                        Some(format!(
                            "certificate {} replaces {old_serial}",
                            issued.serial
                        )),
                    ),
                )?;
                Ok((node_id, issued))
            })
            .await?;
        let (node_id, issued) = issued;
        self.access.put_cert(&issued.serial, &node_id);
        Ok(RenewResponse {
            certificate_pem: issued.pem,
            not_after: issued.not_after_ms,
        })
    }

    /// Signs a CSR made on a node for provisioning (admin): the certificate
    /// is recorded and known to the access cache at once, like an enrollment.
    pub async fn issue_certificate(
        &self,
        caller: &Caller,
        node_id: String,
        csr_pem: String,
    ) -> Result<CertificateIssued, StoreError> {
        let caller = caller.clone();
        let ca = self.ca.clone();
        let target = node_id.clone();
        let issued = self
            .store
            .write(move |ctx| {
                let issued = ca.sign_node_csr(&csr_pem, &target, ctx.now).map_err(|e| {
                    StoreError::Invalid(format!("csr_pem: bad certificate signing request: {e}"))
                })?;
                store::insert_certificate(
                    ctx.tx,
                    ctx.now,
                    &issued.serial,
                    &target,
                    issued.not_after_ms,
                    "provision",
                )?;
                store::append_audit(
                    ctx.tx,
                    ctx.now,
                    &record(
                        &caller,
                        "node.certificate",
                        Some(format!("node:{target}")),
                        "ok",
                        Some(format!("certificate {} for provisioning", issued.serial)),
                    ),
                )?;
                Ok(issued)
            })
            .await?;
        self.access.put_cert(&issued.serial, &node_id);
        Ok(CertificateIssued {
            node_id,
            certificate_pem: issued.pem,
            ca_pem: self.ca.cert_pem.clone(),
            not_after: issued.not_after_ms,
        })
    }

    /// Records one host's outcome of a provisioning run as the audit row
    /// `provision.<action>`.
    pub async fn record_provision_run(
        &self,
        caller: &Caller,
        run: ProvisionRun,
    ) -> Result<ProvisionRecorded, StoreError> {
        let action = format!("provision.{}", run.action);
        let outcome = match run.outcome.as_str() {
            "ok" | "changed" => "ok",
            _ => "failed",
        };
        let detail = if run.detail.is_empty() {
            format!("host {}: {}", run.host, run.outcome)
        } else {
            format!("host {}: {}: {}", run.host, run.outcome, run.detail)
        };
        self.audit(record(
            caller,
            &action,
            Some(format!("node:{}", run.node_id)),
            outcome,
            Some(detail),
        ))
        .await?;
        Ok(ProvisionRecorded {
            audit_action: action,
        })
    }

    /// Revokes a node: all its certificates die at once (checked per
    /// request) and its leases are released.
    pub async fn revoke_node(
        &self,
        caller: &Caller,
        node_id: String,
    ) -> Result<RevokeResponse, StoreError> {
        let caller = caller.clone();
        let target = node_id.clone();
        let hub = self.hub.clone();
        let (certs, leases) = self
            .store
            .write(move |ctx| {
                let mut changes = Changes::default();
                let counts = store::revoke_node(ctx.tx, ctx.now, &target, &mut changes)?;
                hub.beats.forget(&target);
                store::append_audit(
                    ctx.tx,
                    ctx.now,
                    &record(
                        &caller,
                        "node.revoke",
                        Some(format!("node:{target}")),
                        "ok",
                        Some(format!(
                            "{} certificates, {} leases released",
                            counts.0, counts.1
                        )),
                    ),
                )?;
                released(&hub, ctx, changes)?;
                Ok(counts)
            })
            .await?;
        self.access.revoke_node_certs(&node_id);
        Ok(RevokeResponse {
            node_id,
            certificates_revoked: certs as u32,
            leases_released: leases as u32,
        })
    }

    pub async fn audit_list(&self, since: i64, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        self.store
            .read(move |conn| store::list_audit(conn, since, limit))
            .await
    }

    pub async fn audit_verify(&self) -> Result<AuditVerify, StoreError> {
        self.store.read(|conn| store::verify_audit(conn)).await
    }
}

/// Why revoking `what` `id` changed nothing: it was revoked already (409),
/// or there is no such thing (404).
pub(crate) fn not_revoked(known: bool, what: &str, id: &str) -> StoreError {
    if known {
        StoreError::Conflict(format!("{what} {id} is already revoked"))
    } else {
        StoreError::NotFound(format!("no {what} {id}"))
    }
}
