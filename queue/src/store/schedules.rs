//! Recurring jobs: schedule rows, and firing the slots that came due. A tick
//! claims a schedule's due slots by moving its `next_fire_at` only if it
//! still holds the slot it read (on PostgreSQL it also locks the row, and
//! another coordinator's tick passes over it), then submits the schedule's
//! job with the idempotency key `schedule:<name>:<slot ms>`: a slot never
//! fires twice — not across a restart, not with two coordinators on one
//! database.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use kobo_protocol::{CatchUp, ScheduleView, SubmitJob};

use super::StoreError;
use super::jobs::{Changes, insert_job};
use super::sql::{Db, Dialect, Row, args};
use crate::security::Sealer;

pub const INSERT_SCHEDULE: &str = "INSERT INTO schedules (name, cron, job, catch_up, next_fire_at, created_at, created_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
/// On PostgreSQL a failed statement spoils the whole transaction: a taken
/// name inserts nothing instead of failing.
pub const INSERT_SCHEDULE_PG: &str = "INSERT INTO schedules (name, cron, job, catch_up, next_fire_at, created_at, created_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (name) DO NOTHING";
pub const SELECT_SCHEDULES: &str = "SELECT name, cron, job, catch_up, paused, next_fire_at, last_fired_at, last_job_id, created_at, created_by FROM schedules ORDER BY name";
pub const SELECT_DUE_SCHEDULES: &str = "SELECT name, cron, job, catch_up, next_fire_at, last_fired_at FROM schedules WHERE paused = 0 AND next_fire_at <= ?1 ORDER BY next_fire_at LIMIT 100";
/// PostgreSQL: two coordinators' ticks may run at once (SQLite has one
/// writer). Each locks the due rows it fires until it commits; the other
/// passes over them, and after the commit their `next_fire_at` is past.
pub const SELECT_DUE_SCHEDULES_PG: &str = "SELECT name, cron, job, catch_up, next_fire_at, last_fired_at FROM schedules WHERE paused = 0 AND next_fire_at <= ?1 ORDER BY next_fire_at LIMIT 100 FOR UPDATE SKIP LOCKED";
/// Claims the due slots of a schedule by moving it to its next slot, only
/// if it still is where the firing read it (`?3`): a compare-and-set, so of
/// two firings that read the same row one changes it and fires, the other
/// changes nothing and fires nothing.
pub const CLAIM_SCHEDULE: &str =
    "UPDATE schedules SET next_fire_at = ?2 WHERE name = ?1 AND next_fire_at = ?3 AND paused = 0";
pub const FIRED_SCHEDULE: &str =
    "UPDATE schedules SET last_fired_at = ?2, last_job_id = ?3 WHERE name = ?1";
pub const PAUSE_SCHEDULE: &str =
    "UPDATE schedules SET paused = ?2, next_fire_at = coalesce(?3, next_fire_at) WHERE name = ?1";
pub const DELETE_SCHEDULE: &str = "DELETE FROM schedules WHERE name = ?1";
pub const SELECT_SCHEDULE_CRON: &str = "SELECT cron FROM schedules WHERE name = ?1";

/// Most jobs one schedule fires in one tick when catching up slot by slot.
const MAX_CATCH_UP: usize = 100;

/// Parses a cron expression (the `cron` crate's syntax, seconds first).
pub fn parse_cron(expression: &str) -> Result<cron::Schedule, String> {
    cron::Schedule::from_str(expression).map_err(|e| {
        format!("{expression:?} is not a cron expression ({e}); the syntax has seconds first, e.g. \"0 */15 * * * *\"")
    })
}

fn utc(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// The first slot strictly after `after_ms`.
pub fn next_slot(schedule: &cron::Schedule, after_ms: i64) -> Option<i64> {
    schedule
        .after(&utc(after_ms))
        .next()
        .map(|t| t.timestamp_millis())
}

fn view(r: &Row<'_>, sealer: &Sealer) -> Result<ScheduleView, StoreError> {
    let job_text: String = r.get(2)?;
    let job = sealer
        .open("schedule", &job_text)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let job: SubmitJob = serde_json::from_str(&job)
        .map_err(|e| StoreError::Corrupt(format!("schedule job: {e}")))?;
    let catch_up: String = r.get(3)?;
    Ok(ScheduleView {
        name: r.get(0)?,
        cron: r.get(1)?,
        timezone: "UTC".into(),
        catch_up: CatchUp::parse(&catch_up)
            .ok_or_else(|| StoreError::Corrupt(format!("catch_up {catch_up:?}")))?,
        paused: r.get(4)?,
        next_fire_at: r.get(5)?,
        last_fired_at: r.get(6)?,
        last_job_id: r.get(7)?,
        created_at: r.get(8)?,
        created_by: r.get(9)?,
        kind: job.kind,
    })
}

/// A schedule to create.
pub struct NewSchedule<'a> {
    pub name: &'a str,
    pub cron: &'a str,
    pub job: &'a SubmitJob,
    pub catch_up: CatchUp,
}

pub fn insert_schedule(
    db: &dyn Db,
    now: i64,
    sealer: &Sealer,
    new: NewSchedule<'_>,
    created_by: &str,
) -> Result<ScheduleView, StoreError> {
    let NewSchedule {
        name,
        cron: expression,
        job,
        catch_up,
    } = new;
    let schedule = parse_cron(expression).map_err(StoreError::Invalid)?;
    let next = next_slot(&schedule, now)
        .ok_or_else(|| StoreError::Invalid(format!("{expression:?} never fires")))?;
    let text = serde_json::to_string(job).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let text = if job.requirements.confidential {
        sealer.seal("schedule", &text)
    } else {
        text
    };
    let inserted = db.execute(
        db.pick(INSERT_SCHEDULE, INSERT_SCHEDULE_PG),
        args![
            name,
            expression,
            text,
            catch_up.as_str(),
            next,
            now,
            created_by
        ],
    );
    let taken = || StoreError::Conflict(format!("a schedule named {name} exists"));
    match inserted {
        Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            return Err(taken());
        }
        Ok(0) if db.dialect() == Dialect::Postgres => return Err(taken()),
        other => other?,
    };
    Ok(ScheduleView {
        name: name.into(),
        cron: expression.into(),
        timezone: "UTC".into(),
        catch_up,
        paused: false,
        next_fire_at: next,
        last_fired_at: None,
        last_job_id: None,
        created_at: now,
        created_by: created_by.into(),
        kind: job.kind.clone(),
    })
}

pub fn list_schedules(db: &dyn Db, sealer: &Sealer) -> Result<Vec<ScheduleView>, StoreError> {
    db.many(SELECT_SCHEDULES, args![], |r| view(r, sealer))
}

/// Pauses or resumes; resuming starts from the next slot after now.
pub fn pause_schedule(db: &dyn Db, now: i64, name: &str, paused: bool) -> Result<(), StoreError> {
    let expression: Option<String> =
        db.optional(SELECT_SCHEDULE_CRON, args![name], |r| r.get(0))?;
    let expression =
        expression.ok_or_else(|| StoreError::NotFound(format!("no schedule {name}")))?;
    let next = if paused {
        None
    } else {
        next_slot(&parse_cron(&expression).map_err(StoreError::Corrupt)?, now)
    };
    db.execute(PAUSE_SCHEDULE, args![name, paused, next])?;
    Ok(())
}

pub fn delete_schedule(db: &dyn Db, name: &str) -> Result<(), StoreError> {
    if db.execute(DELETE_SCHEDULE, args![name])? == 0 {
        return Err(StoreError::NotFound(format!("no schedule {name}")));
    }
    Ok(())
}

/// Fires the schedules that came due: per schedule, the due slots up to
/// `now`, caught up once (the latest), all, or not at all, as the schedule
/// says. Returns the (schedule, job id) fired.
pub fn fire_due_schedules(
    db: &dyn Db,
    now: i64,
    sealer: &Sealer,
    default_max_attempts: u32,
    changes: &mut Changes,
) -> Result<Vec<(String, i64)>, StoreError> {
    let due: Vec<(String, String, String, String, i64)> = db.many(
        db.pick(SELECT_DUE_SCHEDULES, SELECT_DUE_SCHEDULES_PG),
        args![now],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
    )?;
    let mut fired = Vec::new();
    for (name, expression, job_text, catch_up, next_fire_at) in due {
        let schedule = parse_cron(&expression).map_err(StoreError::Corrupt)?;
        let job_text = sealer
            .open("schedule", &job_text)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let job: SubmitJob = serde_json::from_str(&job_text)
            .map_err(|e| StoreError::Corrupt(format!("schedule {name}: {e}")))?;
        let next = next_slot(&schedule, now).unwrap_or(i64::MAX);
        if db.execute(CLAIM_SCHEDULE, args![name, next, next_fire_at])? == 0 {
            continue;
        }
        // Every slot from the one that came due up to now.
        let mut slots = vec![next_fire_at];
        slots.extend(
            schedule
                .after(&utc(next_fire_at))
                .map(|t| t.timestamp_millis())
                .take_while(|slot| *slot <= now)
                .take(10_000),
        );
        let chosen: Vec<i64> = match CatchUp::parse(&catch_up).unwrap_or_default() {
            CatchUp::All => slots
                .iter()
                .rev()
                .take(MAX_CATCH_UP)
                .rev()
                .copied()
                .collect(),
            CatchUp::Once => slots.last().copied().into_iter().collect(),
            // Only a slot that is due right now (within a second or two of
            // its time) fires; older ones were missed.
            CatchUp::None => slots
                .last()
                .copied()
                .filter(|slot| now - slot < 2_000)
                .into_iter()
                .collect(),
        };
        let mut last = None;
        for slot in &chosen {
            let mut spec = job.clone();
            spec.idempotency_key = Some(format!("schedule:{name}:{slot}"));
            let answer = insert_job(
                db,
                now,
                sealer,
                default_max_attempts,
                &format!("schedule:{name}"),
                &spec,
                changes,
            )?;
            fired.push((name.clone(), answer.id));
            last = Some((*slot, answer.id));
        }
        if let Some((slot, id)) = last {
            db.execute(FIRED_SCHEDULE, args![name, slot, id])?;
        }
    }
    Ok(fired)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_slots_follow_the_expression() {
        let every_15 = parse_cron("0 */15 * * * *").expect("cron");
        // 2026-01-01T00:07:00Z → next slot 00:15:00.
        let at = Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 7, 0)
            .single()
            .expect("time")
            .timestamp_millis();
        let next = next_slot(&every_15, at).expect("next");
        assert_eq!(next - at, 8 * 60 * 1000);
        assert!(parse_cron("every minute").is_err());
        assert!(parse_cron("0 */15 * * * *").is_ok());
    }
}
