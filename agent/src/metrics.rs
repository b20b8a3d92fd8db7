//! System metrics for heartbeats, from sysinfo.

use kobo_protocol::NodeMetrics;
use sysinfo::{Disks, System};

/// Keeps sysinfo state between samples (CPU use needs two).
pub struct MetricsSampler {
    system: System,
    disks: Disks,
}

impl Default for MetricsSampler {
    fn default() -> Self {
        MetricsSampler::new()
    }
}

impl MetricsSampler {
    pub fn new() -> MetricsSampler {
        let mut system = System::new();
        system.refresh_cpu_usage();
        system.refresh_memory();
        MetricsSampler {
            system,
            disks: Disks::new_with_refreshed_list(),
        }
    }

    pub fn sample(&mut self) -> NodeMetrics {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        self.disks.refresh(true);
        let load = System::load_average();
        // The root file system when there is one, else all disks summed.
        let root = self
            .disks
            .list()
            .iter()
            .find(|d| d.mount_point() == std::path::Path::new("/"));
        let (total, available) = match root {
            Some(d) => (d.total_space(), d.available_space()),
            None => self.disks.list().iter().fold((0, 0), |(t, a), d| {
                (t + d.total_space(), a + d.available_space())
            }),
        };
        NodeMetrics {
            cpu_percent: self.system.global_cpu_usage(),
            mem_used_bytes: self.system.used_memory(),
            mem_total_bytes: self.system.total_memory(),
            load_1: load.one,
            load_5: load.five,
            load_15: load.fifteen,
            disk_used_bytes: total.saturating_sub(available),
            disk_total_bytes: total,
        }
    }
}
