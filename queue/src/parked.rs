//! The parked lease requests of the hub: each agent's one long poll, found
//! by waiter id or by node in constant time.

use std::collections::HashMap;

use kobo_protocol::Lease;

use crate::routing::NodeProfile;
use crate::store::LeaseSender;

/// Where a parked lease request receives its leases.
pub type WaiterSender = LeaseSender;

pub(crate) struct Waiter {
    pub(crate) id: u64,
    pub(crate) node: NodeProfile,
    pub(crate) max_jobs: u32,
    pub(crate) sender: WaiterSender,
    pub(crate) granted: Vec<Lease>,
}

impl Waiter {
    /// Workers busy if the node took what it was granted so far.
    pub(crate) fn busy(&self) -> u32 {
        self.node.max_workers.saturating_sub(self.max_jobs) + self.granted.len() as u32
    }
}

/// The parked lease requests, by waiter and by node (a node parks at most
/// one). Parking, unparking and replacing take constant time: with ten
/// thousand agents parked, a scan per park and a shift of the list per
/// unpark made every long-poll turnover cost the whole list under this
/// lock, and the runtime's workers, waiting for it, stopped for seconds.
#[derive(Default)]
pub(crate) struct Parked {
    pub(crate) waiters: HashMap<u64, Waiter>,
    pub(crate) by_node: HashMap<String, u64>,
}

impl Parked {
    pub(crate) fn insert(&mut self, waiter: Waiter) {
        if let Some(earlier) = self.by_node.insert(waiter.node.node_id.clone(), waiter.id) {
            self.waiters.remove(&earlier);
        }
        self.waiters.insert(waiter.id, waiter);
    }

    pub(crate) fn remove(&mut self, id: u64) -> Option<Waiter> {
        let waiter = self.waiters.remove(&id)?;
        if self.by_node.get(&waiter.node.node_id) == Some(&id) {
            self.by_node.remove(&waiter.node.node_id);
        }
        Some(waiter)
    }

    pub(crate) fn remove_node(&mut self, node_id: &str) {
        if let Some(id) = self.by_node.remove(node_id) {
            self.waiters.remove(&id);
        }
    }

    /// Drops the requests whose callers are gone.
    pub(crate) fn drop_closed(&mut self) {
        let closed: Vec<u64> = self
            .waiters
            .values()
            .filter(|w| w.sender.is_closed())
            .map(|w| w.id)
            .collect();
        for id in closed {
            self.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    fn waiter(id: u64, node_id: &str) -> (Waiter, oneshot::Receiver<Vec<Lease>>) {
        let (sender, receiver) = oneshot::channel();
        let node = NodeProfile {
            node_id: node_id.into(),
            region: "local".into(),
            capabilities: Vec::new(),
            gpu: false,
            models: Vec::new(),
            max_workers: 1,
        };
        let waiter = Waiter {
            id,
            node,
            max_jobs: 1,
            sender,
            granted: Vec::new(),
        };
        (waiter, receiver)
    }

    #[test]
    fn a_node_parks_one_request_and_each_is_found_by_id_or_node() {
        let mut parked = Parked::default();
        let (first_a, _a1) = waiter(1, "a");
        let (b, b_caller) = waiter(2, "b");
        let (second_a, _a3) = waiter(3, "a");
        parked.insert(first_a);
        parked.insert(b);
        parked.insert(second_a);
        assert_eq!(
            parked.waiters.len(),
            2,
            "a's later request replaced its first"
        );
        assert!(parked.remove(1).is_none(), "the replaced request is gone");
        assert_eq!(parked.by_node.get("a"), Some(&3));
        drop(b_caller);
        parked.drop_closed();
        assert!(
            !parked.waiters.contains_key(&2) && !parked.by_node.contains_key("b"),
            "a request whose caller left is dropped"
        );
        assert_eq!(parked.remove(3).map(|w| w.id), Some(3));
        assert!(parked.by_node.is_empty(), "removing by id forgets the node");
        let (again, _a4) = waiter(4, "a");
        parked.insert(again);
        parked.remove_node("a");
        assert!(parked.waiters.is_empty() && parked.by_node.is_empty());
    }
}
