//! The router's side of a cluster: other nodes' sessions enter and leave the
//! table here, and what other nodes forward is delivered here. Called by the
//! cluster transport (`meerkat-cluster`), never on a single node.

use std::sync::Arc;

use meerkat_core::cluster::{Forward, MsgTarget, NodeName};
use meerkat_core::{ServerContext, SessionId, SessionMsg};
use meerkat_stanza::{FullJid, Jid, Stanza};
use meerkat_xml::Element;

use crate::deliver::LocalRouter;
use crate::table::Entry;

impl LocalRouter {
    /// Another node bound a session. If this node holds an older session of the
    /// same full JID, that one is told to close (`conflict`); if it holds a newer
    /// one, the other node closes its own and nothing changes here.
    pub fn remote_added(&self, node: NodeName, jid: FullJid, id: SessionId, since: u64) {
        if let Ok(Some(older)) = self.table().insert_remote(id, jid, node, since) {
            let _ = older.mailbox.try_send(SessionMsg::Replaced);
        }
    }

    /// A session of another node ended.
    pub fn remote_removed(&self, jid: &FullJid, id: SessionId) {
        self.table().remove(jid, id);
    }

    /// A session of another node changed its presence.
    pub fn remote_presence(&self, jid: &FullJid, id: SessionId, priority: i8, presence: Option<Arc<Element>>) {
        self.table().set_presence(jid, id, priority, presence);
    }

    /// Forgets every session of a node that is gone (or restarted); returns them,
    /// so their contacts can be told they went offline.
    pub fn remove_node(&self, node: &str) -> Vec<Entry> {
        self.table().remove_node(node)
    }

    /// Delivers what another node forwarded to a session here, without waiting.
    /// A stanza whose session is gone (or could not take it) and that may fall
    /// back is given back: pass it to [`Self::route_fallback`], which may wait
    /// for storage (offline messages).
    pub fn deliver_forwarded(&self, what: Forward) -> Option<(FullJid, Stanza, u8)> {
        match what {
            Forward::Stanza { to, stanza, fallback, hops } => {
                let local = self.table().with_session(&to, |e| e.local().cloned()).flatten();
                let back = match local {
                    Some(h) => match self.try_deliver_local(&h, stanza) {
                        Ok(()) => return None,
                        Err(back) => back,
                    },
                    None => stanza,
                };
                fallback.then_some((to, back, hops))
            }
            // The cluster transport hands these to the services itself, in order.
            Forward::Service { .. } => None,
            Forward::Msg { to: MsgTarget::Session(jid, id), msg } => {
                let h = self.table().with_session(&jid, |e| e.local().filter(|h| h.id == id).cloned()).flatten();
                if let Some(h) = h {
                    let _ = h.mailbox.try_send(msg);
                }
                None
            }
            Forward::Msg { to: MsgTarget::User(bare), msg } => {
                let handles: Vec<_> =
                    self.table().with_user(bare.as_str(), |l| l.iter().filter_map(|e| e.local().cloned()).collect());
                let mut msg = Some(msg);
                let n = handles.len();
                for (i, h) in handles.into_iter().enumerate() {
                    let m = if i + 1 == n { msg.take() } else { msg.clone() };
                    if let Some(m) = m {
                        let _ = h.mailbox.try_send(m);
                    }
                }
                None
            }
        }
    }

    /// The rules for a stanza to a resource that is not connected (another
    /// resource or offline storage for a message, an error for an IQ), for a
    /// stanza another node forwarded here or that could not reach a lost node.
    pub async fn route_fallback(&self, ctx: &ServerContext, to: FullJid, st: Stanza, hops: u8) {
        self.route_forwarded(ctx, Jid::from(to), st, hops).await;
    }
}
