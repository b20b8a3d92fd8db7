//! The inventory's public API: the shipped example loads, settings resolve
//! through defaults and groups, every kind of mistake is reported with its
//! line and column, and `--limit` selects hosts.

mod invalid;
mod limit;
mod valid;
