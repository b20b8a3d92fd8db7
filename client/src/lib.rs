//! kobo-client: the typed HTTPS client of the coordinator's client routes,
//! used by the CLI, the MCP adapter, provisioning, the demo and tests.
//!
//! # Layout
//! - [`Endpoint`]: where and how to reach a coordinator (explicit, or the
//!   data directory of a local one).
//! - [`ApiClient`]: one method per route.
//! - [`error`]: [`ClientError`], typed (status, API error code, field), so no
//!   caller ever matches strings.
//! - [`https`]: the one HTTPS client builder of kobo (CLI, MCP, agent).
//! - [`follow`]: several coordinator URLs, following a standby's pointer to
//!   the leader, and the jittered [`Backoff`](follow::Backoff) of retries.

pub mod error;
pub mod follow;
pub mod https;

use std::path::{Path, PathBuf};
use std::time::Duration;

use kobo_protocol::{
    AccessRole, ApiKeyCreate, ApiKeyCreated, ApiKeyView, AuditList, AuditQuery, AuditVerify,
    ClientFile, DataDir, ErrorBody, JobDetail, JobId, JobList, JobListQuery, JobView, KeyPolicy,
    KeyPolicyUpdate, NodeView, RevokeResponse, SubmitBatch, SubmitBatchResponse, SubmitJob,
    SubmitResponse, TokenCreate, TokenCreated, UsageQuery, UsageRow,
};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use error::ClientError;
pub use https::{HttpsOptions, https_client};

/// What every call returns.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Where and how to reach a coordinator.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// One URL, or several comma-separated (coordinators sharing a
    /// database): calls go to the first that answers and follow a
    /// standby's pointer to the leader.
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
    ) -> Result<Endpoint> {
        let dir = DataDir::new(data_dir);
        let url = match url {
            Some(url) => url,
            None => {
                let path = dir.client_file();
                let text = std::fs::read_to_string(&path).map_err(|source| ClientError::Local {
                    what: format!(
                        "reading {} (is `kobo-coord serve` running with this --data-dir? elsewhere pass --url or KOBO_URL)",
                        path.display()
                    ),
                    source: Box::new(source),
                })?;
                let file: ClientFile =
                    serde_json::from_str(&text).map_err(|source| ClientError::Local {
                        what: format!("parsing {}", path.display()),
                        source: Box::new(source),
                    })?;
                file.url
            }
        };
        let ca_path = ca.or_else(|| {
            let local = dir.ca_cert();
            local.exists().then_some(local)
        });
        let ca_pem = match ca_path {
            Some(path) => Some(std::fs::read(&path).map_err(|source| ClientError::Local {
                what: format!("reading CA certificate {}", path.display()),
                source: Box::new(source),
            })?),
            None => None,
        };
        let api_key = api_key.or_else(|| dir.local_admin_key());
        Ok(Endpoint {
            url,
            ca_pem,
            api_key,
        })
    }
}

/// Connect timeout for client calls.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings of client connections: a coordinator that stops answering
/// them (frozen, cut off) fails the calls in flight after this long, so a
/// client of several coordinators moves on to the next.
const KEEP_ALIVE: Duration = Duration::from_secs(3);

/// Builds a client that trusts `ca_pem` only (or the system roots when none
/// is given).
pub fn http_client(ca_pem: Option<&[u8]>) -> Result<reqwest::Client> {
    https_client(&HttpsOptions {
        ca_pem,
        connect_timeout: CONNECT_TIMEOUT,
        keep_alive: Some(KEEP_ALIVE),
        user_agent: concat!("kobo/", env!("CARGO_PKG_VERSION")),
        ..HttpsOptions::default()
    })
}

/// How long a call keeps looking for the leader (coordinators that do not
/// answer, standbys that know no leader yet) before it gives up: longer
/// than a takeover (10 s at most), short enough for a person at a prompt.
const FOLLOW_PATIENCE: Duration = Duration::from_secs(15);

#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    coordinators: follow::Coordinators,
    api_key: Option<String>,
}

impl ApiClient {
    pub fn new(endpoint: &Endpoint) -> Result<ApiClient> {
        let coordinators = follow::Coordinators::parse(&endpoint.url)
            .map_err(|what| ClientError::Setup { what, source: None })?;
        Ok(ApiClient {
            http: http_client(endpoint.ca_pem.as_deref())?,
            coordinators,
            api_key: endpoint.api_key.clone(),
        })
    }

    /// Sends the request `build` makes for a coordinator's base URL, to
    /// the leader: a standby's `503` naming the leader sends it there at
    /// once; with several URLs, one that does not answer (nothing was
    /// sent) or stands by without knowing the leader moves it to the next,
    /// after a jittered backoff, for up to [`FOLLOW_PATIENCE`]. The last
    /// answer (or failure) is returned as it is.
    async fn send(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let deadline = tokio::time::Instant::now() + FOLLOW_PATIENCE;
        let mut backoff = follow::Backoff::default();
        // Hops straight to a named leader without waiting, bounded so two
        // standbys naming each other cannot loop.
        let mut hops_left = self.coordinators.urls().len() + 1;
        loop {
            let base = self.coordinators.current();
            let mut request = build(&base);
            if let Some(key) = &self.api_key {
                request = request.bearer_auth(key);
            }
            let patient = tokio::time::Instant::now() < deadline;
            match request.send().await {
                Ok(response) => match follow::answer(response.status(), response.headers()) {
                    follow::Answer::Served => return Ok(response),
                    _ if !patient => return Ok(response),
                    follow::Answer::Leader(leader) if leader != base && hops_left > 0 => {
                        hops_left -= 1;
                        tracing::info!(standby = %base, %leader, "following the leader");
                        self.coordinators.follow(&leader);
                        continue;
                    }
                    follow::Answer::Leader(_) | follow::Answer::NoLeader => {
                        tracing::info!(standby = %base, "the coordinator stands by; trying another");
                        self.coordinators.advance(&base);
                    }
                },
                Err(err) if err.is_connect() && patient && self.coordinators.urls().len() > 1 => {
                    tracing::info!(url = %base, error = %err, "coordinator unreachable; trying another");
                    self.coordinators.advance(&base);
                }
                Err(err) => return Err(self.unreachable_at(&base, err)),
            }
            hops_left = self.coordinators.urls().len() + 1;
            backoff.sleep().await;
        }
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: Vec<(String, String)>,
        body: Option<&B>,
    ) -> Result<T> {
        let response = self
            .send(|base| {
                let mut request = self.http.request(method.clone(), format!("{base}{path}"));
                if !query.is_empty() {
                    request = request.query(&query);
                }
                if let Some(body) = body {
                    request = request.json(body);
                }
                request
            })
            .await?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.unreachable(e))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode {
                path: path.to_string(),
                source,
            });
        }
        Err(api_error(status, &bytes))
    }

    pub async fn submit(&self, job: &SubmitJob) -> Result<SubmitResponse> {
        self.call(Method::POST, "/v1/jobs", Vec::new(), Some(job))
            .await
    }

    pub async fn submit_batch(&self, jobs: Vec<SubmitJob>) -> Result<SubmitBatchResponse> {
        self.call(
            Method::POST,
            "/v1/jobs/batch",
            Vec::new(),
            Some(&SubmitBatch { jobs }),
        )
        .await
    }

    pub async fn jobs(&self, query: &JobListQuery) -> Result<JobList> {
        self.call(Method::GET, "/v1/jobs", query_pairs(query), None::<&()>)
            .await
    }

    pub async fn job(&self, id: JobId) -> Result<JobDetail> {
        self.call(
            Method::GET,
            &format!("/v1/jobs/{id}"),
            Vec::new(),
            None::<&()>,
        )
        .await
    }

    /// Waits up to `timeout` for the job to finish; returns it either way.
    pub async fn wait(&self, id: JobId, timeout: Duration) -> Result<JobView> {
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
    pub async fn wait_terminal(&self, id: JobId) -> Result<JobView> {
        loop {
            let job = self.wait(id, Duration::from_secs(60)).await?;
            if job.state.is_terminal() {
                return Ok(job);
            }
        }
    }

    pub async fn cancel(&self, id: JobId) -> Result<JobView> {
        self.call(
            Method::POST,
            &format!("/v1/jobs/{id}/cancel"),
            Vec::new(),
            None::<&()>,
        )
        .await
    }

    fn unreachable(&self, source: reqwest::Error) -> ClientError {
        self.unreachable_at(&self.coordinators.current(), source)
    }

    fn unreachable_at(&self, url: &str, source: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            url: url.to_string(),
            source,
        }
    }

    /// The coordinator calls go to now (the leader, once one was found).
    pub fn base_url(&self) -> String {
        self.coordinators.current()
    }

    /// Every coordinator URL this client was given, comma-separated: what
    /// an agent it sets up should be given too.
    pub fn coordinator_urls(&self) -> String {
        self.coordinators.joined()
    }

    /// `GET /readyz`: whether this coordinator leads (200) or stands by
    /// (503, naming the leader); answered by the coordinator itself, never
    /// followed elsewhere.
    pub async fn readiness(&self) -> Result<kobo_protocol::Readiness> {
        let response = self
            .send(|base| self.http.get(format!("{base}/readyz")))
            .await?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.unreachable(e))?;
        if (status.is_success() || status == StatusCode::SERVICE_UNAVAILABLE)
            && let Ok(readiness) = serde_json::from_slice(&bytes)
        {
            return Ok(readiness);
        }
        Err(api_error(status, &bytes))
    }

    /// `GET /v1/status`: the cluster summary.
    pub async fn status(&self) -> Result<kobo_protocol::ClusterStatus> {
        self.call(Method::GET, "/v1/status", Vec::new(), None::<&()>)
            .await
    }

    pub async fn nodes(&self) -> Result<Vec<NodeView>> {
        self.call(Method::GET, "/v1/nodes", Vec::new(), None::<&()>)
            .await
    }

    pub async fn apikey_create(
        &self,
        name: &str,
        role: AccessRole,
        policy: KeyPolicy,
    ) -> Result<ApiKeyCreated> {
        let body = ApiKeyCreate {
            name: name.to_string(),
            role,
            policy,
        };
        self.call(Method::POST, "/v1/admin/apikeys", Vec::new(), Some(&body))
            .await
    }

    /// `PATCH /v1/admin/apikeys/{id}`: changes a key's weight, class,
    /// limits or budget; the key as it is now.
    pub async fn apikey_update(&self, id: &str, update: &KeyPolicyUpdate) -> Result<ApiKeyView> {
        self.call(
            Method::PATCH,
            &format!("/v1/admin/apikeys/{id}"),
            Vec::new(),
            Some(update),
        )
        .await
    }

    pub async fn apikey_list(&self) -> Result<Vec<ApiKeyView>> {
        self.call(Method::GET, "/v1/admin/apikeys", Vec::new(), None::<&()>)
            .await
    }

    pub async fn apikey_revoke(&self, id: &str) -> Result<()> {
        self.call_empty(Method::POST, &format!("/v1/admin/apikeys/{id}/revoke"))
            .await
    }

    pub async fn token_create(&self, node_id: &str, ttl: Duration) -> Result<TokenCreated> {
        let body = TokenCreate {
            node_id: node_id.to_string(),
            ttl_ms: ttl.as_millis() as u64,
        };
        self.call(Method::POST, "/v1/admin/tokens", Vec::new(), Some(&body))
            .await
    }

    /// `POST /v1/admin/enroll-keys`: the key's secret is in the answer only.
    pub async fn enroll_key_create(
        &self,
        prefix: &str,
        ttl: Option<Duration>,
        max_enrollments: Option<u32>,
    ) -> Result<kobo_protocol::EnrollKeyCreated> {
        let body = kobo_protocol::EnrollKeyCreate {
            prefix: prefix.to_string(),
            ttl_ms: ttl.map(|t| t.as_millis() as u64),
            max_enrollments,
        };
        self.call(
            Method::POST,
            "/v1/admin/enroll-keys",
            Vec::new(),
            Some(&body),
        )
        .await
    }

    pub async fn enroll_key_list(&self) -> Result<Vec<kobo_protocol::EnrollKeyView>> {
        self.call(
            Method::GET,
            "/v1/admin/enroll-keys",
            Vec::new(),
            None::<&()>,
        )
        .await
    }

    pub async fn enroll_key_revoke(&self, id: &str) -> Result<()> {
        self.call_empty(Method::POST, &format!("/v1/admin/enroll-keys/{id}/revoke"))
            .await
    }

    pub async fn node_revoke(&self, node_id: &str) -> Result<RevokeResponse> {
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
    ) -> Result<kobo_protocol::CertificateIssued> {
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
    ) -> Result<kobo_protocol::ProvisionRecorded> {
        self.call(
            Method::POST,
            "/v1/admin/provision-runs",
            Vec::new(),
            Some(run),
        )
        .await
    }

    /// `GET /v1/join/ca`: the coordinator's CA certificate (PEM).
    pub async fn join_ca(&self) -> Result<String> {
        let response = self
            .send(|base| self.http.get(format!("{base}/v1/join/ca")))
            .await?;
        let status = response.status();
        let bytes = response.bytes().await.unwrap_or_default();
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        String::from_utf8(bytes.to_vec()).map_err(|_| ClientError::Protocol {
            message: "the CA certificate is not text".into(),
        })
    }

    /// `GET /v1/usage`: usage summed per the query's grouping (an admin
    /// sees every key, anyone else only its own).
    /// `GET /v1/scaling`: the backlog of the work `query` matches and the agents it needs.
    pub async fn scaling(
        &self,
        query: &kobo_protocol::ScalingQuery,
    ) -> Result<kobo_protocol::ScalingView> {
        self.call(Method::GET, "/v1/scaling", query_pairs(query), None::<&()>)
            .await
    }

    pub async fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageRow>> {
        self.call(Method::GET, "/v1/usage", query_pairs(query), None::<&()>)
            .await
    }

    pub async fn audit(&self, query: &AuditQuery) -> Result<AuditList> {
        self.call(
            Method::GET,
            "/v1/admin/audit",
            query_pairs(query),
            None::<&()>,
        )
        .await
    }

    pub async fn audit_verify(&self) -> Result<AuditVerify> {
        self.call(
            Method::GET,
            "/v1/admin/audit/verify",
            Vec::new(),
            None::<&()>,
        )
        .await
    }

    pub async fn drain(&self, node_id: &str) -> Result<serde_json::Value> {
        self.call(
            Method::POST,
            &format!("/v1/admin/nodes/{node_id}/drain"),
            Vec::new(),
            None::<&()>,
        )
        .await
    }

    pub async fn resume(&self, node_id: &str) -> Result<serde_json::Value> {
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
    ) -> Result<kobo_protocol::ScheduleView> {
        self.call(Method::POST, "/v1/schedules", Vec::new(), Some(schedule))
            .await
    }

    pub async fn schedules(&self) -> Result<Vec<kobo_protocol::ScheduleView>> {
        self.call(Method::GET, "/v1/schedules", Vec::new(), None::<&()>)
            .await
    }

    pub async fn schedule_remove(&self, name: &str) -> Result<()> {
        self.call_empty(Method::DELETE, &format!("/v1/schedules/{name}"))
            .await
    }

    pub async fn schedule_pause(&self, name: &str, paused: bool) -> Result<()> {
        let verb = if paused { "pause" } else { "resume" };
        self.call_empty(Method::POST, &format!("/v1/schedules/{name}/{verb}"))
            .await
    }

    /// A gateway call (`/v1/chat/completions`, `/api/chat`, …) with kobo's
    /// routing headers (`x-kobo-kind`, …); the answer, once its status is a
    /// success, to be read as the stream it is.
    pub async fn gateway(
        &self,
        path: &str,
        body: &serde_json::Value,
        headers: &[(&str, String)],
    ) -> Result<reqwest::Response> {
        let response = self
            .send(|base| {
                let mut request = self.http.post(format!("{base}{path}")).json(body);
                for (name, value) in headers {
                    request = request.header(*name, value);
                }
                request
            })
            .await?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let bytes = response.bytes().await.unwrap_or_default();
        Err(gateway_error(status, &bytes))
    }

    /// A call whose success has no body (204).
    async fn call_empty(&self, method: Method, path: &str) -> Result<()> {
        let response = self
            .send(|base| self.http.request(method.clone(), format!("{base}{path}")))
            .await?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let bytes = response.bytes().await.unwrap_or_default();
        Err(api_error(status, &bytes))
    }
}

fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(err) => ClientError::Api {
            status: status.as_u16(),
            code: err.error.code,
            message: err.error.message,
            field: err.error.field,
        },
        Err(_) => ClientError::Api {
            status: status.as_u16(),
            code: String::new(),
            message: String::from_utf8_lossy(body).trim().to_string(),
            field: None,
        },
    }
}

/// An error of a gateway route: OpenAI's `{"error":{message,param,code}}` or
/// Ollama's `{"error":"…"}`.
fn gateway_error(status: StatusCode, body: &[u8]) -> ClientError {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let error = &value["error"];
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    ClientError::Api {
        status: status.as_u16(),
        code: text(&error["code"]).unwrap_or_default(),
        message: text(&error["message"])
            .or_else(|| text(error))
            .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string()),
        field: text(&error["param"]),
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
