//! The poison knob ([`FakeBehavior::kill_caller_on`]): a request whose body
//! holds the marker gets its caller SIGKILLed — the process on this machine
//! that owns the other end of the connection, found through `/proc` — as an
//! LLM call that takes its agent down every time would.
//!
//! [`FakeBehavior::kill_caller_on`]: crate::FakeBehavior::kill_caller_on

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::server::Shared;

/// Largest body looked at for the marker.
const MAX_BODY: usize = 64 << 20;

/// Kills the caller of a request carrying the marker; passes others on.
pub(crate) async fn kill_poisoned_callers(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let marker = shared.control().behavior.kill_caller_on.clone();
    let Some(marker) = marker.filter(|m| !m.is_empty()) else {
        return next.run(request).await;
    };
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0);
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return (StatusCode::BAD_REQUEST, "unreadable body").into_response();
    };
    let poisoned = bytes.windows(marker.len()).any(|w| w == marker.as_bytes());
    if let (true, Some(peer)) = (poisoned, peer) {
        let killed = caller_pid(peer).map(kill);
        shared.poison_kills.fetch_add(1, Ordering::SeqCst);
        let why = format!("poisoned request from {peer}: caller process {killed:?} killed");
        return (StatusCode::INTERNAL_SERVER_ERROR, why).into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// `IP:PORT` of `/proc/net/tcp`'s hex form (the address as the host's
/// 32-bit integer, little-endian here).
fn parse_endpoint(hex: &str) -> Option<SocketAddr> {
    let (ip, port) = hex.split_once(':')?;
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddr::from((Ipv4Addr::from(ip.to_le_bytes()), port)))
}

/// The process owning the TCP socket whose local end is `peer`.
fn caller_pid(peer: SocketAddr) -> Option<u32> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local = parse_endpoint(fields.get(1)?)?;
        (local == peer).then(|| fields.get(9).map(|s| s.to_string()))?
    })?;
    let link = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let owns = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|to| to.as_os_str() == link.as_str())
        });
        if owns {
            return Some(pid);
        }
    }
    None
}

fn kill(pid: u32) -> u32 {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    pid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_endpoints_parse() {
        assert_eq!(
            parse_endpoint("0100007F:1F90"),
            Some("127.0.0.1:8080".parse().expect("addr"))
        );
        assert_eq!(parse_endpoint("nonsense"), None);
    }

    #[test]
    fn the_caller_of_a_socket_of_this_process_is_this_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (_server, peer) = listener.accept().expect("accept");
        assert_eq!(peer, client.local_addr().expect("local"));
        assert_eq!(caller_pid(peer), Some(std::process::id()));
    }
}
