//! `kobo-coord backup DEST` and `kobo-coord restore SRC --data-dir D`: the
//! command lines over `kobo_queue::backup`, and their one-line summaries.

use super::jobs::thousands;
use super::*;

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// A new directory for the backup (created 0700; an existing one must be empty).
    pub dest: PathBuf,
    #[command(flatten)]
    pub data_dir: DataDirArg,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// A backup directory made by `kobo-coord backup`.
    pub src: PathBuf,
    /// The data directory to restore into (no coordinator may be serving from it).
    #[arg(long, env = "KOBO_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Replace a database (moved aside to kobo.db.replaced-<ms>) and keys
    /// already in the data directory.
    #[arg(long)]
    pub force: bool,
    /// Restore only the keys and certificates, not the database (which
    /// `litestream restore` brings); a database already there is kept.
    #[arg(long)]
    pub keys_only: bool,
}

/// `1.2 MiB`, `734 KiB`, `512 B`.
fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

pub fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let report = kobo_queue::backup::backup(&args.data_dir.data_dir, &args.dest)?;
    let manifest = &report.manifest;
    println!(
        "backup {}: {} in {} files, {} jobs, schema {}, integrity ok, {:.2} s",
        report.dest.display(),
        size(report.bytes),
        manifest.files.len() + 1,
        thousands(manifest.jobs.max(0) as u64),
        manifest.schema_version,
        report.elapsed.as_secs_f64()
    );
    Ok(())
}

pub fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let options = kobo_queue::backup::RestoreOptions {
        force: args.force,
        keys_only: args.keys_only,
    };
    let report = kobo_queue::backup::restore(&args.src, &args.data_dir, options)?;
    let manifest = &report.manifest;
    if let Some(old) = &report.replaced {
        println!("the database it replaced is now {}", old.display());
    }
    let head = format!(
        "restored {} into {}: {} in {} files",
        args.src.display(),
        args.data_dir.display(),
        size(report.bytes),
        report.files
    );
    let taken = format!("taken {} from {}", manifest.created_at, manifest.source);
    let dir = args.data_dir.display();
    if args.keys_only {
        println!(
            "{head}, the keys and certificates only, {taken}; now the database: `litestream restore -o {dir}/kobo.db REPLICA_URL`"
        );
    } else {
        println!(
            "{head}, {} jobs, {taken}; start it with `kobo-coord serve --data-dir {dir}`",
            thousands(manifest.jobs.max(0) as u64)
        );
    }
    Ok(())
}
