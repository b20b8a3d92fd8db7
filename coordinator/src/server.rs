//! The one TLS listener: a tokio-rustls accept loop that serves the axum
//! router over HTTP/1.1 and HTTP/2 and puts the peer's address and verified
//! client certificate on every request, plus the `serve` entry point.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::api::{self, AppState, PeerInfo};
use crate::config::ServeConfig;
use crate::dispatch::Hub;
use crate::queue::Queue;
use crate::store::Store;
use crate::tls;

/// A TLS handshake that takes longer than this is dropped (slow or hostile
/// clients must not hold a connection slot).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests get to finish after shutdown is asked for.
/// Parked lease requests are answered at once, so this is rarely used up.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Where clients find a local coordinator: `<data-dir>/client.json`.
pub const CLIENT_FILE: &str = "client.json";
/// The database file in the data directory.
pub const DB_FILE: &str = "kobo.db";

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ClientFile {
    pub url: String,
}

/// Prepares the data directory: database, CA, server certificate.
pub fn prepare(config: &ServeConfig) -> anyhow::Result<(Store, Arc<Hub>, tls::CertPaths)> {
    fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let paths = tls::CertPaths::in_dir(&config.data_dir);
    tls::ensure_ca(&paths).context("creating the certificate authority")?;
    tls::ensure_server_cert(&paths, &tls::server_names(&config.sans))
        .context("issuing the server certificate")?;
    let hub = Arc::new(Hub::new(config.queue.clone()));
    let db = config.data_dir.join(DB_FILE);
    let store =
        Store::open(&db, hub.clone()).with_context(|| format!("opening {}", db.display()))?;
    Ok((store, hub, paths))
}

/// Runs the coordinator on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    config: ServeConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (store, hub, paths) = prepare(&config)?;
    let queue = Queue::new(store, hub);
    queue
        .recover_after_restart()
        .await
        .context("recovering leases after start")?;
    let local = listener
        .local_addr()
        .context("reading the listen address")?;
    write_client_file(&config.data_dir, config.advertise_url.as_deref(), local)?;
    let tls_config = tls::server_config(&paths).context("loading the server certificate")?;
    let app = api::router(AppState {
        queue: queue.clone(),
    });
    let tracker = TaskTracker::new();
    let timer_queue = queue.clone();
    let timer_shutdown = shutdown.clone();
    tracker.spawn(async move { timer_queue.run_timer(timer_shutdown).await });
    tracing::info!(addr = %local, data_dir = %config.data_dir.display(), "kobo-coord serving");
    let hub = queue.hub.clone();
    let unpark_shutdown = shutdown.clone();
    tracker.spawn(async move {
        // Parked lease requests are answered at once instead of holding
        // shutdown for a whole long-poll.
        unpark_shutdown.cancelled().await;
        hub.unpark_all();
    });
    accept_loop(
        listener,
        TlsAcceptor::from(tls_config),
        app,
        shutdown.clone(),
        &tracker,
    )
    .await;
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period; closing them");
    }
    tracing::info!("kobo-coord stopped");
    Ok(())
}

fn write_client_file(dir: &Path, advertise: Option<&str>, local: SocketAddr) -> anyhow::Result<()> {
    let url = match advertise {
        Some(url) => url.to_string(),
        None if local.ip().is_unspecified() => format!("https://127.0.0.1:{}", local.port()),
        None => format!("https://{local}"),
    };
    let path = dir.join(CLIENT_FILE);
    let tmp = dir.join(format!("{CLIENT_FILE}.tmp"));
    fs::write(&tmp, serde_json::to_vec_pretty(&ClientFile { url })?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: Router,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    loop {
        let (tcp, addr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    tracing::debug!(peer = %addr, error = %err, "tls handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %addr, "tls handshake timed out");
                    return;
                }
            };
            let peer = PeerInfo {
                addr,
                client_certs: tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect()),
            };
            let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(peer.clone());
                app.clone().call(request)
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(peer = %addr, error = %err, "connection ended with an error");
                    }
                }
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await;
                }
            }
        });
    }
}
