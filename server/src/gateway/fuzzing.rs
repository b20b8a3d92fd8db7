//! The gateway's request parsing without a server, for kobo-fuzz: the body
//! checked as the route checks it, then the job it becomes with the
//! routing headers.

use axum::http::HeaderMap;
use kobo_protocol::{GatewayApi, SubmitJob};
use kobo_queue::config::GatewayConfig;

use super::errors::GatewayError;
use super::{fields, hints};

/// The job a request of `api` with `headers` and `body` becomes, or the
/// error its client gets; the model is mapped to a kind by `config`.
pub fn job(
    api: GatewayApi,
    headers: &HeaderMap,
    body: &[u8],
    config: &GatewayConfig,
) -> Result<SubmitJob, GatewayError> {
    let checked = fields::check(api, body)?;
    hints::job_of(headers, &checked.model, &checked.call.body, config, api)
}
