//! The queue's reads for clients: jobs (one, or a page), their details, and
//! nodes. Each applies the confidentiality rule once, here ([`Queue::reveal`]),
//! and explains why queued jobs wait.

use kobo_protocol::{
    AccessRole, JobDetail, JobId, JobList, JobListQuery, JobState, JobView, NodeStatus, NodeView,
    UsageRow,
};

use crate::access::Caller;
use crate::queue::Queue;
use crate::routing::{self, JobNeeds, NodeProfile};
use crate::store::sql::Db;
use crate::store::{self, StoreError};

/// Whose confidential jobs `caller` may read in the clear: admins all
/// (`None`), others only their own.
pub fn reveal_only_of(caller: &Caller) -> Option<String> {
    match caller.principal.role() {
        Some(AccessRole::Admin) => None,
        _ => Some(caller.actor()),
    }
}

impl Queue {
    /// Runs `read` with the caller's view of confidential data: the one
    /// place the confidentiality rule is applied to reads.
    async fn reveal<R, F>(&self, caller: &Caller, read: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&dyn Db, &store::Reveal<'_>) -> Result<R, StoreError> + Send + 'static,
    {
        let hub = self.hub.clone();
        let only_of = reveal_only_of(caller);
        self.store
            .read(move |conn| {
                let reveal = store::Reveal {
                    sealer: &hub.sealer,
                    only_of: only_of.as_deref(),
                };
                read(conn, &reveal)
            })
            .await
    }

    /// Usage summed as `filter` asks, as `caller` may see it: an admin
    /// any key's (every key's when none is named), anyone else only its
    /// own actor's; asking for another key is refused naming `key`.
    pub async fn usage(
        &self,
        caller: &Caller,
        mut filter: store::UsageFilter,
    ) -> Result<Vec<UsageRow>, StoreError> {
        if let Some(own) = reveal_only_of(caller) {
            match &filter.actor {
                Some(asked) if *asked != own => {
                    return Err(StoreError::Forbidden(format!(
                        "key: only an admin may read another key's usage (you are {own})"
                    )));
                }
                _ => filter.actor = Some(own),
            }
        }
        self.store
            .read(move |conn| store::usage(conn, &filter))
            .await
    }

    /// One job as `caller` may see it.
    pub async fn get(&self, caller: &Caller, job_id: JobId) -> Result<JobView, StoreError> {
        self.reveal(caller, move |conn, reveal| {
            store::get_job(conn, job_id, reveal)?.ok_or(StoreError::JobNotFound(job_id))
        })
        .await
    }

    /// A page of the jobs matching `query`, newest first, queued ones with
    /// the reason they wait; with the total and the next page's cursor.
    pub async fn list_jobs(
        &self,
        caller: &Caller,
        query: JobListQuery,
    ) -> Result<JobList, StoreError> {
        let mut page = self
            .reveal(caller, move |conn, reveal| {
                store::list_jobs(conn, &query, reveal)
            })
            .await?;
        self.explain_queued(&mut page.jobs).await?;
        Ok(JobList {
            jobs: page.jobs.into_iter().map(|(job, _)| job).collect(),
            total: page.total,
            next_after: page.next_after,
        })
    }

    /// A job with its attempts and events.
    pub async fn job_detail(
        &self,
        caller: &Caller,
        job_id: JobId,
    ) -> Result<JobDetail, StoreError> {
        let (detail, needs) = self
            .reveal(caller, move |conn, reveal| {
                store::job_detail(conn, job_id, reveal)?.ok_or(StoreError::JobNotFound(job_id))
            })
            .await?;
        let mut one = [(detail.job.clone(), needs)];
        self.explain_queued(&mut one).await?;
        let [(job, _)] = one;
        Ok(JobDetail { job, ..detail })
    }

    /// How many queued jobs will be leased before `job_id`; `None` unless
    /// it is queued.
    pub async fn queue_position(&self, job_id: JobId) -> Result<Option<u64>, StoreError> {
        self.store
            .read(move |conn| store::queue_position(conn, job_id))
            .await
    }

    /// Jobs ended (succeeded, dead or cancelled) per second of the last
    /// [`crate::rate::RATE_WINDOW`]; `None` when none ended in it.
    pub fn finish_rate(&self) -> Option<f64> {
        self.hub.finish_rate.per_second(std::time::Instant::now())
    }

    /// Every node as clients see it.
    pub async fn nodes(&self) -> Result<Vec<NodeView>, StoreError> {
        self.store.read(|conn| store::list_nodes(conn)).await
    }

    /// Fills in why queued jobs wait, from the nodes as they are now.
    async fn explain_queued(&self, jobs: &mut [(JobView, JobNeeds)]) -> Result<(), StoreError> {
        if !jobs.iter().any(|(job, _)| job.state == JobState::Queued) {
            return Ok(());
        }
        let nodes = self.nodes().await?;
        for (job, needs) in jobs.iter_mut() {
            if job.state == JobState::Queued {
                job.queue_reason = Some(queue_reason(needs, &nodes));
            }
        }
        Ok(())
    }
}

/// Why a queued job is not running: no live node may run it (and why each
/// is excluded), or the nodes that may are busy.
pub fn queue_reason(needs: &JobNeeds, nodes: &[NodeView]) -> String {
    let mut eligible = Vec::new();
    let mut excluded = Vec::new();
    for node in nodes {
        let profile = NodeProfile {
            node_id: node.node_id.clone(),
            region: node.region.clone(),
            capabilities: node.capabilities.clone(),
            gpu: node.gpu,
            models: node.models.clone(),
            max_workers: node.max_workers,
        };
        let verdict = match routing::check(needs, &profile) {
            Err(why) => Err(why),
            Ok(()) if node.status != NodeStatus::Active => {
                Err(routing::Exclusion::Status(node.status))
            }
            Ok(()) => Ok(()),
        };
        match verdict {
            Ok(()) => eligible.push(node.node_id.clone()),
            Err(why) => excluded.push(format!("{} {why}", node.node_id)),
        }
    }
    if nodes.is_empty() {
        "no node has registered".to_string()
    } else if eligible.is_empty() {
        format!("no live node can run it: {}", excluded.join("; "))
    } else {
        format!("waiting for a free worker on {}", eligible.join(", "))
    }
}
