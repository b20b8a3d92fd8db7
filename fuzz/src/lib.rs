//! Fuzz targets for kobo's decoders: each takes arbitrary bytes and must not panic.
use kobo_protocol as p;
use serde::{Serialize, de::DeserializeOwned};
use std::path::Path;

/// One decoder under test: a name (also its regressions folder) and its check.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    pub seeds: &'static [&'static str],
}

/// Decodes `bytes` as `T`, runs `check` on what decodes, and insists that
/// re-encoding is stable: encode(decode(encode(x))) == encode(x).
fn json<T: Serialize + DeserializeOwned>(bytes: &[u8], check: impl Fn(&T)) {
    let Ok(value) = serde_json::from_slice::<T>(bytes) else {
        return;
    };
    check(&value);
    let once = serde_json::to_value(&value).expect("a decoded value encodes");
    let again: T = serde_json::from_value(once.clone()).expect("an encoded value decodes");
    assert_eq!(
        once,
        serde_json::to_value(&again).expect("encodes"),
        "round trip changed the value"
    );
}

fn inventory(bytes: &[u8]) {
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = kobo_inventory::parse(Path::new("fuzz.yaml"), text);
    }
}

/// The agent's Ollama NDJSON framing: lines must not depend on where the chunks split.
fn ndjson(bytes: &[u8]) {
    let feed = |parts: &[&[u8]]| {
        let mut d = p::framing::LineDecoder::new(4096);
        let mut lines = Vec::new();
        for part in parts {
            lines.extend(d.push(part).ok()?);
        }
        lines.extend(d.finish());
        Some(lines)
    };
    let at = bytes.first().map_or(0, |b| *b as usize % (bytes.len() + 1));
    let (whole, split) = (feed(&[bytes]), feed(&[&bytes[..at], &bytes[at..]]));
    if let (Some(w), Some(s)) = (whole, split) {
        assert_eq!(w, s, "lines depend on the chunk split at {at}");
    }
}

/// The agent's OpenAI SSE framing: events must not depend on where the chunks split.
fn sse(bytes: &[u8]) {
    let feed = |parts: &[&[u8]]| {
        let mut d = p::framing::SseDecoder::new(4096);
        let mut events = Vec::new();
        for part in parts {
            events.extend(d.push(part).ok()?);
        }
        events.extend(d.finish().ok()?);
        Some(events)
    };
    let at = bytes.first().map_or(0, |b| *b as usize % (bytes.len() + 1));
    let (whole, split) = (feed(&[bytes]), feed(&[&bytes[..at], &bytes[at..]]));
    if let (Some(w), Some(s)) = (whole, split) {
        assert_eq!(w, s, "events depend on the chunk split at {at}");
    }
}

/// Splits `bytes` into its first byte (the case: which API, and for an
/// answer whether it streams) and the rest.
fn case(bytes: &[u8]) -> (p::GatewayApi, u8, &[u8]) {
    let b = bytes.first().copied().unwrap_or(0);
    let api = p::GatewayApi::ALL[b as usize % p::GatewayApi::ALL.len()];
    (api, b, bytes.get(1..).unwrap_or_default())
}

/// A gateway request: headers (`name: value` lines up to a blank line) and
/// a body. Whatever it is, the client gets a 4xx naming what is wrong, or
/// the request becomes a job the queue would accept.
fn gateway(bytes: &[u8]) {
    use axum::http::{HeaderMap, HeaderName, HeaderValue};
    let (api, _, rest) = case(bytes);
    let split = rest.windows(2).position(|w| w == b"\n\n");
    let (head, body) = match split {
        Some(at) => (&rest[..at], &rest[at + 2..]),
        None => (&[][..], rest),
    };
    let mut headers = HeaderMap::new();
    for line in head.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let value = line[colon + 1..].trim_ascii();
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
    let config = kobo_queue::config::GatewayConfig {
        model_kinds: vec![("qwen2.5-coder".into(), "code_generation".into())],
        ..Default::default()
    };
    match kobo_server::gateway::fuzzing::job(api, &headers, body, &config) {
        Err(err) => assert!(
            err.status.is_client_error(),
            "{} for {api:?}: {}",
            err.status,
            err.message
        ),
        Ok(mut job) => {
            // The gateway's payload is its own; a prompt stands for it.
            job.prompt = Some("x".into());
            if let Err(err) = p::validate::submit(&job, "") {
                panic!("{api:?} accepted a job the queue refuses: {}", err.message);
            }
        }
    }
}

/// An LLM server's answer to a gateway call, read by the agent: the output
/// (or the error) must not depend on where the chunks split.
fn reply(bytes: &[u8]) {
    use kobo_agent::llm::fuzzing::reply_output;
    let (api, b, rest) = case(bytes);
    let stream = (b as usize / p::GatewayApi::ALL.len()) % 2 == 1;
    let at = rest.first().map_or(0, |b| *b as usize % (rest.len() + 1));
    let read =
        |chunks: &[&[u8]]| reply_output(api, stream, chunks).map_err(|e| (e.retryable, e.message));
    let whole = read(&[rest]);
    let split = read(&[&rest[..at], &rest[at..]]);
    assert_eq!(whole, split, "{api:?} (stream {stream}) split at {at}");
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "submit",
        run: |b| json::<p::SubmitJob>(b, |j| drop(p::validate::submit(j, ""))),
        seeds: &[r#"{"model":"llama3","prompt":"hi"}"#],
    },
    Target {
        name: "batch",
        run: |b| json::<p::SubmitBatch>(b, |j| drop(p::validate::batch(&j.jobs))),
        seeds: &[r#"{"jobs":[{"model":"llama3","prompt":"hi"},{"model":"m","prompt":"x"}]}"#],
    },
    Target {
        name: "schedule",
        run: |b| json::<p::ScheduleCreate>(b, |_| ()),
        seeds: &[],
    },
    Target {
        name: "key_create",
        run: |b| json::<p::ApiKeyCreate>(b, |k| drop(k.policy.validate())),
        seeds: &[],
    },
    Target {
        name: "key_update",
        run: |b| json::<p::KeyPolicyUpdate>(b, |_| ()),
        seeds: &[],
    },
    Target {
        name: "register",
        run: |b| json::<p::RegisterRequest>(b, |r| drop(p::validate::register(r))),
        seeds: &[],
    },
    Target {
        name: "lease",
        run: |b| json::<p::LeaseRequest>(b, |r| drop(p::validate::lease(r))),
        seeds: &[],
    },
    Target {
        name: "heartbeat",
        run: |b| json::<p::HeartbeatRequest>(b, |r| drop(p::validate::heartbeat(r))),
        seeds: &[],
    },
    Target {
        name: "complete",
        run: |b| json::<p::CompleteRequest>(b, |r| drop(p::validate::complete(r))),
        seeds: &[],
    },
    Target {
        name: "inventory",
        run: inventory,
        seeds: &[include_str!("../../examples/inventory.yaml")],
    },
    Target {
        name: "ndjson",
        run: ndjson,
        seeds: &[
            "{\"model\":\"m\",\"response\":\"Hel\",\"done\":false}\n{\"model\":\"m\",\"response\":\"\",\"done\":true,\"prompt_eval_count\":7,\"eval_count\":2}\n",
        ],
    },
    Target {
        name: "sse",
        run: sse,
        seeds: &[
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n: keepalive\r\nevent: x\ndata: a\ndata: b\n\ndata: [DONE]\n\n",
        ],
    },
    Target {
        name: "gateway",
        run: gateway,
        seeds: &[
            "\x00x-kobo-priority: 5\nx-session-id: s-1\nx-kobo-gpu: true\n\n{\"model\":\"qwen2.5-coder\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream\":true,\"user\":\"u\"}",
            "\x04x-kobo-kind: chat\nx-kobo-data-location: japan\n\n{\"model\":\"llama3\",\"prompt\":\"hi\",\"options\":{\"temperature\":0.1}}",
            "\x05{\"model\":\"m\",\"input\":[\"a\",\"b\"]}",
        ],
    },
    Target {
        name: "reply",
        run: reply,
        seeds: &[
            "\x07\x07data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n",
            "\x0a\x09{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"Hel\"},\"done\":false}\n{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"prompt_eval_count\":7,\"eval_count\":2}\n",
            "\x00\x05{\"id\":\"c\",\"object\":\"chat.completion\",\"model\":\"m\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"ok\",\"tool_calls\":[{\"id\":\"t\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},\"finish_reason\":\"tool_calls\"}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}",
            "\x02\x01{\"object\":\"list\",\"data\":[{\"object\":\"embedding\",\"index\":0,\"embedding\":[0.1]}],\"model\":\"m\",\"usage\":{\"prompt_tokens\":1,\"total_tokens\":1}}",
        ],
    },
];
