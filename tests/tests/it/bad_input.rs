//! Malformed, oversized and unknown-field requests: a 4xx naming the field,
//! never a 5xx, never a half-written job.

use kobo_protocol::ErrorBody;
use kobo_tests::cluster::Cluster;
use reqwest::StatusCode;

struct Raw {
    http: reqwest::Client,
    base: String,
    /// An API key, or none for a client presenting a node certificate.
    key: Option<String>,
}

impl Raw {
    fn new(cluster: &Cluster) -> Raw {
        let ca = std::fs::read(cluster.ca_path()).expect("ca");
        Raw {
            http: kobo_client::http_client(Some(&ca)).expect("client"),
            base: cluster.url(),
            key: kobo_protocol::DataDir::new(&cluster.data_dir).local_admin_key(),
        }
    }

    async fn node(cluster: &Cluster, node_id: &str) -> Raw {
        Raw {
            http: cluster.enroll_raw(node_id).await,
            base: cluster.url(),
            key: None,
        }
    }

    fn auth(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    async fn post(&self, path: &str, body: Vec<u8>) -> (StatusCode, Option<ErrorBody>) {
        let response = self
            .auth(self.http.post(format!("{}{path}", self.base)))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("send");
        let status = response.status();
        let bytes = response.bytes().await.expect("body");
        (status, serde_json::from_slice(&bytes).ok())
    }

    async fn get(&self, path: &str) -> (StatusCode, Option<ErrorBody>) {
        let response = self
            .auth(self.http.get(format!("{}{path}", self.base)))
            .send()
            .await
            .expect("send");
        let status = response.status();
        let bytes = response.bytes().await.expect("body");
        (status, serde_json::from_slice(&bytes).ok())
    }
}

fn job_count(cluster: &Cluster) -> i64 {
    cluster
        .db()
        .query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_submits_get_4xx_naming_the_field() {
    let cluster = Cluster::builder().start().await;
    let raw = Raw::new(&cluster);
    let cases: &[(&str, &[u8], StatusCode, &str)] = &[
        ("/v1/jobs", b"{not json", StatusCode::BAD_REQUEST, "body"),
        ("/v1/jobs", b"", StatusCode::BAD_REQUEST, "body"),
        ("/v1/jobs", b"[]", StatusCode::BAD_REQUEST, "body"),
        (
            "/v1/jobs",
            b"{\"prompt\":\"hi\"}",
            StatusCode::BAD_REQUEST,
            "kind",
        ),
        (
            "/v1/jobs",
            b"{\"kind\":\"q\",\"prompt\":\"hi\",\"colour\":1}",
            StatusCode::BAD_REQUEST,
            "colour",
        ),
        (
            "/v1/jobs",
            b"{\"kind\":\"q\",\"prompt\":\"hi\",\"options\":{\"temp\":1}}",
            StatusCode::BAD_REQUEST,
            "options.temp",
        ),
        (
            "/v1/jobs",
            b"{\"kind\":\"q\",\"prompt\":\"hi\",\"priority\":\"high\"}",
            StatusCode::BAD_REQUEST,
            "priority",
        ),
        (
            "/v1/jobs",
            b"{\"kind\":\"q\",\"prompt\":\"hi\",\"max_attempts\":-1}",
            StatusCode::BAD_REQUEST,
            "max_attempts",
        ),
        (
            "/v1/jobs",
            b"{\"kind\":\"q\",\"prompt\":\"hi\",\"max_attempts\":0}",
            StatusCode::BAD_REQUEST,
            "max_attempts",
        ),
        (
            "/v1/jobs",
            b"{\"kind\":\"q\"}",
            StatusCode::BAD_REQUEST,
            "prompt",
        ),
        (
            "/v1/jobs",
            b"{\"kind\":\"q\",\"prompt\":\"a\\u0000b\"}",
            StatusCode::BAD_REQUEST,
            "prompt",
        ),
        (
            "/v1/jobs",
            b"{\"kind\":\"q'; DROP TABLE jobs;--\",\"prompt\":\"x\"}",
            StatusCode::BAD_REQUEST,
            "kind",
        ),
        (
            "/v1/jobs",
            b"{\"kind\":\"q\",\"prompt\":\"\xff\xfe\"}",
            StatusCode::BAD_REQUEST,
            "prompt",
        ),
        (
            "/v1/jobs",
            b"{\"kind\":\"q\",\"prompt\":\"hi\"} trailing",
            StatusCode::BAD_REQUEST,
            "body",
        ),
        (
            "/v1/jobs/batch",
            b"{\"jobs\":[{\"kind\":\"q\",\"prompt\":\"ok\"},{\"kind\":\"\",\"prompt\":\"x\"}]}",
            StatusCode::BAD_REQUEST,
            "jobs[1].kind",
        ),
        (
            "/v1/jobs/batch",
            b"{\"jobs\":[]}",
            StatusCode::BAD_REQUEST,
            "jobs",
        ),
    ];
    let node = Raw::node(&cluster, "manual").await;
    let agent_cases: &[(&str, &[u8], StatusCode, &str)] = &[
        ("/v1/agent/lease", b"{\"node_id\":\"n\",\"instance_id\":\"i\",\"max_jobs\":0}", StatusCode::BAD_REQUEST, "max_jobs"),
        ("/v1/agent/heartbeat", b"{\"node_id\":\"n\"}", StatusCode::BAD_REQUEST, "instance_id"),
        ("/v1/agent/register", b"{\"node_id\":\"n\",\"instance_id\":\"i\",\"region\":\"r\",\"capabilities\":[],\"max_workers\":1,\"backend\":\"sim\"}", StatusCode::BAD_REQUEST, "capabilities"),
        ("/v1/agent/jobs/1/complete", b"{\"node_id\":\"n\",\"lease_token\":1,\"outcome\":{\"status\":\"maybe\"}}", StatusCode::BAD_REQUEST, "outcome"),
    ];
    let all = cases
        .iter()
        .map(|c| (&raw, c))
        .chain(agent_cases.iter().map(|c| (&node, c)));
    for (client, (path, body, status, field)) in all {
        let (got, error) = client.post(path, body.to_vec()).await;
        let shown = String::from_utf8_lossy(body);
        assert_eq!(got, *status, "{path} {shown}");
        let error = error.unwrap_or_else(|| panic!("{path} {shown}: no JSON error body"));
        let named = error.error.field.clone().unwrap_or_default();
        assert!(
            named.contains(field) || error.error.message.contains(field),
            "{path} {shown}: error {error:?} does not name {field}"
        );
    }
    assert_eq!(
        job_count(&cluster),
        0,
        "no rejected request wrote a job, not even half of a batch"
    );

    // Oversized bodies are refused before they are read whole.
    let huge = format!("{{\"kind\":\"q\",\"prompt\":\"{}\"}}", "x".repeat(17 << 20));
    let (got, _) = raw.post("/v1/jobs", huge.into_bytes()).await;
    assert_eq!(got, StatusCode::PAYLOAD_TOO_LARGE);
    let long_prompt = format!("{{\"kind\":\"q\",\"prompt\":\"{}\"}}", "x".repeat(2 << 20));
    let (got, error) = raw.post("/v1/jobs", long_prompt.into_bytes()).await;
    assert_eq!(got, StatusCode::BAD_REQUEST);
    assert_eq!(error.expect("error").error.field.as_deref(), Some("prompt"));

    // Bad paths and queries.
    for (path, status) in [
        ("/v1/jobs/abc", StatusCode::BAD_REQUEST),
        ("/v1/jobs/999999", StatusCode::NOT_FOUND),
        ("/v1/jobs?state=happy", StatusCode::BAD_REQUEST),
        ("/v1/jobs?limit=-3", StatusCode::BAD_REQUEST),
        ("/v1/nope", StatusCode::NOT_FOUND),
    ] {
        let (got, error) = raw.get(path).await;
        assert_eq!(got, status, "{path}");
        assert!(error.is_some(), "{path}: JSON error body");
    }
    // Agent calls from an enrolled node that never registered.
    let (got, _) = node
        .post(
            "/v1/agent/heartbeat",
            br#"{"node_id":"manual","instance_id":"i","running":[]}"#.to_vec(),
        )
        .await;
    assert_eq!(got, StatusCode::NOT_FOUND);
    assert_eq!(job_count(&cluster), 0);
    let integrity: String = cluster
        .db()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity");
    assert_eq!(integrity, "ok");
}
