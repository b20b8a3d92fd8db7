//! The MCP adapter: `kobo-coord mcp` serves tools over stdio with which an
//! MCP client (Claude Code) submits jobs by the dozen, waits for them with
//! progress, reads results, cancels, and looks at nodes and the cluster. It
//! is a client of the coordinator's HTTPS API ([`ApiClient`]), so it runs on
//! any machine that can reach the coordinator. Logs go to stderr; stdout
//! carries protocol messages only.
//!
//! # Layout
//! - `tools`: the tools, their descriptions, annotations and handlers.
//! - [`args`]: the tools' arguments and their checks; [`results`]: job
//!   results; [`cluster`]: nodes and the cluster summary. These are MCP
//!   boundary types, mapped to and from `kobo_protocol`'s.
//! - [`wait`]: waiting for many jobs with progress notifications.

pub mod args;
pub mod cluster;
pub mod results;
mod tools;
pub mod wait;

use std::time::Duration;

use anyhow::Context;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, ServiceExt, tool_handler};

use kobo_client::ApiClient;

/// The name the server gives itself in `initialize`.
pub const SERVER_NAME: &str = "kobo";
/// How often `wait_jobs` reports progress: often enough that clients which
/// reset their request timeout on progress never give up.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);
/// How long `wait_jobs` waits when the call names no timeout: below the
/// tool-call timeouts of common clients (two minutes and more).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(100);
/// Longest `wait_jobs` waits in one call (the coordinator's own bound on a
/// wait).
pub const MAX_WAIT: Duration = kobo_server::api::MAX_WAIT;

/// What the instructions in `initialize` tell the model.
const INSTRUCTIONS: &str = "kobo runs LLM jobs on a cluster of machines (nodes), each with its own local model. \
To spread work, call submit_jobs once with all the prompts (`prompts`), then wait_jobs with the returned ids \
(repeat while some are still running). get_job gives one job in full (paged result, attempts, errors); \
list_jobs, list_nodes and cluster_status show the state of the cluster; cancel_job stops a job.";

/// Settings of the adapter; tests shorten the progress interval.
#[derive(Debug, Clone)]
pub struct McpOptions {
    pub progress_interval: Duration,
    pub default_wait: Duration,
}

impl Default for McpOptions {
    fn default() -> Self {
        McpOptions {
            progress_interval: PROGRESS_INTERVAL,
            default_wait: DEFAULT_WAIT,
        }
    }
}

/// The MCP server: the tools over one coordinator client.
#[derive(Clone)]
pub struct KoboMcp {
    client: ApiClient,
    options: McpOptions,
    tool_router: ToolRouter<KoboMcp>,
}

/// The server, ready to serve over any transport (`server(..).serve(io)`).
pub fn server(client: ApiClient, options: McpOptions) -> KoboMcp {
    KoboMcp {
        client,
        options,
        tool_router: KoboMcp::tool_router(),
    }
}

/// Serves MCP on stdin/stdout until the client closes stdin.
pub async fn serve_stdio(client: ApiClient) -> anyhow::Result<()> {
    let running = server(client, McpOptions::default())
        .serve(rmcp::transport::stdio())
        .await
        .context("starting the MCP session on stdio")?;
    running.waiting().await.context("serving MCP on stdio")?;
    Ok(())
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for KoboMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(
                Implementation::new(SERVER_NAME, env!("CARGO_PKG_VERSION")).with_title("kobo"),
            )
            .with_instructions(INSTRUCTIONS)
    }
}
