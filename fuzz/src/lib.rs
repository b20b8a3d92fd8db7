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
];
