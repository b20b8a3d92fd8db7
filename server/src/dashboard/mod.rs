//! The dashboard's static files, embedded in the binary: no build step, no
//! files to install. `index.html` loads `app.css` and `app.js`; `app.js`
//! draws `world.json` (land outlines from Natural Earth, public domain,
//! pre-projected to an equirectangular 1000×500 SVG path) and talks to
//! `/v1/session`, `/v1/status`, `/v1/events` and `/v1/jobs/{id}`; `plots.js`
//! draws the status's `series` (the plots over time) as SVG.

/// The page served at `/`.
pub const INDEX_HTML: &str = include_str!("assets/index.html");

/// Files served under `/assets/`: name, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/app.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/app.js"),
    ),
    (
        "plots.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/plots.js"),
    ),
    (
        "world.json",
        "application/json",
        include_bytes!("assets/world.json"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("assets/favicon.svg"),
    ),
];

/// The content type and bytes of asset `name`, if there is one.
pub fn asset(name: &str) -> Option<(&'static str, &'static [u8])> {
    ASSETS
        .iter()
        .find(|(file, ..)| *file == name)
        .map(|&(_, content_type, bytes)| (content_type, bytes))
}

/// Every asset's name (for tests and the route table).
pub fn asset_names() -> impl Iterator<Item = &'static str> {
    ASSETS.iter().map(|(name, ..)| *name)
}

/// The Content-Security-Policy of the dashboard: only its own files, no
/// inline script, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_embedded_and_the_page_links_them() {
        for name in asset_names() {
            let (_, bytes) = asset(name).expect("asset");
            assert!(!bytes.is_empty(), "{name}");
        }
        assert!(INDEX_HTML.contains("/assets/app.js"));
        assert!(INDEX_HTML.contains("/assets/app.css"));
        assert!(INDEX_HTML.contains("/assets/plots.js"));
        assert!(asset("../Cargo.toml").is_none());
    }

    #[test]
    fn the_world_map_is_small_json_with_a_path() {
        let (_, bytes) = asset("world.json").expect("world");
        assert!(bytes.len() < 150_000, "{} bytes", bytes.len());
        let value: serde_json::Value = serde_json::from_slice(bytes).expect("json");
        let path = value["land"].as_str().expect("land path");
        assert!(path.starts_with('M'), "an SVG path");
        assert_eq!(value["width"], 1000);
        assert_eq!(value["height"], 500);
    }
}
