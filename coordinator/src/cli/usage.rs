//! `kobo-coord usage`: the usage table summed per key, model, node or
//! hour, with a totals row.

use super::*;
use kobo_protocol::{UsageGroup, UsageQuery, UsageRow};

#[derive(Debug, Args)]
pub struct UsageArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only this API key's usage (its id, as `apikey list` shows it; or an
    /// actor such as `local`). Only an admin may name another key.
    #[arg(long, value_name = "ID")]
    pub key: Option<String>,
    /// Only usage since then: a duration ago (`1h`, `7days`) or an RFC 3339
    /// time (hours are the unit: the hour holding it counts whole).
    #[arg(long)]
    pub since: Option<String>,
    /// Group by a comma list of hour, key, model, node.
    #[arg(long, value_name = "LIST", default_value = "key,model")]
    pub by: String,
}

pub async fn usage(args: UsageArgs) -> anyhow::Result<()> {
    let groups =
        UsageGroup::parse_list(Some(&args.by)).map_err(|e| anyhow::anyhow!("--by: {e}"))?;
    let query = UsageQuery {
        key: args.key.clone(),
        since: args.since.as_deref().map(parse_since).transpose()?,
        until: None,
        group: Some(args.by.clone()),
    };
    let rows = args.client.client()?.usage(&query).await?;
    if args.client.json {
        return print_json(&rows);
    }
    println!("{}", usage_table(&groups, &rows));
    Ok(())
}

/// The rows under the grouped columns and the sums, then a totals row.
fn usage_table(groups: &[UsageGroup], rows: &[UsageRow]) -> Table {
    let mut header: Vec<&str> = Vec::new();
    for group in groups {
        match group {
            UsageGroup::Hour => header.push("hour (UTC)"),
            UsageGroup::Key => header.extend(["key", "name"]),
            UsageGroup::Model => header.push("model"),
            UsageGroup::Node => header.push("node"),
        }
    }
    header.extend(["requests", "prompt", "completion", "total", "llm time"]);
    let mut t = table(&header);
    let sums = |row: &UsageRow| {
        vec![
            row.requests.to_string(),
            row.prompt_tokens.to_string(),
            row.completion_tokens.to_string(),
            (row.prompt_tokens + row.completion_tokens).to_string(),
            format!("{:.1}s", row.llm_ms as f64 / 1000.0),
        ]
    };
    let mut total = UsageRow {
        key: None,
        key_name: None,
        model: None,
        node: None,
        hour: None,
        requests: 0,
        prompt_tokens: 0,
        completion_tokens: 0,
        llm_ms: 0,
    };
    let text = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    for row in rows {
        let mut cells = Vec::new();
        for group in groups {
            match group {
                UsageGroup::Hour => cells.push(format_time(row.hour)),
                UsageGroup::Key => cells.extend([text(&row.key), text(&row.key_name)]),
                UsageGroup::Model => cells.push(text(&row.model)),
                UsageGroup::Node => cells.push(text(&row.node)),
            }
        }
        cells.extend(sums(row));
        t.add_row(cells);
        total.requests += row.requests;
        total.prompt_tokens += row.prompt_tokens;
        total.completion_tokens += row.completion_tokens;
        total.llm_ms += row.llm_ms;
    }
    let label_cells = header.len() - 5;
    let mut cells: Vec<String> = (0..label_cells)
        .map(|i| {
            if i == 0 {
                "total".into()
            } else {
                String::new()
            }
        })
        .collect();
    cells.extend(sums(&total));
    t.add_row(cells);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_ends_with_a_totals_row() {
        let row = |key: &str, prompt, completion| UsageRow {
            key: Some(key.into()),
            key_name: Some("ci".into()),
            model: Some("llama3".into()),
            node: None,
            hour: None,
            requests: 2,
            prompt_tokens: prompt,
            completion_tokens: completion,
            llm_ms: 1500,
        };
        let groups = [UsageGroup::Key, UsageGroup::Model];
        let text =
            usage_table(&groups, &[row("apikey:a", 10, 5), row("apikey:b", 1, 2)]).to_string();
        let last = text.lines().rev().nth(1).expect("totals line");
        assert!(last.contains("total"), "{text}");
        for sum in ["4", "11", "7", "18", "3.0s"] {
            assert!(last.contains(sum), "{sum} in {last}");
        }
    }
}
