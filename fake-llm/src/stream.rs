//! A streamed reply: the frames it sends in order, each rendered in its
//! API's wire format when sent, paced by the token rate and cut per the
//! behavior.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use tokio_util::sync::CancellationToken;

use crate::behavior::{FakeBehavior, FakeFailure};
use crate::generate::Api;
use crate::reply::Reply;
use crate::server::{Reported, Shared};

/// Before aborting a cut stream, wait this long so the chunks before the
/// cut reach the client.
const CUT_FLUSH_PAUSE: Duration = Duration::from_millis(20);

/// One chunk of a streamed reply, rendered by [`Reply::render`].
#[derive(Debug)]
pub(crate) enum Frame {
    /// An Ollama line, or an OpenAI content chunk (a piece of the
    /// arguments, for a tool call).
    Piece(String),
    /// Ollama's line with the whole tool call.
    Call,
    /// Ollama's `done` line, or OpenAI's `finish_reason` chunk.
    Finish,
    /// OpenAI's `choices: []` chunk with the usage.
    Usage,
    /// OpenAI's opening chat chunk with the assistant role (and the
    /// tool call's id and name).
    Role,
    Error(String, StatusCode),
    /// OpenAI's `[DONE]`.
    Done,
}

impl Reply {
    /// What a stream sends, in order.
    pub(crate) fn frames(&self, error: Option<&FakeFailure>) -> Vec<Frame> {
        let ollama = self.api.is_ollama();
        let mut frames = Vec::new();
        // Legacy completions have no role chunk.
        if self.api == Api::OpenAi {
            frames.push(Frame::Role);
        }
        if let Some(failure) = error {
            // "A first chunk": the role chunk, else the first piece.
            if self.api != Api::OpenAi && self.call.is_none() {
                frames.extend(self.tokens.first().cloned().map(Frame::Piece));
            }
            frames.push(Frame::Error(failure.text(), failure.http_status()));
            if !ollama {
                // vLLM ends an errored stream properly.
                frames.push(Frame::Done);
            }
            return frames;
        }
        if ollama && self.call.is_some() {
            // Ollama sends a tool call whole, in one line.
            frames.push(Frame::Call);
        } else {
            frames.extend(self.tokens.iter().cloned().map(Frame::Piece));
        }
        frames.push(Frame::Finish);
        if !ollama {
            if self.include_usage {
                frames.push(Frame::Usage);
            }
            frames.push(Frame::Done);
        }
        frames
    }

    /// Whether `frame` carries this reply's usage: Ollama's `done` line,
    /// OpenAI's usage chunk.
    fn reports_usage(&self, frame: &Frame) -> bool {
        match frame {
            Frame::Finish => self.api.is_ollama(),
            Frame::Usage => !self.api.is_ollama(),
            _ => false,
        }
    }

    /// One frame on the wire: an NDJSON line or an SSE event.
    fn render(&self, frame: &Frame) -> Bytes {
        if self.api.is_ollama() {
            self.ollama_line(frame)
        } else {
            self.openai_event(frame)
        }
    }
}

/// The frames, paced by the token rate and cut per the behavior; ends
/// (aborting the connection) when the fake shuts down.
pub(crate) fn stream_body(
    shared: &Shared,
    reply: Reply,
    frames: Vec<Frame>,
    behavior: &FakeBehavior,
) -> Body {
    struct Pace {
        reply: Reply,
        frames: VecDeque<Frame>,
        sent: u32,
        gap: Option<Duration>,
        cut: Option<(u32, bool)>,
        shutdown: CancellationToken,
        reported: Arc<Reported>,
        over: bool,
    }
    let gap = (behavior.tokens_per_second > 0.0 && behavior.tokens_per_second.is_finite())
        .then(|| Duration::from_secs_f64(1.0 / behavior.tokens_per_second));
    let pace = Pace {
        reply,
        frames: frames.into(),
        sent: 0,
        gap,
        cut: behavior.cut_after_chunks.map(|n| (n, behavior.cut_clean)),
        shutdown: shared.shutdown.clone(),
        reported: shared.reported.clone(),
        over: false,
    };
    let stream = futures_util::stream::unfold(pace, |mut pace| async move {
        if pace.over {
            return None;
        }
        let cut_error = || io::Error::new(io::ErrorKind::ConnectionAborted, "fake: stream cut");
        if let Some((n, clean)) = pace.cut
            && pace.sent >= n
        {
            pace.over = true;
            if clean {
                return None;
            }
            // A pause lets the server flush what came before the cut, so
            // the client sees the first chunks and then a broken body.
            tokio::time::sleep(CUT_FLUSH_PAUSE).await;
            return Some((Err(cut_error()), pace));
        }
        let frame = pace.frames.pop_front()?;
        if let Some(gap) = pace.gap
            && pace.sent > 0
        {
            tokio::select! {
                () = tokio::time::sleep(gap) => {}
                () = pace.shutdown.cancelled() => {
                    pace.over = true;
                    return Some((Err(cut_error()), pace));
                }
            }
        }
        pace.sent += 1;
        if pace.reply.reports_usage(&frame) {
            let reply = &pace.reply;
            pace.reported
                .add(reply.prompt_tokens, reply.completion_tokens());
        }
        let bytes = pace.reply.render(&frame);
        Some((Ok::<_, io::Error>(bytes), pace))
    });
    Body::from_stream(stream)
}
