//! Stream resumption (XEP-0198 §5) bookkeeping: which resumable sessions exist,
//! who owns each right now, and the `h` of sessions that timed out (MongooseIM's
//! "stale_h"), so a late resume attempt can still learn what arrived.
//!
//! A resumable session registers a takeover channel under its resumption id. A
//! new connection that resumes sends a [`Takeover`] through it; the task that
//! currently owns the session (still connected or detached) hands the whole
//! session state over and ends. The state travels as `Box<dyn Any + Send>` since
//! its type lives in the stream crate. In a cluster, an id this node does not
//! know is asked of the other nodes ([`RemoteResumptions`]); the node that holds
//! it hands the session over as a [`MovedSession`] ([`SessionMover`]).

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use meerkat_stanza::{BareJid, FullJid};
use meerkat_xml::Element;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::context::ServerContext;

/// A resumable session handed from the node that held it to the node where its
/// client came back (XEP-0198 resumption across a cluster): what the new node
/// needs to bind the same full JID and go on where the old stream stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct MovedSession {
    /// The session's full JID.
    pub jid: FullJid,
    /// Stanzas received from the client (its `h`).
    pub inbound: u32,
    /// Stanzas sent to the client.
    pub outbound: u32,
    /// Sent and not acknowledged, oldest first (sent again on resumption).
    pub unacked: Vec<Element>,
    /// Stanzas that reached the session and were not sent yet.
    pub pending: Vec<Element>,
    /// The last available presence (`None`: unavailable).
    pub presence: Option<Element>,
    /// Its priority.
    pub priority: i8,
    /// Entities that got directed presence (they get unavailable at the end).
    pub directed: Vec<String>,
    /// Modules' state of the session ([`crate::hooks::SessionHooks::export_state`]):
    /// carbons enabled, client state, blocklist pushes requested.
    pub state: Vec<Element>,
}

/// What a resumption id is, wherever it was found.
#[derive(Debug)]
pub enum Found {
    /// A live or detached session, now handed over.
    Moved(Box<MovedSession>),
    /// The session timed out; this many stanzas from the client were handled.
    Stale(u32),
    /// Unknown id, or another user's.
    Unknown,
}

/// Hands a resumable session of this node over as a [`MovedSession`], ending it
/// here without telling anyone it went away (the stream crate implements it).
#[async_trait::async_trait]
pub trait SessionMover: Send + Sync + 'static {
    /// Takes the session with resumption id `id` of `user` from this node.
    async fn take(&self, ctx: &ServerContext, id: &str, user: &BareJid) -> Found;
}

/// Asks the other cluster nodes for a resumption id this node does not know
/// (the cluster transport implements it).
#[async_trait::async_trait]
pub trait RemoteResumptions: Send + Sync + 'static {
    /// The session with resumption id `id` of `user`, taken from the node that holds it.
    async fn find(&self, id: &str, user: &BareJid) -> Found;
}

/// A request to hand a session over to a new connection.
pub struct Takeover {
    /// Where to send the session state.
    pub reply: oneshot::Sender<Box<dyn Any + Send>>,
}

/// What a resume attempt found.
pub enum Lookup {
    /// A live (or detached) session of that user: ask its owner to hand it over.
    Live(mpsc::Sender<Takeover>),
    /// The session timed out; this many stanzas from the client were handled.
    Stale(u32),
    /// Unknown id, or another user's.
    Unknown,
}

/// The registry, one per server.
#[derive(Default)]
pub struct Resumptions {
    live: Mutex<HashMap<String, (BareJid, mpsc::Sender<Takeover>)>>,
    stale: Mutex<HashMap<String, (BareJid, u32, Instant)>>,
    mover: OnceLock<Arc<dyn SessionMover>>,
    remote: OnceLock<Arc<dyn RemoteResumptions>>,
}

impl Resumptions {
    /// Registers (or re-registers after a takeover) a resumable session.
    pub fn register(&self, id: &str, user: &BareJid, tx: mpsc::Sender<Takeover>) {
        self.live.lock().insert(id.to_string(), (user.clone(), tx));
    }

    /// Forgets a session that ended; keeps its `h` for `stale_for` when given.
    pub fn remove(&self, id: &str, stale: Option<(u32, Duration)>) {
        let entry = self.live.lock().remove(id);
        if let (Some((user, _)), Some((h, ttl))) = (entry, stale) {
            let mut st = self.stale.lock();
            let now = Instant::now();
            st.retain(|_, (_, _, until)| *until > now);
            st.insert(id.to_string(), (user, h, now + ttl));
        }
    }

    /// Finds a session to resume for `user` (§5: only the same account).
    pub fn lookup(&self, id: &str, user: &BareJid) -> Lookup {
        if let Some((owner, tx)) = self.live.lock().get(id) {
            return if owner == user { Lookup::Live(tx.clone()) } else { Lookup::Unknown };
        }
        match self.stale.lock().get(id) {
            Some((owner, h, until)) if owner == user && *until > Instant::now() => Lookup::Stale(*h),
            _ => Lookup::Unknown,
        }
    }

    /// Sets how this node hands its sessions over (once, at start).
    pub fn set_mover(&self, m: Arc<dyn SessionMover>) {
        let _ = self.mover.set(m);
    }

    /// How this node hands its sessions over to another node.
    pub fn mover(&self) -> Option<&Arc<dyn SessionMover>> {
        self.mover.get()
    }

    /// Sets how other nodes are asked for resumption ids (once, on joining a cluster).
    pub fn set_remote(&self, r: Arc<dyn RemoteResumptions>) {
        let _ = self.remote.set(r);
    }

    /// The other nodes' resumable sessions, in a cluster.
    pub fn remote(&self) -> Option<&Arc<dyn RemoteResumptions>> {
        self.remote.get()
    }

    /// Number of resumable sessions.
    pub fn len(&self) -> usize {
        self.live.lock().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
