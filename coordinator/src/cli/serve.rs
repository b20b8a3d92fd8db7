//! `serve`, `init` and `demo` arguments: the data directory, queue timings,
//! TLS names, metrics retention; `init` itself.

use super::*;
use kobo_queue::config;

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// Extra DNS names or IPs for the server certificate (repeatable).
    #[arg(long = "san")]
    pub sans: Vec<String>,
    #[command(flatten)]
    pub ca: CaImportArgs,
}

/// Bring your own CA instead of letting kobo create one.
#[derive(Debug, Args, Clone)]
pub struct CaImportArgs {
    /// CA certificate (PEM) to use instead of creating one.
    #[arg(long, requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// The CA's private key (PEM).
    #[arg(long, requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
}

impl CaImportArgs {
    pub fn pair(&self) -> Option<(PathBuf, PathBuf)> {
        self.ca_cert.clone().zip(self.ca_key.clone())
    }
}

#[derive(Debug, Args, Clone)]
pub struct QueueArgs {
    /// Heartbeat interval agents must keep (ms); 3 missed = node lost.
    #[arg(long, default_value_t = QueueConfig::default().heartbeat_interval_ms)]
    pub heartbeat_ms: u64,
    /// Lease lifetime, renewed by each heartbeat (ms).
    #[arg(long, default_value_t = QueueConfig::default().lease_ttl_ms)]
    pub lease_ttl_ms: u64,
    /// Longest a lease request parks waiting for work (ms).
    #[arg(long, default_value_t = QueueConfig::default().long_poll_ms)]
    pub long_poll_ms: u64,
    /// First retry delay after a failed attempt (ms); doubles per attempt, with jitter.
    #[arg(long, default_value_t = QueueConfig::default().retry_base_ms)]
    pub retry_base_ms: u64,
    /// Longest retry delay (ms).
    #[arg(long, default_value_t = QueueConfig::default().retry_cap_ms)]
    pub retry_cap_ms: u64,
    /// Attempts of a job that names none.
    #[arg(long, default_value_t = QueueConfig::default().default_max_attempts)]
    pub max_attempts: u32,
    /// How long a job preferring a busy node or region waits for it (ms).
    #[arg(long, default_value_t = QueueConfig::default().locality_wait_ms)]
    pub locality_wait_ms: u64,
    /// How long a session's request (OpenAI `user`, `x-session-id`, a job's
    /// `session`) waits for the node that served the session last (ms).
    #[arg(long, default_value_t = QueueConfig::default().session_wait_ms)]
    pub session_wait_ms: u64,
    /// Turn weighted fair share between API keys off: leases go by class,
    /// priority and age alone (concurrency limits still hold).
    #[arg(long)]
    pub no_fair_share: bool,
    /// A routing weight, NAME=VALUE (repeatable): load, cpu, speed, rtt,
    /// region, node, specialization, model_loaded.
    #[arg(long = "route-weight")]
    pub route_weights: Vec<String>,
}

impl QueueArgs {
    pub fn config(&self) -> anyhow::Result<QueueConfig> {
        if self.heartbeat_ms == 0 || self.lease_ttl_ms == 0 {
            bail!("--heartbeat-ms and --lease-ttl-ms must be positive");
        }
        if self.lease_ttl_ms <= self.heartbeat_ms {
            bail!(
                "--lease-ttl-ms ({}) must be longer than --heartbeat-ms ({}): heartbeats renew leases",
                self.lease_ttl_ms,
                self.heartbeat_ms
            );
        }
        if self.max_attempts == 0 {
            bail!("--max-attempts must be at least 1");
        }
        Ok(QueueConfig {
            heartbeat_interval_ms: self.heartbeat_ms,
            lease_ttl_ms: self.lease_ttl_ms,
            long_poll_ms: self.long_poll_ms,
            retry_base_ms: self.retry_base_ms,
            retry_cap_ms: self.retry_cap_ms.max(self.retry_base_ms),
            default_max_attempts: self.max_attempts,
            metrics_retention: QueueConfig::default().metrics_retention,
            locality_wait_ms: self.locality_wait_ms,
            session_wait_ms: self.session_wait_ms,
            fair_share: !self.no_fair_share,
            retire_lost_after_ms: QueueConfig::default().retire_lost_after_ms,
            weights: {
                let mut weights = kobo_queue::scoring::Weights::default();
                for assignment in &self.route_weights {
                    weights
                        .set(assignment)
                        .map_err(|e| anyhow::anyhow!("--route-weight {e}"))?;
                }
                weights
            },
        })
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// Address to listen on.
    #[arg(long, env = "KOBO_LISTEN", default_value = "127.0.0.1:7443")]
    pub listen: SocketAddr,
    /// Extra DNS names or IPs for the server certificate (repeatable).
    #[arg(long = "san")]
    pub sans: Vec<String>,
    /// URL clients should use, written to <data-dir>/client.json.
    #[arg(long)]
    pub advertise_url: Option<String>,
    #[command(flatten)]
    pub queue: QueueArgs,
    #[command(flatten)]
    pub ca: CaImportArgs,
    /// Lifetime of node certificates (agents renew at 2/3 of it).
    #[arg(long, default_value = "30days", value_parser = humantime::parse_duration)]
    pub node_cert_lifetime: Duration,
    #[command(flatten)]
    pub retention: RetentionArgs,
    #[command(flatten)]
    pub gateway: GatewayArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Also run the autoscaler on this inventory's `pools:` (as `kobo-coord autoscale`).
    #[arg(long, value_name = "INVENTORY")]
    pub autoscale: Option<PathBuf>,
    /// Who checkpoints the write-ahead log: `internal` (kobo, every 250 ms)
    /// or `external` (Litestream replicating the database: kobo never
    /// checkpoints; without such a process the log grows without bound).
    #[arg(long, env = "KOBO_CHECKPOINTS", value_enum, default_value_t = CheckpointsArg::Internal)]
    pub checkpoints: CheckpointsArg,
    /// Keep the jobs in PostgreSQL instead of the data directory's SQLite
    /// file: `postgres://user@h1,h2/kobo?target_session_attrs=read-write`
    /// (several hosts: the writable one is used, and found again after a
    /// failover). The data directory still holds the keys and certificates.
    #[arg(long, env = "KOBO_DATABASE", value_name = "URL", value_parser = parse_database_url)]
    pub database: Option<String>,
    /// Time between the autoscaler's looks at the backlog (with --autoscale).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub autoscale_interval: Duration,
    /// Stand by for the leader at this URL: every route but /healthz and
    /// /readyz answers 503 with `Kobo-Leader: URL`, and agents and clients
    /// move there (a coordinator taken out of service by hand).
    #[arg(long, value_name = "LEADER_URL", value_parser = leader_url)]
    pub standby_for: Option<String>,
}

/// `--standby-for`: an https URL (clients are sent there as it is written).
fn leader_url(text: &str) -> Result<String, String> {
    let rest = text
        .strip_prefix("https://")
        .ok_or_else(|| format!("--standby-for: {text:?} is not an https:// URL"))?;
    if rest.trim_end_matches('/').is_empty() || text.chars().any(|c| c.is_whitespace() || c == ',')
    {
        return Err(format!(
            "--standby-for: {text:?} is not one https://host:port URL"
        ));
    }
    Ok(text.trim_end_matches('/').to_string())
}

/// `--database`: a PostgreSQL URL, checked here so a typo is named at once.
fn parse_database_url(value: &str) -> Result<String, String> {
    if !(value.starts_with("postgres://") || value.starts_with("postgresql://")) {
        return Err(format!(
            "{value:?} is not a PostgreSQL URL (postgres://user@host/db); without --database the jobs are in the data directory's SQLite file"
        ));
    }
    kobo_queue::store::check_postgres_url(value)
}

/// `--checkpoints`: [`config::Checkpoints`] on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckpointsArg {
    Internal,
    External,
}

/// Bounds on connections and request bodies: what a slow or flooding client
/// can hold. Refused connections are closed at once and audited.
#[derive(Debug, Args, Clone)]
pub struct LimitArgs {
    /// Most open connections; more are closed at once.
    #[arg(long, default_value_t = config::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Most connections that have not yet made an authenticated request (API
    /// key, node certificate or dashboard session).
    #[arg(long, default_value_t = config::DEFAULT_MAX_UNAUTHENTICATED)]
    pub max_unauthenticated_connections: usize,
    /// Most not-yet-authenticated connections from one source address (IPv6: one /64).
    #[arg(long, default_value_t = config::DEFAULT_MAX_UNAUTHENTICATED_PER_SOURCE)]
    pub max_unauthenticated_per_source: usize,
    /// How long a request body may take before --body-min-rate applies.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub body_grace: Duration,
    /// Least bytes per second of a request body after --body-grace, averaged
    /// from the request's start (0: no rate check). The agents' stream
    /// upload is exempt.
    #[arg(long, default_value_t = config::DEFAULT_BODY_MIN_RATE)]
    pub body_min_rate: u64,
    /// Longest a whole request body may take (the stream upload is exempt).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,
    /// Most concurrent streams on one HTTP/2 connection.
    #[arg(long, default_value_t = config::DEFAULT_H2_MAX_STREAMS)]
    pub h2_max_streams: u32,
    /// Largest decoded header list of one HTTP/2 request (bytes); also bounds
    /// CONTINUATION floods.
    #[arg(long, default_value_t = config::DEFAULT_H2_MAX_HEADER_LIST)]
    pub h2_max_header_list: u32,
    /// Streams an HTTP/2 client may reset before they are served, before the
    /// connection is closed (rapid reset).
    #[arg(long, default_value_t = config::DEFAULT_H2_MAX_PENDING_RESETS)]
    pub h2_max_pending_resets: usize,
    /// Streams reset for a client's protocol errors before the connection is closed.
    #[arg(long, default_value_t = config::DEFAULT_H2_MAX_ERROR_RESETS)]
    pub h2_max_error_resets: usize,
}

impl LimitArgs {
    pub fn config(&self) -> anyhow::Result<config::ConnectionLimits> {
        for (flag, value) in [
            ("--max-connections", self.max_connections),
            (
                "--max-unauthenticated-connections",
                self.max_unauthenticated_connections,
            ),
            (
                "--max-unauthenticated-per-source",
                self.max_unauthenticated_per_source,
            ),
            ("--h2-max-streams", self.h2_max_streams as usize),
            ("--h2-max-header-list", self.h2_max_header_list as usize),
        ] {
            if value == 0 {
                bail!("{flag} must be at least 1");
            }
        }
        if self.body_timeout.is_zero() {
            bail!("--body-timeout must be positive");
        }
        if self.body_grace > self.body_timeout {
            bail!(
                "--body-grace ({}) must not be longer than --body-timeout ({})",
                humantime::format_duration(self.body_grace),
                humantime::format_duration(self.body_timeout)
            );
        }
        Ok(config::ConnectionLimits {
            max_connections: self.max_connections,
            max_unauthenticated: self.max_unauthenticated_connections,
            max_unauthenticated_per_source: self.max_unauthenticated_per_source,
            body_grace: self.body_grace,
            body_min_rate: self.body_min_rate,
            body_timeout: self.body_timeout,
            h2_max_streams: self.h2_max_streams,
            h2_max_header_list: self.h2_max_header_list,
            h2_max_pending_resets: self.h2_max_pending_resets,
            h2_max_error_resets: self.h2_max_error_resets,
        })
    }
}

/// How OpenAI and Ollama API requests become jobs.
#[derive(Debug, Args, Clone)]
pub struct GatewayArgs {
    /// The kind of a gateway request without `x-kobo-kind` whose model has no
    /// `--gateway-model-kind`.
    #[arg(long, default_value = "general_query")]
    pub gateway_default_kind: String,
    /// MODEL=KIND: the kind of gateway requests for MODEL (repeatable).
    #[arg(long = "gateway-model-kind", value_parser = parse_model_kind)]
    pub gateway_model_kinds: Vec<(String, String)>,
    /// Priority of gateway requests (higher runs first; jobs default to 0).
    #[arg(long, default_value_t = 10)]
    pub gateway_priority: i32,
    /// Longest a gateway request waits for a free node before a 503 with
    /// Retry-After.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub gateway_queue_wait: Duration,
    /// Most gateway requests in flight (waiting or answering); more get 503
    /// with Retry-After at once.
    #[arg(long, default_value_t = kobo_queue::config::DEFAULT_GATEWAY_MAX_REQUESTS)]
    pub gateway_max_requests: usize,
}

fn parse_model_kind(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((model, kind)) if !model.trim().is_empty() && !kind.trim().is_empty() => {
            Ok((model.trim().to_owned(), kind.trim().to_owned()))
        }
        _ => Err(format!("`{text}` is not MODEL=KIND")),
    }
}

impl GatewayArgs {
    pub fn config(&self) -> kobo_queue::config::GatewayConfig {
        kobo_queue::config::GatewayConfig {
            default_kind: self.gateway_default_kind.clone(),
            model_kinds: self.gateway_model_kinds.clone(),
            priority: self.gateway_priority,
            max_queue_wait: self.gateway_queue_wait,
            max_requests: self.gateway_max_requests,
        }
    }
}

/// How long node metrics are kept (raw, then downsampled per minute).
#[derive(Debug, Args, Clone)]
pub struct RetentionArgs {
    /// Keep raw node metrics (one row per heartbeat) this long.
    #[arg(long, default_value = "1day", value_parser = humantime::parse_duration)]
    pub metrics_raw_retention: Duration,
    /// Keep per-minute node metrics this long.
    #[arg(long, default_value = "30days", value_parser = humantime::parse_duration)]
    pub metrics_minute_retention: Duration,
    /// Retire nodes lost for longer than this: they leave the node listing
    /// and their certificates are revoked (kept in history for reports).
    #[arg(long, env = "KOBO_RETIRE_LOST_AFTER", default_value = "24h", value_parser = humantime::parse_duration)]
    pub retire_lost_after: Duration,
}

impl RetentionArgs {
    pub fn retention(&self) -> kobo_queue::store::MetricsRetention {
        kobo_queue::store::MetricsRetention {
            raw: self.metrics_raw_retention,
            minute: self.metrics_minute_retention,
        }
    }
}

impl ServeArgs {
    pub fn config(&self) -> anyhow::Result<ServeConfig> {
        Ok(ServeConfig {
            data_dir: self.data_dir.data_dir.clone(),
            queue: QueueConfig {
                metrics_retention: self.retention.retention(),
                retire_lost_after_ms: self.retention.retire_lost_after.as_millis() as u64,
                ..self.queue.config()?
            },
            sans: self.sans.clone(),
            advertise_url: self.advertise_url.clone(),
            ca_import: self.ca.pair(),
            node_cert_lifetime: self.node_cert_lifetime,
            gateway: self.gateway.config(),
            limits: self.limits.config()?,
            checkpoints: match self.checkpoints {
                CheckpointsArg::Internal => config::Checkpoints::Internal,
                CheckpointsArg::External => config::Checkpoints::External,
            },
            database: self.database.clone(),
            role: self.standby_for.clone().map(|url| {
                tokio::sync::watch::channel(kobo_queue::leader::Role::Standby {
                    leader_address: Some(url),
                })
                .1
            }),
        })
    }
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Jobs in the mixed batch.
    #[arg(long, default_value_t = 12)]
    pub jobs: usize,
    /// Latency of the simulated LLM when no Ollama answers (ms).
    #[arg(long, default_value_t = 400)]
    pub sim_latency_ms: u64,
    /// Use the simulated LLM even if Ollama answers on 127.0.0.1:11434.
    #[arg(long)]
    pub sim: bool,
    /// Keep the demo's data directory (printed at the end) instead of deleting it.
    #[arg(long)]
    pub keep: bool,
    /// Exit after the batch instead of serving the dashboard until Ctrl-C.
    #[arg(long)]
    pub exit: bool,
}

pub fn init(args: InitArgs) -> anyhow::Result<()> {
    let done = kobo_queue::init::init(&kobo_queue::init::InitOptions {
        data_dir: args.data_dir.data_dir.clone(),
        sans: args.sans.clone(),
        ca_import: args.ca.pair(),
        database: None,
    })?;
    let dir = args.data_dir.data_dir.display();
    println!("data directory: {dir}");
    println!("CA certificate: {dir}/ca.pem (sha256 {})", done.ca_sha256);
    match done.admin_key {
        Some(key) => {
            println!("admin API key (shown once; also in {dir}/admin.key, mode 0600):");
            println!("{key}");
        }
        None => println!("already initialised; the local admin key is in {dir}/admin.key"),
    }
    Ok(())
}
