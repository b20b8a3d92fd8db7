//! Reads of the usage table: sums per key, model, node or hour over a time
//! window, with the key's name when the actor is an API key.

use kobo_protocol::{UsageGroup, UsageRow};

use super::StoreError;
use super::sql::{Db, Dialect, args};

/// An hour of usage, in milliseconds (the table's bucket).
const HOUR_MS: i64 = 3_600_000;

/// What to sum: one actor's usage (`None`: everyone's) of the hours that
/// overlap `[since, until)`, grouped by `group` (empty: one total row).
#[derive(Debug, Clone, Default)]
pub struct UsageFilter {
    pub actor: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub group: Vec<UsageGroup>,
}

/// The column a grouping selects and groups by.
fn column(group: UsageGroup) -> &'static str {
    match group {
        UsageGroup::Hour => "u.hour",
        UsageGroup::Key => "u.key",
        UsageGroup::Model => "u.model",
        UsageGroup::Node => "u.node_id",
    }
}

/// The usage matching `filter`, one row per group, ordered by the groups.
pub fn usage(db: &dyn Db, filter: &UsageFilter) -> Result<Vec<UsageRow>, StoreError> {
    let has = |g| filter.group.contains(&g);
    let columns: Vec<&str> = UsageGroup::ALL
        .into_iter()
        .map(|g| if has(g) { column(g) } else { "NULL" })
        .collect();
    let grouped: Vec<&str> = filter.group.iter().map(|&g| column(g)).collect();
    let group_by = if grouped.is_empty() {
        String::new()
    } else {
        format!(" GROUP BY {0} ORDER BY {0}", grouped.join(", "))
    };
    let name = if has(UsageGroup::Key) {
        "MAX(k.name)"
    } else {
        "NULL"
    };
    let sql = match db.dialect() {
        Dialect::Sqlite => format!(
            "SELECT {}, {name}, COUNT(*), SUM(u.requests), SUM(u.prompt_tokens), SUM(u.completion_tokens), SUM(u.llm_ms) \
             FROM usage u LEFT JOIN api_keys k ON u.key = 'apikey:' || k.id \
             WHERE (?1 IS NULL OR u.key = ?1) AND (?2 IS NULL OR u.hour > ?2 - {HOUR_MS}) AND (?3 IS NULL OR u.hour < ?3){group_by}",
            columns.join(", ")
        ),
        // PostgreSQL's `sum` of `bigint` is `numeric`, and a parameter only
        // tested for NULL has no type (one compared with a literal would be
        // an `integer`): cast to what SQLite answers and binds.
        Dialect::Postgres => format!(
            "SELECT {}, {name}, COUNT(*), CAST(SUM(u.requests) AS BIGINT), CAST(SUM(u.prompt_tokens) AS BIGINT), CAST(SUM(u.completion_tokens) AS BIGINT), CAST(SUM(u.llm_ms) AS BIGINT) \
             FROM usage u LEFT JOIN api_keys k ON u.key = 'apikey:' || k.id \
             WHERE (CAST(?1 AS TEXT) IS NULL OR u.key = ?1) AND (CAST(?2 AS BIGINT) IS NULL OR u.hour > CAST(?2 AS BIGINT) - {HOUR_MS}) AND (CAST(?3 AS BIGINT) IS NULL OR u.hour < ?3){group_by}",
            columns.join(", ")
        ),
    };
    let rows = db.many(&sql, args![filter.actor, filter.since, filter.until], |r| {
        let text = |i: usize| -> Result<Option<String>, StoreError> {
            Ok(r.get::<Option<String>>(i)?.filter(|s| !s.is_empty()))
        };
        let count = |i: usize| -> Result<u64, StoreError> {
            Ok(r.get::<Option<i64>>(i)?.unwrap_or(0).max(0) as u64)
        };
        Ok((
            r.get::<i64>(5)?,
            UsageRow {
                hour: r.get(0)?,
                key: text(1)?,
                model: text(2)?,
                node: text(3)?,
                key_name: text(4)?,
                requests: count(6)?,
                prompt_tokens: count(7)?,
                completion_tokens: count(8)?,
                llm_ms: count(9)?,
            },
        ))
    })?;
    let mut out = Vec::new();
    for (matched, row) in rows {
        // Ungrouped, SQL answers one row even when nothing matched.
        if matched > 0 {
            out.push(row);
        }
    }
    Ok(out)
}
