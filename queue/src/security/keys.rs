//! API keys (`kobo_<id>_<secret>`), join tokens
//! (`kobo-join.<ca sha256>.<id>.<secret>`) and enrollment keys
//! (`kobo-enroll.<ca sha256>.<id>.<secret>`): generation, parsing, and keyed
//! hashes compared in constant time.

use ring::hmac;

use super::hex_encode;

/// Random bytes in a secret: 256 bits.
const SECRET_BYTES: usize = 32;
/// Random bytes in a public id: enough to never collide in practice.
const ID_BYTES: usize = 8;

/// Prefix of join tokens.
pub const JOIN_TOKEN_PREFIX: &str = "kobo-join";
/// Prefix of enrollment keys: the same shape as a join token, another use.
pub const ENROLL_KEY_PREFIX: &str = "kobo-enroll";

/// HMAC-SHA256 keyed by the data directory's `hmac.key`.
#[derive(Clone)]
pub struct SecretHasher {
    key: hmac::Key,
}

impl SecretHasher {
    pub fn new(key: &[u8; 32]) -> SecretHasher {
        SecretHasher {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    pub fn hash(&self, secret: &str) -> Vec<u8> {
        hmac::sign(&self.key, secret.as_bytes()).as_ref().to_vec()
    }

    /// Constant-time comparison of `secret`'s hash with `stored`.
    pub fn verify(&self, secret: &str, stored: &[u8]) -> bool {
        hmac::verify(&self.key, secret.as_bytes(), stored).is_ok()
    }
}

fn random_hex(n: usize) -> String {
    let bytes: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
    hex_encode(&bytes)
}

/// A new API key: (id, secret, the full key string).
pub fn new_api_key() -> (String, String, String) {
    let id = random_hex(ID_BYTES);
    let secret = random_hex(SECRET_BYTES);
    let key = format!("kobo_{id}_{secret}");
    (id, secret, key)
}

/// Splits `kobo_<id>_<secret>`; `None` if it is not of that form.
pub fn parse_api_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix("kobo_")?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id) && hex(secret) && id.len() == ID_BYTES * 2 && secret.len() == SECRET_BYTES * 2)
        .then_some((id, secret))
}

/// A join token's (or an enrollment key's) parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Hex SHA-256 of the CA certificate (DER) the agent must find.
    pub ca_hash: String,
    pub id: String,
    pub secret: String,
}

impl JoinToken {
    pub fn generate(ca_hash: &str) -> JoinToken {
        JoinToken {
            ca_hash: ca_hash.to_string(),
            id: random_hex(ID_BYTES),
            secret: random_hex(SECRET_BYTES),
        }
    }

    pub fn parse(token: &str) -> Option<JoinToken> {
        JoinToken::parse_as(JOIN_TOKEN_PREFIX, token)
    }

    /// Parses `<kind>.<ca sha256>.<id>.<secret>` for `kind`, the prefix.
    pub fn parse_as(kind: &str, token: &str) -> Option<JoinToken> {
        let mut parts = token.trim().split('.');
        let (prefix, ca_hash, id, secret) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        (prefix == kind
            && parts.next().is_none()
            && hex(ca_hash, 64)
            && hex(id, ID_BYTES * 2)
            && hex(secret, SECRET_BYTES * 2))
        .then(|| JoinToken {
            ca_hash: ca_hash.to_string(),
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }
}

impl JoinToken {
    /// The text of this secret under `kind`, the prefix.
    pub fn text_as(&self, kind: &str) -> String {
        format!("{kind}.{}.{}.{}", self.ca_hash, self.id, self.secret)
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{JOIN_TOKEN_PREFIX}.{}.{}.{}",
            self.ca_hash, self.id, self.secret
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_round_trip_and_verify_in_constant_time() {
        let hasher = SecretHasher::new(&[7; 32]);
        let (id, secret, key) = new_api_key();
        assert_eq!(parse_api_key(&key), Some((id.as_str(), secret.as_str())));
        let stored = hasher.hash(&secret);
        assert!(hasher.verify(&secret, &stored));
        assert!(!hasher.verify("0000", &stored));
        assert!(
            !SecretHasher::new(&[8; 32]).verify(&secret, &stored),
            "the hash is keyed"
        );
        for bad in [
            "",
            "kobo_",
            "kobo_x_y",
            "other_abc_def",
            &key[..key.len() - 1],
        ] {
            assert_eq!(parse_api_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn join_tokens_round_trip() {
        let token = JoinToken::generate(&"ab".repeat(32));
        assert_eq!(JoinToken::parse(&token.to_string()), Some(token.clone()));
        assert_eq!(JoinToken::parse("kobo-join.zz.1.2"), None);
        let key = token.text_as(ENROLL_KEY_PREFIX);
        assert_eq!(
            JoinToken::parse_as(ENROLL_KEY_PREFIX, &key),
            Some(token.clone())
        );
        assert_eq!(
            JoinToken::parse(&key),
            None,
            "an enrollment key is no join token"
        );
        assert_eq!(JoinToken::parse(&format!("{token}.extra")), None);
    }
}
