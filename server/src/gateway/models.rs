//! The model lists of both APIs (`GET /v1/models`, `GET /v1/models/{id}`,
//! `GET /api/tags`, `GET /api/ps`, `POST /api/show`) and `GET /api/version`:
//! the union of what active nodes serve.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kobo_protocol::{NodeStatus, NodeView};
use kobo_queue::routing::same_model;
use serde_json::{Value, json};

use super::errors::{Dialect, GatewayError};
use crate::api::AppState;

pub(crate) use kobo_protocol::gateway::OLLAMA_API_CAPABILITY as OLLAMA_API;

/// Models served by active nodes (names as the nodes give them).
pub(crate) fn served(nodes: &[NodeView], ollama_only: bool) -> BTreeSet<String> {
    nodes
        .iter()
        .filter(|n| n.status == NodeStatus::Active)
        .filter(|n| !ollama_only || n.capabilities.iter().any(|c| c == OLLAMA_API))
        .flat_map(|n| n.models.iter().cloned())
        .collect()
}

/// Whether an active node serves `model`.
pub(crate) fn is_served(nodes: &[NodeView], model: &str, ollama_only: bool) -> bool {
    served(nodes, ollama_only)
        .iter()
        .any(|m| same_model(m, model))
}

async fn nodes(state: &AppState, dialect: Dialect) -> Result<Vec<NodeView>, GatewayError> {
    state.queue.nodes().await.map_err(|err| {
        tracing::error!(error = %err, "reading nodes for the model list");
        GatewayError::new(dialect, StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    })
}

fn openai_model(id: &str, created: i64) -> Value {
    json!({"id": id, "object": "model", "created": created / 1000, "owned_by": "kobo"})
}

fn first_registered(nodes: &[NodeView], model: &str) -> i64 {
    nodes
        .iter()
        .filter(|n| n.models.iter().any(|m| same_model(m, model)))
        .map(|n| n.registered_at)
        .min()
        .unwrap_or(0)
}

pub(crate) async fn openai_models(State(state): State<AppState>) -> Result<Response, GatewayError> {
    let nodes = nodes(&state, Dialect::OpenAi).await?;
    let data: Vec<Value> = served(&nodes, false)
        .iter()
        .map(|m| openai_model(m, first_registered(&nodes, m)))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})).into_response())
}

pub(crate) async fn openai_model_get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, GatewayError> {
    let nodes = nodes(&state, Dialect::OpenAi).await?;
    match served(&nodes, false)
        .into_iter()
        .find(|m| same_model(m, &id))
    {
        Some(model) => {
            Ok(Json(openai_model(&model, first_registered(&nodes, &model))).into_response())
        }
        None => Err(GatewayError::model_not_found(Dialect::OpenAi, &id)),
    }
}

fn ollama_model(name: &str) -> Value {
    json!({
        "name": name,
        "model": name,
        "modified_at": "1970-01-01T00:00:00Z",
        "size": 0,
        "digest": "",
        "details": {"format": "", "family": "", "families": null, "parameter_size": "", "quantization_level": ""},
    })
}

pub(crate) async fn ollama_tags(State(state): State<AppState>) -> Result<Response, GatewayError> {
    let nodes = nodes(&state, Dialect::Ollama).await?;
    let models: Vec<Value> = served(&nodes, false)
        .iter()
        .map(|m| ollama_model(m))
        .collect();
    Ok(Json(json!({"models": models})).into_response())
}

/// Models some node has loaded now is not tracked per model here; a model
/// served by a node that is running jobs counts as loaded.
pub(crate) async fn ollama_ps(State(state): State<AppState>) -> Result<Response, GatewayError> {
    let nodes = nodes(&state, Dialect::Ollama).await?;
    let busy: Vec<NodeView> = nodes.into_iter().filter(|n| n.running > 0).collect();
    let models: Vec<Value> = served(&busy, false)
        .iter()
        .map(|m| {
            let mut v = ollama_model(m);
            v["expires_at"] = json!("1970-01-01T00:00:00Z");
            v["size_vram"] = json!(0);
            v
        })
        .collect();
    Ok(Json(json!({"models": models})).into_response())
}

pub(crate) async fn ollama_show(
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Response, GatewayError> {
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        GatewayError::new(
            Dialect::Ollama,
            StatusCode::BAD_REQUEST,
            format!("invalid JSON body: {e}"),
        )
    })?;
    if let Some(unknown) = value.as_object().and_then(|m| {
        m.keys()
            .find(|k| !["model", "name", "verbose"].contains(&k.as_str()))
    }) {
        return Err(GatewayError::field(
            Dialect::Ollama,
            unknown,
            format!("`{unknown}` is not a field of /api/show; supported: model, name, verbose"),
        ));
    }
    let Some(name) = value
        .get("model")
        .or_else(|| value.get("name"))
        .and_then(Value::as_str)
    else {
        return Err(GatewayError::field(
            Dialect::Ollama,
            "model",
            "`model` is required",
        ));
    };
    let nodes = nodes(&state, Dialect::Ollama).await?;
    if !is_served(&nodes, name, false) {
        return Err(GatewayError::model_not_found(Dialect::Ollama, name));
    }
    Ok(Json(json!({
        "modelfile": "",
        "parameters": "",
        "template": "",
        "details": {"format": "", "family": "", "families": null, "parameter_size": "", "quantization_level": ""},
        "model_info": {},
        "capabilities": ["completion"],
    }))
    .into_response())
}

pub(crate) async fn ollama_version() -> Response {
    Json(json!({"version": env!("CARGO_PKG_VERSION")})).into_response()
}
