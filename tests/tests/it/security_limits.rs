//! Slow and flooding clients against a real coordinator over real TLS: a
//! thousand slow-body connections to an unauthenticated route are all cut
//! while an authenticated client is served throughout and the coordinator's
//! memory stays flat; connections over the bounds are closed at once and
//! audited; the agent's stream upload, slower than any minimum rate, is not
//! cut.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kobo_protocol::AccessRole;
use kobo_tests::cluster::{AgentSpec, Cluster};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio_rustls::TlsConnector;

/// Slow-body connections opened at once.
const SLOW_CLIENTS: usize = 1_000;
/// Source addresses they come from (loopback has all of 127/8), so that
/// the per-source bound (128 by default) does not refuse them first: this
/// test is about the body deadline.
const SLOW_SOURCES: usize = 20;
/// Each must be cut within this long of sending its headers.
const CUT_WITHIN: Duration = Duration::from_secs(10);
/// A connection not cut after this long counts as never cut.
const GIVE_UP: Duration = Duration::from_secs(30);
/// The coordinator's resident memory may grow by less than this (50 MB).
const RSS_GROWTH_KIB: u64 = 50_000_000 / 1024;
/// File descriptors the test process (and the coordinator it starts) need.
const FDS_NEEDED: u64 = 4_096;

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (children
/// started afterwards inherit it); fails the test if even that is too few.
fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("raise RLIMIT_NOFILE");
    }
    assert!(
        hard >= FDS_NEEDED,
        "this test needs {FDS_NEEDED} file descriptors; the hard RLIMIT_NOFILE is {hard} (raise it: ulimit -Hn)"
    );
    hard
}

/// `(VmRSS, VmHWM)` of a process, KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn tls_connector(cluster: &Cluster) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(cluster.ca_path()).expect("ca.pem") {
        roots.add(cert.expect("CA certificate")).expect("trust CA");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// What happened to one slow-body connection.
#[derive(Debug)]
enum SlowOutcome {
    /// Closed during the TLS handshake: refused at accept (over a bound).
    Refused { after: Duration },
    /// Cut this long after its headers, with what the server answered.
    Cut { after: Duration, answer: String },
    /// Still open after [`GIVE_UP`].
    NeverCut,
}

/// Opens a TLS connection from `source`, sends the headers of
/// `POST /v1/join` with a large `Content-Length` and then one body byte every
/// 2 s, until the server closes the connection.
async fn slow_body(connector: TlsConnector, port: u16, source: IpAddr) -> SlowOutcome {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind the source address");
    let connected = Instant::now();
    let tcp = socket
        .connect(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port))
        .await
        .expect("connect");
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let handshake = tokio::time::timeout(GIVE_UP, connector.connect(name, tcp)).await;
    let mut tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(_)) => {
            return SlowOutcome::Refused {
                after: connected.elapsed(),
            };
        }
        Err(_) => return SlowOutcome::NeverCut,
    };
    tls.write_all(
        b"POST /v1/join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{",
    )
    .await
    .expect("send headers");
    tls.flush().await.expect("flush");
    let sent = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.tick().await;
    loop {
        if sent.elapsed() > GIVE_UP {
            return SlowOutcome::NeverCut;
        }
        tokio::select! {
            read = tls.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            },
            _ = tick.tick() => {
                if tls.write_all(b" ").await.is_err() || tls.flush().await.is_err() {
                    break;
                }
            }
        }
    }
    SlowOutcome::Cut {
        after: sent.elapsed(),
        answer: String::from_utf8_lossy(&answer).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slow_bodies_are_cut_while_an_authenticated_client_is_served() {
    let fd_limit = raise_fd_limit();
    let cluster = Cluster::builder().start().await;
    let pid = cluster
        .coordinator
        .as_ref()
        .and_then(|c| c.id())
        .expect("coordinator pid");
    let (reader, _) = cluster.client_with_role(AccessRole::Read).await;
    reader
        .nodes()
        .await
        .expect("the authenticated client is served");
    let (rss_before, _) = rss_kib(pid);

    // The authenticated client: one call after another, all through the attack.
    let stop = Arc::new(AtomicBool::new(false));
    let served = tokio::spawn({
        let stop = stop.clone();
        async move {
            let (mut calls, mut slowest) = (0u32, Duration::ZERO);
            while !stop.load(Ordering::SeqCst) {
                let asked = Instant::now();
                if let Err(err) = reader.nodes().await {
                    return Err(format!("call {calls} failed: {err}"));
                }
                slowest = slowest.max(asked.elapsed());
                calls += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok((calls, slowest))
        }
    });

    let connector = tls_connector(&cluster);
    let attack_started = Instant::now();
    let slow: Vec<_> = (0..SLOW_CLIENTS)
        .map(|idx| {
            let source = Ipv4Addr::new(127, 0, 1, 1 + (idx % SLOW_SOURCES) as u8);
            tokio::spawn(slow_body(connector.clone(), cluster.port, source.into()))
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in slow {
        outcomes.push(task.await.expect("slow client task"));
    }
    let attack_took = attack_started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let (calls, slowest) = served
        .await
        .expect("authenticated client task")
        .unwrap_or_else(|why| panic!("the authenticated client was not served throughout: {why}"));
    let (rss_after, rss_peak) = rss_kib(pid);

    let never_cut = outcomes
        .iter()
        .filter(|o| matches!(o, SlowOutcome::NeverCut))
        .count();
    assert_eq!(
        never_cut, 0,
        "{never_cut} of {SLOW_CLIENTS} slow-body connections were still open after {GIVE_UP:?}"
    );
    let cut: Vec<(Duration, &str)> = outcomes
        .iter()
        .filter_map(|o| match o {
            SlowOutcome::Cut { after, answer } => Some((*after, answer.as_str())),
            _ => None,
        })
        .collect();
    let refused: Vec<Duration> = outcomes
        .iter()
        .filter_map(|o| match o {
            SlowOutcome::Refused { after } => Some(*after),
            _ => None,
        })
        .collect();
    // Up to the unauthenticated bound (512 by default) are admitted and cut
    // by the body deadline; the rest are refused at accept.
    assert!(
        cut.len() >= 400,
        "most of the unauthenticated pool was admitted: {} cut, {} refused",
        cut.len(),
        refused.len()
    );
    let latest = cut.iter().map(|(after, _)| *after).max().expect("cuts");
    let earliest = cut.iter().map(|(after, _)| *after).min().expect("cuts");
    assert!(
        latest <= CUT_WITHIN,
        "every slow body is cut within {CUT_WITHIN:?} of its headers; the last took {latest:?}"
    );
    let slowest_refusal = refused.iter().max().copied().unwrap_or_default();
    assert!(
        slowest_refusal <= CUT_WITHIN,
        "refused connections are closed at once; the slowest took {slowest_refusal:?}"
    );
    if let Some((_, answer)) = cut.iter().find(|(_, a)| !a.starts_with("HTTP/1.1 408")) {
        panic!("each admitted slow body was answered 408 before the close: {answer:?}");
    }
    let sample = cut[0].1;
    assert!(
        sample.contains("slow_body") && sample.contains("too slowly"),
        "the 408 says why: {sample}"
    );
    let growth = rss_peak.saturating_sub(rss_before);
    assert!(
        growth < RSS_GROWTH_KIB,
        "coordinator RSS grew by {growth} KiB ({rss_before} KiB before, peak {rss_peak} KiB, {rss_after} KiB after)"
    );
    assert!(
        slowest < Duration::from_secs(5),
        "the authenticated client's slowest call took {slowest:?}"
    );
    let audited = denied_rows(&cluster, "conn.slow_body", "POST /v1/join: %too slowly%");
    assert!(audited > 0, "the cuts are audited");
    let refusals_audited = denied_rows(
        &cluster,
        "conn.refused",
        "too many unauthenticated connections%",
    );
    assert!(
        refused.is_empty() || refusals_audited > 0,
        "the refusals are audited"
    );
    eprintln!(
        "slow body: {SLOW_CLIENTS} connections from {SLOW_SOURCES} sources: {} admitted and cut {earliest:?}..{latest:?} after their headers (408), \
         {} refused at accept (closed within {slowest_refusal:?}); attack {attack_took:?}; RSS {} MiB before, peak {} MiB (+{:.1} MB), {} MiB after; \
         authenticated client: {calls} calls, slowest {slowest:?}; {audited} cuts and {refusals_audited} refusals audited; fd limit {fd_limit}",
        cut.len(),
        refused.len(),
        rss_before / 1024,
        rss_peak / 1024,
        growth as f64 * 1024.0 / 1e6,
        rss_after / 1024,
    );
}

/// How many `denied` audit rows of `action` have a detail `LIKE` `detail`.
fn denied_rows(cluster: &Cluster, action: &str, detail: &str) -> i64 {
    cluster
        .db()
        .query_row(
            "SELECT count(*) FROM audit_log WHERE action = ?1 AND outcome = 'denied'
             AND detail LIKE ?2",
            [action, detail],
            |r| r.get(0),
        )
        .expect("audit rows")
}

/// Opens a plain TCP connection from `source` (it says nothing: an
/// unauthenticated connection as long as the TLS handshake timeout allows).
async fn silent_connection(port: u16, source: Ipv4Addr) -> tokio::net::TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(source.into(), 0))
        .expect("bind the source address");
    socket
        .connect(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port))
        .await
        .expect("connect")
}

/// Whether the server closes `tcp` within `limit`.
async fn closed_within(tcp: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(limit, tcp.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// The `detail` of the `conn.refused` audit rows from `source`, waited for.
async fn refusal_details(cluster: &Cluster, source: Ipv4Addr) -> Vec<String> {
    let mut details = Vec::new();
    cluster
        .wait_until(&format!("a conn.refused audit row from {source}"), || {
            let found: Vec<String> = cluster
                .db()
                .prepare(
                    "SELECT detail FROM audit_log WHERE action = 'conn.refused'
                     AND outcome = 'denied' AND source LIKE ?1 || ':%'",
                )
                .and_then(|mut s| {
                    s.query_map([source.to_string()], |r| r.get(0))?
                        .collect::<Result<Vec<String>, _>>()
                })
                .unwrap_or_default();
            let any = !found.is_empty();
            details = found;
            async move { any }
        })
        .await;
    details
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_bounds_are_closed_at_once_and_audited() {
    let cluster = Cluster::builder()
        .serve_arg("--max-unauthenticated-per-source=3")
        .serve_arg("--max-unauthenticated-connections=5")
        .start()
        .await;
    let port = cluster.port;
    // Well under the 10 s TLS handshake timeout that would close a held
    // connection too, and generous for a loaded machine.
    let at_once = Duration::from_secs(5);
    let (one, two, three) = (
        Ipv4Addr::new(127, 0, 2, 1),
        Ipv4Addr::new(127, 0, 2, 2),
        Ipv4Addr::new(127, 0, 2, 3),
    );
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(silent_connection(port, one).await);
    }
    let mut over_source = silent_connection(port, one).await;
    assert!(
        closed_within(&mut over_source, at_once).await,
        "a 4th unauthenticated connection from {one} (bound 3) was closed at once"
    );
    for _ in 0..2 {
        held.push(silent_connection(port, two).await);
    }
    let mut over_pool = silent_connection(port, three).await;
    assert!(
        closed_within(&mut over_pool, at_once).await,
        "a 6th unauthenticated connection (bound 5) was closed at once"
    );
    for tcp in &mut held {
        assert!(
            !closed_within(tcp, Duration::from_millis(200)).await,
            "connections within the bounds are kept (until the handshake timeout)"
        );
    }
    let details = refusal_details(&cluster, one).await;
    assert!(
        details
            .iter()
            .any(|d| d.contains("from 127.0.2.1")
                && d.contains("--max-unauthenticated-per-source 3")),
        "the per-source refusal is audited with its bound: {details:?}"
    );
    let details = refusal_details(&cluster, three).await;
    assert!(
        details
            .iter()
            .any(|d| d.contains("--max-unauthenticated-connections 5")),
        "the pool refusal is audited with its bound: {details:?}"
    );
    // The client that authenticated before is out of those bounds.
    let nodes = cluster.client().nodes().await;
    assert!(
        nodes.is_ok(),
        "an authenticated client is still served: {nodes:?}"
    );
    // Places come back when the connections go.
    drop(held);
    cluster
        .wait_until("a new connection from 127.0.2.3 is kept", || async {
            let mut tcp = silent_connection(port, three).await;
            !closed_within(&mut tcp, Duration::from_millis(300)).await
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_stream_upload_is_exempt_from_the_body_rate() {
    // A minimum rate no LLM stream meets, after one second.
    let mut cluster = Cluster::builder()
        .serve_arg("--body-grace=1s")
        .serve_arg("--body-min-rate=1000000")
        .start()
        .await;
    cluster.fake.update_behavior(|b| {
        b.tokens_per_second = 4.0;
        b.response_tokens = 12;
    });
    cluster
        .agent(AgentSpec::new("tokyo-01", &["general_query"]))
        .await;
    let (_, key) = cluster.client_with_role(AccessRole::Submit).await;
    let http = kobo_client::http_client(Some(&std::fs::read(cluster.ca_path()).expect("ca")))
        .expect("http");
    let started = Instant::now();
    let answer = http
        .post(format!("{}/api/generate", cluster.url()))
        .bearer_auth(&key)
        .json(&json!({"model": "qwen2.5:0.5b", "prompt": "take your time"}))
        .send()
        .await
        .expect("gateway request");
    assert_eq!(answer.status(), 200);
    let body = answer.text().await.expect("the streamed answer");
    let took = started.elapsed();
    let last: Value = body
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("NDJSON lines: {body}"));
    assert_eq!(
        last["done"],
        json!(true),
        "the stream, {took:?} long at 4 tokens/s, ended properly: {body}"
    );
    assert!(
        took > Duration::from_secs(2),
        "the upload was slower than the rate ({took:?})"
    );
    let cuts = denied_rows(&cluster, "conn.slow_body", "%");
    assert_eq!(
        cuts,
        0,
        "no body was cut (the agent's small bodies arrive at once)\n{}",
        cluster.logs()
    );
}
