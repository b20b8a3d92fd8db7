//! Test support for kobo: test-only servers and the harness that starts real
//! `kobo-coord` and `kobo-agent` processes.
//!
//! # Layout
//! - [`fake_llm`]: the `kobo-fake-llm` crate, re-exported: an HTTP server
//!   speaking the Ollama and OpenAI wire formats, streaming included, with
//!   knobs for latency, errors, hangs and cut streams.
//! - [`cluster`]: starts a real `kobo-coord` process and `kobo-agent`
//!   processes on a temporary data directory, for end-to-end tests.
//! - [`ledger`]: the Jepsen-style checker of chaos tests: the clients'
//!   acknowledgements against the real SQLite file.
//! - [`pg`]: real PostgreSQL 15: a throwaway server ([`pg::Postgres`]), and
//!   etcd with Patroni-managed servers in synchronous mode ([`pg::Patroni`]).
//! - [`proxy`]: a flaky TCP proxy (latency, jitter, torn connections).
//! - [`sshd`]: real OpenSSH servers (in network namespaces when possible)
//!   as provisioning targets.

pub mod cluster;
pub mod ledger;
pub mod pg;
pub mod proxy;
pub mod sshd;

pub use kobo_fake_llm as fake_llm;
