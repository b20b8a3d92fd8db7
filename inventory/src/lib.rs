//! The kobo inventory: the machines `kobo-coord provision` installs agents on,
//! as a YAML file modelled on the original design's node cards and on
//! Ansible's inventories (`defaults`, `groups` with their own `vars`,
//! `hosts`). Loading checks everything before anything is touched and reports
//! each problem as `file:line:column: what was expected`.
//!
//! # Layout
//! - [`load`](mod@load): the entry points, [`load()`] and [`parse()`]: a file
//!   or a text through the layers below into an [`Inventory`].
//! - [`yaml`]: the YAML tree with a line and column on every node.
//! - `schema`: which keys may stand where, and the walk that checks the tree
//!   against them; `schema::value` reads one node as the value its key expects.
//! - `raw`: the inventory as written, each level's settings with their positions.
//! - `resolve`: each host's settings (defaults, its groups' vars outermost
//!   first, its own), then the checks across hosts.
//! - [`checks`]: rules for single values (host names, users, paths, URLs, secrets).
//! - [`model`]: [`Inventory`], [`Host`], [`NodeCard`], [`Llm`], [`SecretRef`].
//! - [`limit`]: `--limit host,group,glob` selection.
//! - [`error`]: errors, as [`InventoryError`] with its [`Diagnostic`]s, all
//!   collected before any is reported.

pub mod checks;
pub mod error;
pub mod limit;
pub mod load;
pub mod model;
mod raw;
mod resolve;
mod schema;
pub mod yaml;

pub use error::{Diagnostic, Diagnostics, InventoryError};
pub use limit::select;
pub use load::{load, parse};
pub use model::*;
