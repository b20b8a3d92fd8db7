//! Shell completions and man pages made from a clap command tree: the
//! `completions` and `man` commands of both binaries, and what the .deb
//! packages ship (scripts/package).

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Prints the completion script of `command` for `shell` on standard output.
pub fn print_completions(mut command: clap::Command, shell: clap_complete::Shell) {
    let name = command.get_name().to_string();
    clap_complete::generate(shell, &mut command, name, &mut std::io::stdout());
}

/// Writes `NAME.1` and one page per (nested) subcommand, `NAME-SUB.1`, into
/// `out`; returns the pages written, sorted.
pub fn write_man_pages(command: clap::Command, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    clap_mangen::generate_to(command, out)
        .with_context(|| format!("writing man pages into {}", out.display()))?;
    let mut pages: Vec<PathBuf> = std::fs::read_dir(out)
        .with_context(|| format!("reading {}", out.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "1"))
        .collect();
    pages.sort();
    Ok(pages)
}
