//! The kobo inventory: the machines `kobo-coord provision` installs agents on,
//! as a YAML file modelled on the original design's node cards and on
//! Ansible's inventories (`defaults`, `groups` with their own `vars`,
//! `hosts`). Loading checks everything before anything is touched and reports
//! each problem as `file:line:column: what was expected`.
//!
//! # Layout
//! - [`yaml`]: the YAML tree with a line and column on every node.
//! - [`load`]: walking the tree into [`Inventory`], resolving each host's settings.
//! - [`checks`]: rules for single values (host names, users, paths, URLs, secrets).
//! - [`model`]: [`Inventory`], [`Host`], [`NodeCard`], [`Llm`], [`SecretRef`].
//! - [`limit`]: `--limit host,group,glob` selection.
//! - [`error`]: errors, as [`InventoryError`] with its [`Diagnostic`]s.

pub mod checks;
pub mod error;
pub mod limit;
pub mod load;
pub mod model;
pub mod yaml;

pub use error::{Diagnostic, Diagnostics, InventoryError};
pub use limit::select;
pub use load::{load, parse};
pub use model::*;
