//! Following the leader among several coordinators: the header a standby
//! names the leader with, its error code, and `GET /readyz`'s answer.

use serde::{Deserialize, Serialize};

/// On a standby's `503 Service Unavailable`: the leader's URL, when known
/// (`Kobo-Leader: https://host:port`). Clients retry there.
pub const LEADER_HEADER: &str = "kobo-leader";

/// On every answer of a standby that refused a call: `Kobo-Role: standby`,
/// so a client knows to look elsewhere even when no leader is named yet
/// (a takeover under way), without reading the body.
pub const ROLE_HEADER: &str = "kobo-role";

/// The error code of a standby's 503 (`{"error":{"code":"standby",…}}`).
pub const STANDBY_CODE: &str = "standby";

/// `GET /readyz`: 200 with `role: "leader"` on the leader (and on a lone
/// coordinator), 503 with `role: "standby"` and the leader's URL elsewhere,
/// so a load balancer sends traffic to the leader only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Readiness {
    /// `leader` or `standby`.
    pub role: String,
    /// The leader's epoch (leader only; 0 for a lone coordinator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
    /// Where the leader is (standby only, when known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}
