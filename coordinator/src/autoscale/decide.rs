//! The autoscaler's policy, pure: [`decide`] turns what is known of each
//! pool at `now` ([`State`]) into [`Action`]s, each with its reason; the
//! [`Book`] is what the loop remembers between ticks (hosts booting, idle
//! since when, the last scale-up, failures and the backoff), and builds the
//! [`State`] from it and what the coordinator says. Time is milliseconds on
//! whatever clock the caller keeps, so tests drive a simulated one.

use std::collections::HashMap;

use kobo_protocol::scaling::agents_needed;

/// First wait after a failed start; it doubles with each further failure.
pub const BACKOFF_BASE_MS: u64 = 5_000;
/// Longest wait between start attempts after failures.
pub const BACKOFF_MAX_MS: u64 = 600_000;
/// How long a started host may take to check in before the start counts
/// as failed (a command pool's VM boots; SSH starts wait in their health gate).
pub const BOOT_TIMEOUT_MS: u64 = 300_000;

/// A pool's settings, in the units `decide` needs.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub min: u32,
    pub max: u32,
    /// Jobs one host runs at once.
    pub slots: f64,
    pub idle_after_ms: u64,
    pub cooldown_ms: u64,
}

/// Where one host of a pool is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No agent running (never started, stopped, lost).
    Off,
    /// Started by us, not checked in yet: counts as capacity.
    Booting { since: u64 },
    /// An active agent holding `leases`, with none since `idle_since`.
    Up { leases: u32, idle_since: u64 },
    /// Draining or drained (by us or an operator): not capacity, not stopped by us.
    Draining,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostState {
    pub name: String,
    pub phase: Phase,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolState {
    pub config: PoolConfig,
    /// Queued + leased jobs of the work the pool serves.
    pub backlog: u64,
    pub hosts: Vec<HostState>,
    pub last_scale_up: Option<u64>,
    /// Failed starts in a row.
    pub failures: u32,
    /// No start before this time (the backoff).
    pub retry_at: u64,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct State {
    pub pools: Vec<PoolState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Start,
    /// Drain, then stop.
    Stop,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    pub pool: String,
    pub host: String,
    pub verb: Verb,
    pub reason: String,
}

/// Hosts a pool wants for its backlog: `ceil(backlog / slots)` clamped to
/// `min..=max`.
pub fn desired_hosts(pool: &PoolState) -> u32 {
    let needed = agents_needed(pool.backlog, pool.config.slots);
    (needed.min(u64::from(pool.config.max)) as u32).max(pool.config.min)
}

/// The wait after `failures` failed starts in a row: 5 s, 10 s, 20 s, … 10 min.
pub fn backoff_ms(failures: u32) -> u64 {
    if failures == 0 {
        return 0;
    }
    BACKOFF_BASE_MS
        .saturating_mul(1u64 << (failures - 1).min(20))
        .min(BACKOFF_MAX_MS)
}

/// What to do now, pool by pool. Booting hosts count as capacity; a host is
/// stopped only when it holds no lease and has been idle `idle_after`, and
/// never within `cooldown` of the pool's last scale-up; no start while
/// backing off; never above `max` nor below `min`.
pub fn decide(state: &State, now: u64) -> Vec<Action> {
    let mut actions = Vec::new();
    for pool in &state.pools {
        let cfg = &pool.config;
        let desired = desired_hosts(pool);
        let up = pool
            .hosts
            .iter()
            .filter(|h| matches!(h.phase, Phase::Up { .. }))
            .count() as u32;
        let booting = pool
            .hosts
            .iter()
            .filter(|h| matches!(h.phase, Phase::Booting { .. }))
            .count() as u32;
        let capacity = up + booting;
        let why = format!(
            "backlog {} at {} slots/host wants {desired} (min {}, max {}); {up} up, {booting} booting",
            pool.backlog, cfg.slots, cfg.min, cfg.max
        );
        let act = |host: &HostState, verb, reason: String| Action {
            pool: cfg.name.clone(),
            host: host.name.clone(),
            verb,
            reason,
        };
        if capacity < desired {
            if now < pool.retry_at {
                continue;
            }
            // After a failure one start at a time, until one works.
            let room = if pool.failures > 0 {
                1
            } else {
                desired - capacity
            };
            let off = pool.hosts.iter().filter(|h| h.phase == Phase::Off);
            for host in off.take(room as usize) {
                actions.push(act(host, Verb::Start, why.clone()));
            }
        } else if capacity > desired {
            if pool
                .last_scale_up
                .is_some_and(|at| now < at.saturating_add(cfg.cooldown_ms))
            {
                continue;
            }
            let surplus = (capacity - desired).min(capacity.saturating_sub(cfg.min));
            let idle = pool.hosts.iter().filter(|h| match h.phase {
                Phase::Up {
                    leases: 0,
                    idle_since,
                } => now.saturating_sub(idle_since) >= cfg.idle_after_ms,
                _ => false,
            });
            for host in idle.take(surplus as usize) {
                actions.push(act(
                    host,
                    Verb::Stop,
                    format!(
                        "{why}; idle {} s (idle_after {} s)",
                        match host.phase {
                            Phase::Up { idle_since, .. } => now.saturating_sub(idle_since) / 1000,
                            _ => 0,
                        },
                        cfg.idle_after_ms / 1000
                    ),
                ));
            }
        }
    }
    actions
}

/// What the coordinator says of one node: active (with its leases) or
/// draining/drained; absent or lost nodes are not in the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Active { leases: u32 },
    Draining,
}

/// What the loop remembers between ticks.
#[derive(Debug, Clone, Default)]
pub struct Book {
    booting: HashMap<String, u64>,
    idle_since: HashMap<String, u64>,
    last_scale_up: HashMap<String, u64>,
    failures: HashMap<String, u32>,
    retry_at: HashMap<String, u64>,
    /// Hosts we drained and stopped: their nodes stay `drained` until the
    /// coordinator marks them lost, and they are off meanwhile.
    stopped: std::collections::HashSet<String>,
}

impl Book {
    /// The state of `pools` (each with its hosts and backlog) given what the
    /// coordinator says of each host (`seen`, by host name), at `now`. A
    /// booting host that checked in is up; one that took longer than
    /// [`BOOT_TIMEOUT_MS`] counts as a failed start.
    pub fn state(
        &mut self,
        pools: &[(PoolConfig, Vec<String>, u64)],
        seen: &HashMap<String, Seen>,
        now: u64,
    ) -> State {
        let mut out = State::default();
        for (config, hosts, backlog) in pools {
            let mut states = Vec::new();
            for host in hosts {
                let phase = match seen.get(host) {
                    Some(Seen::Active { leases }) => {
                        self.stopped.remove(host);
                        if self.booting.remove(host).is_some() {
                            self.started(&config.name);
                        }
                        let idle = self.idle_since.entry(host.clone()).or_insert(now);
                        if *leases > 0 {
                            *idle = now;
                        }
                        Phase::Up {
                            leases: *leases,
                            idle_since: *idle,
                        }
                    }
                    Some(Seen::Draining) if self.stopped.contains(host) => Phase::Off,
                    Some(Seen::Draining) => {
                        self.idle_since.remove(host);
                        Phase::Draining
                    }
                    None => {
                        self.idle_since.remove(host);
                        match self.booting.get(host).copied() {
                            Some(since) if now.saturating_sub(since) > BOOT_TIMEOUT_MS => {
                                self.booting.remove(host);
                                self.failed(&config.name, now);
                                Phase::Off
                            }
                            Some(since) => Phase::Booting { since },
                            None => Phase::Off,
                        }
                    }
                };
                states.push(HostState {
                    name: host.clone(),
                    phase,
                });
            }
            out.pools.push(PoolState {
                config: config.clone(),
                backlog: *backlog,
                hosts: states,
                last_scale_up: self.last_scale_up.get(&config.name).copied(),
                failures: self.failures.get(&config.name).copied().unwrap_or(0),
                retry_at: self.retry_at.get(&config.name).copied().unwrap_or(0),
            });
        }
        out
    }

    /// `action` was applied at `now`: `ok` says whether it worked.
    pub fn applied(&mut self, action: &Action, ok: bool, now: u64) {
        match (action.verb, ok) {
            (Verb::Start, true) => {
                self.stopped.remove(&action.host);
                self.booting.insert(action.host.clone(), now);
                self.last_scale_up.insert(action.pool.clone(), now);
            }
            (Verb::Start, false) => self.failed(&action.pool, now),
            (Verb::Stop, ok) => {
                self.booting.remove(&action.host);
                self.idle_since.remove(&action.host);
                if ok {
                    self.stopped.insert(action.host.clone());
                }
            }
        }
    }

    fn started(&mut self, pool: &str) {
        self.failures.remove(pool);
        self.retry_at.remove(pool);
    }

    fn failed(&mut self, pool: &str, now: u64) {
        let failures = self.failures.entry(pool.to_string()).or_insert(0);
        *failures += 1;
        self.retry_at
            .insert(pool.to_string(), now.saturating_add(backoff_ms(*failures)));
    }
}

#[cfg(test)]
mod tests;
