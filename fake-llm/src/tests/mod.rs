//! HTTP-level tests of the fake, through a minimal HTTP/1.1 client over a
//! TCP socket (the crate has no HTTP client dependency), with helpers that
//! read JSON, SSE and NDJSON bodies.

mod aborts;
mod completions;
mod embeddings;
mod models;
mod reported;
mod shapes;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{FakeBehavior, FakeLlm, start};

/// The first default model.
pub(super) const MODEL: &str = crate::DEFAULT_MODELS[0];

/// A fake with `behavior`.
pub(super) async fn fake(behavior: FakeBehavior) -> FakeLlm {
    start(behavior).await.expect("fake starts")
}

/// A whole HTTP answer.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) status: u16,
    /// `name: value` lines, names lowercased.
    head: Vec<(String, String)>,
    pub(super) body: String,
}

impl Answer {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.head
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The `data:` payloads of an SSE body; `[DONE]` as that string.
    pub(super) fn sse(&self) -> Vec<Value> {
        assert!(self.body.ends_with("\n\n"), "events end with a blank line");
        self.body
            .split("\n\n")
            .filter(|event| !event.is_empty())
            .map(|event| {
                let data = event
                    .strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("not an SSE data event: {event:?}"));
                if data == "[DONE]" {
                    Value::String(data.to_owned())
                } else {
                    serde_json::from_str(data).expect("event data is JSON")
                }
            })
            .collect()
    }

    /// The lines of an NDJSON body.
    pub(super) fn ndjson(&self) -> Vec<Value> {
        assert!(self.body.ends_with('\n'), "lines end with a newline");
        self.body
            .lines()
            .map(|line| serde_json::from_str(line).expect("line is JSON"))
            .collect()
    }
}

/// Opens a connection and sends a request on it (`Connection: close`).
pub(super) async fn send(
    fake: &FakeLlm,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> TcpStream {
    let mut socket = TcpStream::connect(fake.addr()).await.expect("connects");
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        fake.addr(),
        body.len()
    );
    socket
        .write_all(request.as_bytes())
        .await
        .expect("request sent");
    socket
}

/// Sends a request and reads the whole answer.
pub(super) async fn call(fake: &FakeLlm, method: &str, path: &str, body: Option<&Value>) -> Answer {
    let mut socket = send(fake, method, path, body).await;
    let mut raw = Vec::new();
    socket.read_to_end(&mut raw).await.expect("answer read");
    parse(&raw)
}

pub(super) async fn post(fake: &FakeLlm, path: &str, body: Value) -> Answer {
    call(fake, "POST", path, Some(&body)).await
}

pub(super) async fn get(fake: &FakeLlm, path: &str) -> Answer {
    call(fake, "GET", path, None).await
}

fn parse(raw: &[u8]) -> Answer {
    let text = String::from_utf8(raw.to_vec()).expect("UTF-8 answer");
    let (head, rest) = text.split_once("\r\n\r\n").expect("a head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let head: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = head
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Answer { status, head, body }
}

/// The data of a chunked body, which must end with its last chunk.
fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
        if size == 0 {
            return body;
        }
        body.push_str(&after[..size]);
        rest = after[size..]
            .strip_prefix("\r\n")
            .expect("CRLF after a chunk");
    }
}

/// The texts of an OpenAI chat stream's content deltas, concatenated.
pub(super) fn chat_text(events: &[Value]) -> String {
    events
        .iter()
        .filter_map(|e| {
            e.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
        })
        .collect()
}
