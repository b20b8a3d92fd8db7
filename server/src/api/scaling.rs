//! `GET /v1/scaling`: the backlog of the work a filter matches and the
//! agents it needs, flat JSON for KEDA's metrics-api scaler and
//! `kobo-coord autoscale`. Open to the `scaler` role and up.

use axum::Json;
use axum::extract::State;
use kobo_protocol::scaling::MAX_SLOTS;
use kobo_protocol::{ScalingQuery, ScalingView, validate};
use kobo_queue::store::ScalingFilter;

use super::{ApiError, ApiQuery, AppState};

pub(super) async fn scaling_get(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ScalingQuery>,
) -> Result<Json<ScalingView>, ApiError> {
    for (field, value) in [
        ("kind", &query.kind),
        ("region", &query.region),
        ("model", &query.model),
    ] {
        if let Some(value) = value {
            validate::name(field, value)?;
        }
    }
    if let Some(slots) = query.slots
        && !(slots.is_finite() && (1.0..=MAX_SLOTS).contains(&slots))
    {
        return Err(ApiError::invalid_field(
            "slots",
            format!("slots: expected a number from 1 to {MAX_SLOTS}, got {slots}"),
        ));
    }
    let filter = ScalingFilter {
        kind: query.kind,
        region: query.region,
        model: query.model,
        slots: query.slots,
    };
    Ok(Json(state.observe.scaling(filter).await?))
}
