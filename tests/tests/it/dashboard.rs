//! The dashboard: a real headless Chromium (Debian's `chromium`, driven by
//! `playwright-core` from `tests/browser/dashboard.mjs`) logs in against a
//! running cluster, sees the three demo nodes on the map and a job appear
//! live without a reload, the KPIs with numbers (mean pickup of jobs run
//! before the page first looked), every plot over time with data, and a
//! gateway request counted on its node; it saves the screenshots
//! (`KOBO_DASHBOARD_SCREENSHOT=docs/dashboard.png` regenerates the README's);
//! and the dashboard's login
//! (session cookies, the one-time URL `serve` prints) is read only, strict
//! and audited.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kobo_fake_llm::FakeBehavior;
use kobo_protocol::{AccessRole, JobState};
use kobo_tests::cluster::{AgentSpec, Cluster};
use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use tokio::io::{AsyncBufReadExt, BufReader};

/// How long the browser script may take in all.
const BROWSER_PATIENCE: Duration = Duration::from_secs(180);
/// A model the fake LLM serves (for the gateway request).
const MODEL: &str = "qwen2.5:0.5b";
/// The plots of `plots.js`, as the browser script names them.
const PLOTS: [&str; 7] = [
    "finished", "queue", "pickup", "run", "tokens", "cpu", "memory",
];

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// Fails with what to install when the browser or the node modules are missing.
fn check_browser_tools() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: install Debian's chromium package (scripts/install-test-deps does)"
    );
    assert!(
        browser_dir().join("node_modules/playwright-core").exists(),
        "tests/browser/node_modules is missing: run `npm ci` in tests/browser (scripts/install-test-deps does)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_nodes_on_the_map_and_a_job_live() {
    check_browser_tools();
    // Calls take a measurable time, so tokens/s has a value.
    let mut cluster = Cluster::builder()
        .fake(FakeBehavior {
            latency_ms: 40,
            ..FakeBehavior::default()
        })
        .start()
        .await;
    for (node, region, kind) in [
        ("tokyo-01", "ap-northeast-1", "code_generation"),
        ("osaka-01", "ap-northeast-3", "general_query"),
        ("london-01", "eu-west-2", "data_analysis"),
    ] {
        cluster
            .agent(AgentSpec::new(node, &[kind]).region(region))
            .await;
    }
    let (_, read_key) = cluster.client_with_role(AccessRole::Read).await;
    let (_, submit_key) = cluster.client_with_role(AccessRole::Submit).await;
    // Jobs that ran before anything looked at the status: the dashboard's
    // "last hour" figures must count them all the same (the mean pickup
    // used to show "–" then).
    let mut before = Vec::new();
    for (idx, kind) in ["code_generation", "general_query", "data_analysis"]
        .iter()
        .cycle()
        .take(12)
        .enumerate()
    {
        before.push(
            cluster
                .submit_prompt(kind, &format!("Job {idx} before the page opened"))
                .await,
        );
    }
    for id in before {
        assert_eq!(cluster.wait_done(id).await.state, JobState::Succeeded);
    }
    let shots = tempfile::tempdir().expect("screenshot dir");
    let shot = std::env::var_os("KOBO_DASHBOARD_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| shots.path().join("dashboard.png"));

    let http = kobo_client::http_client(Some(&std::fs::read(cluster.ca_path()).expect("ca")))
        .expect("http client");
    let mut child = tokio::process::Command::new("node")
        .arg(browser_dir().join("dashboard.mjs"))
        .arg(format!("{}/", cluster.url()))
        .arg(&read_key)
        .arg(&shot)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node is installed (scripts/install-test-deps installs nodejs)");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    let run = async {
        while let Some(line) = lines.next_line().await.expect("read browser output") {
            seen.push(line.clone());
            if line == "READY" {
                // The page is open and live: now a job arrives.
                let id = cluster
                    .submit_prompt("code_generation", "Write fizzbuzz in Rust")
                    .await;
                assert_eq!(cluster.wait_done(id).await.state, JobState::Succeeded);
                seen.push(format!("SUBMITTED {id}"));
                // A gateway request (kind general_query: osaka-01's).
                let answer = http
                    .post(format!("{}/v1/chat/completions", cluster.url()))
                    .bearer_auth(&submit_key)
                    .json(&serde_json::json!({
                        "model": MODEL,
                        "messages": [{"role": "user", "content": "Hello through the gateway"}],
                    }))
                    .send()
                    .await
                    .expect("gateway answer");
                assert_eq!(answer.status(), StatusCode::OK);
                // A job no node may run waits in the queue: the depth plot.
                cluster
                    .submit_prompt("translation", "Nobody translates")
                    .await;
            }
        }
        child.wait().await.expect("browser script exit")
    };
    let status = tokio::time::timeout(BROWSER_PATIENCE, run)
        .await
        .unwrap_or_else(|_| panic!("the browser script did not finish:\n{}", seen.join("\n")));
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = err.read_to_string(&mut stderr).await;
    }
    let out = seen.join("\n");
    assert!(status.success(), "browser script failed:\n{out}\n{stderr}");
    let id = seen
        .iter()
        .find_map(|l| l.strip_prefix("SUBMITTED "))
        .expect("a job was submitted");
    for expected in [
        "LOGIN_FORM shown".to_string(),
        "NODES london-01,osaka-01,tokyo-01".to_string(),
        "NODE_STATUS london-01:active,osaka-01:active,tokyo-01:active".to_string(),
        "LIVE".to_string(),
        "COOKIE HttpOnly,Secure,Strict".to_string(),
        format!("JOB {id} succeeded tokyo-01"),
        "NO_RELOAD".to_string(),
        "TOOLTIP tokyo-01active".to_string(),
        "CONSOLE_ERRORS 0".to_string(),
    ] {
        assert!(seen.contains(&expected), "{expected:?} missing:\n{out}");
    }
    // The KPIs are numbers, the mean pickup included.
    let pickup = line_after(&seen, "KPI mean pickup ");
    assert!(
        pickup.ends_with(" ms") || pickup.ends_with(" s"),
        "mean pickup shows a time, not {pickup:?}:\n{out}"
    );
    assert!(pickup.chars().next().is_some_and(|c| c.is_ascii_digit()));
    // Every plot has data, over the hour and over the day.
    for span in ["PLOTS_HOUR ", "PLOTS_DAY "] {
        let plots = line_after(&seen, span);
        for plot in PLOTS {
            let points: u32 = plots
                .split(',')
                .find_map(|p| p.strip_prefix(&format!("{plot}:")))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{span}has no {plot}: {plots}"));
            assert!(points > 0, "{span}{plot} has no data: {plots}");
        }
    }
    // The gateway request is counted on the node that served it, with its
    // tokens/s; the others served none.
    let gateway = line_after(&seen, "GATEWAY ");
    let stored: Vec<String> = cluster
        .db()
        .prepare("SELECT a.node_id || ' ' || coalesce(a.completion_tokens, '-') || ' tokens ' || coalesce(a.finished_at - a.started_at, '-') || ' ms ' || j.gateway FROM job_attempts a JOIN jobs j ON j.id = a.job_id WHERE j.gateway IS NOT NULL")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert!(
        gateway.contains("osaka-01=1 · ") && gateway.contains(" tok/s"),
        "{gateway}; the gateway attempts stored: {stored:?}"
    );
    assert!(
        gateway.contains("tokyo-01=–") && gateway.contains("london-01=–"),
        "{gateway}"
    );
    // The per-key panel shows each key's usage as the database has it.
    let keys = line_after(&seen, "KEYS ");
    let usage: Vec<(String, i64, i64, i64)> = cluster
        .db()
        .prepare("SELECT coalesce(key_name, key), sum(requests), sum(prompt_tokens), sum(completion_tokens) FROM v_usage GROUP BY key")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    let submitter = usage
        .iter()
        .find(|(name, ..)| name == "test-submit")
        .unwrap_or_else(|| panic!("the gateway key's usage: {usage:?}"));
    let expected = [submitter.1, submitter.2, submitter.3].map(|n| n.to_string());
    assert!(
        keys.split(';').any(|row| {
            let cells: Vec<&str> = row.split('|').collect();
            cells.first().is_some_and(|c| c.starts_with("test-submit"))
                && cells.len() == 5
                && cells[1..4] == expected
        }),
        "the panel {keys} against the database {usage:?}"
    );
    let events = seen
        .iter()
        .find(|l| l.starts_with("EVENTS "))
        .expect("events");
    assert!(
        events.contains("queued → leased") && events.contains("leased → succeeded"),
        "{events}"
    );
    let land: usize = seen
        .iter()
        .find_map(|l| l.strip_prefix("MAP_LAND "))
        .and_then(|n| n.parse().ok())
        .expect("map drawn");
    assert!(land > 10_000, "the world outline is drawn ({land} chars)");
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "a real screenshot"
    );
    let dark = shot.with_file_name(format!(
        "{}-dark.png",
        shot.file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("dashboard")
    ));
    assert!(dark.exists(), "dark screenshot {}", dark.display());
}

/// The rest of the first line of the browser's output starting with `prefix`.
fn line_after<'a>(seen: &'a [String], prefix: &str) -> &'a str {
    seen.iter()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line:\n{}", seen.join("\n")))
}

fn cookie_of(response: &reqwest::Response) -> String {
    let set = response
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .expect("Set-Cookie")
        .to_string();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attribute), "{set}");
    }
    set.split(';').next().expect("name=value").to_string()
}

fn audit_rows(cluster: &Cluster, action: &str, outcome: &str) -> i64 {
    cluster
        .db()
        .query_row(
            "SELECT count(*) FROM audit_log WHERE action = ?1 AND outcome = ?2",
            [action, outcome],
            |r| r.get(0),
        )
        .expect("count audit rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_sessions_are_read_only_strict_and_audited() {
    let mut cluster = Cluster::builder().start().await;
    cluster
        .agent(AgentSpec::new("tokyo-01", &["general_query"]))
        .await;
    let ca = std::fs::read(cluster.ca_path()).expect("ca");
    let http = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).expect("ca"))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let url = cluster.url();

    // The page itself is public and locked down.
    let page = http.get(format!("{url}/")).send().await.expect("page");
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(page.text().await.expect("html").contains("/assets/app.js"));

    // A wrong key: 401, audited.
    let wrong = http
        .post(format!("{url}/v1/session"))
        .json(&serde_json::json!({"api_key": "kobo_0000000000000000_nope"}))
        .send()
        .await
        .expect("login");
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.headers().get(SET_COOKIE).is_none());
    assert_eq!(audit_rows(&cluster, "auth.session", "denied"), 1);

    // A submit key opens a session that reads but cannot submit.
    let (_, submit_key) = cluster.client_with_role(AccessRole::Submit).await;
    let login = http
        .post(format!("{url}/v1/session"))
        .json(&serde_json::json!({ "api_key": submit_key }))
        .send()
        .await
        .expect("login");
    assert_eq!(login.status(), StatusCode::CREATED);
    let cookie = cookie_of(&login);
    let created: kobo_protocol::SessionCreated = login.json().await.expect("session");
    assert_eq!(created.role, AccessRole::Read);
    assert_eq!(audit_rows(&cluster, "session.create", "ok"), 1);
    let status = http
        .get(format!("{url}/v1/status"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .expect("status");
    assert_eq!(status.status(), StatusCode::OK);
    let status: kobo_protocol::ClusterStatus = status.json().await.expect("status json");
    assert_eq!(status.nodes[0].node.node_id, "tokyo-01");
    let submit = http
        .post(format!("{url}/v1/jobs"))
        .header(COOKIE, &cookie)
        .json(&serde_json::json!({"kind": "general_query", "prompt": "no"}))
        .send()
        .await
        .expect("submit");
    assert_eq!(
        submit.status(),
        StatusCode::FORBIDDEN,
        "sessions are read only"
    );

    // Live updates over the cookie: one `status` event.
    let events = http
        .get(format!("{url}/v1/events?once=true"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .expect("events");
    assert_eq!(events.status(), StatusCode::OK);
    assert!(
        events
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("text/event-stream"))
    );
    let body = events.text().await.expect("event body");
    assert!(
        body.contains("event: status") && body.contains("tokyo-01"),
        "{body}"
    );

    // Logging out ends the session.
    let logout = http
        .post(format!("{url}/v1/session/logout"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .expect("logout");
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    let after = http
        .get(format!("{url}/v1/status"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .expect("status");
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);

    // The one-time link `serve` printed works once.
    let printed = std::fs::read_to_string(cluster.coordinator_stdout_path()).expect("stdout");
    let link = printed
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{url}/login?token=")))
        .unwrap_or_else(|| panic!("no login link in:\n{printed}"))
        .to_string();
    let first = http
        .get(format!("{url}/login?token={link}"))
        .send()
        .await
        .expect("login link");
    assert_eq!(first.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        first.headers().get(LOCATION).and_then(|v| v.to_str().ok()),
        Some("/")
    );
    let link_cookie = cookie_of(&first);
    let status = http
        .get(format!("{url}/v1/status"))
        .header(COOKIE, &link_cookie)
        .send()
        .await
        .expect("status");
    assert_eq!(status.status(), StatusCode::OK);
    let again = http
        .get(format!("{url}/login?token={link}"))
        .send()
        .await
        .expect("login link again");
    assert_eq!(again.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        again.headers().get(LOCATION).and_then(|v| v.to_str().ok()),
        Some("/?login_link=expired")
    );
    assert!(again.headers().get(SET_COOKIE).is_none());
    assert_eq!(audit_rows(&cluster, "auth.login_url", "denied"), 1);

    // Revoking the key ends the sessions it opened.
    let (read_client, read_key) = cluster.client_with_role(AccessRole::Read).await;
    let login = http
        .post(format!("{url}/v1/session"))
        .json(&serde_json::json!({ "api_key": read_key }))
        .send()
        .await
        .expect("login");
    let cookie = cookie_of(&login);
    let id = read_key.split('_').nth(1).expect("key id").to_string();
    cluster.client().apikey_revoke(&id).await.expect("revoke");
    assert!(
        read_client.status().await.is_err(),
        "the key itself is refused"
    );
    let revoked = http
        .get(format!("{url}/v1/status"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .expect("status");
    assert_eq!(revoked.status(), StatusCode::UNAUTHORIZED);
}
