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
