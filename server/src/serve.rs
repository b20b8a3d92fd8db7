//! The one TLS listener: a tokio-rustls accept loop that serves the axum
//! router over HTTP/1.1 and HTTP/2 and puts the peer's address and verified
//! client certificate on every request, plus the `serve` entry point.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use kobo_protocol::files::{Access, write_atomic};
use kobo_protocol::{ClientFile, DataDir};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::api::{self, AppState, PeerInfo};
use crate::deadline_io::FirstByteDeadline;
use crate::session::Sessions;
use kobo_queue::access::{Caller, Principal};
use kobo_queue::admin::{Admin, record};
use kobo_queue::config::ServeConfig;
use kobo_queue::init;
use kobo_queue::pki;

/// A TLS handshake that takes longer than this is dropped (slow or hostile
/// clients must not hold a connection slot).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests get to finish after shutdown is asked for.
/// Parked lease requests are answered at once, so this is rarely used up.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How often the server certificate's expiry is checked while serving.
const CERT_CHECK_INTERVAL: Duration = Duration::from_secs(3600);
/// Request headers must arrive within this long (slowloris clients are cut).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most concurrent streams on one HTTP/2 connection.
const MAX_H2_STREAMS: u32 = 1024;

/// Runs the coordinator on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    config: ServeConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let prepared = init::open(&config, shutdown.clone())?;
    let queue = prepared.queue.clone();
    queue
        .recover_after_restart()
        .await
        .context("recovering leases after start")?;
    queue
        .load_routing_state()
        .await
        .context("loading the routing state")?;
    let local = listener
        .local_addr()
        .context("reading the listen address")?;
    write_client_file(&config.data_dir, config.advertise_url.as_deref(), local)?;
    let cert = crate::tls::ReloadingCert::new(&prepared.paths)
        .context("loading the server certificate")?;
    let tls_config =
        crate::tls::server_config(&prepared.paths, cert.clone()).context("configuring TLS")?;
    let observer = prepared.observer.clone();
    let sessions = Arc::new(Sessions::default());
    let app = api::router(AppState {
        queue: queue.clone(),
        admin: prepared.admin.clone(),
        access: prepared.access.clone(),
        observe: observer.clone(),
        sessions: sessions.clone(),
        gateway: Arc::new(config.gateway.clone()),
    });
    let tracker = TaskTracker::new();
    tracker.spawn(observer.clone().run_pump());
    print_dashboard_url(
        &sessions,
        config.advertise_url.as_deref(),
        local,
        &config.data_dir,
    );
    let timer_queue = queue.clone();
    let timer_shutdown = shutdown.clone();
    tracker.spawn(async move { timer_queue.run_timer(timer_shutdown).await });
    let renew_shutdown = shutdown.clone();
    let (paths, names) = (prepared.paths.clone(), pki::server_names(&config.sans));
    tracker.spawn(async move {
        loop {
            tokio::select! {
                _ = renew_shutdown.cancelled() => return,
                _ = tokio::time::sleep(CERT_CHECK_INTERVAL) => {}
            }
            let (cert, paths, names) = (cert.clone(), paths.clone(), names.clone());
            match tokio::task::spawn_blocking(move || cert.renew_if_due(&paths, &names)).await {
                Ok(Ok(true)) => tracing::info!("server certificate renewed"),
                Ok(Ok(false)) => {}
                Ok(Err(err)) => tracing::error!(error = %err, "server certificate renewal failed"),
                Err(err) => tracing::error!(error = %err, "server certificate renewal panicked"),
            }
        }
    });
    tracing::info!(addr = %local, data_dir = %config.data_dir.display(), "kobo-coord serving");
    let unpark_queue = queue.clone();
    let unpark_shutdown = shutdown.clone();
    tracker.spawn(async move {
        // Parked lease requests are answered at once instead of holding
        // shutdown for a whole long-poll.
        unpark_shutdown.cancelled().await;
        unpark_queue.unpark_all();
    });
    accept_loop(
        listener,
        TlsAcceptor::from(tls_config),
        app,
        prepared.admin.clone(),
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

/// The URL clients use: the advertised one, else the bound address.
fn client_url(advertise: Option<&str>, local: SocketAddr) -> String {
    match advertise {
        Some(url) => url.to_string(),
        None if local.ip().is_unspecified() => format!("https://127.0.0.1:{}", local.port()),
        None => format!("https://{local}"),
    }
}

/// Prints the dashboard's address and a one-time login URL (as Jupyter
/// does) on standard output; the log says where, without the token.
fn print_dashboard_url(
    sessions: &Sessions,
    advertise: Option<&str>,
    local: SocketAddr,
    data_dir: &Path,
) {
    let url = client_url(advertise, local);
    let token = sessions.mint_login_token(kobo_queue::unix_now_ms());
    let hours = crate::session::LOGIN_URL_TTL.as_secs() / 3600;
    println!("kobo dashboard: {}/", url.trim_end_matches('/'));
    println!(
        "  log in once with this link (valid {hours} h), or with an API key ({}/admin.key is an admin key):",
        data_dir.display()
    );
    println!("  {}/login?token={token}", url.trim_end_matches('/'));
    tracing::info!(%url, "dashboard served at /; a one-time login link was printed on standard output");
}

fn write_client_file(dir: &Path, advertise: Option<&str>, local: SocketAddr) -> anyhow::Result<()> {
    let url = client_url(advertise, local);
    let path = DataDir::new(dir).client_file();
    let json = serde_json::to_vec_pretty(&ClientFile { url })?;
    write_atomic(&path, &json, Access::Public)
        .with_context(|| format!("writing {}", path.display()))
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: Router,
    admin: Admin,
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
        let admin = admin.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let refused = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => Ok(tls),
                Ok(Err(err)) => Err(format!("tls handshake failed: {err}")),
                Err(_) => Err("tls handshake timed out".to_string()),
            };
            let tls = match refused {
                Ok(tls) => tls,
                Err(why) => {
                    tracing::debug!(peer = %addr, %why, "connection refused");
                    let caller = Caller {
                        principal: Principal::Anonymous,
                        source: Some(addr.to_string()),
                        request_id: None,
                    };
                    if let Err(err) = admin.audit(record(&caller, "auth.tls", None, "denied", Some(why))).await {
                        tracing::error!(error = %err, "could not audit a refused handshake");
                    }
                    return;
                }
            };
            let peer = PeerInfo {
                addr,
                node_cert: tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(pki::node_cert),
            };
            let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(peer.clone());
                app.clone().call(request)
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(MAX_H2_STREAMS);
            let io = FirstByteDeadline::new(tls, HEADER_READ_TIMEOUT);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
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
