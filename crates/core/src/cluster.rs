//! What the router needs from a cluster transport, so the router stays free of
//! any network code: [`ClusterLink`] carries stanzas and session messages to
//! sessions on other nodes and tells the other nodes about this node's sessions.
//! `meerkat-cluster` implements it over NATS; a single node has no link at all.

use std::sync::Arc;

use meerkat_stanza::{BareJid, FullJid, Stanza};
use meerkat_xml::Element;

use crate::session::{SessionId, SessionMsg};

/// A node's name (`[cluster] node_name`), shared cheaply.
pub type NodeName = Arc<str>;

/// Who a forwarded [`SessionMsg`] is for.
#[derive(Debug, Clone)]
pub enum MsgTarget {
    /// One session.
    Session(FullJid, SessionId),
    /// Every session of the user on the receiving node.
    User(BareJid),
}

/// What travels to another node.
#[derive(Debug)]
pub enum Forward {
    /// A stanza for the session `to` on that node, already stamped by the
    /// delivery hooks. `fallback`: when that session is gone there, the
    /// receiving node applies the RFC 6121 §8.5.3.2 rules for a stanza to a
    /// resource that is not connected (another resource, offline storage, an
    /// error); without it the stanza is dropped (it was one copy of a bare-JID
    /// delivery that other resources took). `hops` counts forwards, so two nodes
    /// with a momentarily different view of a session cannot bounce a stanza
    /// between them.
    Stanza {
        /// The session it is for.
        to: FullJid,
        /// The stanza.
        stanza: Stanza,
        /// Apply the missing-resource rules there if the session is gone.
        fallback: bool,
        /// Forwards so far (0 for the first).
        hops: u8,
    },
    /// A stanza for an entity of a service (a MUC room) that the receiving
    /// node runs: it goes to that node's service for the stanza's domain, in the
    /// order sent. `hops` counts forwards as for [`Forward::Stanza`].
    Service {
        /// The stanza.
        stanza: Stanza,
        /// Forwards so far, this one included.
        hops: u8,
    },
    /// A session message (an event, `Replaced`, a kick).
    Msg {
        /// Who it is for.
        to: MsgTarget,
        /// The message.
        msg: SessionMsg,
    },
}

/// The router's side of the cluster transport.
pub trait ClusterLink: Send + Sync + 'static {
    /// This node's name.
    fn node(&self) -> &NodeName;
    /// A session bound here (`since`: microseconds since the epoch, which
    /// decides between two sessions of one full JID bound on two nodes at once:
    /// the older one is replaced).
    fn session_added(&self, jid: &FullJid, id: SessionId, since: u64);
    /// A session of this node ended.
    fn session_removed(&self, jid: &FullJid, id: SessionId);
    /// A session of this node changed its presence.
    fn presence_changed(&self, jid: &FullJid, id: SessionId, priority: i8, presence: Option<&Arc<Element>>);
    /// Sends something to a session (or user) on another node. Never blocks.
    fn forward(&self, node: &NodeName, what: Forward);
}

/// Who owns a cluster-wide singleton.
#[derive(Debug)]
pub enum Owner {
    /// This node: run it here. The lease resolves [`Lease::lost`] if another
    /// node takes the singleton over (this node was taken for lost, e.g. during a
    /// network partition): stop running it then.
    Me(Lease),
    /// Another node, alive: send it there.
    Node(NodeName),
}

/// This node's ownership of one singleton.
#[derive(Debug)]
pub struct Lease {
    lost: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Lease {
    /// A lease that `lost` turns to `true` when another node takes over.
    pub fn new(lost: tokio::sync::watch::Receiver<bool>) -> Self {
        Lease { lost: Some(lost) }
    }

    /// A lease no one can take over (a single node).
    pub fn never_lost() -> Self {
        Lease { lost: None }
    }

    /// Resolves when another node took the singleton over (never, for a
    /// single node's lease).
    pub async fn lost(&mut self) {
        match &mut self.lost {
            Some(rx) => {
                if rx.wait_for(|l| *l).await.is_err() {
                    // The cluster task ended (shutdown): nobody takes over now.
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }

    /// Whether another node took the singleton over.
    pub fn is_lost(&self) -> bool {
        self.lost.as_ref().is_some_and(|rx| *rx.borrow())
    }
}

/// Cluster-wide singletons (MUC rooms): one owner at a time, by key. Ownership
/// is claimed on demand: the first node to claim a free key owns it; a key whose
/// owner node is lost (or restarted) goes to the next node that claims it, which
/// then rebuilds the singleton's state from storage.
#[async_trait::async_trait]
pub trait Singletons: Send + Sync + 'static {
    /// The owner of `key`, claiming it for this node if it is free or its owner
    /// is gone.
    async fn claim(&self, key: &str) -> Result<Owner, String>;
    /// Gives up this node's ownership of `key` (the singleton stopped here).
    async fn release(&self, key: &str);
}

/// The single-node [`Singletons`]: this node owns everything.
#[derive(Debug, Default)]
pub struct LocalSingletons;

#[async_trait::async_trait]
impl Singletons for LocalSingletons {
    async fn claim(&self, _key: &str) -> Result<Owner, String> {
        Ok(Owner::Me(Lease::never_lost()))
    }

    async fn release(&self, _key: &str) {}
}
