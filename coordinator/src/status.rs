//! `kobo-coord status`: the cluster on one terminal screen — nodes with
//! load, CPU, memory and recent work; the queue; throughput; the newest
//! jobs. Reads `GET /v1/status` (role `read`).

use clap::Args;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use kobo_protocol::{ClusterStatus, JobState, NodeStatus};

use crate::cli::ClientArgs;

/// Newest jobs the screen lists.
const JOBS_SHOWN: usize = 6;
/// Characters of a job's reason or error the screen shows.
const REASON_CHARS: usize = 48;

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let client = args.client.client()?;
    let status = client.status().await?;
    if args.client.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    print!("{}", render(&status, &client.base_url()));
    Ok(())
}

/// `1.2s`, `3m 05s`, `2h 10m`, `4d 3h`.
pub fn age(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 60_000 {
        return format!("{:.1}s", ms as f64 / 1000.0);
    }
    match ms / 1000 {
        s if s < 3600 => format!("{}m {:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn ms(value: Option<f64>) -> String {
    match value {
        Some(v) if v >= 10_000.0 => format!("{:.1} s", v / 1000.0),
        Some(v) => format!("{v:.0} ms"),
        None => "-".into(),
    }
}

fn clip(text: &str, n: usize) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    if line.chars().count() > n {
        format!("{}…", line.chars().take(n).collect::<String>())
    } else {
        line.to_string()
    }
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    table
}

/// The whole screen as text.
pub fn render(status: &ClusterStatus, url: &str) -> String {
    let now = status.server_time;
    let count = |s: NodeStatus| status.nodes.iter().filter(|c| c.node.status == s).count();
    let busy: u32 = status.nodes.iter().map(|c| c.node.running).sum();
    let workers: u32 = status
        .nodes
        .iter()
        .filter(|c| c.node.status == NodeStatus::Active)
        .map(|c| c.node.max_workers)
        .sum();
    let t = &status.totals;
    let r = &status.recent;
    let oldest_queued = status
        .queue
        .iter()
        .filter(|q| q.state == JobState::Queued)
        .filter_map(|q| q.oldest_at)
        .min()
        .map(|at| format!(" (oldest {})", age(now - at)))
        .unwrap_or_default();
    let mut out = String::new();
    out.push_str(&format!(
        "kobo  {url}  kobo-coord {}  up {}\n",
        status.version,
        age(now - status.started_at)
    ));
    out.push_str(&format!(
        "nodes   {} active · {} lost · {} draining · {} drained    workers {busy}/{workers} busy\n",
        count(NodeStatus::Active),
        count(NodeStatus::Lost),
        count(NodeStatus::Draining),
        count(NodeStatus::Drained),
    ));
    out.push_str(&format!(
        "jobs    {} submitted · {} succeeded · {} dead · {} cancelled\n",
        t.submitted, t.succeeded, t.dead, t.cancelled
    ));
    out.push_str(&format!(
        "queue   {} queued{oldest_queued} · {} scheduled · {} running\n",
        t.queued, t.scheduled, t.leased
    ));
    let finished = r.succeeded + r.dead;
    let success = if finished > 0 {
        format!("{:.1}% ok", 100.0 * r.succeeded as f64 / finished as f64)
    } else {
        "-".into()
    };
    out.push_str(&format!(
        "last {}   {} succeeded · {} dead ({success}) · {} failed attempts · run {} · pickup {}\n",
        if r.window_ms == 3_600_000 {
            "hour".to_string()
        } else {
            age(r.window_ms as i64)
        },
        r.succeeded,
        r.dead,
        r.failed_attempts,
        ms(r.mean_run_ms),
        ms(r.mean_pickup_ms)
    ));
    if status.nodes.is_empty() {
        out.push_str("\nno node has registered yet\n");
    } else {
        let mut nodes = table(&[
            "node",
            "where",
            "status",
            "load",
            "cpu",
            "mem",
            "rtt",
            "1h ok/fail",
            "mean",
            "tok/s",
            "seen",
        ]);
        for card in &status.nodes {
            let n = &card.node;
            let (cpu, mem) = match &n.metrics {
                Some(m) => (
                    format!("{:.0}%", m.cpu_percent),
                    format!(
                        "{:.0}%",
                        100.0 * m.mem_used_bytes as f64 / m.mem_total_bytes.max(1) as f64
                    ),
                ),
                None => ("-".into(), "-".into()),
            };
            let place = card
                .place
                .as_ref()
                .map(|p| format!("{} ({})", n.region, p.city))
                .unwrap_or_else(|| n.region.clone());
            nodes.add_row(vec![
                n.node_id.clone(),
                place,
                n.status.as_str().to_string(),
                format!("{}/{}", n.running, n.max_workers),
                cpu,
                mem,
                n.rtt_ms.map(|r| format!("{r} ms")).unwrap_or("-".into()),
                format!("{}/{}", card.recent.succeeded, card.recent.failed),
                ms(card.recent.mean_response_ms),
                card.recent
                    .tokens_per_s
                    .map(|t| format!("{t:.0}"))
                    .unwrap_or("-".into()),
                format!("{} ago", age(now - n.last_heartbeat_at)),
            ]);
        }
        out.push_str(&format!("\n{nodes}\n"));
    }
    if !status.latest_jobs.is_empty() {
        let mut jobs = table(&["job", "state", "kind", "node", "age", "reason / error"]);
        for job in status.latest_jobs.iter().take(JOBS_SHOWN) {
            let reason = match job.state {
                JobState::Dead => job.last_error.as_deref(),
                JobState::Queued => job.queue_reason.as_deref(),
                _ => None,
            }
            .map(str::to_string)
            .or_else(|| job.route_reason.as_ref().map(|r| r.summary()))
            .or_else(|| (job.state == JobState::Queued).then(|| "waiting for a worker".to_string()))
            .map(|r| clip(&r, REASON_CHARS))
            .unwrap_or_default();
            jobs.add_row(vec![
                job.id.to_string(),
                job.state.to_string(),
                job.kind.clone(),
                job.node_id.clone().unwrap_or_else(|| "-".into()),
                age(now - job.created_at),
                reason,
            ]);
        }
        out.push_str(&format!("\n{jobs}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::age;

    #[test]
    fn ages_read_well() {
        assert_eq!(age(1_234), "1.2s");
        assert_eq!(age(65_000), "1m 05s");
        assert_eq!(age(2 * 3_600_000 + 600_000), "2h 10m");
        assert_eq!(age(4 * 86_400_000 + 3 * 3_600_000), "4d 3h");
        assert_eq!(age(-5), "0.0s");
    }
}
