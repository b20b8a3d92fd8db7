//! Which build of the agent is running: `agent_version` is the package
//! version plus the first hex digits of the SHA-256 of the running executable
//! (`0.1.0+3fa2c1d9e0b4`). Provisioning knows the checksum of the binary it
//! installed, so its health gate can tell that the *new* binary checked in,
//! and after a rollback that the previous one did — a version string written
//! into a configuration file could not tell that.

use std::sync::OnceLock;

use kobo_protocol::sha256_hex;

/// Hex digits of the executable's SHA-256 in `agent_version`.
pub const BUILD_ID_HEX: usize = 12;

/// `<version>+<sha256 prefix of the running executable>`, computed once.
pub fn agent_version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| match executable_sha256() {
        Some(sha) => format!("{}+{}", env!("CARGO_PKG_VERSION"), &sha[..BUILD_ID_HEX]),
        None => env!("CARGO_PKG_VERSION").to_string(),
    })
}

/// SHA-256 (hex) of the running executable. `/proc/self/exe` opens the
/// running file even after it was replaced on disk.
fn executable_sha256() -> Option<String> {
    let bytes = std::fs::read("/proc/self/exe")
        .or_else(|_| std::env::current_exe().and_then(std::fs::read))
        .ok()?;
    Some(sha256_hex(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_names_the_running_executable() {
        let version = agent_version();
        let (semver, build) = version.split_once('+').expect("a build id");
        assert_eq!(semver, env!("CARGO_PKG_VERSION"));
        assert_eq!(build.len(), BUILD_ID_HEX);
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(sha256_hex(&exe).starts_with(build));
    }
}
