//! Security primitives of the coordinator: the data directory's secret keys,
//! API keys and join tokens (format, keyed hashes, constant-time checks), and
//! sealing of confidential job data at rest.
//!
//! Files in the data directory (all written 0600):
//! - `hmac.key`: keys the hashes of API keys and join tokens, so a stolen
//!   database alone cannot be used to check guesses offline;
//! - `data.key`: the XChaCha20-Poly1305 key of confidential prompts and
//!   results, kept out of the database on purpose;
//! - `admin.key`: the local admin API key created by `init` (access to the
//!   data directory is the root of trust).

mod keys;
mod seal;

use kobo_protocol::DataDir;
use kobo_protocol::files::{Access, write_atomic};
use std::fs;
use std::path::{Path, PathBuf};

pub use keys::*;
pub use seal::*;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("failed to read or write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} does not hold a 32-byte hex key")]
    Malformed { path: PathBuf },
}

/// Writes `contents` to `path` atomically, readable by the owner only.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), SecretError> {
    write_atomic(path, contents, Access::Private).map_err(|source| SecretError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a 32-byte hex key from `path`, creating a random one if missing.
pub fn load_or_create_key(path: &Path) -> Result<[u8; 32], SecretError> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let bytes = hex_decode(text.trim()).ok_or_else(|| SecretError::Malformed {
                path: path.to_path_buf(),
            })?;
            bytes.try_into().map_err(|_| SecretError::Malformed {
                path: path.to_path_buf(),
            })
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; 32] = rand::random();
            write_private(path, hex_encode(&key).as_bytes())?;
            Ok(key)
        }
        Err(source) => Err(SecretError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

pub fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

pub use kobo_protocol::sha256_hex;

/// The secrets of one data directory.
#[derive(Clone)]
pub struct Secrets {
    pub hasher: SecretHasher,
    pub sealer: Sealer,
}

impl Secrets {
    pub fn load_or_create(dir: &Path) -> Result<Secrets, SecretError> {
        Ok(Secrets {
            hasher: SecretHasher::new(&load_or_create_key(&DataDir::new(dir).hmac_key())?),
            sealer: Sealer::new(&load_or_create_key(&DataDir::new(dir).data_key())?),
        })
    }
}
