//! Gateway overhead: OpenAI-shaped `POST /v1/chat/completions` sent three
//! ways in one run, side by side, to the same fake LLM (a `fake-llm` process
//! at a fixed latency and token rate): straight to it (the baseline),
//! through kobo's gateway (a real `kobo-coord` and one real `kobo-agent` on
//! the `ollama` backend pointed at the fake; every request a durable job),
//! and through the LiteLLM proxy (installed by `scripts/bench-litellm-venv`
//! into a virtualenv). Per concurrency: non-streamed latency and streamed
//! time to first token, each minus the baseline's at the same concurrency;
//! relayed tokens/s; the coordinator's CPU per request.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::future::try_join_all;
use kobo_protocol::AccessRole;
use tokio::process::{Child, Command};

use super::Env;
use crate::coordinator::{Coordinator, Timings, binary, free_port};
use crate::real_agent::{RealAgent, RealAgentSpec};
use crate::report::{Bound, FigureResult, Metric};
use crate::stats;
use crate::system;

/// The fake LLM: delay before the first byte, streaming pace, reply length.
const LLM_LATENCY_MS: u64 = 20;
const TOKENS_PER_SECOND: f64 = 2000.0;
const RESPONSE_TOKENS: u32 = 64;
const MODEL: &str = "qwen2.5:0.5b";
/// The job kind of gateway requests (header `x-kobo-kind`) and the agent's capability.
const KIND: &str = "bench-gateway";
/// Concurrency levels and requests per level (per mode: non-streamed, streamed).
const LEVELS: &[(usize, usize)] = &[(1, 300), (64, 2000), (256, 2000)];
const LEVELS_QUICK: &[(usize, usize)] = &[(1, 20), (8, 48)];
/// Agent slots: more than the highest concurrency never waits for a slot.
const AGENT_WORKERS: u32 = 256;
/// Longest one request may take.
const REQUEST_LIMIT: Duration = Duration::from_secs(60);
/// Longest the fake LLM and LiteLLM may take to answer after start.
const FAKE_PATIENCE: Duration = Duration::from_secs(10);
const LITELLM_PATIENCE: Duration = Duration::from_secs(120);
const LITELLM_PATIENCE_QUICK: Duration = Duration::from_secs(30);
/// Longest installing LiteLLM may take.
const INSTALL_PATIENCE: Duration = Duration::from_secs(900);
/// Targets (issue 13).
const ADDED_P50_MS: f64 = 2.0;
const TTFT_ADDED_P50_MS: f64 = 2.0;
const TOKENS_PER_CORE_SECOND: f64 = 20_000.0;

/// A path requests take.
#[derive(Debug, Clone)]
struct Route {
    name: &'static str,
    /// Base URL, e.g. `http://127.0.0.1:11434`.
    base: String,
    ca_pem: Option<Vec<u8>>,
    api_key: Option<String>,
    headers: Vec<(&'static str, String)>,
}

/// What one path measured at one concurrency.
#[derive(Debug, Default, Clone)]
struct Measured {
    latency: Vec<Duration>,
    ttft: Vec<Duration>,
    tokens: u64,
    stream_wall: Duration,
    /// Coordinator CPU seconds over both modes (kobo only).
    coord_cpu: Option<(f64, f64)>,
    /// Coordinator CPU seconds of the streamed round (kobo only).
    stream_cpu_s: Option<f64>,
}

pub(crate) async fn run(env: &Env) -> anyhow::Result<FigureResult> {
    let levels = env.pick(LEVELS, LEVELS_QUICK);
    let dir = env.dir("gateway");
    std::fs::create_dir_all(&dir)?;

    let fake_port = free_port()?;
    let fake_url = format!("http://127.0.0.1:{fake_port}");
    let _fake = start_fake(&dir, fake_port, &fake_url).await?;

    let mut coordinator = Coordinator::start(&dir.join("coordinator"), Timings::default()).await?;
    let admin = coordinator.admin()?;
    let key = admin
        .apikey_create(
            "bench-gateway",
            AccessRole::Submit,
            kobo_protocol::KeyPolicy::default(),
        )
        .await?
        .key;
    let mut agent = RealAgent::join(
        &coordinator,
        &admin,
        RealAgentSpec {
            node_id: "gateway-agent",
            kind: KIND,
            max_workers: AGENT_WORKERS,
            sim_latency: Duration::ZERO,
            llm_endpoint: Some(&fake_url),
        },
        &dir.join("agents"),
    )
    .await?;

    let (mut litellm, litellm_reason) = match start_litellm(env, &dir, fake_port).await {
        Ok(proxy) => (Some(proxy), None),
        Err(err) => {
            let reason = format!("{err:#}");
            eprintln!("kobo-bench:   gateway: LiteLLM unavailable ({reason})");
            (None, Some(reason))
        }
    };

    let baseline = Route {
        name: "baseline",
        base: fake_url.clone(),
        ca_pem: None,
        api_key: None,
        headers: Vec::new(),
    };
    let kobo = Route {
        name: "kobo",
        base: coordinator.url.clone(),
        ca_pem: Some(coordinator.ca_pem.clone()),
        api_key: Some(key),
        headers: vec![("x-kobo-kind", KIND.to_string())],
    };
    let lite = litellm.as_ref().map(|proxy| Route {
        name: "litellm",
        base: proxy.url.clone(),
        ca_pem: None,
        api_key: Some(proxy.master_key.clone()),
        headers: Vec::new(),
    });

    let coord_pid = coordinator.pid()?;
    let mut runs = Vec::new();
    for _ in 0..env.repeats {
        let mut metrics = Vec::new();
        for &(concurrency, n) in levels {
            let base = measure(&baseline, concurrency, n, None).await?;
            let k = measure(&kobo, concurrency, n, Some(coord_pid)).await?;
            // LiteLLM failing (e.g. resetting connections under load) makes
            // its rows "unavailable", not the figure a failure.
            let mut unavailable = litellm_reason
                .clone()
                .unwrap_or_else(|| "not started".into());
            let l = match &lite {
                Some(path) => match measure(path, concurrency, n, None).await {
                    Ok(m) => Some(m),
                    Err(err) => {
                        unavailable = format!("failed at c={concurrency}: {err:#}");
                        eprintln!("kobo-bench:   gateway: LiteLLM {unavailable}");
                        None
                    }
                },
                None => None,
            };
            level_metrics(
                &mut metrics,
                concurrency,
                &base,
                &k,
                l.as_ref(),
                &unavailable,
            );
        }
        runs.push(metrics);
    }

    agent.stop().await.ok();
    if let Some(proxy) = litellm.as_mut() {
        proxy.stop().await;
    }
    coordinator.stop().await?;

    let levels_text = levels
        .iter()
        .map(|(c, n)| format!("c={c}: {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let litellm_text = match (&litellm, &litellm_reason) {
        (Some(proxy), _) => format!(
            "LiteLLM {} (`litellm --config`, one worker, no database, pointed at the fake as `openai/{MODEL}`)",
            proxy.version
        ),
        (None, Some(reason)) => format!("LiteLLM unavailable ({reason}); its rows are missing"),
        (None, None) => "LiteLLM unavailable".into(),
    };
    Ok(FigureResult {
        id: "gateway",
        title: "8. Gateway overhead",
        method: format!(
            "A `fake-llm` process at {LLM_LATENCY_MS} ms to first byte, {TOKENS_PER_SECOND} tokens/s, {RESPONSE_TOKENS} tokens per reply; OpenAI `POST /v1/chat/completions` (model `{MODEL}`) sent straight to it (baseline), through kobo's gateway (a real `kobo-coord`, HTTPS trusting its CA, a submit-role key; one real `kobo-agent` on the `ollama` backend with {AGENT_WORKERS} slots; every request a durable job) and through {litellm_text}. Per concurrency (requests per mode: {levels_text}; HTTP/1.1, one connection per concurrent client, one warm-up round first): non-streamed latency and streamed time to first content token, each path's percentile minus the baseline's at the same concurrency; relayed tokens/s = streamed content tokens / wall time of the streamed round; coordinator CPU (user + system from /proc) over both rounds per request, and streamed tokens per coordinator CPU-second."
        ),
        runs,
    })
}

/// The metrics of one concurrency level.
fn level_metrics(
    out: &mut Vec<Metric>,
    c: usize,
    base: &Measured,
    kobo: &Measured,
    lite: Option<&Measured>,
    unavailable: &str,
) {
    let lat = |m: &Measured| stats::latency(&m.latency);
    let ttft = |m: &Measured| stats::latency(&m.ttft);
    let (bl, bt) = (lat(base), ttft(base));
    let (kl, kt) = (lat(kobo), ttft(kobo));
    let lite_lat = lite.map(lat);
    let lite_ttft = lite.map(ttft);
    let added_p50 = |l: stats::Latency| l.p50_ms - bl.p50_ms;
    let added_p99 = |l: stats::Latency| l.p99_ms - bl.p99_ms;

    out.push(Metric::new(
        format!("c{c}_baseline_p50_ms"),
        format!("c={c} baseline latency p50 (straight to the fake LLM)"),
        "ms",
        bl.p50_ms,
    ));
    let mut p50 = Metric::new(
        format!("c{c}_kobo_added_p50_ms"),
        format!("c={c} kobo added latency p50"),
        "ms",
        added_p50(kl),
    )
    .target(Bound::AtMost(ADDED_P50_MS));
    let mut p99 = Metric::new(
        format!("c{c}_kobo_added_p99_ms"),
        format!("c={c} kobo added latency p99"),
        "ms",
        added_p99(kl),
    );
    if let Some(ll) = lite_lat {
        // The stricter of the two bounds on p50; p99 bounded by LiteLLM's.
        let third = added_p50(ll) / 3.0;
        if third < ADDED_P50_MS {
            p50.target = Some(Bound::AtMost(third.max(0.0)));
            p50.label = format!("c={c} kobo added latency p50 (target: ≤ ⅓ of LiteLLM's)");
        }
        p99 = p99.target(Bound::AtMost(added_p99(ll).max(0.0)));
        p99.label = format!("c={c} kobo added latency p99 (target: ≤ LiteLLM's)");
    }
    out.push(p50);
    out.push(p99);
    out.push(
        Metric::new(
            format!("c{c}_kobo_ttft_added_p50_ms"),
            format!("c={c} kobo streamed TTFT added p50"),
            "ms",
            kt.p50_ms - bt.p50_ms,
        )
        .target(Bound::AtMost(TTFT_ADDED_P50_MS)),
    );
    out.push(Metric::new(
        format!("c{c}_kobo_ttft_added_p99_ms"),
        format!("c={c} kobo streamed TTFT added p99"),
        "ms",
        kt.p99_ms - bt.p99_ms,
    ));
    out.push(Metric::new(
        format!("c{c}_kobo_tokens_per_s"),
        format!("c={c} kobo relayed tokens/s (streamed)"),
        "tokens/s",
        tokens_per_s(kobo),
    ));
    if let Some((cpu, requests)) = kobo.coord_cpu {
        out.push(Metric::new(
            format!("c{c}_kobo_coord_cpu_ms_per_request"),
            format!("c={c} kobo coordinator CPU per request"),
            "ms",
            cpu * 1000.0 / requests,
        ));
    }
    if let Some(stream_cpu) = kobo.stream_cpu() {
        out.push(
            Metric::new(
                format!("c{c}_kobo_tokens_per_core_s"),
                format!("c={c} kobo relayed tokens per coordinator CPU-second"),
                "tokens/core-s",
                kobo.tokens as f64 / stream_cpu,
            )
            .target(Bound::AtLeast(TOKENS_PER_CORE_SECOND)),
        );
    }
    match (lite, lite_lat, lite_ttft) {
        (Some(lite), Some(ll), Some(lt)) => {
            out.push(Metric::new(
                format!("c{c}_litellm_added_p50_ms"),
                format!("c={c} LiteLLM added latency p50"),
                "ms",
                added_p50(ll),
            ));
            out.push(Metric::new(
                format!("c{c}_litellm_added_p99_ms"),
                format!("c={c} LiteLLM added latency p99"),
                "ms",
                added_p99(ll),
            ));
            out.push(Metric::new(
                format!("c{c}_litellm_ttft_added_p50_ms"),
                format!("c={c} LiteLLM streamed TTFT added p50"),
                "ms",
                lt.p50_ms - bt.p50_ms,
            ));
            out.push(Metric::new(
                format!("c{c}_litellm_ttft_added_p99_ms"),
                format!("c={c} LiteLLM streamed TTFT added p99"),
                "ms",
                lt.p99_ms - bt.p99_ms,
            ));
            out.push(Metric::new(
                format!("c{c}_litellm_tokens_per_s"),
                format!("c={c} LiteLLM relayed tokens/s (streamed)"),
                "tokens/s",
                tokens_per_s(lite),
            ));
        }
        _ => out.push(Metric::new(
            format!("c{c}_litellm_added_p50_ms"),
            format!("c={c} LiteLLM: unavailable ({})", short(unavailable)),
            "ms",
            f64::NAN,
        )),
    }
}

/// A reason short enough for a table cell.
fn short(reason: &str) -> String {
    let line = reason.lines().next().unwrap_or("").replace('|', "/");
    match line.char_indices().nth(100) {
        Some((idx, _)) => format!("{}…", &line[..idx]),
        None => line,
    }
}

fn tokens_per_s(m: &Measured) -> f64 {
    m.tokens as f64 / m.stream_wall.as_secs_f64().max(1e-9)
}

impl Measured {
    /// Coordinator CPU seconds of the streamed round only.
    fn stream_cpu(&self) -> Option<f64> {
        self.stream_cpu_s.filter(|s| *s > 0.0)
    }
}

/// One path at one concurrency: a warm-up round, `n` non-streamed
/// requests, then `n` streamed ones, `concurrency` at a time.
async fn measure(
    path: &Route,
    concurrency: usize,
    n: usize,
    coord_pid: Option<u32>,
) -> anyhow::Result<Measured> {
    let client = http_client(path, concurrency)?;
    let path = Arc::new(path.clone());
    // Warm-up: one request per connection.
    round(&client, &path, concurrency, concurrency, false).await?;
    let cpu = |pid: Option<u32>| pid.map(system::cpu_seconds).transpose();
    let cpu0 = cpu(coord_pid)?;
    let plain = round(&client, &path, concurrency, n, false).await?;
    let cpu1 = cpu(coord_pid)?;
    let started = Instant::now();
    let streamed = round(&client, &path, concurrency, n, true).await?;
    let stream_wall = started.elapsed();
    let cpu2 = cpu(coord_pid)?;
    let mut m = Measured {
        stream_wall,
        ..Measured::default()
    };
    for s in plain {
        m.latency.push(s.total);
    }
    for s in streamed {
        m.ttft
            .push(s.first_token.context("a streamed reply had no token")?);
        m.tokens += s.tokens;
    }
    if let (Some(a), Some(b), Some(c)) = (cpu0, cpu1, cpu2) {
        m.coord_cpu = Some((c - a, (2 * n) as f64));
        m.stream_cpu_s = Some(c - b);
    }
    eprintln!(
        "kobo-bench:   gateway {} c={concurrency}: p50 {:.2} ms, ttft p50 {:.2} ms, {:.0} tokens/s",
        path.name,
        stats::percentile_ms(&m.latency, 0.5),
        stats::percentile_ms(&m.ttft, 0.5),
        tokens_per_s(&m)
    );
    Ok(m)
}

fn http_client(path: &Route, concurrency: usize) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(concurrency)
        .timeout(REQUEST_LIMIT);
    if let Some(pem) = &path.ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem).context("parsing the CA")?;
        builder = builder.tls_certs_only(certs);
    }
    builder.build().context("building the HTTP client")
}

/// One request's timings.
struct Sample {
    total: Duration,
    first_token: Option<Duration>,
    tokens: u64,
}

/// `n` requests, `concurrency` at a time.
async fn round(
    client: &reqwest::Client,
    path: &Arc<Route>,
    concurrency: usize,
    n: usize,
    stream: bool,
) -> anyhow::Result<Vec<Sample>> {
    let next = Arc::new(AtomicUsize::new(0));
    let per_worker = try_join_all((0..concurrency).map(|_| {
        let client = client.clone();
        let path = path.clone();
        let next = next.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                samples.push(request(&client, &path, stream).await?);
            }
            anyhow::Ok(samples)
        })
    }))
    .await?;
    let mut all = Vec::with_capacity(n);
    for samples in per_worker {
        all.extend(samples?);
    }
    Ok(all)
}

async fn request(client: &reqwest::Client, path: &Route, stream: bool) -> anyhow::Result<Sample> {
    let mut body = serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say something."}],
        "stream": stream,
    });
    if stream {
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    let mut req = client
        .post(format!("{}/v1/chat/completions", path.base))
        .json(&body);
    if let Some(key) = &path.api_key {
        req = req.bearer_auth(key);
    }
    for (name, value) in &path.headers {
        req = req.header(*name, value);
    }
    let sent = Instant::now();
    let mut response = req
        .send()
        .await
        .with_context(|| format!("{}: sending", path.name))?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        bail!("{}: {status}: {}", path.name, text.trim());
    }
    if !stream {
        let bytes = response.bytes().await?;
        let total = sent.elapsed();
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: the reply is not JSON", path.name))?;
        if value["choices"][0]["message"]["content"].as_str().is_none() {
            bail!("{}: a reply without content: {value}", path.name);
        }
        return Ok(Sample {
            total,
            first_token: None,
            tokens: 0,
        });
    }
    let mut pending = String::new();
    let mut first_token = None;
    let mut events = 0u64;
    let mut usage = None;
    let mut done = false;
    while let Some(chunk) = response.chunk().await? {
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            for line in event.lines() {
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim();
                if data == "[DONE]" {
                    done = true;
                    continue;
                }
                let Ok(value) = serde_json::from_str::<serde_json::Value>(data) else {
                    continue;
                };
                if let Some(n) = value["usage"]["completion_tokens"].as_u64() {
                    usage = Some(n);
                }
                let content = value["choices"][0]["delta"]["content"].as_str();
                if content.is_some_and(|c| !c.is_empty()) {
                    events += 1;
                    first_token.get_or_insert_with(|| sent.elapsed());
                }
            }
        }
    }
    if !done {
        bail!("{}: a stream ended without [DONE]", path.name);
    }
    Ok(Sample {
        total: sent.elapsed(),
        first_token,
        tokens: usage.unwrap_or(events).max(events),
    })
}

/// A child process killed when dropped.
struct Process {
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn start_fake(dir: &Path, port: u16, url: &str) -> anyhow::Result<Process> {
    let log = std::fs::File::create(dir.join("fake-llm.log"))?;
    let child = Command::new(binary("fake-llm")?)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--latency-ms")
        .arg(LLM_LATENCY_MS.to_string())
        .arg("--tokens-per-second")
        .arg(TOKENS_PER_SECOND.to_string())
        .arg("--tokens")
        .arg(RESPONSE_TOKENS.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting fake-llm")?;
    let mut process = Process { child };
    wait_ready(
        &mut process.child,
        &format!("{url}/v1/models"),
        FAKE_PATIENCE,
    )
    .await
    .context("fake-llm")?;
    Ok(process)
}

/// Polls `url` until it answers 2xx, failing when `child` exits first.
async fn wait_ready(child: &mut Child, url: &str, patience: Duration) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("exited at start ({status})");
        }
        if let Ok(response) = http.get(url).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        if started.elapsed() > patience {
            bail!("{url} did not answer within {patience:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A running LiteLLM proxy.
struct LiteLlm {
    process: Option<Process>,
    url: String,
    version: String,
    master_key: String,
}

impl LiteLlm {
    async fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.child.start_kill();
            let _ = process.child.wait().await;
        }
    }
}

/// Where the LiteLLM virtualenv is: `$KOBO_BENCH_LITELLM_VENV`, else
/// `target/litellm-venv` (the default of `scripts/bench-litellm-venv`).
fn litellm_venv() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("KOBO_BENCH_LITELLM_VENV") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/kobo-bench → target/litellm-venv
    let target = exe
        .parent()
        .and_then(Path::parent)
        .context("kobo-bench is not in a target directory")?;
    Ok(target.join("litellm-venv"))
}

fn install_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench-litellm-venv")
}

async fn start_litellm(env: &Env, dir: &Path, fake_port: u16) -> anyhow::Result<LiteLlm> {
    let venv = litellm_venv()?;
    let exe = venv.join("bin").join("litellm");
    if !exe.exists() {
        if env.quick {
            bail!(
                "--quick does not install it; run scripts/bench-litellm-venv {}",
                venv.display()
            );
        }
        let script = install_script();
        eprintln!(
            "kobo-bench:   gateway: installing LiteLLM with {} …",
            script.display()
        );
        let log = dir.join("litellm-install.log");
        let out = tokio::time::timeout(
            INSTALL_PATIENCE,
            Command::new(&script)
                .arg(&venv)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .output(),
        )
        .await
        .context("installing took too long")?
        .with_context(|| format!("running {}", script.display()))?;
        let _ = std::fs::write(&log, [&out.stdout[..], &out.stderr[..]].concat());
        if !out.status.success() || !exe.exists() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last = stderr.lines().last().unwrap_or("").trim().to_string();
            bail!("installing failed ({}): {last}", out.status);
        }
    }
    let version = std::process::Command::new(venv.join("bin").join("python"))
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('litellm'))",
        ])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if version == "1.107.0" {
        bail!("litellm 1.107.0 is a pulled, compromised release; not running it");
    }
    let config = dir.join("litellm.yaml");
    std::fs::write(
        &config,
        format!(
            "model_list:\n  - model_name: \"{MODEL}\"\n    litellm_params:\n      model: \"openai/{MODEL}\"\n      api_base: \"http://127.0.0.1:{fake_port}/v1\"\n      api_key: \"fake\"\n"
        ),
    )?;
    let port = free_port()?;
    // LiteLLM refuses to start without a master key; clients then send it
    // (as kobo's clients send their API key).
    let master_key = format!("sk-bench-{:032x}", rand::random::<u128>());
    let log = std::fs::File::create(dir.join("litellm.log"))?;
    let child = Command::new(&exe)
        .arg("--config")
        .arg(&config)
        .args(["--host", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .current_dir(dir)
        .env("LITELLM_MASTER_KEY", &master_key)
        .env("LITELLM_LOG", "ERROR")
        .env("LITELLM_TELEMETRY", "False")
        .env("NO_DOCS", "True")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting litellm")?;
    let mut process = Process { child };
    let url = format!("http://127.0.0.1:{port}");
    let patience = env.pick(LITELLM_PATIENCE, LITELLM_PATIENCE_QUICK);
    if let Err(err) = wait_ready(
        &mut process.child,
        &format!("{url}/health/liveliness"),
        patience,
    )
    .await
    {
        let text = std::fs::read_to_string(dir.join("litellm.log")).unwrap_or_default();
        let last = text
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("")
            .to_string();
        bail!("{err:#}; last log line: {last}");
    }
    Ok(LiteLlm {
        process: Some(process),
        url,
        version,
        master_key,
    })
}
