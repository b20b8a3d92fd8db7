//! Enrollment keys and retirement. A key is a reusable secret bound to a
//! node-name prefix, with an expiry and a most number of enrollments: what
//! a Kubernetes Deployment needs, whose pods name themselves. Nodes lost
//! for longer than a bound are retired: gone from the fleet and the node
//! listing, their certificates revoked, their row kept for reports. Each
//! creation, enrollment, refusal, revocation and retirement is audited in
//! the write that makes it.

use kobo_protocol::{EnrollKeyCreated, EnrollKeyView, EnrollRequest, JoinResponse, validate};

use crate::access::Caller;
use crate::admin::{Admin, record};
use crate::pki::IssuedCert;
use crate::security::{ENROLL_KEY_PREFIX, JoinToken};
use crate::store::{self, AuditRecord, StoreError, WriteCtx};

/// Longest an enrollment key may live: a year (none: until revoked).
pub const MAX_ENROLL_KEY_TTL_MS: u64 = 366 * 24 * 3600 * 1000;

/// Why an enrollment was refused, as the error the caller gets.
enum Refused {
    Forbidden(String),
    Conflict(String),
    Invalid(String),
}

impl From<Refused> for StoreError {
    fn from(refused: Refused) -> StoreError {
        match refused {
            Refused::Forbidden(why) => StoreError::Forbidden(why),
            Refused::Conflict(why) => StoreError::Conflict(why),
            Refused::Invalid(why) => StoreError::Invalid(why),
        }
    }
}

impl Refused {
    fn why(&self) -> &str {
        match self {
            Refused::Forbidden(why) | Refused::Conflict(why) | Refused::Invalid(why) => why,
        }
    }
}

impl Admin {
    pub async fn create_enroll_key(
        &self,
        caller: &Caller,
        prefix: String,
        ttl_ms: Option<u64>,
        max_enrollments: Option<u32>,
    ) -> Result<EnrollKeyCreated, StoreError> {
        let secret = JoinToken::generate(&self.ca.cert_sha256);
        let mac = self.access.hasher().hash(&secret.secret);
        let key = secret.text_as(ENROLL_KEY_PREFIX);
        let caller = caller.clone();
        self.store
            .write(move |ctx| {
                let expires_at = ttl_ms.map(|ttl| ctx.now + ttl as i64);
                store::insert_enroll_key(
                    ctx.tx,
                    ctx.now,
                    &secret.id,
                    &prefix,
                    &mac,
                    &caller.actor(),
                    expires_at,
                    max_enrollments,
                )?;
                let limits = format!(
                    "prefix={prefix} expires={} max={}",
                    expires_at.map_or("never".into(), |t| t.to_string()),
                    max_enrollments.map_or("unlimited".into(), |n| n.to_string())
                );
                store::append_audit(
                    ctx.tx,
                    ctx.now,
                    &record(
                        &caller,
                        "enrollkey.create",
                        Some(format!("enrollkey:{}", secret.id)),
                        "ok",
                        Some(limits),
                    ),
                )?;
                Ok(EnrollKeyCreated {
                    key,
                    view: EnrollKeyView {
                        id: secret.id,
                        prefix,
                        created_at: ctx.now,
                        created_by: caller.actor(),
                        expires_at,
                        max_enrollments,
                        enrollments: 0,
                        revoked_at: None,
                    },
                })
            })
            .await
    }

    pub async fn list_enroll_keys(&self) -> Result<Vec<EnrollKeyView>, StoreError> {
        let keys = self
            .store
            .read(|conn| store::enroll_keys(conn, None))
            .await?;
        Ok(keys.into_iter().map(|k| k.view).collect())
    }

    /// Revokes a key: it enrolls no one from now on; nodes it enrolled keep
    /// their certificates (revoke those with `node revoke`).
    pub async fn revoke_enroll_key(&self, caller: &Caller, id: String) -> Result<(), StoreError> {
        let caller = caller.clone();
        self.store
            .write(move |ctx| {
                if !store::revoke_enroll_key(ctx.tx, ctx.now, &id)? {
                    let known = !store::enroll_keys(ctx.tx, Some(&id))?.is_empty();
                    return Err(crate::admin::not_revoked(known, "enrollment key", &id));
                }
                store::append_audit(
                    ctx.tx,
                    ctx.now,
                    &record(
                        &caller,
                        "enrollkey.revoke",
                        Some(format!("enrollkey:{id}")),
                        "ok",
                        None,
                    ),
                )?;
                Ok(())
            })
            .await
    }

    /// Enrolls a node with an enrollment key: checks the key (secret,
    /// revocation, expiry, CA pin, count), the name (the key's prefix, a
    /// DNS label, no live node of that name) and signs the CSR. A refusal
    /// is audited and answered as a 4xx naming the field.
    pub async fn enroll(
        &self,
        caller: &Caller,
        req: EnrollRequest,
    ) -> Result<JoinResponse, StoreError> {
        let Some(secret) = JoinToken::parse_as(ENROLL_KEY_PREFIX, &req.key) else {
            let why = format!(
                "key: not an enrollment key (expected {ENROLL_KEY_PREFIX}.<ca sha256>.<id>.<secret>)"
            );
            self.audit(record(
                caller,
                "node.enroll",
                None,
                "denied",
                Some(why.clone()),
            ))
            .await?;
            return Err(StoreError::Forbidden(why));
        };
        let caller = caller.clone();
        let admin = self.clone();
        let outcome = self
            .store
            .write(move |ctx| {
                let target = Some(format!("enrollkey:{}", secret.id));
                match admin.check_enrollment(ctx, &secret, &req) {
                    Ok(Ok((node_id, issued))) => {
                        // The name is not live (lost or retired, or new): a
                        // certificate an earlier holder of it kept dies now,
                        // so only the new pod acts as this node.
                        let older = store::revoke_certificates_of(ctx.tx, ctx.now, &node_id)?;
                        store::insert_certificate(
                            ctx.tx,
                            ctx.now,
                            &issued.serial,
                            &node_id,
                            issued.not_after_ms,
                            "enroll",
                        )?;
                        store::append_audit(
                            ctx.tx,
                            ctx.now,
                            &record(
                                &caller,
                                "node.enroll",
                                Some(format!("node:{node_id}")),
                                "ok",
                                Some(format!(
                                    "certificate {} via enrollment key {}; {older} older certificates revoked",
                                    issued.serial, secret.id
                                )),
                            ),
                        )?;
                        Ok(Ok((node_id, issued)))
                    }
                    Ok(Err(refused)) => {
                        let entry = record(
                            &caller,
                            "node.enroll",
                            target,
                            "denied",
                            Some(refused.why().to_string()),
                        );
                        store::append_audit(ctx.tx, ctx.now, &entry)?;
                        Ok(Err(refused))
                    }
                    Err(err) => Err(err),
                }
            })
            .await?;
        let (node_id, issued) = outcome?;
        self.access.revoke_node_certs(&node_id);
        self.access.put_cert(&issued.serial, &node_id);
        Ok(JoinResponse {
            node_id,
            certificate_pem: issued.pem,
            ca_pem: self.ca.cert_pem.clone(),
        })
    }

    /// The checks of [`Admin::enroll`], in the write; counts the enrollment
    /// last, so a refusal for any other reason uses none of the key.
    fn check_enrollment(
        &self,
        ctx: &mut WriteCtx<'_>,
        secret: &JoinToken,
        req: &EnrollRequest,
    ) -> Result<Result<(String, IssuedCert), Refused>, StoreError> {
        let id = &secret.id;
        let Some(key) = store::enroll_keys(ctx.tx, Some(id))?.pop() else {
            return Ok(Err(Refused::Forbidden(format!(
                "key: unknown enrollment key {id}"
            ))));
        };
        if !self.access.hasher().verify(&secret.secret, &key.secret_mac) {
            return Ok(Err(Refused::Forbidden(format!(
                "key: wrong secret for enrollment key {id}"
            ))));
        }
        let view = &key.view;
        if view.revoked_at.is_some() {
            return Ok(Err(Refused::Forbidden(format!(
                "key: enrollment key {id} is revoked"
            ))));
        }
        if view.expires_at.is_some_and(|at| at <= ctx.now) {
            return Ok(Err(Refused::Forbidden(format!(
                "key: enrollment key {id} expired"
            ))));
        }
        if secret.ca_hash != self.ca.cert_sha256 {
            return Ok(Err(Refused::Forbidden(
                "key: the enrollment key pins another CA".into(),
            )));
        }
        let node_id = match (&req.name_suffix, &req.node_id) {
            (Some(suffix), None) => format!("{}{suffix}", view.prefix),
            (None, Some(node_id)) => node_id.clone(),
            _ => {
                return Ok(Err(Refused::Invalid(
                    "name_suffix: give exactly one of name_suffix and node_id".into(),
                )));
            }
        };
        if !node_id.starts_with(&view.prefix) {
            return Ok(Err(Refused::Forbidden(format!(
                "node_id: {node_id:?} does not start with the enrollment key's prefix {:?}",
                view.prefix
            ))));
        }
        let field = if req.name_suffix.is_some() {
            "name_suffix"
        } else {
            "node_id"
        };
        if let Err(err) = validate::dns_label(field, &node_id, false) {
            return Ok(Err(Refused::Invalid(format!(
                "{} (the node name {node_id:?})",
                err.message
            ))));
        }
        if let Some(status) = store::live_node_status(ctx.tx, &node_id)? {
            return Ok(Err(Refused::Conflict(format!(
                "{field}: node {node_id} is enrolled and live (status {status}); pick another name"
            ))));
        }
        let issued = match self.ca.sign_node_csr(&req.csr_pem, &node_id, ctx.now) {
            Ok(issued) => issued,
            Err(err) => {
                return Ok(Err(Refused::Invalid(format!(
                    "csr_pem: bad certificate signing request: {err}"
                ))));
            }
        };
        if !store::count_enrollment(ctx.tx, id)? {
            return Ok(Err(Refused::Forbidden(format!(
                "key: enrollment key {id} has enrolled its maximum of {} nodes",
                view.max_enrollments.unwrap_or(0)
            ))));
        }
        Ok(Ok((node_id, issued)))
    }

    /// Retires every node lost for longer than `after_ms`: off the fleet and
    /// the node listing, its certificates revoked, audited. Returns the
    /// nodes retired.
    pub async fn retire_lost(&self, after_ms: u64) -> Result<Vec<String>, StoreError> {
        let retired = self
            .store
            .write(move |ctx| {
                let lost_before = ctx.now - after_ms as i64;
                let mut retired = Vec::new();
                for (node_id, last_heartbeat) in store::retirable_nodes(ctx.tx, lost_before)? {
                    let certs = store::retire_node(ctx.tx, ctx.now, &node_id)?;
                    let entry = AuditRecord {
                        actor: "coordinator".into(),
                        action: "node.retire".into(),
                        target: Some(format!("node:{node_id}")),
                        outcome: "ok",
                        source: None,
                        request_id: None,
                        detail: Some(format!(
                            "lost for {} ms (bound {after_ms} ms); {certs} certificates revoked",
                            ctx.now - last_heartbeat
                        )),
                    };
                    store::append_audit(ctx.tx, ctx.now, &entry)?;
                    retired.push(node_id);
                }
                Ok(retired)
            })
            .await?;
        for node_id in &retired {
            tracing::info!(%node_id, "node retired: lost for longer than --retire-lost-after; its certificates are revoked");
            self.access.revoke_node_certs(node_id);
            self.hub.remove_node(node_id);
        }
        Ok(retired)
    }
}
