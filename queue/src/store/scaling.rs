//! The reads behind `GET /v1/scaling` and the `kobo_scaling_*` gauges: the
//! queued and leased jobs matching a filter, and the live agents that could
//! take them. The numbers become a [`ScalingView`] through the one formula,
//! [`kobo_protocol::scaling::agents_needed`].

use kobo_protocol::scaling::{self, ScalingView};
use kobo_protocol::{NodeStatus, NodeView};

use super::StoreError;
use super::sql::{Db, args};
use crate::regions::area_of_region;
use crate::routing::same_model;

/// Queued and leased jobs matching kind (`?1`), a region's residency area
/// (`?2`: the job names none or this one) and model (`?3`: the job names
/// none, this one or its `:latest` spelling). Through `jobs_state`.
pub const SELECT_SCALING_COUNTS: &str = "SELECT state, COUNT(*), MIN(ready_at) FROM jobs \
     WHERE state IN ('queued', 'leased') \
       AND (?1 IS NULL OR kind = ?1) \
       AND (?2 IS NULL OR data_location IS NULL OR data_location = ?2 COLLATE NOCASE) \
       AND (?3 IS NULL OR model IS NULL OR model = ?3 OR model = ?3 || ':latest' OR ?3 = model || ':latest') \
     GROUP BY state";

/// PostgreSQL: a parameter's type is stated where `IS NULL` alone would
/// not tell it, and the residency area compares case-blind with `lower`
/// (SQLite's `NOCASE` folds ASCII only, and areas are ASCII).
pub const SELECT_SCALING_COUNTS_PG: &str = "SELECT state, COUNT(*), MIN(ready_at) FROM jobs \
     WHERE state IN ('queued', 'leased') \
       AND (CAST(?1 AS TEXT) IS NULL OR kind = ?1) \
       AND (CAST(?2 AS TEXT) IS NULL OR data_location IS NULL OR lower(data_location) = lower(?2)) \
       AND (CAST(?3 AS TEXT) IS NULL OR model IS NULL OR model = ?3 OR model = ?3 || ':latest' OR ?3 = model || ':latest') \
     GROUP BY state";

/// Queued and leased jobs per exact (kind, residency, model), the gauges' split.
pub const SELECT_SCALING_GROUPS: &str = "SELECT kind, COALESCE(data_location, ''), COALESCE(model, ''), \
            SUM(state = 'queued'), SUM(state = 'leased'), MIN(CASE WHEN state = 'queued' THEN ready_at END) \
     FROM jobs WHERE state IN ('queued', 'leased') GROUP BY 1, 2, 3";

/// PostgreSQL counts with `FILTER` (a boolean does not sum).
pub const SELECT_SCALING_GROUPS_PG: &str = "SELECT kind, COALESCE(data_location, ''), COALESCE(model, ''), \
            count(*) FILTER (WHERE state = 'queued'), count(*) FILTER (WHERE state = 'leased'), MIN(CASE WHEN state = 'queued' THEN ready_at END) \
     FROM jobs WHERE state IN ('queued', 'leased') GROUP BY 1, 2, 3";

/// What the scaling numbers are asked for; `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScalingFilter {
    pub kind: Option<String>,
    pub region: Option<String>,
    pub model: Option<String>,
    /// Slots per agent to divide by, instead of the live agents' mean.
    pub slots: Option<f64>,
}

/// Whether `node` is live and could take work of `filter`: active, with the
/// kind among its capabilities, in the region, serving the model.
fn matches(node: &NodeView, filter: &ScalingFilter) -> bool {
    node.status == NodeStatus::Active
        && filter
            .kind
            .as_ref()
            .is_none_or(|k| node.capabilities.contains(k))
        && filter
            .region
            .as_ref()
            .is_none_or(|r| node.region.eq_ignore_ascii_case(r))
        && filter
            .model
            .as_ref()
            .is_none_or(|m| node.models.iter().any(|served| same_model(served, m)))
}

fn view(
    filter: &ScalingFilter,
    (queued, leased, oldest_ready): (u64, u64, Option<i64>),
    nodes: &[NodeView],
    now: i64,
) -> ScalingView {
    let slots: Vec<u32> = nodes
        .iter()
        .filter(|n| matches(n, filter))
        .map(|n| n.max_workers)
        .collect();
    let slots_per_agent = scaling::slots_per_agent(filter.slots, &slots);
    let backlog = queued + leased;
    ScalingView {
        agents_needed: scaling::agents_needed(backlog, slots_per_agent),
        backlog,
        queued,
        leased,
        oldest_wait_ms: oldest_ready.map_or(0, |at| (now - at).max(0) as u64),
        slots_per_agent,
        agents: slots.len() as u64,
        kind: filter.kind.clone(),
        region: filter.region.clone(),
        model: filter.model.clone(),
    }
}

/// The scaling numbers of the work `filter` matches, at `now`.
pub fn scaling(db: &dyn Db, filter: &ScalingFilter, now: i64) -> Result<ScalingView, StoreError> {
    let area = filter.region.as_deref().map(area_of_region);
    let (mut queued, mut leased, mut oldest) = (0, 0, None);
    db.for_each(
        db.pick(SELECT_SCALING_COUNTS, SELECT_SCALING_COUNTS_PG),
        args![filter.kind, area, filter.model],
        &mut |r| {
            let state: String = r.get(0)?;
            let n: i64 = r.get(1)?;
            if state == "queued" {
                queued = n as u64;
                oldest = r.get(2)?;
            } else {
                leased = n as u64;
            }
            Ok(true)
        },
    )?;
    let nodes = super::list_nodes(db)?;
    Ok(view(filter, (queued, leased, oldest), &nodes, now))
}

/// The backlog split by exact (kind, residency area, model) — each job in
/// one group, so the groups sum to the whole — biggest first, at most
/// `max_groups` of them; the rest are summed into one group whose labels
/// are all `other`. A job naming no model or residency has `""` there.
pub fn scaling_groups(
    db: &dyn Db,
    now: i64,
    max_groups: usize,
) -> Result<Vec<ScalingView>, StoreError> {
    let mut groups = db.many(
        db.pick(SELECT_SCALING_GROUPS, SELECT_SCALING_GROUPS_PG),
        args![],
        |r| {
            Ok((
                r.get::<String>(0)?,
                r.get::<String>(1)?,
                r.get::<String>(2)?,
                r.get::<i64>(3)? as u64,
                r.get::<i64>(4)? as u64,
                r.get::<Option<i64>>(5)?,
            ))
        },
    )?;
    groups.sort_by(|a, b| (b.3 + b.4).cmp(&(a.3 + a.4)).then_with(|| a.0.cmp(&b.0)));
    let nodes = super::list_nodes(db)?;
    let mut out = Vec::new();
    let mut rest = (0, 0, None::<i64>);
    for (idx, (kind, area, model, queued, leased, oldest)) in groups.into_iter().enumerate() {
        if idx >= max_groups {
            rest.0 += queued;
            rest.1 += leased;
            rest.2 = match (rest.2, oldest) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            continue;
        }
        let filter = ScalingFilter {
            kind: Some(kind),
            region: None,
            model: (!model.is_empty()).then_some(model),
            slots: None,
        };
        // Agents of the residency area (any region in it), not one region.
        let eligible: Vec<NodeView> = nodes
            .iter()
            .filter(|n| area.is_empty() || area_of_region(&n.region).eq_ignore_ascii_case(&area))
            .cloned()
            .collect();
        let mut group = view(&filter, (queued, leased, oldest), &eligible, now);
        group.region = Some(area);
        group.model = Some(group.model.unwrap_or_default());
        out.push(group);
    }
    if rest.0 + rest.1 > 0 {
        let other = Some("other".to_string());
        let filter = ScalingFilter {
            kind: other.clone(),
            region: other.clone(),
            model: other,
            slots: Some(scaling::DEFAULT_SLOTS_PER_AGENT),
        };
        out.push(view(&filter, rest, &[], now));
    }
    Ok(out)
}
