//! A typed HTTPS client for the coordinator's client routes, used by the CLI,
//! the demo, tests and (later) the MCP adapter.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use kobo_protocol::{
    AccessRole, ApiKeyCreate, ApiKeyCreated, ApiKeyView, AuditList, AuditQuery, AuditVerify,
    ErrorBody, JobDetail, JobId, JobList, JobListQuery, JobView, NodeView, RevokeResponse,
    SubmitBatch, SubmitBatchResponse, SubmitJob, SubmitResponse, TokenCreate, TokenCreated,
};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::server::{CLIENT_FILE, ClientFile};

/// Connect timeout for client calls.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to reach a coordinator.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub url: String,
    pub ca_pem: Option<Vec<u8>>,
    /// Sent as `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
}

impl Endpoint {
    /// Resolves the endpoint: explicit `url`/`ca` win; otherwise the data
    /// directory's `client.json` and `ca.pem` (a local coordinator).
    pub fn resolve(
        data_dir: &Path,
        url: Option<String>,
        ca: Option<PathBuf>,
        api_key: Option<String>,
    ) -> anyhow::Result<Endpoint> {
        let url = match url {
            Some(url) => url,
            None => {
                let path = data_dir.join(CLIENT_FILE);
                let text = std::fs::read_to_string(&path).with_context(|| {
                    format!(
                        "reading {} (is `kobo-coord serve` running with this --data-dir? elsewhere pass --url or KOBO_URL)",
                        path.display()
                    )
                })?;
                let file: ClientFile = serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", path.display()))?;
                file.url
            }
        };
        let ca_path = ca.or_else(|| {
            let local = data_dir.join("ca.pem");
            local.exists().then_some(local)
        });
        let ca_pem = match ca_path {
            Some(path) => Some(
                std::fs::read(&path)
                    .with_context(|| format!("reading CA certificate {}", path.display()))?,
            ),
            None => None,
        };
        let api_key = api_key.or_else(|| crate::init::local_admin_key(data_dir));
        Ok(Endpoint {
            url,
            ca_pem,
            api_key,
        })
    }
}

/// Builds a reqwest client that trusts `ca_pem` only (or the system roots
/// when none is given).
pub fn http_client(ca_pem: Option<&[u8]>) -> anyhow::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .user_agent(concat!("kobo/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = ca_pem {
        let certs =
            reqwest::Certificate::from_pem_bundle(pem).context("parsing the CA certificate")?;
        if certs.is_empty() {
            bail!("the CA file holds no certificate");
        }
        builder = builder.tls_certs_only(certs);
    }
    builder.build().context("building the HTTPS client")
}

#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    api_key: Option<String>,
}

impl ApiClient {
    pub fn new(endpoint: &Endpoint) -> anyhow::Result<ApiClient> {
        Ok(ApiClient {
            http: http_client(endpoint.ca_pem.as_deref())?,
            base: endpoint.url.trim_end_matches('/').to_string(),
            api_key: endpoint.api_key.clone(),
        })
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: Vec<(String, String)>,
        body: Option<&B>,
    ) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if !query.is_empty() {
            request = request.query(&query);
        }
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the coordinator at {}", self.base))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .context("reading the coordinator's answer")?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .with_context(|| format!("decoding the answer of {path}"));
        }
        Err(api_error(status, &bytes))
    }

    pub async fn submit(&self, job: &SubmitJob) -> anyhow::Result<SubmitResponse> {
        self.call(Method::POST, "/v1/jobs", Vec::new(), Some(job))
            .await
    }

    pub async fn submit_batch(&self, jobs: Vec<SubmitJob>) -> anyhow::Result<SubmitBatchResponse> {
        self.call(
            Method::POST,
            "/v1/jobs/batch",
            Vec::new(),
            Some(&SubmitBatch { jobs }),
        )
        .await
    }

    pub async fn jobs(&self, query: &JobListQuery) -> anyhow::Result<JobList> {
        self.call(Method::GET, "/v1/jobs", query_pairs(query), None::<&()>)
            .await
    }

    pub async fn job(&self, id: JobId) -> anyhow::Result<JobDetail> {
        self.call(
            Method::GET,
            &format!("/v1/jobs/{id}"),
            Vec::new(),
            None::<&()>,
        )
        .await
    }

    /// Waits up to `timeout` for the job to finish; returns it either way.
    pub async fn wait(&self, id: JobId, timeout: Duration) -> anyhow::Result<JobView> {
        let query = kobo_protocol::WaitQuery {
            timeout_ms: Some(timeout.as_millis() as u64),
        };
        self.call(
            Method::GET,
            &format!("/v1/jobs/{id}/wait"),
            query_pairs(&query),
            None::<&()>,
        )
        .await
    }

    /// Waits for the job to finish, however long it takes.
    pub async fn wait_terminal(&self, id: JobId) -> anyhow::Result<JobView> {
        loop {
            let job = self.wait(id, Duration::from_secs(60)).await?;
            if job.state.is_terminal() {
                return Ok(job);
            }
        }
    }

    pub async fn cancel(&self, id: JobId) -> anyhow::Result<JobView> {
        self.call(
            Method::POST,
            &format!("/v1/jobs/{id}/cancel"),
            Vec::new(),
            None::<&()>,
        )
        .await
    }

    /// The coordinator's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET /v1/status`: the cluster summary.
    pub async fn status(&self) -> anyhow::Result<kobo_protocol::ClusterStatus> {
        self.call(Method::GET, "/v1/status", Vec::new(), None::<&()>)
            .await
    }

    pub async fn nodes(&self) -> anyhow::Result<Vec<NodeView>> {
        self.call(Method::GET, "/v1/nodes", Vec::new(), None::<&()>)
            .await
    }

    pub async fn apikey_create(
        &self,
        name: &str,
        role: AccessRole,
    ) -> anyhow::Result<ApiKeyCreated> {
        let body = ApiKeyCreate {
            name: name.to_string(),
            role,
        };
        self.call(Method::POST, "/v1/admin/apikeys", Vec::new(), Some(&body))
            .await
    }

    pub async fn apikey_list(&self) -> anyhow::Result<Vec<ApiKeyView>> {
        self.call(Method::GET, "/v1/admin/apikeys", Vec::new(), None::<&()>)
            .await
    }

    pub async fn apikey_revoke(&self, id: &str) -> anyhow::Result<()> {
        self.call_empty(Method::POST, &format!("/v1/admin/apikeys/{id}/revoke"))
            .await
    }

    pub async fn token_create(&self, node_id: &str, ttl: Duration) -> anyhow::Result<TokenCreated> {
        let body = TokenCreate {
            node_id: node_id.to_string(),
            ttl_ms: ttl.as_millis() as u64,
        };
        self.call(Method::POST, "/v1/admin/tokens", Vec::new(), Some(&body))
            .await
    }

    pub async fn node_revoke(&self, node_id: &str) -> anyhow::Result<RevokeResponse> {
        self.call(
            Method::POST,
            &format!("/v1/admin/nodes/{node_id}/revoke"),
            Vec::new(),
            None::<&()>,
        )
        .await
    }

    /// `POST /v1/admin/certificates`: a certificate for a CSR made on a node.
    pub async fn certificate_issue(
        &self,
        node_id: &str,
        csr_pem: &str,
    ) -> anyhow::Result<kobo_protocol::CertificateIssued> {
        let body = kobo_protocol::CertificateIssue {
            node_id: node_id.to_string(),
            csr_pem: csr_pem.to_string(),
        };
        self.call(
            Method::POST,
            "/v1/admin/certificates",
            Vec::new(),
            Some(&body),
        )
        .await
    }

    /// `POST /v1/admin/provision-runs`: one host's outcome, audited.
    pub async fn provision_run_record(
        &self,
        run: &kobo_protocol::ProvisionRun,
    ) -> anyhow::Result<kobo_protocol::ProvisionRecorded> {
        self.call(
            Method::POST,
            "/v1/admin/provision-runs",
            Vec::new(),
            Some(run),
        )
        .await
    }

    /// `GET /v1/join/ca`: the coordinator's CA certificate (PEM).
    pub async fn join_ca(&self) -> anyhow::Result<String> {
        let response = self
            .http
            .get(format!("{}/v1/join/ca", self.base))
            .send()
            .await
            .with_context(|| format!("cannot reach the coordinator at {}", self.base))?;
        let status = response.status();
        let bytes = response.bytes().await.unwrap_or_default();
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        String::from_utf8(bytes.to_vec()).context("the CA certificate is not text")
    }

    pub async fn audit(&self, query: &AuditQuery) -> anyhow::Result<AuditList> {
        self.call(
            Method::GET,
            "/v1/admin/audit",
            query_pairs(query),
            None::<&()>,
        )
        .await
    }

    pub async fn audit_verify(&self) -> anyhow::Result<AuditVerify> {
        self.call(
            Method::GET,
            "/v1/admin/audit/verify",
            Vec::new(),
            None::<&()>,
        )
        .await
    }

    pub async fn drain(&self, node_id: &str) -> anyhow::Result<serde_json::Value> {
        self.call(
            Method::POST,
            &format!("/v1/admin/nodes/{node_id}/drain"),
            Vec::new(),
            None::<&()>,
        )
        .await
    }

    pub async fn resume(&self, node_id: &str) -> anyhow::Result<serde_json::Value> {
        self.call(
            Method::POST,
            &format!("/v1/admin/nodes/{node_id}/resume"),
            Vec::new(),
            None::<&()>,
        )
        .await
    }

    pub async fn schedule_create(
        &self,
        schedule: &kobo_protocol::ScheduleCreate,
    ) -> anyhow::Result<kobo_protocol::ScheduleView> {
        self.call(Method::POST, "/v1/schedules", Vec::new(), Some(schedule))
            .await
    }

    pub async fn schedules(&self) -> anyhow::Result<Vec<kobo_protocol::ScheduleView>> {
        self.call(Method::GET, "/v1/schedules", Vec::new(), None::<&()>)
            .await
    }

    pub async fn schedule_remove(&self, name: &str) -> anyhow::Result<()> {
        self.call_empty(Method::DELETE, &format!("/v1/schedules/{name}"))
            .await
    }

    pub async fn schedule_pause(&self, name: &str, paused: bool) -> anyhow::Result<()> {
        let verb = if paused { "pause" } else { "resume" };
        self.call_empty(Method::POST, &format!("/v1/schedules/{name}/{verb}"))
            .await
    }

    /// A call whose success has no body (204).
    async fn call_empty(&self, method: Method, path: &str) -> anyhow::Result<()> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the coordinator at {}", self.base))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let bytes = response.bytes().await.unwrap_or_default();
        Err(api_error(status, &bytes))
    }
}

fn api_error(status: StatusCode, body: &[u8]) -> anyhow::Error {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(err) => anyhow!("{} ({})", err.error.message, status),
        Err(_) => anyhow!("{}: {}", status, String::from_utf8_lossy(body)),
    }
}

/// A query struct as key/value pairs (its JSON fields, nulls left out).
fn query_pairs<T: Serialize>(query: &T) -> Vec<(String, String)> {
    match serde_json::to_value(query) {
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect(),
        _ => Vec::new(),
    }
}
