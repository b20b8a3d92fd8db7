//! Properties of [`decide`] with the [`Book`], on a simulated clock: a
//! small fleet whose hosts boot in a few ticks (or fail to), whose leases
//! are the backlog spread over the hosts that are up.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

/// One simulated second per tick.
const TICK_MS: u64 = 1000;

#[derive(Debug, Clone)]
struct Sim {
    config: PoolConfig,
    hosts: Vec<String>,
    /// Per host that is on: ticks left before it checks in.
    on: HashMap<String, u32>,
    boot_ticks: u32,
    fail_starts: bool,
    book: Book,
    now: u64,
    /// (time, verb) of every action taken.
    log: Vec<(u64, Verb)>,
}

impl Sim {
    fn new(config: PoolConfig, boot_ticks: u32, initially_up: u32) -> Sim {
        let hosts: Vec<String> = (0..config.max + 2).map(|i| format!("h{i}")).collect();
        let on = hosts
            .iter()
            .take(initially_up as usize)
            .map(|h| (h.clone(), 0))
            .collect();
        Sim {
            config,
            hosts,
            on,
            boot_ticks,
            fail_starts: false,
            book: Book::default(),
            now: 1_000_000,
            log: Vec::new(),
        }
    }

    /// One tick with `backlog`: observe, decide, apply.
    fn tick(&mut self, backlog: u64) -> (State, Vec<Action>) {
        let mut seen = HashMap::new();
        let mut left = backlog;
        for host in &self.hosts {
            if self.on.get(host) == Some(&0) {
                let leases = left.min(self.config.slots as u64);
                left -= leases;
                seen.insert(
                    host.clone(),
                    Seen::Active {
                        leases: leases as u32,
                    },
                );
            }
        }
        let pools = [(self.config.clone(), self.hosts.clone(), backlog)];
        let state = self.book.state(&pools, &seen, self.now);
        let actions = decide(&state, self.now);
        for action in &actions {
            self.log.push((self.now, action.verb));
            match action.verb {
                Verb::Start if self.fail_starts => self.book.applied(action, false, self.now),
                Verb::Start => {
                    self.on.insert(action.host.clone(), self.boot_ticks);
                    self.book.applied(action, true, self.now);
                }
                Verb::Stop => {
                    self.on.remove(&action.host);
                    self.book.applied(action, true, self.now);
                }
            }
        }
        for left in self.on.values_mut() {
            *left = left.saturating_sub(1);
        }
        self.now += TICK_MS;
        (state, actions)
    }

    fn capacity(&self) -> u32 {
        self.on.len() as u32
    }
}

fn config() -> impl Strategy<Value = PoolConfig> {
    (0u32..3, 1u32..5, 1u32..8, 0u64..120, 0u64..300).prop_map(
        |(min, extra, slots, idle_s, cooldown_s)| PoolConfig {
            name: "p".into(),
            min,
            max: min + extra,
            slots: f64::from(slots),
            idle_after_ms: idle_s * 1000,
            cooldown_ms: cooldown_s * 1000,
        },
    )
}

fn capacity_of(pool: &PoolState) -> u32 {
    pool.hosts
        .iter()
        .filter(|h| matches!(h.phase, Phase::Up { .. } | Phase::Booting { .. }))
        .count() as u32
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the backlog does: a start never takes the pool above max, a
    /// stop never below min, and no stopped host held a lease.
    #[test]
    fn stays_within_min_and_max_and_never_stops_a_busy_host(
        config in config(),
        boot in 0u32..5,
        backlog in prop::collection::vec((0u64..60, 1usize..40), 1..12),
    ) {
        let mut sim = Sim::new(config.clone(), boot, 0);
        for (level, ticks) in backlog {
            for _ in 0..ticks {
                let (state, actions) = sim.tick(level);
                let pool = &state.pools[0];
                let capacity = capacity_of(pool);
                let starts = actions.iter().filter(|a| a.verb == Verb::Start).count() as u32;
                let stops = actions.iter().filter(|a| a.verb == Verb::Stop).count() as u32;
                prop_assert!(starts == 0 || stops == 0, "start and stop in one tick: {actions:?}");
                prop_assert!(starts == 0 || capacity + starts <= config.max, "above max: {capacity} + {starts} > {}", config.max);
                prop_assert!(stops == 0 || capacity - stops >= config.min, "below min: {capacity} - {stops} < {}", config.min);
                for stop in actions.iter().filter(|a| a.verb == Verb::Stop) {
                    let host = pool.hosts.iter().find(|h| h.name == stop.host).expect("the pool's host");
                    prop_assert!(matches!(host.phase, Phase::Up { leases: 0, .. }), "stopped {host:?}");
                }
                prop_assert!(sim.capacity() <= config.max);
            }
        }
    }

    /// Under a constant backlog no pool starts and stops within its
    /// cooldown, and it settles at the size the backlog wants.
    #[test]
    fn a_steady_backlog_does_not_flap(
        config in config(),
        boot in 0u32..5,
        backlog in 0u64..40,
        initially_up in 0u32..6,
    ) {
        let initially_up = initially_up.min(config.max);
        let mut sim = Sim::new(config.clone(), boot, initially_up);
        let ticks = (3 * (config.cooldown_ms + config.idle_after_ms) / TICK_MS + 20) as usize;
        for _ in 0..ticks {
            sim.tick(backlog);
        }
        for (t_start, _) in sim.log.iter().filter(|(_, v)| *v == Verb::Start) {
            for (t_stop, _) in sim.log.iter().filter(|(_, v)| *v == Verb::Stop) {
                prop_assert!(
                    t_start.abs_diff(*t_stop) >= config.cooldown_ms.max(1),
                    "start at {t_start} and stop at {t_stop} within cooldown {}: {:?}", config.cooldown_ms, sim.log
                );
            }
        }
        let (state, _) = sim.tick(backlog);
        prop_assert_eq!(sim.capacity(), desired_hosts(&state.pools[0]), "settled at the desired size");
    }

    /// With min 0 and nothing to do, every host is stopped once idle_after
    /// and the cooldown have passed.
    #[test]
    fn an_idle_pool_with_min_zero_reaches_zero(
        mut config in config(),
        boot in 0u32..5,
        busy_ticks in 0usize..30,
        backlog in 1u64..30,
    ) {
        config.min = 0;
        let mut sim = Sim::new(config.clone(), boot, 0);
        for _ in 0..busy_ticks {
            sim.tick(backlog);
        }
        let quiet = ((config.idle_after_ms + config.cooldown_ms) / TICK_MS) as usize + boot as usize + 3;
        for _ in 0..quiet {
            sim.tick(0);
        }
        prop_assert_eq!(sim.capacity(), 0, "{:?}", sim.log);
    }

    /// Failed starts back off: one attempt at a time after the first, each
    /// wait at least the doubling backoff and never shorter than the last.
    #[test]
    fn failed_starts_back_off_doubling(
        config in config(),
        backlog in 1u64..30,
    ) {
        let mut sim = Sim::new(config, 0, 0);
        sim.fail_starts = true;
        for _ in 0..1500 {
            sim.tick(backlog);
        }
        let mut ticks: Vec<u64> = sim.log.iter().filter(|(_, v)| *v == Verb::Start).map(|(t, _)| *t).collect();
        ticks.dedup();
        prop_assert!(ticks.len() >= 4, "kept trying: {ticks:?}");
        let gaps: Vec<u64> = ticks.windows(2).map(|w| w[1] - w[0]).collect();
        for (idx, gap) in gaps.iter().enumerate() {
            prop_assert!(*gap >= backoff_ms(idx as u32 + 1), "gap {idx} = {gap} ms < backoff {}", backoff_ms(idx as u32 + 1));
            if idx > 0 {
                prop_assert!(*gap >= gaps[idx - 1], "waits shrank: {gaps:?}");
            }
        }
        for t in &ticks[1..] {
            let n = sim.log.iter().filter(|(at, v)| at == t && *v == Verb::Start).count();
            prop_assert_eq!(n, 1, "one start at a time while failing");
        }
    }
}

#[test]
fn backoff_doubles_to_its_cap() {
    assert_eq!(backoff_ms(0), 0);
    assert_eq!(backoff_ms(1), 5_000);
    assert_eq!(backoff_ms(2), 10_000);
    assert_eq!(backoff_ms(3), 20_000);
    assert_eq!(backoff_ms(30), BACKOFF_MAX_MS);
}

#[test]
fn a_booting_host_that_never_checks_in_counts_as_a_failed_start() {
    let config = PoolConfig {
        name: "p".into(),
        min: 0,
        max: 1,
        slots: 4.0,
        idle_after_ms: 0,
        cooldown_ms: 0,
    };
    let pools = [(config, vec!["h0".to_string()], 3)];
    let mut book = Book::default();
    let state = book.state(&pools, &HashMap::new(), 0);
    let actions = decide(&state, 0);
    assert_eq!(actions.len(), 1);
    book.applied(&actions[0], true, 0);
    let booting = book.state(&pools, &HashMap::new(), BOOT_TIMEOUT_MS);
    assert_eq!(booting.pools[0].hosts[0].phase, Phase::Booting { since: 0 });
    assert!(
        decide(&booting, BOOT_TIMEOUT_MS).is_empty(),
        "booting counts as capacity"
    );
    let late = BOOT_TIMEOUT_MS + 1;
    let timed_out = book.state(&pools, &HashMap::new(), late);
    assert_eq!(timed_out.pools[0].hosts[0].phase, Phase::Off);
    assert_eq!(timed_out.pools[0].failures, 1);
    assert_eq!(timed_out.pools[0].retry_at, late + BACKOFF_BASE_MS);
    assert!(decide(&timed_out, late).is_empty(), "backing off");
    assert_eq!(decide(&timed_out, late + BACKOFF_BASE_MS).len(), 1);
}
