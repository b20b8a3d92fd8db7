//! The observability, routing-state, scaling and job reads on every
//! backend, over the fixture's history: metrics folded once and read back
//! in buckets, the event tail, the dashboard's reads, the fleet as routing
//! sees it, the scaling numbers, and job details and listings.

use kobo_protocol::{JobListQuery, JobState, NodeStatus};
use kobo_queue::store::sql::args;
use kobo_queue::store::{self, ScalingFilter, StoreError};

use crate::backends::{Conn, each_backend};
use crate::fixture::{self, FOLDED_AT, T0, TTL};
use crate::sealer;

#[test]
fn metrics_fold_once_and_node_usage_reads_minutes_then_raw_rows() {
    each_backend(|test| {
        let mut conn = test.connect();
        fixture::fill(&mut conn);
        let minutes = |conn: &crate::backends::Conn| -> Vec<(i64, i64, f64, f64, i64, f64)> {
            conn.db()
                .many(
                    "SELECT minute, samples, cpu_percent_avg, cpu_percent_max, mem_used_bytes_avg, running_avg FROM node_metrics_minute ORDER BY minute",
                    args![],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
                )
                .expect("minutes")
        };
        let folded = minutes(&conn);
        assert_eq!(
            folded,
            vec![
                (T0, 2, 20.0, 30.0, 200, 0.0),
                (T0 + 60_000, 1, 50.0, 50.0, 500, 0.0)
            ],
            "the current minute is not folded yet"
        );
        let retention = store::MetricsRetention {
            raw: std::time::Duration::from_secs(24 * 3600),
            minute: std::time::Duration::from_secs(30 * 24 * 3600),
        };
        conn.write(|db| store::maintain_metrics(db, FOLDED_AT + 1, &retention))
            .expect("again");
        assert_eq!(minutes(&conn), folded, "folding is idempotent");

        let usage = store::node_usage(conn.db(), T0, 60_000).expect("usage");
        let bucket = |idx: usize| {
            let rows: Vec<_> = usage.iter().filter(|u| u.bucket == idx).collect();
            let samples: u64 = rows.iter().map(|u| u.samples).sum();
            let cpu: f64 = rows.iter().map(|u| u.cpu_percent_sum).sum();
            let mem: f64 = rows.iter().map(|u| u.mem_percent_sum).sum();
            (samples, cpu / samples as f64, mem / samples as f64)
        };
        assert_eq!(
            bucket(0),
            (2, 20.0, 20.0),
            "the folded minute, by its samples"
        );
        assert_eq!(bucket(1), (1, 50.0, 50.0));
        assert_eq!(
            bucket(2),
            (1, 70.0, 70.0),
            "the current minute, from raw rows"
        );
        assert!(usage.iter().all(|u| u.node_id == "n1"));

        // Past the retention both series go.
        let short = store::MetricsRetention {
            raw: std::time::Duration::from_secs(60),
            minute: std::time::Duration::from_secs(60),
        };
        conn.write(|db| store::maintain_metrics(db, T0 + 3_600_000, &short))
            .expect("prune");
        assert_eq!(
            minutes(&conn),
            [],
            "the last minute is folded, then pruned too"
        );
        let raw: i64 = conn
            .db()
            .one("SELECT count(*) FROM node_metrics", args![], |r| r.get(0))
            .expect("raw");
        assert_eq!(raw, 0, "raw rows past retention and folded are gone");
    });
}

#[test]
fn the_event_tail_counts_and_times_every_change() {
    each_backend(|test| {
        let mut conn = test.connect();
        fixture::fill(&mut conn);
        let db = conn.db();
        let (mut counts, last) = store::job_counts(db).expect("counts");
        counts.sort_by(|a, b| (&a.0, a.1.as_str()).cmp(&(&b.0, b.1.as_str())));
        assert_eq!(
            counts,
            vec![
                ("a".to_string(), JobState::Dead, 1),
                ("a".to_string(), JobState::Leased, 1),
                ("a".to_string(), JobState::Scheduled, 1),
                ("a".to_string(), JobState::Succeeded, 1),
                ("b".to_string(), JobState::Queued, 2),
            ]
        );
        let events = store::events_after(db, 0, 1000).expect("events");
        assert_eq!(events.last().map(|e| e.id), Some(last));
        assert_eq!(events.len(), 11, "{events:?}");
        let of = |to: JobState| events.iter().filter(move |e| e.to == to);
        let leases: Vec<_> = of(JobState::Leased)
            .map(|e| e.at - e.since.unwrap_or(0))
            .collect();
        assert_eq!(
            leases,
            [1000, 100, 100],
            "pickup latency, from the last queued"
        );
        let done: Vec<_> = of(JobState::Succeeded).collect();
        assert_eq!(done.len(), 1);
        assert_eq!(
            (done[0].since, done[0].tokens, done[0].node_id.as_deref()),
            (Some(T0 + 1000), Some(60), Some("n1"))
        );
        assert!(of(JobState::Dead).all(|e| e.tokens.is_none() && e.kind == "a"));
        assert_eq!(store::events_after(db, last, 10).expect("none"), []);
        let two = store::events_after(db, 0, 2).expect("two");
        assert_eq!(two, events[..2]);

        let first_at = |since| store::first_event_since(db, since).expect("search");
        assert_eq!(first_at(0), events[0].id);
        let at_3000 = events.iter().find(|e| e.at >= T0 + 3000).expect("event");
        assert_eq!(first_at(T0 + 3000), at_3000.id);
        assert_eq!(first_at(T0 + 3001), at_3000.id + 1);
        assert_eq!(first_at(T0 + 10_000), last + 1, "past the newest: none");
    });
}

#[test]
fn the_dashboard_reads_queue_latest_jobs_and_node_activity() {
    each_backend(|test| {
        let mut conn = test.connect();
        let jobs = fixture::fill(&mut conn);
        let db = conn.db();
        let queue: Vec<_> = store::queue_summary(db)
            .expect("queue")
            .into_iter()
            .map(|q| (q.state, q.kind, q.jobs, q.oldest_at))
            .collect();
        assert_eq!(
            queue,
            vec![
                (JobState::Leased, "a".into(), 1, Some(T0 + 4100)),
                (JobState::Queued, "b".into(), 2, Some(T0 + 5000)),
                (JobState::Scheduled, "a".into(), 1, Some(T0 + 5500)),
            ]
        );
        let latest = store::latest_jobs(db, 3).expect("latest");
        let ids: Vec<i64> = latest.iter().map(|j| j.id).collect();
        assert_eq!(ids, [jobs.confidential, jobs.scheduled, jobs.queued]);
        assert!(latest[0].confidential && !latest[1].confidential);
        assert_eq!(
            (latest[1].state, latest[1].max_attempts),
            (JobState::Scheduled, 3)
        );

        let n1 = store::node_recent(db, "n1", T0, 3_600_000).expect("n1");
        assert_eq!((n1.attempts, n1.succeeded, n1.failed), (2, 1, 1));
        assert_eq!(n1.mean_response_ms, Some(1500.0));
        assert_eq!(n1.tokens_per_s, Some(50.0), "60 tokens in 1200 ms");
        assert_eq!((n1.gateway_requests, n1.gateway_tokens_per_s), (0, None));
        let later = store::node_recent(db, "n1", T0 + 3050, 1000).expect("later");
        assert_eq!((later.attempts, later.succeeded, later.failed), (1, 0, 1));
        assert_eq!((later.mean_response_ms, later.tokens_per_s), (None, None));
        let n2 = store::node_recent(db, "n2", T0, 1000).expect("n2");
        assert_eq!(n2.attempts, 0, "the running attempt is not counted");

        // The next timed transition: the lease expiry, or a heartbeat deadline.
        assert_eq!(
            store::next_wakeup(db, 3_600_000).expect("wakeup"),
            Some(T0 + 4100 + TTL as i64)
        );
        assert_eq!(
            store::next_wakeup(db, 1000).expect("wakeup"),
            Some(T0 + 1001)
        );
    });
}

#[test]
fn the_fleet_as_routing_sees_it_and_node_status_changes() {
    each_backend(|test| {
        let mut conn = test.connect();
        fixture::fill(&mut conn);
        let db = conn.db();
        let fleet = store::fleet_states(db).expect("fleet");
        let mut seen: Vec<_> = fleet
            .iter()
            .map(|n| {
                (
                    n.profile.node_id.clone(),
                    n.running,
                    n.cpu_percent,
                    n.rtt_ms,
                    n.status,
                )
            })
            .collect();
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            seen,
            vec![
                ("n1".into(), 0, Some(70.0), Some(3), NodeStatus::Active),
                ("n2".into(), 1, None, None, NodeStatus::Active),
            ]
        );
        let n2 = store::fleet_state(db, "n2").expect("n2").expect("known");
        assert_eq!(
            (n2.profile.region.as_str(), n2.profile.max_workers),
            ("ap-northeast-1", 2)
        );
        assert!(n2.coordinates.is_some(), "from its region");
        assert!(store::fleet_state(db, "nope").expect("unknown").is_none());

        let speeds = store::speeds(db, T0 - 1).expect("speeds");
        assert_eq!(speeds.len(), 1, "{speeds:?}");
        let (node, kind, model, speed) = &speeds[0];
        assert_eq!(
            (node.as_str(), kind.as_str(), model.as_deref()),
            ("n1", "a", Some("m"))
        );
        assert_eq!(
            (speed.mean_ms, speed.tokens_per_s, speed.samples),
            (1200.0, 50.0, 1)
        );
        assert!(store::speeds(db, T0 + 1000).expect("none").is_empty());

        assert_eq!(store::running_on(db, "n2").expect("running"), 1);
        conn.write(|db| store::set_node_status(db, "n2", NodeStatus::Draining))
            .expect("drain");
        assert_eq!(
            store::node_status(conn.db(), "n2").expect("status"),
            Some(NodeStatus::Draining)
        );
        assert!(matches!(
            conn.write(|db| store::set_node_status(db, "nope", NodeStatus::Drained)),
            Err(StoreError::NodeNotFound(n)) if n == "nope"
        ));
        assert_eq!(store::node_status(conn.db(), "nope").expect("none"), None);
    });
}

#[test]
fn scaling_counts_the_backlog_an_agent_pool_could_take() {
    each_backend(|test| {
        let mut conn = test.connect();
        fixture::fill(&mut conn);
        let db = conn.db();
        let now = T0 + 10_000;
        let filter =
            |kind: Option<&str>, region: Option<&str>, model: Option<&str>| ScalingFilter {
                kind: kind.map(str::to_string),
                region: region.map(str::to_string),
                model: model.map(str::to_string),
                slots: None,
            };
        let all = store::scaling(db, &filter(None, None, None), now).expect("all");
        assert_eq!(
            (all.queued, all.leased, all.backlog, all.agents),
            (2, 1, 3, 2)
        );
        assert_eq!(all.oldest_wait_ms, 5000, "queued since T0+5000");
        let b = store::scaling(db, &filter(Some("b"), Some("EU-West-2"), None), now).expect("b");
        assert_eq!(
            (b.queued, b.leased, b.agents),
            (2, 0, 1),
            "both b jobs may run in europe"
        );
        let japan = store::scaling(db, &filter(Some("b"), Some("ap-northeast-1"), None), now)
            .expect("japan");
        assert_eq!(
            (japan.queued, japan.agents),
            (1, 0),
            "the europe-only job is not japan's"
        );
        let model =
            store::scaling(db, &filter(Some("a"), None, Some("m:latest")), now).expect("model");
        assert_eq!(
            (model.queued, model.leased, model.agents),
            (0, 1, 1),
            "n1 serves m"
        );

        let groups = store::scaling_groups(db, now, 10).expect("groups");
        let mut split: Vec<_> = groups
            .iter()
            .map(|g| (g.kind.clone(), g.region.clone(), g.queued, g.leased))
            .collect();
        split.sort();
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            split,
            vec![
                (s("a"), s(""), 0, 1),
                (s("b"), s(""), 1, 0),
                (s("b"), s("europe"), 1, 0),
            ]
        );
        let capped = store::scaling_groups(db, now, 1).expect("capped");
        assert_eq!(capped.len(), 2);
        assert_eq!(capped[1].kind.as_deref(), Some("other"));
        assert_eq!(
            capped[0].backlog + capped[1].backlog,
            3,
            "the groups sum to the whole"
        );
    });
}

#[test]
fn job_details_listings_and_positions() {
    each_backend(|test| {
        let mut conn = test.connect();
        let jobs = fixture::fill(&mut conn);
        let db = conn.db();
        let sealer = sealer();
        let admin = store::Reveal {
            sealer: &sealer,
            only_of: None,
        };
        let (detail, needs) = store::job_detail(db, jobs.succeeded, &admin)
            .expect("detail")
            .expect("found");
        assert_eq!(detail.job.state, JobState::Succeeded);
        assert_eq!(
            detail.job.output.as_ref().map(|o| o.text.as_str()),
            Some("done")
        );
        assert_eq!(detail.request.prompt.as_deref(), Some("p"));
        assert_eq!(detail.attempts.len(), 1);
        assert_eq!(detail.attempts[0].outcome, "succeeded");
        let states: Vec<_> = detail.events.iter().map(|e| e.to_state).collect();
        assert_eq!(
            states,
            [JobState::Queued, JobState::Leased, JobState::Succeeded]
        );
        assert_eq!(needs.kind, "a");
        assert!(store::job_detail(db, 9999, &admin).expect("none").is_none());

        let stranger = store::Reveal {
            sealer: &sealer,
            only_of: Some("someone"),
        };
        let secret = store::get_job(db, jobs.confidential, &stranger)
            .expect("get")
            .expect("found");
        assert!(secret.redacted && secret.confidential);

        let queued = JobListQuery {
            state: Some(JobState::Queued),
            limit: Some(1),
            ..JobListQuery::default()
        };
        let page = store::list_jobs(db, &queued, &admin).expect("list");
        assert_eq!(page.total, 2);
        let ids: Vec<i64> = page.jobs.iter().map(|(j, _)| j.id).collect();
        assert_eq!(ids, [jobs.confidential]);
        assert_eq!(page.next_after, Some(jobs.confidential));
        let next = JobListQuery {
            after: page.next_after,
            ..queued
        };
        let page = store::list_jobs(db, &next, &admin).expect("next page");
        assert_eq!(page.jobs[0].0.id, jobs.queued);
        assert_eq!(page.next_after, None);
        let on_n1 = JobListQuery {
            node_id: Some("n1".into()),
            kind: Some("a".into()),
            ..JobListQuery::default()
        };
        assert_eq!(store::list_jobs(db, &on_n1, &admin).expect("n1").total, 2);

        assert_eq!(
            store::queue_position(db, jobs.queued).expect("pos"),
            Some(0)
        );
        assert_eq!(
            store::queue_position(db, jobs.confidential).expect("pos"),
            Some(1)
        );
        assert_eq!(store::queue_position(db, jobs.leased).expect("pos"), None);
        let (state, holder, token) = store::lease_holder(db, jobs.leased)
            .expect("holder")
            .expect("found");
        assert_eq!(
            (state, holder.as_deref(), token),
            (JobState::Leased, Some("n2"), 1)
        );
        assert_eq!(
            store::job_owner(db, jobs.leased).expect("owner"),
            Some(Some("local".into()))
        );
        assert_eq!(store::job_owner(db, 9999).expect("none"), None);
    });
}

/// The health check at open: PostgreSQL's read-only sessions are refused
/// with what to point at instead; SQLite files have their own check.
#[test]
fn a_read_only_postgres_session_is_refused_at_open() {
    each_backend(|test| {
        let conn = test.connect();
        let Conn::Postgres(mut pg) = conn else {
            let refused = store::health::check_postgres(conn.db());
            assert!(matches!(refused, Err(StoreError::Invalid(m)) if m.contains("open_checked")));
            return;
        };
        let health = store::health::check_postgres(&*pg).expect("a writable primary");
        assert!(health.server_version.starts_with("15"), "{health:?}");
        pg.batch_execute("SET default_transaction_read_only = on")
            .expect("read-only");
        let refused = store::health::check_postgres(&*pg);
        assert!(
            matches!(&refused, Err(StoreError::Invalid(m)) if m.contains("read-only") && m.contains("primary")),
            "{refused:?}"
        );
    });
}
