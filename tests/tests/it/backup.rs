//! `kobo-coord backup` and `restore`: a backup taken while a client submits
//! and an agent runs jobs restores into a data directory a fresh coordinator
//! serves from — every job acknowledged before it, the audit chain, the
//! sealed confidential data, agents joining; restore refuses a live data
//! directory, an occupied one and a damaged backup; a second `serve` on one
//! data directory is refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kobo_protocol::backup::BackupManifest;
use kobo_protocol::{JobId, JobState, Requirements, SubmitJob};
use kobo_tests::cluster::{AgentSpec, Cluster, PATIENCE, binary, free_port, job};
use kobo_tests::fake_llm::reply_text;

/// Runs `kobo-coord ARGS` to its end.
pub(crate) async fn kobo_coord(args: &[&str]) -> Output {
    tokio::process::Command::new(binary("kobo-coord"))
        .args(args)
        .output()
        .await
        .expect("run kobo-coord")
}

pub(crate) fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

pub(crate) fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Jobs acknowledged by a submitter, with when each answer came.
pub(crate) type Acked = Arc<Mutex<Vec<(JobId, Instant)>>>;

/// A client submitting jobs one after another until `stop` (at most
/// `limit`), noting each acknowledged id.
pub(crate) fn keep_submitting(
    client: kobo_client::ApiClient,
    kind: &'static str,
    limit: usize,
) -> (Acked, Arc<AtomicBool>, tokio::task::JoinHandle<()>) {
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let (acked_in, stop_in) = (acked.clone(), stop.clone());
    let task = tokio::spawn(async move {
        for idx in 0..limit {
            if stop_in.load(Ordering::Relaxed) {
                break;
            }
            // A refused or failed submit is not acknowledged: not noted.
            if let Ok(created) = client.submit(&job(kind, &format!("load {idx}"))).await {
                acked_in
                    .lock()
                    .expect("ledger")
                    .push((created.id, Instant::now()));
            }
        }
    });
    (acked, stop, task)
}

pub(crate) fn acked_count(acked: &Acked) -> usize {
    acked.lock().expect("ledger").len()
}

/// Every job's state in the database file, by id.
fn job_states(conn: &rusqlite::Connection) -> HashMap<JobId, String> {
    let mut statement = conn.prepare("SELECT id, state FROM jobs").expect("prepare");
    statement
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

fn confidential(prompt: &str) -> SubmitJob {
    SubmitJob {
        requirements: Requirements {
            confidential: true,
            ..Requirements::default()
        },
        ..job("data_analysis", prompt)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_into_a_coordinator_that_serves_every_acknowledged_job()
{
    let mut cluster = Cluster::builder().start().await;
    cluster
        .agent(AgentSpec::new(
            "tokyo-01",
            &["general_query", "data_analysis", "confidential_processing"],
        ))
        .await;
    let secret = "the restored recipe: three parts koji".to_string();
    let sealed = cluster.submit(&confidential(&secret)).await;
    assert_eq!(cluster.wait_done(sealed).await.state, JobState::Succeeded);
    let expected = reply_text(&secret, cluster.fake.behavior().response_tokens);

    let (acked, stop, submitter) = keep_submitting(cluster.client().clone(), "general_query", 5000);
    cluster
        .wait_until("30 jobs acknowledged", || async {
            acked_count(&acked) >= 30
        })
        .await;
    cluster
        .wait_until("some jobs run", || async {
            cluster
                .db()
                .query_row(
                    "SELECT count(*) FROM jobs WHERE state = 'succeeded'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .unwrap_or(0)
                >= 10
        })
        .await;

    // What was acknowledged before the backup started, and the states then.
    let before: Vec<JobId> = acked.lock().expect("ledger").iter().map(|a| a.0).collect();
    let states_before = job_states(&cluster.db());
    let work = tempfile::tempdir().expect("dir");
    let dest = work.path().join("backup-1");
    let started = Instant::now();
    let made = cluster.kobo_coord(&["backup", path_str(&dest)]).await;
    let took = started.elapsed();
    assert!(made.status.success(), "backup failed: {}", text(&made));
    let during = acked
        .lock()
        .expect("ledger")
        .iter()
        .filter(|a| a.1 > started && a.1 < started + took)
        .count();
    let summary = String::from_utf8_lossy(&made.stdout).to_string();
    assert!(
        summary.starts_with(&format!("backup {}: ", dest.display()))
            && summary.contains("jobs, schema ")
            && summary.contains("integrity ok"),
        "{summary}"
    );
    eprintln!(
        "{}; {during} jobs acknowledged while it ran",
        summary.trim()
    );
    // The load goes on after the backup: the coordinator never paused.
    let after_backup = acked_count(&acked);
    cluster
        .wait_until("20 more jobs acknowledged", || async {
            acked_count(&acked) >= after_backup + 20
        })
        .await;
    stop.store(true, Ordering::Relaxed);
    submitter.await.expect("submitter");

    // The backup: 0700, every file 0600, the manifest names each file.
    assert_eq!(mode(&dest), 0o700);
    let manifest: BackupManifest =
        serde_json::from_slice(&std::fs::read(dest.join("manifest.json")).expect("manifest"))
            .expect("manifest json");
    let names: Vec<&str> = manifest.files.iter().map(|f| f.name.as_str()).collect();
    for name in [
        "kobo.db",
        "ca.pem",
        "ca.key",
        "server.pem",
        "server.key",
        "hmac.key",
        "data.key",
        "admin.key",
    ] {
        assert!(names.contains(&name), "{name} is not in {names:?}");
    }
    for entry in std::fs::read_dir(&dest).expect("backup dir") {
        let path = entry.expect("entry").path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    assert!(
        manifest.jobs as usize > before.len(),
        "{} jobs in the backup, {} acknowledged before it (and the sealed one)",
        manifest.jobs,
        before.len()
    );

    let restored_dir = work.path().join("restored");
    let restore = kobo_coord(&[
        "restore",
        path_str(&dest),
        "--data-dir",
        path_str(&restored_dir),
    ])
    .await;
    assert!(
        restore.status.success(),
        "restore failed: {}",
        text(&restore)
    );
    assert_eq!(mode(&restored_dir), 0o700);
    for name in [
        "kobo.db",
        "ca.key",
        "server.key",
        "hmac.key",
        "data.key",
        "admin.key",
    ] {
        assert_eq!(mode(&restored_dir.join(name)), 0o600, "{name}");
    }

    // A fresh coordinator serves from the restored directory.
    drop(cluster);
    let mut restored = Cluster::builder().data_dir(&restored_dir).start().await;
    assert_eq!(restored.integrity_check(), "ok");
    let states = job_states(&restored.db());
    for id in &before {
        let state = states
            .get(id)
            .unwrap_or_else(|| panic!("job {id}, acknowledged before the backup, is missing"));
        let then = &states_before[id];
        if ["succeeded", "dead", "cancelled"].contains(&then.as_str()) {
            assert_eq!(state, then, "job {id} had ended {then} before the backup");
        }
    }
    let verified = restored
        .client()
        .audit_verify()
        .await
        .expect("audit verify");
    assert!(
        verified.ok && verified.rows > 0,
        "the audit chain breaks after restore: {verified:?}"
    );
    let detail = restored.client().job(sealed).await.expect("sealed job");
    assert!(!detail.job.redacted);
    assert_eq!(detail.request.prompt.as_deref(), Some(secret.as_str()));
    assert_eq!(
        detail.job.output.expect("output").text,
        expected,
        "the sealed result reads back: data.key came with the backup"
    );
    restored
        .agent(AgentSpec::new("osaka-01", &["general_query"]))
        .await;
    let fresh = restored
        .submit_prompt("general_query", "after restore")
        .await;
    assert_eq!(restored.wait_done(fresh).await.state, JobState::Succeeded);
    eprintln!(
        "restored: {} jobs acknowledged before the backup all present; backup took {took:?}",
        before.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_a_live_data_directory_an_occupied_one_and_a_damaged_backup() {
    let cluster = Cluster::builder().start().await;
    cluster.submit_prompt("general_query", "one").await;
    let work = tempfile::tempdir().expect("dir");
    let dest = work.path().join("b");
    let made = cluster.kobo_coord(&["backup", path_str(&dest)]).await;
    assert!(made.status.success(), "{}", text(&made));
    let again = cluster.kobo_coord(&["backup", path_str(&dest)]).await;
    assert!(!again.status.success(), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists and is not empty"),
        "{}",
        text(&again)
    );

    // Onto the live data directory.
    let pid = cluster
        .coordinator
        .as_ref()
        .and_then(|c| c.id())
        .expect("pid");
    let live = kobo_coord(&[
        "restore",
        path_str(&dest),
        "--data-dir",
        path_str(&cluster.data_dir),
        "--force",
    ])
    .await;
    assert!(!live.status.success(), "{}", text(&live));
    let stderr = String::from_utf8_lossy(&live.stderr);
    assert!(
        stderr.contains("refusing to restore into a data directory a coordinator is using")
            && stderr.contains(&format!("in use by kobo-coord serve (pid {pid})")),
        "{}",
        text(&live)
    );
    assert!(cluster.client().nodes().await.is_ok(), "still serving");

    // Onto an existing database: only with --force, the old one kept aside.
    let target = work.path().join("target");
    let first = kobo_coord(&["restore", path_str(&dest), "--data-dir", path_str(&target)]).await;
    assert!(first.status.success(), "{}", text(&first));
    let second = kobo_coord(&["restore", path_str(&dest), "--data-dir", path_str(&target)]).await;
    assert!(!second.status.success(), "{}", text(&second));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("already holds kobo.db")
            && String::from_utf8_lossy(&second.stderr).contains("--force"),
        "{}",
        text(&second)
    );
    let forced = kobo_coord(&[
        "restore",
        path_str(&dest),
        "--data-dir",
        path_str(&target),
        "--force",
    ])
    .await;
    assert!(forced.status.success(), "{}", text(&forced));
    let aside: Vec<PathBuf> = std::fs::read_dir(&target)
        .expect("target")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().contains("kobo.db.replaced-"))
        .collect();
    assert_eq!(aside.len(), 1, "the replaced database is kept: {aside:?}");

    // A damaged backup: one byte of the database flipped.
    let damaged = work.path().join("damaged");
    std::fs::create_dir(&damaged).expect("dir");
    for entry in std::fs::read_dir(&dest).expect("backup") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, damaged.join(path.file_name().expect("name"))).expect("copy");
    }
    let db = damaged.join("kobo.db");
    let mut bytes = std::fs::read(&db).expect("db");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&db, &bytes).expect("flip");
    let elsewhere = work.path().join("elsewhere");
    let refused = kobo_coord(&[
        "restore",
        path_str(&damaged),
        "--data-dir",
        path_str(&elsewhere),
    ])
    .await;
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("is damaged: kobo.db has"),
        "{}",
        text(&refused)
    );
    assert!(
        !elsewhere.join("kobo.db").exists(),
        "nothing is restored from a damaged backup"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_the_same_data_directory_is_refused_naming_the_first() {
    let cluster = Cluster::builder().start().await;
    let pid = cluster
        .coordinator
        .as_ref()
        .and_then(|c| c.id())
        .expect("pid");
    let client_file = std::fs::read_to_string(cluster.data_dir.join("client.json")).expect("json");
    // On the same port (the usual mistake: the same command twice) and on
    // another one.
    let mut same_port = cluster.serve_command();
    let mut other_port = tokio::process::Command::new(binary("kobo-coord"));
    other_port
        .arg("serve")
        .arg("--data-dir")
        .arg(&cluster.data_dir)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())]);
    for command in [&mut same_port, &mut other_port] {
        let second = tokio::time::timeout(PATIENCE, command.kill_on_drop(true).output())
            .await
            .expect("the second serve exits by itself")
            .expect("run kobo-coord");
        assert!(!second.status.success(), "{}", text(&second));
        let stderr = String::from_utf8_lossy(&second.stderr);
        assert!(
            stderr.contains("refusing to serve: one coordinator per data directory")
                && stderr.contains(&format!(
                    "data directory {} is in use by kobo-coord serve (pid {pid})",
                    cluster.data_dir.display()
                )),
            "{}",
            text(&second)
        );
    }
    // The first is untouched: it serves, and clients still find it.
    assert!(cluster.client().nodes().await.is_ok());
    assert_eq!(
        std::fs::read_to_string(cluster.data_dir.join("client.json")).expect("json"),
        client_file
    );
}
