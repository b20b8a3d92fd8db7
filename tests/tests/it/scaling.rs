//! `GET /v1/scaling` and the `kobo_scaling_*` gauges with real agents and
//! jobs: the numbers equal the database's, each filter narrows jobs and
//! agents as documented, bad filter values are 400s naming the field, a
//! `scaler` key reads this route and `/metrics` and nothing else, and an
//! empty queue needs zero agents.

use kobo_protocol::{AccessRole, JobState, ScalingQuery, ScalingView};
use kobo_tests::cluster::{AgentSpec, Cluster, job};
use reqwest::StatusCode;

const MODEL: &str = "llama3.2:1b";

/// Queued and leased jobs the query `filter_sql` (a WHERE fragment) matches.
fn db_counts(cluster: &Cluster, filter_sql: &str) -> (u64, u64) {
    let count = |state: &str| -> u64 {
        cluster
            .db()
            .query_row(
                &format!("SELECT count(*) FROM jobs WHERE state = ?1 AND ({filter_sql})"),
                [state],
                |r| r.get::<_, i64>(0),
            )
            .expect("count jobs") as u64
    };
    (count("queued"), count("leased"))
}

fn query(kind: Option<&str>, region: Option<&str>, model: Option<&str>) -> ScalingQuery {
    ScalingQuery {
        kind: kind.map(str::to_string),
        region: region.map(str::to_string),
        model: model.map(str::to_string),
        slots: None,
    }
}

/// `view` against the database for `filter_sql`, with its agents and slots.
fn assert_view(
    view: &ScalingView,
    (queued, leased): (u64, u64),
    agents: u64,
    slots: f64,
    what: &str,
) {
    assert_eq!(
        (view.queued, view.leased),
        (queued, leased),
        "{what}: {view:?}"
    );
    assert_eq!(view.backlog, queued + leased, "{what}");
    assert_eq!(view.agents, agents, "{what}: {view:?}");
    assert!(
        (view.slots_per_agent - slots).abs() < 1e-9,
        "{what}: {view:?}"
    );
    let needed = ((queued + leased) as f64 / slots).ceil() as u64;
    assert_eq!(view.agents_needed, needed, "{what}: {view:?}");
    if queued > 0 {
        assert!(view.oldest_wait_ms > 0, "{what}: {view:?}");
    }
}

/// The value of the series `name{labels}` in an OpenMetrics text.
fn series(text: &str, name: &str, labels: &str) -> Option<f64> {
    let head = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&head))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_numbers_match_the_database_and_filters_narrow_them() {
    let mut cluster = Cluster::builder().start().await;
    cluster.fake.update_behavior(|b| b.hold = true);
    cluster
        .agent(
            AgentSpec::new("coder", &["code_generation"])
                .region("ap-northeast-1")
                .max_workers(2),
        )
        .await;
    cluster
        .agent(
            AgentSpec::new("talker", &["general_query"])
                .region("eu-west-2")
                .max_workers(3),
        )
        .await;
    for idx in 0..7 {
        cluster
            .submit(&job("code_generation", &format!("code {idx}")))
            .await;
    }
    for idx in 0..5 {
        let mut asked = job("general_query", &format!("talk {idx}"));
        if idx < 2 {
            asked.model = Some(MODEL.into());
        } else if idx == 2 {
            asked.model = Some("qwen2.5:0.5b".into());
        }
        cluster.submit(&asked).await;
    }
    // Both agents full: 2 + 3 calls held at the fake LLM.
    cluster
        .wait_until("both agents hold every slot", || async {
            cluster.fake.in_flight() == 5
        })
        .await;

    let (scaler, scaler_key) = cluster.client_with_role(AccessRole::Scaler).await;
    let all = scaler.scaling(&ScalingQuery::default()).await.expect("all");
    assert_view(&all, db_counts(&cluster, "1"), 2, 2.5, "no filter");
    assert_eq!((all.queued, all.leased), (7, 5));
    assert_eq!(all.agents_needed, 5, "ceil(12 / 2.5)");

    let code = scaler
        .scaling(&query(Some("code_generation"), None, None))
        .await
        .expect("code");
    assert_view(
        &code,
        db_counts(&cluster, "kind = 'code_generation'"),
        1,
        2.0,
        "kind",
    );
    assert_eq!(
        code.kind.as_deref(),
        Some("code_generation"),
        "the filter echoed"
    );

    let overridden = scaler
        .scaling(&ScalingQuery {
            slots: Some(8.0),
            ..query(Some("code_generation"), None, None)
        })
        .await
        .expect("slots");
    assert_eq!(
        (overridden.slots_per_agent, overridden.agents_needed),
        (8.0, 1)
    );

    // A model: the jobs naming it or none, the agents serving it.
    let model = scaler
        .scaling(&query(Some("general_query"), None, Some(MODEL)))
        .await
        .expect("model");
    assert_view(
        &model,
        db_counts(
            &cluster,
            &format!("kind = 'general_query' AND (model IS NULL OR model = '{MODEL}')"),
        ),
        1,
        3.0,
        "model",
    );
    assert_eq!(
        model.backlog, 4,
        "2 name the model, 2 name none, 1 another model"
    );

    // A region: every job (none asks for residency), only that region's agents.
    let london = scaler
        .scaling(&query(None, Some("eu-west-2"), None))
        .await
        .expect("region");
    assert_view(&london, db_counts(&cluster, "1"), 1, 3.0, "region");

    // Nothing matches: no backlog, the default slots, no agent needed.
    let none = scaler
        .scaling(&query(Some("translation"), None, None))
        .await
        .expect("none");
    assert_view(&none, (0, 0), 0, 4.0, "no match");

    // Bad values: 400 naming the field.
    for (bad, field) in [
        (query(Some("two words"), None, None), "kind"),
        (query(None, Some(""), None), "region"),
        (query(None, None, Some(&"m".repeat(300))), "model"),
        (
            ScalingQuery {
                slots: Some(0.0),
                ..ScalingQuery::default()
            },
            "slots",
        ),
    ] {
        let err = scaler.scaling(&bad).await.expect_err("refused");
        assert_eq!(err.status(), Some(400), "{bad:?}: {err}");
        assert_eq!(err.field(), Some(field), "{bad:?}: {err}");
    }
    let ca = std::fs::read(cluster.ca_path()).expect("ca");
    let http = kobo_client::http_client(Some(&ca)).expect("client");
    let get = |path: &str| {
        http.get(format!("{}{path}", cluster.url()))
            .bearer_auth(&scaler_key)
            .send()
    };
    for (path, field) in [
        ("/v1/scaling?slots=many", "slots"),
        ("/v1/scaling?kinds=code_generation", "kinds"),
    ] {
        let answer = get(path).await.expect("answer");
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST, "{path}");
        let body: serde_json::Value = answer.json().await.expect("json");
        assert_eq!(body["error"]["field"], field, "{path}: {body}");
    }

    // The scaler key: this route and /metrics, nothing else.
    let metrics = get("/metrics").await.expect("metrics");
    assert_eq!(metrics.status(), StatusCode::OK);
    let text = metrics.text().await.expect("text");
    for path in ["/v1/jobs", "/v1/nodes", "/v1/status", "/v1/usage"] {
        let status = get(path).await.expect("answer").status();
        assert_eq!(status, StatusCode::FORBIDDEN, "scaler key on {path}");
    }
    let session = http
        .post(format!("{}/v1/session", cluster.url()))
        .json(&serde_json::json!({ "api_key": scaler_key }))
        .send()
        .await
        .expect("session");
    assert_eq!(
        session.status(),
        StatusCode::FORBIDDEN,
        "no dashboard session (it would read more)"
    );

    // The gauges: the exact split per (kind, residency, model), summing to the whole.
    let labels = |kind: &str, model: &str| format!("kind=\"{kind}\",region=\"\",model=\"{model}\"");
    let backlog =
        |kind: &str, model: &str| series(&text, "kobo_scaling_backlog", &labels(kind, model));
    assert_eq!(backlog("code_generation", ""), Some(7.0), "{text}");
    assert_eq!(backlog("general_query", MODEL), Some(2.0), "{text}");
    assert_eq!(
        backlog("general_query", "qwen2.5:0.5b"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(backlog("general_query", ""), Some(2.0), "{text}");
    let sum: f64 = text
        .lines()
        .filter(|l| l.starts_with("kobo_scaling_backlog{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(sum, all.backlog as f64, "the groups sum to the whole");
    assert_eq!(
        series(
            &text,
            "kobo_scaling_agents_needed",
            &labels("code_generation", "")
        ),
        Some(4.0),
        "ceil(7 / 2)"
    );

    // Everything done: nothing needed (scale to zero).
    cluster.fake.update_behavior(|b| b.hold = false);
    cluster
        .wait_until("every job finished", || async {
            db_counts(&cluster, "1") == (0, 0)
        })
        .await;
    let idle = scaler
        .scaling(&ScalingQuery::default())
        .await
        .expect("idle");
    assert_eq!(
        (idle.backlog, idle.agents_needed, idle.oldest_wait_ms),
        (0, 0, 0)
    );
    let succeeded: i64 = cluster
        .db()
        .query_row(
            "SELECT count(*) FROM jobs WHERE state = ?1",
            [JobState::Succeeded.as_str()],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(succeeded, 12);
}
