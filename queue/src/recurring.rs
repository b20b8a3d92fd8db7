//! Recurring-job operations on the queue: create, list, pause, resume and
//! delete schedules, each with its audit row. Firing happens in the timer's
//! tick (`store::fire_due_schedules`).

use kobo_protocol::{CatchUp, ScheduleView, SubmitJob};

use crate::access::Caller;
use crate::admin::record;
use crate::queue::Queue;
use crate::store::{self, Effect, StoreError};

impl Queue {
    pub async fn create_schedule(
        &self,
        caller: &Caller,
        name: String,
        cron: String,
        job: SubmitJob,
        catch_up: CatchUp,
    ) -> Result<ScheduleView, StoreError> {
        let caller = caller.clone();
        let hub = self.hub.clone();
        self.store
            .write(move |ctx| {
                let view = store::insert_schedule(
                    ctx.tx,
                    ctx.now,
                    &hub.sealer,
                    store::NewSchedule {
                        name: &name,
                        cron: &cron,
                        job: &job,
                        catch_up,
                    },
                    &caller.actor(),
                )?;
                store::append_audit(
                    ctx.tx,
                    ctx.now,
                    &record(
                        &caller,
                        "schedule.create",
                        Some(format!("schedule:{name}")),
                        "ok",
                        Some(format!("{cron} kind={}", job.kind)),
                    ),
                )?;
                ctx.effect(Effect::WakeTimer);
                Ok(view)
            })
            .await
    }

    pub async fn list_schedules(&self) -> Result<Vec<ScheduleView>, StoreError> {
        let hub = self.hub.clone();
        self.store
            .read(move |conn| store::list_schedules(conn, &hub.sealer))
            .await
    }

    pub async fn pause_schedule(
        &self,
        caller: &Caller,
        name: String,
        paused: bool,
    ) -> Result<(), StoreError> {
        let caller = caller.clone();
        self.store
            .write(move |ctx| {
                store::pause_schedule(ctx.tx, ctx.now, &name, paused)?;
                let action = if paused {
                    "schedule.pause"
                } else {
                    "schedule.resume"
                };
                store::append_audit(
                    ctx.tx,
                    ctx.now,
                    &record(
                        &caller,
                        action,
                        Some(format!("schedule:{name}")),
                        "ok",
                        None,
                    ),
                )?;
                ctx.effect(Effect::WakeTimer);
                Ok(())
            })
            .await
    }

    pub async fn delete_schedule(&self, caller: &Caller, name: String) -> Result<(), StoreError> {
        let caller = caller.clone();
        self.store
            .write(move |ctx| {
                store::delete_schedule(ctx.tx, &name)?;
                store::append_audit(
                    ctx.tx,
                    ctx.now,
                    &record(
                        &caller,
                        "schedule.delete",
                        Some(format!("schedule:{name}")),
                        "ok",
                        None,
                    ),
                )?;
                Ok(())
            })
            .await
    }
}
