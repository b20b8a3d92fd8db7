//! Hostile input and hostile connections: a barrage of broken, deep, huge,
//! mistyped and injected bodies, paths and queries at every route (4xx, never
//! a 5xx, nothing half-written, the database intact); slowloris, silent and
//! non-TLS clients cut off and audited; TLS 1.2 and 1.3 accepted, 1.1 refused.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kobo_protocol::{AccessRole, ErrorBody};
use kobo_server::api::{Need, Route, routes};
use kobo_tests::cluster::Cluster;
use reqwest::StatusCode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::security_payloads::{
    NODE, derived_payloads, generic_payloads, route_payloads, template,
};
/// What the server gets to cut a stalled connection (its timeouts are 10 s).
const CUT_WITHIN: Duration = Duration::from_secs(12);

struct Caller {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
    shown: String,
}

impl Caller {
    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> reqwest::Result<(StatusCode, Vec<u8>)> {
        let url = format!("{}{path}", self.base);
        let mut request = match method {
            "GET" => self.http.get(&url),
            "POST" => self.http.post(&url),
            "PATCH" => self.http.patch(&url),
            "DELETE" => self.http.delete(&url),
            other => panic!("ROUTES holds a method this test does not know: {other}"),
        };
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await?;
        let status = response.status();
        Ok((status, response.bytes().await?.to_vec()))
    }
}

fn job_count(cluster: &Cluster) -> i64 {
    cluster
        .db()
        .query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
        .expect("count jobs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_barrage_at_every_route_is_refused_cleanly() {
    let cluster = Cluster::builder().start().await;
    let ca = std::fs::read(cluster.ca_path()).expect("ca");
    let (_, admin_key) = cluster.client_with_role(AccessRole::Admin).await;
    let anonymous = Caller {
        http: kobo_client::http_client(Some(&ca)).expect("client"),
        base: cluster.url(),
        key: None,
        shown: "no credential".into(),
    };
    let admin = Caller {
        http: kobo_client::http_client(Some(&ca)).expect("client"),
        base: cluster.url(),
        key: Some(admin_key),
        shown: "an admin key".into(),
    };
    let node = Caller {
        http: cluster.enroll_raw(NODE).await,
        base: cluster.url(),
        key: None,
        shown: format!("node {NODE}'s certificate"),
    };
    let csr_key = kobo_agent::identity::new_key().expect("key");
    let csr = kobo_agent::identity::csr(NODE, &csr_key).expect("csr");
    let huge = format!("{{\"kind\":\"q\",\"prompt\":\"{}\"}}", "x".repeat(17 << 20)).into_bytes();

    let mut tally = std::collections::BTreeMap::<String, u32>::new();
    let mut sent = 0;
    for Route {
        method,
        example: path,
        need,
        ..
    } in routes()
    {
        let caller = match need {
            None => &anonymous,
            Some(Need::Role(_)) => &admin,
            Some(Need::Node) => &node,
        };
        let who = &caller.shown;
        let template = matches!(method, "POST" | "PATCH")
            .then(|| template(path, &csr))
            .flatten();
        let mut payloads = generic_payloads();
        if let Some(template) = &template {
            payloads.extend(derived_payloads(template));
            payloads.extend(route_payloads(path, &csr));
        }
        for (what, body) in payloads {
            let (status, answer) =
                caller
                    .send(method, path, Some(body))
                    .await
                    .unwrap_or_else(|err| {
                        panic!("{method} {path} with {who}, {what}: no answer: {err}")
                    });
            sent += 1;
            *tally.entry(status.as_str().to_string()).or_default() += 1;
            let text = String::from_utf8_lossy(&answer);
            assert!(
                !status.is_server_error(),
                "{method} {path} with {who}, body {what}: {status} {text}"
            );
            if template.is_some() {
                assert!(
                    status.is_client_error(),
                    "{method} {path} with {who}, body {what}: expected a 4xx, got {status} {text}"
                );
                let error: ErrorBody =
                    super::shapes::error_body(path, &answer).unwrap_or_else(|| {
                        panic!(
                            "{method} {path} with {who}, body {what}: not a JSON error body: {text}"
                        )
                    });
                if what == "an unknown field" {
                    assert_eq!(
                        status,
                        StatusCode::BAD_REQUEST,
                        "{method} {path}: unknown field"
                    );
                    assert!(
                        error
                            .error
                            .field
                            .as_deref()
                            .unwrap_or("")
                            .contains("colour")
                            || error.error.message.contains("colour"),
                        "{method} {path}: the error names the unknown field: {error:?}"
                    );
                }
            }
        }
        if matches!(method, "POST" | "PATCH") {
            // Over the 16 MiB limit. A route that reads no body may answer
            // (or close) before the upload ends; one that reads it says 413.
            let answer = caller.send(method, path, Some(huge.clone())).await;
            sent += 1;
            let shown = match &answer {
                Ok((status, _)) => status.as_str().to_string(),
                Err(_) => "closed".to_string(),
            };
            *tally.entry(shown).or_default() += 1;
            match (&template, answer) {
                (Some(_), Ok((status, _))) => assert_eq!(
                    status,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "POST {path} with {who}, a 17 MiB body"
                ),
                (Some(_), Err(err)) => {
                    panic!("POST {path} with {who}, a 17 MiB body: no answer: {err}")
                }
                (None, Ok((status, _))) => assert!(
                    !status.is_server_error(),
                    "POST {path} with {who}, a 17 MiB body: {status}"
                ),
                (None, Err(_)) => {}
            }
        }
    }

    // Bad paths and queries at the GET routes: (path, must be 400).
    let long_kind = format!("/v1/jobs?kind={}", "k".repeat(32 << 10));
    let gets: Vec<(&str, bool)> = vec![
        ("/v1/jobs?limit=abc", true),
        ("/v1/jobs?limit=-1", true),
        ("/v1/jobs?limit=99999999999999999999", true),
        ("/v1/jobs?state=queued&state=leased", true),
        ("/v1/jobs?after=1e3", true),
        ("/v1/jobs?node_id=%00", true),
        ("/v1/jobs?colour=blue", true),
        ("/v1/jobs?kind=%27%3B%20DROP%20TABLE%20jobs%3B%20--", false),
        ("/v1/jobs?kind=%FF%FE", false),
        (&long_kind, false),
        ("/v1/jobs/%00", true),
        ("/v1/jobs/%FF", true),
        ("/v1/jobs/99999999999999999999", true),
        ("/v1/jobs/-1", false),
        ("/v1/jobs/1%20OR%201=1", true),
        ("/v1/jobs/..%2F..%2Fetc%2Fpasswd", true),
        ("/v1/jobs/1/wait?timeout_ms=-5", true),
        ("/v1/jobs/1/wait?timeout_ms=18446744073709551616", true),
        ("/v1/jobs/1/wait?timeout_ms=1&timeout_ms=2", true),
        ("/v1/admin/audit?since=abc", true),
        ("/v1/admin/audit?limit=4294967296", true),
        ("/v1/admin/audit?limit=4294967295", false),
        ("/v1/nodes?x=%00", false),
        ("/v1/%2e%2e/healthz", false),
    ];
    for (path, must_be_400) in gets {
        let shown = if path.len() > 80 {
            format!("{}… ({} bytes)", &path[..80], path.len())
        } else {
            path.to_string()
        };
        let (status, answer) = admin.send("GET", path, None).await.unwrap_or_else(|err| {
            panic!(
                "GET {shown} with an admin key: no answer: {}",
                err.without_url()
            )
        });
        sent += 1;
        *tally.entry(status.as_str().to_string()).or_default() += 1;
        let text = String::from_utf8_lossy(&answer);
        assert!(
            !status.is_server_error(),
            "GET {shown} with an admin key: {status} {text}"
        );
        if must_be_400 {
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "GET {shown} with an admin key: {text}"
            );
        }
    }
    eprintln!("payload barrage: {sent} requests, none answered 5xx; statuses {tally:?}");

    let integrity: String = cluster
        .db()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity check");
    assert_eq!(integrity, "ok", "PRAGMA integrity_check after the barrage");
    assert_eq!(
        job_count(&cluster),
        0,
        "the barrage wrote no job, not even half of one"
    );
    let verify = cluster.client().audit_verify().await.expect("audit verify");
    assert!(
        verify.ok,
        "the audit hash chain survived the barrage: {verify:?}"
    );
    let (status, body) = anonymous
        .send("GET", "/healthz", None)
        .await
        .expect("healthz after the barrage");
    assert_eq!(status, StatusCode::OK, "GET /healthz after the barrage");
    assert_eq!(body, b"ok", "GET /healthz body after the barrage");
}

// ---- raw connections ----

fn client_config(
    cluster: &Cluster,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(cluster.ca_path()).expect("ca.pem") {
        roots.add(cert.expect("CA certificate")).expect("trust CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// Connects and completes a TLS handshake (blocking).
fn tls_connect(port: u16, config: Arc<ClientConfig>) -> TlsStream {
    let name = ServerName::try_from("127.0.0.1").expect("server name");
    let mut conn = ClientConnection::new(config, name).expect("TLS client");
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).expect("TLS handshake");
    }
    StreamOwned::new(conn, tcp)
}

/// Reads (and discards) until the peer closes: how long after `since` it
/// closed, or `None` if it was still open after `limit`. `read` sets the
/// socket's read timeout to its argument, then reads.
fn read_until_closed(
    mut read: impl FnMut(Duration, &mut [u8]) -> io::Result<usize>,
    since: Instant,
    limit: Duration,
) -> Option<Duration> {
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(since.elapsed());
        if left < Duration::from_millis(1) {
            return None;
        }
        match read(left, &mut buf) {
            Ok(0) => return Some(since.elapsed()),
            Ok(_) => {}
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(since.elapsed()),
        }
    }
}

fn tcp_reader(tcp: &mut TcpStream) -> impl FnMut(Duration, &mut [u8]) -> io::Result<usize> + '_ {
    |timeout, buf| {
        tcp.set_read_timeout(Some(timeout))?;
        tcp.read(buf)
    }
}

fn tls_reader(tls: &mut TlsStream) -> impl FnMut(Duration, &mut [u8]) -> io::Result<usize> + '_ {
    |timeout, buf| {
        tls.sock.set_read_timeout(Some(timeout))?;
        tls.read(buf)
    }
}

/// The `detail` of the denied `auth.tls` audit row of the connection from
/// `source`, polled for a few seconds.
async fn tls_audit_detail(cluster: &Cluster, source: &str) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found: Option<String> = cluster
            .db()
            .query_row(
                "SELECT coalesce(detail, '') FROM audit_log
                 WHERE action = 'auth.tls' AND outcome = 'denied' AND source = ?1",
                [source],
                |r| r.get(0),
            )
            .ok();
        if found.is_some() || Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_silent_clients_are_cut_off_and_audited() {
    let cluster = Cluster::builder().start().await;
    let port = cluster.port;
    let config = client_config(&cluster, rustls::ALL_VERSIONS);

    // Headers begun, never finished.
    let slowloris = tokio::task::spawn_blocking(move || {
        let mut tls = tls_connect(port, config);
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .expect("send partial headers");
        tls.flush().expect("flush");
        let sent = Instant::now();
        read_until_closed(tls_reader(&mut tls), sent, CUT_WITHIN)
    });
    // TCP connected, TLS never begun.
    let silent = tokio::task::spawn_blocking(move || {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let source = tcp.local_addr().expect("local addr").to_string();
        let opened = Instant::now();
        (
            source,
            read_until_closed(tcp_reader(&mut tcp), opened, CUT_WITHIN),
        )
    });
    // Plain HTTP at the TLS port: the handshake fails at once.
    let plain = tokio::task::spawn_blocking(move || {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let source = tcp.local_addr().expect("local addr").to_string();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("send plain HTTP");
        let sent = Instant::now();
        (
            source,
            read_until_closed(tcp_reader(&mut tcp), sent, CUT_WITHIN),
        )
    });
    let (slowloris, silent, plain) = tokio::join!(slowloris, silent, plain);

    let slowloris = slowloris.expect("slowloris task");
    assert!(
        slowloris.is_some(),
        "a TLS client that sent `GET /healthz HTTP/1.1\\r\\nHost: x\\r\\n` and stalled was still connected {CUT_WITHIN:?} later"
    );
    let (silent_source, silent_closed) = silent.expect("silent task");
    assert!(
        silent_closed.is_some(),
        "a TCP client that never began the TLS handshake was still connected {CUT_WITHIN:?} later"
    );
    let (plain_source, plain_closed) = plain.expect("plain task");
    assert!(
        plain_closed.is_some(),
        "a client speaking plain HTTP to the TLS port was still connected {CUT_WITHIN:?} later"
    );
    eprintln!(
        "cut off after: slowloris {slowloris:?}, silent {silent_closed:?}, plain HTTP {plain_closed:?}"
    );

    let detail = tls_audit_detail(&cluster, &silent_source).await;
    assert!(
        detail.as_deref().is_some_and(|d| d.contains("timed out")),
        "the timed-out handshake from {silent_source} left a denied auth.tls audit row saying so: {detail:?}"
    );
    let detail = tls_audit_detail(&cluster, &plain_source).await;
    assert!(
        detail.is_some(),
        "the failed handshake (plain HTTP) from {plain_source} left a denied auth.tls audit row"
    );
    let health = cluster.client().nodes().await;
    assert!(health.is_ok(), "the coordinator still answers: {health:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_silent_after_the_handshake_is_cut_off() {
    let cluster = Cluster::builder().start().await;
    let port = cluster.port;
    let config = client_config(&cluster, rustls::ALL_VERSIONS);
    let closed = tokio::task::spawn_blocking(move || {
        let mut tls = tls_connect(port, config);
        let done = Instant::now();
        read_until_closed(tls_reader(&mut tls), done, CUT_WITHIN)
    })
    .await
    .expect("silent TLS task");
    assert!(
        closed.is_some(),
        "a client that completed the TLS handshake and then sent nothing was still connected {CUT_WITHIN:?} later"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_and_1_3_are_served_and_1_1_is_refused() {
    let cluster = Cluster::builder().start().await;
    let port = cluster.port;
    for (shown, version, expected) in [
        (
            "TLS 1.2",
            &rustls::version::TLS12,
            rustls::ProtocolVersion::TLSv1_2,
        ),
        (
            "TLS 1.3",
            &rustls::version::TLS13,
            rustls::ProtocolVersion::TLSv1_3,
        ),
    ] {
        let config = client_config(&cluster, &[version]);
        let (negotiated, response) = tokio::task::spawn_blocking(move || {
            let mut tls = tls_connect(port, config);
            let negotiated = tls.conn.protocol_version();
            tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .expect("send request");
            let mut response = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match tls.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => response.extend_from_slice(&buf[..n]),
                    // A close without close_notify still ends the answer.
                    Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => break,
                    Err(err) => panic!("reading the answer: {err}"),
                }
            }
            (negotiated, String::from_utf8_lossy(&response).into_owned())
        })
        .await
        .expect("TLS client task");
        assert_eq!(
            negotiated,
            Some(expected),
            "a {shown}-only client negotiated {shown}"
        );
        assert!(
            response.starts_with("HTTP/1.1 200") && response.ends_with("ok"),
            "GET /healthz over {shown}: {response}"
        );
    }

    // rustls cannot speak TLS 1.1 (nor 1.0), so a TLS 1.1 ClientHello is
    // written by hand: no supported_versions extension, legacy version 3.2.
    // The server enables 1.2 and 1.3 only and must answer with an alert or
    // close, never a ServerHello.
    let (source, first) = tokio::task::spawn_blocking(move || {
        let mut hello = vec![0x03, 0x02];
        hello.extend([0x5a; 32]); // random
        hello.push(0); // no session id
        // TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, TLS_RSA_WITH_AES_128_CBC_SHA
        hello.extend([0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]);
        hello.extend([0x01, 0x00]); // null compression only
        let mut handshake = vec![0x01, 0x00];
        handshake.extend((hello.len() as u16).to_be_bytes());
        handshake.extend(hello);
        let mut record = vec![0x16, 0x03, 0x01];
        record.extend((handshake.len() as u16).to_be_bytes());
        record.extend(handshake);
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let source = tcp.local_addr().expect("local addr").to_string();
        tcp.write_all(&record).expect("send a TLS 1.1 ClientHello");
        tcp.set_read_timeout(Some(CUT_WITHIN))
            .expect("read timeout");
        let mut first = [0u8; 1];
        let first = match tcp.read(&mut first) {
            Ok(0) => None,
            Ok(_) => Some(first[0]),
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                panic!("a TLS 1.1 ClientHello got no answer within {CUT_WITHIN:?}")
            }
            Err(_) => None,
        };
        (source, first)
    })
    .await
    .expect("TLS 1.1 task");
    assert!(
        first.is_none() || first == Some(0x15),
        "a TLS 1.1 ClientHello was answered with record type {first:?}, not an alert (0x15) or a close"
    );
    let detail = tls_audit_detail(&cluster, &source).await;
    assert!(
        detail.is_some(),
        "the refused TLS 1.1 handshake from {source} left a denied auth.tls audit row"
    );
}
