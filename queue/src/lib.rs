//! kobo-queue: the engine of the coordinator. It keeps every job in one
//! SQLite file, grants leases with fencing tokens, hands ready jobs to parked
//! agents, takes leases back from agents that vanish, fires schedules, and
//! keeps keys, certificates, the audit chain and the read model. It knows no
//! HTTP: the server calls [`Queue`]'s, [`Admin`]'s and [`Observer`]'s methods.
//!
//! # Layout
//! - [`queue`]: `Queue`, one method per operation (submit, lease, heartbeat,
//!   complete, cancel, wait, list, tick), with the confidentiality rule
//!   applied once (`reads.rs`: jobs, details, nodes, queue reasons); `run_timer`.
//! - [`dispatch`]: `Hub`, parked lease requests, waiters, the fleet view,
//!   the speed book, and `hand_off` of ready jobs (the writer's post-commit hook).
//! - [`routing`]: hard constraints; [`regions`]: the one region table;
//!   [`scoring`]: `select_best_node`.
//! - [`streams`]: the in-memory relay of streamed answers (agent upload → gateway client).
//! - [`tenancy`]: each API key's policy (weight, class, limits) and fair share.
//! - [`rate`]: how fast jobs end now (expected starts, `Retry-After`).
//! - [`recurring`]: schedules (create, list, pause, delete).
//! - [`store`]: SQLite schema, the group-commit writer, queries.
//! - [`access`]: principals, roles, the cache of keys and certificates.
//! - [`admin`]: API keys, join tokens, enrollment, revocation, audit log.
//! - [`enrollment`]: enrollment keys (create, list, revoke, enroll) and
//!   retirement of nodes lost for long.
//! - [`pki`]: the coordinator's CA, server and node certificates.
//! - [`security`]: secret keys, API keys, join tokens, sealing.
//! - [`data_lock`]: one process per data directory (`kobo.lock`).
//! - [`leader`]: one leader among coordinators sharing a PostgreSQL
//!   database (advisory lock, epoch-fenced `kobo_leader` row).
//! - [`backup`]: `kobo-coord backup` and `restore` of a data directory.
//! - [`init`]: preparing a data directory (CA, secrets, database, first admin key).
//! - [`observe`]: the read model: cluster status, metrics.
//! - [`config`]: timings and settings.

pub mod access;
pub mod admin;
pub mod backup;
pub mod beats;
pub mod clock;
pub mod config;
pub mod data_lock;
pub mod dispatch;
pub mod enrollment;
pub mod init;
pub mod leader;
pub mod observe;
mod parked;
pub mod pki;
pub mod queue;
pub mod rate;
mod reads;
pub mod recurring;
pub mod regions;
pub mod routing;
pub mod scoring;
pub mod security;
pub mod store;
pub mod streams;
pub mod tenancy;

pub use admin::Admin;
pub use observe::Observer;
pub use queue::Queue;
pub use reads::queue_reason;
pub use store::{StoreError, unix_now_ms};
