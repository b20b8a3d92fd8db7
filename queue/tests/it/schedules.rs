//! Recurring jobs on every backend: a slot fires once even when two
//! coordinators' ticks fire at once; a coordinator passes over a schedule
//! another is firing (PostgreSQL); names are unique without spoiling the
//! transaction; pause, resume and delete.

use std::sync::Barrier;

use kobo_protocol::{CatchUp, SubmitJob};
use kobo_queue::store::sql::{Db, args};
use kobo_queue::store::{self, Changes, StoreError};

use crate::backends::{Conn, TestDb, each_backend};
use crate::fixture::T0;
use crate::sealer;

const EVERY_MINUTE: &str = "0 * * * * *";

fn job() -> SubmitJob {
    SubmitJob {
        kind: "a".into(),
        prompt: Some("p".into()),
        ..SubmitJob::default()
    }
}

fn create(db: &dyn Db, name: &str) -> Result<kobo_protocol::ScheduleView, StoreError> {
    let job = job();
    store::insert_schedule(
        db,
        T0,
        &sealer(),
        store::NewSchedule {
            name,
            cron: EVERY_MINUTE,
            job: &job,
            catch_up: CatchUp::Once,
        },
        "admin",
    )
}

fn fire(db: &dyn Db, now: i64) -> Result<Vec<(String, i64)>, StoreError> {
    store::fire_due_schedules(db, now, &sealer(), 3, &mut Changes::default())
}

/// (next_fire_at, last_fired_at, last_job_id) of a schedule.
fn slot(db: &dyn Db, name: &str) -> (i64, Option<i64>, Option<i64>) {
    db.one(
        "SELECT next_fire_at, last_fired_at, last_job_id FROM schedules WHERE name = ?1",
        args![name],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .expect("schedule row")
}

fn jobs_of(db: &dyn Db, name: &str) -> Vec<(i64, String)> {
    db.many(
        "SELECT id, idempotency_key FROM jobs WHERE submitted_by = ?1 ORDER BY id",
        args![format!("schedule:{name}")],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .expect("jobs")
}

#[test]
fn a_slot_fires_once_when_two_coordinators_fire_at_once() {
    each_backend(|test| {
        let mut conn = test.connect();
        conn.write(|db| create(db, "tick")).expect("create");
        let first_slot = T0 + 60_000;
        let barrier = Barrier::new(2);
        let fired: Vec<Vec<(String, i64)>> = std::thread::scope(|s| {
            let runs: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        let mut mine = test.connect();
                        barrier.wait();
                        mine.write(|db| fire(db, first_slot + 500)).expect("fire")
                    })
                })
                .collect();
            runs.into_iter()
                .map(|r| r.join().expect("thread"))
                .collect()
        });
        let all: Vec<&(String, i64)> = fired.iter().flatten().collect();
        assert_eq!(all.len(), 1, "one firing in all: {fired:?}");
        let db = conn.db();
        let jobs = jobs_of(db, "tick");
        assert_eq!(
            jobs,
            vec![(all[0].1, format!("schedule:tick:{first_slot}"))]
        );
        assert_eq!(
            slot(db, "tick"),
            (first_slot + 60_000, Some(first_slot), Some(all[0].1))
        );
        // The next tick in the same minute fires nothing more.
        assert!(
            conn.write(|db| fire(db, first_slot + 900))
                .expect("again")
                .is_empty()
        );
        assert_eq!(jobs_of(conn.db(), "tick").len(), 1);
    });
}

/// PostgreSQL only (SQLite has one writer at a time): while one
/// coordinator's transaction fires a schedule, another's tick passes over
/// it at once instead of waiting, and after the commit finds it not due.
#[test]
fn a_tick_passes_over_a_schedule_another_is_firing() {
    each_backend(|test| {
        let TestDb::Postgres { .. } = test else {
            return;
        };
        let mut setup = test.connect();
        setup.write(|db| create(db, "tick")).expect("create");
        let (Conn::Postgres(mut a), Conn::Postgres(mut b)) = (test.connect(), test.connect())
        else {
            unreachable!("PostgreSQL connections")
        };
        // A lock wait would fail the test, not hang it.
        b.batch_execute("SET lock_timeout = '10s'")
            .expect("timeout");
        let now = T0 + 60_500;
        let tx = a.transaction().expect("begin");
        let fired_a = fire(&tx, now).expect("a fires");
        assert_eq!(fired_a.len(), 1);
        let tx_b = b.transaction().expect("begin b");
        assert!(fire(&tx_b, now).expect("b passes").is_empty());
        tx_b.commit().expect("commit b");
        tx.commit().expect("commit a");
        let tx_b = b.transaction().expect("begin b");
        assert!(
            fire(&tx_b, now).expect("b after a").is_empty(),
            "not due any more"
        );
        tx_b.commit().expect("commit b");
        assert_eq!(jobs_of(&*b, "tick").len(), 1);
        assert_eq!(slot(&*b, "tick").0, T0 + 120_000);
    });
}

#[test]
fn schedules_are_unique_by_name_and_pause_resume_and_delete() {
    each_backend(|test| {
        let mut conn = test.connect();
        // A taken name is a conflict, and the transaction goes on (on
        // PostgreSQL a failed statement would have spoiled it).
        let listed = conn
            .write(|db| {
                create(db, "tick")?;
                let again = create(db, "tick");
                assert!(
                    matches!(&again, Err(StoreError::Conflict(m)) if m.contains("tick")),
                    "{again:?}"
                );
                create(db, "other")?;
                store::list_schedules(db, &sealer())
            })
            .expect("create");
        let names: Vec<&str> = listed.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["other", "tick"]);
        assert_eq!(listed[1].next_fire_at, T0 + 60_000);
        assert_eq!(listed[1].kind, "a");
        assert_eq!(
            store::next_wakeup(conn.db(), 1_000).expect("wakeup"),
            Some(T0 + 60_000)
        );

        conn.write(|db| store::pause_schedule(db, T0 + 1, "tick", true))
            .expect("pause");
        conn.write(|db| store::delete_schedule(db, "other"))
            .expect("delete");
        assert!(matches!(
            conn.write(|db| store::delete_schedule(db, "other")),
            Err(StoreError::NotFound(_))
        ));
        // Paused: its slots pass without firing.
        assert!(
            conn.write(|db| fire(db, T0 + 180_500))
                .expect("fire")
                .is_empty()
        );
        assert_eq!(store::next_wakeup(conn.db(), 1_000).expect("wakeup"), None);
        // Resumed: from the next slot after now.
        conn.write(|db| store::pause_schedule(db, T0 + 190_000, "tick", false))
            .expect("resume");
        let views = store::list_schedules(conn.db(), &sealer()).expect("list");
        assert_eq!((views.len(), views[0].paused), (1, false));
        assert_eq!(views[0].next_fire_at, T0 + 240_000);
        let fired = conn.write(|db| fire(db, T0 + 240_001)).expect("fire");
        assert_eq!(fired.len(), 1);
        assert_eq!(
            jobs_of(conn.db(), "tick")[0].1,
            format!("schedule:tick:{}", T0 + 240_000)
        );
    });
}
