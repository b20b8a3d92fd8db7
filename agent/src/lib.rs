//! kobo-agent: runs on each worker machine, leases jobs from `kobo-coord`
//! over HTTPS, runs them on the machine's own LLM, and reports results and
//! metrics. It only ever dials out (works behind NAT).
//!
//! # Layout
//! - [`cli`]: the command line (clap) and the settings it makes.
//! - [`config`]: the agent's settings.
//! - [`coordinator`]: the calls to the coordinator (register, lease, heartbeat, complete).
//! - [`identity`]: the node key and certificate: join, keygen, renewal.
//! - [`runner`]: the lease loop, job tasks, heartbeats and graceful drain.
//! - [`llm`]: the LLM backends (Ollama, OpenAI-compatible, simulated).
//! - [`gateway`]: gateway calls, their backend's answer uploaded to the coordinator as it streams.
//! - [`metrics`]: system metrics for heartbeats.
//! - [`report`]: results reported in coalesced batches.
//! - [`signals`]: shutdown on SIGTERM or Ctrl-C.
//! - [`supervise`]: `kobo-agent supervise`, the agent run from an environment file.
//! - [`manual`]: shell completions and man pages from a clap command (both binaries).
//! - [`build`]: `agent_version`, naming the running executable by its checksum.

pub mod build;
pub mod cli;
pub mod config;
pub mod coordinator;
pub mod gateway;
pub mod identity;
pub mod llm;
pub mod manual;
pub mod metrics;
pub mod report;
pub mod runner;
pub mod signals;
pub mod supervise;

pub use cli::command;
pub use config::AgentConfig;
pub use runner::run;
