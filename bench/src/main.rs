//! `kobo-bench`: starts a real `kobo-coord` and simulated (and real) agents,
//! measures kobo's figures side by side in one run, and reports them as
//! JSON, as a markdown table, and as BENCHMARKS.md.
//!
//! # Layout
//! - `coordinator`: the `kobo-coord serve` process under test.
//! - `agents`: simulated agents speaking the real agent protocol.
//! - `real_agent`: real `kobo-agent` processes (failover, footprint).
//! - `figures`: one module per figure.
//! - `report`: medians, targets, JSON, markdown; `stats`: percentiles;
//!   `system`: the machine and process memory from `/proc`.

mod agents;
mod coordinator;
mod figures;
mod postgres;
mod real_agent;
mod report;
mod stats;
mod system;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use anyhow::{Context, bail};
use clap::Parser;

use crate::figures::Env;
use crate::report::{FigureReport, FigureResult, Metric, Report};

/// The load generator shares the two cores with `kobo-coord`: the same
/// allocator keeps its own cost per job down.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs of each figure when `--repeat` is not given (medians are reported).
const DEFAULT_REPEATS: usize = 3;

#[derive(Debug, Parser)]
#[command(
    name = "kobo-bench",
    version,
    about = "Measures kobo: pickup latency, dispatch overhead, throughput, scaling, queue depth, failover, footprint, the gateway against LiteLLM, fairness between API keys"
)]
struct Cli {
    /// Reduced sizes, one run each: a smoke test of the harness (under a
    /// minute), not figures to compare with the targets.
    #[arg(long)]
    quick: bool,
    /// Runs of each figure; the report shows medians (default 3; 1 with --quick).
    #[arg(long)]
    repeat: Option<usize>,
    /// Only these figures (comma-separated): pickup, overhead, throughput,
    /// scaling, depth, failover, leader (needs --database), footprint,
    /// gateway, fairness, fleet, kill-loop.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the report as markdown to this file (BENCHMARKS.md), keeping
    /// its hand-written notes section.
    #[arg(long)]
    write: Option<PathBuf>,
    /// Where the data directories go (default: the system's temp directory).
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Keep the data directories (databases, logs) instead of deleting them.
    #[arg(long)]
    keep: bool,
    /// Run `kobo-coord` under this command, for profiling: e.g.
    /// "valgrind --tool=callgrind --callgrind-out-file=/tmp/coord.%p.out".
    #[arg(long)]
    coordinator_wrapper: Option<String>,
    /// Agents in the fleet figure (default 10,000; 50 with --quick): e.g.
    /// fewer under a heap profiler. Its targets apply only at 10,000.
    #[arg(long)]
    fleet_agents: Option<usize>,
    /// A PostgreSQL admin URL (e.g. postgres://postgres@127.0.0.1:5432/postgres):
    /// pickup and throughput also run with the store on PostgreSQL (a fresh
    /// database each, created here and dropped after), side by side with
    /// SQLite, and the leader figure runs (two coordinators, the leader
    /// SIGKILLed).
    #[arg(long, value_name = "URL")]
    database: Option<String>,
}

/// Figures that also run on PostgreSQL with `--database`.
const ON_POSTGRES: &[&str] = &["pickup", "throughput"];
/// Figures that run on PostgreSQL only (skipped without `--database`).
const POSTGRES_ONLY: &[&str] = &["leader"];

/// Lets a thousand agents and their coordinator open their connections.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    raise_open_files_limit();
    if let Some(wrapper) = &cli.coordinator_wrapper {
        coordinator::set_wrapper(wrapper);
    }
    for name in &cli.only {
        if !figures::ALL.contains(&name.as_str()) {
            bail!(
                "unknown figure {name:?}; figures: {}",
                figures::ALL.join(", ")
            );
        }
    }
    if let Some(url) = &cli.database {
        postgres::check(url).await?;
    } else if let Some(name) = cli
        .only
        .iter()
        .find(|o| POSTGRES_ONLY.contains(&o.as_str()))
    {
        bail!("figure {name:?} needs --database (a PostgreSQL admin URL)");
    }
    let data_root = cli.data_root.clone().unwrap_or_else(std::env::temp_dir);
    let root = data_root.join(format!("kobo-bench-{}", std::process::id()));
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let env = Env {
        root: root.clone(),
        quick: cli.quick,
        fleet_agents: cli.fleet_agents,
        postgres: cli.database.clone(),
        on_postgres: false,
        repeats: cli
            .repeat
            .unwrap_or(if cli.quick { 1 } else { DEFAULT_REPEATS })
            .max(1),
    };
    let load_before = system::load_average();
    let started_at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let started = Instant::now();
    let result = run_figures(&env, &cli.only).await;
    if cli.keep {
        eprintln!("kobo-bench: data kept in {}", root.display());
    } else {
        let _ = std::fs::remove_dir_all(&root);
    }
    let figures = result?;
    let report = Report {
        tool: format!("kobo-bench {}", env!("CARGO_PKG_VERSION")),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        quick: cli.quick,
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        started_at,
        duration_s: started.elapsed().as_secs_f64(),
        repeats: env.repeats,
        machine: system::machine(&data_root, load_before),
        figures,
    };
    print!("{}", report.table());
    if let Some(path) = &cli.out {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &cli.write {
        report::write_markdown(&report, path)?;
    }
    Ok(())
}

async fn run_figures(env: &Env, only: &[String]) -> anyhow::Result<Vec<FigureReport>> {
    let mut reports = Vec::new();
    for &name in figures::ALL {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        if POSTGRES_ONLY.contains(&name) && env.postgres.is_none() {
            continue;
        }
        eprintln!("kobo-bench: {name} …");
        let began = Instant::now();
        let mut result = run_figure(env, name).await?;
        if ON_POSTGRES.contains(&name)
            && let Some(pg) = env.postgres_pass()
        {
            eprintln!("kobo-bench: {name} on PostgreSQL …");
            let on_pg = run_figure(&pg, name).await?;
            result = side_by_side(result, on_pg);
        }
        let report = FigureReport::from_result(result);
        for metric in &report.metrics {
            eprintln!(
                "kobo-bench:   {} {}: {} {}",
                report.title,
                metric.label,
                report::number(metric.median),
                metric.unit
            );
        }
        eprintln!(
            "kobo-bench: {name} done in {:.1} s",
            began.elapsed().as_secs_f64()
        );
        reports.push(report);
    }
    Ok(reports)
}

/// Runs one figure on the store `env` says.
async fn run_figure(env: &Env, name: &str) -> anyhow::Result<FigureResult> {
    match name {
        "pickup" => figures::pickup::run(env).await,
        "overhead" => figures::overhead::run(env).await,
        "throughput" => figures::throughput::run(env).await,
        "scaling" => figures::scaling::run(env).await,
        "depth" => figures::depth::run(env).await,
        "failover" => figures::failover::run(env).await,
        "footprint" => figures::footprint::run(env).await,
        "gateway" => figures::gateway::run(env).await,
        "fairness" => figures::fairness::run(env).await,
        "fleet" => figures::fleet::run(env).await,
        "kill-loop" => figures::killloop::run(env).await,
        "leader" => match env.postgres_pass() {
            Some(pg) => figures::leader::run(&pg).await,
            None => bail!("figure leader needs --database"),
        },
        other => bail!("unknown figure {other}"),
    }
    .with_context(|| format!("figure {name}"))
}

/// One figure measured on SQLite and on PostgreSQL as one: each run's
/// metrics of both, labelled by store, PostgreSQL's keyed `postgres_…`.
fn side_by_side(sqlite: FigureResult, postgres: FigureResult) -> FigureResult {
    let label = |store: &str, metric: Metric, prefix: &str| Metric {
        key: format!("{prefix}{}", metric.key),
        label: format!("{store}: {}", metric.label),
        ..metric
    };
    let runs = sqlite
        .runs
        .into_iter()
        .zip(postgres.runs)
        .map(|(lite, pg)| {
            let lite = lite.into_iter().map(|m| label("sqlite", m, ""));
            let pg = pg.into_iter().map(|m| label("postgres", m, "postgres_"));
            lite.chain(pg).collect()
        })
        .collect();
    FigureResult {
        method: format!(
            "{} The same on PostgreSQL (`postgres_…` keys): `kobo-coord serve --database` on a fresh database on the `--database` server, created for the figure and dropped after; the server's settings as given (`synchronous_commit` left on).",
            sqlite.method
        ),
        runs,
        ..sqlite
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Runtime::new()
        .context("starting the runtime")
        .and_then(|runtime| runtime.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kobo-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}
