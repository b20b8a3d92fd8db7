//! The agent's life: register, then three loops sharing one table of running
//! jobs — lease (long-poll), heartbeat (renew leases, report metrics, learn of
//! cancellations), and one task per job (run the LLM call, report the result
//! until the coordinator has it). SIGTERM stops leasing, lets running jobs
//! finish within the drain deadline, reports, and returns.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kobo_protocol::{
    CompleteRequest, HeartbeatRequest, HeldLease, JobId, Lease, LeaseRequest, Outcome,
    RegisterRequest, RegisterResponse,
};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::AgentConfig;
use crate::coordinator::{CallError, CoordinatorClient};
use crate::gateway::{Relayed, StreamTarget};
use crate::llm::{BackendKind, LlmClient, LlmError};
use crate::metrics::MetricsSampler;
use crate::report::Reporter;

/// First delay after a failed call to the coordinator; doubles up to the cap.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_CAP: Duration = Duration::from_secs(5);
/// Shortest time between two certificate renewals.
const MIN_RENEWAL_GAP: Duration = Duration::from_secs(1);
/// How long finished results keep being offered after shutdown began.
const REPORT_DEADLINE_ON_SHUTDOWN: Duration = Duration::from_secs(15);
/// Each pause between heartbeats is the coordinator's interval ± this share,
/// at random: agents the coordinator answered in the same moment (after a
/// stall, or a restart) would otherwise heartbeat in the same moment ever
/// after, a herd. Lost-node detection waits for three missed intervals, so
/// a tenth either way is safe.
pub const HEARTBEAT_JITTER: f64 = 0.1;

/// The pause before the next heartbeat: `interval` ± [`HEARTBEAT_JITTER`].
pub fn heartbeat_pause(interval: Duration) -> Duration {
    interval.mul_f64(1.0 - HEARTBEAT_JITTER + rand::random::<f64>() * 2.0 * HEARTBEAT_JITTER)
}

/// One job this agent holds: running, or finished and waiting to be reported.
struct Held {
    lease_token: i64,
    /// Cancelled when the coordinator says the job is no longer ours.
    abort: CancellationToken,
}

struct Shared {
    config: AgentConfig,
    instance_id: String,
    client: CoordinatorClient,
    /// Sends results, several per call when several are ready.
    reporter: Reporter,
    llm: LlmClient,
    held: Mutex<HashMap<JobId, Held>>,
    slots: Arc<Semaphore>,
    /// Set when the coordinator asks this node to drain.
    draining: AtomicBool,
    /// Woken when the node must register again (coordinator forgot it).
    reregister: Notify,
    timings: Mutex<RegisterResponse>,
}

impl Shared {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Held>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn timings(&self) -> RegisterResponse {
        self.timings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Doubling delay for retries, reset on success (kobo's one jittered
/// backoff, shared with the CLI's search for the leader).
struct Retry(kobo_client::follow::Backoff);

impl Retry {
    fn new() -> Retry {
        Retry(kobo_client::follow::Backoff::new(RETRY_FIRST, RETRY_CAP))
    }

    /// Sleeps the current delay (with jitter), or until `stop` is cancelled.
    async fn wait(&mut self, stop: &CancellationToken) {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = self.sleep() => {}
        }
    }

    async fn sleep(&mut self) {
        self.0.sleep().await;
    }
}

fn random_instance_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Runs the agent until `shutdown` is cancelled and running jobs drained.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut config = config;
    let client = CoordinatorClient::new(
        &config.coordinator,
        config.ca_pem.as_deref(),
        config.identity.as_ref(),
    )?;
    let mut llm = LlmClient::new(config.llm.clone())?;
    let models = if config.models.is_empty() {
        match llm.list_models().await {
            Ok(models) => models,
            Err(err) => {
                tracing::warn!(error = %err, "cannot list the LLM's models; announcing none");
                config.llm.default_model.iter().cloned().collect()
            }
        }
    } else {
        config.models.clone()
    };
    // Jobs that name no model run on the first model the server has.
    if config.llm.default_model.is_none()
        && let Some(first) = models.first()
    {
        config.llm.default_model = Some(first.clone());
        llm = LlmClient::new(config.llm.clone())?;
    }
    let shared = Arc::new(Shared {
        instance_id: random_instance_id(),
        reporter: Reporter::spawn(client.clone(), config.node_id.clone()),
        client,
        llm,
        held: Mutex::new(HashMap::new()),
        slots: Arc::new(Semaphore::new(config.max_workers as usize)),
        draining: AtomicBool::new(false),
        reregister: Notify::new(),
        timings: Mutex::new(RegisterResponse {
            heartbeat_interval_ms: 3000,
            lease_ttl_ms: 15_000,
            long_poll_ms: 25_000,
            server_time: 0,
        }),
        config,
    });
    let register = RegisterRequest {
        node_id: shared.config.node_id.clone(),
        instance_id: shared.instance_id.clone(),
        region: shared.config.region.clone(),
        capabilities: declared_capabilities(&shared.config.capabilities, shared.llm.kind()),
        max_workers: shared.config.max_workers,
        gpu: shared.config.gpu,
        backend: shared.llm.kind().as_str().to_string(),
        models,
        agent_version: crate::build::agent_version().to_string(),
        specialization: shared.config.specialization.clone(),
        latitude: shared.config.coordinates.map(|c| c.0),
        longitude: shared.config.coordinates.map(|c| c.1),
    };
    if !register_until_done(&shared, &register, &shutdown).await {
        return Ok(());
    }
    tracing::info!(
        node_id = %shared.config.node_id,
        coordinator = %shared.config.coordinator,
        backend = %shared.llm.kind(),
        models = ?register.models,
        max_workers = shared.config.max_workers,
        "agent registered"
    );

    // Jobs and their reports outlive the lease loop: they get their own token,
    // cancelled only when the drain deadline passes.
    let jobs_abort = CancellationToken::new();
    let jobs = TaskTracker::new();
    let background = CancellationToken::new();
    let heartbeat = tokio::spawn(heartbeat_loop(shared.clone(), background.clone()));
    let renewal = tokio::spawn(renewal_loop(shared.clone(), background.clone()));
    let reregister = tokio::spawn(reregister_loop(
        shared.clone(),
        register,
        background.clone(),
    ));

    lease_loop(&shared, &shutdown, &jobs, &jobs_abort).await;

    jobs.close();
    let n_running = shared.held().len();
    tracing::info!(n_running, drain_timeout = ?shared.config.drain_timeout, "stopping: no new leases, finishing running jobs");
    if tokio::time::timeout(shared.config.drain_timeout, jobs.wait())
        .await
        .is_err()
    {
        tracing::warn!("drain deadline passed; giving the remaining jobs back");
        jobs_abort.cancel();
        let _ = tokio::time::timeout(REPORT_DEADLINE_ON_SHUTDOWN, jobs.wait()).await;
    }
    background.cancel();
    let _ = heartbeat.await;
    let _ = renewal.await;
    let _ = reregister.await;
    tracing::info!("agent stopped");
    Ok(())
}

async fn register_until_done(
    shared: &Shared,
    req: &RegisterRequest,
    shutdown: &CancellationToken,
) -> bool {
    let mut retry = Retry::new();
    loop {
        match shared.client.register(req).await {
            Ok(timings) => {
                *shared
                    .timings
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = timings;
                return true;
            }
            Err(CallError::Rejected(message) | CallError::Refused(message)) => {
                tracing::error!(%message, "the coordinator rejected the registration");
            }
            Err(err) => tracing::warn!(error = %err, "registration failed; retrying"),
        }
        retry.wait(shutdown).await;
        if shutdown.is_cancelled() {
            return false;
        }
    }
}

async fn reregister_loop(shared: Arc<Shared>, req: RegisterRequest, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = shared.reregister.notified() => {}
        }
        tracing::warn!("the coordinator does not know this agent; registering again");
        register_until_done(&shared, &req, &stop).await;
    }
}

/// Takes free worker slots: waits for one, then grabs any others free now.
async fn take_slots(
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Option<Vec<OwnedSemaphorePermit>> {
    let first = tokio::select! {
        _ = shutdown.cancelled() => return None,
        permit = shared.slots.clone().acquire_owned() => permit.ok()?,
    };
    // Jobs that end together (the same timer tick, the same burst of
    // answers) free their slots a moment apart: let them run first, so one
    // lease asks for all of them instead of one lease each, one round trip
    // after another.
    tokio::task::yield_now().await;
    let mut permits = vec![first];
    while let Ok(permit) = shared.slots.clone().try_acquire_owned() {
        permits.push(permit);
    }
    Some(permits)
}

async fn lease_loop(
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    jobs: &TaskTracker,
    jobs_abort: &CancellationToken,
) {
    let mut retry = Retry::new();
    loop {
        let Some(mut permits) = take_slots(shared, shutdown).await else {
            return;
        };
        let timings = shared.timings();
        if shared.draining.load(Ordering::Relaxed) {
            drop(permits);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(timings.heartbeat_interval_ms)) => continue,
            }
        }
        let req = LeaseRequest {
            node_id: shared.config.node_id.clone(),
            instance_id: shared.instance_id.clone(),
            max_jobs: permits.len() as u32,
            wait_ms: timings.long_poll_ms,
        };
        let answer = tokio::select! {
            // Dropping the request closes it: the coordinator unparks us, and
            // gives back any lease it was handing over at that instant.
            _ = shutdown.cancelled() => return,
            answer = shared.client.lease(&req) => answer,
        };
        match answer {
            Ok(answer) => {
                retry = Retry::new();
                for lease in answer.leases {
                    let Some(permit) = permits.pop() else {
                        tracing::error!(
                            job_id = lease.job_id,
                            "coordinator granted more jobs than asked for"
                        );
                        break;
                    };
                    start_job(shared, lease, permit, jobs, jobs_abort);
                }
            }
            Err(CallError::Unregistered(message)) => {
                tracing::debug!(%message, "lease refused");
                shared.reregister.notify_one();
                drop(permits);
                retry.wait(shutdown).await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "lease request failed");
                drop(permits);
                retry.wait(shutdown).await;
            }
        }
    }
}

fn start_job(
    shared: &Arc<Shared>,
    lease: Lease,
    permit: OwnedSemaphorePermit,
    jobs: &TaskTracker,
    jobs_abort: &CancellationToken,
) {
    let abort = jobs_abort.child_token();
    shared.held().insert(
        lease.job_id,
        Held {
            lease_token: lease.lease_token,
            abort: abort.clone(),
        },
    );
    tracing::debug!(job_id = lease.job_id, lease_token = lease.lease_token, kind = %lease.kind, "job started");
    jobs.spawn(run_job(shared.clone(), lease, permit, abort));
}

async fn run_job(
    shared: Arc<Shared>,
    lease: Lease,
    permit: OwnedSemaphorePermit,
    abort: CancellationToken,
) {
    let job_id = lease.job_id;
    let started = Instant::now();
    let call = call_llm(&shared, &lease);
    let outcome = tokio::select! {
        _ = abort.cancelled() => None,
        result = with_timeout(lease.timeout_ms, call) => Some(match result {
            Ok(Ok(Relayed::Done(output))) => Ok(Outcome::Succeeded { output }),
            Ok(Ok(Relayed::Dropped(reason))) => Err(reason),
            Ok(Err(err)) => Ok(Outcome::Failed { error: err.message, retryable: err.retryable }),
            Err(limit) => Ok(Outcome::Failed {
                error: format!("timed out after {} ms", limit.as_millis()),
                retryable: true,
            }),
        }),
    };
    // The worker is free as soon as the LLM call ends; reporting may take
    // longer when the coordinator is away.
    drop(permit);
    let outcome = match outcome {
        Some(Ok(outcome)) => outcome,
        Some(Err(reason)) => {
            tracing::info!(job_id, %reason, "gateway call stopped by the coordinator; nothing to report");
            shared.held().remove(&job_id);
            return;
        }
        None if shared.held().contains_key(&job_id) => {
            // Aborted by the drain deadline, not by the coordinator: say so,
            // so the job is retried elsewhere at once.
            Outcome::Failed {
                error: "agent shut down before the job finished".into(),
                retryable: true,
            }
        }
        None => {
            tracing::info!(job_id, "job aborted: cancelled or no longer ours");
            return;
        }
    };
    tracing::debug!(
        job_id,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "job finished; reporting"
    );
    report(&shared, job_id, lease.lease_token, outcome).await;
    shared.held().remove(&job_id);
}

/// A job's LLM call: a gateway call is relayed to the coordinator as the
/// backend answers; any other runs on the backend to its end.
async fn call_llm(shared: &Shared, lease: &Lease) -> Result<Relayed, LlmError> {
    match &lease.request.gateway {
        None => shared.llm.run(&lease.request).await.map(Relayed::Done),
        Some(call) => {
            let target = StreamTarget {
                job_id: lease.job_id,
                node_id: &shared.config.node_id,
                lease_token: lease.lease_token,
            };
            crate::gateway::relay(&shared.llm, &shared.client, target, call).await
        }
    }
}

async fn with_timeout<F: std::future::Future>(
    timeout_ms: Option<u64>,
    fut: F,
) -> Result<F::Output, Duration> {
    match timeout_ms {
        Some(ms) => {
            let limit = Duration::from_millis(ms);
            tokio::time::timeout(limit, fut).await.map_err(|_| limit)
        }
        None => Ok(fut.await),
    }
}

/// Offers the result until the coordinator takes it, says it is stale, or
/// the job is taken away; keeps trying while the coordinator is unreachable.
async fn report(shared: &Shared, job_id: JobId, lease_token: i64, outcome: Outcome) {
    let mut req = CompleteRequest {
        node_id: shared.config.node_id.clone(),
        lease_token,
        outcome,
    };
    let mut retry = Retry::new();
    loop {
        match shared.reporter.complete(job_id, &req).await {
            Ok(answer) => {
                tracing::debug!(job_id, state = %answer.state, duplicate = answer.duplicate, "result accepted");
                return;
            }
            Err(CallError::Stale(message)) => {
                tracing::info!(job_id, %message, "result refused: the lease is no longer ours");
                return;
            }
            Err(CallError::Rejected(message)) => {
                if matches!(req.outcome, Outcome::Succeeded { .. }) {
                    tracing::warn!(job_id, %message, "result rejected; reporting the rejection as the job's failure");
                    req.outcome = Outcome::Failed {
                        error: format!("the coordinator rejected the result: {message}"),
                        retryable: false,
                    };
                    continue;
                }
                tracing::error!(job_id, %message, "failure report rejected");
                return;
            }
            Err(err) => {
                tracing::warn!(job_id, error = %err, "reporting failed; keeping the result and retrying");
            }
        }
        retry.sleep().await;
        if !shared.held().contains_key(&job_id) {
            // Taken away by a heartbeat answer meanwhile.
            return;
        }
    }
}

/// A heartbeat answer that took the coordinator this long is logged: the
/// coordinator is overloaded or its disk is slow.
const SLOW_COORDINATOR_MS: u32 = 1000;

/// The network round trip of a call that took `took` in all, of which the
/// coordinator spent `coordinator_ms` handling it (its store write waiting
/// its turn included): what is left is the network, TLS and HTTP framing.
fn network_rtt_ms(took: Duration, coordinator_ms: u32) -> u32 {
    let took_ms = took.as_millis().min(u32::MAX as u128) as u32;
    took_ms.saturating_sub(coordinator_ms)
}

async fn heartbeat_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let mut sampler = MetricsSampler::new();
    let mut rtt_ms = None;
    loop {
        let interval = Duration::from_millis(shared.timings().heartbeat_interval_ms);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(heartbeat_pause(interval)) => {}
        }
        let running: Vec<HeldLease> = shared
            .held()
            .iter()
            .map(|(job_id, held)| HeldLease {
                job_id: *job_id,
                lease_token: held.lease_token,
            })
            .collect();
        let loaded_models = match shared.llm.kind() {
            BackendKind::Ollama => shared.llm.loaded_models().await.ok().flatten(),
            _ => None,
        };
        let req = HeartbeatRequest {
            node_id: shared.config.node_id.clone(),
            instance_id: shared.instance_id.clone(),
            running,
            metrics: Some(sampler.sample()),
            rtt_ms,
            loaded_models,
        };
        let sent = Instant::now();
        match shared.client.heartbeat(&req).await {
            Ok(answer) => {
                let took = sent.elapsed();
                rtt_ms = Some(network_rtt_ms(took, answer.coordinator_ms));
                if answer.coordinator_ms >= SLOW_COORDINATOR_MS {
                    tracing::info!(
                        took_ms = took.as_millis() as u64,
                        coordinator_ms = answer.coordinator_ms,
                        rtt_ms = rtt_ms.unwrap_or_default(),
                        "the coordinator was slow to answer a heartbeat"
                    );
                }
                if let Ok(mut timings) = shared.timings.lock() {
                    timings.heartbeat_interval_ms = answer.heartbeat_interval_ms;
                    timings.lease_ttl_ms = answer.lease_ttl_ms;
                }
                let was_draining = shared.draining.swap(answer.drain, Ordering::Relaxed);
                if answer.drain && !was_draining {
                    tracing::info!("coordinator asked this node to drain: no new jobs");
                }
                let mut held = shared.held();
                for job_id in answer.cancelled.iter().chain(answer.revoked.iter()) {
                    if let Some(job) = held.remove(job_id) {
                        tracing::info!(
                            job_id,
                            "job no longer ours (cancelled or reassigned); aborting"
                        );
                        job.abort.cancel();
                    }
                }
            }
            Err(CallError::Unregistered(message)) => {
                tracing::debug!(%message, "heartbeat refused");
                shared.reregister.notify_one();
            }
            Err(err) => tracing::warn!(error = %err, "heartbeat failed"),
        }
    }
}

/// Renews the node certificate at 2/3 of its life, with a fresh key, over
/// mutual TLS; stores it and presents it from then on.
async fn renewal_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let Some(mut identity) = shared.config.identity.clone() else {
        return;
    };
    loop {
        let due = match crate::identity::renewal_due(&identity.cert_pem) {
            Ok(due) => due,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the node certificate's validity; not renewing");
                return;
            }
        };
        // Never renew more often than once a second, whatever the dates say.
        let wait = due
            .duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .max(MIN_RENEWAL_GAP);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match renew_once(&shared, &identity).await {
            Ok(renewed) => {
                tracing::info!("node certificate renewed");
                identity = renewed;
            }
            Err(err) => {
                tracing::warn!(error = %err, "certificate renewal failed; retrying in a minute");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                }
            }
        }
    }
}

async fn renew_once(
    shared: &Shared,
    current: &crate::identity::TlsIdentity,
) -> anyhow::Result<crate::identity::TlsIdentity> {
    let key = crate::identity::new_key()?;
    let csr_pem = crate::identity::csr(&shared.config.node_id, &key)?;
    let answer = shared
        .client
        .renew(&kobo_protocol::RenewRequest { csr_pem })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let key_pem = key.serialize_pem();
    if let Some(files) = &current.files {
        files.store(&answer.certificate_pem, &key_pem)?;
    }
    let renewed = crate::identity::TlsIdentity {
        cert_pem: answer.certificate_pem.into_bytes(),
        key_pem: key_pem.into_bytes(),
        files: current.files.clone(),
    };
    shared.client.set_identity(&renewed)?;
    Ok(renewed)
}

/// The capabilities the node declares: the configured ones, plus
/// `ollama_api` when the backend is Ollama (calls of Ollama's own API through
/// the gateway need a node that serves it).
fn declared_capabilities(configured: &[String], backend: crate::llm::BackendKind) -> Vec<String> {
    let mut capabilities = configured.to_vec();
    let ollama = kobo_protocol::gateway::OLLAMA_API_CAPABILITY;
    if backend == crate::llm::BackendKind::Ollama && !capabilities.iter().any(|c| c == ollama) {
        capabilities.push(ollama.to_owned());
    }
    capabilities
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_round_trip_leaves_out_the_coordinators_own_time() {
        // 320 ms in all, 300 of them waiting in the coordinator: 20 ms of network.
        assert_eq!(network_rtt_ms(Duration::from_millis(320), 300), 20);
        assert_eq!(network_rtt_ms(Duration::from_millis(4), 0), 4);
        // Clocks of different resolution never make it negative.
        assert_eq!(network_rtt_ms(Duration::from_millis(3), 5), 0);
    }

    #[test]
    fn heartbeat_pauses_spread_within_a_tenth_of_the_interval() {
        let interval = Duration::from_secs(3);
        let pauses: Vec<Duration> = (0..1000).map(|_| heartbeat_pause(interval)).collect();
        let (low, high) = (interval.mul_f64(0.9), interval.mul_f64(1.1));
        assert!(
            pauses.iter().all(|p| (low..=high).contains(p)),
            "{pauses:?}"
        );
        let (min, max) = (pauses.iter().min().unwrap(), pauses.iter().max().unwrap());
        assert!(
            *max - *min > Duration::from_millis(300),
            "pauses spread over most of ±10 %: {min:?}..{max:?}"
        );
        let mean = pauses.iter().sum::<Duration>() / pauses.len() as u32;
        assert!(
            mean.abs_diff(interval) < Duration::from_millis(50),
            "on average the interval: {mean:?}"
        );
    }
}
