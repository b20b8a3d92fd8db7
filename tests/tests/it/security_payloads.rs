//! The bodies of the payload barrage (security_hardening.rs): a valid
//! template per route that reads one, and the broken variants made of it.

use serde_json::{Value, json};

/// The node whose certificate calls the agent routes in the barrage.
pub(crate) const NODE: &str = "barrage-node";
/// SQL metacharacters put into every string field.
const SQL: &str = "'; DROP TABLE jobs; --";

/// A valid body for each POST route that reads one (the barrage sends only
/// broken variants of it); `None` for POST routes that take no body.
pub(crate) fn template(path: &str, csr: &str) -> Option<Value> {
    let value = match path {
        "/v1/join" => json!({"token": unknown_join_token(), "csr_pem": csr}),
        "/v1/enroll" => {
            json!({"key": unknown_enroll_key(), "name_suffix": "pod-1", "csr_pem": csr})
        }
        "/v1/admin/enroll-keys" => {
            json!({"prefix": "barrage-", "ttl_ms": 60_000, "max_enrollments": 3})
        }
        "/v1/jobs" => json!({"kind": "general_query", "prompt": "hello"}),
        "/v1/jobs/batch" => json!({"jobs": [{"kind": "general_query", "prompt": "hello"}]}),
        "/v1/admin/apikeys" => json!({"name": "barrage", "role": "read"}),
        "/v1/admin/apikeys/0000000000000000" => json!({"weight": 2, "rpm": 60}),
        "/v1/admin/tokens" => json!({"node_id": "barrage-token", "ttl_ms": 60_000}),
        "/v1/admin/certificates" => json!({"node_id": "barrage-cert", "csr_pem": csr}),
        "/v1/admin/provision-runs" => json!({
            "host": "barrage-host", "node_id": "barrage-node", "action": "install",
            "outcome": "changed", "detail": "d",
        }),
        "/v1/agent/register" => json!({
            "node_id": NODE, "instance_id": "i-1", "region": "r",
            "capabilities": ["general_query"], "max_workers": 1, "backend": "sim",
        }),
        "/v1/agent/lease" => {
            json!({"node_id": NODE, "instance_id": "i-1", "max_jobs": 1, "wait_ms": 0})
        }
        "/v1/agent/heartbeat" => json!({"node_id": NODE, "instance_id": "i-1", "running": []}),
        "/v1/agent/jobs/1/complete" => json!({
            "node_id": NODE, "lease_token": 1,
            "outcome": {"status": "failed", "error": "e", "retryable": false},
        }),
        "/v1/agent/complete" => json!({
            "node_id": NODE,
            "reports": [{
                "job_id": 1, "lease_token": 1,
                "outcome": {"status": "failed", "error": "e", "retryable": false},
            }],
        }),
        "/v1/agent/renew" => json!({"csr_pem": csr}),
        "/v1/session" => json!({"api_key": "kobo_0000000000000000_barrage"}),
        "/v1/schedules" => json!({
            "name": "barrage", "cron": "0 0 * * * *",
            "job": {"kind": "general_query", "prompt": "hello"},
        }),
        "/v1/chat/completions" | "/api/chat" => json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}],
        }),
        "/v1/completions" | "/api/generate" | "/api/embeddings" => {
            json!({"model": "m", "prompt": "hi"})
        }
        "/v1/embeddings" | "/api/embed" => json!({"model": "m", "input": "hi"}),
        "/api/show" => json!({"model": "m"}),
        // The agent's stream upload takes raw bytes, not a JSON document.
        "/v1/agent/jobs/1/stream?node_id=&lease_token=1"
        | "/v1/jobs/1/cancel"
        | "/v1/session/logout"
        | "/v1/admin/apikeys/0000000000000000/revoke"
        | "/v1/admin/enroll-keys/0000000000000000/revoke"
        | "/v1/admin/nodes/x/revoke"
        | "/v1/admin/nodes/x/drain"
        | "/v1/admin/nodes/x/resume"
        | "/v1/schedules/nope/pause"
        | "/v1/schedules/nope/resume" => return None,
        other => panic!("POST {other} is new: give it a template in security_hardening.rs"),
    };
    Some(value)
}

/// A join token of the right shape that the coordinator never issued.
fn unknown_enroll_key() -> String {
    format!(
        "kobo-enroll.{}.{}.{}",
        "a".repeat(64),
        "b".repeat(16),
        "c".repeat(64)
    )
}

fn unknown_join_token() -> String {
    format!(
        "kobo-join.{}.{}.{}",
        "a".repeat(64),
        "b".repeat(16),
        "c".repeat(64)
    )
}

fn map_strings(value: &Value, to: &str) -> Value {
    match value {
        Value::String(_) => Value::String(to.to_string()),
        Value::Array(items) => Value::Array(items.iter().map(|v| map_strings(v, to)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), map_strings(v, to)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn map_fields(value: &Value, to: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(map.keys().map(|k| (k.clone(), to.clone())).collect()),
        other => other.clone(),
    }
}

pub(crate) fn bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("json")
}

fn replace_bytes(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(at) = rest.windows(needle.len()).position(|w| w == needle) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(with);
        rest = &rest[at + needle.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// Bodies broken for any route.
pub(crate) fn generic_payloads() -> Vec<(&'static str, Vec<u8>)> {
    let depth = 10_000;
    vec![
        ("malformed JSON", b"{\"kind\": \"x\", ".to_vec()),
        ("empty body", Vec::new()),
        ("JSON null", b"null".to_vec()),
        ("a JSON string", b"\"just a string\"".to_vec()),
        ("an out-of-range number", b"1e999999".to_vec()),
        (
            "arrays nested 10,000 deep",
            format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes(),
        ),
        (
            "objects nested 10,000 deep",
            format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth)).into_bytes(),
        ),
        ("1 MiB of unclosed arrays", vec![b'['; 1 << 20]),
        (
            "wrong types (kind 5, prompt [])",
            br#"{"kind": 5, "prompt": []}"#.to_vec(),
        ),
        (
            "wrong types (node_id an object)",
            br#"{"node_id": {"a": 1}}"#.to_vec(),
        ),
        (
            "duplicate keys",
            br#"{"kind":"q","kind":"r","prompt":"x"}"#.to_vec(),
        ),
        ("raw invalid UTF-8", b"\xff\xfe\xfd".to_vec()),
        (
            "SQL in a bare body",
            format!("{{\"kind\":\"{SQL}\",\"prompt\":\"{SQL}\"}}").into_bytes(),
        ),
        (
            "NUL in a bare body",
            br#"{"kind":"a\u0000b","prompt":"a\u0000b"}"#.to_vec(),
        ),
    ]
}

/// Broken variants of a route's valid body.
pub(crate) fn derived_payloads(template: &Value) -> Vec<(&'static str, Vec<u8>)> {
    let marker = "@@not-utf8@@";
    let mut unknown = template.clone();
    unknown
        .as_object_mut()
        .expect("templates are objects")
        .insert("colour".into(), json!(1));
    vec![
        (
            "every field a number",
            bytes(&map_fields(template, &json!(5))),
        ),
        (
            "every field an array",
            bytes(&map_fields(template, &json!([]))),
        ),
        (
            "every field an object",
            bytes(&map_fields(template, &json!({"a": 1}))),
        ),
        ("every string SQL", bytes(&map_strings(template, SQL))),
        (
            "every string with NUL",
            bytes(&map_strings(template, "a\u{0}b")),
        ),
        (
            "every string invalid UTF-8",
            replace_bytes(
                &bytes(&map_strings(template, marker)),
                marker.as_bytes(),
                b"\xff\xfe",
            ),
        ),
        ("an unknown field", bytes(&unknown)),
    ]
}

/// Bad bodies only one route understands.
pub(crate) fn route_payloads(path: &str, csr: &str) -> Vec<(&'static str, Vec<u8>)> {
    let garbage_csr =
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";
    let cases: Vec<(&'static str, Value)> = match path {
        "/v1/join" => vec![
            (
                "a real CSR with an SQL token",
                json!({"token": SQL, "csr_pem": csr}),
            ),
            (
                "a real CSR with a well-formed unknown token",
                json!({"token": unknown_join_token(), "csr_pem": csr}),
            ),
            (
                "a PEM-shaped garbage CSR",
                json!({"token": unknown_join_token(), "csr_pem": garbage_csr}),
            ),
        ],
        "/v1/enroll" => vec![
            (
                "a suffix that is no DNS label",
                json!({"key": unknown_enroll_key(), "name_suffix": "Pod.1", "csr_pem": csr}),
            ),
            (
                "both a suffix and a node id",
                json!({"key": unknown_enroll_key(), "name_suffix": "a", "node_id": "b", "csr_pem": csr}),
            ),
            (
                "a join token for a key",
                json!({"key": unknown_join_token(), "name_suffix": "a", "csr_pem": csr}),
            ),
        ],
        "/v1/admin/enroll-keys" => vec![
            ("an upper-case prefix", json!({"prefix": "K8S-"})),
            (
                "max_enrollments 0",
                json!({"prefix": "k8s-", "max_enrollments": 0}),
            ),
            (
                "ttl_ms u64::MAX",
                json!({"prefix": "k8s-", "ttl_ms": u64::MAX}),
            ),
        ],
        "/v1/agent/renew" => vec![("a PEM-shaped garbage CSR", json!({"csr_pem": garbage_csr}))],
        "/v1/agent/register" => vec![(
            "another node's name",
            json!({
                "node_id": "someone-else", "instance_id": "i-1", "region": "r",
                "capabilities": ["general_query"], "max_workers": 1, "backend": "sim",
            }),
        )],
        "/v1/admin/tokens" => vec![
            ("ttl_ms 0", json!({"node_id": "n", "ttl_ms": 0})),
            (
                "ttl_ms u64::MAX",
                json!({"node_id": "n", "ttl_ms": u64::MAX}),
            ),
        ],
        "/v1/admin/apikeys" => vec![
            ("role root", json!({"name": "n", "role": "root"})),
            (
                "weight 0",
                json!({"name": "n", "role": "read", "policy": {"weight": 0}}),
            ),
        ],
        "/v1/admin/apikeys/0000000000000000" => vec![
            ("weight 0", json!({"weight": 0})),
            ("clear an unknown limit", json!({"clear": ["speed"]})),
        ],
        "/v1/jobs" => vec![
            (
                "priority beyond i32",
                json!({"kind": "q", "prompt": "x", "priority": 2_147_483_648_i64}),
            ),
            (
                "run_at beyond i64",
                json!({"kind": "q", "prompt": "x", "run_at": u64::MAX}),
            ),
        ],
        _ => Vec::new(),
    };
    cases
        .into_iter()
        .map(|(what, v)| (what, bytes(&v)))
        .collect()
}
