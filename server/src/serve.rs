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
use crate::body_rate::{Pace, PacedBody};
use crate::deadline_io::FirstByteDeadline;
use crate::limits::{Gate, Refusals};
use crate::session::Sessions;
use axum::body::Body;
use kobo_queue::config::{ConnectionLimits, ServeConfig};
use kobo_queue::init;
use kobo_queue::leader::Role;
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
/// Most headers of one HTTP/1.1 request (hyper's default is 100).
const MAX_H1_HEADERS: usize = 100;
/// Largest HTTP/1.1 read buffer: the request line and headers must fit.
const MAX_H1_BUFFER: usize = 64 << 10;
/// HTTP/2 keep-alive pings find dead peers (a vanished agent's connection).
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// A ping unanswered for this long closes the connection.
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// A leader that becomes a standby answers its parked lease requests at
/// once (with no work): agents ask again, get `503 standby` and re-park at
/// the leader instead of waiting out a long poll here.
async fn unpark_when_deposed(
    mut role: tokio::sync::watch::Receiver<Role>,
    queue: kobo_queue::Queue,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = role.changed() => if changed.is_err() { return },
        }
        let now = role.borrow_and_update().clone();
        if let Role::Standby { leader_address } = now {
            tracing::warn!(
                leader = leader_address.as_deref().unwrap_or("unknown"),
                "standing by: parked lease requests are answered and agents sent to the leader"
            );
            queue.unpark_all();
        }
    }
}

/// The start of a leadership term (or of a lone coordinator's life): nodes
/// and leases get fresh deadlines (the coordinator, not they, was away), the
/// routing state and the keys are read from the database.
async fn begin_term(queue: &kobo_queue::Queue, admin: &kobo_queue::Admin) -> anyhow::Result<()> {
    queue
        .recover_after_restart()
        .await
        .context("recovering leases after start")?;
    queue
        .load_routing_state()
        .await
        .context("loading the routing state")?;
    admin
        .reload_access()
        .await
        .context("reading the API keys and certificates")?;
    Ok(())
}

/// Runs `work` for each term this coordinator leads, with a token cancelled
/// when the term ends (deposed, or shut down). A role channel whose sender
/// is gone (a lone coordinator) never changes: one term, until shutdown.
async fn while_leading<F, Fut>(
    mut role: tokio::sync::watch::Receiver<Role>,
    shutdown: CancellationToken,
    mut work: F,
) where
    F: FnMut(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        while !role.borrow_and_update().is_leader() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = role.changed() => if changed.is_err() { return },
            }
        }
        let term = shutdown.child_token();
        let mut watch = role.clone();
        let ends = term.clone();
        let deposed = async move {
            loop {
                if watch.changed().await.is_err() {
                    // Nobody changes the role any more: the term lasts.
                    return std::future::pending().await;
                }
                if !watch.borrow_and_update().is_leader() {
                    ends.cancel();
                    return;
                }
            }
        };
        tokio::select! {
            _ = work(term.clone()) => {}
            _ = deposed => {}
        }
        term.cancel();
        if shutdown.is_cancelled() {
            return;
        }
    }
}

/// Retires nodes lost longer than `retire_after` ms until `term` ends.
async fn retire_lost_nodes(admin: kobo_queue::Admin, retire_after: u64, term: CancellationToken) {
    let every = (Duration::from_millis(retire_after) / 10)
        .clamp(Duration::from_millis(100), Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = term.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(err) = admin.retire_lost(retire_after).await {
            tracing::error!(error = %err, "retiring lost nodes failed");
        }
    }
}

/// Runs the coordinator on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    config: ServeConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let local = listener
        .local_addr()
        .context("reading the listen address")?;
    let mut config = config;
    // Coordinators sharing a PostgreSQL database elect one leader; the
    // campaign lives as long as this function (dropping it steps down).
    let _leadership = match (&config.database, &config.role) {
        (Some(url), None) => {
            // The leader row is in the schema: migrate before campaigning.
            let prepare = url.clone();
            tokio::task::spawn_blocking(move || {
                kobo_queue::store::Store::prepare_postgres(&prepare)
            })
            .await
            .context("preparing the database")?
            .with_context(|| {
                format!(
                    "preparing {}",
                    kobo_queue::store::Database::Postgres(url.clone()).display()
                )
            })?;
            let address = client_url(config.advertise_url.as_deref(), local);
            let leadership = kobo_queue::leader::Leadership::start(
                kobo_queue::leader::LeadershipConfig::new(url.clone(), address),
            );
            config.role = Some(leadership.subscribe());
            Some(leadership)
        }
        _ => None,
    };
    let shared = config.role.is_some();
    // Opening the store blocks (a PostgreSQL connection, a SQLite check):
    // off the runtime's threads.
    let prepared = {
        let (config, shutdown) = (config.clone(), shutdown.clone());
        tokio::task::spawn_blocking(move || init::open(&config, shutdown))
            .await
            .context("opening the store")??
    };
    let queue = prepared.queue.clone();
    if !shared {
        // A lone coordinator's one term starts here, before it serves.
        begin_term(&queue, &prepared.admin).await?;
    }
    write_client_file(&config.data_dir, config.advertise_url.as_deref(), local)?;
    let cert = crate::tls::ReloadingCert::new(&prepared.paths)
        .context("loading the server certificate")?;
    let tls_config =
        crate::tls::server_config(&prepared.paths, cert.clone()).context("configuring TLS")?;
    let observer = prepared.observer.clone();
    let sessions = Arc::new(Sessions::default());
    let role = config.role.clone().unwrap_or_else(|| {
        // A lone coordinator leads, for good: nothing ever changes the role.
        tokio::sync::watch::channel(Role::Leader { epoch: 0 }).1
    });
    let app = api::router(AppState {
        queue: queue.clone(),
        admin: prepared.admin.clone(),
        access: prepared.access.clone(),
        observe: observer.clone(),
        sessions: sessions.clone(),
        gateway: Arc::new(config.gateway.clone()),
        role: role.clone(),
    });
    let tracker = TaskTracker::new();
    tracker.spawn(observer.clone().run_pump());
    print_dashboard_url(
        &sessions,
        config.advertise_url.as_deref(),
        local,
        &config.data_dir,
    );
    tracker.spawn(unpark_when_deposed(
        role.clone(),
        queue.clone(),
        shutdown.clone(),
    ));
    // The timer and the retiring of lost nodes write: they run while this
    // coordinator leads (always, alone), each term after the term's start.
    let (term_queue, term_admin) = (queue.clone(), prepared.admin.clone());
    let retire_after = config.queue.retire_lost_after_ms;
    tracker.spawn(while_leading(role, shutdown.clone(), move |term| {
        let (queue, admin) = (term_queue.clone(), term_admin.clone());
        async move {
            if shared {
                if let Err(err) = begin_term(&queue, &admin).await {
                    tracing::error!(error = %err, "starting the leadership term failed");
                    return;
                }
                tracing::info!("leading: leases, nodes and timers taken over");
            }
            tokio::join!(
                queue.run_timer(term.clone()),
                retire_lost_nodes(admin, retire_after, term)
            );
        }
    }));
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
        unpark_queue.close_parking();
    });
    accept_loop(
        listener,
        TlsAcceptor::from(tls_config),
        app,
        Refusals::new(prepared.admin.clone()),
        config.limits.clone(),
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
    // The engine is dropped off the runtime: PostgreSQL's blocking client
    // runs a runtime of its own to close its connections, which panics on a
    // runtime thread. The data directory stays locked until it is gone.
    let dropped = tokio::task::spawn_blocking(move || {
        drop(queue);
        drop(observer);
        drop(prepared);
        drop(_leadership);
    });
    if let Err(err) = dropped.await {
        tracing::error!(error = %err, "closing the store panicked");
    }
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
    refusals: Refusals,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    let gate = Gate::new(limits.clone());
    let builder = Arc::new(http_builder(&limits));
    let pace = Pace {
        grace: limits.body_grace,
        min_rate: limits.body_min_rate,
        timeout: limits.body_timeout,
    };
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
        // Over a bound: closed at once, never queued.
        let admission = match gate.admit(addr.ip()) {
            Ok(admission) => Arc::new(admission),
            Err(refused) => {
                drop(tcp);
                refusals.record(addr, "conn.refused", refused.to_string());
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let refusals = refusals.clone();
        let builder = builder.clone();
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
                    refusals.record(addr, "auth.tls", why);
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
                admission,
            };
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let request = paced(request, &peer, pace, &refusals);
                app.clone().call(request)
            });
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

/// The HTTP/1.1 and HTTP/2 settings of every connection.
fn http_builder(limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_headers(MAX_H1_HEADERS)
        .max_buf_size(MAX_H1_BUFFER);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_streams)
        .max_header_list_size(limits.h2_max_header_list)
        .max_pending_accept_reset_streams(limits.h2_max_pending_resets)
        .max_local_error_reset_streams(limits.h2_max_error_resets)
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    builder
}

/// `request` with the connection's [`PeerInfo`] on it and its body under
/// the body [`Pace`], except the agent's stream upload (on a connection with
/// a client certificate), which arrives at LLM speed.
fn paced(
    mut request: hyper::Request<Incoming>,
    peer: &PeerInfo,
    pace: Pace,
    refusals: &Refusals,
) -> hyper::Request<Body> {
    request.extensions_mut().insert(peer.clone());
    let exempt =
        peer.node_cert.is_some() && api::is_stream_upload(request.method(), request.uri().path());
    if exempt {
        return request.map(Body::new);
    }
    let (addr, refusals) = (peer.addr, refusals.clone());
    let target = format!("{} {}", request.method(), request.uri().path());
    request.map(|body| {
        Body::new(PacedBody::new(
            body,
            pace,
            Box::new(move |slow| {
                refusals.record(addr, "conn.slow_body", format!("{target}: {slow}"));
            }),
        ))
    })
}
