//! kobo-server: the coordinator's HTTPS front. It accepts TLS connections,
//! serves the API agents and clients call and the dashboard, and calls the
//! engine (`kobo_queue`) only through `Queue`, `Admin` and `Observer`: it
//! never sees SQL (it does not link rusqlite).
//!
//! # Layout
//! - [`serve`]: [`serve()`](serve::serve), the entry point: the TLS accept
//!   loop (HTTP/1.1 + HTTP/2), `PeerInfo` on every request, the timer.
//! - `limits`, `body_rate`: connection bounds (global, unauthenticated, per
//!   source; refusals audited) and request bodies' deadline and minimum rate.
//! - [`api`]: the router, `ROUTES` and the handlers; `api/error.rs` has
//!   `ApiError` and the extractors that name bad fields; `api/standby.rs`
//!   answers `503 standby` naming the leader while this coordinator is not
//!   the leader, and `GET /readyz`.
//! - [`gateway`]: the OpenAI- and Ollama-compatible routes and the stream relay.
//! - [`tls`]: the rustls configuration and the renewable server certificate.
//! - [`session`]: dashboard session cookies and one-time login tokens.
//! - [`dashboard`]: the embedded web page.

pub mod api;
mod body_rate;
pub mod dashboard;
mod deadline_io;
pub mod gateway;
mod limits;
pub mod serve;
pub mod session;
pub mod tls;

pub use kobo_queue::config::{QueueConfig, ServeConfig};
pub use serve::serve;
