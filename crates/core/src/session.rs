//! The state of one bound client session (RFC 6120 §7 onwards) that hooks may read
//! and change, and the messages other tasks send to a session's bounded mailbox.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use meerkat_stanza::{BareJid, FullJid, Jid, Stanza};
use meerkat_storage::RosterItem;
use meerkat_xml::Element;

/// Process-unique id of a session, to tell a session from the one that replaced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// A module-defined event delivered to a session (roster pushes, blocklist pushes…),
/// handed to every [`crate::hooks::SessionHooks::on_event`].
pub type SessionEvent = Arc<dyn Event>;

/// A module-defined session event. Events that must also reach the user's
/// sessions on other cluster nodes say how they travel: as an element, which the
/// module's decoder (registered with
/// [`crate::HookRegistry::event_decoder`] under the element's namespace) turns
/// back into the event on the receiving node.
pub trait Event: Any + Send + Sync + std::fmt::Debug {
    /// The event as an element for another node; `None` keeps it on this node.
    fn to_element(&self) -> Option<Element> {
        None
    }
}

/// The event as its concrete type, if it is a `T`.
pub fn event_as<T: Any>(ev: &SessionEvent) -> Option<&T> {
    let any: &dyn Any = &**ev;
    any.downcast_ref()
}

/// Turns an event element from another node back into the event.
pub type EventDecoder = fn(&Element) -> Option<SessionEvent>;

/// What other tasks send to a session's mailbox.
#[derive(Debug, Clone)]
pub enum SessionMsg {
    /// A stanza for the client; receive hooks run before it is written. Boxed so
    /// a mailbox slot stays small (tokio allocates slots in blocks of 32, and an
    /// idle session's first block is part of its memory footprint).
    Stanza(Box<Stanza>),
    /// Stanzas for the client in this order, taking one mailbox slot: a burst
    /// whose size the sender bounds on its own (the occupant list a MUC room
    /// sends a joiner), which would overflow the mailbox one by one.
    Batch(Vec<Stanza>),
    /// A module event (see [`SessionEvent`]).
    Event(SessionEvent),
    /// RFC 6120 §7.7.2.2: another session bound the same full JID; close with `conflict`.
    Replaced,
    /// Close the session with this stream error (admin kick, shutdown, overflow).
    Kick(meerkat_stanza::StreamError, Option<String>),
}

/// A change to one item of a user's roster, sent to each of the user's sessions so
/// their cached copy stays current and interested resources get a roster push
/// (RFC 6121 §2.1.6).
#[derive(Debug, Clone)]
pub struct RosterChange {
    /// The item as it is now (for a removal: the jid with `subscription=remove`
    /// semantics, see `removed`).
    pub item: RosterItem,
    /// The item was removed.
    pub removed: bool,
    /// The roster version after the change (XEP-0237).
    pub version: u64,
    /// The session that made the change and already pushed it to its client
    /// (RFC 6121 §2.3.2: push first, then the IQ result), if any.
    pub origin: Option<SessionId>,
}

/// The namespace [`RosterChange`] travels in between cluster nodes.
pub const ROSTER_CHANGE_NS: &str = "urn:meerkat:cluster:roster-change";

impl Event for RosterChange {
    fn to_element(&self) -> Option<Element> {
        let i = &self.item;
        let flag = |b: bool| if b { "1" } else { "0" };
        let mut el = Element::builder("roster-change", ROSTER_CHANGE_NS)
            .attr("removed", flag(self.removed))
            .attr("version", self.version.to_string())
            .attr("jid", i.jid.as_str())
            .attr("subscription", i.subscription.as_str())
            .attr("ask-out", flag(i.ask_out))
            .attr("pending-in", flag(i.pending_in))
            .attr("approved", flag(i.approved))
            .attr("visible", flag(i.visible))
            .build();
        if let Some(o) = self.origin {
            el.set_attr("origin", o.0.to_string());
        }
        if let Some(n) = &i.name {
            el.set_attr("name", n.as_str());
        }
        if let Some(p) = &i.pending_in_stanza {
            el.append_child(Element::builder("pending", ROSTER_CHANGE_NS).text(p.clone()).build());
        }
        for g in &i.groups {
            el.append_child(Element::builder("group", ROSTER_CHANGE_NS).text(g.clone()).build());
        }
        Some(el)
    }
}

impl RosterChange {
    /// Decodes [`Event::to_element`]'s form (an [`EventDecoder`]).
    pub fn decode(el: &Element) -> Option<SessionEvent> {
        let flag = |k: &str| el.attr(k) == Some("1");
        let item = RosterItem {
            jid: el.attr("jid")?.to_string(),
            name: el.attr("name").map(str::to_string),
            subscription: meerkat_storage::Subscription::parse(el.attr("subscription")?)?,
            ask_out: flag("ask-out"),
            pending_in: flag("pending-in"),
            pending_in_stanza: el.get_child("pending", ROSTER_CHANGE_NS).map(Element::text),
            approved: flag("approved"),
            visible: flag("visible"),
            groups: el.children().filter(|c| c.is("group", ROSTER_CHANGE_NS)).map(Element::text).collect(),
        };
        Some(Arc::new(RosterChange {
            item,
            removed: flag("removed"),
            version: el.attr("version")?.parse().ok()?,
            origin: el.attr("origin").and_then(|o| o.parse().ok()).map(SessionId),
        }))
    }
}

/// A session's cached roster: loaded once, then kept current by [`RosterChange`]s,
/// so routing presence never needs a database round trip.
#[derive(Debug, Clone, Default)]
pub struct RosterCache {
    /// Items by contact bare JID.
    pub items: HashMap<String, RosterItem>,
    /// Roster version.
    pub version: u64,
    /// The roster's version when it was loaded: `items` holds every change up
    /// to it.
    pub loaded: u64,
    /// The version of the last change applied to a contact's item since (a
    /// removal included).
    pub item_versions: HashMap<String, u64>,
}

impl RosterCache {
    /// Contacts that receive this user's presence (subscription `from` or `both`).
    pub fn presence_subscribers(&self) -> impl Iterator<Item = &RosterItem> {
        use meerkat_storage::Subscription::*;
        self.items.values().filter(|i| matches!(i.subscription, From | Both))
    }
    /// Contacts whose presence this user receives (subscription `to` or `both`).
    pub fn presence_subscriptions(&self) -> impl Iterator<Item = &RosterItem> {
        use meerkat_storage::Subscription::*;
        self.items.values().filter(|i| matches!(i.subscription, To | Both))
    }
    /// Applies a change unless the cache already holds that item in a newer
    /// state; returns whether it did. Changes reach a session by two paths (the
    /// session that made one applies it at once, the others get it through
    /// their mailboxes), so an older change can arrive after a newer one.
    pub fn apply(&mut self, change: &RosterChange) -> bool {
        let jid = &change.item.jid;
        let seen = self.item_versions.get(jid).copied().unwrap_or(self.loaded);
        if change.version <= seen {
            return false;
        }
        if change.removed {
            self.items.remove(jid);
        } else {
            self.items.insert(jid.clone(), change.item.clone());
        }
        self.item_versions.insert(jid.clone(), change.version);
        self.version = self.version.max(change.version);
        true
    }
}

/// The state of one bound session, owned by the session task and lent to hooks.
pub struct SessionState {
    /// Process-unique id.
    pub id: SessionId,
    /// The bound full JID.
    pub jid: FullJid,
    /// Its bare JID.
    pub bare: BareJid,
    /// Cached roster (`None` until first needed).
    pub roster: Option<RosterCache>,
    /// The client requested the roster, so it gets roster pushes (RFC 6121 §2.1.6).
    pub roster_requested: bool,
    /// The last available presence broadcast (`None` = not available).
    pub presence: Option<Arc<Element>>,
    /// Priority of that presence.
    pub priority: i8,
    /// Entities that got directed presence and are not presence subscribers
    /// (they get unavailable presence when the session ends, RFC 6121 §4.6.3).
    pub directed: HashSet<Jid>,
    /// Module data (blocklist cache, CSI state, …) keyed by the module's name.
    pub ext: ExtMap,
    /// Elements to write to this client after the current event.
    pub outbox: Vec<Element>,
    /// Remote address of the client.
    pub peer: std::net::SocketAddr,
}

impl SessionState {
    /// A fresh session for `jid`.
    pub fn new(id: SessionId, jid: FullJid, peer: std::net::SocketAddr) -> Self {
        let bare = jid.to_bare();
        SessionState {
            id,
            jid,
            bare,
            roster: None,
            roster_requested: false,
            presence: None,
            priority: 0,
            directed: HashSet::new(),
            ext: ExtMap::default(),
            outbox: Vec::new(),
            peer,
        }
    }

    /// Queues an element for this client.
    pub fn send(&mut self, el: Element) {
        self.outbox.push(el);
    }

    /// Whether the session has sent available presence.
    pub fn is_available(&self) -> bool {
        self.presence.is_some()
    }

    /// Typed access to a module's extension data.
    pub fn ext<T: Any + Send + Sync>(&self, key: &'static str) -> Option<&T> {
        self.ext.get(key).and_then(|b| b.downcast_ref())
    }

    /// Typed mutable access to a module's extension data.
    pub fn ext_mut<T: Any + Send + Sync>(&mut self, key: &'static str) -> Option<&mut T> {
        self.ext.get_mut(key).and_then(|b| b.downcast_mut())
    }
}

/// Loads the session's roster cache from storage on first use.
pub async fn ensure_roster<'a>(
    ctx: &crate::ServerContext,
    s: &'a mut SessionState,
) -> Result<&'a mut RosterCache, meerkat_stanza::StanzaError> {
    if s.roster.is_none() {
        let acc = crate::account(&s.bare).expect("a bound session's JID has a localpart");
        let roster = ctx.stores.roster.get_roster(acc).await.map_err(|e| {
            tracing::error!(user = %s.bare, error = %e, "storage failure loading a roster");
            meerkat_stanza::StanzaError::internal()
        })?;
        s.roster = Some(RosterCache {
            items: roster.items.into_iter().map(|i| (i.jid.clone(), i)).collect(),
            version: roster.version,
            loaded: roster.version,
            item_versions: HashMap::new(),
        });
    }
    Ok(s.roster.as_mut().expect("loaded just above"))
}

/// Modules' per-session data by module key: a handful of entries, read by the
/// receive hooks for every stanza, so a short list scanned by key (keys are
/// `'static` strings, usually the same pointer) beats hashing.
#[derive(Default)]
pub struct ExtMap(Vec<(&'static str, Box<dyn Any + Send + Sync>)>);

impl ExtMap {
    fn position(&self, key: &str) -> Option<usize> {
        self.0.iter().position(|(k, _)| std::ptr::eq(*k, key) || *k == key)
    }

    /// The entry of `key`.
    pub fn get(&self, key: &str) -> Option<&(dyn Any + Send + Sync)> {
        self.position(key).map(|i| &*self.0[i].1)
    }

    /// The entry of `key`, mutably.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut (dyn Any + Send + Sync)> {
        self.position(key).map(|i| &mut *self.0[i].1)
    }

    /// Whether `key` has an entry.
    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_some()
    }

    /// Sets `key`'s entry.
    pub fn insert(&mut self, key: &'static str, v: Box<dyn Any + Send + Sync>) {
        match self.position(key) {
            Some(i) => self.0[i].1 = v,
            None => self.0.push((key, v)),
        }
    }

    /// Removes `key`'s entry.
    pub fn remove(&mut self, key: &str) -> Option<Box<dyn Any + Send + Sync>> {
        self.position(key).map(|i| self.0.swap_remove(i).1)
    }

    /// `key`'s entry, made by `f` if there is none.
    pub fn get_or_insert_with(
        &mut self,
        key: &'static str,
        f: impl FnOnce() -> Box<dyn Any + Send + Sync>,
    ) -> &mut (dyn Any + Send + Sync) {
        let i = match self.position(key) {
            Some(i) => i,
            None => {
                self.0.push((key, f()));
                self.0.len() - 1
            }
        };
        &mut *self.0[i].1
    }
}

impl std::fmt::Debug for ExtMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|(k, _)| k)).finish()
    }
}

#[cfg(test)]
mod ext_tests {
    use super::ExtMap;

    #[test]
    fn entries_by_key() {
        let mut m = ExtMap::default();
        assert!(m.get("a").is_none());
        m.insert("a", Box::new(1u8));
        m.insert("b", Box::new(String::from("x")));
        m.insert("a", Box::new(2u8));
        assert_eq!(m.get("a").and_then(|v| v.downcast_ref::<u8>()), Some(&2));
        *m.get_or_insert_with("c", || Box::new(0u32)).downcast_mut::<u32>().unwrap() += 5;
        *m.get_or_insert_with("c", || Box::new(100u32)).downcast_mut::<u32>().unwrap() += 1;
        assert_eq!(m.get("c").and_then(|v| v.downcast_ref::<u32>()), Some(&6));
        assert!(m.remove("b").is_some() && !m.contains_key("b") && m.contains_key("a"));
    }
}

#[cfg(test)]
mod roster_cache_tests {
    use super::*;
    use meerkat_storage::Subscription;

    fn change(jid: &str, sub: Subscription, version: u64, removed: bool) -> RosterChange {
        let item = RosterItem { jid: jid.into(), subscription: sub, ..RosterItem::default() };
        RosterChange { item, removed, version, origin: None }
    }

    /// A change that reaches the session after a newer one of the same item
    /// (through the mailbox, while the session applied its own at once) is
    /// ignored; changes to other items, and anything newer than the load, apply.
    #[test]
    fn older_changes_never_overwrite_newer_ones() {
        let mut r = RosterCache { version: 5, loaded: 5, ..RosterCache::default() };
        assert!(!r.apply(&change("a@x", Subscription::To, 4, false)), "already in the loaded roster");
        assert!(r.apply(&change("a@x", Subscription::Both, 7, false)));
        assert!(!r.apply(&change("a@x", Subscription::To, 6, false)), "older than what is cached");
        assert_eq!(r.items["a@x"].subscription, Subscription::Both);
        assert!(r.apply(&change("b@x", Subscription::From, 6, false)), "another item's older version applies");
        assert_eq!(r.version, 7);
        assert!(r.apply(&change("a@x", Subscription::None, 8, true)));
        assert!(!r.apply(&change("a@x", Subscription::Both, 7, false)), "a removal is remembered");
        assert!(!r.items.contains_key("a@x"));
    }
}
