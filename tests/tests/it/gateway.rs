//! The gateway driven by the official `openai` and `ollama` Python clients
//! (tests/python, a virtualenv made by scripts/install-test-deps), against a
//! real coordinator and real agents on the fake LLM: answers whole and
//! streamed, errors in each API's shape, every request a job; and the
//! failure paths: a retry before the first token is invisible, a client
//! that goes away cancels its job, a full queue answers 503 with
//! Retry-After. (An agent killed mid-stream: `gateway_midstream`.)

use std::path::PathBuf;
use std::process::Stdio;

use kobo_protocol::{AccessRole, JobListQuery, JobState, JobView};
use kobo_tests::cluster::{AgentSpec, Cluster, PATIENCE};
use kobo_tests::fake_llm::FakeFailure;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

const MODEL: &str = "qwen2.5:0.5b";

pub(crate) fn python() -> PathBuf {
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/.venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: scripts/install-test-deps makes the virtualenv with the official clients",
        venv.display()
    );
    venv
}

pub(crate) fn script() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/gateway_client.py")
}

/// A cluster with one agent and a submit key for the clients.
pub(crate) async fn gateway_cluster(agents: &[&str]) -> (Cluster, String) {
    let mut cluster = Cluster::builder().start().await;
    for node in agents {
        cluster
            .agent(AgentSpec::new(node, &["general_query"]))
            .await;
    }
    let key = cluster
        .client()
        .apikey_create(
            "gateway-client",
            AccessRole::Submit,
            kobo_protocol::KeyPolicy::default(),
        )
        .await
        .expect("submit key")
        .key;
    (cluster, key)
}

pub(crate) fn client_command(
    cluster: &Cluster,
    key: &str,
    model: &str,
    scenario: &str,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(python());
    command
        .arg(script())
        .args(["--url", &cluster.url()])
        .args(["--key", key])
        .arg("--ca")
        .arg(cluster.ca_path())
        .args(["--model", model])
        .args(["--scenario", scenario])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true);
    command
}

/// Runs one scenario of the Python client and returns what it observed.
pub(crate) async fn run(cluster: &Cluster, key: &str, model: &str, scenario: &str) -> Value {
    let output = client_command(cluster, key, model, scenario)
        .output()
        .await
        .expect("run the python client");
    assert!(
        output.status.success(),
        "{scenario}: the client failed\nstdout: {}\nstderr: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        cluster.logs()
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{scenario}: not one JSON object ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// Every job, newest first.
pub(crate) async fn all_jobs(cluster: &Cluster) -> Vec<JobView> {
    cluster
        .client()
        .jobs(&JobListQuery::default())
        .await
        .expect("jobs")
        .jobs
}

pub(crate) async fn job(cluster: &Cluster, observed: &Value) -> JobView {
    let id: i64 = observed["job_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no x-kobo-job-id in {observed}"));
    cluster.wait_done(id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_clients_get_answers_whole_and_streamed_and_each_is_a_job() {
    let (cluster, key) = gateway_cluster(&["tokyo-01"]).await;

    let whole = run(&cluster, &key, MODEL, "openai_chat").await;
    assert_eq!(whole["finish_reason"], "stop", "{whole}");
    assert_eq!(whole["node"], "tokyo-01", "{whole}");
    let text = whole["text"].as_str().expect("text").to_string();
    assert!(!text.is_empty(), "{whole}");
    let done = job(&cluster, &whole).await;
    assert_eq!(done.state, JobState::Succeeded);
    assert!(
        done.route_reason.is_some(),
        "every gateway job records its route"
    );
    let detail = cluster.client().job(done.id).await.expect("detail");
    let output = detail
        .job
        .output
        .clone()
        .expect("the answer is stored once");
    assert_eq!(output.text, text, "the stored text is what the client got");
    assert_eq!(
        (output.usage.prompt_tokens, output.usage.completion_tokens),
        (
            whole["prompt_tokens"].as_u64().expect("prompt"),
            whole["completion_tokens"].as_u64().expect("completion")
        ),
        "usage as the client saw it"
    );

    let streamed = run(&cluster, &key, MODEL, "openai_chat_stream").await;
    assert_eq!(streamed["error"], Value::Null, "{streamed}");
    assert_eq!(streamed["finish_reason"], "stop", "{streamed}");
    assert_eq!(streamed["text"], text.as_str(), "the same answer, streamed");
    assert!(
        streamed["chunks"].as_u64().expect("chunks") > 2,
        "{streamed}"
    );
    assert!(streamed["usage"].is_object(), "include_usage: {streamed}");

    for scenario in ["ollama_chat", "ollama_generate"] {
        let answer = run(&cluster, &key, MODEL, scenario).await;
        assert_eq!(answer["done"], true, "{scenario}: {answer}");
        assert!(
            !answer["text"].as_str().unwrap_or("").is_empty(),
            "{scenario}: {answer}"
        );
    }
    for scenario in ["ollama_chat_stream", "ollama_generate_stream"] {
        let answer = run(&cluster, &key, MODEL, scenario).await;
        assert_eq!(answer["error"], Value::Null, "{scenario}: {answer}");
        assert_eq!(answer["done"], true, "{scenario}: {answer}");
        assert!(
            answer["chunks"].as_u64().expect("chunks") > 2,
            "{scenario}: {answer}"
        );
    }

    let models = run(&cluster, &key, MODEL, "openai_models").await;
    assert!(
        models["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .any(|m| m == MODEL),
        "{models}"
    );
    let tags = run(&cluster, &key, MODEL, "ollama_tags").await;
    assert!(
        tags["names"]
            .as_array()
            .expect("names")
            .iter()
            .any(|m| m == MODEL),
        "{tags}"
    );
    let jobs = all_jobs(&cluster).await;
    assert_eq!(jobs.len(), 6, "every answering request is a job: {jobs:?}");
    for job in &jobs {
        // A client has its answer a moment before the agent's report lands.
        assert_eq!(cluster.wait_done(job.id).await.state, JobState::Succeeded);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_come_in_each_apis_shape() {
    let (cluster, key) = gateway_cluster(&["tokyo-01"]).await;
    let bad_key = run(&cluster, &key, MODEL, "openai_bad_key").await;
    assert_eq!(bad_key["status"], 401, "{bad_key}");
    assert_eq!(bad_key["exception"], "AuthenticationError", "{bad_key}");
    let unknown = run(&cluster, &key, "no-such-model", "openai_unknown_model").await;
    assert_eq!(unknown["status"], 404, "{unknown}");
    assert_eq!(unknown["code"], "model_not_found", "{unknown}");
    let bad_field = run(&cluster, &key, MODEL, "openai_bad_field").await;
    assert_eq!(bad_field["status"], 400, "{bad_field}");
    assert_eq!(bad_field["param"], "functions", "{bad_field}");
    let ollama_key = run(&cluster, &key, MODEL, "ollama_bad_key").await;
    assert_eq!(ollama_key["status"], 401, "{ollama_key}");
    let ollama_unknown = run(&cluster, &key, "no-such-model", "ollama_unknown_model").await;
    assert_eq!(ollama_unknown["status"], 404, "{ollama_unknown}");
    assert!(
        ollama_unknown["message"]
            .as_str()
            .unwrap_or("")
            .contains("not found"),
        "{ollama_unknown}"
    );
    let jobs = all_jobs(&cluster).await;
    assert!(jobs.is_empty(), "a refused request leaves no job: {jobs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_before_the_first_token_is_retried_invisibly() {
    let (cluster, key) = gateway_cluster(&["tokyo-01"]).await;
    cluster.fake.update_behavior(|b| {
        b.fail = Some(FakeFailure {
            first_n: Some(1),
            ..FakeFailure::status(503)
        })
    });
    let streamed = run(&cluster, &key, MODEL, "openai_chat_stream").await;
    assert_eq!(streamed["error"], Value::Null, "{streamed}");
    assert_eq!(streamed["finish_reason"], "stop", "{streamed}");
    let done = job(&cluster, &streamed).await;
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(
        done.attempts, 2,
        "the first attempt failed with 503, the second answered"
    );
}

/// Starts a streaming client and returns once it has its first chunk.
pub(crate) async fn stream_until_first_chunk(
    cluster: &Cluster,
    key: &str,
    scenario: &str,
) -> tokio::process::Child {
    let mut child = client_command(cluster, key, MODEL, scenario)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the python client");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let first = tokio::time::timeout(PATIENCE, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("FIRST_CHUNK") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(first, Ok(true), "no first chunk\n{}", cluster.logs());
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

pub(crate) async fn leased_job(cluster: &Cluster) -> JobView {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let jobs = all_jobs(cluster).await;
        if let Some(job) = jobs.into_iter().find(|j| j.state == JobState::Leased) {
            return job;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no leased job\n{}",
            cluster.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_its_job_and_the_llm_call() {
    let (cluster, key) = gateway_cluster(&["tokyo-01"]).await;
    cluster.fake.update_behavior(|b| {
        b.tokens_per_second = 10.0;
        b.response_tokens = 600;
    });
    let child = stream_until_first_chunk(&cluster, &key, "openai_chat_stream_abandon").await;
    let jobs = all_jobs(&cluster).await;
    let leased = jobs.first().cloned().expect("the request's job");
    let output = child.wait_with_output().await.expect("client ends");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let done = cluster.wait_done(leased.id).await;
    assert_eq!(done.state, JobState::Cancelled, "the job is cancelled");
    cluster
        .wait_until("the LLM call is aborted", || async {
            cluster.fake.in_flight() == 0
        })
        .await;
}

/// Holds the LLM and sends one request to `url`, which stays in flight
/// (its call held at the fake) until the hold is released; returns the
/// HTTPS client and that request.
async fn occupy(
    cluster: &Cluster,
    key: &str,
    url: &str,
    body: &Value,
) -> (
    reqwest::Client,
    tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
) {
    cluster.fake.update_behavior(|b| b.hold = true);
    let http = kobo_client::http_client(Some(&std::fs::read(cluster.ca_path()).expect("ca")))
        .expect("http");
    let request = http.post(url).bearer_auth(key).json(body);
    let held = tokio::spawn(request.send());
    cluster
        .wait_until("the first request's call is held at the LLM", || async {
            cluster.fake.in_flight() == 1
        })
        .await;
    (http, held)
}

/// A cluster of one agent with one slot, started with `serve_args`; its
/// submit key, the chat route's URL and a chat body.
async fn one_slot(serve_args: &[&str]) -> (Cluster, String, String, Value) {
    let mut builder = Cluster::builder();
    for arg in serve_args {
        builder = builder.serve_arg(arg);
    }
    let mut cluster = builder.start().await;
    cluster
        .agent(AgentSpec::new("tokyo-01", &["general_query"]).max_workers(1))
        .await;
    let key = cluster
        .client()
        .apikey_create(
            "gateway-client",
            AccessRole::Submit,
            kobo_protocol::KeyPolicy::default(),
        )
        .await
        .expect("key")
        .key;
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]});
    let url = format!("{}/v1/chat/completions", cluster.url());
    (cluster, key, url, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_with_retry_after() {
    let (cluster, key, url, body) = one_slot(&["--gateway-queue-wait=1s"]).await;
    let (http, busy) = occupy(&cluster, &key, &url, &body).await;
    let refused = http
        .post(&url)
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .expect("answer");
    assert_eq!(refused.status(), 503);
    let retry_after = refused
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        retry_after.is_some_and(|s| s >= 1),
        "{:?}",
        refused.headers()
    );
    let error: Value = refused.json().await.expect("json");
    assert_eq!(error["error"]["type"], "server_error", "{error}");
    cluster.fake.update_behavior(|b| b.hold = false);
    let first = busy.await.expect("task").expect("first answer");
    assert_eq!(first.status(), 200, "the waiting request was served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_request_sees_its_place_in_the_queue_and_its_expected_start() {
    let (cluster, key, url, body) = one_slot(&[]).await;
    // One answered request, so that a finish rate exists.
    let (http, first) = occupy(&cluster, &key, &url, &body).await;
    cluster.fake.update_behavior(|b| b.hold = false);
    assert_eq!(first.await.expect("task").expect("answer").status(), 200);
    let (_, busy) = occupy(&cluster, &key, &url, &body).await;
    let send = |http: &reqwest::Client| http.post(&url).bearer_auth(&key).json(&body).send();
    let second = tokio::spawn(send(&http));
    cluster
        .wait_until("the second request is queued", || async {
            all_jobs(&cluster)
                .await
                .iter()
                .any(|j| j.state == JobState::Queued)
        })
        .await;
    let third = tokio::spawn(send(&http));
    cluster
        .wait_until("the third request is queued", || async {
            let jobs = all_jobs(&cluster).await;
            jobs.iter().filter(|j| j.state == JobState::Queued).count() == 2
        })
        .await;
    let queued: Vec<JobView> = all_jobs(&cluster)
        .await
        .into_iter()
        .filter(|j| j.state == JobState::Queued)
        .collect();
    // Newest first: the third request's job, then the second's.
    for (job, position) in queued.iter().zip([1, 0]) {
        let seen = cluster.client().job(job.id).await.expect("job").job;
        assert_eq!(seen.queue_position, Some(position), "{seen:?}");
        let start = seen.estimated_start_at.expect("an expected start");
        assert!(start >= seen.created_at, "{seen:?}");
    }
    cluster.fake.update_behavior(|b| b.hold = false);
    assert_eq!(busy.await.expect("task").expect("answer").status(), 200);
    for (answer, position) in [(second, "0"), (third, "1")] {
        let answer = answer.await.expect("task").expect("answer");
        assert_eq!(answer.status(), 200);
        let header = |name: &str| {
            answer
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        assert_eq!(header("x-kobo-queue-position").as_deref(), Some(position));
        let start: i64 = header("x-kobo-estimated-start")
            .and_then(|v| v.parse().ok())
            .expect("x-kobo-estimated-start, epoch milliseconds");
        assert!(start > 1_700_000_000_000, "{start}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_embeddings_tools_and_json_pass_through_both_apis() {
    let (cluster, key) = gateway_cluster(&["tokyo-01"]).await;

    let completion = run(&cluster, &key, MODEL, "openai_completions").await;
    assert_eq!(completion["finish_reason"], "stop", "{completion}");
    let streamed = run(&cluster, &key, MODEL, "openai_completions_stream").await;
    assert_eq!(streamed["error"], Value::Null, "{streamed}");
    assert_eq!(
        streamed["text"], completion["text"],
        "the same completion, streamed"
    );

    let embeddings = run(&cluster, &key, MODEL, "openai_embeddings").await;
    assert_eq!(embeddings["n"], 2, "{embeddings}");
    assert!(
        embeddings["dims"].as_u64().expect("dims") > 0,
        "{embeddings}"
    );
    let model = run(&cluster, &key, MODEL, "openai_model_get").await;
    assert_eq!(model["id"], MODEL, "{model}");

    for scenario in ["openai_tools", "openai_tools_stream"] {
        let tools = run(&cluster, &key, MODEL, scenario).await;
        assert_eq!(tools["finish_reason"], "tool_calls", "{scenario}: {tools}");
        let call = &tools["tool_calls"][0];
        assert_eq!(call["name"], "get_weather", "{scenario}: {tools}");
        let arguments: Value = serde_json::from_str(call["arguments"].as_str().expect("arguments"))
            .unwrap_or_else(|e| panic!("{scenario}: arguments are JSON ({e}): {tools}"));
        assert!(arguments["city"].is_string(), "{scenario}: {tools}");
    }
    let json_answer = run(&cluster, &key, MODEL, "openai_json").await;
    assert_eq!(json_answer["parsed_ok"], true, "{json_answer}");

    let embed = run(&cluster, &key, MODEL, "ollama_embed").await;
    assert!(embed["dims"].as_u64().expect("dims") > 0, "{embed}");
    let embedding = run(&cluster, &key, MODEL, "ollama_embeddings").await;
    assert_eq!(embedding["n"], 1, "{embedding}");
    let tools = run(&cluster, &key, MODEL, "ollama_tools").await;
    assert_eq!(tools["tool_calls"][0]["name"], "get_weather", "{tools}");
    assert!(
        tools["tool_calls"][0]["arguments"]["city"].is_string(),
        "{tools}"
    );
    let json_answer = run(&cluster, &key, MODEL, "ollama_json").await;
    assert_eq!(json_answer["parsed_ok"], true, "{json_answer}");
    let show = run(&cluster, &key, MODEL, "ollama_show").await;
    assert_eq!(show["ok"], true, "{show}");
    let version = run(&cluster, &key, MODEL, "ollama_version").await;
    assert!(version["version"].is_string(), "{version}");

    let jobs = all_jobs(&cluster).await;
    assert_eq!(jobs.len(), 10, "every answering call is a job: {jobs:?}");
    for job in &jobs {
        assert_eq!(cluster.wait_done(job.id).await.state, JobState::Succeeded);
    }
}

/// An answer's events with what differs per request (ids, times, durations)
/// taken out; the framing (event separators, `data: ` prefixes, line ends)
/// is kept as it is.
fn normalized_events(body: &str, separator: &str) -> Vec<String> {
    body.split(separator)
        .map(|event| {
            let (prefix, json) = match event.strip_prefix("data: ") {
                Some(rest) => ("data: ", rest),
                None => ("", event),
            };
            match serde_json::from_str::<Value>(json) {
                Ok(Value::Object(mut map)) => {
                    map.retain(|k, _| {
                        !(k == "id"
                            || k == "created"
                            || k == "created_at"
                            || k.ends_with("_duration"))
                    });
                    format!("{prefix}{}", Value::Object(map))
                }
                _ => event.to_string(),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relayed_stream_is_the_backends_byte_for_byte() {
    let (cluster, key) = gateway_cluster(&["tokyo-01"]).await;
    let http = kobo_client::http_client(Some(&std::fs::read(cluster.ca_path()).expect("ca")))
        .expect("http");
    let direct = reqwest::Client::new();
    let cases = [
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "stream": true, "stream_options": {"include_usage": true},
                   "messages": [{"role": "user", "content": "Write fizzbuzz in Rust"}]}),
            "\n\n",
        ),
        (
            "/api/chat",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "Write fizzbuzz in Rust"}]}),
            "\n",
        ),
        (
            "/api/generate",
            json!({"model": MODEL, "prompt": "Write fizzbuzz in Rust"}),
            "\n",
        ),
    ];
    for (path, body, separator) in cases {
        let relayed = http
            .post(format!("{}{path}", cluster.url()))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .expect("through kobo");
        assert_eq!(relayed.status(), 200, "{path}");
        let content_type = relayed.headers()[reqwest::header::CONTENT_TYPE].clone();
        assert!(relayed.headers().contains_key("x-kobo-job-id"), "{path}");
        let relayed = relayed.text().await.expect("relayed body");
        let original = direct
            .post(format!("{}{path}", cluster.fake.url()))
            .json(&body)
            .send()
            .await
            .expect("straight to the fake");
        assert_eq!(
            original.headers()[reqwest::header::CONTENT_TYPE],
            content_type,
            "{path}: the content type"
        );
        let original = original.text().await.expect("original body");
        assert_eq!(
            normalized_events(&relayed, separator),
            normalized_events(&original, separator),
            "{path}: the stream as relayed and as the backend sends it"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_stream_prints_the_tokens_of_a_gateway_job() {
    let (cluster, _key) = gateway_cluster(&["tokyo-01"]).await;
    let output = tokio::process::Command::new(kobo_tests::cluster::binary("kobo-coord"))
        .args([
            "submit",
            "--stream",
            "--model",
            MODEL,
            "Write fizzbuzz in Rust",
        ])
        .arg("--data-dir")
        .arg(&cluster.data_dir)
        .output()
        .await
        .expect("run kobo-coord submit --stream");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let jobs = all_jobs(&cluster).await;
    let job = jobs.first().expect("the stream was a job");
    assert!(stderr.contains(&format!("job {}", job.id)), "{stderr}");
    // The stream's end reaches the client before the agent's report lands.
    assert_eq!(cluster.wait_done(job.id).await.state, JobState::Succeeded);
    let detail = cluster.client().job(job.id).await.expect("detail");
    let text = detail.job.output.expect("stored answer").text;
    assert_eq!(
        stdout.trim_end(),
        text.trim_end(),
        "printed as it was answered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_bound_on_requests_in_flight_a_request_is_refused_at_once() {
    let mut cluster = Cluster::builder()
        .serve_arg("--gateway-max-requests=1")
        .start()
        .await;
    cluster
        .agent(AgentSpec::new("tokyo-01", &["general_query"]))
        .await;
    let key = cluster
        .client()
        .apikey_create(
            "gateway-client",
            AccessRole::Submit,
            kobo_protocol::KeyPolicy::default(),
        )
        .await
        .expect("key")
        .key;
    let body = json!({"model": MODEL, "prompt": "hi", "stream": false});
    let url = format!("{}/api/generate", cluster.url());
    let (http, first) = occupy(&cluster, &key, &url, &body).await;
    let refused = http
        .post(&url)
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .expect("answer");
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let error: Value = refused.json().await.expect("json");
    assert!(
        error["error"].as_str().unwrap_or("").contains("in flight"),
        "Ollama's shape, saying why: {error}"
    );
    assert_eq!(
        all_jobs(&cluster).await.len(),
        1,
        "the refused request made no job"
    );
    cluster.fake.update_behavior(|b| b.hold = false);
    let first = first.await.expect("task").expect("first answer");
    assert_eq!(first.status(), 200, "the request in flight was served");
}
