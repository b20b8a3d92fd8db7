//! Result reports, coalesced: results that finish while an earlier report is
//! on the wire go to the coordinator together in one
//! `POST /v1/agent/complete`. A lone result is sent at once; a busy node
//! sends one call for many results instead of one call each.

use std::collections::HashMap;

use kobo_protocol::{
    CompleteBatchRequest, CompleteRequest, CompleteResponse, JobId, JobReport, Outcome,
    ReportAnswer,
};
use tokio::sync::{mpsc, oneshot};

use crate::coordinator::{CallError, CoordinatorClient};

/// Most results in one call.
const MAX_BATCH: usize = 64;
/// A call stops taking results past about this many bytes of them (the
/// coordinator takes bodies up to 16 MiB).
const MAX_BATCH_BYTES: usize = 4 << 20;
/// Bytes a report costs besides its text, for the estimate above.
const REPORT_OVERHEAD: usize = 256;

/// The answer a waiting job task gets for its result.
type Reply = oneshot::Sender<Result<CompleteResponse, CallError>>;

struct Pending {
    report: JobReport,
    reply: Reply,
}

/// Sends results for one node; cheap to clone. Dropping the last clone
/// stops its task once the queued results are sent.
#[derive(Clone)]
pub struct Reporter {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Reporter {
    /// Starts the reporting task of `node_id` (on the current runtime).
    pub fn spawn(client: CoordinatorClient, node_id: String) -> Reporter {
        let (queue, pending) = mpsc::unbounded_channel();
        tokio::spawn(run(client, node_id, pending));
        Reporter { queue }
    }

    /// Reports one result, alongside whatever else is ready to go, and
    /// returns its answer as [`CoordinatorClient::complete`] would.
    pub async fn complete(
        &self,
        job_id: JobId,
        req: &CompleteRequest,
    ) -> Result<CompleteResponse, CallError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            report: JobReport {
                job_id,
                lease_token: req.lease_token,
                outcome: req.outcome.clone(),
            },
            reply,
        };
        let stopped = || CallError::Unavailable("the reporting task has stopped".into());
        self.queue.send(pending).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn size(report: &JobReport) -> usize {
    REPORT_OVERHEAD
        + match &report.outcome {
            Outcome::Succeeded { output } => output.text.len(),
            Outcome::Failed { error, .. } => error.len(),
        }
}

async fn run(
    client: CoordinatorClient,
    node_id: String,
    mut queue: mpsc::UnboundedReceiver<Pending>,
) {
    while let Some(first) = queue.recv().await {
        let mut bytes = size(&first.report);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match queue.try_recv() {
                Ok(next) => {
                    bytes += size(&next.report);
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        send(&client, &node_id, batch).await;
    }
}

async fn send(client: &CoordinatorClient, node_id: &str, batch: Vec<Pending>) {
    let (reports, replies): (Vec<JobReport>, Vec<Reply>) =
        batch.into_iter().map(|p| (p.report, p.reply)).unzip();
    let req = CompleteBatchRequest {
        node_id: node_id.to_string(),
        reports,
    };
    match client.complete_batch(&req).await {
        Ok(answer) => {
            let mut answers: HashMap<JobId, ReportAnswer> =
                answer.results.into_iter().map(|a| (a.job_id, a)).collect();
            for (report, reply) in req.reports.iter().zip(replies) {
                let result = match answers.remove(&report.job_id) {
                    Some(answer) => answer_of(answer),
                    None => Err(CallError::Rejected(format!(
                        "the coordinator's answer left out job {}",
                        report.job_id
                    ))),
                };
                let _ = reply.send(result);
            }
        }
        // One bad result refuses the whole call: send each on its own, so
        // only the one at fault is refused.
        Err(CallError::Rejected(_)) if req.reports.len() > 1 => {
            for (report, reply) in req.reports.into_iter().zip(replies) {
                let single = CompleteRequest {
                    node_id: node_id.to_string(),
                    lease_token: report.lease_token,
                    outcome: report.outcome,
                };
                let _ = reply.send(client.complete(report.job_id, &single).await);
            }
        }
        Err(err) => {
            for reply in replies {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
}

fn answer_of(answer: ReportAnswer) -> Result<CompleteResponse, CallError> {
    let job_id = answer.job_id;
    if let Some(error) = answer.error {
        let message = format!("job {job_id}: {}: {}", error.code, error.message);
        return Err(match error.code.as_str() {
            "stale_lease" | "not_found" => CallError::Stale(message),
            _ => CallError::Rejected(message),
        });
    }
    let state = answer.state.ok_or_else(|| {
        CallError::Rejected(format!(
            "the coordinator's answer for job {job_id} has neither state nor error"
        ))
    })?;
    Ok(CompleteResponse {
        job_id,
        state,
        duplicate: answer.duplicate,
    })
}
