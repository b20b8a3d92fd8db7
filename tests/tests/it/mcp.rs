//! The MCP adapter: in-process (an rmcp client and the server over a duplex
//! pipe, against a real coordinator with agents) and end to end (the built
//! `kobo-coord mcp` driven over stdio line by line, as Claude Code does).

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kobo_client::{ApiClient, Endpoint};
use kobo_coord::mcp::{McpOptions, server};
use kobo_protocol::{AccessRole, JobState};
use kobo_tests::cluster::{AgentSpec, Cluster, PATIENCE, binary};
use kobo_tests::fake_llm::reply_text;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientRequest, JsonObject, ProgressNotificationParam,
    Request,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RunningService};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Progress every 200 ms instead of 10 s, so tests see several quickly.
const TEST_PROGRESS: Duration = Duration::from_millis(200);

/// An MCP client that records the progress notifications it receives.
#[derive(Clone, Default)]
struct Recorder {
    progress: Arc<Mutex<Vec<ProgressNotificationParam>>>,
}

impl Recorder {
    fn progress(&self) -> Vec<ProgressNotificationParam> {
        self.progress.lock().expect("progress lock").clone()
    }

    fn clear(&self) {
        self.progress.lock().expect("progress lock").clear();
    }
}

impl ClientHandler for Recorder {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress.lock().expect("progress lock").push(params);
    }
}

type McpClient = RunningService<RoleClient, Recorder>;

/// The progress notifications received, once there are at least `n`
/// (notifications are handled apart from answers, so they may trail one).
async fn progress_of(recorder: &Recorder, n: usize) -> Vec<ProgressNotificationParam> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let progress = recorder.progress();
        if progress.len() >= n || Instant::now() > deadline {
            assert!(
                progress.len() >= n,
                "progress during the wait: {progress:?}"
            );
            return progress;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The MCP server in-process over a duplex pipe, and a client on the other end.
async fn connect(api: ApiClient) -> (McpClient, Recorder) {
    let options = McpOptions {
        progress_interval: TEST_PROGRESS,
        ..McpOptions::default()
    };
    let (server_io, client_io) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move {
        if let Ok(running) = server(api, options).serve(server_io).await {
            let _ = running.waiting().await;
        }
    });
    let recorder = Recorder::default();
    let client = recorder
        .clone()
        .serve(client_io)
        .await
        .expect("MCP handshake");
    (client, recorder)
}

/// A client of the cluster's coordinator, found the way `kobo-coord mcp
/// --data-dir` finds it.
fn api_of(cluster: &Cluster) -> ApiClient {
    let endpoint = Endpoint::resolve(&cluster.data_dir, None, None, None).expect("endpoint");
    ApiClient::new(&endpoint).expect("api client")
}

/// A client of a coordinator that is not there (for calls refused before
/// any request).
fn api_nowhere() -> ApiClient {
    ApiClient::new(&Endpoint {
        url: "https://127.0.0.1:9".into(),
        ca_pem: None,
        api_key: None,
    })
    .expect("api client")
}

fn object(value: Value) -> JsonObject {
    match value {
        Value::Object(map) => map,
        other => panic!("tool arguments must be an object, not {other}"),
    }
}

async fn call(client: &McpClient, tool: &str, args: Value) -> CallToolResult {
    client
        .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(object(args)))
        .await
        .unwrap_or_else(|err| panic!("tools/call {tool}: {err}"))
}

/// The structured result of a successful call.
async fn ok(client: &McpClient, tool: &str, args: Value) -> Value {
    let result = call(client, tool, args).await;
    assert_ne!(result.is_error, Some(true), "{tool} failed: {result:?}");
    result
        .structured_content
        .unwrap_or_else(|| panic!("{tool} returned no structuredContent"))
}

/// The message of a call that failed as a tool error (`isError: true`).
async fn tool_error(client: &McpClient, tool: &str, args: Value) -> String {
    let result = call(client, tool, args.clone()).await;
    assert_eq!(
        result.is_error,
        Some(true),
        "{tool} {args} should fail: {result:?}"
    );
    result
        .content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.clone())
        .unwrap_or_default()
}

fn ids_of(value: &Value) -> Vec<i64> {
    value["job_ids"]
        .as_array()
        .expect("job_ids")
        .iter()
        .map(|id| id.as_i64().expect("an id"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_are_listed_with_schemas_and_annotations() {
    let (client, _) = connect(api_nowhere()).await;
    let info = client.peer_info().expect("server info");
    let name = info.server_info.as_ref().map(|s| s.name.as_str());
    assert_eq!(name, Some("kobo"));
    assert!(info.capabilities.tools.is_some());

    let tools = client.list_all_tools().await.expect("tools/list");
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "cancel_job",
            "cluster_status",
            "get_job",
            "list_jobs",
            "list_nodes",
            "submit_jobs",
            "wait_jobs"
        ]
    );
    for tool in &tools {
        let description = tool.description.as_deref().unwrap_or("");
        assert!(description.len() > 80, "{}: {description}", tool.name);
        assert_eq!(tool.input_schema["type"], "object", "{}", tool.name);
        let output = tool.output_schema.as_ref().expect("an output schema");
        assert_eq!(output["type"], "object", "{}", tool.name);
        assert!(tool.annotations.is_some(), "{} has annotations", tool.name);
    }
    let tool = |name: &str| {
        tools
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("{name}"))
    };
    let submit = &tool("submit_jobs").input_schema;
    for field in [
        "prompt",
        "prompts",
        "kind",
        "model",
        "requirements",
        "priority",
    ] {
        let description = submit["properties"][field]["description"].as_str();
        assert!(description.is_some(), "submit_jobs.{field} is documented");
    }
    assert!(
        serde_json::to_string(submit)
            .expect("schema")
            .contains("data_location"),
        "requirements are spelled out"
    );
    assert_eq!(
        tool("wait_jobs").input_schema["required"],
        json!(["job_ids"])
    );
    let list_jobs = serde_json::to_string(&tool("list_jobs").input_schema).expect("schema");
    assert!(list_jobs.contains("\"leased\""), "states are an enum");
    let hints = |name: &str| tool(name).annotations.clone().expect("annotations");
    assert_eq!(hints("submit_jobs").read_only_hint, Some(false));
    assert_eq!(hints("wait_jobs").read_only_hint, Some(true));
    assert_eq!(hints("get_job").read_only_hint, Some(true));
    assert_eq!(hints("cancel_job").destructive_hint, Some(true));
    assert_eq!(hints("cancel_job").idempotent_hint, Some(true));
    assert_eq!(hints("cluster_status").read_only_hint, Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_come_back_as_tool_errors_that_say_how_to_fix_them() {
    let (client, _) = connect(api_nowhere()).await;
    let cases = [
        ("submit_jobs", json!({}), "give `prompt`"),
        (
            "submit_jobs",
            json!({"prompt": "a", "prompts": ["b"]}),
            "not both",
        ),
        ("submit_jobs", json!({"prompts": []}), "at least one prompt"),
        (
            "submit_jobs",
            json!({"prompt": "a", "priority": "high"}),
            "`priority`",
        ),
        ("submit_jobs", json!({"promt": "a"}), "promt"),
        ("wait_jobs", json!({"job_ids": []}), "`job_ids` is empty"),
        (
            "wait_jobs",
            json!({"job_ids": [1], "timeout_secs": 3600}),
            "at most 300",
        ),
        ("wait_jobs", json!({"job_ids": "1,2"}), "`job_ids`"),
        ("get_job", json!({"job_id": 0}), "no job id"),
        ("get_job", json!({}), "job_id"),
        (
            "get_job",
            json!({"job_id": 1, "max_chars": 0}),
            "`max_chars`",
        ),
        ("list_jobs", json!({"state": "running"}), "leased"),
        ("list_jobs", json!({"limit": 100000}), "`limit`"),
        ("list_nodes", json!({"status": "up"}), "active"),
        ("cancel_job", json!({"job_id": -4}), "no job id"),
        ("cluster_status", json!({"verbose": true}), "verbose"),
    ];
    for (tool, args, expected) in cases {
        let message = tool_error(&client, tool, args.clone()).await;
        assert!(
            message.contains(expected),
            "{tool} {args}: {message:?} should mention {expected:?}"
        );
    }
    // A coordinator that cannot be reached is a tool error too, not a crash.
    let message = tool_error(&client, "list_nodes", json!({})).await;
    assert!(message.contains("cannot reach"), "{message}");
    // An unknown tool is a protocol error.
    let unknown = client
        .call_tool(CallToolRequestParams::new("drop_database"))
        .await;
    assert!(unknown.is_err(), "{unknown:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tool_works_against_a_real_cluster() {
    let mut cluster = Cluster::builder().start().await;
    cluster
        .agent(AgentSpec::new("tokyo-01", &["code_generation"]).region("ap-northeast-1"))
        .await;
    cluster
        .agent(AgentSpec::new("london-01", &["data_analysis"]).region("eu-west-2"))
        .await;
    let (client, _) = connect(api_of(&cluster)).await;

    let nodes = ok(&client, "list_nodes", json!({})).await;
    let nodes = nodes["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2);
    let london = nodes
        .iter()
        .find(|n| n["node_id"] == "london-01")
        .expect("london-01");
    assert_eq!(london["status"], "active");
    assert_eq!(london["region"], "eu-west-2");
    assert_eq!(
        london["capabilities"],
        json!(["data_analysis", "ollama_api"])
    );
    assert_eq!(london["max_workers"], 4);
    assert!(!london["models"].as_array().expect("models").is_empty());

    // Fan out: six prompts, one call, one id each; a retry with the same key
    // returns the same jobs.
    let prompts: Vec<String> = (0..6)
        .map(|i| format!("Write function number {i}"))
        .collect();
    let args = json!({"prompts": prompts, "kind": "code_generation", "idempotency_key": "fan", "priority": 5});
    let submitted = ok(&client, "submit_jobs", args.clone()).await;
    let ids = ids_of(&submitted);
    assert_eq!(ids.len(), 6);
    assert_eq!(submitted["created"], 6);
    assert_eq!(submitted["jobs"][2]["idempotency_key"], "fan-2");
    let again = ok(&client, "submit_jobs", args).await;
    assert_eq!(ids_of(&again), ids);
    assert_eq!(again["created"], 0);

    let waited = ok(&client, "wait_jobs", json!({"job_ids": ids})).await;
    assert_eq!(waited["all_done"], true, "{waited}");
    assert_eq!(waited["succeeded"], 6);
    let tokens = cluster.fake.behavior().response_tokens;
    for (idx, job) in waited["jobs"].as_array().expect("jobs").iter().enumerate() {
        assert_eq!(job["job_id"], ids[idx], "in the order given");
        assert_eq!(job["status"], "succeeded");
        assert_eq!(job["node_id"], "tokyo-01");
        assert_eq!(job["result"], reply_text(&prompts[idx], tokens));
    }

    // get_job pages a result: two pages make the whole text.
    let full = reply_text(&prompts[0], tokens);
    let first = ok(
        &client,
        "get_job",
        json!({"job_id": ids[0], "max_chars": 5}),
    )
    .await;
    assert_eq!(first["status"], "succeeded");
    assert_eq!(first["node_id"], "tokyo-01");
    assert_eq!(first["priority"], 5);
    assert_eq!(first["result"]["total_chars"], full.chars().count());
    assert_eq!(first["result"]["next_offset"], 5);
    let rest = ok(
        &client,
        "get_job",
        json!({"job_id": ids[0], "offset": 5, "max_chars": 100_000}),
    )
    .await;
    assert!(rest["result"]["next_offset"].is_null());
    let joined = format!(
        "{}{}",
        first["result"]["text"].as_str().expect("page 1"),
        rest["result"]["text"].as_str().expect("page 2")
    );
    assert_eq!(joined, full);
    assert_eq!(first["usage"]["completion_tokens"], tokens);
    assert_eq!(first["attempt_history"][0]["node_id"], "tokyo-01");
    assert_eq!(first["attempt_history"][0]["outcome"], "succeeded");
    assert!(first["timings"]["llm_ms"].is_u64());
    let events = first["events"].as_array().expect("events");
    assert_eq!(events.last().expect("an event")["to"], "succeeded");

    // list_jobs pages with after (the cursor), counting every match.
    let page = ok(
        &client,
        "list_jobs",
        json!({"state": "succeeded", "kind": "code_generation", "limit": 4}),
    )
    .await;
    let listed: Vec<i64> = page["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j["job_id"].as_i64().expect("id"))
        .collect();
    assert_eq!(listed, [ids[5], ids[4], ids[3], ids[2]], "newest first");
    assert_eq!(page["next_after"], ids[2]);
    assert_eq!(page["total"], 6, "every page counts all matching jobs");
    let next = ok(
        &client,
        "list_jobs",
        json!({"state": "succeeded", "kind": "code_generation", "after": ids[2], "limit": 4}),
    )
    .await;
    assert_eq!(next["jobs"].as_array().expect("jobs").len(), 2);
    assert!(next["next_after"].is_null(), "the last page has no cursor");
    assert_eq!(next["total"], 6);
    let by_node = ok(&client, "list_jobs", json!({"node_id": "london-01"})).await;
    assert!(by_node["jobs"].as_array().expect("jobs").is_empty());

    // A job no node can run waits with its reason; cancel it.
    let stuck = ok(
        &client,
        "submit_jobs",
        json!({"prompt": "Traduire ceci", "kind": "translation"}),
    )
    .await;
    let stuck_id = ids_of(&stuck)[0];
    let routed = ok(&client, "get_job", json!({"job_id": ids[1]})).await;
    assert!(
        routed["route_reason"].is_object(),
        "the router's reason: {routed}"
    );
    let detail = ok(&client, "get_job", json!({"job_id": stuck_id})).await;
    assert_eq!(detail["state"], "queued");
    assert_eq!(detail["status"], "running");
    let reason = detail["queue_reason"].as_str().expect("a queue reason");
    assert!(reason.contains("no live node can run it"), "{reason}");
    let status = ok(&client, "cluster_status", json!({})).await;
    assert_eq!(status["jobs"]["queued"], 1, "{status}");
    assert_eq!(status["nodes"]["active"], 2);
    assert_eq!(status["workers"]["total"], 8);
    assert_eq!(status["last_minute"]["succeeded"], 6);
    assert!(status["last_hour"]["jobs_per_minute"].is_number());
    assert_eq!(status["totals"]["succeeded"], 6);
    // An admin sees usage per key over the last day; a read key does not.
    let usage = status["usage_last_day"]
        .as_array()
        .expect("an admin's usage");
    let requests: u64 = usage.iter().filter_map(|u| u["requests"].as_u64()).sum();
    assert_eq!(requests, 6, "{status}");
    assert!(usage.iter().all(|u| u["prompt_tokens"].as_u64() > Some(0)));
    let (reader, _) = cluster.client_with_role(AccessRole::Read).await;
    let (read_mcp, _) = connect(reader).await;
    let read_status = ok(&read_mcp, "cluster_status", json!({})).await;
    assert!(read_status.get("usage_last_day").is_none(), "{read_status}");
    assert_eq!(read_status["totals"]["succeeded"], 6);
    assert_eq!(
        status["queue"],
        json!([{"state": "queued", "kind": "translation", "jobs": 1, "oldest_at": status["queue"][0]["oldest_at"]}])
    );
    assert!(
        status["waiting_reasons"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("translation")),
        "{status}"
    );
    let cancelled = ok(&client, "cancel_job", json!({"job_id": stuck_id})).await;
    assert_eq!(cancelled["state"], "cancelled");
    let twice = tool_error(&client, "cancel_job", json!({"job_id": stuck_id})).await;
    assert!(twice.contains("already cancelled"), "{twice}");
    let refused = tool_error(
        &client,
        "submit_jobs",
        json!({"prompts": ["a", "b"], "priority": 5000}),
    )
    .await;
    assert!(
        refused.contains("priority") && refused.contains("between -1000 and 1000"),
        "the coordinator's check reaches the model: {refused}"
    );
    let missing = tool_error(&client, "get_job", json!({"job_id": 999_999})).await;
    assert!(missing.contains("404"), "{missing}");
    let status = ok(&client, "cluster_status", json!({})).await;
    assert_eq!(status["jobs"]["queued"], 0);
    assert_eq!(status["last_minute"]["cancelled"], 1);
    assert_eq!(status["totals"]["cancelled"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_jobs_reports_progress_and_returns_unfinished_jobs_as_running() {
    let mut cluster = Cluster::builder().start().await;
    cluster
        .agent(AgentSpec::new("tokyo-01", &["general_query"]))
        .await;
    cluster.fake.update_behavior(|b| b.latency_ms = 4000);
    let (client, recorder) = connect(api_of(&cluster)).await;
    let submitted = ok(
        &client,
        "submit_jobs",
        json!({"prompts": ["slow one", "slow two"]}),
    )
    .await;
    let ids = ids_of(&submitted);

    // Past the timeout: still running is an answer, not an error.
    let started = Instant::now();
    let early = ok(
        &client,
        "wait_jobs",
        json!({"job_ids": ids, "timeout_secs": 1}),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the timeout holds"
    );
    assert_eq!(early["all_done"], false);
    assert_eq!(early["running"], 2);
    for job in early["jobs"].as_array().expect("jobs") {
        assert_eq!(job["status"], "running", "{job}");
        assert!(job["result"].is_null());
    }
    let progress = progress_of(&recorder, 2).await;
    for note in &progress {
        assert_eq!(note.total, Some(2.0));
        assert_eq!(note.progress, 0.0);
        let message = note.message.as_deref().unwrap_or("");
        assert!(message.starts_with("0/2 done"), "{message}");
    }

    // Waiting again returns as soon as both are done, long before the
    // default bound, having said which node runs them.
    recorder.clear();
    let started = Instant::now();
    let done = ok(&client, "wait_jobs", json!({"job_ids": ids})).await;
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(done["all_done"], true, "{done}");
    assert_eq!(done["succeeded"], 2);
    let messages: Vec<String> = recorder
        .progress()
        .iter()
        .filter_map(|n| n.message.clone())
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("running on tokyo-01 ×2")),
        "{messages:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_wait_stops_the_wait_but_not_the_job() {
    // The job must stay leased for the whole test: a lease and heartbeat
    // tolerance far longer than the test, so a loaded machine that delays a
    // heartbeat cannot requeue it.
    let mut cluster = Cluster::builder()
        .heartbeat_ms(3000)
        .lease_ttl_ms(120_000)
        .start()
        .await;
    cluster.fake.update_behavior(|b| b.hang = true);
    cluster
        .agent(AgentSpec::new("tokyo-01", &["general_query"]))
        .await;
    let (client, recorder) = connect(api_of(&cluster)).await;
    let submitted = ok(&client, "submit_jobs", json!({"prompt": "never answered"})).await;
    let id = ids_of(&submitted)[0];
    cluster.wait_state(id, JobState::Leased).await;

    let request = ClientRequest::CallToolRequest(Request::new(
        CallToolRequestParams::new("wait_jobs")
            .with_arguments(object(json!({"job_ids": [id], "timeout_secs": 120}))),
    ));
    let handle = client
        .peer()
        .send_cancellable_request(request, PeerRequestOptions::no_options())
        .await
        .expect("tools/call");
    let token = handle.progress_token.clone();
    let of_this_call = || {
        recorder
            .progress()
            .iter()
            .filter(|n| n.progress_token == token)
            .count()
    };
    let deadline = Instant::now() + PATIENCE;
    while of_this_call() < 2 {
        assert!(Instant::now() < deadline, "no progress from the wait");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle
        .cancel(Some("the user pressed Esc".into()))
        .await
        .expect("notifications/cancelled");
    // The cancellation takes effect when the server reads it; from then on
    // no progress comes. Wait for a quiet window of five progress intervals
    // (a running wait sends one each interval); a wait that never stops
    // fails at the deadline.
    let deadline = Instant::now() + PATIENCE;
    let mut seen = of_this_call();
    loop {
        tokio::time::sleep(TEST_PROGRESS * 5).await;
        let now = of_this_call();
        if now == seen {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a cancelled wait sends no more progress"
        );
        seen = now;
    }

    let job = cluster.client().job(id).await.expect("job").job;
    assert_eq!(job.state, JobState::Leased, "the job runs on");
    assert_eq!(cluster.fake.in_flight(), 1);
    let detail = ok(&client, "get_job", json!({"job_id": id})).await;
    assert_eq!(detail["state"], "leased", "the session still works");
}

/// Reads JSON-RPC lines from the server until the answer to `id`; returns it
/// and the notifications before it.
async fn read_until_answer<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
    id: i64,
) -> (Value, Vec<Value>) {
    let mut notifications = Vec::new();
    loop {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("the server answers in time")
            .expect("reading stdout")
            .expect("stdout stays open");
        let message: Value = serde_json::from_str(&line)
            .unwrap_or_else(|err| panic!("stdout carries only JSON-RPC, got {line:?}: {err}"));
        assert_eq!(message["jsonrpc"], "2.0", "{line}");
        if message["id"] == id {
            return (message, notifications);
        }
        assert!(message.get("method").is_some(), "unexpected answer {line}");
        notifications.push(message);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_speaks_mcp_over_stdio_line_by_line() {
    let mut cluster = Cluster::builder().start().await;
    cluster
        .agent(AgentSpec::new("osaka-01", &["general_query"]).region("ap-northeast-3"))
        .await;
    cluster.fake.update_behavior(|b| b.latency_ms = 300);
    let log = cluster.data_dir.join("mcp.log");
    let mut child = tokio::process::Command::new(binary("kobo-coord"))
        .arg("mcp")
        .arg("--data-dir")
        .arg(&cluster.data_dir)
        .env_remove("KOBO_URL")
        .env_remove("KOBO_CA")
        .env_remove("KOBO_API_KEY")
        .env("RUST_LOG", "debug")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("mcp log"))
        .kill_on_drop(true)
        .spawn()
        .expect("start kobo-coord mcp");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut send = async |message: Value| {
        let mut line = serde_json::to_string(&message).expect("json");
        line.push('\n');
        stdin.write_all(line.as_bytes()).await.expect("write stdin");
        stdin.flush().await.expect("flush stdin");
    };

    send(
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {"roots": {}},
            "clientInfo": {"name": "claude-code", "version": "2.1.0"}
        }}),
    )
    .await;
    let (init, _) = read_until_answer(&mut lines, 1).await;
    assert_eq!(init["result"]["protocolVersion"], "2025-11-25", "{init}");
    assert_eq!(init["result"]["serverInfo"]["name"], "kobo");
    assert!(init["result"]["capabilities"]["tools"].is_object());
    send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;

    send(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}})).await;
    let (list, _) = read_until_answer(&mut lines, 2).await;
    let tools = list["result"]["tools"].as_array().expect("tools");
    assert_eq!(tools.len(), 7, "{list}");
    let submit = tools
        .iter()
        .find(|t| t["name"] == "submit_jobs")
        .expect("submit_jobs");
    assert_eq!(submit["inputSchema"]["type"], "object");
    assert_eq!(submit["annotations"]["readOnlyHint"], false);
    assert_eq!(submit["outputSchema"]["type"], "object");

    send(
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
            "name": "submit_jobs",
            "arguments": {"prompts": ["one", "two", "three"], "kind": "general_query"}
        }}),
    )
    .await;
    let (submitted, _) = read_until_answer(&mut lines, 3).await;
    let result = &submitted["result"];
    assert_ne!(result["isError"], true, "{submitted}");
    let ids = result["structuredContent"]["job_ids"].clone();
    assert_eq!(ids.as_array().map(Vec::len), Some(3), "{submitted}");

    send(
        json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {
            "name": "wait_jobs",
            "arguments": {"job_ids": ids},
            "_meta": {"progressToken": "wait-4"}
        }}),
    )
    .await;
    let (waited, notifications) = read_until_answer(&mut lines, 4).await;
    let result = &waited["result"]["structuredContent"];
    assert_eq!(result["all_done"], true, "{waited}");
    assert_eq!(result["succeeded"], 3);
    assert_eq!(result["jobs"][0]["node_id"], "osaka-01");
    assert_eq!(
        result["jobs"][1]["result"],
        reply_text("two", cluster.fake.behavior().response_tokens)
    );
    for note in &notifications {
        assert_eq!(note["method"], "notifications/progress", "{note}");
        assert_eq!(note["params"]["progressToken"], "wait-4");
    }

    send(
        json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {
            "name": "get_job", "arguments": {"job_id": "seven"}
        }}),
    )
    .await;
    let (bad, _) = read_until_answer(&mut lines, 5).await;
    assert_eq!(bad["result"]["isError"], true, "{bad}");
    let text = bad["result"]["content"][0]["text"].as_str().unwrap_or("");
    assert!(text.contains("job_id"), "{text}");

    // Closing stdin ends the server cleanly; its logs went to stderr.
    drop(stdin);
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("the server exits when stdin closes")
        .expect("wait for the server");
    assert!(status.success(), "{status}");
    assert!(
        lines.next_line().await.ok().flatten().is_none(),
        "nothing after the last answer"
    );
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!stderr.is_empty(), "debug logs went to stderr");
}
