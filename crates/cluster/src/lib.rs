//! Meerkat's cluster transport: several Meerkat nodes serve one domain, talking
//! over NATS (core NATS subjects; no home-made membership or consensus) and
//! sharing the PostgreSQL storage.
//!
//! - **Directory.** Every node holds every node's sessions in its router table
//!   (full JID, session id, priority, available presence), so the delivery rules
//!   run locally over all of a user's resources. A node publishes each change of
//!   its own sessions, numbered, on `<cluster>.dir`; a node that joins, restarts
//!   or misses a number asks the owner for a snapshot.
//! - **Forwarding.** A stanza or session message for a session on another node
//!   is published on `<cluster>.node.<name>`, numbered per receiver; the receiver
//!   acknowledges in batches and the sender keeps what is unacknowledged, sends
//!   it again when acknowledgements stall, and routes it again (offline storage,
//!   another resource) when the receiver is lost. Nothing the sender accepted is
//!   dropped by the transport.
//! - **Liveness.** Every node sends a heartbeat every `heartbeat_interval_ms`; a
//!   node silent for `node_timeout_ms` is lost: its sessions leave every table,
//!   and the surviving node with the smallest name tells the lost users'
//!   contacts they went offline. An orderly stop says `Bye`.
//!
//! - **Singletons.** Cluster-wide singletons (MUC rooms) have one owner at a
//!   time, claimed on demand by compare-and-set in the shared storage and
//!   handed over when the owner is lost (`singletons`, behind
//!   [`meerkat_core::cluster::Singletons`]).
//!
//! One task per node (`node::Node`) owns all of this state; the router hands it
//! work through a channel ([`link::NatsLink`]) and never waits for the network.
#![warn(missing_docs)]

mod link;
mod node;
mod resume;
mod singletons;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use meerkat_core::ServerContext;
use meerkat_router::LocalRouter;
use tokio::sync::{mpsc, oneshot, watch};

pub use link::NatsLink;

/// A running cluster membership; [`ClusterHandle::leave`] ends it in order.
pub struct ClusterHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    singletons: Arc<singletons::StoredSingletons>,
}

impl ClusterHandle {
    /// Tells the other nodes this one is leaving (they forget its sessions at
    /// once) and stops the cluster task. Call after the sessions closed.
    pub async fn leave(self) {
        self.singletons.release_all().await;
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// Joins the cluster configured in `[cluster]`: connects to NATS, learns the
/// other nodes' sessions, and from then on keeps `router`'s table current and
/// carries what it forwards. Returns once the other nodes' sessions are known
/// (or after a bounded wait), so the node starts serving with a complete table.
///
/// # Errors
///
/// No `[cluster]` section, or NATS cannot be reached.
pub async fn join(ctx: Arc<ServerContext>, router: Arc<LocalRouter>) -> anyhow::Result<ClusterHandle> {
    let cfg = ctx.config.cluster.clone().context("no [cluster] section in the configuration")?;
    let urls = cfg.nats_url.get_ref().list();
    let node_name: Arc<str> = cfg.node_name.get_ref().as_str().into();
    let client = async_nats::ConnectOptions::new()
        .name(format!("meerkat {node_name}"))
        .connection_timeout(Duration::from_secs(5))
        .connect(urls.as_slice())
        .await
        .with_context(|| format!("connecting to NATS at {}", urls.join(", ")))?;
    let (tx, rx) = mpsc::unbounded_channel();
    let link = Arc::new(NatsLink::new(node_name.clone(), tx));
    router.set_cluster(link);
    let (stop, stop_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = oneshot::channel();
    let node = node::Node::new(ctx.clone(), router, client.clone(), &cfg, node_name.clone(), rx).await?;
    let singletons = Arc::new(singletons::StoredSingletons::new(
        ctx.stores.singletons.clone(),
        client.clone(),
        cfg.name.get_ref(),
        node_name,
        node.incarnation(),
        node.alive(),
        node.held(),
    ));
    if ctx.cluster_singletons.set(singletons.clone()).is_err() {
        anyhow::bail!("this server joined a cluster twice");
    }
    // XEP-0198 resumption of a session held by another node.
    let subject = format!("{}.resume", cfg.name.get_ref());
    let resume_sub = client.subscribe(subject.clone()).await?;
    tokio::spawn(resume::serve(ctx.clone(), client.clone(), resume_sub));
    ctx.resumptions.set_remote(Arc::new(resume::NatsResumptions { client: client.clone(), subject }));
    let task = tokio::spawn(node.run(stop_rx, ready_tx));
    // Learning the others takes a heartbeat interval plus their snapshots.
    let wait = Duration::from_millis(cfg.heartbeat_interval_ms * 2 + 5000);
    if tokio::time::timeout(wait, ready_rx).await.is_err() {
        tracing::warn!("the other cluster nodes did not all answer in time: serving with what is known");
    }
    Ok(ClusterHandle { stop, task, singletons })
}
