//! kobo-coord: the coordinator's command line. `kobo-coord serve` runs the
//! server (`kobo_server`) on the engine (`kobo_queue`); every other command
//! is a client of the HTTPS API through `kobo_client`.
//!
//! # Layout
//! - [`cli`]: the clap definitions and the client commands, by command group.
//! - [`status`]: `kobo-coord status`.
//! - [`provision`]: `provision`, `hosts trust`, `keygen` (on `kobo_provisioning`).
//! - [`autoscale`]: `autoscale` (and `serve --autoscale`): pools of standby hosts
//!   started and stopped as their backlog needs.
//! - [`mcp`]: the MCP stdio server (`kobo-coord mcp`) for Claude Code.
//! - [`demo`]: a coordinator and local agents in one process (the only
//!   crate that links `kobo-agent`).

pub mod autoscale;
pub mod cli;
pub mod demo;
pub mod mcp;
pub mod provision;
pub mod status;

pub use cli::command;
