//! Simulated agents: many per process, each enrolled like a real node (its
//! own join token, key made here, one CSR, a certificate naming it), each
//! with its own `kobo_agent::coordinator::CoordinatorClient` and so its own
//! TLS connection, each running the real agent's loops: take free worker
//! slots, long-poll a lease for that many jobs, run each job on the `sim`
//! backend (`kobo_agent::llm`, zero latency for no-op jobs), free the slot,
//! report; and heartbeat with the held leases and metrics.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{StreamExt, TryStreamExt, stream};
use kobo_agent::coordinator::{CallError, CoordinatorClient};
use kobo_agent::identity::{self, IdentityFiles, TlsIdentity};
use kobo_agent::llm::{BackendKind, LlmClient, LlmConfig};
use kobo_agent::report::Reporter;
use kobo_agent::runner::heartbeat_pause;
use kobo_protocol::{
    CompleteRequest, HeartbeatRequest, HeldLease, JobId, Lease, LeaseRequest, NodeMetrics, Outcome,
    RegisterRequest,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::coordinator::Coordinator;

/// Enrollments in flight at once (each is a token, a key, a CSR, a join).
const ENROLL_CONCURRENCY: usize = 16;
/// Registrations in flight at once when a fleet connects.
const CONNECT_CONCURRENCY: usize = 64;
/// Lifetime of the join tokens the bench creates.
const TOKEN_TTL: Duration = Duration::from_secs(600);
/// Pause after a failed lease or report, as the real agent's first retry.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Attempts at reporting one result before the bench counts it lost.
const REPORT_ATTEMPTS: u32 = 50;
/// The metrics every simulated heartbeat carries (fixed: sampling the
/// machine a thousand times would load the load generator, not kobo).
const METRICS: NodeMetrics = NodeMetrics {
    cpu_percent: 10.0,
    mem_used_bytes: 4 << 30,
    mem_total_bytes: 16 << 30,
    load_1: 0.5,
    load_5: 0.5,
    load_15: 0.5,
    disk_used_bytes: 100 << 30,
    disk_total_bytes: 500 << 30,
};

/// A node enrolled with the coordinator: its certificate and key.
pub(crate) struct Enrolled {
    pub(crate) node_id: String,
    identity: TlsIdentity,
}

/// Enrolls `n` nodes named `<prefix>-0000`, … concurrently, each with its
/// own join token and its own key and CSR (`kobo_agent::identity::join`;
/// state in `dir/<node>`).
pub(crate) async fn enroll(
    coordinator: &Coordinator,
    prefix: &str,
    n: usize,
    dir: &Path,
) -> anyhow::Result<Vec<Enrolled>> {
    let admin = coordinator.admin()?;
    let url = coordinator.url.clone();
    let mut enrolled: Vec<Enrolled> = stream::iter(0..n)
        .map(|idx| {
            let (admin, url) = (admin.clone(), url.clone());
            let node_id = format!("{prefix}-{idx:04}");
            let node_dir = dir.join(&node_id);
            async move {
                let token = admin
                    .token_create(&node_id, TOKEN_TTL)
                    .await
                    .with_context(|| format!("join token for {node_id}"))?
                    .token;
                identity::join(&url, &token, &node_id, &node_dir)
                    .await
                    .with_context(|| format!("enrolling {node_id}"))?;
                let identity = IdentityFiles::in_dir(&node_dir).load()?;
                anyhow::Ok(Enrolled { node_id, identity })
            }
        })
        .buffer_unordered(ENROLL_CONCURRENCY)
        .try_collect()
        .await?;
    enrolled.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    Ok(enrolled)
}

/// What a fleet of simulated agents does.
#[derive(Debug, Clone)]
pub(crate) struct AgentSpec {
    /// The one kind of work the agents take (their capability).
    pub(crate) kind: String,
    pub(crate) max_workers: u32,
    /// Most jobs one lease request asks for (the real agent asks for all
    /// its free slots: `max_workers`).
    pub(crate) max_jobs_per_lease: u32,
    /// The `sim` backend's latency; zero for no-op jobs.
    pub(crate) llm_latency: Duration,
    /// How long a lease request parks.
    pub(crate) long_poll_ms: u64,
    /// The agents' first lease requests are spread evenly over this long,
    /// as real agents start at different times (zero: all at once).
    pub(crate) stagger: Duration,
}

/// What the agents report to the figure measuring them.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AgentEvent {
    /// The lease answer carrying the job arrived: the job starts.
    Started { job_id: JobId, at: Instant },
    /// The coordinator accepted the job's result; `llm` is the LLM's own time.
    Reported {
        job_id: JobId,
        /// When the LLM call ended, and how long it took.
        llm_end: Instant,
        llm: Duration,
        /// When the coordinator's answer to the report arrived.
        at: Instant,
    },
}

/// Counters and (optionally) events of a fleet.
#[derive(Default)]
pub(crate) struct Probe {
    pub(crate) reported: AtomicU64,
    pub(crate) errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    events: Option<mpsc::UnboundedSender<AgentEvent>>,
    /// (when sent, round trip, time the coordinator spent on it) of every
    /// successful heartbeat.
    heartbeats: Mutex<Vec<(Instant, Duration, Duration)>>,
}

impl Probe {
    pub(crate) fn with_events(events: mpsc::UnboundedSender<AgentEvent>) -> Probe {
        Probe {
            events: Some(events),
            ..Probe::default()
        }
    }

    fn event(&self, event: AgentEvent) {
        if let Some(events) = &self.events {
            let _ = events.send(event);
        }
    }

    fn error(&self, what: &str, err: &CallError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self
            .first_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        first.get_or_insert_with(|| format!("{what}: {err}"));
    }

    /// The heartbeats sent at or after `from`: when each was sent, its round
    /// trip, and the time the coordinator spent on it (from its request's
    /// arrival to its answer: the rest of a round trip is the network and
    /// the client).
    pub(crate) fn heartbeats_since(&self, from: Instant) -> Vec<Beat> {
        self.heartbeats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(at, ..)| *at >= from)
            .map(|&(sent, rtt, handled)| Beat { sent, rtt, handled })
            .collect()
    }

    pub(crate) fn reported(&self) -> u64 {
        self.reported.load(Ordering::Relaxed)
    }

    /// The number of failed calls and the first failure, if any.
    pub(crate) fn errors(&self) -> Option<(u64, String)> {
        let n = self.errors.load(Ordering::Relaxed);
        let first = self
            .first_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        first.map(|first| (n, first))
    }
}

/// One successful heartbeat as its agent saw it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Beat {
    pub(crate) sent: Instant,
    /// Sent to answered, as the agent measured it.
    pub(crate) rtt: Duration,
    /// The part the coordinator spent (the answer's `coordinator_ms`).
    pub(crate) handled: Duration,
}

/// One registered simulated agent.
pub(crate) struct SimAgent {
    node_id: String,
    instance_id: String,
    client: CoordinatorClient,
    heartbeat_interval: Duration,
}

impl SimAgent {
    /// One lease request that does not park.
    pub(crate) async fn lease_now(&self, max_jobs: u32) -> Result<Vec<Lease>, CallError> {
        let req = LeaseRequest {
            node_id: self.node_id.clone(),
            instance_id: self.instance_id.clone(),
            max_jobs,
            wait_ms: 0,
        };
        Ok(self.client.lease(&req).await?.leases)
    }

    /// Reports a no-op success for `lease`.
    pub(crate) async fn complete_noop(&self, lease: &Lease) -> Result<(), CallError> {
        let req = CompleteRequest {
            node_id: self.node_id.clone(),
            lease_token: lease.lease_token,
            outcome: Outcome::Succeeded {
                output: kobo_protocol::LlmOutput::default(),
            },
        };
        self.client.complete(lease.job_id, &req).await.map(|_| ())
    }
}

/// Connects (own HTTPS client, own connection) and registers each enrolled
/// node with `spec`'s capability, concurrently.
pub(crate) async fn connect(
    coordinator: &Coordinator,
    nodes: &[Enrolled],
    spec: &AgentSpec,
) -> anyhow::Result<Vec<SimAgent>> {
    stream::iter(nodes)
        .map(|node| connect_one(&coordinator.url, &coordinator.ca_pem, node, spec))
        .buffered(CONNECT_CONCURRENCY)
        .try_collect()
        .await
}

/// Connects one enrolled node and registers it, as an agent does at start.
async fn connect_one(
    url: &str,
    ca_pem: &[u8],
    node: &Enrolled,
    spec: &AgentSpec,
) -> anyhow::Result<SimAgent> {
    let client = CoordinatorClient::new(url, Some(ca_pem), Some(&node.identity))?;
    let instance_id = format!("{:016x}", rand::random::<u64>());
    let timings = client
        .register(&RegisterRequest {
            node_id: node.node_id.clone(),
            instance_id: instance_id.clone(),
            region: "ap-northeast-1".into(),
            capabilities: vec![spec.kind.clone()],
            max_workers: spec.max_workers,
            gpu: false,
            backend: "sim".into(),
            models: Vec::new(),
            agent_version: concat!("kobo-bench/", env!("CARGO_PKG_VERSION")).into(),
            specialization: None,
            latitude: None,
            longitude: None,
        })
        .await
        .with_context(|| format!("registering {}", node.node_id))?;
    Ok(SimAgent {
        node_id: node.node_id.clone(),
        instance_id,
        client,
        heartbeat_interval: Duration::from_millis(timings.heartbeat_interval_ms),
    })
}

/// Running simulated agents.
pub(crate) struct Fleet {
    stop: CancellationToken,
    tasks: TaskTracker,
    pub(crate) probe: Arc<Probe>,
}

impl Fleet {
    /// Starts every agent's lease and heartbeat loops.
    pub(crate) fn run(
        agents: Vec<SimAgent>,
        spec: &AgentSpec,
        probe: Arc<Probe>,
    ) -> anyhow::Result<Fleet> {
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let llm = sim_llm(spec)?;
        let n_agents = agents.len().max(1) as u32;
        for (idx, agent) in agents.into_iter().enumerate() {
            let start_after = spec.stagger * idx as u32 / n_agents;
            let agent = Running::new(agent, spec, &llm, &probe, &tasks);
            tasks.spawn(heartbeat_loop(agent.clone(), stop.clone()));
            tasks.spawn(lease_loop(agent, start_after, stop.clone()));
        }
        Ok(Fleet { stop, tasks, probe })
    }

    /// Starts agents as a fleet of real ones comes up, one after another:
    /// agent `i` of `n` connects and registers `spec.stagger × i / n` from
    /// now, then heartbeats and long-polls, so its heartbeats and its long
    /// polls keep the phase its start gave them (a real agent's loops start
    /// when it has registered). At most [`CONNECT_CONCURRENCY`] connect at
    /// once: the fleet's connections all come from one address here, and
    /// the coordinator bounds the unauthenticated connections of one
    /// source. A registration that fails counts as an error of the probe.
    pub(crate) fn start(
        coordinator: &Coordinator,
        nodes: &[Enrolled],
        spec: &AgentSpec,
        probe: Arc<Probe>,
    ) -> anyhow::Result<Fleet> {
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let llm = sim_llm(spec)?;
        let n_agents = nodes.len().max(1) as u32;
        let connecting = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
        for (idx, node) in nodes.iter().enumerate() {
            let connecting = connecting.clone();
            let start_after = spec.stagger * idx as u32 / n_agents;
            let (url, ca_pem) = (coordinator.url.clone(), coordinator.ca_pem.clone());
            let node = Enrolled {
                node_id: node.node_id.clone(),
                identity: node.identity.clone(),
            };
            let (spec, llm, probe, inner, stop) = (
                spec.clone(),
                llm.clone(),
                probe.clone(),
                tasks.clone(),
                stop.clone(),
            );
            tasks.spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(start_after) => {}
                }
                let Ok(_slot) = connecting.acquire().await else {
                    return;
                };
                let agent = match connect_one(&url, &ca_pem, &node, &spec).await {
                    Ok(agent) => agent,
                    Err(err) => {
                        probe.error("register", &CallError::Unavailable(format!("{err:#}")));
                        return;
                    }
                };
                let agent = Running::new(agent, &spec, &llm, &probe, &inner);
                inner.spawn(heartbeat_loop(agent.clone(), stop.clone()));
                inner.spawn(lease_loop(agent, Duration::ZERO, stop));
            });
        }
        Ok(Fleet { stop, tasks, probe })
    }

    /// Stops leasing, lets running jobs finish and report, stops heartbeats.
    pub(crate) async fn stop(self) -> Arc<Probe> {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        self.probe
    }
}

struct Running {
    agent: SimAgent,
    max_workers: u32,
    max_jobs_per_lease: u32,
    long_poll_ms: u64,
    llm: LlmClient,
    /// The real agent's coalescing reporter.
    reporter: Reporter,
    probe: Arc<Probe>,
    /// Held leases: job → lease token, for heartbeats.
    held: Mutex<HashMap<JobId, i64>>,
    tasks: TaskTracker,
}

/// The `sim` LLM backend the agents run their jobs on.
fn sim_llm(spec: &AgentSpec) -> anyhow::Result<LlmClient> {
    Ok(LlmClient::new(LlmConfig {
        kind: BackendKind::Sim,
        endpoint: None,
        api_key: None,
        default_model: None,
        sim_latency: spec.llm_latency,
        request_timeout: None,
    })?)
}

impl Running {
    fn new(
        agent: SimAgent,
        spec: &AgentSpec,
        llm: &LlmClient,
        probe: &Arc<Probe>,
        tasks: &TaskTracker,
    ) -> Arc<Running> {
        Arc::new(Running {
            reporter: Reporter::spawn(agent.client.clone(), agent.node_id.clone()),
            agent,
            max_workers: spec.max_workers,
            max_jobs_per_lease: spec.max_jobs_per_lease,
            long_poll_ms: spec.long_poll_ms,
            llm: llm.clone(),
            probe: probe.clone(),
            held: Mutex::new(HashMap::new()),
            tasks: tasks.clone(),
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, i64>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The real agent's lease loop: wait for one free slot, take every free
/// slot, ask for that many jobs, start each.
async fn lease_loop(agent: Arc<Running>, start_after: Duration, stop: CancellationToken) {
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = tokio::time::sleep(start_after) => {}
    }
    let slots = Arc::new(Semaphore::new(agent.max_workers as usize));
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        // As the real agent: let slots freed in the same moment go first.
        tokio::task::yield_now().await;
        let mut permits = vec![first];
        while permits.len() < agent.max_jobs_per_lease as usize
            && let Ok(permit) = slots.clone().try_acquire_owned()
        {
            permits.push(permit);
        }
        let req = LeaseRequest {
            node_id: agent.agent.node_id.clone(),
            instance_id: agent.agent.instance_id.clone(),
            max_jobs: permits.len() as u32,
            wait_ms: agent.long_poll_ms,
        };
        let answer = tokio::select! {
            // Dropping the request unparks it, as the real agent's does.
            _ = stop.cancelled() => return,
            answer = agent.agent.client.lease(&req) => answer,
        };
        match answer {
            Ok(answer) => {
                let at = Instant::now();
                for lease in answer.leases {
                    let Some(permit) = permits.pop() else {
                        break;
                    };
                    agent.probe.event(AgentEvent::Started {
                        job_id: lease.job_id,
                        at,
                    });
                    agent.held().insert(lease.job_id, lease.lease_token);
                    agent.tasks.spawn(run_job(agent.clone(), lease, permit));
                }
            }
            Err(err) => {
                agent.probe.error("lease", &err);
                drop(permits);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RETRY_PAUSE) => {}
                }
            }
        }
    }
}

/// Runs one job on the sim backend, frees its slot, reports the result.
async fn run_job(agent: Arc<Running>, lease: Lease, permit: OwnedSemaphorePermit) {
    let started = Instant::now();
    let outcome = match agent.llm.run(&lease.request).await {
        Ok(output) => Outcome::Succeeded { output },
        Err(err) => Outcome::Failed {
            error: err.message,
            retryable: err.retryable,
        },
    };
    let llm_end = Instant::now();
    let llm = llm_end.duration_since(started);
    drop(permit);
    let req = CompleteRequest {
        node_id: agent.agent.node_id.clone(),
        lease_token: lease.lease_token,
        outcome,
    };
    for _ in 0..REPORT_ATTEMPTS {
        match agent.reporter.complete(lease.job_id, &req).await {
            Ok(_) => {
                agent.probe.reported.fetch_add(1, Ordering::Relaxed);
                agent.probe.event(AgentEvent::Reported {
                    job_id: lease.job_id,
                    llm_end,
                    llm,
                    at: Instant::now(),
                });
                break;
            }
            Err(err @ CallError::Unavailable(_)) => {
                agent.probe.error("complete", &err);
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(err) => {
                agent.probe.error("complete", &err);
                break;
            }
        }
    }
    agent.held().remove(&lease.job_id);
}

/// Heartbeats at the coordinator's interval, jittered as the real agent's
/// (`kobo_agent::runner::heartbeat_pause`), with the held leases.
async fn heartbeat_loop(agent: Arc<Running>, stop: CancellationToken) {
    let mut rtt_ms = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(heartbeat_pause(agent.agent.heartbeat_interval)) => {}
        }
        let running = agent
            .held()
            .iter()
            .map(|(&job_id, &lease_token)| HeldLease {
                job_id,
                lease_token,
            })
            .collect();
        let req = HeartbeatRequest {
            node_id: agent.agent.node_id.clone(),
            instance_id: agent.agent.instance_id.clone(),
            running,
            metrics: Some(METRICS),
            rtt_ms,
            loaded_models: None,
        };
        let sent = Instant::now();
        match agent.agent.client.heartbeat(&req).await {
            Ok(answer) => {
                let rtt = sent.elapsed();
                let handled = Duration::from_millis(answer.coordinator_ms.into());
                rtt_ms = Some(rtt.as_millis().min(u32::MAX as u128) as u32);
                agent
                    .probe
                    .heartbeats
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((sent, rtt, handled));
            }
            Err(err) => agent.probe.error("heartbeat", &err),
        }
    }
}
