//! The router's handle on the cluster task: every call queues work and returns.

use std::sync::Arc;

use meerkat_core::cluster::{ClusterLink, Forward, NodeName};
use meerkat_core::SessionId;
use meerkat_stanza::FullJid;
use meerkat_xml::Element;
use tokio::sync::mpsc;

/// Work for the cluster task.
pub(crate) enum Work {
    /// A local session was bound.
    Added { jid: FullJid, id: SessionId, since: u64 },
    /// A local session ended.
    Removed { jid: FullJid, id: SessionId },
    /// A local session's presence changed.
    Presence { jid: FullJid, id: SessionId, priority: i8, presence: Option<Arc<Element>> },
    /// Something for another node.
    Forward { node: NodeName, what: Forward },
}

/// [`ClusterLink`] over the cluster task's channel.
pub struct NatsLink {
    node: NodeName,
    tx: mpsc::UnboundedSender<Work>,
}

impl NatsLink {
    pub(crate) fn new(node: NodeName, tx: mpsc::UnboundedSender<Work>) -> Self {
        NatsLink { node, tx }
    }

    fn push(&self, w: Work) {
        // The task ends only at shutdown, after the sessions; a change after that
        // has no one left to tell.
        let _ = self.tx.send(w);
    }
}

impl ClusterLink for NatsLink {
    fn node(&self) -> &NodeName {
        &self.node
    }

    fn session_added(&self, jid: &FullJid, id: SessionId, since: u64) {
        self.push(Work::Added { jid: jid.clone(), id, since });
    }

    fn session_removed(&self, jid: &FullJid, id: SessionId) {
        self.push(Work::Removed { jid: jid.clone(), id });
    }

    fn presence_changed(&self, jid: &FullJid, id: SessionId, priority: i8, presence: Option<&Arc<Element>>) {
        self.push(Work::Presence { jid: jid.clone(), id, priority, presence: presence.cloned() });
    }

    fn forward(&self, node: &NodeName, what: Forward) {
        self.push(Work::Forward { node: node.clone(), what });
    }
}
