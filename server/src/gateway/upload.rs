//! `POST /v1/agent/jobs/{id}/stream?node_id=&lease_token=`: an agent sends its
//! backend's answer to a gateway job as the backend produces it, over a
//! connection the agent opened. Each chunk is handed to the waiting client
//! through the queue's relay, with backpressure; nothing is written to the
//! database per chunk. Answers: 204 when the whole answer was taken, 409 for
//! a stale lease, 410 (at once, mid-upload) when the client went away.

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use kobo_protocol::{JobId, StreamQuery};
use kobo_queue::access::Caller;
use kobo_queue::streams::Frame;

use crate::api::auth::ensure_node;
use crate::api::{ApiError, ApiPath, ApiQuery, AppState};

fn gone() -> Response {
    ApiError::new(
        StatusCode::GONE,
        "gone",
        "the client went away: stop the call",
    )
    .into_response()
}

pub(crate) async fn agent_stream(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(job_id): ApiPath<JobId>,
    ApiQuery(query): ApiQuery<StreamQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    kobo_protocol::validate::name("node_id", &query.node_id)?;
    if let Err(denied) = ensure_node(&state, &caller, &query.node_id).await {
        return Ok(denied);
    }
    state
        .queue
        .check_lease(&query.node_id, job_id, query.lease_token)
        .await?;
    let Some(upload) = state.queue.streams().upload(job_id) else {
        return Ok(gone());
    };
    let start = Frame::Start {
        node_id: query.node_id.clone(),
        lease_token: query.lease_token,
    };
    if upload.sender.send(start).await.is_err() {
        return Ok(gone());
    }
    let lease_token = query.lease_token;
    let mut chunks = body.into_data_stream();
    loop {
        let chunk = tokio::select! {
            () = upload.gone.cancelled() => return Ok(gone()),
            chunk = chunks.next() => chunk,
        };
        let frame = match chunk {
            Some(Ok(bytes)) if bytes.is_empty() => continue,
            Some(Ok(bytes)) => Frame::Data { lease_token, bytes },
            Some(Err(err)) => {
                let reason = format!("the agent's upload broke off: {err}");
                let _ = upload
                    .sender
                    .send(Frame::Broken {
                        lease_token,
                        reason,
                    })
                    .await;
                return Ok(StatusCode::BAD_REQUEST.into_response());
            }
            None => {
                let _ = upload.sender.send(Frame::End { lease_token }).await;
                return Ok(StatusCode::NO_CONTENT.into_response());
            }
        };
        tokio::select! {
            () = upload.gone.cancelled() => return Ok(gone()),
            sent = upload.sender.send(frame) => if sent.is_err() { return Ok(gone()) },
        }
    }
}
