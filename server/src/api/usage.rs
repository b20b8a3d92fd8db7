//! `GET /v1/usage`: tokens, requests and LLM time per key, model, node or
//! hour, as the usage table recorded them.

use axum::Json;
use axum::extract::{Extension, State};
use kobo_protocol::{UsageGroup, UsageQuery, UsageRow, usage_actor, validate};
use kobo_queue::StoreError;
use kobo_queue::access::Caller;
use kobo_queue::store::UsageFilter;

use super::{ApiError, ApiQuery, AppState};

pub(super) async fn usage_get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(query): ApiQuery<UsageQuery>,
) -> Result<Json<Vec<UsageRow>>, ApiError> {
    if let Some(key) = &query.key {
        validate::name("key", key)?;
    }
    let group = UsageGroup::parse_list(query.group.as_deref())
        .map_err(|message| ApiError::invalid_field("group", format!("group: {message}")))?;
    if let (Some(since), Some(until)) = (query.since, query.until)
        && until <= since
    {
        return Err(ApiError::invalid_field(
            "until",
            format!("until: must be after since ({since}), got {until}"),
        ));
    }
    let filter = UsageFilter {
        actor: query.key.as_deref().map(usage_actor),
        since: query.since,
        until: query.until,
        group,
    };
    match state.queue.usage(&caller, filter).await {
        Ok(rows) => Ok(Json(rows)),
        Err(err @ StoreError::Forbidden(_)) => Err(ApiError {
            field: Some("key".into()),
            ..ApiError::from(err)
        }),
        Err(err) => Err(err.into()),
    }
}
