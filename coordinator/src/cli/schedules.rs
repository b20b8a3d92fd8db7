//! `schedule create|list|pause|resume|delete`: recurring jobs.

use super::*;

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Add a schedule: NAME, a cron expression with seconds (UTC), and the job.
    Add {
        #[command(flatten)]
        client: ClientArgs,
        /// The schedule's name.
        name: String,
        /// e.g. "0 */15 * * * *" (sec min hour day month weekday), UTC.
        cron: String,
        /// The job, as the JSON body of POST /v1/jobs; `-` for standard input.
        #[arg(long)]
        job: PathBuf,
        /// Slots missed while the coordinator was down: once, all or none.
        #[arg(long, default_value = "once", value_parser = parse_catch_up)]
        catch_up: CatchUp,
    },
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    Remove {
        #[command(flatten)]
        client: ClientArgs,
        /// The schedule's name.
        name: String,
    },
    Pause {
        #[command(flatten)]
        client: ClientArgs,
        /// The schedule's name.
        name: String,
    },
    Resume {
        #[command(flatten)]
        client: ClientArgs,
        /// The schedule's name.
        name: String,
    },
}

fn parse_catch_up(s: &str) -> Result<CatchUp, String> {
    CatchUp::parse(s).ok_or_else(|| format!("unknown catch-up {s:?}; one of once, all, none"))
}

pub async fn schedule(command: ScheduleCommand) -> anyhow::Result<()> {
    match command {
        ScheduleCommand::Add {
            client,
            name,
            cron,
            job,
            catch_up,
        } => {
            let text = if job.as_os_str() == "-" {
                read_arg_or_stdin("-")?
            } else {
                std::fs::read_to_string(&job)
                    .with_context(|| format!("reading {}", job.display()))?
            };
            let job: SubmitJob = serde_json::from_str(&text)
                .with_context(|| format!("parsing job {}", job.display()))?;
            let body = kobo_protocol::ScheduleCreate {
                name,
                cron,
                job,
                catch_up,
            };
            let created = client.client()?.schedule_create(&body).await?;
            if client.json {
                return print_json(&created);
            }
            println!(
                "schedule {} added: {} (UTC), next at {} UTC",
                created.name,
                created.cron,
                format_time(Some(created.next_fire_at))
            );
            Ok(())
        }
        ScheduleCommand::List { client } => {
            let list = client.client()?.schedules().await?;
            if client.json {
                return print_json(&list);
            }
            let mut t = table(&[
                "name",
                "cron (UTC)",
                "kind",
                "catch-up",
                "paused",
                "next",
                "last fired",
                "last job",
            ]);
            for s in &list {
                t.add_row(vec![
                    s.name.clone(),
                    s.cron.clone(),
                    s.kind.clone(),
                    s.catch_up.as_str().to_string(),
                    s.paused.to_string(),
                    format_time(Some(s.next_fire_at)),
                    format_time(s.last_fired_at),
                    s.last_job_id
                        .map(|id| id.to_string())
                        .unwrap_or_else(|| "-".into()),
                ]);
            }
            println!("{t}");
            Ok(())
        }
        ScheduleCommand::Remove { client, name } => {
            client.client()?.schedule_remove(&name).await?;
            println!("schedule {name} removed");
            Ok(())
        }
        ScheduleCommand::Pause { client, name } => {
            client.client()?.schedule_pause(&name, true).await?;
            println!("schedule {name} paused");
            Ok(())
        }
        ScheduleCommand::Resume { client, name } => {
            client.client()?.schedule_pause(&name, false).await?;
            println!("schedule {name} resumed");
            Ok(())
        }
    }
}
