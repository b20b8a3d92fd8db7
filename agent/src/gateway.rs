//! The agent's side of the gateway relay: a leased gateway call is posted to
//! the backend, and its answer uploaded to the coordinator chunk by chunk as
//! it arrives (`POST /v1/agent/jobs/{id}/stream`), over the agent's own
//! connection: the coordinator never dials an agent.
//!
//! The upload's body is fed through a small bounded channel, so a slow
//! client slows the backend reads (backpressure) and nothing is buffered
//! whole. The body ends cleanly only after the backend's answer ended
//! properly (`[DONE]`, `done: true`, a whole JSON document); a backend
//! failure, or the relay being dropped (job cancelled, lease revoked, agent
//! shutting down), ends it with an error, so the coordinator never mistakes
//! a cut answer for a complete one.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use kobo_protocol::{GatewayCall, JobId, LlmOutput, StreamQuery};
use tokio::sync::mpsc;

use crate::coordinator::{CallError, CoordinatorClient, StreamAnswer};
use crate::llm::{GatewayReply, LlmClient, LlmError, ReplyPiece};

/// Chunks queued between the backend's answer and the upload: enough to
/// absorb a burst of tokens, few enough that a stalled upload soon stops
/// the backend reads.
const UPLOAD_QUEUE_CHUNKS: usize = 16;

/// How long the coordinator's answer is awaited once the upload's body was
/// closed on its side: it has answered, or is about to.
const ANSWER_AFTER_CLOSE_WAIT: Duration = Duration::from_secs(10);

/// The job an upload belongs to.
#[derive(Debug, Clone, Copy)]
pub struct StreamTarget<'a> {
    pub job_id: JobId,
    pub node_id: &'a str,
    pub lease_token: i64,
}

/// How a relayed gateway call ended, short of an error to report.
#[derive(Debug, Clone, PartialEq)]
pub enum Relayed {
    /// The coordinator took the whole answer: report success with this.
    Done(LlmOutput),
    /// The coordinator stopped the upload: the client went away (the job is
    /// cancelled) or the lease is no longer ours. Nothing is to be reported.
    Dropped(String),
}

/// Runs one gateway call: posts it to the backend and uploads the answer
/// as it streams. An error is the job's failure, to be reported like a
/// normal call's (a backend that refused or failed, a cut stream, an upload
/// the coordinator did not take). Cancel-safe: dropping the future aborts
/// the backend call and breaks the upload. The client's request timeout
/// bounds the whole relay, as it bounds a normal call.
pub async fn relay(
    llm: &LlmClient,
    coordinator: &CoordinatorClient,
    target: StreamTarget<'_>,
    call: &GatewayCall,
) -> Result<Relayed, LlmError> {
    let relayed = llm
        .limited(async {
            let reply = llm.gateway_open(call).await?;
            upload(coordinator, target, reply).await
        })
        .await?;
    Ok(match (relayed, &call.resume) {
        // A continuation's answer is the whole answer's rest: the job's
        // output is all of it.
        (Relayed::Done(mut output), Some(resume)) => {
            output.text.insert_str(0, &resume.text);
            Relayed::Done(output)
        }
        (relayed, _) => relayed,
    })
}

/// What the upload's body is fed with.
enum Piece {
    Data(Bytes),
    /// The answer is complete: end the body cleanly.
    End,
    /// The answer failed: break the body.
    Fail(String),
}

/// How forwarding the backend's answer into the upload ended.
enum Forwarded {
    Complete(LlmOutput),
    Failed(LlmError),
    /// The upload's body was dropped: the coordinator answered, or the
    /// connection to it broke.
    UploadClosed,
}

async fn upload(
    coordinator: &CoordinatorClient,
    target: StreamTarget<'_>,
    mut reply: GatewayReply,
) -> Result<Relayed, LlmError> {
    let (sender, receiver) = mpsc::channel(UPLOAD_QUEUE_CHUNKS);
    let query = StreamQuery {
        node_id: target.node_id.to_owned(),
        lease_token: target.lease_token,
    };
    let content_type = reply.content_type().to_owned();
    let answer = coordinator.stream(
        target.job_id,
        &query,
        &content_type,
        reqwest::Body::wrap_stream(upload_body(receiver)),
    );
    tokio::pin!(answer);
    let forwarded = {
        let forward = forward(&mut reply, sender);
        tokio::pin!(forward);
        tokio::select! {
            // Forwarding first: once the answer is complete, its result is
            // taken before the coordinator's (then certain) 204.
            biased;
            forwarded = &mut forward => forwarded,
            // The coordinator answered while the backend was still
            // answering: returning drops the reply at once, which closes
            // the backend's connection.
            answer = &mut answer => return early_answer(target.job_id, answer),
        }
    };
    drop(reply);
    match forwarded {
        Forwarded::Complete(output) => match answer.await {
            Ok(StreamAnswer::Taken) => Ok(Relayed::Done(output)),
            Ok(StreamAnswer::Gone(message)) => Ok(Relayed::Dropped(message)),
            Err(err) => refused(target.job_id, err),
        },
        // The body breaks with the failure; the coordinator's answer to a
        // broken upload tells nothing more.
        Forwarded::Failed(err) => Err(err),
        Forwarded::UploadClosed => {
            match tokio::time::timeout(ANSWER_AFTER_CLOSE_WAIT, answer).await {
                Ok(answer) => early_answer(target.job_id, answer),
                Err(_) => Err(LlmError::retryable(format!(
                    "the coordinator stopped reading the upload of job {} without answering",
                    target.job_id
                ))),
            }
        }
    }
}

/// Passes the backend's answer on, piece by piece, until it ends, fails, or
/// the upload stops taking it.
async fn forward(reply: &mut GatewayReply, sender: mpsc::Sender<Piece>) -> Forwarded {
    loop {
        match reply.next_piece().await {
            Ok(ReplyPiece::Data(bytes)) => {
                if sender.send(Piece::Data(bytes)).await.is_err() {
                    return Forwarded::UploadClosed;
                }
            }
            Ok(ReplyPiece::End { last, output }) => {
                if let Some(bytes) = last
                    && sender.send(Piece::Data(bytes)).await.is_err()
                {
                    return Forwarded::UploadClosed;
                }
                if sender.send(Piece::End).await.is_err() {
                    return Forwarded::UploadClosed;
                }
                return Forwarded::Complete(output);
            }
            Err(err) => {
                // Ignored when the upload is gone already: it broke anyway.
                let _ = sender.send(Piece::Fail(err.message.clone())).await;
                return Forwarded::Failed(err);
            }
        }
    }
}

/// The upload's body: the pieces fed to it, ending cleanly only at
/// [`Piece::End`]; a failure, or the feeding side gone without an end
/// (the relay was dropped), breaks it.
fn upload_body(
    receiver: mpsc::Receiver<Piece>,
) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
    futures_util::stream::unfold(Some(receiver), |receiver| async move {
        let mut receiver = receiver?;
        match receiver.recv().await {
            Some(Piece::Data(bytes)) => Some((Ok(bytes), Some(receiver))),
            Some(Piece::End) => None,
            Some(Piece::Fail(reason)) => Some((Err(io::Error::other(reason)), None)),
            None => Some((
                Err(io::Error::other("the agent abandoned the upload")),
                None,
            )),
        }
    })
}

/// The coordinator answered before the whole answer was uploaded.
fn early_answer(
    job_id: JobId,
    answer: Result<StreamAnswer, CallError>,
) -> Result<Relayed, LlmError> {
    match answer {
        Ok(StreamAnswer::Gone(message)) => Ok(Relayed::Dropped(message)),
        Ok(StreamAnswer::Taken) => Err(LlmError::retryable(format!(
            "the coordinator ended the upload of job {job_id} before the answer ended"
        ))),
        Err(err) => refused(job_id, err),
    }
}

/// The coordinator did not take the upload: a stale lease drops the job;
/// anything else fails it, retryable unless the upload itself was refused
/// as bad.
fn refused(job_id: JobId, err: CallError) -> Result<Relayed, LlmError> {
    let message = format!("uploading the answer of job {job_id}: {err}");
    match err {
        CallError::Stale(message) => Ok(Relayed::Dropped(message)),
        CallError::Rejected(_) => Err(LlmError::permanent(message)),
        CallError::Unavailable(_) | CallError::Unregistered(_) | CallError::Refused(_) => {
            Err(LlmError::retryable(message))
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    /// The body fed with `pieces`, then with its feeding side dropped.
    async fn collect(pieces: Vec<Piece>) -> Vec<Result<Bytes, String>> {
        let (sender, receiver) = mpsc::channel(pieces.len().max(1));
        for piece in pieces {
            assert!(sender.send(piece).await.is_ok());
        }
        drop(sender);
        upload_body(receiver)
            .map(|item| item.map_err(|e| e.to_string()))
            .collect()
            .await
    }

    #[tokio::test]
    async fn the_body_ends_cleanly_only_at_its_end() {
        let a = Bytes::from_static(b"a");
        let items = collect(vec![Piece::Data(a.clone()), Piece::End]).await;
        assert_eq!(items, vec![Ok(a.clone())]);

        let items = collect(vec![Piece::Data(a.clone()), Piece::Fail("cut".into())]).await;
        assert_eq!(items, vec![Ok(a.clone()), Err("cut".into())]);

        let items = collect(vec![Piece::Data(a.clone())]).await;
        assert_eq!(
            items,
            vec![Ok(a), Err("the agent abandoned the upload".into())]
        );
    }

    #[test]
    fn a_stale_lease_drops_the_job_and_other_refusals_fail_it() {
        assert_eq!(
            refused(1, CallError::Stale("409".into())).expect("dropped"),
            Relayed::Dropped("409".into())
        );
        assert!(
            refused(1, CallError::Unavailable("down".into()))
                .expect_err("failed")
                .retryable
        );
        assert!(
            !refused(1, CallError::Rejected("400".into()))
                .expect_err("failed")
                .retryable
        );
        assert_eq!(
            early_answer(1, Ok(StreamAnswer::Gone("gone".into()))).expect("dropped"),
            Relayed::Dropped("gone".into())
        );
        assert!(
            early_answer(1, Ok(StreamAnswer::Taken))
                .expect_err("early")
                .retryable
        );
    }
}
