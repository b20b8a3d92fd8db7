//! The one HTTPS client builder of kobo: TLS by rustls (ring), trusting
//! exactly the CA it is given (or the system roots), optionally presenting a
//! client certificate (agents' mutual TLS). The CLI, the MCP adapter, the
//! demo and the agent all build their clients here.

use std::time::Duration;

use crate::ClientError;

/// How to build a client; `Default` is a plain client of the system roots.
#[derive(Debug, Clone)]
pub struct HttpsOptions<'a> {
    /// Trust only the certificates in this PEM bundle.
    pub ca_pem: Option<&'a [u8]>,
    /// A client certificate chain and its key (PEM), for mutual TLS.
    pub identity: Option<(&'a [u8], &'a [u8])>,
    pub connect_timeout: Duration,
    /// A bound on every whole call, when set.
    pub timeout: Option<Duration>,
    /// HTTP/2 keep-alive pings, for long-lived connections through NAT; a
    /// ping unanswered this long fails the connection's calls.
    pub keep_alive: Option<Duration>,
    pub pool_idle_timeout: Option<Duration>,
    pub user_agent: &'static str,
}

impl Default for HttpsOptions<'_> {
    fn default() -> Self {
        HttpsOptions {
            ca_pem: None,
            identity: None,
            connect_timeout: Duration::from_secs(10),
            timeout: None,
            keep_alive: None,
            pool_idle_timeout: None,
            user_agent: concat!("kobo/", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// Builds a reqwest client as `options` say.
pub fn https_client(options: &HttpsOptions<'_>) -> Result<reqwest::Client, ClientError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let setup = |what: &str, source: Option<reqwest::Error>| ClientError::Setup {
        what: what.to_string(),
        source,
    };
    let mut builder = reqwest::Client::builder()
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true)
        .user_agent(options.user_agent);
    if let Some(timeout) = options.timeout {
        builder = builder.timeout(timeout);
    }
    if let Some(interval) = options.keep_alive {
        // A peer that does not answer a ping within the interval is gone
        // (a frozen or cut-off coordinator): its calls fail instead of
        // waiting for ever.
        builder = builder
            .http2_keep_alive_interval(interval)
            .http2_keep_alive_timeout(interval)
            .http2_keep_alive_while_idle(true);
    }
    if let Some(idle) = options.pool_idle_timeout {
        builder = builder.pool_idle_timeout(idle);
    }
    if let Some(pem) = options.ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| setup("parsing the CA certificate", Some(e)))?;
        if certs.is_empty() {
            return Err(setup("the CA file holds no certificate", None));
        }
        builder = builder.tls_certs_only(certs);
    }
    if let Some((cert_pem, key_pem)) = options.identity {
        let mut pem = cert_pem.to_vec();
        pem.push(b'\n');
        pem.extend_from_slice(key_pem);
        let identity = reqwest::Identity::from_pem(&pem)
            .map_err(|e| setup("reading the node certificate and key", Some(e)))?;
        builder = builder.identity(identity);
    }
    builder
        .build()
        .map_err(|e| setup("building the HTTPS client", Some(e)))
}
