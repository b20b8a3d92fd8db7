//! Connection admission: bounds on open connections, on connections that
//! have not yet made an authenticated request, and on those from one source
//! address. A connection over a bound is closed at once (never queued) and
//! its refusal audited, with the number of audit writes in flight bounded so
//! a flood cannot turn into a queue of audit rows.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kobo_queue::access::{Caller, Principal};
use kobo_queue::admin::{Admin, record};
use kobo_queue::config::ConnectionLimits;
use tokio::sync::Semaphore;

/// Most audit rows of refusals being written at once; refusals past it are
/// counted and logged, not audited, so a flood costs no unbounded work.
const AUDIT_IN_FLIGHT: usize = 64;

/// Why a connection was refused at accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    #[error("too many open connections (--max-connections {limit})")]
    Connections { limit: usize },
    #[error("too many unauthenticated connections (--max-unauthenticated-connections {limit})")]
    Unauthenticated { limit: usize },
    #[error(
        "too many unauthenticated connections from {from} (--max-unauthenticated-per-source {limit})"
    )]
    PerSource { from: String, limit: usize },
}

#[derive(Debug, Default)]
struct Counts {
    open: usize,
    unauthenticated: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// Counts of open connections, checked at accept.
#[derive(Debug)]
pub(crate) struct Gate {
    limits: ConnectionLimits,
    counts: Mutex<Counts>,
}

/// One admitted connection; dropping it gives its places back.
#[derive(Debug)]
pub(crate) struct Admission {
    gate: Arc<Gate>,
    /// The source it counts against while unauthenticated; `None` once a
    /// request on it authenticated.
    unauthenticated: Mutex<Option<IpAddr>>,
}

/// The address a source is counted under: IPv4 as is, IPv6 by its /64 (one
/// host gets a whole /64 for free).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

impl Gate {
    pub(crate) fn new(limits: ConnectionLimits) -> Arc<Gate> {
        Arc::new(Gate {
            limits,
            counts: Mutex::default(),
        })
    }

    /// Admits a new (unauthenticated) connection from `ip`, or says why not.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, Refused> {
        let source = source_key(ip);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let limits = &self.limits;
        if counts.open >= limits.max_connections {
            return Err(Refused::Connections {
                limit: limits.max_connections,
            });
        }
        if counts.unauthenticated >= limits.max_unauthenticated {
            return Err(Refused::Unauthenticated {
                limit: limits.max_unauthenticated,
            });
        }
        let from_source = counts.per_source.entry(source).or_default();
        if *from_source >= limits.max_unauthenticated_per_source {
            return Err(Refused::PerSource {
                from: source.to_string(),
                limit: limits.max_unauthenticated_per_source,
            });
        }
        *from_source += 1;
        counts.unauthenticated += 1;
        counts.open += 1;
        Ok(Admission {
            gate: self.clone(),
            unauthenticated: Mutex::new(Some(source)),
        })
    }

    fn release_unauthenticated(counts: &mut Counts, source: IpAddr) {
        counts.unauthenticated -= 1;
        if let Some(n) = counts.per_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                counts.per_source.remove(&source);
            }
        }
    }
}

impl Admission {
    /// A request on this connection authenticated: it no longer counts
    /// against the unauthenticated bounds.
    pub(crate) fn authenticated(&self) {
        let mut unauthenticated = self
            .unauthenticated
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(source) = unauthenticated.take() {
            let mut counts = self.gate.counts.lock().unwrap_or_else(|e| e.into_inner());
            Gate::release_unauthenticated(&mut counts, source);
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let source = self
            .unauthenticated
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let mut counts = self.gate.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.open -= 1;
        if let Some(source) = source {
            Gate::release_unauthenticated(&mut counts, source);
        }
    }
}

/// Writes the audit rows of refused and cut connections, a bounded number
/// at a time.
#[derive(Clone)]
pub(crate) struct Refusals {
    admin: Admin,
    in_flight: Arc<Semaphore>,
    unaudited: Arc<AtomicU64>,
}

impl Refusals {
    pub(crate) fn new(admin: Admin) -> Refusals {
        Refusals {
            admin,
            in_flight: Arc::new(Semaphore::new(AUDIT_IN_FLIGHT)),
            unaudited: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Audits `action` refused for the connection from `peer`, unless too
    /// many audit rows are being written already (then it is counted).
    pub(crate) fn record(&self, peer: SocketAddr, action: &'static str, why: String) {
        tracing::debug!(%peer, action, %why, "connection refused");
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            let skipped = self.unaudited.fetch_add(1, Ordering::Relaxed) + 1;
            if skipped.is_power_of_two() {
                tracing::warn!(
                    skipped,
                    "refusals arrive faster than they can be audited; counting them instead"
                );
            }
            return;
        };
        let admin = self.admin.clone();
        tokio::spawn(async move {
            let caller = Caller {
                principal: Principal::Anonymous,
                source: Some(peer.to_string()),
                request_id: None,
            };
            if let Err(err) = admin
                .audit(record(&caller, action, None, "denied", Some(why)))
                .await
            {
                tracing::error!(error = %err, "could not audit a refused connection");
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(open: usize, unauthenticated: usize, per_source: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: open,
            max_unauthenticated: unauthenticated,
            max_unauthenticated_per_source: per_source,
            ..ConnectionLimits::default()
        }
    }

    #[test]
    fn each_bound_refuses_and_places_come_back() {
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let gate = Gate::new(limits(3, 2, 1));
        let first = gate.admit(a).expect("first");
        assert_eq!(
            gate.admit(a).expect_err("same source"),
            Refused::PerSource {
                from: "10.0.0.1".into(),
                limit: 1
            }
        );
        let second = gate.admit(b).expect("other source");
        assert_eq!(
            gate.admit("10.0.0.3".parse().expect("ip"))
                .expect_err("pool"),
            Refused::Unauthenticated { limit: 2 }
        );
        // Authenticated connections leave the unauthenticated bounds ...
        first.authenticated();
        second.authenticated();
        let third = gate.admit(a).expect("after authentication");
        // ... but still count as open.
        assert_eq!(
            gate.admit(b).expect_err("open"),
            Refused::Connections { limit: 3 }
        );
        drop(third);
        drop(first);
        let again = gate.admit(a).expect("places came back");
        again.authenticated();
        drop((again, second));
        let counts = gate.counts.lock().expect("lock");
        assert_eq!((counts.open, counts.unauthenticated), (0, 0));
        assert!(counts.per_source.is_empty());
    }

    #[test]
    fn ipv6_sources_count_by_their_64() {
        let one: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let same: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let other: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(source_key(one), source_key(same));
        assert_ne!(source_key(one), source_key(other));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert_eq!(
            source_key(mapped),
            "10.0.0.1".parse::<IpAddr>().expect("ip")
        );
    }
}
