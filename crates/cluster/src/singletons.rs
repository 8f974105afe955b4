//! Cluster-wide singletons: key → owner (`node incarnation`) in the shared
//! storage (PostgreSQL's `cluster_singletons`), changed only by compare-and-set.
//!
//! Ownership follows node liveness, not a per-key timer, so owning ten thousand
//! rooms costs no refresh traffic: a claim succeeds when the key is free, or when
//! its owner is no longer a live member of the cluster (the heartbeats decide) by
//! a compare-and-set on the revision read, so two nodes racing for a lost owner's
//! key cannot both win. The taker announces the takeover on the directory
//! subject; an owner that was taken for lost (a network partition) hears it when
//! it is reachable again, and its [`Lease`] resolves `lost`: it must stop running
//! the singleton.
//!
//! (NATS JetStream key-value buckets would fit too, but async-nats 0.51 needs
//! nats-server 2.10 or newer for JetStream, and Debian 12 ships 2.9; the cluster
//! already shares PostgreSQL.)

use std::collections::HashMap;
use std::sync::Arc;

use meerkat_core::cluster::{Lease, NodeName, Owner, Singletons};
use meerkat_storage::SingletonStore;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use crate::wire::{Envelope, Msg};

/// The live members of the cluster and their incarnations, as the cluster
/// task sees them (this node included).
pub(crate) type Alive = Arc<RwLock<HashMap<NodeName, u64>>>;

/// Keys this node owns → the sender that tells their leases they were lost.
pub(crate) type Held = Arc<Mutex<HashMap<String, watch::Sender<bool>>>>;

/// [`Singletons`] on the shared storage.
pub(crate) struct StoredSingletons {
    store: Arc<dyn SingletonStore>,
    client: async_nats::Client,
    dir_subject: String,
    me: NodeName,
    inc: u64,
    alive: Alive,
    held: Held,
}

impl StoredSingletons {
    pub(crate) fn new(
        store: Arc<dyn SingletonStore>,
        client: async_nats::Client,
        cluster: &str,
        me: NodeName,
        inc: u64,
        alive: Alive,
        held: Held,
    ) -> Self {
        StoredSingletons { store, client, dir_subject: format!("{cluster}.dir"), me, inc, alive, held }
    }

    fn my_value(&self) -> String {
        owner_value(&self.me, self.inc)
    }

    /// The live member a stored owner value names, if it is one.
    fn live_owner(&self, value: &str) -> Option<NodeName> {
        let (node, inc) = value.split_once(' ')?;
        let inc: u64 = inc.parse().ok()?;
        let alive = self.alive.read();
        let (name, live_inc) = alive.get_key_value(node)?;
        (*live_inc == inc).then(|| name.clone())
    }

    fn lease(&self, key: &str) -> Owner {
        let mut held = self.held.lock();
        let rx = match held.get(key) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(false);
                held.insert(key.to_string(), tx);
                rx
            }
        };
        Owner::Me(Lease::new(rx))
    }

    /// Releases every key this node owns (orderly stop).
    pub(crate) async fn release_all(&self) {
        let keys: Vec<String> = self.held.lock().keys().cloned().collect();
        for k in keys {
            self.release(&k).await;
        }
    }
}

/// How an owner is stored: `node incarnation`.
pub(crate) fn owner_value(node: &str, inc: u64) -> String {
    format!("{node} {inc}")
}

#[async_trait::async_trait]
impl Singletons for StoredSingletons {
    async fn claim(&self, key: &str) -> Result<Owner, String> {
        let mine = self.my_value();
        let fail = |e: meerkat_storage::Error| format!("singleton {key}: {e}");
        // A race with another claimer makes the write fail; read again.
        for _ in 0..5 {
            match self.store.singleton_owner(key).await.map_err(fail)? {
                Some((owner, _)) if owner == mine => return Ok(self.lease(key)),
                Some((owner, revision)) => {
                    if let Some(node) = self.live_owner(&owner) {
                        return Ok(Owner::Node(node));
                    }
                    // The owner is gone: take over, unless someone else does first.
                    if self.store.replace_singleton(key, &mine, revision).await.map_err(fail)? {
                        tracing::info!(key, previous = %owner, "took over a singleton of a lost cluster node");
                        let took = Msg::Took { key: key.to_string(), from: owner };
                        let b = Envelope { from: self.me.to_string(), inc: self.inc, msg: took }.encode();
                        if let Err(e) = self.client.publish(self.dir_subject.clone(), b).await {
                            tracing::warn!(error = %e, "cannot announce a singleton takeover");
                        }
                        return Ok(self.lease(key));
                    }
                }
                None => {
                    if self.store.create_singleton(key, &mine).await.map_err(fail)? {
                        return Ok(self.lease(key));
                    }
                }
            }
        }
        Err(format!("singleton {key}: ownership keeps changing"))
    }

    async fn release(&self, key: &str) {
        if self.held.lock().remove(key).is_none() {
            return;
        }
        if let Err(e) = self.store.delete_singleton(key, &self.my_value()).await {
            tracing::warn!(key, error = %e, "cannot release a singleton (it passes on when this node is gone)");
        }
    }
}
