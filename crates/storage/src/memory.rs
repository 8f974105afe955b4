//! An in-memory backend: every store kept in ordinary maps behind one
//! `parking_lot::Mutex`.
//!
//! It is meant for tests and for throw-away servers: nothing survives a restart. One
//! lock over all maps keeps multi-store operations (`delete_user` cascading into every
//! store) atomic, and is never held across an `.await` (every method locks, works and
//! unlocks synchronously). Its semantics are the reference the SQL backends are held to
//! by [`crate::conformance::run`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::{
    Account, ArchiveEntry, ArchivePage, ArchivePrefs, ArchiveQuery, ArchiveStore, ArchivedMessage, AuthStore,
    BlockingStore, Error, LastActivity, LastStore, OfflineMessage, OfflineStore, Result, Roster, RosterItem,
    RosterStore, StoredCredentials, Stores, XmlStore,
};
use crate::{Direction, PageFrom};
use crate::{MucStore, RoomAffiliation, StoredRoom};

/// A room's affiliations by JID.
type Affiliations = BTreeMap<String, RoomAffiliation>;

/// Map key of an account: `(domain, user)`, so that one domain's users form a
/// contiguous, sorted range of a `BTreeMap`.
type Key = (String, String);

fn key(acc: Account<'_>) -> Key {
    (acc.domain.to_owned(), acc.user.to_owned())
}

/// One account's roster.
#[derive(Default)]
struct RosterData {
    version: u64,
    items: BTreeMap<String, RosterItem>,
}

/// Everything the store holds.
#[derive(Default)]
struct Inner {
    users: BTreeMap<Key, StoredCredentials>,
    rosters: HashMap<Key, RosterData>,
    offline: HashMap<Key, Vec<OfflineMessage>>,
    /// Last offline id handed out (ids are global, hence increasing per account).
    offline_seq: i64,
    /// `(kind, key) -> xml` per account.
    xml: HashMap<Key, HashMap<(String, String), String>>,
    blocking: HashMap<Key, BTreeSet<String>>,
    last: HashMap<Key, LastActivity>,
    archive: HashMap<Key, BTreeMap<i64, ArchivedMessage>>,
    archive_prefs: HashMap<Key, ArchivePrefs>,
    singletons: HashMap<String, (String, i64)>,
    /// `(service, room)` → configuration and affiliations by JID.
    rooms: BTreeMap<Key, (String, Affiliations)>,
}

/// The in-memory backend; implements every storage trait.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

/// A [`Stores`] bundle backed by a fresh, empty [`MemoryStore`].
pub fn stores() -> Stores {
    Stores::from_backend("memory", Arc::new(MemoryStore::new()))
}

#[async_trait::async_trait]
impl AuthStore for MemoryStore {
    async fn create_user(&self, acc: Account<'_>, creds: &StoredCredentials) -> Result<()> {
        let mut inner = self.inner.lock();
        match inner.users.entry(key(acc)) {
            std::collections::btree_map::Entry::Occupied(_) => Err(Error::AlreadyExists),
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(creds.clone());
                Ok(())
            }
        }
    }

    async fn set_credentials(&self, acc: Account<'_>, creds: &StoredCredentials) -> Result<()> {
        let mut inner = self.inner.lock();
        match inner.users.get_mut(&key(acc)) {
            Some(c) => {
                *c = creds.clone();
                Ok(())
            }
            None => Err(Error::NotFound),
        }
    }

    async fn get_credentials(&self, acc: Account<'_>) -> Result<Option<StoredCredentials>> {
        Ok(self.inner.lock().users.get(&key(acc)).cloned())
    }

    async fn delete_user(&self, acc: Account<'_>) -> Result<bool> {
        let k = key(acc);
        let mut inner = self.inner.lock();
        let existed = inner.users.remove(&k).is_some();
        inner.rosters.remove(&k);
        inner.offline.remove(&k);
        inner.xml.remove(&k);
        inner.blocking.remove(&k);
        inner.last.remove(&k);
        inner.archive.remove(&k);
        inner.archive_prefs.remove(&k);
        Ok(existed)
    }

    async fn list_users(&self, domain: &str) -> Result<Vec<String>> {
        let inner = self.inner.lock();
        let start = (domain.to_owned(), String::new());
        Ok(inner.users.range(start..).take_while(|((d, _), _)| d == domain).map(|((_, u), _)| u.clone()).collect())
    }

    async fn user_exists(&self, acc: Account<'_>) -> Result<bool> {
        Ok(self.inner.lock().users.contains_key(&key(acc)))
    }
}

#[async_trait::async_trait]
impl RosterStore for MemoryStore {
    async fn get_roster(&self, acc: Account<'_>) -> Result<Roster> {
        let inner = self.inner.lock();
        Ok(match inner.rosters.get(&key(acc)) {
            Some(r) => Roster { version: r.version, items: r.items.values().cloned().collect() },
            None => Roster::default(),
        })
    }

    async fn get_item(&self, acc: Account<'_>, jid: &str) -> Result<Option<RosterItem>> {
        let inner = self.inner.lock();
        Ok(inner.rosters.get(&key(acc)).and_then(|r| r.items.get(jid).cloned()))
    }

    async fn put_item(&self, acc: Account<'_>, item: &RosterItem) -> Result<u64> {
        let mut inner = self.inner.lock();
        let r = inner.rosters.entry(key(acc)).or_default();
        r.items.insert(item.jid.clone(), item.clone());
        r.version += 1;
        Ok(r.version)
    }

    async fn delete_item(&self, acc: Account<'_>, jid: &str) -> Result<Option<u64>> {
        let mut inner = self.inner.lock();
        let Some(r) = inner.rosters.get_mut(&key(acc)) else {
            return Ok(None);
        };
        if r.items.remove(jid).is_none() {
            return Ok(None);
        }
        r.version += 1;
        Ok(Some(r.version))
    }
}

#[async_trait::async_trait]
impl OfflineStore for MemoryStore {
    async fn push(&self, acc: Account<'_>, stored_at_ms: i64, stanza: &str, limit: usize) -> Result<bool> {
        let mut inner = self.inner.lock();
        let k = key(acc);
        if inner.offline.get(&k).map_or(0, Vec::len) >= limit {
            return Ok(false);
        }
        inner.offline_seq += 1;
        let id = inner.offline_seq;
        inner.offline.entry(k).or_default().push(OfflineMessage { id, stored_at_ms, stanza: stanza.to_owned() });
        Ok(true)
    }

    async fn fetch(&self, acc: Account<'_>, max: usize) -> Result<Vec<OfflineMessage>> {
        let inner = self.inner.lock();
        Ok(inner.offline.get(&key(acc)).map(|q| q.iter().take(max).cloned().collect()).unwrap_or_default())
    }

    async fn remove_up_to(&self, acc: Account<'_>, up_to_id: i64) -> Result<()> {
        let mut inner = self.inner.lock();
        let k = key(acc);
        if let Some(q) = inner.offline.get_mut(&k) {
            q.retain(|m| m.id > up_to_id);
            if q.is_empty() {
                inner.offline.remove(&k);
            }
        }
        Ok(())
    }

    async fn count(&self, acc: Account<'_>) -> Result<usize> {
        Ok(self.inner.lock().offline.get(&key(acc)).map_or(0, Vec::len))
    }
}

#[async_trait::async_trait]
impl XmlStore for MemoryStore {
    async fn get_xml(&self, acc: Account<'_>, kind: &str, key_: &str) -> Result<Option<String>> {
        let inner = self.inner.lock();
        Ok(inner.xml.get(&key(acc)).and_then(|m| m.get(&(kind.to_owned(), key_.to_owned())).cloned()))
    }

    async fn set_xml(&self, acc: Account<'_>, kind: &str, key_: &str, xml: &str) -> Result<()> {
        let mut inner = self.inner.lock();
        inner.xml.entry(key(acc)).or_default().insert((kind.to_owned(), key_.to_owned()), xml.to_owned());
        Ok(())
    }

    async fn delete_xml(&self, acc: Account<'_>, kind: &str, key_: &str) -> Result<()> {
        let mut inner = self.inner.lock();
        let k = key(acc);
        if let Some(m) = inner.xml.get_mut(&k) {
            m.remove(&(kind.to_owned(), key_.to_owned()));
            if m.is_empty() {
                inner.xml.remove(&k);
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl BlockingStore for MemoryStore {
    async fn blocklist(&self, acc: Account<'_>) -> Result<Vec<String>> {
        let inner = self.inner.lock();
        Ok(inner.blocking.get(&key(acc)).map(|s| s.iter().cloned().collect()).unwrap_or_default())
    }

    async fn block(&self, acc: Account<'_>, jids: &[String]) -> Result<()> {
        if jids.is_empty() {
            return Ok(());
        }
        let mut inner = self.inner.lock();
        inner.blocking.entry(key(acc)).or_default().extend(jids.iter().cloned());
        Ok(())
    }

    async fn unblock(&self, acc: Account<'_>, jids: &[String]) -> Result<()> {
        let mut inner = self.inner.lock();
        let k = key(acc);
        if jids.is_empty() {
            inner.blocking.remove(&k);
            return Ok(());
        }
        if let Some(s) = inner.blocking.get_mut(&k) {
            for j in jids {
                s.remove(j);
            }
            if s.is_empty() {
                inner.blocking.remove(&k);
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl LastStore for MemoryStore {
    async fn set_last(&self, acc: Account<'_>, last: &LastActivity) -> Result<()> {
        self.inner.lock().last.insert(key(acc), last.clone());
        Ok(())
    }

    async fn get_last(&self, acc: Account<'_>) -> Result<Option<LastActivity>> {
        Ok(self.inner.lock().last.get(&key(acc)).cloned())
    }
}

#[async_trait::async_trait]
impl ArchiveStore for MemoryStore {
    async fn append(&self, rows: Arc<Vec<ArchiveEntry>>) -> Result<()> {
        let mut inner = self.inner.lock();
        for r in rows.iter() {
            let a = inner.archive.entry((r.domain.to_string(), r.user.to_string())).or_default();
            a.entry(r.msg.id).or_insert_with(|| r.msg.clone());
        }
        Ok(())
    }

    async fn query(&self, acc: Account<'_>, q: &ArchiveQuery) -> Result<ArchivePage> {
        let inner = self.inner.lock();
        let Some(a) = inner.archive.get(&key(acc)) else {
            return Ok(ArchivePage { rows: Vec::new(), complete: true });
        };
        if q.min_id > q.max_id {
            return Ok(ArchivePage { rows: Vec::new(), complete: true });
        }
        let matches = |m: &&ArchivedMessage| {
            q.with_jid.as_ref().is_none_or(|w| *w == m.with_jid)
                && q.with_resource.as_ref().is_none_or(|r| *r == m.with_resource)
        };
        let range = a.range(q.min_id..=q.max_id).map(|(_, m)| m);
        let mut rows: Vec<ArchivedMessage> = match q.from {
            PageFrom::Start => range.filter(matches).take(q.limit.saturating_add(1)).cloned().collect(),
            PageFrom::End => range.rev().filter(matches).take(q.limit.saturating_add(1)).cloned().collect(),
        };
        let complete = rows.len() <= q.limit;
        rows.truncate(q.limit);
        if q.from == PageFrom::End {
            rows.reverse();
        }
        Ok(ArchivePage { rows, complete })
    }

    async fn fetch_ids(&self, acc: Account<'_>, ids: &[i64]) -> Result<Vec<ArchivedMessage>> {
        let inner = self.inner.lock();
        let Some(a) = inner.archive.get(&key(acc)) else { return Ok(Vec::new()) };
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        Ok(ids.iter().filter_map(|id| a.get(id).cloned()).collect())
    }

    async fn retract(
        &self,
        acc: Account<'_>,
        with_jid: &str,
        direction: Direction,
        origin_id: &str,
        tombstone: &str,
    ) -> Result<Option<i64>> {
        let mut inner = self.inner.lock();
        let Some(a) = inner.archive.get_mut(&key(acc)) else { return Ok(None) };
        let hit = a
            .values_mut()
            .rev()
            .filter(|m| m.with_jid == with_jid)
            .take(crate::archive::RETRACT_WINDOW)
            .find(|m| m.direction == direction && m.origin_id.as_deref() == Some(origin_id));
        Ok(hit.map(|m| {
            m.stanza = tombstone.into();
            m.id
        }))
    }

    async fn get_prefs(&self, acc: Account<'_>) -> Result<Option<ArchivePrefs>> {
        Ok(self.inner.lock().archive_prefs.get(&key(acc)).cloned())
    }

    async fn set_prefs(&self, acc: Account<'_>, prefs: &ArchivePrefs) -> Result<()> {
        let mut p = prefs.clone();
        p.always.sort();
        p.always.dedup();
        p.never.sort();
        p.never.dedup();
        self.inner.lock().archive_prefs.insert(key(acc), p);
        Ok(())
    }

    async fn remove_archive(&self, acc: Account<'_>) -> Result<()> {
        let mut inner = self.inner.lock();
        inner.archive.remove(&key(acc));
        inner.archive_prefs.remove(&key(acc));
        Ok(())
    }
}

#[async_trait::async_trait]
impl crate::SingletonStore for MemoryStore {
    async fn singleton_owner(&self, key: &str) -> Result<Option<(String, i64)>> {
        Ok(self.inner.lock().singletons.get(key).cloned())
    }

    async fn create_singleton(&self, key: &str, owner: &str) -> Result<bool> {
        let mut inner = self.inner.lock();
        if inner.singletons.contains_key(key) {
            return Ok(false);
        }
        inner.singletons.insert(key.to_string(), (owner.to_string(), 1));
        Ok(true)
    }

    async fn replace_singleton(&self, key: &str, owner: &str, revision: i64) -> Result<bool> {
        let mut inner = self.inner.lock();
        match inner.singletons.get_mut(key) {
            Some(row) if row.1 == revision => {
                *row = (owner.to_string(), revision + 1);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn delete_singleton(&self, key: &str, owner: &str) -> Result<()> {
        let mut inner = self.inner.lock();
        if inner.singletons.get(key).is_some_and(|(o, _)| o == owner) {
            inner.singletons.remove(key);
        }
        Ok(())
    }
}

/// A room's affiliations as rows, sorted by JID.
fn affiliation_rows(affs: &Affiliations) -> Vec<RoomAffiliation> {
    affs.values().cloned().collect()
}

/// Applies affiliation changes (`none` removes).
fn apply_affiliations(affs: &mut Affiliations, changes: &[RoomAffiliation]) {
    for c in changes {
        if c.affiliation == "none" {
            affs.remove(&c.jid);
        } else {
            affs.insert(c.jid.clone(), c.clone());
        }
    }
}

#[async_trait::async_trait]
impl MucStore for MemoryStore {
    async fn create_room(&self, service: &str, room: &str, config: &str, affs: &[RoomAffiliation]) -> Result<()> {
        let mut inner = self.inner.lock();
        let k = (service.to_owned(), room.to_owned());
        if inner.rooms.contains_key(&k) {
            return Err(Error::AlreadyExists);
        }
        let mut map = BTreeMap::new();
        apply_affiliations(&mut map, affs);
        inner.rooms.insert(k, (config.to_owned(), map));
        Ok(())
    }

    async fn update_room(&self, service: &str, room: &str, config: &str) -> Result<()> {
        let mut inner = self.inner.lock();
        let r = inner.rooms.get_mut(&(service.to_owned(), room.to_owned())).ok_or(Error::NotFound)?;
        r.0 = config.to_owned();
        Ok(())
    }

    async fn set_affiliations(&self, service: &str, room: &str, changes: &[RoomAffiliation]) -> Result<()> {
        let mut inner = self.inner.lock();
        let r = inner.rooms.get_mut(&(service.to_owned(), room.to_owned())).ok_or(Error::NotFound)?;
        apply_affiliations(&mut r.1, changes);
        Ok(())
    }

    async fn load_room(&self, service: &str, room: &str) -> Result<Option<StoredRoom>> {
        let inner = self.inner.lock();
        Ok(inner
            .rooms
            .get(&(service.to_owned(), room.to_owned()))
            .map(|(c, a)| StoredRoom { config: c.clone(), affiliations: affiliation_rows(a) }))
    }

    async fn delete_room(&self, service: &str, room: &str) -> Result<bool> {
        let mut inner = self.inner.lock();
        let k = (service.to_owned(), room.to_owned());
        inner.archive.remove(&k);
        Ok(inner.rooms.remove(&k).is_some())
    }

    async fn list_rooms(&self, service: &str) -> Result<Vec<(String, String)>> {
        let inner = self.inner.lock();
        Ok(inner
            .rooms
            .iter()
            .filter(|((s, _), _)| s == service)
            .map(|((_, r), (c, _))| (r.clone(), c.clone()))
            .collect())
    }

    async fn rooms_of(&self, service: &str, jid: &str) -> Result<Vec<(String, String)>> {
        let inner = self.inner.lock();
        Ok(inner
            .rooms
            .iter()
            .filter(|((s, _), _)| s == service)
            .filter_map(|((_, r), (_, a))| a.get(jid).map(|x| (r.clone(), x.affiliation.clone())))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance() {
        let stores = super::stores();
        crate::conformance::run(&stores).await;
        // A second run against the same store must not collide with the first.
        crate::conformance::run(&stores).await;
    }
}
