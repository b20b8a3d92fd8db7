//! Dashboard sessions: a browser's `EventSource` cannot send an
//! `Authorization` header, so the dashboard exchanges an API key (or the
//! one-time login URL `serve` prints) for a session cookie. Sessions live in
//! memory only (a restart logs everyone out), are read only whatever the
//! key's role, expire, and die with the API key that opened them.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use kobo_protocol::AccessRole;
use ring::digest::{SHA256, digest};

use kobo_queue::access::{AccessCache, Principal};

/// The cookie's name.
pub const SESSION_COOKIE: &str = "kobo_session";
/// A session lasts this long; then the dashboard asks to log in again.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// The login URL `serve` prints works once, within this long.
pub const LOGIN_URL_TTL: Duration = Duration::from_secs(24 * 3600);
/// Most sessions held at once; the oldest go first (bounds memory against
/// a client logging in in a loop).
const MAX_SESSIONS: usize = 10_000;
/// Random bytes in a session or login token.
const TOKEN_BYTES: usize = 32;

struct Session {
    /// `apikey:<id>` or `login-url`.
    via: String,
    /// The API key that opened it, checked on every request.
    key_id: Option<String>,
    expires_at: i64,
}

struct LoginToken {
    digest: Vec<u8>,
    expires_at: i64,
}

/// The live sessions and the pending one-time login token.
#[derive(Default)]
pub struct Sessions {
    /// SHA-256 of the cookie value → session.
    sessions: Mutex<HashMap<Vec<u8>, Session>>,
    login: Mutex<Option<LoginToken>>,
}

fn random_token() -> String {
    (0..TOKEN_BYTES)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

fn sha256(text: &str) -> Vec<u8> {
    digest(&SHA256, text.as_bytes()).as_ref().to_vec()
}

impl Sessions {
    /// Opens a session; returns the cookie value and when it expires.
    pub fn open(&self, via: String, key_id: Option<String>, now: i64) -> (String, i64) {
        let token = random_token();
        let expires_at = now + SESSION_TTL.as_millis() as i64;
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        sessions.retain(|_, s| s.expires_at > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            sha256(&token),
            Session {
                via,
                key_id,
                expires_at,
            },
        );
        (token, expires_at)
    }

    /// The principal of a session cookie; `None` if it is unknown, expired,
    /// or its API key was revoked.
    pub fn resolve(&self, token: &str, now: i64, access: &AccessCache) -> Option<Principal> {
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        let key = sha256(token);
        let session = sessions.get(&key)?;
        let alive = session.expires_at > now
            && session
                .key_id
                .as_deref()
                .is_none_or(|id| access.key_active(id));
        if !alive {
            sessions.remove(&key);
            return None;
        }
        Some(Principal::Session {
            via: session.via.clone(),
            role: AccessRole::Read,
        })
    }

    /// Ends a session (logout).
    pub fn close(&self, token: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&sha256(token));
    }

    /// Makes the one-time login token (replacing any earlier one).
    pub fn mint_login_token(&self, now: i64) -> String {
        let token = random_token();
        *self.login.lock().unwrap_or_else(PoisonError::into_inner) = Some(LoginToken {
            digest: sha256(&token),
            expires_at: now + LOGIN_URL_TTL.as_millis() as i64,
        });
        token
    }

    /// Uses up the login token if `presented` is it and it has not expired.
    pub fn redeem_login_token(&self, presented: &str, now: i64) -> bool {
        let mut login = self.login.lock().unwrap_or_else(PoisonError::into_inner);
        // Digests are compared, not tokens: timing reveals nothing usable
        // about a 256-bit random token.
        let ok = login
            .as_ref()
            .is_some_and(|t| t.expires_at > now && t.digest == sha256(presented));
        if ok {
            *login = None;
        }
        ok
    }
}

/// The session cookie's value in a `Cookie` header, if any.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// `Set-Cookie` for a new session: HttpOnly, Secure, SameSite=Strict.
pub fn set_cookie(token: &str) -> String {
    format!(
        "{SESSION_COOKIE}={token}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
        SESSION_TTL.as_secs()
    )
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie() -> String {
    format!("{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kobo_queue::security::SecretHasher;

    fn cache() -> AccessCache {
        AccessCache::new(SecretHasher::new(&[7u8; 32]), Vec::new(), Vec::new())
    }

    #[test]
    fn sessions_resolve_read_only_until_they_expire_or_close() {
        let sessions = Sessions::default();
        let access = cache();
        let (token, expires_at) = sessions.open("login-url".into(), None, 1_000);
        let principal = sessions.resolve(&token, 2_000, &access).expect("live");
        assert_eq!(principal.role(), Some(AccessRole::Read));
        assert_eq!(principal.actor(), "session:login-url");
        assert!(sessions.resolve("nope", 2_000, &access).is_none());
        assert!(sessions.resolve(&token, expires_at, &access).is_none());
        let (token, _) = sessions.open("login-url".into(), None, 1_000);
        sessions.close(&token);
        assert!(sessions.resolve(&token, 2_000, &access).is_none());
    }

    #[test]
    fn a_session_dies_with_its_api_key() {
        let sessions = Sessions::default();
        let (token, _) = sessions.open("apikey:abc".into(), Some("abc".into()), 1_000);
        assert!(
            sessions.resolve(&token, 2_000, &cache()).is_none(),
            "the key is unknown to the cache"
        );
    }

    #[test]
    fn the_login_token_works_once() {
        let sessions = Sessions::default();
        let token = sessions.mint_login_token(0);
        assert!(!sessions.redeem_login_token("wrong", 1));
        assert!(sessions.redeem_login_token(&token, 1));
        assert!(!sessions.redeem_login_token(&token, 2));
        let token = sessions.mint_login_token(0);
        assert!(!sessions.redeem_login_token(&token, LOGIN_URL_TTL.as_millis() as i64));
    }

    #[test]
    fn cookies_are_found_and_set_strictly() {
        assert_eq!(
            cookie_value("a=1; kobo_session=xyz; b=2", SESSION_COOKIE),
            Some("xyz")
        );
        assert_eq!(cookie_value("a=1", SESSION_COOKIE), None);
        let set = set_cookie("t");
        for part in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
            assert!(set.contains(part), "{set}");
        }
    }
}
