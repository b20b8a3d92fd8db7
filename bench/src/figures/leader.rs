//! Leader failover (with `--database` only): two `kobo-coord serve
//! --database` on one PostgreSQL database, sharing one CA and one set of
//! keys; the leader is SIGKILLed; the time until the standby answers
//! `GET /readyz` as leader, and until a submit to it is acknowledged.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kobo_client::{ApiClient, Endpoint};
use kobo_protocol::{DataDir, Readiness};

use super::{Env, noop};
use crate::coordinator::{Coordinator, Timings};
use crate::report::{Bound, FigureResult, Metric};

/// How often the standby is probed after the kill.
const POLL: Duration = Duration::from_millis(10);
/// Longest one probe (`/readyz` or a submit) may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest the standby may take to lead before the figure gives up.
const PATIENCE: Duration = Duration::from_secs(60);
/// The bound the failover tests hold a takeover to.
const TARGET_S: f64 = 10.0;
const KIND: &str = "leader";

/// Files of a data directory the second coordinator must share with the
/// first: the CA, the server certificate, the API-key and sealing secrets,
/// the admin key (as tests/tests/it/coordinators.rs copies them).
fn shared_files(dir: &DataDir) -> [std::path::PathBuf; 8] {
    [
        dir.ca_cert(),
        dir.ca_key(),
        dir.server_cert(),
        dir.server_key(),
        dir.server_names(),
        dir.hmac_key(),
        dir.data_key(),
        dir.admin_key(),
    ]
}

pub(crate) async fn run(env: &Env) -> anyhow::Result<FigureResult> {
    let mut runs = Vec::new();
    for rep in 0..env.repeats {
        let database = env
            .database("leader")
            .await?
            .context("the leader figure needs --database")?;
        let timings = Timings {
            database: Some(database.url.clone()),
            ..Timings::default()
        };
        let a_dir = env.dir(&format!("leader-{rep}-a"));
        let b_dir = env.dir(&format!("leader-{rep}-b"));
        let mut a = Coordinator::start(&a_dir, timings.clone()).await?;
        std::fs::create_dir_all(&b_dir)?;
        let (from, to) = (DataDir::new(&a_dir), DataDir::new(&b_dir));
        for (from, to) in shared_files(&from).iter().zip(shared_files(&to)) {
            if from.exists() {
                std::fs::copy(from, &to)
                    .with_context(|| format!("copying {} to the standby", from.display()))?;
            }
        }
        let mut b = Coordinator::start(&b_dir, timings).await?;
        let settling = Instant::now();
        while role(&a).await.as_deref() != Some("leader")
            || role(&b).await.as_deref() != Some("standby")
        {
            if settling.elapsed() > PATIENCE {
                bail!("the first coordinator does not lead, or the second is no standby");
            }
            tokio::time::sleep(POLL).await;
        }
        // The standby alone: a submit acknowledged by it means it leads.
        // A client of its own per try, so that no try follows the dead
        // leader a standby's answer named before.
        let client = || {
            ApiClient::new(&Endpoint {
                url: b.url.clone(),
                ca_pem: Some(b.ca_pem.clone()),
                api_key: DataDir::new(&b_dir).local_admin_key(),
            })
        };
        client()?
            .submit(&noop(KIND))
            .await
            .context("a submit before the kill")?;

        a.kill().await?;
        let killed = Instant::now();
        let led = async {
            while role(&b).await.as_deref() != Some("leader") {
                if killed.elapsed() > PATIENCE {
                    bail!("the standby did not lead within {PATIENCE:?} of the kill");
                }
                tokio::time::sleep(POLL).await;
            }
            anyhow::Ok(killed.elapsed())
        };
        let acknowledged = async {
            loop {
                if let Ok(Ok(_)) =
                    tokio::time::timeout(PROBE_TIMEOUT, client()?.submit(&noop(KIND))).await
                {
                    return anyhow::Ok(killed.elapsed());
                }
                if killed.elapsed() > PATIENCE {
                    bail!("no submit acknowledged within {PATIENCE:?} of the kill");
                }
                tokio::time::sleep(POLL).await;
            }
        };
        let (led, acknowledged) = tokio::try_join!(led, acknowledged)?;
        b.stop().await?;
        database.drop().await?;
        runs.push(vec![
            Metric::new(
                "readyz_leader_s",
                "standby answers /readyz as leader, after the kill",
                "s",
                led.as_secs_f64(),
            )
            .target(Bound::AtMost(TARGET_S)),
            Metric::new(
                "submit_acknowledged_s",
                "first submit acknowledged again, after the kill",
                "s",
                acknowledged.as_secs_f64(),
            )
            .target(Bound::AtMost(TARGET_S)),
        ]);
    }
    Ok(FigureResult {
        id: "leader",
        title: "6b. Leader failover (PostgreSQL)",
        method: format!(
            "Two `kobo-coord serve --database` on one fresh PostgreSQL database, the second with a copy of the first's CA, server certificate and keys; the first (the leader) is SIGKILLed; from the kill, `GET /readyz` of the second is polled every {POLL:?} until it answers `role: leader`, and meanwhile `POST /v1/jobs` to the second alone is retried every {POLL:?} (each try at most {PROBE_TIMEOUT:?}) until one is acknowledged. Target: the {TARGET_S} s the failover tests hold a takeover to."
        ),
        runs,
    })
}

/// The role `GET /readyz` of `coordinator` answers, `None` while it does not.
async fn role(coordinator: &Coordinator) -> Option<String> {
    let http = kobo_client::http_client(Some(&coordinator.ca_pem)).ok()?;
    let answer = http
        .get(format!("{}/readyz", coordinator.url))
        .timeout(PROBE_TIMEOUT)
        .send()
        .await
        .ok()?;
    answer.json::<Readiness>().await.ok().map(|r| r.role)
}
