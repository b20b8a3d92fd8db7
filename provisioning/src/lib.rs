//! Provisioning: installing, upgrading and removing `kobo-agent` on the hosts
//! of an inventory over SSH. Per host: read-only facts, a plan (install,
//! upgrade, renew-cert, reconfigure, restart or nothing), then apply — stream
//! and verify the binary, keep the previous one, key made on the node and
//! CSR signed by the coordinator, restart only what changed, a health gate
//! that waits for the new build to check in, and automatic rollback when it
//! does not. Over the fleet: batches, parallelism, a failure budget.
//!
//! # Layout
//! - [`run`]: the fleet run (batches, `--parallel`, `--max-fail`) and [`HostReport`].
//! - [`apply`]: the per-host verbs (apply a plan, roll back, remove) and the health gate.
//! - [`plan`]: facts + wanted state → [`Plan`] (pure).
//! - [`facts`]: the read-only facts script.
//! - [`render`]: the remote layout, the agent's environment file, the systemd unit.
//! - [`service`]: starting and stopping the agent (systemd or supervised).
//! - [`ssh`]: connections (strict host keys, kobo's ssh config), remote commands, uploads.
//! - [`trust`]: kobo's `known_hosts`, first-contact scans, pinned keys.
//! - [`keys`]: the ed25519 deploy key.
//! - [`coordinator`]: what provisioning needs from the coordinator, as a trait.
//! - [`error`]: errors, as [`ProvisionError`].

pub mod apply;
pub mod coordinator;
pub mod error;
pub mod facts;
pub mod keys;
pub mod plan;
pub mod render;
pub mod run;
pub mod service;
pub mod ssh;
pub mod trust;

pub use coordinator::{Coordinator, NodeCheckIn, RunRecord, SignedCert};
pub use error::ProvisionError;
pub use plan::{Change, Plan};
pub use run::{Batch, HostReport, Mode, Progress, RunConfig, Status};
