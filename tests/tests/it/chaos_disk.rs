//! Chaos on the disk under a real coordinator: bytes flipped in a b-tree
//! page of `kobo.db` (serve refuses to start, saying what `quick_check`
//! found and how to restore); a write-ahead log torn by a crash (it opens at
//! the last valid commit and says so); the data directory's filesystem full
//! (submits answered 507 saying so, nothing panics, nothing acknowledged is
//! lost, writes resume by themselves once space is freed).

use std::io::Write;
use std::time::{Duration, Instant};

use kobo_protocol::JobState;
use kobo_tests::cluster::{AgentSpec, Cluster, job};
use kobo_tests::ledger::{Expect, Ledger};

/// Longest `serve` may take to refuse a damaged database.
const REFUSE_WITHIN: Duration = Duration::from_secs(60);

/// One submit of `prompt` through the ledger, not retried.
async fn submit_once(
    cluster: &Cluster,
    ledger: &mut Ledger,
    prompt: &str,
) -> Result<kobo_protocol::JobId, kobo_client::ClientError> {
    let job = job("general_query", prompt);
    ledger
        .submit(cluster.client(), job, Expect::Succeeded, Duration::ZERO)
        .await
}

/// A cluster with one agent and `n` jobs run through it, in a ledger.
async fn cluster_with_jobs(
    builder: kobo_tests::cluster::ClusterBuilder,
    n: usize,
) -> (Cluster, Ledger) {
    let mut cluster = builder.start().await;
    cluster
        .agent(AgentSpec::new("tokyo-01", &["general_query"]))
        .await;
    let mut ledger = Ledger::new();
    for idx in 0..n {
        let prompt = format!("job {idx}: {}", "words ".repeat(40));
        submit_once(&cluster, &mut ledger, &prompt)
            .await
            .expect("submit");
    }
    for id in ledger.acknowledged_ids() {
        cluster.wait_done(id).await;
    }
    (cluster, ledger)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_btree_page_makes_serve_refuse_with_what_quick_check_found() {
    let (mut cluster, _) = cluster_with_jobs(Cluster::builder(), 150).await;
    cluster.kill_coordinator().await;
    for agent in &mut cluster.agents {
        let _ = agent.child.start_kill();
    }
    // Everything into the main file, then flip bits of the jobs table's
    // root page: its header's count of fragmented free bytes.
    let (root, page_size) = {
        let conn = rusqlite::Connection::open(cluster.db_path()).expect("open");
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .expect("checkpoint");
        let root: u64 = conn
            .query_row(
                "SELECT rootpage FROM sqlite_schema WHERE name = 'jobs'",
                [],
                |r| r.get(0),
            )
            .expect("root page");
        let page_size: u64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .expect("page size");
        (root, page_size)
    };
    let mut bytes = std::fs::read(cluster.db_path()).expect("read kobo.db");
    let at = ((root - 1) * page_size) as usize;
    bytes[at + 7] ^= 0x3f;
    std::fs::write(cluster.db_path(), &bytes).expect("write kobo.db");

    let started = Instant::now();
    let output = tokio::time::timeout(REFUSE_WITHIN, cluster.serve_command().output())
        .await
        .expect("serve exits instead of serving")
        .expect("run kobo-coord serve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "serve refused a damaged database: {}\n{stderr}",
        output.status
    );
    for needed in [
        "is damaged",
        "quick_check found",
        "To restore",
        ".backup",
        ".recover",
    ] {
        assert!(
            stderr.contains(needed),
            "the refusal says {needed:?}:\n{stderr}"
        );
    }
    assert!(
        stderr.contains(&format!("page {root}")),
        "the refusal names what quick_check found (page {root}):\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "no panic:\n{stderr}");
    let said = stderr
        .lines()
        .find(|l| l.contains("quick_check found"))
        .unwrap_or_default()
        .to_string();
    eprintln!(
        "corruption: serve refused in {:?}: {said}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_write_ahead_log_opens_at_the_last_valid_commit_and_says_so() {
    let (mut cluster, _) = cluster_with_jobs(Cluster::builder(), 20).await;
    cluster.kill_coordinator().await;
    let wal = cluster.data_dir.join("kobo.db-wal");
    let length = std::fs::metadata(&wal).expect("a WAL after SIGKILL").len();
    assert!(length > 4096, "the WAL holds commits ({length} bytes)");
    // A torn write: the last frame loses its end.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .expect("open WAL");
    file.set_len(length - 100).expect("truncate WAL");
    drop(file);
    let started = Instant::now();
    cluster.start_coordinator().await;
    let serving = started.elapsed();
    let log = std::fs::read_to_string(cluster.coordinator_log_path()).expect("log");
    let said = log
        .lines()
        .find(|l| l.contains("last valid commit"))
        .unwrap_or_else(|| panic!("the log states the last valid commit:\n{log}"))
        .to_string();
    assert!(said.contains("dropped_bytes"), "{said}");
    assert_eq!(cluster.integrity_check(), "ok", "PRAGMA integrity_check");
    // And it works: a new job runs through.
    let id = cluster
        .submit_prompt("general_query", "after the torn log")
        .await;
    assert_eq!(cluster.wait_done(id).await.state, JobState::Succeeded);
    eprintln!("torn WAL: serving {serving:?} after start; {said}");
}

/// Fills the filesystem of `dir` with a file; returns its path.
fn fill_disk(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0u8; 64 << 10];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gets_507s_loses_nothing_and_writes_resume_when_freed() {
    let (mut cluster, mut ledger) = cluster_with_jobs(Cluster::builder().tmpfs_mib(24), 10).await;
    let filler = fill_disk(&cluster.data_dir);
    // Submits until the full disk refuses one (free pages may take a few).
    let mut refusal = None;
    for idx in 0..500 {
        let prompt = format!("on a full disk {idx}: {}", "words ".repeat(200));
        match submit_once(&cluster, &mut ledger, &prompt).await {
            Ok(_) => {}
            Err(err) => {
                refusal = Some(err);
                break;
            }
        }
    }
    let refusal = refusal.expect("a submit was refused on the full disk");
    let status = refusal.status();
    assert!(
        matches!(status, Some(507) | Some(503)),
        "a full disk answers 507 or 503, not {status:?}: {refusal}"
    );
    assert!(
        refusal.to_string().contains("disk is full"),
        "the answer says the disk is full: {refusal}"
    );
    let running = cluster.coordinator.as_mut().map(|c| c.try_wait());
    assert!(
        matches!(running, Some(Ok(None))),
        "the coordinator is still running: {running:?}\n{}",
        cluster.logs()
    );
    let refused_at = Instant::now();

    // Space freed: writes resume by themselves.
    std::fs::remove_file(&filler).expect("free the disk");
    let freed = Instant::now();
    let resumed = loop {
        match submit_once(&cluster, &mut ledger, "after the disk was freed").await {
            Ok(_) => break freed.elapsed(),
            Err(err) => assert!(
                freed.elapsed() < kobo_tests::cluster::PATIENCE,
                "writes did not resume after the disk was freed: {err}\n{}",
                cluster.logs()
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for id in ledger.acknowledged_ids() {
        cluster.wait_done(id).await;
    }
    let verdict = ledger.check(&cluster.db_path());
    verdict.assert_ok(&cluster.logs());
    assert_eq!(cluster.integrity_check(), "ok", "PRAGMA integrity_check");
    let logs = cluster.all_log_text();
    assert!(
        !logs.contains("panicked"),
        "nothing panicked:\n{}",
        cluster.logs()
    );
    eprintln!(
        "disk full: refused with {status:?} \"{refusal}\" after {} acknowledged; resumed {:?} after the space was freed \
         ({:?} after the refusal); {} jobs acknowledged, states {:?}",
        verdict.acknowledged - 1,
        resumed,
        refused_at.elapsed(),
        verdict.acknowledged,
        verdict.by_state
    );
}
