//! The relay of streamed answers: an agent's upload of its backend's answer
//! (`POST /v1/agent/jobs/{id}/stream`) meets the gateway request waiting for
//! it here, in memory. Nothing in a stream touches the database: the final
//! text and usage are stored once, by the agent's completion report.
//!
//! Whichever side comes first makes the job's entry; the channel between them
//! is bounded, so a slow client slows the agent's upload (backpressure), and
//! a client that goes away cancels the entry, which ends the upload at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use kobo_protocol::resume::{self, Resume};
use kobo_protocol::{GatewayApi, GatewayCall, JobId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Frames buffered between an upload and its client: enough to absorb a
/// burst, small enough that a stalled client stops the agent's reads.
pub const STREAM_BUFFER: usize = 64;

/// What the client side of a relay receives; each frame names the attempt
/// (lease) whose upload sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// An agent began answering attempt `lease_token` on `node_id`.
    Start { node_id: String, lease_token: i64 },
    /// Bytes of the answer, in the client's API framing.
    Data { lease_token: i64, bytes: Bytes },
    /// The upload ended properly: the backend's answer is complete.
    End { lease_token: i64 },
    /// The upload broke off (agent or backend died mid-answer).
    Broken { lease_token: i64, reason: String },
}

impl Frame {
    /// The attempt that sent the frame.
    pub fn lease_token(&self) -> i64 {
        match self {
            Frame::Start { lease_token, .. }
            | Frame::Data { lease_token, .. }
            | Frame::End { lease_token }
            | Frame::Broken { lease_token, .. } => *lease_token,
        }
    }
}

/// What a streamed answer's attempts sent the client, kept so that an
/// attempt that breaks can be continued by the next one from exactly there.
#[derive(Debug, Default)]
struct Log {
    /// The attempt whose frames reach the client: the newest lease. Frames
    /// of any other are stale and dropped.
    attempt: Option<i64>,
    /// The bytes of the current attempt the client was sent.
    bytes: Vec<u8>,
    /// What earlier attempts sent.
    carried: Resume,
    /// Why the answer cannot be continued, once known.
    blocker: Option<String>,
}

impl Log {
    /// Folds the current attempt's bytes into what was carried.
    fn fold(&mut self, api: GatewayApi) {
        if self.bytes.is_empty() {
            return;
        }
        let said = resume::said(api, &self.bytes);
        self.bytes.clear();
        self.carried.text.push_str(&said.resume.text);
        self.carried.tokens += said.resume.tokens;
        if let Some(blocker) = said.blocker {
            self.blocker.get_or_insert(blocker);
        }
    }
}

struct Entry {
    sender: mpsc::Sender<Frame>,
    /// Taken by the gateway request waiting for this job.
    receiver: Option<mpsc::Receiver<Frame>>,
    /// Cancelled when the client went away.
    gone: CancellationToken,
    log: Arc<Mutex<Log>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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
    log: Arc<Mutex<Log>>,
    call: GatewayCall,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.gone.cancel();
        self.streams.lock().remove(&self.job_id);
    }
}

impl Listener {
    /// Whether a frame comes from the attempt whose answer reaches the
    /// client (a stale attempt's frames are to be dropped); a current
    /// attempt's streamed bytes are kept, in the same step, as sent to the
    /// client, to continue from should the attempt break. The first
    /// attempt seen is taken as current when no lease named one.
    pub fn admit(&self, frame: &Frame) -> bool {
        let mut log = lock(&self.log);
        let token = frame.lease_token();
        if *log.attempt.get_or_insert(token) != token {
            return false;
        }
        if let Frame::Data { bytes, .. } = frame
            && self.call.stream
        {
            log.bytes.extend_from_slice(bytes);
        }
        true
    }

    /// Whether the answer can go on elsewhere from what was sent so far;
    /// else why not.
    pub fn continuable(&self) -> Result<(), String> {
        let mut log = lock(&self.log);
        log.fold(self.call.api);
        if let Some(blocker) = &log.blocker {
            return Err(blocker.clone());
        }
        self.call.continuable()
    }

    /// The characters of text sent so far.
    pub fn sent_chars(&self) -> usize {
        let mut log = lock(&self.log);
        log.fold(self.call.api);
        log.carried.text.chars().count()
    }
}

impl Streams {
    fn lock(&self) -> MutexGuard<'_, HashMap<JobId, Entry>> {
        lock(&self.entries)
    }

    fn entry(entries: &mut HashMap<JobId, Entry>, job_id: JobId) -> &mut Entry {
        entries.entry(job_id).or_insert_with(|| {
            let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
            Entry {
                sender,
                receiver: Some(receiver),
                gone: CancellationToken::new(),
                log: Arc::default(),
            }
        })
    }

    /// The client side of `job_id`'s relay, a gateway `call`: once per job
    /// (a second call gets `None`).
    pub fn listen(&self, job_id: JobId, call: GatewayCall) -> Option<Listener> {
        let mut entries = self.lock();
        let entry = Self::entry(&mut entries, job_id);
        let receiver = entry.receiver.take()?;
        Some(Listener {
            receiver,
            job_id,
            streams: self.clone(),
            gone: entry.gone.clone(),
            log: entry.log.clone(),
            call,
        })
    }

    /// A new attempt of `job_id`, streaming `call`, was leased as
    /// `lease_token`: from now on only its frames reach the client, and it
    /// continues from what earlier attempts sent, if they sent anything
    /// and the answer can be continued. (When it cannot, the client's
    /// relay ends the stream with an error when this attempt starts.)
    pub fn begin_attempt(
        &self,
        job_id: JobId,
        lease_token: i64,
        call: &GatewayCall,
    ) -> Option<Resume> {
        let mut entries = self.lock();
        let entry = Self::entry(&mut entries, job_id);
        let mut log = lock(&entry.log);
        log.fold(call.api);
        log.attempt = Some(lease_token);
        let resumable =
            !log.carried.text.is_empty() && log.blocker.is_none() && call.continuable().is_ok();
        resumable.then(|| log.carried.clone())
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
    use serde_json::json;

    use super::*;

    fn chat() -> GatewayCall {
        GatewayCall {
            api: GatewayApi::OpenAiChat,
            body: json!({"model": "m", "messages": [{"role": "user", "content": "q"}]}),
            stream: true,
            resume: None,
        }
    }

    fn data(lease_token: i64, text: &str) -> Frame {
        let event = json!({"choices": [{"index": 0, "delta": {"content": text}}]});
        Frame::Data {
            lease_token,
            bytes: Bytes::from(format!("data: {event}\n\n")),
        }
    }

    #[tokio::test]
    async fn an_upload_before_its_listener_is_not_lost_and_a_gone_client_stops_it() {
        let streams = Streams::default();
        let upload = streams.upload(7).expect("upload");
        let early = Frame::Data {
            lease_token: 1,
            bytes: Bytes::from_static(b"early"),
        };
        upload.sender.send(early.clone()).await.expect("buffered");
        let mut listener = streams.listen(7, chat()).expect("listen");
        assert!(streams.listen(7, chat()).is_none(), "one listener per job");
        assert_eq!(listener.receiver.recv().await, Some(early));
        drop(listener);
        assert!(upload.gone.is_cancelled());
        assert!(streams.is_empty());
        let late = streams.upload(7).expect("a new entry");
        drop(late);
    }

    #[test]
    fn the_next_attempt_continues_from_what_the_client_was_sent_and_stale_frames_are_dropped() {
        let streams = Streams::default();
        let call = chat();
        assert_eq!(streams.begin_attempt(9, 1, &call), None, "nothing sent yet");
        let listener = streams.listen(9, call.clone()).expect("listen");
        assert!(listener.admit(&data(1, "Hello")));
        assert!(listener.admit(&data(1, " world")));
        // Attempt 1 broke; attempt 2 was leased before its last frame was
        // relayed: that frame never reaches the client, and attempt 2 goes
        // on from what did.
        let resume = streams.begin_attempt(9, 2, &call).expect("continuable");
        assert_eq!(resume.text, "Hello world");
        assert_eq!(resume.tokens, 2);
        assert!(!listener.admit(&data(1, " late")), "stale attempt");
        assert!(listener.admit(&data(2, "!")));
        assert_eq!(listener.sent_chars(), "Hello world!".len());
        assert_eq!(listener.continuable(), Ok(()));
        let tools = Frame::Data {
            lease_token: 2,
            bytes: Bytes::from_static(
                b"data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{}]}}]}\n\n",
            ),
        };
        assert!(listener.admit(&tools));
        assert_eq!(
            listener.continuable(),
            Err("tool calls were streamed".into())
        );
        assert_eq!(streams.begin_attempt(9, 3, &call), None, "blocked");
    }
}
