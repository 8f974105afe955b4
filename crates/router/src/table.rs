//! The session table: bare JID → that user's sessions, sharded. In a cluster it
//! also holds the sessions of the other nodes (their location and presence), so
//! the delivery rules see all of a user's resources at once.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use meerkat_core::cluster::NodeName;
use meerkat_core::router::{SessionHandle, SessionInfo};
use meerkat_core::SessionId;
use meerkat_stanza::{BareJid, FullJid};
use meerkat_xml::Element;
use parking_lot::RwLock;

const SHARDS: usize = 64;

/// Where a session is connected.
#[derive(Debug, Clone)]
pub enum Location {
    /// On this node: its mailbox.
    Local(SessionHandle),
    /// On another node of the cluster.
    Remote {
        /// Session id (cluster-unique).
        id: SessionId,
        /// Full JID.
        jid: FullJid,
        /// The node it is on.
        node: NodeName,
    },
}

/// One session's row.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Where the session is.
    pub at: Location,
    /// Current priority.
    pub priority: i8,
    /// Current available presence.
    pub presence: Option<Arc<Element>>,
    /// When it was bound (microseconds since the epoch): of two sessions of one
    /// full JID on two nodes, the older is replaced.
    pub since: u64,
}

impl Entry {
    /// Session id.
    pub fn id(&self) -> SessionId {
        match &self.at {
            Location::Local(h) => h.id,
            Location::Remote { id, .. } => *id,
        }
    }

    /// Full JID.
    pub fn jid(&self) -> &FullJid {
        match &self.at {
            Location::Local(h) => &h.jid,
            Location::Remote { jid, .. } => jid,
        }
    }

    /// The handle of a session on this node.
    pub fn local(&self) -> Option<&SessionHandle> {
        match &self.at {
            Location::Local(h) => Some(h),
            Location::Remote { .. } => None,
        }
    }

    fn info(&self) -> SessionInfo {
        SessionInfo { id: self.id(), jid: self.jid().clone(), priority: self.priority, presence: self.presence.clone() }
    }
}

/// The bare part of a full JID without allocating: a normalised localpart and
/// domain never contain '/', so the bare JID ends at the first one.
pub fn bare_str(jid: &FullJid) -> &str {
    let s = jid.as_str();
    &s[..s.find('/').unwrap_or(s.len())]
}

/// One shard: bare JID → that user's sessions.
type Shard = RwLock<HashMap<Box<str>, Vec<Entry>>>;

/// The sharded table.
pub struct SessionTable {
    shards: Box<[Shard]>,
    /// Sessions on this node (remote rows are not counted).
    local: AtomicUsize,
}

impl Default for SessionTable {
    fn default() -> Self {
        Self::new()
    }
}

impl SessionTable {
    /// An empty table.
    pub fn new() -> Self {
        SessionTable { shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(), local: AtomicUsize::new(0) }
    }

    fn shard(&self, bare: &str) -> &Shard {
        let mut h = DefaultHasher::new();
        bare.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    /// Inserts a session of this node; returns the entry it replaced (same
    /// resource, here or on another node).
    pub fn insert(&self, handle: SessionHandle, since: u64) -> Option<Entry> {
        let bare = bare_str(&handle.jid);
        let mut shard = self.shard(bare).write();
        let list = shard.entry(bare.into()).or_default();
        let entry = Entry { at: Location::Local(handle), priority: 0, presence: None, since };
        self.local.fetch_add(1, Ordering::Relaxed);
        if let Some(pos) = list.iter().position(|e| e.jid() == entry.jid()) {
            let old = std::mem::replace(&mut list[pos], entry);
            if old.local().is_some() {
                self.local.fetch_sub(1, Ordering::Relaxed);
            }
            Some(old)
        } else {
            list.push(entry);
            None
        }
    }

    /// Inserts a session of another node. When this node holds a session of the
    /// same full JID, the older of the two gives way: a newer local session keeps
    /// its place (`Err(())`: the other node replaces its own), an older one is
    /// removed and returned so the caller can tell it to close.
    #[allow(clippy::result_unit_err)]
    pub fn insert_remote(
        &self,
        id: SessionId,
        jid: FullJid,
        node: NodeName,
        since: u64,
    ) -> Result<Option<SessionHandle>, ()> {
        let bare = bare_str(&jid).to_owned();
        let mut shard = self.shard(&bare).write();
        let list = shard.entry(bare.into_boxed_str()).or_default();
        let entry = Entry { at: Location::Remote { id, jid, node }, priority: 0, presence: None, since };
        let Some(pos) = list.iter().position(|e| e.jid() == entry.jid()) else {
            list.push(entry);
            return Ok(None);
        };
        match &list[pos].at {
            Location::Local(_) if list[pos].since > since => Err(()),
            Location::Local(_) => {
                let old = std::mem::replace(&mut list[pos], entry);
                self.local.fetch_sub(1, Ordering::Relaxed);
                Ok(old.local().cloned())
            }
            Location::Remote { .. } => {
                list[pos] = entry;
                Ok(None)
            }
        }
    }

    /// Removes a session if the row still belongs to `id`; returns it.
    pub fn remove(&self, jid: &FullJid, id: SessionId) -> Option<Entry> {
        let bare = bare_str(jid);
        let mut shard = self.shard(bare).write();
        let list = shard.get_mut(bare)?;
        let removed = list.iter().position(|e| e.id() == id).map(|pos| list.swap_remove(pos));
        if list.is_empty() {
            shard.remove(bare);
        }
        if removed.as_ref().is_some_and(|e| e.local().is_some()) {
            self.local.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Removes every session of a node that is gone; returns them.
    pub fn remove_node(&self, node: &str) -> Vec<Entry> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.write();
            shard.retain(|_, list| {
                let mut i = 0;
                while i < list.len() {
                    if matches!(&list[i].at, Location::Remote { node: n, .. } if &**n == node) {
                        out.push(list.swap_remove(i));
                    } else {
                        i += 1;
                    }
                }
                !list.is_empty()
            });
        }
        out
    }

    /// The sessions the table holds for another node.
    pub fn node_sessions(&self, node: &str) -> Vec<(FullJid, SessionId)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            for list in shard.read().values() {
                for e in list {
                    if let Location::Remote { id, jid, node: n } = &e.at {
                        if &**n == node {
                            out.push((jid.clone(), *id));
                        }
                    }
                }
            }
        }
        out
    }

    /// Updates presence and priority.
    pub fn set_presence(&self, jid: &FullJid, id: SessionId, priority: i8, presence: Option<Arc<Element>>) {
        let bare = bare_str(jid);
        let mut shard = self.shard(bare).write();
        if let Some(e) = shard.get_mut(bare).and_then(|l| l.iter_mut().find(|e| e.id() == id)) {
            e.priority = priority;
            e.presence = presence;
        }
    }

    /// Runs `f` over a user's rows under the shard's read lock (keep `f` short and
    /// non-blocking).
    pub fn with_user<R>(&self, bare: &str, f: impl FnOnce(&[Entry]) -> R) -> R {
        let shard = self.shard(bare).read();
        f(shard.get(bare).map(Vec::as_slice).unwrap_or(&[]))
    }

    /// Snapshot of a user's sessions.
    pub fn sessions(&self, bare: &BareJid) -> Vec<SessionInfo> {
        self.with_user(bare.as_str(), |l| l.iter().map(Entry::info).collect())
    }

    /// The row of one full JID (cloned).
    pub fn get(&self, jid: &FullJid) -> Option<Entry> {
        self.with_user(bare_str(jid), |l| l.iter().find(|e| e.jid() == jid).cloned())
    }

    /// Runs `f` on one session's row under the shard's read lock, without cloning
    /// its handle (the hot path: a message to a full JID). `None` if absent.
    pub fn with_session<R>(&self, jid: &FullJid, f: impl FnOnce(&Entry) -> R) -> Option<R> {
        self.with_user(bare_str(jid), |l| l.iter().find(|e| e.jid() == jid).map(f))
    }

    /// Number of sessions on this node.
    pub fn len(&self) -> usize {
        self.local.load(Ordering::Relaxed)
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
