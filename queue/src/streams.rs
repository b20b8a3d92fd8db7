//! The relay of streamed answers: an agent's upload of its backend's answer
//! (`POST /v1/agent/jobs/{id}/stream`) meets the gateway request waiting for
//! it here, in memory. Nothing in a stream touches the database: the final
//! text and usage are stored once, by the agent's completion report.
//!
//! Whichever side comes first makes the job's entry; the channel between them
//! is bounded, so a slow client slows the agent's upload (backpressure), and
//! a client that goes away cancels the entry, which ends the upload at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use kobo_protocol::JobId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Frames buffered between an upload and its client: enough to absorb a
/// burst, small enough that a stalled client stops the agent's reads.
pub const STREAM_BUFFER: usize = 64;

/// What the client side of a relay receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// An agent began answering attempt `lease_token` on `node_id`.
    Start { node_id: String, lease_token: i64 },
    /// Bytes of the answer, in the client's API framing.
    Data(Bytes),
    /// The upload ended properly: the backend's answer is complete.
    End,
    /// The upload broke off (agent or backend died mid-answer).
    Broken { reason: String },
}

struct Entry {
    sender: mpsc::Sender<Frame>,
    /// Taken by the gateway request waiting for this job.
    receiver: Option<mpsc::Receiver<Frame>>,
    /// Cancelled when the client went away.
    gone: CancellationToken,
}

/// The relays in flight, by job; cheap to clone.
#[derive(Clone, Default)]
pub struct Streams {
    entries: Arc<Mutex<HashMap<JobId, Entry>>>,
}

/// The upload side of one job's relay.
pub struct Upload {
    pub sender: mpsc::Sender<Frame>,
    /// Cancelled when the client went away: stop uploading.
    pub gone: CancellationToken,
}

/// The client side of one job's relay; dropping it ends the relay and
/// cancels uploads in progress.
pub struct Listener {
    pub receiver: mpsc::Receiver<Frame>,
    job_id: JobId,
    streams: Streams,
    gone: CancellationToken,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.gone.cancel();
        self.streams.lock().remove(&self.job_id);
    }
}

impl Streams {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn entry(entries: &mut HashMap<JobId, Entry>, job_id: JobId) -> &mut Entry {
        entries.entry(job_id).or_insert_with(|| {
            let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
            Entry {
                sender,
                receiver: Some(receiver),
                gone: CancellationToken::new(),
            }
        })
    }

    /// The client side of `job_id`'s relay: once per job (a second call
    /// gets `None`).
    pub fn listen(&self, job_id: JobId) -> Option<Listener> {
        let mut entries = self.lock();
        let entry = Self::entry(&mut entries, job_id);
        let receiver = entry.receiver.take()?;
        Some(Listener {
            receiver,
            job_id,
            streams: self.clone(),
            gone: entry.gone.clone(),
        })
    }

    /// The upload side of `job_id`'s relay. `None` once the client is gone.
    pub fn upload(&self, job_id: JobId) -> Option<Upload> {
        let mut entries = self.lock();
        let entry = Self::entry(&mut entries, job_id);
        if entry.gone.is_cancelled() {
            return None;
        }
        Some(Upload {
            sender: entry.sender.clone(),
            gone: entry.gone.clone(),
        })
    }

    /// The client of `job_id` went away before (or without) listening: ends
    /// any upload in progress and forgets the relay.
    pub fn abandon(&self, job_id: JobId) {
        if let Some(entry) = self.lock().remove(&job_id) {
            entry.gone.cancel();
        }
    }

    /// Relays in flight (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_upload_before_its_listener_is_not_lost_and_a_gone_client_stops_it() {
        let streams = Streams::default();
        let upload = streams.upload(7).expect("upload");
        upload
            .sender
            .send(Frame::Data(Bytes::from_static(b"early")))
            .await
            .expect("buffered");
        let mut listener = streams.listen(7).expect("listen");
        assert!(streams.listen(7).is_none(), "one listener per job");
        assert_eq!(
            listener.receiver.recv().await,
            Some(Frame::Data(Bytes::from_static(b"early")))
        );
        drop(listener);
        assert!(upload.gone.is_cancelled());
        assert!(streams.is_empty());
        let late = streams.upload(7).expect("a new entry");
        drop(late);
    }
}
