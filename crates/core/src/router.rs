//! The routing interface (RFC 6120 §10, RFC 6121 §8): everything on the stanza path
//! sends through a [`Router`]. `meerkat-router` implements it for one node; a cluster
//! transport implements the same interface to reach sessions on other nodes, so
//! modules and sessions never know where a user is connected.

use std::sync::Arc;

use meerkat_stanza::{BareJid, FullJid, Stanza};
use meerkat_xml::Element;
use tokio::sync::mpsc;

use crate::context::ServerContext;
use crate::session::{SessionId, SessionMsg};

/// What the session table knows about one session of a user.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// Session id.
    pub id: SessionId,
    /// Full JID.
    pub jid: FullJid,
    /// Priority of its current presence.
    pub priority: i8,
    /// Its current available presence (`None` = bound but not available).
    pub presence: Option<Arc<Element>>,
}

/// A session's registration in the table.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    /// Session id.
    pub id: SessionId,
    /// Full JID.
    pub jid: FullJid,
    /// The session's bounded mailbox.
    pub mailbox: mpsc::Sender<SessionMsg>,
    /// Raised when the mailbox overflowed: the session must close
    /// (`policy-violation`), since it cannot receive the kick through the mailbox.
    pub overflow: Arc<Overflow>,
}

/// A session's overflow signal: raised by whoever found its mailbox full, seen by
/// the session before it next waits for its mailbox.
///
/// No wake-up goes with it: a full mailbox holds messages, so its session was
/// woken by the first of them and will look at the flag when it comes back for
/// more. (Should it empty the mailbox between the failed send and the flag, it is
/// keeping up after all, and closes on its next message; the stanza that did not
/// fit was handled by the router as undeliverable either way.) The session's wait
/// is then one channel, not a channel and a `Notify` (whose waiter list is locked
/// at every poll).
#[derive(Debug, Default)]
pub struct Overflow(std::sync::atomic::AtomicBool);

impl Overflow {
    /// The mailbox is full: the session must close.
    pub fn raise(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether the signal was raised since the last call (which lowers it).
    pub fn take(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire) && self.0.swap(false, std::sync::atomic::Ordering::AcqRel)
    }
}

/// The routing interface.
#[async_trait::async_trait]
pub trait Router: Send + Sync + 'static {
    /// Delivers a stanza whose `from` and `to` are set (a missing `to` means the
    /// sender's own account). Applies RFC 6121 §8 delivery rules for local users,
    /// answers for the server itself, bounces with the RFC error otherwise.
    async fn route(&self, ctx: &ServerContext, stanza: Stanza);
    /// Registers a bound session. Returns the session it replaced (same full JID),
    /// which the caller must tell to close with `conflict`.
    fn register(&self, handle: SessionHandle) -> Option<SessionHandle>;
    /// Removes a session, if the table still holds this id for that JID.
    fn unregister(&self, jid: &FullJid, id: SessionId);
    /// Records a session's presence (`None` = unavailable) and priority.
    fn set_presence(&self, jid: &FullJid, id: SessionId, priority: i8, presence: Option<Arc<Element>>);
    /// Every session of a user.
    fn sessions(&self, bare: &BareJid) -> Vec<SessionInfo>;
    /// Sends a message to one session's mailbox. `false` if there is no such session
    /// or its mailbox overflowed (then the session is told to close).
    fn send(&self, jid: &FullJid, msg: SessionMsg) -> bool;
    /// Sends a message to every session of a user; returns how many took it.
    fn send_all(&self, bare: &BareJid, msg: &dyn Fn() -> SessionMsg) -> usize;
    /// Sends a stanza for a service entity (a MUC room) to the cluster node
    /// that runs it, where it reaches the service of its domain. Gives it back
    /// on a single node.
    #[allow(clippy::result_large_err)] // the error gives the stanza back, by design
    fn forward_to_node(&self, node: &crate::cluster::NodeName, st: Stanza, hops: u8) -> Result<(), Stanza>;
    /// Number of sessions on this node.
    fn session_count(&self) -> usize;
    /// Number of sessions of one user (cheap: no copies).
    fn user_session_count(&self, bare: &BareJid) -> usize;
}
