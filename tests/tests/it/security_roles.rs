//! Who may call what: every route of `kobo_server::api::routes()` against no
//! credential, `scaler`/`read`/`submit`/`admin` API keys and a node certificate (401
//! for none, 403 for too little, audited either way); key minting and
//! submitting above one's role, revoked and malformed keys, and cancelling
//! someone else's job.

use kobo_protocol::{AccessRole, ErrorBody, JobState, JobView};
use kobo_server::api::{Need, Route, routes};
use kobo_tests::cluster::Cluster;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderValue};

/// One way of calling the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cred {
    None,
    Key(AccessRole),
    Node,
}

impl std::fmt::Display for Cred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cred::None => f.write_str("no credential"),
            Cred::Key(role) => write!(f, "a {role} API key"),
            Cred::Node => f.write_str("a node certificate"),
        }
    }
}

/// What a route must answer a credential, by the rules of `api::auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Anything but 401 and 403.
    Allowed,
    Unauthorized,
    Forbidden,
}

fn verdict(need: Option<Need>, cred: Cred) -> Verdict {
    match (need, cred) {
        (None, _) => Verdict::Allowed,
        (Some(_), Cred::None) => Verdict::Unauthorized,
        (Some(Need::Role(_)), Cred::Node) => Verdict::Forbidden,
        (Some(Need::Role(need)), Cred::Key(have)) if have >= need => Verdict::Allowed,
        (Some(Need::Role(_)), Cred::Key(_)) => Verdict::Forbidden,
        (Some(Need::Node), Cred::Node) => Verdict::Allowed,
        (Some(Need::Node), Cred::Key(_)) => Verdict::Forbidden,
    }
}

/// A raw HTTPS caller: a client (plain, or presenting a node certificate)
/// and maybe an API key.
struct Caller {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Caller {
    fn plain(cluster: &Cluster, key: Option<String>) -> Caller {
        let ca = std::fs::read(cluster.ca_path()).expect("ca");
        Caller {
            http: kobo_client::http_client(Some(&ca)).expect("client"),
            base: cluster.url(),
            key,
        }
    }

    async fn node(cluster: &Cluster, node_id: &str) -> Caller {
        Caller {
            http: cluster.enroll_raw(node_id).await,
            base: cluster.url(),
            key: None,
        }
    }

    /// Sends `method path` (with `body` as JSON on POST); the status and the
    /// error body, if the answer is one.
    async fn send(
        &self,
        method: &str,
        path: &str,
        body: &str,
    ) -> (StatusCode, Option<ErrorBody>, Option<String>) {
        let url = format!("{}{path}", self.base);
        let mut request = match method {
            "GET" => self.http.get(&url),
            "POST" => self
                .http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.to_string()),
            "PATCH" => self
                .http
                .patch(&url)
                .header("content-type", "application/json")
                .body(body.to_string()),
            "DELETE" => self.http.delete(&url),
            other => panic!("ROUTES holds a method this test does not know: {other}"),
        };
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|err| panic!("{method} {path}: no answer: {err}"));
        let status = response.status();
        let bytes = response.bytes().await.expect("body");
        let ollama = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_owned));
        (status, serde_json::from_slice(&bytes).ok(), ollama)
    }

    async fn get_job(&self, id: i64) -> JobView {
        let response = self
            .http
            .get(format!("{}/v1/jobs/{id}", self.base))
            .bearer_auth(self.key.as_deref().expect("a key"))
            .send()
            .await
            .expect("get job");
        assert_eq!(response.status(), StatusCode::OK, "GET /v1/jobs/{id}");
        let detail: kobo_protocol::JobDetail = response.json().await.expect("job detail");
        detail.job
    }
}

/// A body good enough that an allowed caller gets past parsing where that
/// is harmless; `{}` elsewhere (the status class is what matters here).
fn matrix_body(path: &str) -> &'static str {
    match path {
        "/v1/jobs" => r#"{"kind":"general_query","prompt":"role matrix"}"#,
        "/v1/jobs/batch" => r#"{"jobs":[{"kind":"general_query","prompt":"role matrix"}]}"#,
        "/v1/admin/apikeys" => r#"{"name":"matrix-made","role":"read"}"#,
        "/v1/admin/tokens" => r#"{"node_id":"matrix-token","ttl_ms":60000}"#,
        "/v1/admin/enroll-keys" => r#"{"prefix":"matrix-"}"#,
        _ => "{}",
    }
}

fn denied_rows(cluster: &Cluster, action_like: &str) -> i64 {
    cluster
        .db()
        .query_row(
            "SELECT count(*) FROM audit_log WHERE outcome = 'denied' AND action LIKE ?1",
            [action_like],
            |r| r.get(0),
        )
        .expect("count denied audit rows")
}

fn job_count(cluster: &Cluster) -> i64 {
    cluster
        .db()
        .query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
        .expect("count jobs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_credential_by_its_role() {
    let cluster = Cluster::builder().start().await;
    let mut callers = vec![(Cred::None, Caller::plain(&cluster, None))];
    for role in AccessRole::ALL {
        let (_, key) = cluster.client_with_role(role).await;
        callers.push((Cred::Key(role), Caller::plain(&cluster, Some(key))));
    }
    // Not `x`: the matrix's admin call revokes node `x`.
    callers.push((Cred::Node, Caller::node(&cluster, "matrix-node").await));

    // The `/v1/jobs/1...` routes then name a job of the submit key: its
    // cancel is allowed (own job), an admin's is a 409 (already cancelled).
    let submit = &callers
        .iter()
        .find(|(cred, _)| *cred == Cred::Key(AccessRole::Submit))
        .expect("submit caller")
        .1;
    let (status, _, _) = submit
        .send("POST", "/v1/jobs", matrix_body("/v1/jobs"))
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "setup: submit key POST /v1/jobs"
    );
    assert_eq!(
        job_count(&cluster),
        1,
        "setup: the submit key's job is job 1, the id ROUTES uses"
    );

    let denied_before = denied_rows(&cluster, "%");
    let mut refusals = 0i64;
    let mut tally = std::collections::BTreeMap::<u16, u32>::new();
    let mut checked = 0;
    // ROUTES' admin calls name dummy targets (API key 0000000000000000,
    // node x), so no row of the matrix revokes a credential a later row uses.
    for Route {
        method,
        example: path,
        need,
        ..
    } in routes()
    {
        for (cred, caller) in &callers {
            let (status, error, error_message) = caller.send(method, path, matrix_body(path)).await;
            *tally.entry(status.as_u16()).or_default() += 1;
            let expected = verdict(need, *cred);
            let what = format!("{method} {path} (needs {need:?}) with {cred}");
            match expected {
                Verdict::Allowed => assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{what}: expected to be let through, got {status} {error:?}"
                ),
                Verdict::Unauthorized => assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{what}: expected 401, body {error:?}"
                ),
                Verdict::Forbidden => assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{what}: expected 403, body {error:?}"
                ),
            }
            if expected != Verdict::Allowed && path.starts_with("/api/") {
                // Ollama's own shape: `{"error": "…"}`, no code.
                refusals += 1;
                let message = error_message.as_deref().unwrap_or("");
                assert!(!message.is_empty(), "{what}: an Ollama-shaped error body");
            } else if expected != Verdict::Allowed {
                refusals += 1;
                let code = error
                    .as_ref()
                    .map(|e| e.error.code.as_str())
                    .unwrap_or("<no JSON error body>");
                let want = if expected == Verdict::Unauthorized {
                    "unauthorized"
                } else {
                    "forbidden"
                };
                assert_eq!(code, want, "{what}: error code of the {status} answer");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, routes().len() * callers.len());
    // A scaler key reads what an autoscaler needs and nothing more.
    let scaler_routes: Vec<&str> = routes()
        .into_iter()
        .filter(|r| {
            r.need.is_some() && verdict(r.need, Cred::Key(AccessRole::Scaler)) == Verdict::Allowed
        })
        .map(|r| r.path)
        .collect();
    assert_eq!(scaler_routes, ["/metrics", "/v1/scaling"]);
    eprintln!("role matrix: {checked} requests, {refusals} refused; statuses {tally:?}");
    assert!(refusals > 0, "the matrix refused nothing at all");
    let denied = denied_rows(&cluster, "%") - denied_before;
    assert!(
        denied >= refusals,
        "{refusals} requests were refused with 401/403 but only {denied} denied rows reached audit_log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lower_roles_cannot_mint_keys_or_submit() {
    let cluster = Cluster::builder().start().await;
    let (_, submit_key) = cluster.client_with_role(AccessRole::Submit).await;
    let (_, read_key) = cluster.client_with_role(AccessRole::Read).await;
    let submit = Caller::plain(&cluster, Some(submit_key));
    let read = Caller::plain(&cluster, Some(read_key));

    let (status, error, _) = submit
        .send(
            "POST",
            "/v1/admin/apikeys",
            r#"{"name":"escalated","role":"admin"}"#,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "POST /v1/admin/apikeys (role admin) with a submit key: {error:?}"
    );
    let (status, _, _) = read
        .send(
            "POST",
            "/v1/admin/apikeys",
            r#"{"name":"escalated","role":"read"}"#,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "POST /v1/admin/apikeys with a read key"
    );
    let keys = cluster.client().apikey_list().await.expect("list keys");
    assert!(
        keys.iter().all(|k| k.name != "escalated"),
        "a refused key creation still made a key: {keys:?}"
    );

    let job = r#"{"kind":"general_query","prompt":"may I?"}"#;
    let (status, error, _) = read.send("POST", "/v1/jobs", job).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "POST /v1/jobs with a read key: {error:?}"
    );
    let (status, _, _) = read
        .send("POST", "/v1/jobs/batch", &format!(r#"{{"jobs":[{job}]}}"#))
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "POST /v1/jobs/batch with a read key"
    );
    assert_eq!(job_count(&cluster), 0, "a read key's submit wrote a job");
    // The same read key may read.
    let (status, _, _) = read.send("GET", "/v1/jobs", "").await;
    assert_eq!(status, StatusCode::OK, "GET /v1/jobs with a read key");
    assert!(
        denied_rows(&cluster, "auth./v1/%") >= 4,
        "the four refusals were audited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_on_its_next_request() {
    let cluster = Cluster::builder().start().await;
    let created = cluster
        .client()
        .apikey_create(
            "soon-revoked",
            AccessRole::Submit,
            kobo_protocol::KeyPolicy::default(),
        )
        .await
        .expect("create key");
    let caller = Caller::plain(&cluster, Some(created.key.clone()));
    let (status, _, _) = caller.send("GET", "/v1/jobs", "").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "GET /v1/jobs with a fresh submit key"
    );

    cluster
        .client()
        .apikey_revoke(&created.id)
        .await
        .expect("revoke key");
    let before = denied_rows(&cluster, "auth.apikey");
    for (method, path, body) in [
        ("GET", "/v1/jobs", ""),
        (
            "POST",
            "/v1/jobs",
            r#"{"kind":"general_query","prompt":"after revocation"}"#,
        ),
        ("GET", "/healthz", ""),
    ] {
        let (status, error, _) = caller.send(method, path, body).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} with the revoked key {}: {error:?}",
            created.id
        );
        let error = error.unwrap_or_else(|| panic!("{method} {path}: no JSON error body"));
        assert_eq!(error.error.code, "unauthorized", "{method} {path}");
    }
    assert_eq!(job_count(&cluster), 0, "the revoked key submitted a job");
    assert_eq!(
        denied_rows(&cluster, "auth.apikey") - before,
        3,
        "each request with the revoked key was audited"
    );
    let keys = cluster.client().apikey_list().await.expect("list keys");
    let key = keys
        .iter()
        .find(|k| k.id == created.id)
        .expect("revoked key is still listed");
    assert!(key.revoked_at.is_some(), "revoked_at is set: {key:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_authorization_headers_are_401() {
    let cluster = Cluster::builder().start().await;
    let (_, key) = cluster.client_with_role(AccessRole::Admin).await;
    let (id, _) = key
        .strip_prefix("kobo_")
        .and_then(|rest| rest.split_once('_'))
        .expect("a key of the form kobo_<id>_<secret>");
    let wrong_secret = format!("Bearer kobo_{id}_{}", "0".repeat(64));
    let ca = std::fs::read(cluster.ca_path()).expect("ca");
    let http = kobo_client::http_client(Some(&ca)).expect("client");
    let headers: Vec<(String, HeaderValue)> = vec![
        ("Basic x".into(), HeaderValue::from_static("Basic x")),
        (
            "Bearer nonsense".into(),
            HeaderValue::from_static("Bearer nonsense"),
        ),
        ("Bearer (empty)".into(), HeaderValue::from_static("Bearer ")),
        (
            "lower-case bearer with a valid key".into(),
            HeaderValue::from_str(&format!("bearer {key}")).expect("header"),
        ),
        (
            "a valid key without a scheme".into(),
            HeaderValue::from_str(&key).expect("header"),
        ),
        (
            "a valid key id with a wrong secret".into(),
            HeaderValue::from_str(&wrong_secret).expect("header"),
        ),
        (
            "Bearer and non-UTF-8 bytes".into(),
            HeaderValue::from_bytes(b"Bearer \xff\xfe").expect("header"),
        ),
    ];
    let before = denied_rows(&cluster, "auth.apikey");
    for (shown, value) in &headers {
        for path in ["/v1/jobs", "/v1/admin/apikeys"] {
            let response = http
                .get(format!("{}{path}", cluster.url()))
                .header(AUTHORIZATION, value.clone())
                .send()
                .await
                .expect("send");
            let status = response.status();
            let body: Option<ErrorBody> = response.json().await.ok();
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "GET {path} with Authorization: {shown}: {body:?}"
            );
            assert_eq!(
                body.map(|b| b.error.code).as_deref(),
                Some("unauthorized"),
                "GET {path} with Authorization: {shown}: error code"
            );
        }
    }
    assert_eq!(
        denied_rows(&cluster, "auth.apikey") - before,
        2 * headers.len() as i64,
        "every malformed Authorization header was audited"
    );
    // The well-formed header works, so the refusals above were the header's fault.
    let response = http
        .get(format!("{}/v1/admin/apikeys", cluster.url()))
        .bearer_auth(&key)
        .send()
        .await
        .expect("send");
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "GET /v1/admin/apikeys with Bearer <admin key>"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_keys_cancel_only_their_own_jobs() {
    let cluster = Cluster::builder().start().await;
    let (_, alice_key) = cluster.client_with_role(AccessRole::Submit).await;
    let (_, bob_key) = cluster.client_with_role(AccessRole::Submit).await;
    let (_, admin_key) = cluster.client_with_role(AccessRole::Admin).await;
    let alice = Caller::plain(&cluster, Some(alice_key));
    let bob = Caller::plain(&cluster, Some(bob_key));
    let admin = Caller::plain(&cluster, Some(admin_key));

    let mut ids = Vec::new();
    for (who, caller) in [("alice", &alice), ("bob", &bob)] {
        let response = caller
            .http
            .post(format!("{}/v1/jobs", caller.base))
            .bearer_auth(caller.key.as_deref().expect("key"))
            .json(&kobo_tests::cluster::job(
                "general_query",
                &format!("{who}'s job"),
            ))
            .send()
            .await
            .expect("submit");
        assert_eq!(response.status(), StatusCode::CREATED, "{who} submits");
        let submitted: kobo_protocol::SubmitResponse = response.json().await.expect("answer");
        ids.push(submitted.id);
    }
    let (alice_job, bob_job) = (ids[0], ids[1]);

    let before = denied_rows(&cluster, "job.cancel");
    let path = format!("/v1/jobs/{alice_job}/cancel");
    let (status, error, _) = bob.send("POST", &path, "").await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "POST {path} with bob's submit key (alice's job): {error:?}"
    );
    assert_eq!(
        error.map(|e| e.error.code).as_deref(),
        Some("forbidden"),
        "POST {path} with bob's key: error code"
    );
    assert_eq!(
        denied_rows(&cluster, "job.cancel") - before,
        1,
        "bob's refused cancel was audited"
    );
    assert_eq!(
        admin.get_job(alice_job).await.state,
        JobState::Queued,
        "alice's job is untouched by bob's refused cancel"
    );

    let (status, error, _) = alice.send("POST", &path, "").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "POST {path} with alice's submit key (her own job): {error:?}"
    );
    assert_eq!(admin.get_job(alice_job).await.state, JobState::Cancelled);

    let path = format!("/v1/jobs/{bob_job}/cancel");
    let (status, error, _) = admin.send("POST", &path, "").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "POST {path} with an admin key (bob's job): {error:?}"
    );
    assert_eq!(admin.get_job(bob_job).await.state, JobState::Cancelled);
}
