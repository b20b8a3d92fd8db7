//! Following the leader among several coordinators: the list of URLs a
//! client was given (`https://a:7443,https://b:7443`), the one in use now,
//! where a standby's answer points (`503` with `Kobo-Leader: URL`), and the
//! jittered, doubling [`Backoff`] every retry of kobo uses (the agent's
//! reconnects included).

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use kobo_protocol::{LEADER_HEADER, ROLE_HEADER};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;

/// Several coordinator URLs and the one calls go to now. Cheap to clone;
/// clones share the current choice.
#[derive(Debug, Clone)]
pub struct Coordinators {
    urls: Arc<[String]>,
    current: Arc<RwLock<String>>,
}

impl Coordinators {
    /// Parses a comma-separated list of `https://` (or `http://`) URLs;
    /// calls start at the first. The error names the entry at fault.
    pub fn parse(list: &str) -> Result<Coordinators, String> {
        let mut urls = Vec::new();
        for (idx, entry) in list.split(',').enumerate() {
            let url = entry.trim().trim_end_matches('/');
            if url.is_empty() {
                return Err(format!(
                    "coordinator URL {} of {list:?} is empty (URLs are comma-separated)",
                    idx + 1
                ));
            }
            let rest = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"));
            if rest.is_none_or(|rest| rest.is_empty() || rest.contains(char::is_whitespace)) {
                return Err(format!(
                    "coordinator URL {} of {list:?} ({url:?}) is not an https://host:port URL",
                    idx + 1
                ));
            }
            if !urls.iter().any(|u| u == url) {
                urls.push(url.to_string());
            }
        }
        let current = urls[0].clone();
        Ok(Coordinators {
            urls: urls.into(),
            current: Arc::new(RwLock::new(current)),
        })
    }

    /// The URL calls go to now.
    pub fn current(&self) -> String {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every URL given, in order.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The list as it was given (comma-separated), for an agent's settings.
    pub fn joined(&self) -> String {
        self.urls.join(",")
    }

    /// `failed` did not answer (or stands by without knowing the leader):
    /// moves to the URL after it in the list (wrapping around), unless
    /// another call moved already. Returns the URL to use now.
    pub fn advance(&self, failed: &str) -> String {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if *current == failed {
            let next = match self.urls.iter().position(|u| u == failed) {
                Some(at) => (at + 1) % self.urls.len(),
                // A leader named by a standby, not in the list: back to the list.
                None => 0,
            };
            *current = self.urls[next].clone();
        }
        current.clone()
    }

    /// A standby named the leader: calls go there from now on (it need not
    /// be in the list: the leader's advertised URL is what counts).
    pub fn follow(&self, leader: &str) {
        let leader = leader.trim().trim_end_matches('/');
        if !leader.is_empty() {
            *self.current.write().unwrap_or_else(PoisonError::into_inner) = leader.to_string();
        }
    }
}

/// How a coordinator's answer bears on where to call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Not a standby's refusal: the answer stands.
    Served,
    /// A standby refused and named the leader.
    Leader(String),
    /// A standby refused and knows no leader yet (a takeover is under way).
    NoLeader,
}

/// Reads a standby's refusal: `503` with `Kobo-Role: standby`, and the
/// leader's URL in `Kobo-Leader` when known.
pub fn answer(status: StatusCode, headers: &HeaderMap) -> Answer {
    let standby = status == StatusCode::SERVICE_UNAVAILABLE
        && headers
            .get(ROLE_HEADER)
            .is_some_and(|v| v.as_bytes() == b"standby");
    if !standby {
        return Answer::Served;
    }
    match headers
        .get(LEADER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        Some(leader) => Answer::Leader(leader.to_string()),
        None => Answer::NoLeader,
    }
}

/// First retry delay: a takeover or a restart is usually a moment away.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// Longest retry delay: long enough not to hammer a recovering coordinator,
/// short enough to notice its return quickly.
pub const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// A doubling delay with jitter (each wait is 50–100 % of the current
/// delay, so clients that failed together do not retry together), reset on
/// success by making a new one.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new(BACKOFF_FIRST, BACKOFF_CAP)
    }
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Backoff {
        Backoff { next: first, cap }
    }

    /// The next wait, jittered; the one after is twice as long (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let jitter = 0.5 + rand::random::<f64>() * 0.5;
        let delay = self.next.mul_f64(jitter);
        self.next = (self.next * 2).min(self.cap);
        delay
    }

    /// Sleeps the next wait.
    pub async fn sleep(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn lists_parse_and_name_the_bad_entry() {
        let list = Coordinators::parse(" https://a:1/ ,https://b:2,https://a:1").expect("list");
        assert_eq!(list.urls(), ["https://a:1", "https://b:2"]);
        assert_eq!(list.current(), "https://a:1");
        assert_eq!(list.joined(), "https://a:1,https://b:2");
        let empty = Coordinators::parse("https://a:1,,https://b:2").expect_err("empty entry");
        assert!(empty.contains("coordinator URL 2"), "{empty}");
        let bad = Coordinators::parse("https://a:1,ftp://b").expect_err("bad scheme");
        assert!(bad.contains("\"ftp://b\""), "{bad}");
    }

    #[test]
    fn failures_move_along_the_list_and_standbys_point_at_the_leader() {
        let list = Coordinators::parse("https://a:1,https://b:2").expect("list");
        assert_eq!(list.advance("https://a:1"), "https://b:2");
        // A second caller that saw a:1 fail too does not skip b:2.
        assert_eq!(list.advance("https://a:1"), "https://b:2");
        assert_eq!(list.advance("https://b:2"), "https://a:1");
        list.follow("https://c:3/");
        assert_eq!(list.current(), "https://c:3");
        assert_eq!(list.advance("https://c:3"), "https://a:1");
    }

    #[test]
    fn only_a_standbys_503_redirects() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            answer(StatusCode::SERVICE_UNAVAILABLE, &headers),
            Answer::Served
        );
        headers.insert(ROLE_HEADER, HeaderValue::from_static("standby"));
        assert_eq!(
            answer(StatusCode::SERVICE_UNAVAILABLE, &headers),
            Answer::NoLeader
        );
        headers.insert(LEADER_HEADER, HeaderValue::from_static("https://lead:7443"));
        assert_eq!(
            answer(StatusCode::SERVICE_UNAVAILABLE, &headers),
            Answer::Leader("https://lead:7443".into())
        );
        assert_eq!(answer(StatusCode::OK, &headers), Answer::Served);
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(300));
        let delays: Vec<Duration> = (0..4).map(|_| backoff.next_delay()).collect();
        for (delay, nominal) in delays.iter().zip([100, 200, 300, 300]) {
            let nominal = Duration::from_millis(nominal);
            assert!(
                *delay >= nominal / 2 && *delay <= nominal,
                "{delay:?} of {nominal:?}"
            );
        }
    }
}
