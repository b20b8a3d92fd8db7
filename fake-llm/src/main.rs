//! `fake-llm`: runs the test fake LLM (Ollama and OpenAI wire formats)
//! standalone, for manual runs and for tests driving separate processes.
//! Change its behavior at runtime with `POST /_fake/behavior`.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use kobo_fake_llm::{DEFAULT_RESPONSE_TOKENS, FakeBehavior};

#[derive(Debug, Parser)]
#[command(about = "A fake LLM server speaking the Ollama and OpenAI APIs")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:11434")]
    listen: SocketAddr,
    /// Models served, comma-separated (default: qwen2.5:0.5b,llama3.2:1b).
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Delay before the first byte of a reply, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Streaming pace in tokens per second; 0 for as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    tokens_per_second: f64,
    /// Tokens in each reply.
    #[arg(long, default_value_t = DEFAULT_RESPONSE_TOKENS)]
    tokens: u32,
    /// The whole behavior as JSON (as `POST /_fake/behavior` takes it);
    /// overrides the flags above.
    #[arg(long)]
    behavior: Option<String>,
}

impl Args {
    fn behavior(&self) -> anyhow::Result<FakeBehavior> {
        if let Some(json) = &self.behavior {
            return serde_json::from_str(json).context("bad --behavior");
        }
        let mut behavior = FakeBehavior {
            latency_ms: self.latency_ms,
            tokens_per_second: self.tokens_per_second,
            response_tokens: self.tokens,
            ..FakeBehavior::default()
        };
        if !self.models.is_empty() {
            behavior.models = self.models.clone();
        }
        Ok(behavior)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fake-llm: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let fake = kobo_fake_llm::start_on(args.listen, args.behavior()?)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!("fake-llm listening on {}", fake.url());
    tokio::signal::ctrl_c()
        .await
        .context("cannot wait for ctrl-c")?;
    fake.shutdown().await.context("server failed")?;
    Ok(())
}
