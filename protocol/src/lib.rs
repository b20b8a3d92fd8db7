//! Wire types shared by `kobo-coord`, `kobo-agent` and clients.
//!
//! Everything that crosses a process boundary as JSON is defined here and only
//! here. Request types reject unknown fields so that a typo in a client becomes
//! a 4xx naming the field instead of a silently ignored option.
//!
//! # Layout
//! - [`admin`]: roles, API keys, join tokens, enrollment, audit.
//! - [`enroll`]: enrollment keys, reusable and bound to a node-name prefix.
//! - [`job`]: what a client submits and what it reads back.
//! - [`agent`]: the agent ↔ coordinator calls (register, lease, heartbeat, complete).
//! - [`node`]: nodes as clients see them.
//! - [`observe`]: the cluster summary (status, dashboard), dashboard sessions.
//! - [`error`]: the one error body every route answers with.
//! - [`leader`]: a standby's leader header and `GET /readyz`'s answer.
//! - [`gateway`]: OpenAI/Ollama calls carried as jobs, and the agent's stream upload.
//! - [`route`]: `RouteReason`, why a job went where it went.
//! - [`validate`]: checks beyond types (sizes, ranges, names), each naming its field.
//! - [`data_dir`]: `DataDir`, the names of the coordinator's files; `ClientFile`.
//! - [`backup`]: the manifest of a `kobo-coord backup` directory.
//! - [`files`]: `write_atomic`, the one writer of key and state files.
//! - [`digest`]: the one `sha256_hex`, used by every crate.
//! - [`framing`]: incremental SSE and NDJSON decoders.
//! - [`resume`]: continuing a broken gateway stream on another node.
//! - [`tenancy`]: what each API key may use (weight, class, limits, budget) and its usage.
//! - [`scaling`]: the backlog and agents needed, for autoscalers (`GET /v1/scaling`).

pub mod admin;
pub mod agent;
pub mod backup;
pub mod data_dir;
pub mod digest;
pub mod enroll;
pub mod error;
pub mod files;
pub mod framing;
pub mod gateway;
pub mod job;
pub mod leader;
pub mod node;
pub mod observe;
pub mod resume;
pub mod route;
pub mod scaling;
pub mod tenancy;
pub mod validate;

pub use admin::*;
pub use agent::*;
pub use data_dir::{ClientFile, DataDir, KeptFile};
pub use digest::sha256_hex;
pub use enroll::*;
pub use error::*;
pub use gateway::{GatewayApi, GatewayCall, StreamQuery};
pub use job::*;
pub use leader::{LEADER_HEADER, ROLE_HEADER, Readiness, STANDBY_CODE};
pub use node::*;
pub use observe::*;
pub use route::RouteReason;
pub use scaling::{ScalingQuery, ScalingView};
pub use tenancy::{
    Budget, BudgetPeriod, KeyPolicy, KeyPolicyUpdate, PriorityClass, UsageGroup, UsageQuery,
    UsageRow, usage_actor,
};

/// The version prefix of every HTTP route (`/v1/...`).
pub const API_VERSION: &str = "v1";

/// Milliseconds since the Unix epoch, the one timestamp type on the wire and in
/// the database.
pub type UnixMillis = i64;

/// A job's numeric id, as stored in `jobs.id`.
pub type JobId = i64;
