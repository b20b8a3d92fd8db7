//! kobo-coord: the coordinator of a kobo cluster. It keeps every job in one
//! SQLite file, serves the HTTPS API agents and clients call, hands ready
//! jobs to parked agents, and takes leases back from agents that vanish.
//!
//! # Layout
//! - [`server`]: the TLS accept loop and [`serve`], the entry point.
//! - [`api`]: routes and handlers; [`validate`]: input checks naming fields.
//! - [`queue`]: queue operations (submit, lease, heartbeat, complete, cancel, timer).
//! - [`dispatch`]: parked lease requests and the hand-off of ready jobs.
//! - [`routing`]: hard constraints (which node may run which job).
//! - [`store`]: SQLite schema, the group-commit writer, queries.
//! - [`tls`]: the coordinator's CA and server certificate.
//! - [`client`]: a typed client of the API; [`cli`]: the command line; [`demo`].
//! - [`config`]: timings and settings.

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod demo;
pub mod dispatch;
pub mod queue;
pub mod routing;
pub mod server;
pub mod store;
pub mod tls;
pub mod validate;

pub use server::serve;
