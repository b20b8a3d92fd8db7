//! Leader election among coordinators that share one PostgreSQL database,
//! with PostgreSQL's own primitives and no consensus of our own.
//!
//! Each coordinator keeps one dedicated session (its own thread: the
//! `postgres` crate blocks) that tries `pg_try_advisory_lock(LEADER_LOCK)`
//! every [`LIVENESS_INTERVAL`]. The winner bumps the one row of
//! `kobo_leader` to `epoch + 1` with its advertised address and is leader
//! while that session lives; the others stand by and read the leader's
//! address from the row. The session sets `idle_session_timeout`, so a
//! holder that stops talking (SIGSTOPped, cut off) loses its session, and
//! with it the lock, after [`LOCK_SESSION_IDLE_TIMEOUT`]
//! (`idle_session_timeout` needs PostgreSQL 14 or later).
//!
//! Safety does not rest on the lock alone: every write transaction of a
//! leader starts with [`fence`], which reads the row `FOR SHARE` and refuses
//! the write when the epoch is no longer the writer's. A deposed leader that
//! has not noticed yet therefore writes nothing, and a new leader's bump
//! waits for the old leader's in-flight write transactions to end.
//!
//! The role is published on a `tokio::sync::watch` channel ([`Leadership::subscribe`]):
//! the server answers as a standby while it is not [`Role::Leader`].

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};

use crate::store::sql::{Db, Dialect, PgConn, args};
use crate::store::{Fence, StoreError};

/// The advisory lock key the coordinators contend for ("kobold" in ASCII;
/// distinct from the migration lock, "kobo").
pub const LEADER_LOCK: i64 = 0x6b6f_626f_6c64;

/// How often the lock session proves it is alive (and a standby tries the
/// lock): the bound on how long a leader runs on after losing its session.
pub const LIVENESS_INTERVAL: Duration = Duration::from_secs(1);

/// PostgreSQL ends a lock session silent this long (`idle_session_timeout`),
/// which releases the lock: a leader that is stopped or cut off is replaced
/// within this plus one [`LIVENESS_INTERVAL`], well inside the 10 s takeover
/// target. Several liveness intervals, so a slow moment is not a failover.
pub const LOCK_SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// The wait before reconnecting a lock session that failed.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// What this coordinator is right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// It holds the lock; its writes carry `epoch` (see [`fence`]).
    Leader { epoch: i64 },
    /// Another coordinator leads (at `leader_address`, when known), or this
    /// one has no working lock session.
    Standby { leader_address: Option<String> },
}

impl Role {
    pub fn is_leader(&self) -> bool {
        matches!(self, Role::Leader { .. })
    }

    /// The epoch while leader.
    pub fn epoch(&self) -> Option<i64> {
        match self {
            Role::Leader { epoch } => Some(*epoch),
            Role::Standby { .. } => None,
        }
    }
}

/// How a coordinator campaigns.
#[derive(Debug, Clone)]
pub struct LeadershipConfig {
    /// The PostgreSQL URL (the same database the store uses).
    pub database_url: String,
    /// The URL clients reach this coordinator at, advertised while leader.
    pub address: String,
    /// Who this is, for people reading `kobo_leader` (host and process).
    pub holder: String,
    pub liveness_interval: Duration,
    pub idle_timeout: Duration,
}

impl LeadershipConfig {
    pub fn new(database_url: impl Into<String>, address: impl Into<String>) -> LeadershipConfig {
        LeadershipConfig {
            database_url: database_url.into(),
            address: address.into(),
            holder: format!("pid {}", std::process::id()),
            liveness_interval: LIVENESS_INTERVAL,
            idle_timeout: LOCK_SESSION_IDLE_TIMEOUT,
        }
    }
}

/// The campaign of one coordinator: its role, and the thread keeping the
/// lock session. Dropping it (or [`Leadership::stop`]) closes the session,
/// which releases the lock at once.
pub struct Leadership {
    role: watch::Receiver<Role>,
    stop: Option<mpsc::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

/// The last moment the lock session was seen alive while leading.
type Confirmed = Arc<Mutex<Option<(i64, Instant)>>>;

impl Leadership {
    /// Starts campaigning; the role starts as a standby that knows no leader.
    pub fn start(config: LeadershipConfig) -> Leadership {
        let (role_tx, role) = watch::channel(Role::Standby {
            leader_address: None,
        });
        let role_tx = Arc::new(role_tx);
        let confirmed: Confirmed = Arc::new(Mutex::new(None));
        let (stop, stopped) = mpsc::channel();
        let (watchdog_stop, watchdog_stopped) = mpsc::channel();
        let campaign = {
            let (role_tx, confirmed, config) = (role_tx.clone(), confirmed.clone(), config.clone());
            std::thread::Builder::new()
                .name("kobo-leader".into())
                .spawn(move || {
                    run(&config, &role_tx, &confirmed, &stopped);
                    role_tx.send_replace(Role::Standby {
                        leader_address: None,
                    });
                    drop(watchdog_stop);
                })
                .expect("spawn the leader thread")
        };
        let watchdog = std::thread::Builder::new()
            .name("kobo-leader-watchdog".into())
            .spawn(move || watchdog(&config, &role_tx, &confirmed, &watchdog_stopped))
            .expect("spawn the leader watchdog");
        Leadership {
            role,
            stop: Some(stop),
            threads: vec![campaign, watchdog],
        }
    }

    /// The role now.
    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    /// A receiver of every change of role.
    pub fn subscribe(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }

    /// Steps down: closes the lock session and waits for the threads.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        self.stop.take();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Refuses a write transaction of the leader of `epoch` once another
/// coordinator has taken over. Run first in every write transaction on
/// PostgreSQL: the row is read `FOR SHARE`, so a takeover's bump waits until
/// this transaction ends, and a write that passed the fence commits before
/// the new leader's epoch begins. On SQLite (one coordinator per data
/// directory, `kobo.lock`) there is nothing to fence.
pub fn fence(db: &dyn Db, epoch: i64) -> Result<(), StoreError> {
    if db.dialect() == Dialect::Sqlite {
        return Ok(());
    }
    let now: i64 = db.one(
        "SELECT epoch FROM kobo_leader WHERE id = 1 FOR SHARE",
        args![],
        |r| r.get(0),
    )?;
    if now != epoch {
        return Err(StoreError::Conflict(format!(
            "deposed: epoch {epoch} is no longer the leader's (now {now})"
        )));
    }
    Ok(())
}

/// The writer's [`Fence`] for a coordinator that campaigns: every
/// PostgreSQL write transaction runs [`fence`] with the epoch of the role
/// at that moment, and none runs while this coordinator stands by. Give it
/// to `Store::open_postgres` with [`Leadership::subscribe`]'s receiver.
pub struct LeaderFence {
    role: watch::Receiver<Role>,
}

impl LeaderFence {
    pub fn new(role: watch::Receiver<Role>) -> LeaderFence {
        LeaderFence { role }
    }
}

impl Fence for LeaderFence {
    fn check(&self, tx: &dyn Db) -> Result<(), StoreError> {
        let role = self.role.borrow().clone();
        match role {
            Role::Leader { epoch } => fence(tx, epoch),
            Role::Standby { leader_address } => Err(StoreError::Conflict(format!(
                "deposed: this coordinator stands by (the leader is at {})",
                leader_address
                    .as_deref()
                    .unwrap_or("an address not known yet")
            ))),
        }
    }
}

/// The leader row: epoch and advertised address.
pub fn current_leader(db: &dyn Db) -> Result<(i64, String), StoreError> {
    db.one(
        "SELECT epoch, address FROM kobo_leader WHERE id = 1",
        args![],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// Campaigns until `stopped` fires, one lock session after another.
fn run(
    config: &LeadershipConfig,
    role: &watch::Sender<Role>,
    confirmed: &Confirmed,
    stopped: &mpsc::Receiver<()>,
) {
    loop {
        let failed = match campaign(config, role, confirmed, stopped) {
            Ok(()) => return,
            Err(err) => err,
        };
        *confirmed.lock().expect("leader state") = None;
        let was = role.send_replace(Role::Standby {
            leader_address: None,
        });
        if let Role::Leader { epoch } = was {
            warn!(epoch, error = %failed, "deposed: the leader lock session failed");
        } else {
            warn!(error = %failed, "the leader lock session failed; reconnecting");
        }
        if wait(stopped, RECONNECT_DELAY) {
            return;
        }
    }
}

/// One lock session: `Ok` when stopped, `Err` when the session failed (the
/// lock, if held, is gone with it).
fn campaign(
    config: &LeadershipConfig,
    role: &watch::Sender<Role>,
    confirmed: &Confirmed,
    stopped: &mpsc::Receiver<()>,
) -> Result<(), StoreError> {
    let mut conn = PgConn::connect(&lock_session_url(&config.database_url, config.idle_timeout))?;
    conn.batch_execute(&lock_session_settings(config.idle_timeout))?;
    let db: &dyn Db = &conn;
    let mut held: Option<i64> = None;
    loop {
        match held {
            None => {
                let won: bool =
                    db.one("SELECT pg_try_advisory_lock(?1)", args![LEADER_LOCK], |r| {
                        r.get(0)
                    })?;
                if won {
                    let epoch = take_over(db, config)?;
                    held = Some(epoch);
                    *confirmed.lock().expect("leader state") = Some((epoch, Instant::now()));
                    role.send_replace(Role::Leader { epoch });
                    info!(epoch, address = %config.address, "leading");
                } else {
                    let (_, address) = current_leader(db)?;
                    let standby = Role::Standby {
                        leader_address: (!address.is_empty()).then_some(address),
                    };
                    role.send_if_modified(|now| {
                        let changed = *now != standby;
                        *now = standby.clone();
                        changed
                    });
                }
            }
            Some(epoch) => {
                // The session is alive and the row still names this epoch
                // (nobody bumps it while the lock is held; if someone did,
                // this coordinator is deposed all the same).
                let (now, _) = current_leader(db)?;
                if now != epoch {
                    return Err(StoreError::Conflict(format!(
                        "deposed: epoch {epoch} is no longer the leader's (now {now})"
                    )));
                }
                *confirmed.lock().expect("leader state") = Some((epoch, Instant::now()));
                role.send_if_modified(|now| {
                    let changed = *now != Role::Leader { epoch };
                    *now = Role::Leader { epoch };
                    changed
                });
            }
        }
        if wait(stopped, config.liveness_interval) {
            return Ok(());
        }
    }
}

/// The settings of a lock session: PostgreSQL ends it (releasing the lock)
/// after `idle_timeout` without a statement; named for `pg_stat_activity`.
pub fn lock_session_settings(idle_timeout: Duration) -> String {
    format!(
        "SET idle_session_timeout = {}; SET application_name = 'kobo-leader'",
        idle_timeout.as_millis()
    )
}

/// `url` with the lock session's network bounds added where the URL sets
/// none: connecting, unacknowledged sends (`tcp_user_timeout`) and a dead
/// peer found by TCP keepalives (after about 1 + 3 × 1 s) all give up within
/// the idle timeout, so a lock session on a cut network fails and this
/// coordinator campaigns again instead of hanging for minutes. Both URL
/// (`postgres://…?k=v`) and key-value (`host=… k=v`) forms are handled.
pub fn lock_session_url(url: &str, idle_timeout: Duration) -> String {
    let secs = idle_timeout.as_secs().max(1).to_string();
    let bounds = [
        ("connect_timeout", secs.as_str()),
        ("tcp_user_timeout", secs.as_str()),
        ("keepalives", "1"),
        ("keepalives_idle", "1"),
        ("keepalives_interval", "1"),
        ("keepalives_retries", "3"),
    ];
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let given: Vec<&str> = if is_url {
        url.split_once('?')
            .map(|(_, query)| {
                query
                    .split('&')
                    .filter_map(|kv| kv.split('=').next())
                    .collect()
            })
            .unwrap_or_default()
    } else {
        url.split_whitespace()
            .filter_map(|kv| kv.split('=').next())
            .collect()
    };
    let mut out = url.to_string();
    for (key, value) in bounds {
        if given.contains(&key) {
            continue;
        }
        let separator = match (is_url, out.contains('?')) {
            (true, false) => '?',
            (true, true) => '&',
            (false, _) => ' ',
        };
        out.push(separator);
        out.push_str(&format!("{key}={value}"));
    }
    out
}

/// Bumps the leader row to the next epoch with this coordinator's address.
fn take_over(db: &dyn Db, config: &LeadershipConfig) -> Result<i64, StoreError> {
    db.one(
        "UPDATE kobo_leader SET epoch = epoch + 1, address = ?1, holder = ?2, since = ?3 \
         WHERE id = 1 RETURNING epoch",
        args![config.address, config.holder, crate::clock::unix_now_ms()],
        |r| r.get(0),
    )
}

/// Steps a leader down when its lock session has not answered for half the
/// idle timeout (a statement stuck on a dead network): past the idle
/// timeout PostgreSQL may already have released the lock to another.
fn watchdog(
    config: &LeadershipConfig,
    role: &watch::Sender<Role>,
    confirmed: &Confirmed,
    stopped: &mpsc::Receiver<()>,
) {
    let silent_limit = config.idle_timeout / 2;
    loop {
        if wait(stopped, config.liveness_interval / 4) {
            return;
        }
        let Some((epoch, at)) = *confirmed.lock().expect("leader state") else {
            continue;
        };
        if at.elapsed() > silent_limit {
            let deposed = role.send_if_modified(|now| {
                let leading = *now == Role::Leader { epoch };
                if leading {
                    *now = Role::Standby {
                        leader_address: None,
                    };
                }
                leading
            });
            if deposed {
                warn!(
                    epoch,
                    silent_ms = at.elapsed().as_millis() as u64,
                    "stepping down: the leader lock session stopped answering"
                );
            }
        }
    }
}

/// Waits `timeout` or until stopped (a message, or the sender dropped):
/// `true` when stopped.
fn wait(stopped: &mpsc::Receiver<()>, timeout: Duration) -> bool {
    !matches!(
        stopped.recv_timeout(timeout),
        Err(RecvTimeoutError::Timeout)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_session_urls_gain_network_bounds_the_url_does_not_set() {
        let five = Duration::from_secs(5);
        assert_eq!(
            lock_session_url("postgres://kobo@db/kobo", five),
            "postgres://kobo@db/kobo?connect_timeout=5&tcp_user_timeout=5&keepalives=1\
             &keepalives_idle=1&keepalives_interval=1&keepalives_retries=3"
        );
        assert_eq!(
            lock_session_url(
                "postgresql://db1,db2/kobo?target_session_attrs=read-write&connect_timeout=2",
                five
            ),
            "postgresql://db1,db2/kobo?target_session_attrs=read-write&connect_timeout=2\
             &tcp_user_timeout=5&keepalives=1&keepalives_idle=1&keepalives_interval=1&keepalives_retries=3"
        );
        assert_eq!(
            lock_session_url("host=db user=kobo keepalives_idle=9", five),
            "host=db user=kobo keepalives_idle=9 connect_timeout=5 tcp_user_timeout=5 keepalives=1 \
             keepalives_interval=1 keepalives_retries=3"
        );
    }
}
