//! Weighted fair share between submitters by virtual time (start-time fair
//! queueing, as in Goyal, Vin and Cheng 1996, over slots instead of a link).
//!
//! Each key has a virtual time: the slot time it was granted, divided by its
//! weight. A lease goes to the key with the smallest start tag, `max(its
//! virtual time, the system virtual time)`; granting charges the key the
//! job's expected slot time over its weight, and the finished attempt's
//! measured LLM time corrects the charge. The system virtual time is the
//! largest start tag granted so far, so a key that was idle resumes level
//! with the busy ones instead of cashing in the time it was away.
//!
//! Why virtual time and not deficit round robin: DRR needs a quantum tuned to
//! job sizes and visits keys in a round, so a key that arrives mid-round waits
//! for it; start tags need no quantum, charge jobs of any length exactly
//! (measured afterwards), and pick the next key with one comparison per
//! active key.

use std::collections::HashMap;

use kobo_protocol::JobId;

/// What one lease was charged, until its attempt ends.
struct Charge {
    key: String,
    weight: f64,
    expected_ms: f64,
}

/// Virtual times of the keys. Kept in memory: after a restart every key
/// starts level, which is fair for a share measured over the recent past.
#[derive(Default)]
pub struct FairShare {
    vtime: HashMap<String, f64>,
    system: f64,
    open: HashMap<JobId, Charge>,
}

impl FairShare {
    /// The start tag the next lease of `key` would have.
    pub fn start_tag(&self, key: &str) -> f64 {
        self.vtime.get(key).copied().unwrap_or(0.0).max(self.system)
    }

    /// Charges `key` (weight `weight`) for a lease on `job_id` expected to
    /// hold a slot for `expected_ms`.
    pub fn charge(&mut self, key: &str, weight: u32, job_id: JobId, expected_ms: f64) {
        let weight = f64::from(weight.max(1));
        let start = self.start_tag(key);
        self.system = self.system.max(start);
        self.vtime
            .insert(key.to_string(), start + expected_ms / weight);
        self.open.insert(
            job_id,
            Charge {
                key: key.to_string(),
                weight,
                expected_ms,
            },
        );
    }

    /// Corrects the charge of `job_id`'s lease by what its attempt really
    /// took.
    pub fn settle(&mut self, job_id: JobId, actual_ms: f64) {
        if let Some(charge) = self.open.remove(&job_id)
            && let Some(vtime) = self.vtime.get_mut(&charge.key)
        {
            *vtime += (actual_ms - charge.expected_ms) / charge.weight;
        }
    }

    /// Forgets the open charge of a job that ended without a measured
    /// attempt (failed, dead, cancelled): the expected time stays charged.
    pub fn close(&mut self, job_id: JobId) {
        self.open.remove(&job_id);
    }

    /// Leases charged and not yet ended.
    pub fn open_charges(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Grants `slots` leases one by one to the smallest start tag among
    /// `keys` (name, weight), each taking `ms`, and counts them per key.
    fn simulate(keys: &[(&str, u32)], slots: usize, ms: f64) -> HashMap<String, usize> {
        let mut fair = FairShare::default();
        let mut granted: HashMap<String, usize> = HashMap::new();
        for job in 0..slots {
            let (key, weight) = keys
                .iter()
                .min_by(|a, b| fair.start_tag(a.0).total_cmp(&fair.start_tag(b.0)))
                .copied()
                .expect("keys");
            fair.charge(key, weight, job as JobId, ms);
            fair.settle(job as JobId, ms);
            *granted.entry(key.to_string()).or_default() += 1;
        }
        granted
    }

    #[test]
    fn slots_split_in_proportion_to_weights() {
        let granted = simulate(&[("a", 1), ("b", 3)], 4000, 100.0);
        assert_eq!(granted["a"], 1000);
        assert_eq!(granted["b"], 3000);
    }

    #[test]
    fn a_key_back_from_idle_does_not_cash_in_its_absence() {
        let mut fair = FairShare::default();
        for job in 0..100 {
            fair.charge("busy", 1, job, 100.0);
        }
        // "new" was idle all along: it starts level with the system, not at
        // zero, so it does not get the next 100 leases in a row.
        assert_eq!(fair.start_tag("new"), fair.start_tag("busy") - 100.0);
        fair.charge("new", 1, 1000, 100.0);
        assert!(fair.start_tag("new") >= fair.start_tag("busy"));
    }

    #[test]
    fn the_measured_time_corrects_the_expected_charge() {
        let mut fair = FairShare::default();
        fair.charge("long", 1, 1, 100.0);
        fair.settle(1, 1000.0);
        fair.charge("short", 1, 2, 100.0);
        fair.settle(2, 10.0);
        assert_eq!(fair.start_tag("long"), 1000.0);
        assert_eq!(fair.start_tag("short"), 10.0_f64.max(0.0));
        assert_eq!(fair.open_charges(), 0);
    }
}
