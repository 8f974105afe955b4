//! Multi-user chat: XEP-0045 (version 1.35) on `conference.<host>`, with
//! XEP-0421 occupant ids, XEP-0410 self-ping, XEP-0425 moderation and XEP-0313
//! archives on the room JID.
//!
//! Rooms run on the shared room machinery ([`crate::rooms`]): a task per active
//! room owns its state ([`room::Room`]), with a bounded queue, and in a cluster
//! each room runs on one node. A temporary room ends when its last occupant
//! leaves; a persistent one hibernates after `hibernate_timeout` and starts
//! again from storage (configuration, affiliations, and history from its
//! archive) with the next stanza.

mod config;
mod room;

use std::sync::Arc;
use std::time::Duration;

use meerkat_config::{Config, MucCfg};
use meerkat_core::{HookRegistry, ServerContext};
use meerkat_stanza::{ns, BareJid, ErrorType, IqType, Stanza, StanzaError, StanzaKind};
use meerkat_xml::Element;

use crate::mam::Mam;
use crate::rooms::{RoomHost, RoomKind, Summary};
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

/// The MUC logic (`[modules.mod_muc]`); its service is a [`RoomHost`] of it.
pub struct Muc {
    pub(crate) cfg: MucCfg,
    mam: Option<Arc<Mam>>,
}

impl Muc {
    /// Registers the MUC service for each served host's MUC domain; rooms are
    /// archived through `mam` when given.
    pub fn start(cfg: MucCfg, mam: Option<Arc<Mam>>, config: &Config, reg: &mut HookRegistry) {
        let host = RoomHost::new(Muc { cfg, mam });
        reg.module("mod_muc");
        for h in config.hosts() {
            reg.service(host.kind.cfg.host.replace("@HOST@", h), "Chatrooms".into(), host.clone());
        }
    }

    fn defaults(&self) -> RoomConfig {
        RoomConfig::from_defaults(&self.cfg.default_room, self.cfg.max_users, self.cfg.history_length)
    }

    fn env<'a>(&'a self, ctx: &'a ServerContext) -> Env<'a> {
        Env { ctx, svc: self, mam: self.mam.as_deref() }
    }

    /// §6.3: the public rooms (running, and stored persistent ones).
    async fn public_rooms(
        &self,
        host: &RoomHost<Self>,
        ctx: &ServerContext,
        domain: &str,
    ) -> Result<Element, StanzaError> {
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
        for (jid, s) in host.running(domain) {
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

#[async_trait::async_trait]
impl RoomKind for Muc {
    type Room = Room;

    fn queue(&self) -> usize {
        self.cfg.room_queue
    }

    fn hibernate(&self) -> Duration {
        Duration::from_millis(self.cfg.hibernate_timeout)
    }

    async fn load(&self, ctx: &ServerContext, jid: &BareJid) -> Result<Option<Room>, StanzaError> {
        load(&self.env(ctx), jid).await
    }

    async fn handle(&self, ctx: &ServerContext, room: &mut Option<Room>, st: Stanza) {
        handle(&self.env(ctx), room, st).await
    }

    fn keep(&self, r: &Room) -> bool {
        !r.destroyed && (r.cfg.persistent || !r.is_empty())
    }

    fn idle(&self, r: &Room) -> bool {
        r.is_empty()
    }

    fn summary(&self, r: &Room) -> Summary {
        Summary { exists: true, public: r.cfg.public, name: r.cfg.name.clone() }
    }

    /// IQs to the service's own domain (XEP-0045 §6.1, §6.3).
    async fn service_iq(
        &self,
        host: &RoomHost<Self>,
        ctx: &ServerContext,
        st: &Stanza,
    ) -> Option<Result<Option<Element>, StanzaError>> {
        Some(self.muc_service_iq(host, ctx, st).await)
    }
}

impl Muc {
    async fn muc_service_iq(
        &self,
        host: &RoomHost<Self>,
        ctx: &ServerContext,
        st: &Stanza,
    ) -> Result<Option<Element>, StanzaError> {
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
                self.public_rooms(host, ctx, &domain).await.map(Some)
            }
            _ => Err(StanzaError::service_unavailable()),
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
