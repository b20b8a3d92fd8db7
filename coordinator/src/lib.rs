//! kobo-coord: the coordinator of a kobo cluster. It keeps every job in one
//! SQLite file, serves the HTTPS API agents and clients call, hands ready
//! jobs to parked agents, and takes leases back from agents that vanish.
//!
//! # Layout
//! - [`server`]: the TLS accept loop and [`serve`], the entry point.
//! - [`access`]: principals, roles, the cache of keys and certificates.
//! - [`admin`]: API keys, join tokens, enrollment, revocation, audit log.
//! - [`api`]: routes and handlers; [`validate`]: input checks naming fields.
//! - [`queue`]: queue operations (submit, lease, heartbeat, complete, cancel, timer).
//! - [`dispatch`]: parked lease requests and the hand-off of ready jobs.
//! - [`routing`]: hard constraints (which node may run which job).
//! - [`scoring`]: `select_best_node`, the score among eligible nodes.
//! - [`store`]: SQLite schema, the group-commit writer, queries.
//! - [`tls`]: the coordinator's CA, server and node certificates.
//! - [`security`]: secret keys, API keys, join tokens, sealing of confidential data.
//! - [`client`]: a typed client of the API; [`cli`]: the command line; [`demo`].
//! - [`provision`]: `provision`, `hosts trust`, `keygen` (on `kobo_provisioning`).
//! - [`mcp`]: the MCP stdio server (`kobo-coord mcp`) for Claude Code.
//! - [`init`]: preparing a data directory (CA, secrets, database, first admin key).
//! - [`config`]: timings and settings.
//! - [`observe`]: metrics, cluster status, live updates, dashboard sessions;
//!   [`dashboard`]: the embedded web page; [`status`]: `kobo-coord status`.

pub mod access;
pub mod admin;
pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod dashboard;
mod deadline_io;
pub mod demo;
pub mod dispatch;
pub mod init;
pub mod mcp;
pub mod observe;
pub mod provision;
pub mod queue;
pub mod recurring;
pub mod routing;
pub mod scoring;
pub mod security;
pub mod server;
pub mod status;
pub mod store;
pub mod tls;
pub mod validate;

pub use server::serve;
