//! Leader election on PostgreSQL: two coordinators' campaigns against one
//! database elect exactly one leader; killing the leader's lock session
//! hands the lead to the standby at the next epoch; a write fenced with the
//! old epoch is refused and changes nothing. PostgreSQL only (skipped, with
//! the reason printed, when `KOBO_TEST_POSTGRES` is unset).

use std::time::{Duration, Instant};

use kobo_queue::leader::{self, Leadership, LeadershipConfig, Role};
use kobo_queue::store::StoreError;
use kobo_queue::store::sql::{Db, PgConn, args};
use tokio::sync::watch;

use crate::backends::{Conn, TestDb, postgres_only};

/// The longest a takeover may take (issue: a standby leads within 10 s).
const TAKEOVER_LIMIT: Duration = Duration::from_secs(10);

/// Waits until `role` satisfies `ok`, or panics naming `what` after `limit`.
fn wait_role(
    role: &mut watch::Receiver<Role>,
    limit: Duration,
    what: &str,
    ok: impl FnMut(&Role) -> bool,
) -> Role {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let waited = tokio::time::timeout(limit, async {
            role.wait_for(ok).await.map(|now| now.clone())
        })
        .await;
        match waited {
            Ok(Ok(now)) => now,
            Ok(Err(_)) => panic!("{what}: the campaign ended"),
            Err(_) => panic!("{what}: not within {limit:?} (role {:?})", *role.borrow()),
        }
    })
}

/// Waits until one of `a` and `b` leads; its index.
fn first_leader(a: &mut watch::Receiver<Role>, b: &mut watch::Receiver<Role>) -> usize {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let either = async {
            tokio::select! {
                _ = a.wait_for(Role::is_leader) => 0,
                _ = b.wait_for(Role::is_leader) => 1,
            }
        };
        tokio::time::timeout(TAKEOVER_LIMIT, either)
            .await
            .expect("a leader within the takeover limit")
    })
}

fn campaign(db: &TestDb, address: &str) -> Leadership {
    let url = db.url().expect("a PostgreSQL test database");
    let mut config = LeadershipConfig::new(url, address);
    config.holder = format!("test {address}");
    Leadership::start(config)
}

/// Two campaigns, waited on until one leads and the other knows it.
struct Election {
    contenders: [Leadership; 2],
    roles: [watch::Receiver<Role>; 2],
    addresses: [&'static str; 2],
    leader: usize,
}

fn elect(db: &TestDb) -> Election {
    let addresses = ["https://coord-a:7700", "https://coord-b:7700"];
    let contenders = [campaign(db, addresses[0]), campaign(db, addresses[1])];
    let mut roles = [contenders[0].subscribe(), contenders[1].subscribe()];
    let [a, b] = &mut roles;
    let leader = first_leader(a, b);
    let standby = 1 - leader;
    let expected = Role::Standby {
        leader_address: Some(addresses[leader].to_string()),
    };
    wait_role(
        &mut roles[standby],
        TAKEOVER_LIMIT,
        "the standby names the leader",
        |r| *r == expected,
    );
    Election {
        contenders,
        roles,
        addresses,
        leader,
    }
}

/// The pid of the session holding the leader lock.
fn lock_holder_pid(db: &dyn Db) -> i64 {
    db.one(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND ((classid::bigint << 32) | objid::bigint) = ?1 \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        args![leader::LEADER_LOCK],
        |r| r.get(0),
    )
    .expect("the leader lock is held")
}

fn connect(db: &TestDb) -> PgConn {
    PgConn::connect(db.url().expect("PostgreSQL")).expect("connect")
}

#[test]
fn two_contenders_elect_exactly_one_leader() {
    let Some(db) = postgres_only("leader election") else {
        return;
    };
    let election = elect(&db);
    let leader = election.leader;
    let standby = 1 - leader;
    assert_eq!(
        election.contenders[leader].role(),
        Role::Leader { epoch: 1 },
        "the first leader takes epoch 1"
    );
    assert!(!election.contenders[standby].role().is_leader());
    let conn = connect(&db);
    let (epoch, address) = leader::current_leader(&conn).expect("leader row");
    assert_eq!((epoch, address.as_str()), (1, election.addresses[leader]));
    let holders: i64 = (&conn as &dyn Db)
        .one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND ((classid::bigint << 32) | objid::bigint) = ?1 \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            args![leader::LEADER_LOCK],
            |r| r.get(0),
        )
        .expect("count holders");
    assert_eq!(holders, 1, "one session holds the leader lock");
}

#[test]
fn the_standby_takes_over_when_the_leaders_session_dies() {
    let Some(db) = postgres_only("leader takeover") else {
        return;
    };
    let mut election = elect(&db);
    let leader = election.leader;
    let standby = 1 - leader;
    let third = connect(&db);
    let pid = lock_holder_pid(&third);
    let killed_at = Instant::now();
    let terminated: bool = (&third as &dyn Db)
        .one(
            "SELECT pg_terminate_backend(?1::integer)",
            args![pid],
            |r| r.get(0),
        )
        .expect("terminate the leader's lock session");
    assert!(terminated);

    let deposed = wait_role(
        &mut election.roles[leader],
        TAKEOVER_LIMIT,
        "the old leader steps down",
        |r| !r.is_leader(),
    );
    assert!(matches!(deposed, Role::Standby { .. }));
    let new = wait_role(
        &mut election.roles[standby],
        TAKEOVER_LIMIT,
        "the standby takes over",
        Role::is_leader,
    );
    let takeover = killed_at.elapsed();
    assert_eq!(
        new,
        Role::Leader { epoch: 2 },
        "the new leader's epoch is the next"
    );
    assert!(takeover < TAKEOVER_LIMIT, "took over in {takeover:?}");
    eprintln!("takeover after the leader's session was killed: {takeover:?}");

    // The old leader reconnects as a standby naming the new one.
    let expected = Role::Standby {
        leader_address: Some(election.addresses[standby].to_string()),
    };
    wait_role(
        &mut election.roles[leader],
        TAKEOVER_LIMIT,
        "the old leader stands by for the new one",
        |r| *r == expected,
    );
    assert_eq!(
        leader::current_leader(&third).expect("leader row"),
        (2, election.addresses[standby].to_string())
    );
    assert_ne!(lock_holder_pid(&third), pid);
}

/// An election, its leader's index and epoch, and a connection with a
/// scratch table `fenced_writes (epoch)` to write fenced rows into.
fn fenced_writes(db: &TestDb) -> (Election, usize, i64, Conn) {
    let election = elect(db);
    let leader = election.leader;
    let epoch = election.contenders[leader].role().epoch().expect("leading");
    let mut writer = db.connect();
    writer
        .write(|db| {
            db.execute(
                "CREATE TABLE fenced_writes (epoch BIGINT NOT NULL)",
                args![],
            )
            .map(drop)
        })
        .expect("scratch table");
    (election, leader, epoch, writer)
}

#[test]
fn a_write_fenced_with_an_old_epoch_changes_nothing() {
    let Some(db) = postgres_only("leader fencing") else {
        return;
    };
    let (mut election, leader, old_epoch, mut writer) = fenced_writes(&db);
    let write = |writer: &mut Conn, epoch: i64| {
        writer.write(|db| {
            leader::fence(db, epoch)?;
            db.execute(
                "INSERT INTO fenced_writes (epoch) VALUES (?1)",
                args![epoch],
            )
        })
    };
    assert_eq!(write(&mut writer, old_epoch).expect("the leader writes"), 1);

    // Depose the leader: its session ends, the standby bumps the epoch.
    let third = connect(&db);
    let pid = lock_holder_pid(&third);
    (&third as &dyn Db)
        .execute("SELECT pg_terminate_backend(?1::integer)", args![pid])
        .expect("terminate");
    let new = wait_role(
        &mut election.roles[1 - leader],
        TAKEOVER_LIMIT,
        "the standby takes over",
        Role::is_leader,
    );
    let new_epoch = new.epoch().expect("leading");
    assert_eq!(new_epoch, old_epoch + 1);

    let refused = write(&mut writer, old_epoch).expect_err("the old epoch is fenced off");
    assert!(
        matches!(&refused, StoreError::Conflict(message)
            if *message == format!("deposed: epoch {old_epoch} is no longer the leader's (now {new_epoch})")),
        "refused with {refused}"
    );
    let rows: Vec<i64> = writer
        .db()
        .many(
            "SELECT epoch FROM fenced_writes ORDER BY epoch",
            args![],
            |r| r.get(0),
        )
        .expect("read back");
    assert_eq!(rows, vec![old_epoch], "the fenced write left nothing");
    assert_eq!(
        write(&mut writer, new_epoch).expect("the new leader writes"),
        1
    );
}

/// Polls `check` until it holds (a state PostgreSQL reports), or panics
/// naming `what` after `limit`.
fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_takeover_waits_for_the_old_leaders_write_in_flight() {
    let Some(db) = postgres_only("leader fencing of writes in flight") else {
        return;
    };
    let (mut election, leader, old_epoch, mut writer) = fenced_writes(&db);
    let third = connect(&db);
    let third: &dyn Db = &third;

    // A write passes the fence, then the leader's session dies: the
    // standby wins the lock, but its bump waits for this transaction.
    writer
        .write(|tx| {
            leader::fence(tx, old_epoch)?;
            let pid = lock_holder_pid(third);
            third.execute("SELECT pg_terminate_backend(?1::integer)", args![pid])?;
            wait_until(
                TAKEOVER_LIMIT,
                "the standby's bump waits on the fence",
                || {
                    third
                        .one(
                            "SELECT count(*) FROM pg_stat_activity \
                         WHERE application_name = 'kobo-leader' AND wait_event_type = 'Lock' \
                         AND datname = current_database()",
                            args![],
                            |r| r.get::<i64>(0),
                        )
                        .expect("pg_stat_activity")
                        == 1
                },
            );
            assert!(
                !election.contenders[1 - leader].role().is_leader(),
                "no new leader while the old one's write is in flight"
            );
            tx.execute(
                "INSERT INTO fenced_writes (epoch) VALUES (?1)",
                args![old_epoch],
            )
        })
        .expect("the write that passed the fence commits");
    let new = wait_role(
        &mut election.roles[1 - leader],
        TAKEOVER_LIMIT,
        "the standby takes over once the write ended",
        Role::is_leader,
    );
    assert_eq!(
        new,
        Role::Leader {
            epoch: old_epoch + 1
        }
    );
    let refused = writer.write(|tx| {
        leader::fence(tx, old_epoch)?;
        tx.execute(
            "INSERT INTO fenced_writes (epoch) VALUES (?1)",
            args![old_epoch],
        )
    });
    assert!(
        refused.is_err(),
        "the old epoch writes nothing after the bump"
    );
    let rows: Vec<i64> = writer
        .db()
        .many("SELECT epoch FROM fenced_writes", args![], |r| r.get(0))
        .expect("read back");
    assert_eq!(
        rows,
        vec![old_epoch],
        "only the write made before the takeover"
    );
}

#[test]
fn a_leader_that_falls_silent_loses_the_lock_to_the_standby() {
    let Some(db) = postgres_only("leader lock lease") else {
        return;
    };
    // A leader frozen after winning (SIGSTOPped, cut off): its session took
    // the lock and bumped the epoch as a campaign does, then says nothing.
    let mut frozen = connect(&db);
    frozen
        .batch_execute(&leader::lock_session_settings(
            leader::LOCK_SESSION_IDLE_TIMEOUT,
        ))
        .expect("session settings");
    let frozen_db: &dyn Db = &frozen;
    let won: bool = frozen_db
        .one(
            "SELECT pg_try_advisory_lock(?1)",
            args![leader::LEADER_LOCK],
            |r| r.get(0),
        )
        .expect("lock");
    assert!(won);
    frozen_db
        .execute(
            "UPDATE kobo_leader SET epoch = epoch + 1, address = 'https://frozen:7700' WHERE id = 1",
            args![],
        )
        .expect("bump");
    let silent_from = Instant::now();

    let standby = campaign(&db, "https://coord-b:7700");
    let mut role = standby.subscribe();
    wait_role(
        &mut role,
        TAKEOVER_LIMIT,
        "the contender stands by for the frozen leader",
        |r| {
            *r == Role::Standby {
                leader_address: Some("https://frozen:7700".into()),
            }
        },
    );
    let new = wait_role(
        &mut role,
        TAKEOVER_LIMIT,
        "the contender takes over from the silent leader",
        Role::is_leader,
    );
    let after = silent_from.elapsed();
    assert_eq!(new, Role::Leader { epoch: 2 });
    assert!(
        after >= leader::LOCK_SESSION_IDLE_TIMEOUT,
        "not before the idle timeout ({after:?})"
    );
    eprintln!("takeover from a silent leader: {after:?}");
    assert!(
        frozen_db
            .one("SELECT 1", args![], |r| r.get::<i64>(0))
            .is_err(),
        "the silent leader's session was ended by PostgreSQL"
    );
}

#[test]
fn the_writers_fence_follows_the_role() {
    use kobo_queue::leader::LeaderFence;
    use kobo_queue::store::Fence;

    let Some(db) = postgres_only("the writer's leader fence") else {
        return;
    };
    let mut election = elect(&db);
    let leader = election.leader;
    let fences = [
        LeaderFence::new(election.contenders[0].subscribe()),
        LeaderFence::new(election.contenders[1].subscribe()),
    ];
    let mut writer = db.connect();
    writer
        .write(|tx| fences[leader].check(tx))
        .expect("the leader's writes pass");
    let standby_refused = writer
        .write(|tx| fences[1 - leader].check(tx))
        .expect_err("a standby writes nothing");
    assert!(
        standby_refused
            .to_string()
            .starts_with("deposed: this coordinator stands by"),
        "{standby_refused}"
    );

    let third = connect(&db);
    let pid = lock_holder_pid(&third);
    (&third as &dyn Db)
        .execute("SELECT pg_terminate_backend(?1::integer)", args![pid])
        .expect("terminate");
    wait_role(
        &mut election.roles[1 - leader],
        TAKEOVER_LIMIT,
        "the standby takes over",
        Role::is_leader,
    );
    writer
        .write(|tx| fences[1 - leader].check(tx))
        .expect("the new leader's writes pass");
    assert!(
        writer.write(|tx| fences[leader].check(tx)).is_err(),
        "the old leader writes nothing"
    );
}
