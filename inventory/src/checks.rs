//! Checks of single values: host names, users, node ids, paths, URLs, secret
//! references. Each returns what was expected when the value does not fit.
//! Whatever passes here is safe to hand to `ssh` as an argument and to a
//! remote command as a quoted argument: no leading `-`, no shell
//! metacharacters, no whitespace or control characters.

use std::net::IpAddr;

/// Longest DNS name (RFC 1123).
const MAX_HOSTNAME: usize = 253;
/// Longest DNS label.
const MAX_LABEL: usize = 63;
/// Longest login name most systems accept.
const MAX_USER: usize = 32;
/// Longest node id (the coordinator's limit on names).
const MAX_NODE_ID: usize = 64;
/// Longest install directory.
const MAX_PATH: usize = 200;
/// Longest free text (specialization, labels).
pub const MAX_TEXT: usize = 200;

/// A DNS name (RFC 1123) or an IP address.
pub fn hostname(value: &str) -> Result<(), String> {
    let expected = "expected a DNS name (RFC 1123: letters, digits, `-` and `.`; no leading `-`) or an IP address";
    if value.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if value.is_empty() || value.len() > MAX_HOSTNAME {
        return Err(format!("{expected}; got {} bytes", value.len()));
    }
    if value.starts_with('-') {
        return Err(format!(
            "{expected}; `{value}` starts with `-` (ssh would read it as an option)"
        ));
    }
    for label in value.trim_end_matches('.').split('.') {
        let ok = !label.is_empty()
            && label.len() <= MAX_LABEL
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        fits(ok, expected, value)?;
    }
    Ok(())
}

/// A login name: `[a-z_][a-z0-9_.-]*`.
pub fn user(value: &str) -> Result<(), String> {
    let mut bytes = value.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    let ok = first_ok
        && value.len() <= MAX_USER
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    fits(
        ok,
        &format!(
            "expected a login name (lowercase letters, digits, `_`, `.`, `-`; starting with a letter or `_`; at most {MAX_USER})"
        ),
        value,
    )
}

/// A node id: letters, digits, `_`, `.`, `-`, not starting with `-`.
pub fn node_id(value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= MAX_NODE_ID
        && !value.starts_with('-')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    fits(
        ok,
        &format!(
            "expected a node id (letters, digits, `_`, `.`, `-`; at most {MAX_NODE_ID}; no leading `-`)"
        ),
        value,
    )
}

/// A capability, region or model name: no whitespace, no control characters,
/// no `,` (lists are comma-separated for the agent), no leading `-`.
pub fn word(value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= MAX_TEXT
        && !value.starts_with('-')
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',');
    fits(
        ok,
        "expected a name without spaces, commas or control characters",
        value,
    )
}

/// Free text on one line (it ends up in the agent's environment file).
pub fn text(value: &str) -> Result<(), String> {
    if value.len() > MAX_TEXT {
        return Err(format!("expected at most {MAX_TEXT} bytes of text"));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err("expected text on one line, without control characters".into());
    }
    Ok(())
}

/// An absolute directory on the host: `/opt/kobo`. Only `[A-Za-z0-9._/+-]`,
/// no `..`, not `/` itself.
pub fn install_dir(value: &str) -> Result<(), String> {
    let expected = "expected an absolute directory made of letters, digits and `._/+-` (not `/`, no `..`), e.g. /opt/kobo";
    let ok = value.starts_with('/')
        && value.len() > 1
        && value.len() <= MAX_PATH
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/+-".contains(&b))
        && !value.split('/').any(|part| part == ".." || part == ".")
        && !value.contains("//");
    fits(ok, expected, value)
}

/// `https://host[:port][/]` — the coordinator as agents reach it.
pub fn https_url(value: &str) -> Result<(), String> {
    url(value, &["https"])
}

/// One or several comma-separated `https://host[:port]` — coordinators
/// sharing a database (the agent follows the leader); the error names the
/// entry at fault.
pub fn https_urls(value: &str) -> Result<(), String> {
    let entries: Vec<&str> = value.split(',').collect();
    for (idx, entry) in entries.iter().enumerate() {
        https_url(entry.trim()).map_err(|err| match entries.len() {
            1 => err,
            _ => format!("coordinator URL {} of {}: {err}", idx + 1, entries.len()),
        })?;
    }
    Ok(())
}

/// `http(s)://host[:port][/path]` — an LLM server.
pub fn http_url(value: &str) -> Result<(), String> {
    url(value, &["http", "https"])
}

fn url(value: &str, schemes: &[&str]) -> Result<(), String> {
    let expected = format!("expected a URL {}://host[:port]", schemes.join("|"));
    let Some((scheme, rest)) = value.split_once("://") else {
        return Err(mismatch(&expected, value));
    };
    if !schemes.contains(&scheme) {
        return Err(format!("{expected}; `{scheme}` is not allowed"));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, "")) => (host, None),
            Some((host, port)) => (host, Some(port.strip_prefix(':').unwrap_or(port))),
            None => ("", None),
        },
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    let path_ok = !value
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "\"'`$\\<>|;&".contains(c));
    fits(
        hostname(host).is_ok() && port_ok && path_ok,
        &expected,
        value,
    )
}

/// A secret reference: `env:NAME` or `file:PATH`. Returns the reference.
pub fn secret(value: &str) -> Result<crate::SecretRef, String> {
    if let Some(name) = value.strip_prefix("env:") {
        let ok = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if ok {
            return Ok(crate::SecretRef::Env(name.to_string()));
        }
        return Err(mismatch(
            "expected env:NAME with NAME an environment variable name",
            value,
        ));
    }
    if let Some(path) = value.strip_prefix("file:") {
        if !path.is_empty() && !path.chars().any(|c| c.is_control()) {
            return Ok(crate::SecretRef::File(path.into()));
        }
        return Err("expected file:PATH with a path".into());
    }
    Err("secrets are never written inline: expected a reference, env:NAME or file:PATH".into())
}

/// A pinned host key: `SHA256:<base64>` (as `ssh-keygen -l` prints it) or a
/// public key line `ssh-ed25519 AAAA…`.
pub fn host_key(value: &str) -> Result<(), String> {
    let base64 = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
    };
    if let Some(hash) = value.strip_prefix("SHA256:") {
        if base64(hash) {
            return Ok(());
        }
    } else {
        let mut parts = value.split_whitespace();
        if let (Some(algo), Some(key)) = (parts.next(), parts.next())
            && (algo.starts_with("ssh-") || algo.starts_with("ecdsa-"))
            && base64(key)
        {
            return Ok(());
        }
    }
    Err(mismatch(
        "expected a host key fingerprint `SHA256:…` or a public key `ssh-ed25519 AAAA…`",
        value,
    ))
}

/// `Ok` when `ok`; else what was `expected` and the value as written.
fn fits(ok: bool, expected: &str, value: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(mismatch(expected, value))
    }
}

/// What was `expected`, and the value as written (control characters
/// escaped).
fn mismatch(expected: &str, value: &str) -> String {
    format!("{expected}; got `{}`", value.escape_debug())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_follow_rfc_1123_or_are_ip_addresses() {
        for good in [
            "tokyo-01",
            "a.b.example",
            "10.0.0.1",
            "::1",
            "x1.example.",
            "203.0.113.7",
        ] {
            assert_eq!(hostname(good), Ok(()), "{good}");
        }
        for bad in [
            "-oProxyCommand=x",
            "a b",
            "a;rm -rf /",
            "$(id)",
            "a`b`",
            "",
            "under_score",
            "a..b",
            "-a",
            "a-.b",
        ] {
            assert!(hostname(bad).is_err(), "{bad} passed");
        }
        assert!(
            hostname("-oProxyCommand=x")
                .unwrap_err()
                .contains("starts with `-`")
        );
    }

    #[test]
    fn users_paths_and_ids_refuse_shell_metacharacters() {
        assert_eq!(user("root"), Ok(()));
        assert_eq!(user("deploy_1"), Ok(()));
        assert!(user("-l").is_err() && user("a b").is_err() && user("Root").is_err());
        assert_eq!(install_dir("/opt/kobo"), Ok(()));
        for bad in [
            "/",
            "opt/kobo",
            "/opt/../etc",
            "/opt/k obo",
            "/opt/$x",
            "/a//b",
        ] {
            assert!(install_dir(bad).is_err(), "{bad} passed");
        }
        assert_eq!(node_id("tokyo-01"), Ok(()));
        assert!(node_id("-x").is_err() && node_id("a b").is_err() && node_id("a/b").is_err());
    }

    #[test]
    fn urls_need_the_right_scheme_and_a_valid_host() {
        assert_eq!(https_url("https://coord.example:7443"), Ok(()));
        assert_eq!(https_url("https://10.0.0.1:7443/"), Ok(()));
        assert_eq!(https_url("https://[::1]:7443"), Ok(()));
        assert_eq!(http_url("http://127.0.0.1:11434"), Ok(()));
        assert!(https_url("http://coord:7443").is_err());
        assert!(https_url("https://-x:1").is_err());
        assert!(https_url("https://a:99999").is_err());
        assert!(http_url("http://a:1/$(id)").is_err());
        assert_eq!(https_urls("https://a:7443, https://b:7443"), Ok(()));
        let second = https_urls("https://a:7443,http://b:7443").expect_err("http");
        assert!(second.starts_with("coordinator URL 2 of 2: "), "{second}");
        assert!(https_urls("https://a:7443,").is_err());
    }

    #[test]
    fn secrets_are_references_only() {
        assert_eq!(
            secret("env:OPENAI_API_KEY"),
            Ok(crate::SecretRef::Env("OPENAI_API_KEY".into()))
        );
        assert_eq!(
            secret("file:/etc/kobo/key"),
            Ok(crate::SecretRef::File("/etc/kobo/key".into()))
        );
        assert!(
            secret("sk-live-123")
                .unwrap_err()
                .contains("never written inline")
        );
        assert!(secret("env:1X").is_err() && secret("env:").is_err());
    }

    #[test]
    fn host_keys_are_fingerprints_or_public_keys() {
        assert_eq!(host_key("SHA256:abc+/="), Ok(()));
        assert_eq!(host_key("ssh-ed25519 AAAAC3Nza"), Ok(()));
        assert!(host_key("md5:aa").is_err() && host_key("ssh-ed25519").is_err());
    }
}
