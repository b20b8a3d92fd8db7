//! The error body every route answers with on failure.

use serde::{Deserialize, Serialize};

/// `{"error": {"code": "...", "message": "...", "field": "..."}}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorDetail {
    /// A stable machine-readable code such as `invalid_field`, `not_found`,
    /// `stale_lease`.
    pub code: String,
    /// A human-readable message; names the field when one is at fault.
    pub message: String,
    /// The offending field (a dotted path such as `options.temperature`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}
