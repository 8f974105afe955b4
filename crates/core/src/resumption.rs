//! Stream resumption (XEP-0198 §5) bookkeeping: which resumable sessions exist,
//! who owns each right now, and the `h` of sessions that timed out (MongooseIM's
//! "stale_h"), so a late resume attempt can still learn what arrived.
//!
//! A resumable session registers a takeover channel under its resumption id. A
//! new connection that resumes sends a [`Takeover`] through it; the task that
//! currently owns the session (still connected or detached) hands the whole
//! session state over and ends. The state travels as `Box<dyn Any + Send>` since
//! its type lives in the stream crate. This registry is the piece a cluster
//! backs with shared storage so a resume can succeed on another node.

use std::any::Any;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use meerkat_stanza::BareJid;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

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

    /// Number of resumable sessions.
    pub fn len(&self) -> usize {
        self.live.lock().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
