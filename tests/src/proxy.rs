//! A flaky network for chaos tests: a userspace TCP proxy (tokio) that
//! delays every chunk by a random latency (order kept) and now and then
//! resets a connection (RST on both sides), so agents behind it see what a
//! bad link does to TLS: stalls, torn connections, lost answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How bad the link is.
#[derive(Debug, Clone, Copy)]
pub struct Flakiness {
    /// Each chunk is delayed by `latency` ± `jitter`.
    pub latency: Duration,
    pub jitter: Duration,
    /// Chance, per chunk forwarded, that the connection is reset instead.
    pub reset_chance: f64,
}

/// What the proxy did, and whether it tears connections now.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub connections: AtomicU64,
    pub resets: AtomicU64,
    /// Off: `reset_chance` is not applied (latency still is).
    pub tearing: std::sync::atomic::AtomicBool,
}

/// A running proxy; stops (with all its connections) on drop.
pub struct FlakyProxy {
    pub addr: SocketAddr,
    pub stats: Arc<ProxyStats>,
    task: tokio::task::JoinHandle<()>,
}

impl FlakyProxy {
    /// From now on, connections are torn at `reset_chance` per chunk.
    pub fn tear(&self) {
        self.stats.tearing.store(true, Ordering::SeqCst);
    }
}

impl Drop for FlakyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A small xorshift generator: chaos needs no cryptographic randomness.
struct Dice(u64);

impl Dice {
    fn new(seed: u64) -> Dice {
        Dice(seed | 1)
    }

    /// Uniform in [0, 1).
    fn roll(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7)
}

/// Starts a proxy on a loopback port forwarding to `target`; it tears
/// connections once [`FlakyProxy::tear`] is called.
pub async fn start(target: SocketAddr, flakiness: Flakiness) -> FlakyProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("proxy address");
    let stats = Arc::new(ProxyStats::default());
    let task = tokio::spawn({
        let stats = stats.clone();
        async move {
            let mut connections = JoinSet::new();
            let mut n = 0u64;
            while let Ok((client, _)) = listener.accept().await {
                n += 1;
                stats.connections.fetch_add(1, Ordering::SeqCst);
                let stats = stats.clone();
                let seed = seed() ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                connections.spawn(async move {
                    if let Ok(server) = TcpStream::connect(target).await {
                        forward(client, server, flakiness, seed, &stats).await;
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        }
    });
    FlakyProxy { addr, stats, task }
}

/// Carries one connection both ways until either side closes or the dice
/// say reset.
async fn forward(
    client: TcpStream,
    server: TcpStream,
    flakiness: Flakiness,
    seed: u64,
    stats: &ProxyStats,
) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let (reset_tx, mut reset_rx) = mpsc::channel::<()>(2);
    let up = pump(
        client_read,
        server_write,
        flakiness,
        seed,
        stats,
        reset_tx.clone(),
    );
    let down = pump(
        server_read,
        client_write,
        flakiness,
        seed.rotate_left(17),
        stats,
        reset_tx,
    );
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = reset_rx.recv() => {
            stats.resets.fetch_add(1, Ordering::SeqCst);
        }
    }
    // Dropping the halves here closes both sockets (a reset mid-stream).
}

/// One direction: read, delay (keeping order), write; `reset` on a bad roll.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    flakiness: Flakiness,
    seed: u64,
    stats: &ProxyStats,
    reset: mpsc::Sender<()>,
) {
    let (chunks_tx, mut chunks_rx) = mpsc::channel::<(Instant, Vec<u8>)>(64);
    let writer = async move {
        while let Some((at, chunk)) = chunks_rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    let reader = async move {
        let mut dice = Dice::new(seed);
        let mut last = Instant::now();
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let roll = dice.roll();
            if stats.tearing.load(Ordering::SeqCst) && roll < flakiness.reset_chance {
                let _ = reset.send(()).await;
                break;
            }
            let spread = flakiness.jitter.as_secs_f64() * (2.0 * dice.roll() - 1.0);
            let delay = (flakiness.latency.as_secs_f64() + spread).max(0.0);
            last = last.max(Instant::now() + Duration::from_secs_f64(delay));
            if chunks_tx.send((last, buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
    };
    tokio::join!(reader, writer);
}
