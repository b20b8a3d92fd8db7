//! `GET /metrics` parses as the OpenMetrics/Prometheus text format (a strict
//! parser below checks names, labels, types, histogram buckets and the
//! `# EOF` end) and its numbers move as jobs run; `kobo-coord status` prints
//! the cluster on one screen.

use kobo_protocol::{AccessRole, JobState};
use kobo_tests::cluster::{AgentSpec, Cluster, binary};
use kobo_tests::fake_llm::{FakeBehavior, FakeFailure};
use reqwest::StatusCode;
use std::collections::BTreeMap;

use kobo_tests::cluster::PATIENCE;

fn unix_now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    i64::try_from(since.as_millis()).expect("in range")
}

/// One sample line: metric name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A metric family: `# TYPE`, `# HELP` and its samples.
#[derive(Debug, Default)]
struct MetricFamily {
    kind: String,
    help: Option<String>,
    samples: Vec<Sample>,
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        other => other
            .parse()
            .map_err(|e| format!("bad value {other:?}: {e}")),
    }
}

/// `a="x",b="y\"z"` → labels.
fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(labels);
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            name.push(c);
            chars.next();
        }
        if !valid_name(&name) || name.contains(':') {
            return Err(format!("bad label name {name:?}"));
        }
        if chars.next() != Some('=') || chars.next() != Some('"') {
            return Err(format!("label {name} is not name=\"value\""));
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some('"') => value.push('"'),
                    Some('\\') => value.push('\\'),
                    other => return Err(format!("bad escape {other:?} in label {name}")),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => return Err(format!("unterminated value of label {name}")),
            }
        }
        if labels.insert(name.clone(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        match chars.next() {
            Some(',') | None => {}
            Some(c) => return Err(format!("unexpected {c:?} after label {name}")),
        }
    }
}

/// Which family a sample belongs to, by the suffixes its type allows.
fn family_of<'a>(families: &'a BTreeMap<String, MetricFamily>, sample: &str) -> Option<&'a str> {
    families.iter().find_map(|(name, family)| {
        let suffix = sample.strip_prefix(name.as_str())?;
        let allowed: &[&str] = match family.kind.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_count", "_sum", "_created"],
            "summary" => &["", "_count", "_sum", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        allowed.contains(&suffix).then_some(name.as_str())
    })
}

/// Parses the text exposition strictly; any deviation is an error.
fn parse_exposition(text: &str) -> Result<BTreeMap<String, MetricFamily>, String> {
    let mut families: BTreeMap<String, MetricFamily> = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    if lines.last() != Some(&"# EOF") {
        return Err("the exposition does not end with # EOF".into());
    }
    let mut series = std::collections::HashSet::new();
    for (idx, line) in lines.iter().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line}", idx + 1);
        if *line == "# EOF" {
            if idx + 1 != lines.len() {
                return Err(at("# EOF before the end".into()));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (keyword, name, tail) = (parts.next(), parts.next(), parts.next());
            let name = name.ok_or_else(|| at("comment without a metric name".into()))?;
            if !valid_name(name) {
                return Err(at(format!("bad metric name {name:?}")));
            }
            let family = families.entry(name.to_string()).or_default();
            match keyword {
                Some("TYPE") => {
                    let kind = tail.unwrap_or("");
                    if ![
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "info",
                        "unknown",
                        "stateset",
                        "gaugehistogram",
                    ]
                    .contains(&kind)
                    {
                        return Err(at(format!("unknown type {kind:?}")));
                    }
                    family.kind = kind.to_string();
                }
                Some("HELP") => family.help = Some(tail.unwrap_or("").to_string()),
                Some("UNIT") => {}
                other => return Err(at(format!("unknown comment {other:?}"))),
            }
            continue;
        }
        let (name_labels, value) = match line.rfind('}') {
            Some(end) => (&line[..=end], line[end + 1..].trim()),
            None => line
                .split_once(' ')
                .ok_or_else(|| at("sample without value".into()))?,
        };
        let value = value.split(' ').next().unwrap_or("");
        let (name, labels) = match name_labels.split_once('{') {
            Some((name, labels)) => (
                name,
                parse_labels(labels.strip_suffix('}').unwrap_or(labels)).map_err(at)?,
            ),
            None => (name_labels, BTreeMap::new()),
        };
        if !valid_name(name) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        let value = parse_value(value).map_err(at)?;
        if !series.insert(format!("{name}{labels:?}")) {
            return Err(at("the same series twice".into()));
        }
        let family = family_of(&families, name)
            .ok_or_else(|| at(format!("sample {name} of no declared family")))?
            .to_string();
        if let Some(family) = families.get_mut(&family) {
            family.samples.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
        }
    }
    for (name, family) in &families {
        if family.kind.is_empty() {
            return Err(format!("{name} has no # TYPE"));
        }
        if family.help.is_none() {
            return Err(format!("{name} has no # HELP"));
        }
        if family.kind == "histogram" {
            check_histogram(name, family)?;
        }
        if family.kind == "counter" && family.samples.iter().any(|s| s.value < 0.0) {
            return Err(format!("counter {name} is negative"));
        }
    }
    Ok(families)
}

/// Buckets are cumulative in `le` order and end at `+Inf` = `_count`.
fn check_histogram(name: &str, family: &MetricFamily) -> Result<(), String> {
    let mut by_series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts: BTreeMap<String, f64> = BTreeMap::new();
    for sample in &family.samples {
        let mut labels = sample.labels.clone();
        let le = labels.remove("le");
        let key = format!("{labels:?}");
        if sample.name.ends_with("_bucket") {
            let le = parse_value(&le.ok_or(format!("{name} bucket without le"))?)?;
            by_series.entry(key).or_default().push((le, sample.value));
        } else if sample.name.ends_with("_count") {
            counts.insert(key, sample.value);
        }
    }
    for (key, buckets) in &by_series {
        let mut sorted = buckets.clone();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        if sorted.windows(2).any(|w| w[1].1 < w[0].1) {
            return Err(format!("{name}{key}: buckets are not cumulative"));
        }
        let last = sorted.last().ok_or(format!("{name}{key}: no bucket"))?;
        if last.0 != f64::INFINITY {
            return Err(format!("{name}{key}: no +Inf bucket"));
        }
        if counts.get(key) != Some(&last.1) {
            return Err(format!("{name}{key}: _count differs from the +Inf bucket"));
        }
    }
    Ok(())
}

/// The value of the sample `name` whose labels include `labels`; 0 if none.
fn value(families: &BTreeMap<String, MetricFamily>, name: &str, labels: &[(&str, &str)]) -> f64 {
    families
        .values()
        .flat_map(|f| &f.samples)
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

async fn scrape(http: &reqwest::Client, url: &str, key: &str) -> BTreeMap<String, MetricFamily> {
    let response = http
        .get(format!("{url}/metrics"))
        .bearer_auth(key)
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await.expect("body");
    parse_exposition(&text).unwrap_or_else(|err| panic!("/metrics does not parse: {err}\n{text}"))
}

#[test]
fn the_parser_refuses_what_prometheus_would() {
    let good = "# HELP a x\n# TYPE a counter\na_total{k=\"v\\\"w\"} 3\n# EOF";
    let parsed = parse_exposition(good).expect("good");
    assert_eq!(parsed["a"].samples[0].labels["k"], "v\"w");
    assert!(
        parse_exposition("# TYPE a counter\n# HELP a x\na_total 1").is_err(),
        "no # EOF"
    );
    assert!(
        parse_exposition("# TYPE a gauge\n# HELP a x\nb 1\n# EOF").is_err(),
        "undeclared"
    );
    assert!(parse_exposition("# TYPE a gauge\n# HELP a x\na{1k=\"v\"} 1\n# EOF").is_err());
    let bad_histogram = "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 5\nh_bucket{le=\"+Inf\"} 4\nh_count 4\nh_sum 1\n# EOF";
    assert!(parse_exposition(bad_histogram).is_err(), "not cumulative");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_as_jobs_run() {
    // A little LLM latency, so tokens per second are measurable.
    let mut cluster = Cluster::builder()
        .max_attempts(1)
        .fake(FakeBehavior {
            latency_ms: 20,
            ..FakeBehavior::default()
        })
        .start()
        .await;
    cluster
        .agent(AgentSpec::new("tokyo-01", &["general_query"]).max_workers(3))
        .await;
    let (_, key) = cluster.client_with_role(AccessRole::Read).await;
    let ca = std::fs::read(cluster.ca_path()).expect("ca");
    let http = kobo_client::http_client(Some(&ca)).expect("client");

    let anonymous = http
        .get(format!("{}/metrics", cluster.url()))
        .send()
        .await
        .expect("scrape without a key");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    let before = scrape(&http, &cluster.url(), &key).await;
    assert_eq!(value(&before, "kobo_nodes", &[("status", "active")]), 1.0);
    assert_eq!(
        value(&before, "kobo_node_max_workers", &[("node_id", "tokyo-01")]),
        3.0
    );
    let succeeded = [("kind", "general_query"), ("state", "succeeded")];
    assert_eq!(value(&before, "kobo_jobs_finished_total", &succeeded), 0.0);

    let n_ok = 4;
    let mut ids = Vec::new();
    for idx in 0..n_ok {
        ids.push(
            cluster
                .submit_prompt("general_query", &format!("metrics {idx}"))
                .await,
        );
    }
    for id in &ids {
        assert_eq!(cluster.wait_done(*id).await.state, JobState::Succeeded);
    }
    cluster
        .fake
        .update_behavior(|b| b.fail = Some(FakeFailure::status(500)));
    let failed = cluster.submit_prompt("general_query", "broken").await;
    assert_eq!(cluster.wait_done(failed).await.state, JobState::Dead);
    // A job no node can run waits in the queue.
    cluster.submit_prompt("translation", "waits").await;
    // Heartbeats carry the node's metrics, and from the second on the
    // round trip of the one before.
    cluster
        .wait_until("heartbeats with metrics and a round trip", || async {
            let families = scrape(&http, &cluster.url(), &key).await;
            value(
                &families,
                "kobo_node_memory_total_bytes",
                &[("node_id", "tokyo-01")],
            ) > 0.0
                && families.contains_key("kobo_node_round_trip_seconds")
        })
        .await;

    let after = scrape(&http, &cluster.url(), &key).await;
    for family in [
        "kobo_jobs",
        "kobo_jobs_submitted",
        "kobo_jobs_finished",
        "kobo_job_duration_seconds",
        "kobo_job_pickup_latency_seconds",
        "kobo_queue_depth",
        "kobo_nodes",
        "kobo_node_cpu_ratio",
        "kobo_node_memory_used_bytes",
        "kobo_node_running_jobs",
        "kobo_node_round_trip_seconds",
        "kobo_node_tokens_per_second",
    ] {
        assert!(after.contains_key(family), "{family} is declared");
    }
    assert_eq!(after["kobo_job_duration_seconds"].kind, "histogram");
    assert_eq!(after["kobo_jobs_finished"].kind, "counter");
    assert_eq!(
        value(&after, "kobo_jobs_finished_total", &succeeded),
        n_ok as f64
    );
    assert_eq!(
        value(
            &after,
            "kobo_jobs_finished_total",
            &[("kind", "general_query"), ("state", "dead")]
        ),
        1.0
    );
    assert_eq!(
        value(&after, "kobo_jobs", &succeeded),
        n_ok as f64,
        "kobo_jobs{{state=succeeded}}"
    );
    assert_eq!(
        value(
            &after,
            "kobo_jobs_submitted_total",
            &[("kind", "general_query")]
        ),
        n_ok as f64 + 1.0
    );
    assert_eq!(
        value(&after, "kobo_queue_depth", &[("kind", "translation")]),
        1.0
    );
    let durations = value(
        &after,
        "kobo_job_duration_seconds_count",
        &[("kind", "general_query"), ("outcome", "succeeded")],
    );
    assert_eq!(
        durations, n_ok as f64,
        "one duration per successful attempt"
    );
    assert_eq!(
        value(
            &after,
            "kobo_job_duration_seconds_count",
            &[("kind", "general_query"), ("outcome", "failed")]
        ),
        1.0
    );
    assert!(
        value(
            &after,
            "kobo_job_duration_seconds_sum",
            &[("kind", "general_query"), ("outcome", "succeeded")]
        ) > 0.0
    );
    assert_eq!(
        value(
            &after,
            "kobo_job_pickup_latency_seconds_count",
            &[("kind", "general_query")]
        ),
        n_ok as f64 + 1.0,
        "one pickup per lease"
    );
    let node = [("node_id", "tokyo-01")];
    assert_eq!(
        value(&after, "kobo_node_jobs_succeeded_total", &node),
        n_ok as f64
    );
    assert_eq!(value(&after, "kobo_node_jobs_failed_total", &node), 1.0);
    let cpu = value(&after, "kobo_node_cpu_ratio", &node);
    assert!((0.0..=1.0).contains(&cpu), "cpu ratio {cpu}");
    assert!(value(&after, "kobo_node_tokens_per_second", &node) > 0.0);
    assert!(value(&after, "kobo_node_last_heartbeat_timestamp_seconds", &node) > 1.6e9);

    // Usage per key: the usage table, summed by key, is what the series say.
    let db = cluster.db();
    let mut stmt = db
        .prepare(
            "SELECT u.key, coalesce(k.name, ''), sum(u.requests), sum(u.prompt_tokens), sum(u.completion_tokens), sum(u.llm_ms) \
             FROM usage u LEFT JOIN api_keys k ON u.key = 'apikey:' || k.id GROUP BY u.key",
        )
        .expect("usage query");
    let keys: Vec<(String, String, [i64; 4])> = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                [r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?],
            ))
        })
        .expect("usage rows")
        .collect::<Result<_, _>>()
        .expect("usage rows");
    assert_eq!(keys.len(), 1, "the admin key's jobs only: {keys:?}");
    assert_eq!(keys[0].1, "local-admin");
    assert_eq!(keys[0].2[0], n_ok as i64);
    for (key, name, [requests, prompt, completion, llm_ms]) in &keys {
        let id = [("key", key.as_str()), ("name", name.as_str())];
        assert!(*prompt > 0 && *completion > 0, "{keys:?}");
        assert_eq!(
            value(&after, "kobo_key_requests_total", &id),
            *requests as f64
        );
        assert_eq!(
            value(&after, "kobo_key_prompt_tokens_total", &id),
            *prompt as f64
        );
        assert_eq!(
            value(&after, "kobo_key_completion_tokens_total", &id),
            *completion as f64
        );
        let seconds = value(&after, "kobo_key_llm_seconds_total", &id);
        assert!(
            (seconds - *llm_ms as f64 / 1000.0).abs() < 1e-6,
            "{seconds} s"
        );
    }
    for family in ["kobo_key_requests", "kobo_key_llm_seconds"] {
        assert_eq!(after[family].kind, "counter", "{family}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_command_prints_the_cluster_on_one_screen() {
    let mut cluster = Cluster::builder().start().await;
    cluster
        .agent(AgentSpec::new("tokyo-01", &["code_generation"]).region("ap-northeast-1"))
        .await;
    cluster
        .agent(AgentSpec::new("london-01", &["data_analysis"]).region("eu-west-2"))
        .await;
    let id = cluster.submit_prompt("code_generation", "fizzbuzz").await;
    assert_eq!(cluster.wait_done(id).await.state, JobState::Succeeded);

    let output = tokio::process::Command::new(binary("kobo-coord"))
        .arg("status")
        .arg("--data-dir")
        .arg(&cluster.data_dir)
        .output()
        .await
        .expect("run kobo-coord status");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for needle in [
        "nodes   2 active",
        "tokyo-01",
        "ap-northeast-1 (Tokyo)",
        "london-01",
        "eu-west-2 (London)",
        "1 succeeded",
        "code_generation",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    let lines = text.lines().count();
    assert!(lines <= 40, "one screen: {lines} lines\n{text}");

    // The same summary as JSON, from the API.
    let status = cluster.client().status().await.expect("status");
    assert_eq!(status.nodes.len(), 2);
    assert_eq!(status.totals.succeeded, 1);
    assert_eq!(status.latest_jobs[0].id, id);
    assert!(status.nodes.iter().all(|n| n.place.is_some()));
}

/// The number after `field=` in a log line.
fn log_field(line: &str, field: &str) -> u64 {
    line.split(&format!("{field}="))
        .nth(1)
        .and_then(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("no {field} in {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_round_trip_leaves_out_time_queued_in_the_coordinator() {
    /// How long the test holds the database's write lock: every write of
    /// the coordinator, heartbeats' included, waits that long (well within
    /// the store's busy timeout of 5 s).
    const HOLD: std::time::Duration = std::time::Duration::from_millis(1500);
    // The agent runs a job that never ends: its heartbeats renew a lease,
    // so they are writes (an idle node's are answered from memory).
    let mut cluster = Cluster::builder()
        .fake(FakeBehavior {
            hang: true,
            ..FakeBehavior::default()
        })
        .start()
        .await;
    let agent = cluster
        .agent(AgentSpec::new("tokyo-01", &["general_query"]))
        .await;
    let held = cluster
        .submit_prompt("general_query", "never answered")
        .await;
    cluster.wait_state(held, JobState::Leased).await;
    let db = rusqlite::Connection::open(cluster.db_path()).expect("open the database");
    let slow = "the coordinator was slow to answer a heartbeat";
    // Heartbeats go every 300 ms: those sent while the lock is held wait in
    // the coordinator. Should a loaded machine have sent none early enough
    // in a hold, the agent logs no slow answer, and the hold is repeated.
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        db.execute_batch("BEGIN IMMEDIATE")
            .expect("take the write lock");
        tokio::time::sleep(HOLD).await;
        db.execute_batch("ROLLBACK")
            .expect("release the write lock");
        // The slow answer, if there was one, is logged once the heartbeat
        // the hold delayed comes back. The agent heartbeats one at a time,
        // so a heartbeat recorded well after the release came after it.
        let released_at = unix_now_ms();
        cluster
            .wait_until("the agent goes on heartbeating", || async {
                cluster.agents[agent].log_text().contains(slow)
                    || cluster.client().nodes().await.is_ok_and(|nodes| {
                        nodes
                            .iter()
                            .any(|n| n.last_heartbeat_at > released_at + 1000)
                    })
            })
            .await;
        if cluster.agents[agent].log_text().contains(slow) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no heartbeat was held up\n{}",
            cluster.logs()
        );
    }
    let log = cluster.agents[agent].log_text();
    let line = log.lines().find(|l| l.contains(slow)).expect("the line");
    let (took, inside, rtt) = (
        log_field(line, "took_ms"),
        log_field(line, "coordinator_ms"),
        log_field(line, "rtt_ms"),
    );
    // The figures, for whoever runs this with --nocapture.
    println!("stalled heartbeat: took {took} ms, {inside} ms in the coordinator, rtt {rtt} ms");
    assert!(took >= 1000 && inside >= 1000, "{line}");
    assert_eq!(rtt, took - inside, "{line}");
    assert!(rtt < 1000, "the queue inside is not counted: {line}");
    // The next heartbeat carries that figure to the nodes table, and none
    // since counts the wait either.
    cluster
        .wait_until("the round trip reported", || async {
            cluster.client().nodes().await.is_ok_and(|nodes| {
                nodes
                    .iter()
                    .any(|n| n.node_id == "tokyo-01" && n.rtt_ms.is_some_and(|ms| ms < 1000))
            })
        })
        .await;
}
