//! Sharing the fleet between API keys: each key's policy (weight, priority
//! class, limits, budget) as the lease path and the submit path read it, and
//! the fair-share state ([`fair`]).
//!
//! Jobs are grouped by their submitter (`jobs.submitted_by`: `apikey:<id>`,
//! `local`, …); a submitter that is not an API key has the default policy.

pub mod fair;
pub mod limits;

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};

use kobo_protocol::{KeyPolicy, PriorityClass};

use crate::store::sql::Db;
use crate::store::{self, ApiKeyRecord, StoreError};

pub use fair::FairShare;
pub use limits::{RateLimits, Refusal};

/// The submitter name of an API key's jobs.
pub fn key_actor(id: &str) -> String {
    format!("apikey:{id}")
}

/// Policies by submitter, and the fair-share state.
#[derive(Default)]
pub struct Tenants {
    policies: RwLock<HashMap<String, KeyPolicy>>,
    /// Keys' names by submitter, for messages.
    names: RwLock<HashMap<String, String>>,
    fair: Mutex<FairShare>,
    rates: Mutex<RateLimits>,
}

impl Tenants {
    /// Loads the policies of every key (at start).
    pub fn load(&self, keys: &[ApiKeyRecord]) {
        let mut policies = self
            .policies
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut names = self.names.write().unwrap_or_else(PoisonError::into_inner);
        for key in keys {
            policies.insert(key_actor(&key.view.id), key.view.policy.clone());
            names.insert(key_actor(&key.view.id), key.view.name.clone());
        }
    }

    /// Names a key in messages (created).
    pub fn set_name(&self, key_id: &str, name: &str) {
        self.names
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key_actor(key_id), name.to_string());
    }

    /// Admits `n` new requests of `submitter` at `now` under its limits
    /// (requests and tokens per minute, budget), recording them; or says
    /// why not. Called in the writer's transaction, so it is exact under
    /// concurrency; the budget is read from `usage` in that transaction.
    pub fn admit(
        &self,
        db: &dyn Db,
        submitter: &str,
        n: u32,
        now: i64,
    ) -> Result<Option<Refusal>, StoreError> {
        let policy = self.policy(submitter);
        if policy.rpm.is_none() && policy.tpm.is_none() && policy.budget.is_none() || n == 0 {
            return Ok(None);
        }
        let name = self
            .names
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(submitter)
            .cloned()
            .unwrap_or_else(|| submitter.to_string());
        if let Some(budget) = policy.budget {
            let (start, resets_at) = limits::budget_period(budget.period, now);
            let used = store::tokens_used_since(db, submitter, start)?;
            if let Some(refusal) = limits::budget_refusal(&name, &policy, used, resets_at, now) {
                return Ok(Some(refusal));
            }
        }
        let mut rates = self.rates.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(rates.admit(submitter, &name, &policy, n, now).err())
    }

    /// Counts the tokens a successful attempt of `submitter` reported
    /// against its tokens-per-minute limit.
    pub fn record_tokens(&self, submitter: &str, tokens: u64, now: i64) {
        let policy = self.policy(submitter);
        self.rates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record_tokens(submitter, &policy, tokens, now);
    }

    /// Sets the policy of a key (created or updated).
    pub fn set_policy(&self, key_id: &str, policy: KeyPolicy) {
        self.policies
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key_actor(key_id), policy);
    }

    /// The policy of a submitter; the default for one that is not a key.
    pub fn policy(&self, submitter: &str) -> KeyPolicy {
        self.policies
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(submitter)
            .cloned()
            .unwrap_or_default()
    }

    /// The weight and concurrency limit of a submitter, without cloning the
    /// rest of its policy (the lease path asks per key per lease).
    pub fn share_of(&self, submitter: &str) -> (u32, Option<u32>) {
        self.policies
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(submitter)
            .map(|p| (p.weight, p.max_concurrent))
            .unwrap_or((1, None))
    }

    /// Whether any key has a concurrency limit (else the lease path skips
    /// counting running jobs).
    pub fn any_concurrency_limit(&self) -> bool {
        self.policies
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .any(|p| p.max_concurrent.is_some())
    }

    /// The class of a job `submitter` submits (gateway request or not).
    pub fn class_of(&self, submitter: &str, gateway: bool) -> PriorityClass {
        let class = self
            .policies
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(submitter)
            .and_then(|p| p.class);
        PriorityClass::of_job(class, gateway)
    }

    pub fn fair(&self) -> MutexGuard<'_, FairShare> {
        self.fair.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
