//! `kobo-coord`: parses the command line, sets up logging, runs a command.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use kobo_coord::cli::{self, Cli, Command};
use tokio_util::sync::CancellationToken;

/// mimalloc instead of glibc's allocator: with glibc, `malloc`/`free` and
/// their arena locks were a fifth of the store writer's profile; mimalloc
/// cut `kobo-coord`'s CPU per job by about a fifth (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let config = args.config()?;
            // Before the port is bound, so a second coordinator on this data
            // directory hears that rather than "address in use"; the engine
            // takes the lock for good when it opens.
            drop(
                kobo_queue::data_lock::lock_data_dir(&config.data_dir, "kobo-coord serve")
                    .context("refusing to serve: one coordinator per data directory")?,
            );
            raise_fd_limit(config.limits.max_connections as u64);
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("listening on {}", args.listen))?;
            let shutdown = CancellationToken::new();
            kobo_agent::signals::cancel_on_signal(shutdown.clone());
            let Some(inventory) = args.autoscale.clone() else {
                return kobo_server::serve(listener, config, shutdown).await;
            };
            let server = async {
                let served = kobo_server::serve(listener, config, shutdown.clone()).await;
                // A server that failed to start stops the autoscaler too.
                shutdown.cancel();
                served
            };
            let options = kobo_coord::autoscale::AutoscaleOptions {
                interval: args.autoscale_interval,
                ..kobo_coord::autoscale::AutoscaleOptions::default()
            };
            // Beside the server in this task: the autoscaler's futures
            // borrow across awaits and need not be `Send`.
            let autoscaler = kobo_coord::autoscale::run_beside_server(
                inventory,
                options,
                args.data_dir.data_dir.clone(),
                shutdown.clone(),
            );
            tokio::join!(server, autoscaler).0
        }
        Command::Demo(args) => kobo_coord::demo::run(args).await,
        Command::Submit(args) => cli::submit(args).await,
        Command::Jobs(args) => cli::jobs(args).await,
        Command::Job(args) => cli::job(args).await,
        Command::Cancel(args) => cli::cancel(args).await,
        Command::Nodes(args) => cli::nodes(args).await,
        Command::Status(args) => kobo_coord::status::run(args).await,
        Command::Init(args) => cli::init(args),
        Command::Backup(args) => cli::backup(args),
        Command::Restore(args) => cli::restore(args),
        Command::Apikey(command) => cli::apikey(command).await,
        Command::Token(command) => cli::token(command).await,
        Command::EnrollKey(command) => cli::enroll_key(command).await,
        Command::Node(command) => cli::node(command).await,
        Command::Audit(args) => cli::audit(args).await,
        Command::Usage(args) => cli::usage(args).await,
        Command::Drain(args) => cli::drain(args, true).await,
        Command::Resume(args) => cli::drain(args, false).await,
        Command::Schedule(command) => cli::schedule(command).await,
        Command::Provision(args) => kobo_coord::provision::provision(args).await,
        Command::Hosts(command) => kobo_coord::provision::hosts(command).await,
        Command::Keygen(args) => kobo_coord::provision::keygen(args),
        Command::Autoscale(args) => kobo_coord::autoscale::autoscale(args).await,
        Command::Mcp(args) => kobo_coord::mcp::serve_stdio(args.client.client()?).await,
        Command::Completions { shell } => {
            kobo_agent::manual::print_completions(kobo_coord::command(), shell);
            Ok(())
        }
        Command::Man { out } => {
            for page in kobo_agent::manual::write_man_pages(kobo_coord::command(), &out)? {
                println!("{}", page.display());
            }
            Ok(())
        }
    }
}

/// File descriptors beyond the connections: the database, its WAL and
/// shared memory, logs, the listener, spare.
const FD_HEADROOM: u64 = 256;

/// Raises the soft limit on open files to the hard limit (where the OS
/// allows: an unprivileged process may go up to the hard limit), since
/// every connection holds one; says when even the hard limit is below
/// `--max-connections`, the real bound then.
fn raise_fd_limit(max_connections: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "raised the open-file limit"),
            Err(err) => {
                tracing::warn!(soft, hard, error = %err, "could not raise the open-file limit")
            }
        }
    }
    let limit = getrlimit(Resource::RLIMIT_NOFILE).map_or(soft, |(soft, _)| soft);
    if limit < max_connections + FD_HEADROOM {
        tracing::warn!(
            limit,
            max_connections,
            "the open-file limit is below --max-connections: at most about {} connections can be open; raise it (ulimit -Hn, systemd LimitNOFILE=)",
            limit.saturating_sub(FD_HEADROOM)
        );
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = tokio::runtime::Runtime::new()
        .context("starting the runtime")
        .and_then(|runtime| runtime.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kobo-coord: {err:#}");
            ExitCode::FAILURE
        }
    }
}
