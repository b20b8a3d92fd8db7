//! A gateway request as a job: its kind (`x-kobo-kind`, else the configured
//! model → kind map, else the default kind) and the routing hints clients
//! send as headers, with the same hard/soft meaning as a job's fields.

use axum::http::HeaderMap;
use kobo_protocol::{GatewayApi, Preferences, Requirements, SubmitJob, validate};
use kobo_queue::config::GatewayConfig;
use kobo_queue::routing::same_model;

use super::errors::{Dialect, GatewayError};
use super::models::OLLAMA_API;

fn header<'a>(
    headers: &'a HeaderMap,
    name: &str,
    d: Dialect,
) -> Result<Option<&'a str>, GatewayError> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(|v| Some(v.trim()))
            .map_err(|_| GatewayError::field(d, name, format!("header `{name}` is not text"))),
    }
}

fn flag(headers: &HeaderMap, name: &str, d: Dialect) -> Result<bool, GatewayError> {
    match header(headers, name, d)? {
        None => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => Ok(false),
        Some(v) => Err(GatewayError::field(
            d,
            name,
            format!("header `{name}` must be true or false, not `{v}`"),
        )),
    }
}

fn named(headers: &HeaderMap, name: &str, d: Dialect) -> Result<Option<String>, GatewayError> {
    let Some(value) = header(headers, name, d)? else {
        return Ok(None);
    };
    validate::name(name, value).map_err(|e| GatewayError::field(d, name, e.message))?;
    Ok(Some(value.to_owned()))
}

/// The session a request belongs to: the `x-session-id` header, else the
/// OpenAI body's `user` field (an end user's id, as OpenAI asks clients to
/// send).
fn session_of(
    headers: &HeaderMap,
    body: &serde_json::Value,
    d: Dialect,
) -> Result<Option<String>, GatewayError> {
    let (field, id) = match header(headers, "x-session-id", d)? {
        Some(id) => ("x-session-id", id),
        None => match body.get("user") {
            None | Some(serde_json::Value::Null) => return Ok(None),
            Some(serde_json::Value::String(user)) => ("user", user.as_str()),
            Some(_) => {
                return Err(GatewayError::field(d, "user", "`user` must be a string"));
            }
        },
    };
    validate::session(field, id)
        .map_err(|e| GatewayError::field(d, field, format!("`{field}` {}", e.message)))?;
    Ok(Some(id.to_owned()))
}

/// The job a gateway request of `api` for `model` with `body` becomes.
pub(super) fn job_of(
    headers: &HeaderMap,
    model: &str,
    body: &serde_json::Value,
    config: &GatewayConfig,
    api: GatewayApi,
) -> Result<SubmitJob, GatewayError> {
    let d = if api.is_ollama() {
        Dialect::Ollama
    } else {
        Dialect::OpenAi
    };
    let kind = match named(headers, "x-kobo-kind", d)? {
        Some(kind) => kind,
        None => config
            .model_kinds
            .iter()
            .find(|(m, _)| same_model(m, model))
            .map(|(_, kind)| kind.clone())
            .unwrap_or_else(|| config.default_kind.clone()),
    };
    let priority = match header(headers, "x-kobo-priority", d)? {
        None => config.priority,
        Some(v) => v
            .parse::<i32>()
            .ok()
            .filter(|p| validate::PRIORITY.contains(p))
            .ok_or_else(|| {
                GatewayError::field(
                    d,
                    "x-kobo-priority",
                    format!(
                        "header `x-kobo-priority` must be an integer from -1000 to 1000, not `{v}`"
                    ),
                )
            })?,
    };
    let mut capabilities = Vec::new();
    if api.is_ollama() {
        capabilities.push(OLLAMA_API.to_owned());
    }
    Ok(SubmitJob {
        kind,
        model: Some(model.to_owned()),
        requirements: Requirements {
            capabilities,
            gpu: flag(headers, "x-kobo-gpu", d)?,
            data_location: named(headers, "x-kobo-data-location", d)?,
            confidential: flag(headers, "x-kobo-confidential", d)?,
        },
        preferences: Preferences {
            region: named(headers, "x-kobo-prefer-region", d)?,
            ..Preferences::default()
        },
        priority,
        session: session_of(headers, body, d)?,
        ..SubmitJob::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_become_requirements_and_a_bad_one_is_named() {
        let config = GatewayConfig {
            model_kinds: vec![("qwen2.5-coder".into(), "code_generation".into())],
            ..GatewayConfig::default()
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-kobo-gpu", "true".parse().unwrap());
        headers.insert("x-kobo-data-location", "japan".parse().unwrap());
        let job = job_of(
            &headers,
            "qwen2.5-coder",
            &serde_json::json!({}),
            &config,
            GatewayApi::OllamaChat,
        )
        .expect("job");
        assert_eq!(job.kind, "code_generation");
        assert!(job.requirements.gpu);
        assert_eq!(job.requirements.data_location.as_deref(), Some("japan"));
        assert_eq!(job.requirements.capabilities, vec![OLLAMA_API.to_string()]);
        let job = job_of(
            &HeaderMap::new(),
            "other",
            &serde_json::json!({}),
            &config,
            GatewayApi::OpenAiChat,
        )
        .expect("job");
        assert_eq!(job.kind, config.default_kind);
        assert!(job.requirements.capabilities.is_empty());
        headers.insert("x-kobo-priority", "high".parse().unwrap());
        let err = job_of(
            &headers,
            "m",
            &serde_json::json!({}),
            &config,
            GatewayApi::OpenAiChat,
        )
        .expect_err("bad");
        assert_eq!(err.param.as_deref(), Some("x-kobo-priority"));
    }

    #[test]
    fn the_session_is_the_header_else_the_user_field() {
        let config = GatewayConfig::default();
        let body = serde_json::json!({"user": "alice@example.com"});
        let job = job_of(
            &HeaderMap::new(),
            "m",
            &body,
            &config,
            GatewayApi::OpenAiChat,
        )
        .expect("job");
        assert_eq!(job.session.as_deref(), Some("alice@example.com"));
        let mut headers = HeaderMap::new();
        headers.insert("x-session-id", "conv-42".parse().unwrap());
        let job = job_of(&headers, "m", &body, &config, GatewayApi::OpenAiChat).expect("job");
        assert_eq!(job.session.as_deref(), Some("conv-42"));
        let job = job_of(
            &HeaderMap::new(),
            "m",
            &serde_json::json!({}),
            &config,
            GatewayApi::OllamaChat,
        )
        .expect("job");
        assert_eq!(job.session, None);
        let err = job_of(
            &HeaderMap::new(),
            "m",
            &serde_json::json!({"user": 7}),
            &config,
            GatewayApi::OpenAiChat,
        )
        .expect_err("a number");
        assert_eq!(err.param.as_deref(), Some("user"));
        let long = "x".repeat(kobo_protocol::validate::MAX_SESSION + 1);
        let err = job_of(
            &HeaderMap::new(),
            "m",
            &serde_json::json!({"user": long}),
            &config,
            GatewayApi::OpenAiChat,
        )
        .expect_err("too long");
        assert_eq!(err.param.as_deref(), Some("user"));
    }

    #[test]
    fn a_priority_outside_the_queue_range_is_named() {
        let mut headers = HeaderMap::new();
        headers.insert("x-kobo-priority", "5000".parse().unwrap());
        let body = serde_json::json!({});
        let config = GatewayConfig::default();
        let err = job_of(&headers, "m", &body, &config, GatewayApi::OpenAiChat)
            .expect_err("out of range");
        assert_eq!(err.param.as_deref(), Some("x-kobo-priority"));
        assert!(err.message.contains("-1000 to 1000"), "{}", err.message);
        headers.insert("x-kobo-priority", "-1000".parse().unwrap());
        let job = job_of(&headers, "m", &body, &config, GatewayApi::OpenAiChat).expect("edge");
        assert_eq!(job.priority, -1000);
    }
}
