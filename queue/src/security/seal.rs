//! Sealing of confidential job data at rest: XChaCha20-Poly1305 with a key
//! kept in `<data-dir>/data.key`, never in the database. A sealed value is
//! stored as text `sealed:v1:<base64(nonce ‖ ciphertext)>`; the column name
//! is the associated data, so a value moved to another column fails to open.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

const PREFIX: &str = "sealed:v1:";
const NONCE_BYTES: usize = 24;

#[derive(Debug, thiserror::Error)]
#[error("cannot open sealed {column}: wrong key or tampered data")]
pub struct OpenError {
    pub column: &'static str,
}

#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl Sealer {
    pub fn new(key: &[u8; 32]) -> Sealer {
        Sealer {
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// Seals `plain` for `column`.
    pub fn seal(&self, column: &'static str, plain: &str) -> String {
        let nonce_bytes: [u8; NONCE_BYTES] = rand::random();
        let nonce = XNonce::from_slice(&nonce_bytes);
        // Encryption with a valid key and nonce cannot fail for our sizes.
        let sealed = self
            .cipher
            .encrypt(
                nonce,
                Payload {
                    msg: plain.as_bytes(),
                    aad: column.as_bytes(),
                },
            )
            .unwrap_or_default();
        let mut bytes = nonce_bytes.to_vec();
        bytes.extend_from_slice(&sealed);
        format!("{PREFIX}{}", STANDARD.encode(bytes))
    }

    /// Whether a stored value is sealed.
    pub fn is_sealed(stored: &str) -> bool {
        stored.starts_with(PREFIX)
    }

    /// Opens a sealed value; a value that is not sealed is returned as is.
    pub fn open(&self, column: &'static str, stored: &str) -> Result<String, OpenError> {
        let Some(encoded) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_string());
        };
        let bytes = STANDARD.decode(encoded).map_err(|_| OpenError { column })?;
        if bytes.len() < NONCE_BYTES {
            return Err(OpenError { column });
        }
        let (nonce, sealed) = bytes.split_at(NONCE_BYTES);
        let plain = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: column.as_bytes(),
                },
            )
            .map_err(|_| OpenError { column })?;
        String::from_utf8(plain).map_err(|_| OpenError { column })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_and_detects_tampering() {
        let sealer = Sealer::new(&[1; 32]);
        let sealed = sealer.seal("request", "top secret prompt");
        assert!(Sealer::is_sealed(&sealed));
        assert!(!sealed.contains("secret"));
        assert_eq!(
            sealer.open("request", &sealed).expect("open"),
            "top secret prompt"
        );
        assert!(
            sealer.open("result", &sealed).is_err(),
            "bound to its column"
        );
        assert!(
            Sealer::new(&[2; 32]).open("request", &sealed).is_err(),
            "needs the key"
        );
        // Change one character in the middle of the payload, to another one:
        // the last character may carry only padding bits, and may already be
        // the replacement, either of which left the text unchanged.
        let mut chars: Vec<char> = sealed.chars().collect();
        let middle = chars.len() / 2 + 4;
        chars[middle] = if chars[middle] == 'A' { 'B' } else { 'A' };
        let tampered: String = chars.into_iter().collect();
        assert_ne!(tampered, sealed);
        assert!(sealer.open("request", &tampered).is_err());
        assert_eq!(sealer.open("request", "plain").expect("plain"), "plain");
        assert_ne!(
            sealer.seal("request", "x"),
            sealer.seal("request", "x"),
            "fresh nonces"
        );
    }
}
