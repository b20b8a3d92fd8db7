//! The readable views on every backend: the same names, columns, types and
//! values on PostgreSQL (sql/postgres/0003_observe.sql) as on SQLite
//! (sql/migrations), over the fixture's history; and every saved query of
//! `sql/queries/postgres/` run with psql against a migrated PostgreSQL
//! database (the SQLite ones run with sqlite3 in tests/it/sqlite_reporting.rs).

use std::path::Path;
use std::sync::Mutex;

use kobo_queue::store::sql::{Db, Dialect, args};

use crate::backends::{Conn, TestDb, each_backend};
use crate::fixture;

/// What a column holds: `I` integer, `R` real, `T` text; `R_NOW`, a real
/// computed from the time of the query (its type is checked, not its value).
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    I,
    R,
    T,
    RNow,
}
use Kind::{I, R, RNow, T};

/// A view's columns in order, each with what it holds.
type Columns = &'static [(&'static str, Kind)];

/// Each view, its columns, and the order its rows are compared in.
const VIEWS: &[(&str, Columns, &str)] = &[
    (
        "v_jobs",
        &[
            ("id", I),
            ("state", T),
            ("kind", T),
            ("model", T),
            ("priority", I),
            ("attempts", T),
            ("node_id", T),
            ("region", T),
            ("submitted_by", T),
            ("created", T),
            ("started", T),
            ("finished", T),
            ("wait_ms", I),
            ("run_ms", I),
            ("total_ms", I),
            ("llm_ms", I),
            ("completion_tokens", I),
            ("last_error", T),
            ("queue_reason", T),
            ("route_reason", T),
            ("result_head", T),
        ],
        "id",
    ),
    (
        "v_job_events",
        &[
            ("job_id", I),
            ("at", T),
            ("from_state", T),
            ("to_state", T),
            ("node_id", T),
            ("attempt", I),
            ("detail", T),
        ],
        "job_id, at, to_state",
    ),
    (
        "v_node_stats",
        &[
            ("node_id", T),
            ("region", T),
            ("status", T),
            ("max_workers", I),
            ("running", I),
            ("jobs_done", I),
            ("jobs_succeeded", I),
            ("jobs_failed", I),
            ("success_pct", R),
            ("mean_response_ms", R),
            ("p50_response_ms", I),
            ("p95_response_ms", I),
            ("mean_llm_ms", R),
            ("tokens_per_s", R),
            ("rtt_ms", I),
            ("last_seen", T),
            ("seen_s_ago", RNow),
            ("cpu_pct", R),
            ("mem_pct", R),
            ("load_1", R),
        ],
        "node_id",
    ),
    (
        "v_node_metrics_minute",
        &[
            ("node_id", T),
            ("minute", T),
            ("samples", I),
            ("cpu_pct", R),
            ("cpu_pct_max", R),
            ("mem_pct", R),
            ("load_1", R),
            ("running", R),
            ("running_max", I),
        ],
        "node_id, minute",
    ),
    (
        "v_queue",
        &[
            ("state", T),
            ("kind", T),
            ("priority", I),
            ("jobs", I),
            ("oldest_since", T),
            ("oldest_age_s", RNow),
            ("next_run", T),
        ],
        "state, kind, priority",
    ),
    (
        "v_schedules",
        &[
            ("name", T),
            ("cron", T),
            ("catch_up", T),
            ("paused", I),
            ("next_fire", T),
            ("last_fired", T),
            ("last_job_id", I),
            ("created_by", T),
        ],
        "name",
    ),
];

/// One value of a view's row.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    /// A value that depends on the clock: present or not.
    Now(bool),
}

fn columns(db: &dyn Db, view: &str) -> Vec<String> {
    let sql = db.pick(
        "SELECT name FROM pragma_table_info(?1) ORDER BY cid",
        "SELECT CAST(column_name AS TEXT) FROM information_schema.columns WHERE table_name = ?1 ORDER BY ordinal_position",
    );
    db.many(sql, args![view], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{view} columns: {e}"))
}

/// Every row of `view`, each column read as its [`Kind`] (a column of
/// another type fails the read: `numeric` where a real is due, say).
fn rows(db: &dyn Db, view: &str, kinds: &[(&str, Kind)], order: &str) -> Vec<Vec<Cell>> {
    let list: Vec<&str> = kinds.iter().map(|(name, _)| *name).collect();
    let sql = format!("SELECT {} FROM {view} ORDER BY {order}", list.join(", "));
    db.many(&sql, args![], |r| {
        kinds
            .iter()
            .enumerate()
            .map(|(idx, (_, kind))| {
                Ok(match kind {
                    I => r.get::<Option<i64>>(idx)?.map_or(Cell::Null, Cell::Int),
                    R => r.get::<Option<f64>>(idx)?.map_or(Cell::Null, Cell::Real),
                    T => r.get::<Option<String>>(idx)?.map_or(Cell::Null, Cell::Text),
                    RNow => Cell::Now(r.get::<Option<f64>>(idx)?.is_some()),
                })
            })
            .collect()
    })
    .unwrap_or_else(|e| panic!("{view}: {e}\n{sql}"))
}

fn text(s: &str) -> Cell {
    Cell::Text(s.into())
}

#[test]
fn views_have_the_same_columns_and_rows_on_every_backend() {
    let first: Mutex<Option<Vec<Vec<Vec<Cell>>>>> = Mutex::new(None);
    each_backend(|test| {
        let mut conn = test.connect();
        let jobs = fixture::fill(&mut conn);
        let db = conn.db();
        let mut all = Vec::new();
        for (view, kinds, order) in VIEWS {
            let expected: Vec<&str> = kinds.iter().map(|(name, _)| *name).collect();
            assert_eq!(
                columns(db, view),
                expected,
                "{view} on {:?}",
                test.dialect()
            );
            all.push(rows(db, view, kinds, order));
        }
        let [v_jobs, _, v_node_stats, v_minutes, v_queue, v_schedules] = &all[..] else {
            unreachable!("six views")
        };

        // v_jobs: the succeeded job's times and result, the confidential one withheld.
        let ok = &v_jobs[0];
        assert_eq!(ok[0], Cell::Int(jobs.succeeded));
        assert_eq!(
            ok[1..12],
            [
                text("succeeded"),
                text("a"),
                text("m"),
                Cell::Int(0),
                text("1/3"),
                text("n1"),
                text("eu-west-2"),
                text("local"),
                text("2027-01-15 08:00:00.000"),
                text("2027-01-15 08:00:01.000"),
                text("2027-01-15 08:00:02.500"),
            ]
        );
        // Waited 1000 ms, ran 1500, 2500 in all; the LLM took 1200 for 60 tokens.
        assert_eq!(ok[12..17], [1000, 1500, 2500, 1200, 60].map(Cell::Int));
        assert_eq!(ok[20], text("done"));
        let secret = v_jobs.iter().find(|r| r[0] == Cell::Int(jobs.confidential));
        assert_eq!(secret.map(|r| &r[20]), Some(&text("(confidential)")));
        let dead = v_jobs.iter().find(|r| r[0] == Cell::Int(jobs.dead));
        assert_eq!(
            dead.map(|r| (&r[1], &r[17])),
            Some((&text("dead"), &text("HTTP 500 from the model server")))
        );

        // v_node_stats: n1 did two jobs, one succeeded.
        let n1 = &v_node_stats[0];
        assert_eq!(n1[0], text("n1"));
        assert_eq!(
            n1[5..9],
            [Cell::Int(2), Cell::Int(1), Cell::Int(1), Cell::Real(50.0)]
        );
        assert_eq!(n1[9..11], [Cell::Real(1500.0), Cell::Int(1500)]);
        assert_eq!(n1[12..14], [Cell::Real(1200.0), Cell::Real(50.0)]);
        assert_eq!(n1[15], text("2027-01-15 08:02:01"));
        assert_eq!(n1[16], Cell::Now(true));
        assert_eq!(n1[17..19], [Cell::Real(70.0), Cell::Real(70.0)]);
        assert_eq!(v_node_stats[1][4], Cell::Int(1), "n2 runs one job");

        // v_node_metrics_minute: the two folded minutes.
        assert_eq!(
            v_minutes
                .iter()
                .map(|r| (r[1].clone(), r[2].clone(), r[3].clone(), r[5].clone()))
                .collect::<Vec<_>>(),
            vec![
                (
                    text("2027-01-15 08:00"),
                    Cell::Int(2),
                    Cell::Real(20.0),
                    Cell::Real(20.0)
                ),
                (
                    text("2027-01-15 08:01"),
                    Cell::Int(1),
                    Cell::Real(50.0),
                    Cell::Real(50.0)
                ),
            ]
        );

        // v_queue: leased a, queued b (two), scheduled a.
        let queue: Vec<_> = v_queue
            .iter()
            .map(|r| (r[0].clone(), r[1].clone(), r[3].clone()))
            .collect();
        assert_eq!(
            queue,
            vec![
                (text("leased"), text("a"), Cell::Int(1)),
                (text("queued"), text("b"), Cell::Int(2)),
                (text("scheduled"), text("a"), Cell::Int(1)),
            ]
        );
        assert_eq!(v_queue[2][6], text("2027-01-15 09:00:00"), "next run");
        assert_eq!(
            v_queue[1][4],
            text("2027-01-15 08:00:05"),
            "oldest queued since"
        );

        // v_schedules: the next 03:00 UTC after T0.
        assert_eq!(
            v_schedules[0],
            vec![
                text("nightly"),
                text("0 0 3 * * *"),
                text("once"),
                Cell::Int(0),
                text("2027-01-16 03:00:00"),
                Cell::Null,
                Cell::Null,
                text("admin"),
            ]
        );

        // The same rows, value for value, on every backend.
        let mut first = first.lock().unwrap_or_else(|p| p.into_inner());
        match &*first {
            None => *first = Some(all),
            Some(seen) => {
                for (((view, _, _), mine), theirs) in VIEWS.iter().zip(&all).zip(seen) {
                    assert_eq!(mine, theirs, "{view} differs on {:?}", test.dialect());
                }
            }
        }
    });
}

/// psql from PATH, else Debian's PostgreSQL 15 client.
fn psql() -> &'static str {
    let on_path = std::process::Command::new("psql")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if on_path {
        "psql"
    } else {
        "/usr/lib/postgresql/15/bin/psql"
    }
}

fn run_psql(url: &str, sql: &str) -> String {
    let out = std::process::Command::new(psql())
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-A",
            "-F",
            "|",
            "-c",
            sql,
            url,
        ])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql failed: {}\n{sql}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// PostgreSQL only: every saved query of `sql/queries/` has a PostgreSQL
/// spelling in `sql/queries/postgres/`, and each prints the fixture's rows.
#[test]
fn the_saved_postgres_queries_run_with_psql() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql/queries");
    let names = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "sql"))
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
            .collect();
        names.sort();
        names
    };
    let sqlite = names(&dir);
    let postgres = names(&dir.join("postgres"));
    assert_eq!(postgres, sqlite, "one PostgreSQL query per SQLite query");
    each_backend(|test| {
        let TestDb::Postgres { url, .. } = test else {
            return;
        };
        let mut conn = test.connect();
        let jobs = fixture::fill(&mut conn);
        assert!(
            matches!(conn, Conn::Postgres(_)),
            "a PostgreSQL test database"
        );
        assert_eq!(test.dialect(), Dialect::Postgres);
        let expect: &[(&str, &[&str])] = &[
            (
                "busiest_nodes_this_hour.sql",
                &["n1|eu-west-2|2|1|50.0|1500|50.0"],
            ),
            (
                "failures_by_error.sql",
                &["HTTP 500 from the model server|failed|1|1|n1|a|2027-01-15 08:00:03"],
            ),
            (
                "jobs_by_state.sql",
                &[
                    "queued|2|2027-01-15 08:00:05",
                    "succeeded|1|2027-01-15 08:00:00",
                ],
            ),
            (
                "jobs_per_region_per_day.sql",
                &["2027-01-15|eu-west-2|2|1|1|0"],
            ),
            (
                "latest_job_history.sql",
                &[&format!(
                    "{}|2027-01-15 08:00:06.000||queued",
                    jobs.confidential
                )],
            ),
            (
                "node_metrics_last_hour.sql",
                &[
                    "n1|2027-01-15 08:00|2|20|30|20|0|0",
                    "n1|2027-01-15 08:02:01 (latest)|1|70|70|70|0|0",
                ],
            ),
            (
                "node_performance.sql",
                &["n1|2|1|50.0|1200|50.0", "n2|1|0|0.0||"],
            ),
            ("pickup_latency.sql", &["a|3|100|400.0|1000"]),
            ("queue_now.sql", &["queued|b|0|2|2027-01-15 08:00:05"]),
            (
                "recent_failures.sql",
                &[&format!(
                    "{}|a|n1|1|failed|2027-01-15 08:00:03|HTTP 500",
                    jobs.dead
                )],
            ),
            ("slowest_kinds.sql", &["a|1|2500|2500|1000|1200"]),
            ("usage_by_key.sql", &["local||1|40|60|100|1.2"]),
        ];
        for (file, needles) in expect {
            let sql = std::fs::read_to_string(dir.join("postgres").join(file)).expect("read query");
            let out = run_psql(url, &sql);
            for needle in *needles {
                assert!(out.contains(needle), "{file} lacks {needle:?}:\n{out}");
            }
        }
        assert_eq!(expect.len(), postgres.len(), "every query is checked");
    });
}
