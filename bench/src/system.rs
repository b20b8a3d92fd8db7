//! What the figures were measured on (CPU, cores, memory, kernel, file
//! system, load) and the memory of a process, from `/proc`.

use std::path::Path;

use anyhow::Context;
use serde::Serialize;

/// The machine, as recorded in the report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Machine {
    pub(crate) cpu: String,
    pub(crate) cores: usize,
    pub(crate) memory_gib: f64,
    pub(crate) kernel: String,
    /// File system type of the directory holding the databases.
    pub(crate) data_fs: String,
    /// 1, 5 and 15 minute load averages when the run started and ended.
    pub(crate) load_before: String,
    pub(crate) load_after: String,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The `/proc/meminfo`-style value of `key`, in KiB.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find(|line| line.starts_with(key))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// The 1/5/15 minute load averages.
pub(crate) fn load_average() -> String {
    read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The file system type of the mount that holds `path` (longest prefix
/// among `/proc/mounts`).
fn fs_type(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mounts = read("/proc/mounts");
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, mount, kind) = (fields.next()?, fields.next()?, fields.next()?);
            path.starts_with(mount)
                .then(|| (mount.len(), kind.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, kind)| kind)
        .unwrap_or_else(|| "unknown".into())
}

pub(crate) fn machine(data_root: &Path, load_before: String) -> Machine {
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let memory_gib =
        kib_field(&read("/proc/meminfo"), "MemTotal:").unwrap_or(0) as f64 / (1024.0 * 1024.0);
    Machine {
        cpu,
        cores,
        memory_gib: (memory_gib * 10.0).round() / 10.0,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        data_fs: fs_type(data_root),
        load_before,
        load_after: load_average(),
    }
}

/// Resident memory of a process: now (`VmRSS`) and at its peak (`VmHWM`), MiB.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rss {
    pub(crate) now_mib: f64,
    pub(crate) peak_mib: f64,
}

pub(crate) fn rss(pid: u32) -> anyhow::Result<Rss> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |key: &str| {
        kib_field(&status, key)
            .map(|kib| kib as f64 / 1024.0)
            .with_context(|| format!("{key} missing in {path}"))
    };
    Ok(Rss {
        now_mib: field("VmRSS:")?,
        peak_mib: field("VmHWM:")?,
    })
}

/// Clock ticks per second of the times in `/proc/<pid>/stat` (`USER_HZ`,
/// fixed at 100 in Linux's user-space ABI).
const USER_HZ: f64 = 100.0;

/// CPU time (user + system) a process has used so far, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// User + system CPU seconds of the threads of `pid` named `name` (as
/// `/proc/<pid>/task/<tid>/comm` shows it: at most 15 bytes).
pub(crate) fn thread_cpu_seconds(pid: u32, name: &str) -> anyhow::Result<f64> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0.0;
    for task in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let task = task?.path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            total += stat_cpu_seconds(&task.join("stat").to_string_lossy())?;
        }
    }
    Ok(total)
}

fn stat_cpu_seconds(path: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name (which may hold spaces, in parentheses):
    // state is field 3, utime 14, stime 15.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("unexpected {path}"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |idx: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(idx)
            .with_context(|| format!("short {path}"))?
            .parse::<f64>()?)
    };
    Ok((ticks(11)? + ticks(12)?) / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_cpu_of_named_threads_only() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let spinning = stop.clone();
        let busy = std::thread::Builder::new()
            .name("bench-cpu-test".into())
            .spawn(move || {
                while !spinning.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
            .expect("spawn");
        std::thread::sleep(std::time::Duration::from_millis(300));
        let pid = std::process::id();
        let named = thread_cpu_seconds(pid, "bench-cpu-test").expect("named");
        let nobody = thread_cpu_seconds(pid, "no-such-thread").expect("unnamed");
        stop.store(true, Ordering::Relaxed);
        busy.join().expect("join");
        assert!(named > 0.0, "{named}");
        assert_eq!(nobody, 0.0);
        assert!(cpu_seconds(pid).expect("process") >= named);
    }

    #[test]
    fn reads_kib_fields() {
        let text = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(kib_field(text, "VmRSS:"), Some(1024));
        assert_eq!(kib_field(text, "VmHWM:"), Some(2048));
        assert_eq!(kib_field(text, "VmSwap:"), None);
    }

    #[test]
    fn own_cpu_time_is_read() {
        let mut spin = 0u64;
        for idx in 0..5_000_000u64 {
            spin = spin.wrapping_add(idx * idx);
        }
        assert!(spin > 0);
        assert!(cpu_seconds(std::process::id()).expect("own stat") >= 0.0);
    }

    #[test]
    fn own_rss_is_positive() {
        let own = rss(std::process::id()).expect("own status");
        assert!(own.now_mib > 0.0 && own.peak_mib >= own.now_mib);
    }
}
