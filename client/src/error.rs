//! [`ClientError`]: what a call of the API can fail with, typed so callers
//! branch on the status, the API's error code or the field, never on text.

/// A failed call of the coordinator's API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The coordinator answered with an error status and (usually) kobo's
    /// error body.
    #[error("{message} ({status}{})", reason(*status))]
    Api {
        status: u16,
        /// kobo's stable code (`not_found`, `invalid_field`, …); empty when
        /// the body was not kobo's.
        code: String,
        message: String,
        /// The offending field, when one is at fault.
        field: Option<String>,
    },
    /// No answer: connection refused, TLS failure, timeout.
    #[error("cannot reach the coordinator at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// A success whose body is not what the route promises.
    #[error("decoding the answer of {path}")]
    Decode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    /// Something else the coordinator sent is unusable.
    #[error("{message}")]
    Protocol { message: String },
    /// A local file (client.json, the CA) could not be read.
    #[error("{what}")]
    Local {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The HTTPS client could not be built (a bad CA or identity).
    #[error("{what}")]
    Setup {
        what: String,
        #[source]
        source: Option<reqwest::Error>,
    },
}

fn reason(status: u16) -> String {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .map(|r| format!(" {r}"))
        .unwrap_or_default()
}

impl ClientError {
    /// The HTTP status, when the coordinator answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// kobo's error code, when the coordinator answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } if !code.is_empty() => Some(code),
            _ => None,
        }
    }

    /// The field at fault, when the coordinator named one.
    pub fn field(&self) -> Option<&str> {
        match self {
            ClientError::Api { field, .. } => field.as_deref(),
            _ => None,
        }
    }

    /// 404: the job, node, key or schedule does not exist.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// The coordinator could not be reached at all.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_read_as_before_and_are_typed() {
        let err = ClientError::Api {
            status: 404,
            code: "not_found".into(),
            message: "job 7 not found".into(),
            field: None,
        };
        assert_eq!(err.to_string(), "job 7 not found (404 Not Found)");
        assert!(err.is_not_found());
        assert_eq!(err.code(), Some("not_found"));
        let bad = ClientError::Api {
            status: 400,
            code: "invalid_field".into(),
            message: "prompt: too long".into(),
            field: Some("prompt".into()),
        };
        assert_eq!(bad.field(), Some("prompt"));
        assert!(!bad.is_not_found());
    }
}
