//! The node commands: `nodes`, `drain`, `resume`, `node revoke`.

use super::*;

#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The node's id, e.g. tokyo-01.
    pub node: String,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Revoke every certificate of a node and release its leases.
    Revoke {
        #[command(flatten)]
        client: ClientArgs,
        /// The node's id, e.g. tokyo-01.
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct NodesArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn drain(args: NodeArgs, drain: bool) -> anyhow::Result<()> {
    let client = args.client.client()?;
    let answer = if drain {
        client.drain(&args.node).await?
    } else {
        client.resume(&args.node).await?
    };
    if args.client.json {
        return print_json(&answer);
    }
    println!(
        "node {} is {}",
        args.node,
        answer["status"].as_str().unwrap_or("?")
    );
    Ok(())
}

pub async fn nodes(args: NodesArgs) -> anyhow::Result<()> {
    let nodes = args.client.client()?.nodes().await?;
    if args.client.json {
        return print_json(&nodes);
    }
    println!("{}", nodes_table(&nodes));
    Ok(())
}

pub fn nodes_table(nodes: &[NodeView]) -> Table {
    let mut t = table(&[
        "node",
        "region",
        "status",
        "load",
        "capabilities",
        "backend",
        "heartbeat",
        "rtt",
        "done/failed",
        "success",
        "mean llm",
        "cpu",
        "mem",
    ]);
    for n in nodes {
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
        t.add_row(vec![
            n.node_id.clone(),
            n.region.clone(),
            n.status.as_str().to_string(),
            format!("{}/{}", n.running, n.max_workers),
            n.capabilities.join(","),
            format!("{}{}", n.backend, if n.gpu { " gpu" } else { "" }),
            ago(n.last_heartbeat_at),
            n.rtt_ms
                .map(|r| format!("{r} ms"))
                .unwrap_or_else(|| "-".into()),
            format!("{}/{}", n.jobs_succeeded, n.jobs_failed),
            match n.jobs_succeeded + n.jobs_failed {
                0 => "-".into(),
                all => format!("{:.0}%", 100.0 * n.jobs_succeeded as f64 / all as f64),
            },
            n.mean_llm_ms
                .map(|m| format!("{m:.0} ms"))
                .unwrap_or_else(|| "-".into()),
            cpu,
            mem,
        ]);
    }
    t
}

pub async fn node(command: NodeCommand) -> anyhow::Result<()> {
    let NodeCommand::Revoke { client, id } = command;
    let answer = client.client()?.node_revoke(&id).await?;
    if client.json {
        return print_json(&answer);
    }
    println!(
        "node {} revoked: {} certificates, {} leases released",
        answer.node_id, answer.certificates_revoked, answer.leases_released
    );
    Ok(())
}
