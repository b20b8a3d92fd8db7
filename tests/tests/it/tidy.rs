//! Tidy: rules of the code base checked as a test (after rust-analyzer's
//! `tidy`): every Rust file says what it is for, no file grows past 800
//! lines without a reason written down, no debugging macros are left in, and
//! the crate graph keeps its layers (read from `cargo metadata`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Longest a file may be without an entry in [`LONG_FILES`].
const MAX_LINES: usize = 800;

/// Files allowed past [`MAX_LINES`], each with the reason. Empty is the goal.
const LONG_FILES: &[(&str, &str)] = &[];

/// Directories never walked: build output, vendored front-end packages.
const SKIP_DIRS: &[&str] = &["target", "node_modules", ".git"];

/// The dependency rules of the workspace: (crate, crates it must not
/// depend on directly, why).
const FORBIDDEN: &[(&str, &[&str], &str)] = &[
    (
        "kobo-server",
        &["rusqlite"],
        "the HTTP layer never sees SQL: it calls Queue",
    ),
    (
        "kobo-queue",
        &[
            "axum",
            "hyper",
            "hyper-util",
            "reqwest",
            "tower",
            "kobo-server",
            "kobo-client",
        ],
        "the engine knows no HTTP",
    ),
    (
        "kobo-client",
        &["rusqlite", "kobo-queue", "kobo-server", "axum", "hyper"],
        "the client is a thin HTTPS client of the API",
    ),
];

/// Crates that depend on no crate of ours (every one is named `kobo-…`),
/// and why.
const STANDALONE: &[(&str, &str)] = &[
    ("kobo-protocol", "the wire types depend on no crate of ours"),
    (
        "kobo-inventory",
        "the inventory model depends on no crate of ours",
    ),
    (
        "kobo-fake-llm",
        "the fake LLM stands for a third-party server: it shares no code with kobo",
    ),
];

/// The only crates that may link the agent.
const AGENT_USERS: &[&str] = &["kobo-coord", "kobo-bench", "kobo-tests", "kobo-fuzz"];

/// Crates the rules above name; each must exist, so a rename cannot make a
/// rule pass by vacuum.
const LAYERS: &[&str] = &[
    "kobo-protocol",
    "kobo-queue",
    "kobo-server",
    "kobo-client",
    "kobo-coord",
    "kobo-agent",
    "kobo-inventory",
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lies in the workspace")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if !SKIP_DIRS.contains(&name) && !name.starts_with('.') {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

fn relative(path: &Path) -> String {
    path.strip_prefix(workspace_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[test]
fn every_rust_file_opens_with_a_doc_line_and_stays_short() {
    let mut files = Vec::new();
    rust_files(&workspace_root(), &mut files);
    assert!(files.len() > 50, "found only {} Rust files", files.len());
    let mut problems = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).expect("read");
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        if !first.starts_with("//!") {
            problems.push(format!(
                "{}: the first line is not a `//!` line saying what the file is for",
                relative(path)
            ));
        }
        let n_lines = text.lines().count();
        let name = relative(path);
        if n_lines > MAX_LINES && !LONG_FILES.iter().any(|(f, _)| *f == name) {
            problems.push(format!(
                "{name}: {n_lines} lines, over {MAX_LINES}: split it, or add it to LONG_FILES with a reason"
            ));
        }
    }
    for (file, reason) in LONG_FILES {
        assert!(
            !reason.trim().is_empty(),
            "{file}: an allowed long file needs a reason"
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn no_debugging_macros_are_left_in() {
    // Spelled in pieces so this file does not match itself.
    let banned = [
        concat!("dbg", "!("),
        concat!("todo", "!("),
        concat!("unimplemented", "!("),
    ];
    let mut files = Vec::new();
    rust_files(&workspace_root(), &mut files);
    let mut problems = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).expect("read");
        for (line_idx, line) in text.lines().enumerate() {
            for macro_call in banned {
                if line.contains(macro_call) {
                    problems.push(format!("{}:{}: {macro_call}", relative(path), line_idx + 1));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_engine_reads_the_wall_clock_only_through_its_clock() {
    // Spelled in pieces so this file does not match itself.
    let wall = concat!("SystemTime", "::now");
    let root = workspace_root();
    let mut files = Vec::new();
    for dir in ["queue/src", "server/src"] {
        rust_files(&root.join(dir), &mut files);
    }
    let problems: Vec<String> = files
        .iter()
        .filter(|path| !path.ends_with("queue/src/clock.rs"))
        .filter(|path| std::fs::read_to_string(path).expect("read").contains(wall))
        .map(|path| relative(path))
        .collect();
    assert!(
        problems.is_empty(),
        "{wall} outside queue/src/clock.rs (use kobo_queue::clock, so a clock step moves no deadline): {}",
        problems.join(", ")
    );
}

/// Each workspace crate and the crates it depends on directly (any kind).
fn dependency_graph() -> BTreeMap<String, Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(workspace_root())
        .output()
        .expect("running cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("metadata JSON");
    metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|package| {
            let name = package["name"].as_str().expect("name").to_string();
            let deps = package["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .map(|d| d["name"].as_str().expect("dependency name").to_string())
                .collect();
            (name, deps)
        })
        .collect()
}

#[test]
fn the_crate_graph_keeps_its_layers() {
    let graph = dependency_graph();
    for layer in LAYERS {
        assert!(
            graph.contains_key(*layer),
            "no crate {layer} in the workspace"
        );
    }
    let mut problems = Vec::new();
    for (krate, forbidden, why) in FORBIDDEN {
        let deps = graph
            .get(*krate)
            .unwrap_or_else(|| panic!("no crate {krate}"));
        for dep in deps {
            if forbidden.contains(&dep.as_str()) {
                problems.push(format!("{krate} depends on {dep}, but {why}"));
            }
        }
    }
    for (krate, why) in STANDALONE {
        let deps = graph
            .get(*krate)
            .unwrap_or_else(|| panic!("no crate {krate}"));
        for dep in deps.iter().filter(|d| d.starts_with("kobo-")) {
            problems.push(format!("{krate} depends on {dep}, but {why}"));
        }
    }
    for (krate, deps) in &graph {
        if deps.iter().any(|d| d == "kobo-agent") && !AGENT_USERS.contains(&krate.as_str()) {
            problems.push(format!(
                "{krate} links kobo-agent; only {AGENT_USERS:?} may"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
