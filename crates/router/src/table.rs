//! The session table: bare JID → that user's sessions on this node, sharded.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use meerkat_core::router::{SessionHandle, SessionInfo};
use meerkat_core::SessionId;
use meerkat_stanza::{BareJid, FullJid};
use meerkat_xml::Element;
use parking_lot::RwLock;

const SHARDS: usize = 64;

/// One session's row.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Mailbox and identity.
    pub handle: SessionHandle,
    /// Current priority.
    pub priority: i8,
    /// Current available presence.
    pub presence: Option<Arc<Element>>,
}

impl Entry {
    fn info(&self) -> SessionInfo {
        SessionInfo {
            id: self.handle.id,
            jid: self.handle.jid.clone(),
            priority: self.priority,
            presence: self.presence.clone(),
        }
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
    count: AtomicUsize,
}

impl Default for SessionTable {
    fn default() -> Self {
        Self::new()
    }
}

impl SessionTable {
    /// An empty table.
    pub fn new() -> Self {
        SessionTable { shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(), count: AtomicUsize::new(0) }
    }

    fn shard(&self, bare: &str) -> &Shard {
        let mut h = DefaultHasher::new();
        bare.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    /// Inserts a session; returns the entry it replaced (same resource).
    pub fn insert(&self, handle: SessionHandle) -> Option<SessionHandle> {
        let bare = bare_str(&handle.jid);
        let mut shard = self.shard(bare).write();
        let list = shard.entry(bare.into()).or_default();
        let entry = Entry { handle, priority: 0, presence: None };
        if let Some(pos) = list.iter().position(|e| e.handle.jid == entry.handle.jid) {
            let old = std::mem::replace(&mut list[pos], entry);
            Some(old.handle)
        } else {
            list.push(entry);
            self.count.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Removes a session if the row still belongs to `id`.
    pub fn remove(&self, jid: &FullJid, id: SessionId) {
        let bare = bare_str(jid);
        let mut shard = self.shard(bare).write();
        if let Some(list) = shard.get_mut(bare) {
            if let Some(pos) = list.iter().position(|e| e.handle.id == id) {
                list.swap_remove(pos);
                self.count.fetch_sub(1, Ordering::Relaxed);
            }
            if list.is_empty() {
                shard.remove(bare);
            }
        }
    }

    /// Updates presence and priority.
    pub fn set_presence(&self, jid: &FullJid, id: SessionId, priority: i8, presence: Option<Arc<Element>>) {
        let bare = bare_str(jid);
        let mut shard = self.shard(bare).write();
        if let Some(e) = shard.get_mut(bare).and_then(|l| l.iter_mut().find(|e| e.handle.id == id)) {
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

    /// The handle of one full JID.
    pub fn get(&self, jid: &FullJid) -> Option<SessionHandle> {
        self.with_user(bare_str(jid), |l| l.iter().find(|e| &e.handle.jid == jid).map(|e| e.handle.clone()))
    }

    /// Runs `f` on one session's row under the shard's read lock, without cloning
    /// its handle (the hot path: a message to a full JID). `None` if absent.
    pub fn with_session<R>(&self, jid: &FullJid, f: impl FnOnce(&Entry) -> R) -> Option<R> {
        self.with_user(bare_str(jid), |l| l.iter().find(|e| &e.handle.jid == jid).map(f))
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
