//! `manifest.json` of a backup directory (`kobo-coord backup`): what made
//! it, when, and the SHA-256 of every file, so `kobo-coord restore` refuses
//! a copy that changed since.

use serde::{Deserialize, Serialize};

/// The manifest's file name in a backup directory.
pub const MANIFEST: &str = "manifest.json";

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupManifest {
    /// The version of the kobo-coord that made it.
    pub kobo_version: String,
    /// `PRAGMA user_version` of the copied database (migrations applied).
    pub schema_version: i64,
    /// When the copy was taken (RFC 3339, UTC).
    pub created_at: String,
    /// The same, in milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// The data directory it was taken from.
    pub source: String,
    /// Jobs in the copied database.
    pub jobs: i64,
    /// Every file of the backup but the manifest, database first.
    pub files: Vec<BackupFile>,
}

/// One file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupFile {
    /// Its name, the same in the backup and in a data directory.
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}
