//! `kobo-agent`: parses the command line and runs the agent until SIGTERM or
//! Ctrl-C, then drains. `kobo-agent join` enrolls first (as does `kobo-agent
//! enroll`, or a plain start with `KOBO_ENROLL_KEY` and no certificate, as
//! in a Kubernetes pod); `kobo-agent keygen`
//! makes the node key and prints a certificate signing request; `kobo-agent
//! supervise` runs it with the settings of an environment file.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use kobo_agent::cli::{Cli, Command, config, enroll_if_needed};
use kobo_agent::identity;
use tokio_util::sync::CancellationToken;

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = match cli.command {
        Some(Command::Keygen { node_id, state_dir }) => {
            let key = identity::load_or_create_key(&state_dir)?;
            print!("{}", identity::csr(&node_id, &key)?);
            eprintln!(
                "node key: {} (never leaves this machine)",
                state_dir.join("node.key").display()
            );
            return Ok(());
        }
        Some(Command::Supervise { .. }) => bail!("supervise runs without this runtime"),
        Some(Command::Completions { shell }) => {
            kobo_agent::manual::print_completions(kobo_agent::command(), shell);
            return Ok(());
        }
        Some(Command::Man { out }) => {
            for page in kobo_agent::manual::write_man_pages(kobo_agent::command(), &out)? {
                println!("{}", page.display());
            }
            return Ok(());
        }
        Some(Command::Join {
            url,
            token,
            enroll_only,
            run,
        }) => {
            let node_id = run
                .node_id
                .clone()
                .context("--node-id is required: the name the token was created for")?;
            let enrolled = identity::join(&url, &token, &node_id, &run.state_dir).await?;
            tracing::info!(node_id = %enrolled, state_dir = %run.state_dir.display(), "enrolled");
            if enroll_only {
                return Ok(());
            }
            config(*run, Some(url), Some(enrolled))?
        }
        Some(Command::Enroll {
            url,
            enroll_only,
            run,
        }) => {
            let enrolled = enroll_if_needed(&run, Some(&url))
                .await?
                .context("--enroll-key (or KOBO_ENROLL_KEY) is required")?;
            if enroll_only {
                return Ok(());
            }
            config(*run, Some(url), Some(enrolled))?
        }
        None => {
            let coordinator = cli.run.coordinator.clone();
            let enrolled = enroll_if_needed(&cli.run, coordinator.as_deref()).await?;
            config(cli.run, None, enrolled)?
        }
    };
    let shutdown = CancellationToken::new();
    kobo_agent::signals::cancel_on_signal(shutdown.clone());
    kobo_agent::run(config, shutdown).await
}

/// `kobo-agent supervise`: its exit code is the agent's (with --no-restart).
fn supervise(command: Command) -> anyhow::Result<ExitCode> {
    let Command::Supervise {
        env_file,
        pid_file,
        log_file,
        detach,
        no_restart,
        session,
    } = command
    else {
        bail!("not a supervise command");
    };
    if session {
        kobo_agent::supervise::new_session();
    }
    let config = kobo_agent::supervise::SuperviseConfig {
        env_file,
        pid_file,
        log_file,
        no_restart,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    if detach {
        let pid = runtime.block_on(kobo_agent::supervise::detach(&config))?;
        println!("{pid}");
        return Ok(ExitCode::SUCCESS);
    }
    let code = runtime.block_on(kobo_agent::supervise::run(config))?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Supervised agents log to a file: no colour codes there.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut cli = Cli::parse();
    if matches!(cli.command, Some(Command::Supervise { .. }))
        && let Some(command) = cli.command.take()
    {
        return supervise(command).unwrap_or_else(|err| {
            eprintln!("kobo-agent: {err:#}");
            ExitCode::FAILURE
        });
    }
    let result = tokio::runtime::Runtime::new()
        .context("starting the runtime")
        .and_then(|runtime| runtime.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kobo-agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}
