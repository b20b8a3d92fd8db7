//! Queue operations: each is one write on the store plus the hand-offs and
//! notifications it causes. The HTTP layer calls these; they never see HTTP.

use std::sync::Arc;
use std::time::Duration;

use kobo_protocol::resume::Resume;
use kobo_protocol::{
    AccessRole, CompleteBatchRequest, CompleteRequest, CompleteResponse, ErrorDetail, JobId,
    JobState, JobView, Lease, LeaseRequest, NodeStatus, RegisterRequest, RegisterResponse,
    ReportAnswer, SubmitJob, SubmitResponse,
};
use kobo_protocol::{GatewayCall, LlmRequest};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::access::Caller;
use crate::admin;
use crate::dispatch::{self, Hub};
use crate::scoring::JobRoute;
use crate::store::{self, Backoff, Changes, Effect, Store, StoreError, WriteCtx};
use crate::streams::Streams;

/// How far back measured speeds are read at start.
const SPEED_HISTORY: Duration = Duration::from_secs(24 * 3600);
/// Longest the timer sleeps even when nothing is due: a safety net, not a
/// polling interval (every due time is computed and woken for).
const TIMER_MAX_SLEEP: Duration = Duration::from_secs(1);
/// Shortest sleep between ticks, so a due time that a tick cannot clear never
/// spins the timer.
const TIMER_MIN_SLEEP: Duration = Duration::from_millis(1);

/// The queue: the store and the hub of parked agents.
#[derive(Clone)]
pub struct Queue {
    pub(crate) store: Store,
    pub(crate) hub: Arc<Hub>,
    streams: Streams,
}

pub use crate::reads::reveal_only_of;

/// Turns what a write changed into hand-offs and notifications.
fn apply(hub: &Hub, ctx: &mut WriteCtx<'_>, mut changes: Changes) -> Result<(), StoreError> {
    if !changes.completed.is_empty() || !changes.freed.is_empty() {
        let mut fair = hub.tenants.fair();
        for done in &changes.completed {
            fair.settle(done.job_id, done.duration_ms as f64);
        }
        for (_, job_id) in &changes.freed {
            fair.close(*job_id);
        }
    }
    for done in &changes.completed {
        hub.record_completion(done);
        hub.tenants.record_tokens(
            &done.submitted_by,
            done.prompt_tokens + done.completion_tokens,
            ctx.now,
        );
    }
    hub.offer_freed(ctx, &mut changes)?;
    for job_id in changes.finished {
        ctx.effect(Effect::Finished(job_id));
    }
    if changes.scheduled {
        ctx.effect(Effect::WakeTimer);
    }
    hub.hand_off(ctx, changes.ready)
}

/// Loads a node, refusing a call from an agent instance that is no longer
/// the node's registered one (a newer process took over the node id).
pub(crate) fn current_instance(
    ctx: &WriteCtx<'_>,
    node_id: &str,
    instance_id: &str,
) -> Result<store::NodeRecord, StoreError> {
    let node = store::load_node(ctx.tx, node_id)?;
    if node.instance_id != instance_id {
        return Err(StoreError::Conflict(format!(
            "node {node_id} is registered by another agent instance; register again"
        )));
    }
    Ok(node)
}

enum LeaseStart {
    Granted(Vec<Lease>),
    Parked(u64, oneshot::Receiver<Vec<Lease>>),
    Idle,
}

/// Unparks a lease request when its handler ends, however it ends.
struct ParkGuard<'a> {
    hub: &'a Hub,
    waiter_id: u64,
}

impl Drop for ParkGuard<'_> {
    fn drop(&mut self) {
        self.hub.unpark(self.waiter_id);
    }
}

impl Queue {
    pub fn new(store: Store, hub: Arc<Hub>) -> Queue {
        Queue {
            store,
            hub,
            streams: Streams::default(),
        }
    }

    /// The retry of a job whose node went away (lost, restarted, lease
    /// expired): the same backoff as a failed attempt, one draw per write.
    fn lost_retry(&self) -> store::Retry {
        store::Retry {
            backoff: self.backoff(),
            unit_random: rand::random::<f64>(),
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff {
            base_ms: self.hub.config.retry_base_ms,
            cap_ms: self.hub.config.retry_cap_ms,
        }
    }

    /// Inserts validated jobs in one transaction, with one audit row;
    /// ready ones go straight to parked agents that may run them.
    pub async fn submit(
        &self,
        caller: &Caller,
        jobs: Vec<SubmitJob>,
    ) -> Result<Vec<SubmitResponse>, StoreError> {
        let calls = jobs
            .into_iter()
            .map(|job| {
                let request = job.llm_request();
                (job, request)
            })
            .collect();
        self.submit_requests(caller, calls, "job.submit").await
    }

    /// Submits one gateway call (an OpenAI or Ollama API request) as a job,
    /// routed by `job`'s kind, requirements and preferences.
    pub async fn submit_gateway(
        &self,
        caller: &Caller,
        job: SubmitJob,
        call: GatewayCall,
    ) -> Result<SubmitResponse, StoreError> {
        let mut request = job.llm_request();
        request.model = call
            .body
            .get("model")
            .and_then(|m| m.as_str())
            .map(str::to_owned)
            .or(request.model);
        request.gateway = Some(call);
        let mut answers = self
            .submit_requests(caller, vec![(job, request)], "gateway.request")
            .await?;
        answers
            .pop()
            .ok_or_else(|| StoreError::Corrupt("submit returned nothing".into()))
    }

    async fn submit_requests(
        &self,
        caller: &Caller,
        jobs: Vec<(SubmitJob, LlmRequest)>,
        action: &'static str,
    ) -> Result<Vec<SubmitResponse>, StoreError> {
        let hub = self.hub.clone();
        let caller = caller.clone();
        self.store
            .write(move |ctx| {
                let mut changes = Changes::default();
                let default_attempts = hub.config.default_max_attempts;
                let actor = caller.actor();
                // The key's limits, checked here, in the writer: exact under
                // concurrency. A refused request writes only its audit row.
                let new_requests = store::new_requests(ctx.tx, jobs.iter().map(|(job, _)| job))?;
                if let Some(refusal) = hub.tenants.admit(ctx.tx, &actor, new_requests, ctx.now)? {
                    let denial = admin::record(
                        &caller,
                        action,
                        None,
                        "denied",
                        Some(refusal.message.clone()),
                    );
                    store::append_audit(ctx.tx, ctx.now, &denial)?;
                    return Ok(Err(refusal));
                }
                let answers = jobs
                    .iter()
                    .map(|(job, request)| {
                        let class = hub.tenants.class_of(&actor, request.gateway.is_some());
                        store::insert_request(
                            ctx.tx,
                            ctx.now,
                            &hub.sealer,
                            default_attempts,
                            &actor,
                            class,
                            job,
                            request,
                            &mut changes,
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let created = answers.iter().filter(|a| a.created).count();
                let target = match (answers.first(), answers.last()) {
                    (Some(first), Some(last)) if first.id == last.id => format!("job:{}", first.id),
                    (Some(first), Some(last)) => format!("jobs:{}..{}", first.id, last.id),
                    _ => "jobs:none".to_string(),
                };
                let detail = format!("{} jobs, {created} created", answers.len());
                store::append_audit(
                    ctx.tx,
                    ctx.now,
                    &admin::record(&caller, action, Some(target), "ok", Some(detail)),
                )?;
                apply(&hub, ctx, changes)?;
                Ok(Ok(answers))
            })
            .await?
            .map_err(StoreError::Limited)
    }

    /// The relay of streamed answers (gateway requests).
    pub fn streams(&self) -> &Streams {
        &self.streams
    }

    /// Refuses a call about `job_id` from `node_id` unless it holds the
    /// job's current lease `lease_token` (a stale holder changes nothing).
    pub async fn check_lease(
        &self,
        node_id: &str,
        job_id: JobId,
        lease_token: i64,
    ) -> Result<(), StoreError> {
        let node = node_id.to_owned();
        let holder = self
            .store
            .read(move |conn| store::lease_holder(conn, job_id))
            .await?
            .ok_or(StoreError::JobNotFound(job_id))?;
        match holder {
            (JobState::Leased, Some(holder), token) if holder == node && token == lease_token => {
                Ok(())
            }
            _ => Err(StoreError::StaleLease(format!(
                "job {job_id} is not leased to {node} with lease token {lease_token}"
            ))),
        }
    }

    /// Takes a gateway job's lease `lease_token` away at once because its
    /// stream broke (the answering agent or its upload died): the job goes
    /// back to the queue (counting the attempt) for another node to answer
    /// or continue, without waiting for the lease to run out. A lease no
    /// longer current is left alone.
    pub async fn release_broken_stream(
        &self,
        job_id: JobId,
        lease_token: i64,
        detail: String,
    ) -> Result<(), StoreError> {
        let hub = self.hub.clone();
        self.store
            .write(move |ctx| {
                let mut changes = Changes::default();
                store::release_leases(
                    ctx.tx,
                    ctx.now,
                    &[(job_id, lease_token)],
                    "stream_broken",
                    &detail,
                    // At once: a client is waiting on the stream.
                    None,
                    &mut changes,
                )?;
                apply(&hub, ctx, changes)
            })
            .await
    }

    pub async fn register(&self, req: RegisterRequest) -> Result<RegisterResponse, StoreError> {
        let hub = self.hub.clone();
        let config = self.hub.config.clone();
        let retry = self.lost_retry();
        self.store
            .write(move |ctx| {
                let mut changes = Changes::default();
                store::register_node(ctx.tx, ctx.now, &req, Some(retry), &mut changes)?;
                if let Some(state) = store::fleet_state(ctx.tx, &req.node_id)? {
                    hub.set_node(state);
                }
                hub.beats.admit(&req.node_id, &req.instance_id);
                apply(&hub, ctx, changes)?;
                tracing::info!(node_id = %req.node_id, region = %req.region, max_workers = req.max_workers, "agent registered");
                Ok(RegisterResponse {
                    heartbeat_interval_ms: config.heartbeat_interval_ms,
                    lease_ttl_ms: config.lease_ttl_ms,
                    long_poll_ms: config.long_poll_ms,
                    server_time: ctx.now,
                })
            })
            .await
    }

    /// Leases up to `max_jobs` jobs, parking up to `wait` when none is ready.
    /// A streamed gateway job's new attempt is told where to continue from
    /// when an earlier one's stream broke after reaching its client.
    pub async fn lease(&self, req: LeaseRequest) -> Result<Vec<Lease>, StoreError> {
        let mut leases = self.lease_jobs(req).await?;
        for lease in &mut leases {
            if let Some(call) = lease.request.gateway.as_mut().filter(|call| call.stream) {
                call.resume = self
                    .streams
                    .begin_attempt(lease.job_id, lease.lease_token, call);
                if let Some(resume) = &call.resume {
                    self.note_resume(lease.job_id, lease.lease_token, resume);
                }
            }
        }
        Ok(leases)
    }

    /// Records in the lease's event where its attempt continues from; in
    /// the background, as the lease answer should not wait for it.
    fn note_resume(&self, job_id: JobId, lease_token: i64, resume: &Resume) {
        let note = format!(
            "continues the broken stream from its first {} characters ({} tokens)",
            resume.text.chars().count(),
            resume.tokens
        );
        let store = self.store.clone();
        tokio::spawn(async move {
            let noted = store
                .write(move |ctx| store::note_lease(ctx.tx, job_id, lease_token, &note))
                .await;
            if let Err(err) = noted {
                tracing::warn!(job_id, error = %err, "noting where a stream resumes");
            }
        });
    }

    async fn lease_jobs(&self, req: LeaseRequest) -> Result<Vec<Lease>, StoreError> {
        let hub = self.hub.clone();
        let wait = Duration::from_millis(req.wait_ms.min(self.hub.config.long_poll_ms));
        let start = self
            .store
            .write(move |ctx| {
                let node = current_instance(ctx, &req.node_id, &req.instance_id)?;
                store::touch_node(ctx.tx, ctx.now, &req.node_id)?;
                if matches!(node.status, NodeStatus::Draining | NodeStatus::Drained) {
                    return Ok(LeaseStart::Idle);
                }
                let ttl = hub.config.lease_ttl_ms;
                let explainer = dispatch::PullExplainer::new(&hub, &req.node_id);
                let explain = |route: &JobRoute| explainer.explain(route);
                let expected_ms = |route: &JobRoute| hub.expected_ms(route);
                let share = store::Share {
                    tenants: Some(&hub.tenants),
                    fair_share: hub.config.fair_share,
                    expected_ms: &expected_ms,
                };
                let leases = store::lease_for_node(
                    ctx.tx,
                    ctx.now,
                    &hub.sealer,
                    ttl,
                    &node.profile,
                    req.max_jobs,
                    &explain,
                    &share,
                )?;
                if !leases.is_empty() || req.wait_ms == 0 {
                    return Ok(LeaseStart::Granted(leases));
                }
                let (sender, receiver) = oneshot::channel();
                let waiter_id = hub.park(node.profile, req.max_jobs, sender);
                Ok(LeaseStart::Parked(waiter_id, receiver))
            })
            .await?;
        match start {
            LeaseStart::Granted(leases) => Ok(leases),
            LeaseStart::Idle => {
                tokio::time::sleep(wait).await;
                Ok(Vec::new())
            }
            LeaseStart::Parked(waiter_id, mut receiver) => {
                let guard = ParkGuard {
                    hub: &self.hub,
                    waiter_id,
                };
                match tokio::time::timeout(wait, &mut receiver).await {
                    Ok(leases) => Ok(leases.unwrap_or_default()),
                    Err(_) => {
                        if self.hub.unpark(waiter_id) {
                            Ok(Vec::new())
                        } else {
                            // Claimed by a hand-off just now: its leases are
                            // committed and on their way.
                            drop(guard);
                            Ok(receiver.await.unwrap_or_default())
                        }
                    }
                }
            }
        }
    }

    /// Applies a batch of reports in one write. A report the store refuses
    /// (stale lease, unknown job) is answered with its error and changes
    /// nothing; the others are applied.
    pub async fn complete_batch(
        &self,
        req: CompleteBatchRequest,
    ) -> Result<Vec<ReportAnswer>, StoreError> {
        let hub = self.hub.clone();
        let backoff = self.backoff();
        self.store
            .write(move |ctx| {
                let mut changes = Changes::default();
                let mut answers = Vec::with_capacity(req.reports.len());
                for report in req.reports {
                    let retry = store::Retry {
                        backoff,
                        unit_random: rand::random::<f64>(),
                    };
                    let job_id = report.job_id;
                    let single = CompleteRequest {
                        node_id: req.node_id.clone(),
                        lease_token: report.lease_token,
                        outcome: report.outcome,
                    };
                    // Refusals are decided before a report writes anything,
                    // so answering them alone leaves nothing half-done; any
                    // other failure fails the whole batch.
                    let answer = match store::complete_job(
                        ctx.tx,
                        ctx.now,
                        &hub.sealer,
                        retry,
                        job_id,
                        &single,
                        &mut changes,
                    ) {
                        Ok(done) => ReportAnswer {
                            job_id,
                            state: Some(done.state),
                            duplicate: done.duplicate,
                            error: None,
                        },
                        Err(StoreError::StaleLease(message)) => {
                            refused(job_id, "stale_lease", message)
                        }
                        Err(err @ StoreError::JobNotFound(_)) => {
                            refused(job_id, "not_found", err.to_string())
                        }
                        Err(err) => return Err(err),
                    };
                    answers.push(answer);
                }
                apply(&hub, ctx, changes)?;
                Ok(answers)
            })
            .await
    }

    pub async fn complete(
        &self,
        job_id: JobId,
        req: CompleteRequest,
    ) -> Result<CompleteResponse, StoreError> {
        let hub = self.hub.clone();
        let backoff = self.backoff();
        self.store
            .write(move |ctx| {
                let mut changes = Changes::default();
                let retry = store::Retry {
                    backoff,
                    unit_random: rand::random::<f64>(),
                };
                let answer = store::complete_job(
                    ctx.tx,
                    ctx.now,
                    &hub.sealer,
                    retry,
                    job_id,
                    &req,
                    &mut changes,
                )?;
                apply(&hub, ctx, changes)?;
                Ok(answer)
            })
            .await
    }

    /// Cancels a job; returns the state it was in. A `submit` key may
    /// cancel only its own jobs.
    pub async fn cancel(&self, caller: &Caller, job_id: JobId) -> Result<JobState, StoreError> {
        let hub = self.hub.clone();
        let caller = caller.clone();
        self.store
            .write(move |ctx| {
                let owner = store::job_owner(ctx.tx, job_id)?.ok_or(StoreError::JobNotFound(job_id))?;
                let actor = caller.actor();
                if caller.principal.role() != Some(AccessRole::Admin) && owner.as_deref() != Some(actor.as_str()) {
                    return Err(StoreError::Forbidden(format!("job {job_id} was submitted by someone else; only they or an admin may cancel it")));
                }
                let mut changes = Changes::default();
                let before = store::cancel_job(ctx.tx, ctx.now, job_id, &mut changes)?;
                store::append_audit(
                    ctx.tx,
                    ctx.now,
                    &admin::record(&caller, "job.cancel", Some(format!("job:{job_id}")), "ok", Some(format!("was {before}"))),
                )?;
                apply(&hub, ctx, changes)?;
                Ok(before)
            })
            .await
    }

    /// The job once it is terminal, or as it is when `timeout` passes.
    pub async fn wait(
        &self,
        caller: &Caller,
        job_id: JobId,
        timeout: Duration,
    ) -> Result<JobView, StoreError> {
        let finished = self.hub.watch_job(job_id);
        let job = self.get(caller, job_id).await?;
        if job.state.is_terminal() {
            return Ok(job);
        }
        let _ = tokio::time::timeout(timeout, finished).await;
        self.get(caller, job_id).await
    }

    /// Runs the clock-driven transitions due now. Returns true if a batch
    /// limit was hit (more is due at once).
    pub async fn tick(&self) -> Result<bool, StoreError> {
        let hub = self.hub.clone();
        let retry = self.lost_retry();
        self.store
            .write(move |ctx| {
                let mut changes = Changes::default();
                // Heartbeats answered from memory count before anyone is
                // declared lost for missing them.
                hub.beats.write_pending(ctx.tx)?;
                let lost_after = hub.config.lost_after_ms();
                let lost =
                    store::mark_lost_nodes(ctx.tx, ctx.now, lost_after, Some(retry), &mut changes)?;
                for node_id in &lost {
                    tracing::warn!(%node_id, "node lost: missed heartbeats; its leases were released");
                    hub.update_node(node_id, |n| n.status = NodeStatus::Lost);
                }
                store::expire_locality(ctx.tx, ctx.now, &mut changes)?;
                let fired = store::fire_due_schedules(
                    ctx.tx,
                    ctx.now,
                    &hub.sealer,
                    hub.config.default_max_attempts,
                    &mut changes,
                )?;
                for (schedule, job_id) in &fired {
                    tracing::info!(%schedule, job_id, "schedule fired");
                }
                let n_expired = store::reap_expired(ctx.tx, ctx.now, Some(retry), &mut changes)?;
                let n_due = store::promote_due(ctx.tx, ctx.now, &mut changes)?;
                store::maintain_metrics(ctx.tx, ctx.now, &hub.config.metrics_retention)?;
                apply(&hub, ctx, changes)?;
                let full = store::TIMED_BATCH as usize;
                Ok(n_expired >= full || n_due >= full)
            })
            .await
    }

    /// Loads routing state from the database: the fleet, and the speeds
    /// measured over the last day.
    pub async fn load_routing_state(&self) -> Result<(), StoreError> {
        let since = store::unix_now_ms() - SPEED_HISTORY.as_millis() as i64;
        let (fleet, speeds) = self
            .store
            .read(move |conn| Ok((store::fleet_states(conn)?, store::speeds(conn, since)?)))
            .await?;
        for node in fleet {
            self.hub.set_node(node);
        }
        for (node, kind, model, speed) in speeds {
            self.hub.set_speed(&node, &kind, model.as_deref(), speed);
        }
        Ok(())
    }

    /// Drains a node: it takes no new jobs, its running jobs finish, then it
    /// is `drained`. Its agent stays connected.
    pub async fn drain(&self, caller: &Caller, node_id: String) -> Result<NodeStatus, StoreError> {
        self.set_drain(caller, node_id, true).await
    }

    /// Undoes a drain: the node takes jobs again.
    pub async fn resume(&self, caller: &Caller, node_id: String) -> Result<NodeStatus, StoreError> {
        self.set_drain(caller, node_id, false).await
    }

    async fn set_drain(
        &self,
        caller: &Caller,
        node_id: String,
        drain: bool,
    ) -> Result<NodeStatus, StoreError> {
        let hub = self.hub.clone();
        let caller = caller.clone();
        let status = self
            .store
            .write(move |ctx| {
                let current = store::node_status(ctx.tx, &node_id)?
                    .ok_or_else(|| StoreError::NodeNotFound(node_id.clone()))?;
                let status = match (drain, current) {
                    (true, _) if store::running_on(ctx.tx, &node_id)? == 0 => NodeStatus::Drained,
                    (true, _) => NodeStatus::Draining,
                    (false, NodeStatus::Lost) => NodeStatus::Lost,
                    (false, _) => NodeStatus::Active,
                };
                store::set_node_status(ctx.tx, &node_id, status)?;
                let action = if drain { "node.drain" } else { "node.resume" };
                store::append_audit(
                    ctx.tx,
                    ctx.now,
                    &admin::record(
                        &caller,
                        action,
                        Some(format!("node:{node_id}")),
                        "ok",
                        Some(format!("{} -> {}", current.as_str(), status.as_str())),
                    ),
                )?;
                hub.update_node(&node_id, |n| n.status = status);
                if drain {
                    hub.unpark_node(&node_id);
                }
                Ok(status)
            })
            .await?;
        Ok(status)
    }

    /// Answers every parked lease request and parks no more (at shutdown).
    pub fn close_parking(&self) {
        self.hub.close_parking();
    }

    /// Answers every parked lease request now (a deposed leader).
    pub fn unpark_all(&self) {
        self.hub.unpark_all();
    }

    /// After a restart: the coordinator was away, so nodes get a fresh
    /// heartbeat deadline and leases a fresh expiry instead of being declared
    /// lost for the coordinator's own absence.
    pub async fn recover_after_restart(&self) -> Result<(), StoreError> {
        let hub = self.hub.clone();
        self.store
            .write(move |ctx| {
                let ttl = hub.config.lease_ttl_ms as i64;
                store::refresh_after_restart(ctx.tx, ctx.now, ttl)
            })
            .await
    }

    /// Sleeps until the next timed transition is due, runs it, repeats.
    pub async fn run_timer(&self, shutdown: CancellationToken) {
        loop {
            let lost_after = self.hub.config.lost_after_ms();
            let next = self
                .store
                .read(move |conn| store::next_wakeup(conn, lost_after))
                .await;
            let now = store::unix_now_ms();
            let sleep = match next {
                Ok(Some(at)) => Duration::from_millis(at.saturating_sub(now).max(0) as u64),
                Ok(None) => TIMER_MAX_SLEEP,
                Err(err) => {
                    tracing::error!(error = %err, "timer: reading next wake-up failed");
                    TIMER_MAX_SLEEP
                }
            }
            .clamp(TIMER_MIN_SLEEP, TIMER_MAX_SLEEP);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(sleep) => {}
                _ = self.hub.timer().notified() => {}
            }
            loop {
                match self.tick().await {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(err) => {
                        tracing::error!(error = %err, "timer: timed transitions failed");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(TIMER_MAX_SLEEP) => {}
                        }
                        break;
                    }
                }
            }
        }
    }
}

/// The answer to a report the store refused.
fn refused(job_id: JobId, code: &str, message: String) -> ReportAnswer {
    ReportAnswer {
        job_id,
        state: None,
        duplicate: false,
        error: Some(ErrorDetail {
            code: code.into(),
            message,
            field: None,
        }),
    }
}
