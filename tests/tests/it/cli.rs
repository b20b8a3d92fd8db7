//! `kobo-coord jobs` as a new user meets it: a page says how many jobs
//! there are and how to see the rest, `--after` pages through them all
//! (the same cursor as `GET /v1/jobs?after=` and MCP's `list_jobs`), and
//! every flag explains itself in `--help`.

use kobo_protocol::{JobId, JobListQuery, JobState};
use kobo_tests::cluster::{Cluster, job};

async fn kobo_coord(cluster: &Cluster, args: &[&str]) -> String {
    let output = cluster.kobo_coord(args).await;
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{args:?}: {text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    text
}

/// The ids of a `jobs` table, top to bottom.
fn ids_of(table: &str) -> Vec<JobId> {
    table
        .lines()
        .filter_map(|l| l.trim_start_matches('│').split('┆').next())
        .filter_map(|cell| cell.trim().parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_pages_say_how_many_there_are_and_after_pages_through_them() {
    // No agent: the jobs stay queued, which is all a listing needs.
    let cluster = Cluster::builder().start().await;
    let answer = cluster
        .client()
        .submit_batch(
            (0..7)
                .map(|i| job("general_query", &format!("job {i}")))
                .collect(),
        )
        .await
        .expect("submit");
    let mut ids: Vec<JobId> = answer.jobs.iter().map(|j| j.id).collect();
    ids.reverse(); // newest first, as listed

    let mut seen = Vec::new();
    let mut args = vec!["jobs".to_string(), "--limit".into(), "3".into()];
    let mut footers = Vec::new();
    loop {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let text = kobo_coord(&cluster, &argv).await;
        let footer = text.lines().last().expect("a footer").to_string();
        let page = ids_of(&text);
        seen.extend(page.iter().copied());
        footers.push(footer.clone());
        let Some(next) = footer
            .split("--after ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
        else {
            break;
        };
        assert_eq!(next, page.last().expect("a page").to_string(), "{text}");
        args = vec![
            "jobs".into(),
            "--limit".into(),
            "3".into(),
            "--after".into(),
            next.into(),
        ];
    }
    assert_eq!(seen, ids, "every job once, newest first");
    assert_eq!(
        footers,
        [
            format!("3 of 7 (use --limit / --after {} for more)", ids[2]),
            format!("3 of 7 (use --limit / --after {} for more)", ids[5]),
            "1 of 7".to_string(),
        ]
    );

    // The API: the same cursor, the total of the filter on every page.
    let page = cluster
        .client()
        .jobs(&JobListQuery {
            state: Some(JobState::Queued),
            limit: Some(4),
            after: Some(ids[0]),
            ..JobListQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(
        page.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        ids[1..5]
    );
    assert_eq!((page.total, page.next_after), (7, Some(ids[4])));
    let none = cluster
        .client()
        .jobs(&JobListQuery {
            state: Some(JobState::Succeeded),
            ..JobListQuery::default()
        })
        .await
        .expect("list");
    assert_eq!((none.jobs.len(), none.total, none.next_after), (0, 0, None));
    let json = kobo_coord(&cluster, &["jobs", "--limit", "2", "--json"]).await;
    let json: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(json["total"], 7);
    assert_eq!(json["next_after"], ids[1]);

    // Every flag of `jobs` explains itself.
    let help = kobo_coord(&cluster, &["jobs", "--help"]).await;
    for flag in ["--state", "--kind", "--node", "--limit", "--after"] {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(flag))
            .unwrap_or_else(|| panic!("{flag} missing:\n{help}"));
        let text = line.trim_start().trim_start_matches(flag);
        assert!(
            text.split_whitespace().count() >= 3,
            "{flag} has no help text: {line:?}"
        );
    }
}
