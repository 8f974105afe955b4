//! Multi-user chat: XEP-0045 (version 1.35) on `conference.<host>`, with
//! XEP-0421 occupant ids, XEP-0410 self-ping, XEP-0425 moderation and XEP-0313
//! archives on the room JID.
//!
//! One task per active room owns the room's state ([`room::Room`]); the service
//! puts stanzas for a room into the room's bounded queue without waiting
//! (`room_queue`; a full queue answers `resource-constraint`), so a busy room
//! never slows its senders and a slow occupant never slows the room: the room
//! delivers into occupants' session mailboxes, which are bounded on their own
//! (an occupant whose mailbox overflows is disconnected, like any session).
//! A room with nobody in it stops: a temporary room is gone, a persistent one
//! starts again from storage (configuration, affiliations, and history from its
//! archive) with the next stanza, after `hibernate_timeout`.
//!
//! In a cluster a room runs on one node at a time: the room task claims the
//! room as a cluster-wide singleton before loading it (`ServerContext::singletons`).
//! On the other nodes the room's task forwards its stanzas, in order, to the
//! owner (`Router::forward_to_node`), asking again every second who owns the
//! room, so the rooms of a lost node are taken over by the next node that gets
//! traffic for them (persistent rooms come back from storage).

mod config;
mod room;

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use meerkat_config::{Config, MucCfg};
use meerkat_core::cluster::Owner;
use meerkat_core::hooks::Service;
use meerkat_core::{HookRegistry, Module, ServerContext};
use meerkat_stanza::{make_error_reply, make_iq_result, ns, BareJid, ErrorType, IqType, Stanza, StanzaError, StanzaErrorCondition, StanzaKind};
use meerkat_xml::Element;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::mam::Mam;
use config::RoomConfig;
use room::Room;

/// XEP-0045 namespaces.
pub const NS_MUC: &str = "http://jabber.org/protocol/muc";
/// XEP-0045 `#user`.
pub const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
/// XEP-0045 `#admin`.
pub const NS_MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
/// XEP-0045 `#owner`.
pub const NS_MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
/// XEP-0421.
pub const NS_OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";
/// XEP-0425.
pub const NS_MODERATE: &str = "urn:xmpp:message-moderate:1";

/// What a room sees of its service and server while it handles a stanza.
pub(crate) struct Env<'a> {
    pub ctx: &'a ServerContext,
    pub svc: &'a Muc,
    pub mam: Option<&'a Mam>,
}

impl Env<'_> {
    /// Whether rooms are archived (mod_mam on and `archive` not turned off).
    pub(crate) fn archived(&self) -> bool {
        self.mam.is_some() && self.svc.cfg.archive
    }
}

/// What the service knows of a running room without asking its task (for
/// disco#items).
#[derive(Debug, Default, Clone)]
struct Summary {
    exists: bool,
    public: bool,
    name: String,
}

struct Slot {
    tx: mpsc::Sender<(Stanza, u8)>,
    summary: Arc<Mutex<Summary>>,
}

/// The MUC module and service (`[modules.mod_muc]`).
pub struct Muc {
    cfg: MucCfg,
    mam: Option<Arc<Mam>>,
    /// Running rooms by bare JID.
    rooms: Mutex<HashMap<BareJid, Slot>>,
    me: Weak<Muc>,
}

impl Muc {
    /// The module; rooms are archived through `mam` when given.
    pub fn new(cfg: MucCfg, mam: Option<Arc<Mam>>) -> Arc<Self> {
        Arc::new_cyclic(|me| Muc { cfg, mam, rooms: Mutex::new(HashMap::new()), me: me.clone() })
    }

    /// The service domains for the served hosts.
    pub fn domains(&self, cfg: &Config) -> Vec<String> {
        cfg.hosts().iter().map(|h| self.cfg.host.replace("@HOST@", h)).collect()
    }

    fn defaults(&self) -> RoomConfig {
        RoomConfig::from_defaults(&self.cfg.default_room, self.cfg.max_users, self.cfg.history_length)
    }

    /// Queues a stanza for its room, starting the room's task if needed.
    fn dispatch(&self, ctx: &ServerContext, room: BareJid, st: Stanza, hops: u8) -> Result<(), Stanza> {
        let mut rooms = self.rooms.lock();
        let slot = rooms.entry(room.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(self.cfg.room_queue);
            let summary = Arc::new(Mutex::new(Summary::default()));
            let svc = self.me.upgrade().expect("the module outlives its rooms' dispatch");
            tokio::spawn(run_room(svc, ctx.arc(), room.clone(), rx, summary.clone()));
            Slot { tx, summary }
        });
        match slot.tx.try_send((st, hops)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full((st, _))) => Err(st),
            // A room task ends only after removing its slot under this lock.
            Err(TrySendError::Closed((st, _))) => Err(st),
        }
    }

    /// Removes a room's slot if nothing waits in its queue (then no stanza can
    /// reach the task any more); `false` if the task must go on.
    fn retire(&self, room: &BareJid, rx: &mpsc::Receiver<(Stanza, u8)>) -> bool {
        let mut rooms = self.rooms.lock();
        if !rx.is_empty() {
            return false;
        }
        rooms.remove(room);
        true
    }

    /// IQs to the service's own domain (XEP-0045 §6.1, §6.3).
    async fn service_iq(&self, ctx: &ServerContext, st: &Stanza) -> Result<Option<Element>, StanzaError> {
        if !matches!(st.iq_type(), Some(IqType::Get)) {
            return Err(StanzaError::service_unavailable());
        }
        let mut children = st.el.children();
        let (Some(q), None) = (children.next(), children.next()) else {
            return Err(StanzaError::bad_request("an IQ get carries exactly one payload"));
        };
        if q.attr("node").is_some() {
            return Err(StanzaError::item_not_found());
        }
        match q.ns() {
            ns::DISCO_INFO => {
                let mut r = Element::builder("query", ns::DISCO_INFO)
                    .append(
                        Element::builder("identity", ns::DISCO_INFO)
                            .attr("category", "conference")
                            .attr("type", "text")
                            .attr("name", "Chatrooms")
                            .build(),
                    )
                    .build();
                for f in [ns::DISCO_INFO, ns::DISCO_ITEMS, NS_MUC, NS_OCCUPANT_ID] {
                    r.append_child(Element::builder("feature", ns::DISCO_INFO).attr("var", f).build());
                }
                Ok(Some(r))
            }
            ns::DISCO_ITEMS => {
                let domain = st.to.as_ref().map(|t| t.domain().as_str().to_owned()).unwrap_or_default();
                self.public_rooms(ctx, &domain).await.map(Some)
            }
            _ => Err(StanzaError::service_unavailable()),
        }
    }

    /// §6.3: the public rooms (running, and stored persistent ones).
    async fn public_rooms(&self, ctx: &ServerContext, domain: &str) -> Result<Element, StanzaError> {
        let mut rooms: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
        let stored = ctx.stores.muc.list_rooms(domain).await.map_err(|e| {
            tracing::error!(service = domain, error = %e, "listing stored rooms");
            StanzaError::internal()
        })?;
        let defaults = self.defaults();
        for (name, cfg) in stored {
            if let Ok(c) = RoomConfig::from_stored(&cfg, &defaults) {
                if c.public {
                    rooms.insert(format!("{name}@{domain}"), c.name);
                }
            }
        }
        for (jid, slot) in self.rooms.lock().iter() {
            if jid.domain().as_str() != domain {
                continue;
            }
            let s = slot.summary.lock().clone();
            if s.exists && s.public {
                rooms.insert(jid.as_str().to_owned(), s.name);
            } else {
                rooms.remove(jid.as_str());
            }
        }
        let mut q = Element::new("query", ns::DISCO_ITEMS);
        for (jid, name) in rooms {
            let mut it = Element::builder("item", ns::DISCO_ITEMS).attr("jid", jid.as_str()).build();
            if !name.is_empty() {
                it.set_attr("name", name);
            }
            q.append_child(it);
        }
        Ok(q)
    }
}

impl Module for Muc {
    fn name(&self) -> &'static str {
        "mod_muc"
    }

    fn register(self: Arc<Self>, reg: &mut HookRegistry) {
        let _ = reg;
    }
}

impl Muc {
    /// Registers the service for each served host's MUC domain.
    pub fn register_services(self: Arc<Self>, cfg: &Config, reg: &mut HookRegistry) {
        reg.module("mod_muc");
        for d in self.domains(cfg) {
            reg.service(d, "Chatrooms".into(), self.clone());
        }
    }
}

#[async_trait::async_trait]
impl Service for Muc {
    async fn route(&self, ctx: &ServerContext, st: Stanza, hops: u8) {
        let Some(to) = st.to.clone() else { return };
        if to.node().is_none() {
            if st.kind == StanzaKind::Iq {
                if !matches!(st.iq_type(), Some(IqType::Get | IqType::Set)) {
                    return;
                }
                let mut reply = match self.service_iq(ctx, &st).await {
                    Ok(p) => make_iq_result(&st.el, p),
                    Err(e) => make_error_reply(&st.el, &e),
                };
                reply.set_attr("from", to.as_str());
                if let Some(f) = &st.from {
                    reply.set_attr("to", f.as_str());
                }
                ctx.route(Stanza::from_trusted(reply)).await;
            }
            return;
        }
        let room = to.to_bare();
        if let Err(st) = self.dispatch(ctx, room, st, hops) {
            // The room's queue is full: the sender may try again later.
            if let Some(e) = st.error_reply(
                &StanzaError::new(StanzaErrorCondition::ResourceConstraint)
                    .with_type(ErrorType::Wait)
                    .with_text("the room is busy"),
            ) {
                if e.to.is_some() {
                    Box::pin(ctx.route(e)).await;
                }
            }
        }
    }
}

/// A stanza for a room is forwarded between nodes at most this often, so two
/// nodes that briefly disagree on a room's owner cannot bounce it forever.
const MAX_HOPS: u8 = 2;

/// How often a node that forwards a room's stanzas to its owner asks again who
/// owns it (a lost owner's rooms are taken over by the next claim).
const OWNER_RECHECK: Duration = Duration::from_secs(1);

/// The task of one room: claims it in the cluster; runs it if this node owns
/// it, else forwards its stanzas to the owner; stops when the room is empty
/// (after `hibernate_timeout` for a persistent room), was destroyed, or gets
/// no traffic.
async fn run_room(
    svc: Arc<Muc>,
    ctx: Arc<ServerContext>,
    jid: BareJid,
    mut rx: mpsc::Receiver<(Stanza, u8)>,
    summary: Arc<Mutex<Summary>>,
) {
    let key = format!("muc:{jid}");
    loop {
        match ctx.singletons().claim(&key).await {
            Ok(Owner::Me(lease)) => {
                run_owned(&svc, &ctx, &jid, &mut rx, &summary, lease).await;
                ctx.singletons().release(&key).await;
                return;
            }
            Ok(Owner::Node(node)) => {
                if forward_to_owner(&svc, &ctx, &jid, &mut rx, &node).await {
                    return;
                }
            }
            Err(e) => {
                tracing::error!(room = %jid, error = %e, "claiming a room in the cluster");
                fail_all(&svc, &ctx, &jid, &mut rx, StanzaError::internal().with_type(ErrorType::Wait)).await;
                return;
            }
        }
    }
}

/// Forwards the room's stanzas to the node that runs it. Returns `true` when
/// the task may end (no traffic for a while), `false` to claim again.
async fn forward_to_owner(
    svc: &Muc,
    ctx: &ServerContext,
    jid: &BareJid,
    rx: &mut mpsc::Receiver<(Stanza, u8)>,
    node: &meerkat_core::cluster::NodeName,
) -> bool {
    let recheck = tokio::time::sleep(OWNER_RECHECK);
    tokio::pin!(recheck);
    let mut forwarded = false;
    loop {
        tokio::select! {
            m = rx.recv() => {
                let Some((st, hops)) = m else { return true };
                forwarded = true;
                if hops >= MAX_HOPS {
                    tracing::warn!(room = %jid, %node, "not forwarding a room's stanza again");
                    let e = StanzaError::service_unavailable().with_type(ErrorType::Wait).with_text("the room is moving between nodes");
                    if let Some(e) = st.error_reply(&e) {
                        ctx.route(e).await;
                    }
                } else if let Err(st) = ctx.router.forward_to_node(node, st, hops + 1) {
                    if let Some(e) = st.error_reply(&StanzaError::internal()) {
                        ctx.route(e).await;
                    }
                }
            }
            () = &mut recheck => {
                if !forwarded && svc.retire(jid, rx) {
                    return true;
                }
                return false;
            }
        }
    }
}

/// Runs a room this node owns until it stops or another node takes it over.
async fn run_owned(
    svc: &Arc<Muc>,
    ctx: &Arc<ServerContext>,
    jid: &BareJid,
    rx: &mut mpsc::Receiver<(Stanza, u8)>,
    summary: &Mutex<Summary>,
    mut lease: meerkat_core::cluster::Lease,
) {
    let env = Env { ctx, svc, mam: svc.mam.as_deref() };
    let mut room = match load(&env, jid).await {
        Ok(r) => r,
        Err(e) => return fail_all(svc, ctx, jid, rx, e).await,
    };
    let hibernate = Duration::from_millis(svc.cfg.hibernate_timeout);
    loop {
        let idle = room.as_ref().is_none_or(Room::is_empty);
        tokio::select! {
            m = rx.recv() => {
                let Some((st, _hops)) = m else { return };
                handle(&env, &mut room, st).await;
            }
            () = tokio::time::sleep(hibernate), if idle => {
                if svc.retire(jid, rx) {
                    return;
                }
            }
            () = lease.lost() => {
                // Another node took the room over (this node was taken for lost,
                // e.g. cut off by a partition): it runs there now, from storage.
                tracing::warn!(room = %jid, "room taken over by another node; stopping here");
                let e = StanzaError::service_unavailable().with_type(ErrorType::Wait).with_text("the room moved to another node");
                return fail_all(svc, ctx, jid, rx, e).await;
            }
        }
        if room.as_ref().is_some_and(|r| r.destroyed || (r.is_empty() && !r.cfg.persistent)) {
            room = None;
        }
        *summary.lock() = match &room {
            Some(r) => Summary { exists: true, public: r.cfg.public, name: r.cfg.name.clone() },
            None => Summary::default(),
        };
        if room.is_none() && svc.retire(jid, rx) {
            return;
        }
    }
}

/// Loads a stored room, or `None` when there is none.
async fn load(env: &Env<'_>, jid: &BareJid) -> Result<Option<Room>, StanzaError> {
    let (service, name) = (jid.domain().as_str(), jid.node().map_or("", |n| n.as_str()));
    let stored = env.ctx.stores.muc.load_room(service, name).await.map_err(|e| {
        tracing::error!(room = %jid, error = %e, "loading a room");
        StanzaError::internal().with_type(ErrorType::Wait)
    })?;
    let Some(stored) = stored else { return Ok(None) };
    let cfg = RoomConfig::from_stored(&stored.config, &env.svc.defaults()).map_err(|e| {
        tracing::error!(room = %jid, error = %e, "a stored room's configuration does not parse");
        StanzaError::internal()
    })?;
    let tail = match env.mam.filter(|_| env.archived()) {
        Some(mam) => mam.room_tail(env.ctx, jid, cfg.history_length).await,
        None => Vec::new(),
    };
    Ok(Some(Room::from_storage(jid.clone(), cfg, stored.affiliations, tail)))
}

/// A stanza for a room that may not exist yet: a join creates it (XEP-0045
/// §10.1); anything else for a missing room is `item-not-found`.
async fn handle(env: &Env<'_>, room: &mut Option<Room>, st: Stanza) {
    if let Some(r) = room {
        return r.handle(env, st).await;
    }
    if st.is_error() {
        return;
    }
    let (Some(from), Some(to)) = (st.from.clone(), st.to.clone()) else { return };
    let is_join = st.kind == StanzaKind::Presence && st.type_attr().is_none() && to.resource().is_some();
    if !is_join {
        if let Some(e) = st.error_reply(&StanzaError::item_not_found().with_text("no such room")) {
            env.ctx.route(e).await;
        }
        return;
    }
    if !env.ctx.is_local_domain(from.domain().as_str()) || from.node().is_none() {
        if let Some(e) = st.error_reply(&StanzaError::not_allowed().with_text("only local users may create rooms")) {
            env.ctx.route(e).await;
        }
        return;
    }
    // §10.1.2: a client speaking the MUC protocol configures the new room first
    // (it stays locked until then); an old groupchat 1.0 client gets an instant room.
    let locked = st.el.has_child("x", NS_MUC);
    let mut r = Room::create(to.to_bare(), env.svc.defaults(), &from.to_bare(), locked);
    if !locked {
        if let Err(e) = r.created(env).await {
            if let Some(e) = st.error_reply(&e) {
                env.ctx.route(e).await;
            }
            return;
        }
    }
    r.handle(env, st).await;
    if r.occupant_count() > 0 {
        *room = Some(r);
    }
}

/// Answers every queued stanza with `err` and stops the room's task.
async fn fail_all(svc: &Muc, ctx: &ServerContext, jid: &BareJid, rx: &mut mpsc::Receiver<(Stanza, u8)>, err: StanzaError) {
    loop {
        while let Ok((st, _)) = rx.try_recv() {
            if let Some(e) = st.error_reply(&err) {
                ctx.route(e).await;
            }
        }
        if svc.retire(jid, rx) {
            return;
        }
    }
}
