//! Message archive: XEP-0313 (Message Archive Management, version 1.1.3) for one-to-one
//! chats, with XEP-0441 preferences and XEP-0424 (Message Retraction 0.4.2) tombstones.
//!
//! - **Both ends archive.** A `chat`/`normal` message with a body (or a retraction)
//!   is archived in the sender's archive when the sender's session sends it, and in
//!   the recipient's archive where it is accepted: by a session (after its blocklist
//!   filter) or by the offline path (after the account check and the blocklist). The recipient's archive id is the
//!   XEP-0359 stanza id the stanza id module stamps (by = the recipient); the
//!   sender's archive id is stamped on the sent message as a stanza id by the
//!   sender's bare JID, so the sender's other devices see it in their carbon copy
//!   (as ejabberd does). Not archived: errors, groupchat, headlines, messages
//!   without a body (chat states) unless they carry a XEP-0334 `<store/>` hint,
//!   `no-store`/`no-permanent-store`, carbons and archive results.
//! - **Stored text**: the message as its sender sent it (with the `from` the server
//!   stamped), without XEP-0359 stanza ids: each result carries its archive's id.
//!   Both archives store the same text, serialised once where the message is sent
//!   ([`Stanza::archive_text`] carries it to a recipient on this node).
//! - **Preferences** are cached per user; the hot path decides from the cache and
//!   the session's roster cache, and leaves to the writer what needs the database.
//! - **Writes are asynchronous and batched** (see [`writer`]); queries flush the
//!   querying user's pending rows first. The writer's queue is bounded: while it is
//!   full, the sender's hook refuses archivable messages with `resource-constraint`
//!   (type `wait`) instead of accepting them; rows of messages already accepted are
//!   always queued.
//! - **Retraction**: a `<retract id='…'/>` replaces the original (found by its `id`
//!   attribute, the same conversation and direction) with a `<retracted/>` tombstone in
//!   the sender's and the local recipient's archives; the retraction is delivered
//!   and archived as usual.

mod iq;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use meerkat_config::MamCfg;
use meerkat_core::hooks::{AccountHooks, DeliveryHooks, Flow, IqScope, SessionHooks, ShutdownHook};
use meerkat_core::util::{now_ms, xep82_datetime};
use meerkat_core::{HookRegistry, Module, ServerContext, SessionState};
use meerkat_stanza::{bare_str, ns, BareJid, Jid, Stanza, StanzaError, StanzaErrorCondition, StanzaKind};
use meerkat_storage::{ArchiveEntry, ArchiveMode, ArchivePrefs, ArchivedMessage, Direction};
use meerkat_xml::Element;
use parking_lot::RwLock;

use crate::stanza_id::{decode_id, encode_id, new_archive_id};
pub(crate) use iq::{form, parse_datetime};
use writer::{Check, Op, Retraction, Writer};

/// XEP-0313 namespace, version 2.
pub const NS_MAM2: &str = "urn:xmpp:mam:2";
/// XEP-0313 namespace, version 1 (0.5): same protocol, `queryid` on `<fin/>`.
pub const NS_MAM1: &str = "urn:xmpp:mam:1";
/// XEP-0313 extended queries (before-id, after-id, ids, flip-page, metadata).
pub const NS_MAM2_EXTENDED: &str = "urn:xmpp:mam:2#extended";
/// XEP-0424 namespace.
pub const NS_RETRACT: &str = "urn:xmpp:message-retract:1";
/// XEP-0424 tombstones.
pub const NS_RETRACT_TOMBSTONE: &str = "urn:xmpp:message-retract:1#tombstone";

/// Users whose preferences are cached at most; beyond it the cache starts over.
const PREFS_CACHE_MAX: usize = 100_000;

/// Cached preferences by owner bare JID.
#[derive(Default)]
pub(crate) struct PrefsCache {
    map: RwLock<foldhash::HashMap<String, Arc<ArchivePrefs>>>,
}

impl PrefsCache {
    pub(crate) fn get(&self, owner: &str) -> Option<Arc<ArchivePrefs>> {
        self.map.read().get(owner).cloned()
    }
    /// `f` of the owner's cached preferences (`None` when not cached), under
    /// the read lock: the hot path's check, without touching the `Arc`'s count.
    pub(crate) fn with<T>(&self, owner: &str, f: impl FnOnce(Option<&ArchivePrefs>) -> T) -> T {
        f(self.map.read().get(owner).map(|p| &**p))
    }
    pub(crate) fn remove(&self, owner: &str) {
        self.map.write().remove(owner);
    }
    pub(crate) fn insert(&self, owner: &str, p: Arc<ArchivePrefs>) {
        let mut m = self.map.write();
        if m.len() >= PREFS_CACHE_MAX {
            m.clear();
        }
        m.insert(owner.to_owned(), p);
    }
}

/// XEP-0441 §2: whether messages with `with` are archived (`None`: the roster decides).
pub(crate) fn decide(p: &ArchivePrefs, with: &str) -> Option<bool> {
    if p.never.iter().any(|j| j == with) {
        return Some(false);
    }
    if p.always.iter().any(|j| j == with) {
        return Some(true);
    }
    match p.default_mode {
        ArchiveMode::Always => Some(true),
        ArchiveMode::Never => Some(false),
        ArchiveMode::Roster => None,
    }
}

/// The archive module (`[modules.mod_mam]`).
pub struct Mam {
    cfg: MamCfg,
    default_mode: ArchiveMode,
    prefs: Arc<PrefsCache>,
    writer: Writer,
}

impl Mam {
    /// A module with these options (validated by the configuration).
    pub fn new(cfg: MamCfg) -> Self {
        let default_mode = ArchiveMode::parse(&cfg.default_mode).unwrap_or_default();
        let prefs = Arc::new(PrefsCache::default());
        let limits = writer::Limits {
            batch_size: cfg.async_writer.batch_size,
            flush_interval: Duration::from_millis(cfg.async_writer.flush_interval),
            max_queue: cfg.async_writer.max_queue,
        };
        let writer = Writer::new(limits, prefs.clone(), default_mode);
        Mam { cfg, default_mode, prefs, writer }
    }

    /// Queues a row for `owner`, unless the cached preferences refuse it.
    fn archive(&self, ctx: &ServerContext, owner: &BareJid, msg: ArchivedMessage, roster: Option<bool>) {
        let check = self.prefs.with(owner.as_str(), |p| match p {
            None => Some(Check::Prefs),
            Some(p) => match (decide(p, &msg.with_jid), roster) {
                (Some(false), _) | (None, Some(false)) => None,
                (Some(true), _) | (None, Some(true)) => Some(Check::None),
                (None, None) => Some(Check::Roster),
            },
        });
        let Some(check) = check else { return };
        let (Some(user), domain) = (owner.node(), owner.domain()) else { return };
        let entry = ArchiveEntry { user: user.as_str().into(), domain: domain.as_str().into(), msg };
        self.writer.push(&ctx.stores, owner.as_str(), Op::Append(entry, check));
    }

    /// Queues a retraction in `owner`'s archive, if `st` carries one.
    fn retract(&self, ctx: &ServerContext, owner: &BareJid, with: &str, direction: Direction, st: &Stanza) {
        let Some(origin) = st.el.get_child("retract", NS_RETRACT).and_then(|r| r.attr("id")) else { return };
        let (Some(user), domain) = (owner.node(), owner.domain()) else { return };
        // XEP-0424 §Tombstones: the original's addressing, a <retracted/> instead of its contents.
        let mut tomb = Element::builder("message", ns::CLIENT).attr("id", origin);
        for a in ["from", "to", "type"] {
            if let Some(v) = st.el.attr(a) {
                tomb = tomb.attr(a, v);
            }
        }
        let mut retracted = Element::builder("retracted", NS_RETRACT).attr("stamp", xep82_datetime(now_ms()));
        if let Some(id) = st.id() {
            retracted = retracted.attr("id", id);
        }
        let op = Op::Retract(Retraction {
            user: user.as_str().to_owned(),
            domain: domain.as_str().to_owned(),
            with: with.to_owned(),
            direction,
            origin_id: origin.to_owned(),
            tombstone: tomb.append(retracted.build()).build().to_string_with_ns(),
        });
        self.writer.push(&ctx.stores, owner.as_str(), op);
    }
}

impl Mam {
    /// Whether the archive writer takes new messages (its queue is not full).
    pub(crate) fn accepts(&self) -> bool {
        self.writer.has_room()
    }

    /// Queues a row of a room's archive (XEP-0313 §6: the room is the owner;
    /// `msg.sender` is the occupant, `msg.origin_id` the room's stanza id, which
    /// XEP-0425 moderation refers to).
    pub(crate) fn archive_room(&self, ctx: &ServerContext, room: &BareJid, msg: ArchivedMessage) {
        let (Some(user), domain) = (room.node(), room.domain()) else { return };
        let entry = ArchiveEntry { user: user.as_str().into(), domain: domain.as_str().into(), msg };
        self.writer.push(&ctx.stores, room.as_str(), Op::Append(entry, Check::None));
    }

    /// Queues the replacement of a room message (by the room's stanza id) with
    /// a tombstone (XEP-0425).
    pub(crate) fn tombstone_room(&self, ctx: &ServerContext, room: &BareJid, stanza_id: &str, tombstone: String) {
        let (Some(user), domain) = (room.node(), room.domain()) else { return };
        let op = Op::Retract(Retraction {
            user: user.as_str().to_owned(),
            domain: domain.as_str().to_owned(),
            with: String::new(),
            direction: Direction::Incoming,
            origin_id: stanza_id.to_owned(),
            tombstone,
        });
        self.writer.push(&ctx.stores, room.as_str(), op);
    }

    /// The room's newest archived messages, oldest first (history for a room
    /// that starts again from storage).
    pub(crate) async fn room_tail(&self, ctx: &ServerContext, room: &BareJid, n: usize) -> Vec<ArchivedMessage> {
        let Some(acc) = meerkat_core::account(room) else { return Vec::new() };
        if n == 0 || !self.writer.flush_user(room.as_str(), Duration::from_secs(10)).await {
            return Vec::new();
        }
        let q = meerkat_storage::ArchiveQuery { limit: n, from: meerkat_storage::PageFrom::End, ..Default::default() };
        match ctx.stores.archive.query(acc, &q).await {
            Ok(p) => p.rows,
            Err(e) => {
                tracing::error!(room = %room, error = %e, "loading a room's history from its archive");
                Vec::new()
            }
        }
    }
}

/// Whether a message is archived at all (before preferences).
fn archivable(st: &Stanza) -> bool {
    let el = &st.el;
    st.kind == StanzaKind::Message
        && matches!(st.type_attr(), None | Some("chat" | "normal"))
        // XEP-0334 §4.4: <store/> asks for storage of a message without a body.
        && (el.has_child("body", ns::CLIENT) || el.has_child("retract", NS_RETRACT) || el.has_child("store", ns::HINTS))
        && !el.has_child("no-store", ns::HINTS)
        && !el.has_child("no-permanent-store", ns::HINTS)
        && !el.has_child("sent", ns::CARBONS)
        && !el.has_child("received", ns::CARBONS)
        && !el.has_child("result", NS_MAM2)
        && !el.has_child("result", NS_MAM1)
}

/// Whether a message that arrived is archived: it is when it carries its
/// sender's archive text (the sender's side on this node found it archivable,
/// and its content has not changed since: see [`Stanza::archive_text`]), else
/// as [`archivable`] finds.
fn archivable_arrival(st: &Stanza) -> bool {
    st.archive_text.is_some() || archivable(st)
}

/// A row for `st`, with `other` as the other party, archived as `stanza`.
fn row(id: i64, st: &Stanza, other: &Jid, direction: Direction, stanza: Arc<str>) -> ArchivedMessage {
    ArchivedMessage {
        id,
        with_jid: bare_str(other).into(),
        with_resource: other.resource().map(|r| r.as_str().into()).unwrap_or_default(),
        direction,
        sender: st.from.as_ref().map(|f| f.as_str().into()).unwrap_or_default(),
        origin_id: st.id().map(Into::into),
        stanza,
    }
}

/// The text a message is archived as: the message without the stanza ids the
/// archives stamp on it (each result carries its archive's id), the same in the
/// sender's and in the recipient's archive.
fn archive_text(st: &Stanza) -> Arc<str> {
    Arc::from(st.el.to_string_with_ns_skipping(|c| c.is("stanza-id", ns::SID)))
}

/// The text of a message that arrived: its sender's if it came with it (the
/// same allocation as the sender's row on this node).
fn received_text(st: &Stanza) -> Arc<str> {
    match &st.archive_text {
        Some(text) => text.clone(),
        None => archive_text(st),
    }
}

impl Module for Mam {
    fn name(&self) -> &'static str {
        "mod_mam"
    }

    fn register(self: Arc<Self>, reg: &mut HookRegistry) {
        reg.on_iq(IqScope::Account, NS_MAM2, self.clone());
        reg.on_iq(IqScope::Account, NS_MAM1, self.clone());
        // After the stanza id module (10), before carbons (40).
        reg.on_session(30, self.clone());
        // After the stanza id module (90), so its id is the archive id.
        reg.on_delivery(95, self.clone());
        reg.on_shutdown(self.clone());
        reg.on_account(self);
        for f in [NS_MAM2, NS_MAM2_EXTENDED, NS_MAM1, NS_RETRACT, NS_RETRACT_TOMBSTONE] {
            reg.account_feature(f);
        }
    }
}

#[async_trait::async_trait]
impl SessionHooks for Mam {
    fn on_user_send(&self, ctx: &ServerContext, s: &mut SessionState, st: &mut Stanza) -> Flow {
        if !archivable(st) {
            return Flow::Continue;
        }
        // The writer's queue is full (storage down or behind): refuse the message
        // before it is routed, rather than accept one whose rows (here or at the
        // recipient) could not be kept. RFC 6120 §8.3.3.18: resource-constraint,
        // type wait: the client may send it again later. Whatever the preferences
        // say: the recipient's side may archive it even if the sender does not.
        if !self.writer.has_room() {
            return Flow::Bounce(
                StanzaError::new(StanzaErrorCondition::ResourceConstraint)
                    .with_text("the message archive is behind; try again later"),
            );
        }
        let Some(to) = &st.to else { return Flow::Continue };
        if bare_str(to) == s.bare.as_str() {
            return Flow::Continue; // a note to self: archived once, on arrival
        }
        let by = s.bare.as_str();
        st.el.remove_children(|c| c.is("stanza-id", ns::SID) && c.attr("by") == Some(by));
        // Serialised once, for the sender's row here and the recipient's where it
        // arrives (on this node: the same text, shared, not another serialisation).
        let text = archive_text(st);
        st.archive_text = Some(text.clone());
        let id = new_archive_id();
        st.el.append_child(Element::builder("stanza-id", ns::SID).attr("id", encode_id(id)).attr("by", by).build());
        let with = bare_str(to);
        let roster = s.roster.as_ref().map(|r| r.items.get(with).is_some_and(|i| i.visible));
        self.archive(ctx, &s.bare, row(id, st, to, Direction::Outgoing, text), roster);
        self.retract(ctx, &s.bare, with, Direction::Outgoing, st);
        Flow::Continue
    }

    fn on_user_receive(&self, ctx: &ServerContext, s: &mut SessionState, st: &mut Stanza) -> Flow {
        if !archivable_arrival(st) {
            return Flow::Continue;
        }
        let Some(from) = &st.from else { return Flow::Continue };
        // Several sessions may each take a copy: the same id is stored once.
        if let Some(id) = own_stanza_id(st, &s.bare) {
            let roster = s.roster.as_ref().map(|r| r.items.get(bare_str(from)).is_some_and(|i| i.visible));
            self.archive(ctx, &s.bare, row(id, st, from, Direction::Incoming, received_text(st)), roster);
        }
        Flow::Continue
    }
}

/// The archive id the delivery hook stamped for `owner`.
fn own_stanza_id(st: &Stanza, owner: &BareJid) -> Option<i64> {
    let by = owner.as_str();
    st.el.children().find(|c| c.is("stanza-id", ns::SID) && c.attr("by") == Some(by))?.attr("id").and_then(decode_id)
}

#[async_trait::async_trait]
impl DeliveryHooks for Mam {
    fn on_deliver_message(&self, ctx: &ServerContext, to: &BareJid, st: &mut Stanza) {
        if !archivable_arrival(st) {
            return;
        }
        if st.from.is_none() {
            return;
        }
        if own_stanza_id(st, to).is_none() {
            // No (usable) stanza id from the stanza id module: stamp one.
            let by = to.as_str();
            st.el.remove_children(|c| c.is("stanza-id", ns::SID) && c.attr("by") == Some(by));
            let id = encode_id(new_archive_id());
            st.el.append_child(Element::builder("stanza-id", ns::SID).attr("id", id).attr("by", by).build());
        }
        // The row itself is queued where the message is accepted: by a session
        // (`on_user_receive`, after the blocklist) or by the offline path (after
        // the account check and the blocklist), so rejected messages are not
        // archived (XEP-0313 §6.1).
        if let Some(from) = &st.from {
            self.retract(ctx, to, bare_str(from), Direction::Incoming, st);
        }
    }

    async fn on_inbound_offline_filter(&self, ctx: &ServerContext, to: &BareJid, st: &Stanza) -> Flow {
        if !archivable_arrival(st) {
            return Flow::Continue;
        }
        let Some(from) = &st.from else { return Flow::Continue };
        // A message a vanished session did not take comes here too: the same id
        // is stored once.
        if let Some(id) = own_stanza_id(st, to) {
            self.archive(ctx, to, row(id, st, from, Direction::Incoming, received_text(st)), None);
        }
        Flow::Continue
    }
}

#[async_trait::async_trait]
impl AccountHooks for Mam {
    async fn before_remove(&self, _ctx: &ServerContext, user: &BareJid) {
        // The account's tables are deleted next (delete_user cascades); rows still
        // queued for it must not be written after that.
        self.writer.forget_user(user.as_str(), Duration::from_secs(10)).await;
        self.prefs.remove(user.as_str());
    }
}

#[async_trait::async_trait]
impl ShutdownHook for Mam {
    async fn on_shutdown(&self, ctx: &ServerContext) {
        self.writer.shutdown(&ctx.stores).await;
    }
}
