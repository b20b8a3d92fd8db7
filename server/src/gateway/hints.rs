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

/// The job a gateway request of `api` for `model` becomes.
pub(super) fn job_of(
    headers: &HeaderMap,
    model: &str,
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
        Some(v) => v.parse::<i32>().map_err(|_| {
            GatewayError::field(
                d,
                "x-kobo-priority",
                format!("header `x-kobo-priority` must be an integer, not `{v}`"),
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
        let job = job_of(&headers, "qwen2.5-coder", &config, GatewayApi::OllamaChat).expect("job");
        assert_eq!(job.kind, "code_generation");
        assert!(job.requirements.gpu);
        assert_eq!(job.requirements.data_location.as_deref(), Some("japan"));
        assert_eq!(job.requirements.capabilities, vec![OLLAMA_API.to_string()]);
        let job = job_of(&HeaderMap::new(), "other", &config, GatewayApi::OpenAiChat).expect("job");
        assert_eq!(job.kind, config.default_kind);
        assert!(job.requirements.capabilities.is_empty());
        headers.insert("x-kobo-priority", "high".parse().unwrap());
        let err = job_of(&headers, "m", &config, GatewayApi::OpenAiChat).expect_err("bad");
        assert_eq!(err.param.as_deref(), Some("x-kobo-priority"));
    }
}
