//! MUC Light: MongooseIM's `urn:xmpp:muclight:0` (its open-extension
//! "muc_light" document, native protocol) on `muclight.<host>`.
//!
//! Rooms have members, not present occupants: a user is in a room because
//! someone added them, sees every message on every available resource (the
//! room addresses the member's bare JID), and finds history in the room's
//! archive (XEP-0313 on the room JID). No presence is exchanged. A room lives in
//! storage ([`meerkat_storage::MucStore`]) until its last occupant leaves or its
//! owner destroys it; its version string changes with every change of its
//! configuration or occupants. Users may block rooms and users from adding them
//! (`#blocking`, kept per user in the XML store).
//!
//! Rooms run on the shared room machinery ([`crate::rooms`]): one task per
//! active room, a bounded queue, one node per room in a cluster.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use meerkat_config::{Config, MucLightCfg};
use meerkat_core::util::random_id;
use meerkat_core::{account, HookRegistry, ServerContext};
use meerkat_stanza::{
    make_error_reply, make_iq_result, ns, BareJid, ErrorType, IqType, Jid, Stanza, StanzaError, StanzaErrorCondition,
    StanzaKind,
};
use meerkat_storage::{ArchivedMessage, Direction, RoomAffiliation};
use meerkat_xml::{Element, Limits};

use crate::mam::{Mam, NS_MAM1, NS_MAM2};
use crate::rooms::{RoomHost, RoomKind, Summary};
use crate::stanza_id::{encode_id, new_archive_id};

/// The protocol's namespaces.
pub const NS_MUCLIGHT: &str = "urn:xmpp:muclight:0";
const NS_CREATE: &str = "urn:xmpp:muclight:0#create";
const NS_CONFIG: &str = "urn:xmpp:muclight:0#configuration";
const NS_AFFS: &str = "urn:xmpp:muclight:0#affiliations";
const NS_INFO: &str = "urn:xmpp:muclight:0#info";
const NS_DESTROY: &str = "urn:xmpp:muclight:0#destroy";
const NS_BLOCKING: &str = "urn:xmpp:muclight:0#blocking";
/// The stored configuration's namespace (Meerkat's own).
const NS_STORED: &str = "urn:meerkat:muclight:room";
/// The XML store kind of a user's blocking list.
const BLOCKING_KIND: &str = "muclight-blocking";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Aff {
    Owner,
    Member,
}

impl Aff {
    fn as_str(self) -> &'static str {
        match self {
            Aff::Owner => "owner",
            Aff::Member => "member",
        }
    }
}

fn aff_name(a: Option<Aff>) -> &'static str {
    a.map_or("none", Aff::as_str)
}

fn parse_aff(s: &str) -> Result<Option<Aff>, StanzaError> {
    match s {
        "owner" => Ok(Some(Aff::Owner)),
        "member" => Ok(Some(Aff::Member)),
        "none" => Ok(None),
        _ => Err(bad("affiliation must be owner, member or none")),
    }
}

fn bad(text: &str) -> StanzaError {
    StanzaError::bad_request(text).with_type(ErrorType::Modify)
}

fn not_allowed(text: &str) -> StanzaError {
    StanzaError::not_allowed().with_text(text)
}

/// A MUC Light room.
pub(crate) struct LightRoom {
    jid: BareJid,
    /// Configuration fields in schema order.
    config: Vec<(String, String)>,
    version: String,
    occupants: BTreeMap<String, Aff>,
    /// The occupants' JIDs, parsed once per change of the occupant list (the
    /// fan-out addresses them).
    jids: std::sync::OnceLock<Vec<Jid>>,
    destroyed: bool,
}

impl LightRoom {
    fn to_stored(&self) -> String {
        let mut el = Element::builder("room", NS_STORED).attr("version", self.version.as_str()).build();
        for (k, v) in &self.config {
            el.append_child(Element::builder("field", NS_STORED).attr("name", k.as_str()).text(v.as_str()).build());
        }
        el.to_string_with_ns()
    }

    fn from_stored(
        jid: BareJid,
        s: &str,
        schema: &[(String, String)],
        affs: Vec<RoomAffiliation>,
    ) -> Result<Self, String> {
        let el = meerkat_xml::parse_element(s, &Limits::default()).map_err(|e| e.to_string())?;
        if !el.is("room", NS_STORED) {
            return Err(format!("expected <room xmlns='{NS_STORED}'/>"));
        }
        let config = schema
            .iter()
            .map(|(k, d)| {
                let v =
                    el.children().find(|f| f.attr("name") == Some(k.as_str())).map_or_else(|| d.clone(), |f| f.text());
                (k.clone(), v)
            })
            .collect();
        let occupants = affs
            .into_iter()
            .filter_map(|a| {
                let aff = match a.affiliation.as_str() {
                    "owner" => Aff::Owner,
                    "member" => Aff::Member,
                    _ => return None,
                };
                Some((a.jid, aff))
            })
            .collect();
        Ok(LightRoom {
            jid,
            config,
            version: el.attr("version").unwrap_or_default().to_owned(),
            occupants,
            jids: Default::default(),
            destroyed: false,
        })
    }

    fn member_jids(&self) -> &[Jid] {
        self.jids.get_or_init(|| self.occupants.keys().filter_map(|j| Jid::new(j).ok()).collect())
    }

    fn service_and_name(&self) -> (&str, &str) {
        (self.jid.domain().as_str(), self.jid.node().map_or("", |n| n.as_str()))
    }

    fn name(&self) -> String {
        self.config.iter().find(|(k, _)| k == "roomname").map(|(_, v)| v.clone()).unwrap_or_default()
    }

    fn users(&self, ns: &str, list: impl IntoIterator<Item = (String, Option<Aff>)>) -> Vec<Element> {
        list.into_iter()
            .map(|(j, a)| Element::builder("user", ns).attr("affiliation", aff_name(a)).text(j).build())
            .collect()
    }

    fn config_elements(&self, ns: &str) -> Vec<Element> {
        self.config.iter().map(|(k, v)| Element::builder(k.as_str(), ns).text(v.as_str()).build()).collect()
    }
}

/// The MUC Light logic (`[modules.mod_muc_light]`); its service is a
/// [`RoomHost`] of it.
pub struct MucLight {
    cfg: MucLightCfg,
    /// The schema as (field, default) pairs.
    schema: Vec<(String, String)>,
    mam: Option<Arc<Mam>>,
}

impl MucLight {
    /// Registers the MUC Light service for each served host; rooms are archived
    /// through `mam` when given.
    pub fn start(cfg: MucLightCfg, mam: Option<Arc<Mam>>, config: &Config, reg: &mut HookRegistry) {
        let schema = cfg.config_schema.iter().map(|f| (f.field.clone(), f.string_value.clone())).collect();
        let rooms_in_rosters = cfg.rooms_in_rosters;
        let host = RoomHost::new(MucLight { cfg, schema, mam });
        reg.module("mod_muc_light");
        for h in config.hosts() {
            reg.service(host.kind.cfg.host.replace("@HOST@", h), "MUC Light Service".into(), host.clone());
        }
        if rooms_in_rosters {
            reg.roster_extra(Arc::new(RoomsInRoster(host)));
        }
    }

    /// A user's rooms on the service of the user's host, with name and version.
    async fn user_rooms(
        &self,
        ctx: &ServerContext,
        user: &BareJid,
        service: &str,
    ) -> Result<Vec<LightRoom>, StanzaError> {
        let rooms = ctx.stores.muc.rooms_of(service, user.as_str()).await.map_err(storage_error)?;
        let mut out = Vec::with_capacity(rooms.len());
        for (name, _) in rooms {
            let Some(stored) = ctx.stores.muc.load_room(service, &name).await.map_err(storage_error)? else { continue };
            let Ok(jid) = BareJid::new(&format!("{name}@{service}")) else { continue };
            if let Ok(r) = LightRoom::from_stored(jid, &stored.config, &self.schema, Vec::new()) {
                out.push(r);
            }
        }
        Ok(out)
    }

    async fn send(ctx: &ServerContext, el: Element) {
        ctx.route(Stanza::from_trusted(el)).await;
    }

    /// A notification message from the room to one user.
    fn notice(room: &BareJid, to: &str, id: &str, payload: Vec<Element>) -> Element {
        Element::builder("message", ns::CLIENT)
            .attr("from", room.as_str())
            .attr("to", to)
            .attr("type", "groupchat")
            .attr("id", id)
            .append_all(payload)
            .append(Element::new("body", ns::CLIENT))
            .build()
    }

    /// Archives a room event or message (XEP-0313 on the room JID).
    fn archive(&self, ctx: &ServerContext, room: &BareJid, sender: &str, mut el: Element) -> i64 {
        let id = new_archive_id();
        if let Some(mam) = &self.mam {
            el.remove_attr("to");
            let row = ArchivedMessage {
                id,
                with_jid: Default::default(),
                with_resource: Default::default(),
                direction: Direction::Incoming,
                sender: sender.into(),
                origin_id: Some(encode_id(id)),
                stanza: el.to_string_with_ns().into(),
            };
            mam.archive_room(ctx, room, row);
        }
        id
    }

    /// Whether `user` refuses to be added to `room` by `by` (#blocking).
    async fn blocks(&self, ctx: &ServerContext, user: &str, room: &BareJid, by: &str) -> Result<bool, StanzaError> {
        if !self.cfg.blocking {
            return Ok(false);
        }
        let list = self.blocking_list(ctx, user, room.domain().as_str()).await?;
        Ok(list.iter().any(|(kind, jid)| (kind == "room" && jid == room.as_str()) || (kind == "user" && jid == by)))
    }

    async fn blocking_list(
        &self,
        ctx: &ServerContext,
        user: &str,
        service: &str,
    ) -> Result<Vec<(String, String)>, StanzaError> {
        let Ok(bare) = BareJid::new(user) else { return Ok(Vec::new()) };
        let Some(acc) = account(&bare) else { return Ok(Vec::new()) };
        let xml = ctx.stores.xml.get_xml(acc, BLOCKING_KIND, service).await.map_err(storage_error)?;
        let Some(xml) = xml else { return Ok(Vec::new()) };
        let el = meerkat_xml::parse_element(&xml, &Limits::default()).map_err(|_| StanzaError::internal())?;
        Ok(el.children().map(|c| (c.name().to_owned(), c.text())).collect())
    }

    /// #blocking at the service: the requester's list, or changes to it.
    async fn blocking(&self, ctx: &ServerContext, st: &Stanza, q: &Element) -> Result<Option<Element>, StanzaError> {
        if !self.cfg.blocking {
            return Err(StanzaError::service_unavailable());
        }
        let from = st.from.as_ref().ok_or_else(StanzaError::forbidden)?.to_bare();
        let service = st.to.as_ref().map(|t| t.domain().as_str().to_owned()).unwrap_or_default();
        let acc = account(&from).ok_or_else(StanzaError::forbidden)?;
        let mut list = self.blocking_list(ctx, from.as_str(), &service).await?;
        if st.iq_type() == Some(IqType::Get) {
            let mut r = Element::new("query", NS_BLOCKING);
            for (kind, jid) in &list {
                r.append_child(
                    Element::builder(kind.as_str(), NS_BLOCKING).attr("action", "deny").text(jid.as_str()).build(),
                );
            }
            return Ok(Some(r));
        }
        let items: Vec<&Element> = q.children().collect();
        if items.is_empty() {
            return Err(bad("a blocking change names at least one room or user"));
        }
        for it in items {
            let kind = it.name();
            if kind != "room" && kind != "user" {
                return Err(bad("blocking items are <room/> or <user/>"));
            }
            let jid =
                Jid::new(it.text().trim()).map_err(|_| StanzaError::new(StanzaErrorCondition::JidMalformed))?.to_bare();
            let entry = (kind.to_owned(), jid.as_str().to_owned());
            match it.attr("action") {
                Some("deny") => {
                    if !list.contains(&entry) {
                        list.push(entry);
                    }
                }
                Some("allow") => list.retain(|e| *e != entry),
                _ => return Err(bad("action must be deny or allow")),
            }
        }
        let mut el = Element::new("blocking", NS_BLOCKING);
        for (kind, jid) in &list {
            el.append_child(Element::builder(kind.as_str(), NS_BLOCKING).text(jid.as_str()).build());
        }
        ctx.stores.xml.set_xml(acc, BLOCKING_KIND, &service, &el.to_string_with_ns()).await.map_err(storage_error)?;
        Ok(None)
    }

    /// §3.3: the rooms the requester occupies, with name and version.
    async fn rooms_of(&self, ctx: &ServerContext, st: &Stanza) -> Result<Option<Element>, StanzaError> {
        let from = st.from.as_ref().ok_or_else(StanzaError::forbidden)?.to_bare();
        let service = st.to.as_ref().map(|t| t.domain().as_str().to_owned()).unwrap_or_default();
        let rooms = ctx.stores.muc.rooms_of(&service, from.as_str()).await.map_err(storage_error)?;
        let mut q = Element::new("query", ns::DISCO_ITEMS);
        for (name, _) in rooms {
            let Some(stored) = ctx.stores.muc.load_room(&service, &name).await.map_err(storage_error)? else {
                continue;
            };
            let Ok(jid) = BareJid::new(&format!("{name}@{service}")) else { continue };
            let Ok(r) = LightRoom::from_stored(jid.clone(), &stored.config, &self.schema, Vec::new()) else { continue };
            q.append_child(
                Element::builder("item", ns::DISCO_ITEMS)
                    .attr("jid", jid.as_str())
                    .attr("name", r.name())
                    .attr("version", r.version.as_str())
                    .build(),
            );
        }
        Ok(Some(q))
    }

    // ---- room stanzas ----

    async fn room_stanza(&self, ctx: &ServerContext, room: &mut Option<LightRoom>, st: Stanza) {
        let (Some(from), Some(to)) = (st.from.clone(), st.to.clone()) else { return };
        let sender = from.to_bare();
        match st.kind {
            // §7.2: presence is ignored.
            StanzaKind::Presence => {}
            StanzaKind::Message if st.is_error() => {}
            StanzaKind::Message => {
                let res = match room.as_mut() {
                    Some(r) if r.occupants.contains_key(sender.as_str()) && to.resource().is_none() => {
                        if st.type_attr() != Some("groupchat") {
                            Err(bad("messages to a room are of type groupchat"))
                        } else if self.mam.as_ref().is_some_and(|m| !m.accepts()) {
                            // The archive cannot keep up: refuse, not lose.
                            Err(StanzaError::new(StanzaErrorCondition::ResourceConstraint)
                                .with_type(ErrorType::Wait)
                                .with_text("the room's archive is busy; try again"))
                        } else {
                            self.broadcast_message(ctx, r, &sender, st.el.clone()).await;
                            Ok(())
                        }
                    }
                    _ => Err(StanzaError::item_not_found()),
                };
                if let Err(e) = res {
                    if let Some(mut reply) = st.error_reply(&e) {
                        reply.el.set_attr("from", to.to_bare().as_str());
                        ctx.route(reply).await;
                    }
                }
            }
            StanzaKind::Iq => {
                if !matches!(st.iq_type(), Some(IqType::Get | IqType::Set)) {
                    return;
                }
                let reply = match self.room_iq(ctx, room, &st, &sender, &to.to_bare()).await {
                    Ok(Some(done)) => done,
                    Ok(None) => make_iq_result(&st.el, None),
                    Err(e) => make_error_reply(&st.el, &e),
                };
                let mut reply = reply;
                reply.set_attr("from", to.to_bare().as_str());
                reply.set_attr("to", from.as_str());
                Self::send(ctx, reply).await;
            }
        }
    }

    /// §4.1: the message goes to every occupant, from `room/sender-bare-jid`,
    /// with the room's stanza id; it is archived.
    async fn broadcast_message(&self, ctx: &ServerContext, r: &LightRoom, sender: &BareJid, mut el: Element) {
        let from = format!("{}/{}", r.jid, sender);
        el.set_attr("from", from.as_str());
        el.remove_attr("to");
        let room_str = r.jid.as_str();
        el.remove_children(|c| c.is("stanza-id", ns::SID) && c.attr("by") == Some(room_str));
        let id = self.archive(ctx, &r.jid, &from, el.clone());
        el.append_child(Element::builder("stanza-id", ns::SID).attr("id", encode_id(id)).attr("by", room_str).build());
        crate::rooms::fan_out(ctx, &el, r.member_jids().iter().cloned()).await;
    }

    /// IQs to a room. `Ok(Some(el))`: a complete reply was built already.
    async fn room_iq(
        &self,
        ctx: &ServerContext,
        room: &mut Option<LightRoom>,
        st: &Stanza,
        sender: &BareJid,
        jid: &BareJid,
    ) -> Result<Option<Element>, StanzaError> {
        let is_set = st.iq_type() == Some(IqType::Set);
        let mut children = st.el.children();
        let (Some(q), None) = (children.next(), children.next()) else {
            return Err(bad("an IQ get or set carries exactly one payload"));
        };
        if q.ns() == NS_CREATE && is_set {
            if room.is_some() {
                return Err(StanzaError::new(StanzaErrorCondition::Conflict).with_text("the room exists"));
            }
            *room = Some(self.create(ctx, st, q, sender, jid).await?);
            return Ok(None);
        }
        // §7.1: to anyone but an occupant the room does not exist.
        let Some(r) = room.as_mut().filter(|r| r.occupants.contains_key(sender.as_str())) else {
            return Err(StanzaError::item_not_found());
        };
        let my_aff = r.occupants[sender.as_str()];
        let version_matches = || q.child_text("version", q.ns()).is_some_and(|v| !v.is_empty() && v == r.version);
        let payload = |name: &str, ns: &str, r: &LightRoom, body: Vec<Element>| {
            let mut res = make_iq_result(&st.el, None);
            res.append_child(
                Element::builder(name, ns)
                    .append(Element::builder("version", ns).text(r.version.as_str()).build())
                    .append_all(body)
                    .build(),
            );
            res
        };
        match (q.ns(), is_set) {
            (NS_CONFIG, false) => {
                if version_matches() {
                    return Ok(None);
                }
                Ok(Some(payload("query", NS_CONFIG, r, r.config_elements(NS_CONFIG))))
            }
            (NS_AFFS, false) => {
                if version_matches() {
                    return Ok(None);
                }
                let users = r.users(NS_AFFS, r.occupants.iter().map(|(j, a)| (j.clone(), Some(*a))));
                Ok(Some(payload("query", NS_AFFS, r, users)))
            }
            (NS_INFO, false) => {
                if version_matches() {
                    return Ok(None);
                }
                let conf = Element::builder("configuration", NS_INFO).append_all(r.config_elements(NS_INFO)).build();
                let occ = Element::builder("occupants", NS_INFO)
                    .append_all(r.users(NS_INFO, r.occupants.iter().map(|(j, a)| (j.clone(), Some(*a)))))
                    .build();
                Ok(Some(payload("query", NS_INFO, r, vec![conf, occ])))
            }
            (NS_CONFIG, true) => {
                if my_aff != Aff::Owner && !self.cfg.all_can_configure {
                    return Err(not_allowed("only the owner may change the configuration"));
                }
                self.configure(ctx, r, q, st.id().unwrap_or_default()).await.map(|()| None)
            }
            (NS_AFFS, true) => {
                self.change_affiliations(ctx, r, q, sender, my_aff, st.id().unwrap_or_default()).await?;
                if r.occupants.is_empty() {
                    r.destroyed = true;
                }
                Ok(None)
            }
            (NS_DESTROY, true) => {
                if my_aff != Aff::Owner {
                    return Err(not_allowed("only the owner may destroy the room"));
                }
                self.destroy(ctx, r, st.id().unwrap_or_default()).await.map(|()| None)
            }
            (ns::DISCO_INFO, false) => {
                let mut q = Element::builder("query", ns::DISCO_INFO)
                    .append(
                        Element::builder("identity", ns::DISCO_INFO)
                            .attr("category", "conference")
                            .attr("type", "text")
                            .attr("name", r.name())
                            .build(),
                    )
                    .build();
                let mut features = vec![ns::DISCO_INFO, NS_MUCLIGHT];
                if self.mam.is_some() {
                    features.extend([NS_MAM2, NS_MAM1]);
                }
                for f in features {
                    q.append_child(Element::builder("feature", ns::DISCO_INFO).attr("var", f).build());
                }
                Ok(Some({
                    let mut res = make_iq_result(&st.el, None);
                    res.append_child(q);
                    res
                }))
            }
            (NS_MAM2 | NS_MAM1, _) => {
                let Some(mam) = &self.mam else { return Err(StanzaError::service_unavailable()) };
                let ns_q: &'static str = if q.ns() == NS_MAM1 { NS_MAM1 } else { NS_MAM2 };
                if q.name() != "query" {
                    return Err(bad("only <query/> is supported on a room archive"));
                }
                if !is_set {
                    let mut res = make_iq_result(&st.el, None);
                    res.append_child(crate::mam::form(ns_q));
                    return Ok(Some(res));
                }
                let requester = st.from.clone().ok_or_else(StanzaError::forbidden)?;
                let (results, fin) = mam.query(ctx, &r.jid, &requester, q, ns_q).await?;
                for m in results {
                    Self::send(ctx, m).await;
                }
                let mut res = make_iq_result(&st.el, None);
                res.append_child(fin);
                Ok(Some(res))
            }
            _ => Err(StanzaError::service_unavailable()),
        }
    }

    /// §5.1: creates the room with its configuration and first occupants.
    async fn create(
        &self,
        ctx: &ServerContext,
        st: &Stanza,
        q: &Element,
        creator: &BareJid,
        jid: &BareJid,
    ) -> Result<LightRoom, StanzaError> {
        if !st.from.as_ref().is_some_and(|f| ctx.is_local_domain(f.domain().as_str())) {
            return Err(StanzaError::not_allowed().with_text("only local users may create rooms"));
        }
        let mut room = LightRoom {
            jid: jid.clone(),
            config: self.schema.clone(),
            version: random_id(10),
            occupants: BTreeMap::new(),
            jids: Default::default(),
            destroyed: false,
        };
        if let Some(c) = q.get_child("configuration", NS_CREATE) {
            apply_config(&mut room.config, c)?;
        }
        // §5.1: at most one owner may be named; then the creator is a member,
        // else the creator owns the room (every occupant is a member in an
        // equal-occupants service).
        let listed: Vec<&Element> =
            q.get_child("occupants", NS_CREATE).into_iter().flat_map(|o| o.children()).collect();
        let named_owners = listed.iter().filter(|u| u.attr("affiliation") == Some("owner")).count();
        if named_owners > 1 {
            return Err(bad("a room has at most one owner"));
        }
        let creator_aff = if self.cfg.equal_occupants || named_owners == 1 { Aff::Member } else { Aff::Owner };
        room.occupants.insert(creator.as_str().to_owned(), creator_aff);
        for u in listed {
            if !u.is("user", NS_CREATE) {
                return Err(bad("occupants are <user/> elements"));
            }
            let user =
                Jid::new(u.text().trim()).map_err(|_| StanzaError::new(StanzaErrorCondition::JidMalformed))?.to_bare();
            let aff = parse_aff(u.attr("affiliation").unwrap_or("member"))?
                .ok_or_else(|| bad("a new room's occupants cannot have affiliation none"))?;
            let aff = if self.cfg.equal_occupants { Aff::Member } else { aff };
            if room.occupants.contains_key(user.as_str()) {
                return Err(bad("each user appears once (the creator is in the room already)"));
            }
            if self.blocks(ctx, user.as_str(), jid, creator.as_str()).await? {
                continue; // §4.5: a user who blocks the room or the creator is skipped
            }
            room.occupants.insert(user.as_str().to_owned(), aff);
        }
        if room.occupants.len() > self.cfg.max_occupants {
            return Err(not_allowed("too many occupants"));
        }
        let rows: Vec<RoomAffiliation> = room
            .occupants
            .iter()
            .map(|(j, a)| RoomAffiliation { jid: j.clone(), affiliation: a.as_str().to_owned(), ..Default::default() })
            .collect();
        let (service, name) = room.service_and_name();
        match ctx.stores.muc.create_room(service, name, &room.to_stored(), &rows).await {
            Ok(()) => {}
            Err(meerkat_storage::Error::AlreadyExists) => {
                return Err(StanzaError::new(StanzaErrorCondition::Conflict).with_text("the room exists"))
            }
            Err(e) => return Err(storage_error(e)),
        }
        // Each occupant learns its own affiliation and the version; the
        // archive keeps the whole list.
        let id = st.id().unwrap_or_default();
        for (j, a) in &room.occupants {
            let x = Element::builder("x", NS_AFFS)
                .append(Element::builder("version", NS_AFFS).text(room.version.as_str()).build())
                .append_all(room.users(NS_AFFS, [(j.clone(), Some(*a))]))
                .build();
            Self::send(ctx, Self::notice(jid, j, id, vec![x])).await;
        }
        self.archive_affiliations(ctx, &room, room.occupants.iter().map(|(j, a)| (j.clone(), Some(*a))).collect(), id);
        Ok(room)
    }

    fn archive_affiliations(&self, ctx: &ServerContext, r: &LightRoom, changes: Vec<(String, Option<Aff>)>, id: &str) {
        let x = Element::builder("x", NS_AFFS)
            .append(Element::builder("version", NS_AFFS).text(r.version.as_str()).build())
            .append_all(r.users(NS_AFFS, changes))
            .build();
        let el = Element::builder("message", ns::CLIENT)
            .attr("from", r.jid.as_str())
            .attr("type", "groupchat")
            .attr("id", id)
            .append(x)
            .append(Element::new("body", ns::CLIENT))
            .build();
        self.archive(ctx, &r.jid, r.jid.as_str(), el);
    }

    /// §5.3: a configuration change, announced with both versions.
    async fn configure(
        &self,
        ctx: &ServerContext,
        r: &mut LightRoom,
        q: &Element,
        id: &str,
    ) -> Result<(), StanzaError> {
        let mut config = r.config.clone();
        apply_config(&mut config, q)?;
        let prev = std::mem::replace(&mut r.version, random_id(10));
        let old = std::mem::replace(&mut r.config, config);
        let (service, name) = r.service_and_name();
        if let Err(e) = ctx.stores.muc.update_room(service, name, &r.to_stored()).await {
            r.config = old;
            r.version = prev;
            return Err(storage_error(e));
        }
        let changed: Vec<Element> = q
            .children()
            .filter(|c| c.name() != "version")
            .map(|c| Element::builder(c.name(), NS_CONFIG).text(c.text()).build())
            .collect();
        for member in r.occupants.keys() {
            let x = Element::builder("x", NS_CONFIG)
                .append(Element::builder("prev-version", NS_CONFIG).text(prev.as_str()).build())
                .append(Element::builder("version", NS_CONFIG).text(r.version.as_str()).build())
                .append_all(changed.clone())
                .build();
            Self::send(ctx, Self::notice(&r.jid, member, id, vec![x])).await;
        }
        Ok(())
    }

    /// §5.4: affiliation changes under the protocol's rules.
    async fn change_affiliations(
        &self,
        ctx: &ServerContext,
        r: &mut LightRoom,
        q: &Element,
        sender: &BareJid,
        my_aff: Aff,
        id: &str,
    ) -> Result<(), StanzaError> {
        let mut requested: Vec<(String, Option<Aff>)> = Vec::new();
        for u in q.children() {
            if !u.is("user", NS_AFFS) {
                return Err(bad("affiliation changes are <user/> elements"));
            }
            let user =
                Jid::new(u.text().trim()).map_err(|_| StanzaError::new(StanzaErrorCondition::JidMalformed))?.to_bare();
            let aff = parse_aff(u.attr("affiliation").ok_or_else(|| bad("a <user/> needs an affiliation"))?)?;
            if requested.iter().any(|(j, _)| j == user.as_str()) {
                return Err(bad("each user appears once"));
            }
            requested.push((user.as_str().to_owned(), aff));
        }
        if requested.is_empty() {
            return Err(bad("no affiliation change"));
        }
        let mut changes: Vec<(String, Option<Aff>)> = Vec::new();
        for (user, aff) in requested {
            let old = r.occupants.get(&user).copied();
            if old == aff {
                return Err(bad("an affiliation change must change something"));
            }
            let allowed = match my_aff {
                Aff::Owner => !self.cfg.equal_occupants || aff != Some(Aff::Owner),
                Aff::Member => {
                    (user == sender.as_str() && aff.is_none())
                        || (self.cfg.all_can_invite && old.is_none() && aff == Some(Aff::Member))
                        || (self.cfg.equal_occupants && old.is_none() && aff == Some(Aff::Member))
                }
            };
            if !allowed {
                return Err(not_allowed("you may not make this affiliation change"));
            }
            if old.is_none() && self.blocks(ctx, &user, &r.jid, sender.as_str()).await? {
                continue; // §4.5: skipped silently
            }
            changes.push((user, aff));
        }
        // One owner at most: a new owner demotes the old one; an owner who
        // leaves without naming one hands the room to the first member.
        let mut next = r.occupants.clone();
        for (u, a) in &changes {
            match a {
                Some(a) => next.insert(u.clone(), *a),
                None => next.remove(u),
            };
        }
        if !self.cfg.equal_occupants {
            let new_owner = changes.iter().find(|(_, a)| *a == Some(Aff::Owner)).map(|(u, _)| u.clone());
            if let Some(o) = &new_owner {
                for (u, a) in next.clone() {
                    if a == Aff::Owner && u != *o {
                        next.insert(u.clone(), Aff::Member);
                        changes.push((u, Some(Aff::Member)));
                    }
                }
            } else if !next.is_empty() && !next.values().any(|a| *a == Aff::Owner) {
                if let Some(u) = next.keys().next().cloned() {
                    next.insert(u.clone(), Aff::Owner);
                    changes.push((u, Some(Aff::Owner)));
                }
            }
        }
        if next.len() > self.cfg.max_occupants {
            return Err(not_allowed("the room is full"));
        }
        if changes.is_empty() {
            return Ok(());
        }
        let (service, name) =
            (r.jid.domain().as_str().to_owned(), r.jid.node().map_or(String::new(), |n| n.as_str().to_owned()));
        if next.is_empty() {
            // The last occupant left: the room is gone (§5.2).
            ctx.stores.muc.delete_room(&service, &name).await.map_err(storage_error)?;
            r.occupants.clear();
            r.jids = Default::default();
        } else {
            let rows: Vec<RoomAffiliation> = changes
                .iter()
                .map(|(j, a)| RoomAffiliation {
                    jid: j.clone(),
                    affiliation: aff_name(*a).to_owned(),
                    ..Default::default()
                })
                .collect();
            let prev_version = std::mem::replace(&mut r.version, random_id(10));
            ctx.stores.muc.set_affiliations(&service, &name, &rows).await.map_err(storage_error)?;
            if let Err(e) = ctx.stores.muc.update_room(&service, &name, &r.to_stored()).await {
                r.version = prev_version;
                return Err(storage_error(e));
            }
            let before = std::mem::replace(&mut r.occupants, next);
            r.jids = Default::default();
            changes.sort();
            for member in r.occupants.keys() {
                let x = if before.contains_key(member) {
                    Element::builder("x", NS_AFFS)
                        .append(Element::builder("prev-version", NS_AFFS).text(prev_version.as_str()).build())
                        .append(Element::builder("version", NS_AFFS).text(r.version.as_str()).build())
                        .append_all(r.users(NS_AFFS, changes.clone()))
                        .build()
                } else {
                    Element::builder("x", NS_AFFS)
                        .append(Element::builder("version", NS_AFFS).text(r.version.as_str()).build())
                        .append_all(r.users(NS_AFFS, [(member.clone(), r.occupants.get(member).copied())]))
                        .build()
                };
                Self::send(ctx, Self::notice(&r.jid, member, id, vec![x])).await;
            }
            self.archive_affiliations(ctx, r, changes.clone(), id);
        }
        for (u, a) in &changes {
            if a.is_none() {
                let x = Element::builder("x", NS_AFFS).append_all(r.users(NS_AFFS, [(u.clone(), None)])).build();
                Self::send(ctx, Self::notice(&r.jid, u, id, vec![x])).await;
            }
        }
        Ok(())
    }

    /// §5.2: everyone's affiliation becomes none; the room is gone.
    async fn destroy(&self, ctx: &ServerContext, r: &mut LightRoom, id: &str) -> Result<(), StanzaError> {
        let (service, name) = r.service_and_name();
        ctx.stores.muc.delete_room(service, name).await.map_err(storage_error)?;
        for member in r.occupants.keys() {
            let payload = vec![
                Element::builder("x", NS_AFFS).append_all(r.users(NS_AFFS, [(member.clone(), None)])).build(),
                Element::new("x", NS_DESTROY),
            ];
            Self::send(ctx, Self::notice(&r.jid, member, id, payload)).await;
        }
        r.occupants.clear();
        r.jids = Default::default();
        r.destroyed = true;
        Ok(())
    }
}

/// Applies configuration fields (elements named after schema fields).
fn apply_config(config: &mut [(String, String)], q: &Element) -> Result<(), StanzaError> {
    for f in q.children() {
        if f.name() == "version" && f.ns() == NS_CONFIG {
            continue;
        }
        let Some(slot) = config.iter_mut().find(|(k, _)| k == f.name()) else {
            return Err(bad(&format!("{} is not a configuration field of this service", f.name())));
        };
        slot.1 = f.text();
    }
    Ok(())
}

/// §6.1: a user's rooms as roster items (subscription `to`, group
/// `urn:xmpp:muclight:0`, with the room's version).
struct RoomsInRoster(Arc<RoomHost<MucLight>>);

#[async_trait::async_trait]
impl meerkat_core::hooks::RosterExtra for RoomsInRoster {
    async fn roster_items(&self, ctx: &ServerContext, user: &BareJid) -> Vec<Element> {
        let service = self.0.kind.cfg.host.replace("@HOST@", user.domain().as_str());
        let rooms = match self.0.kind.user_rooms(ctx, user, &service).await {
            Ok(r) => r,
            Err(_) => return Vec::new(), // logged; the stored roster still answers
        };
        rooms
            .into_iter()
            .map(|r| {
                Element::builder("item", ns::ROSTER)
                    .attr("jid", r.jid.as_str())
                    .attr("name", r.name())
                    .attr("subscription", "to")
                    .append(Element::builder("group", ns::ROSTER).text(NS_MUCLIGHT).build())
                    .append(Element::builder("version", ns::ROSTER).text(r.version.as_str()).build())
                    .build()
            })
            .collect()
    }
}

fn storage_error(e: meerkat_storage::Error) -> StanzaError {
    tracing::error!(error = %e, "MUC Light storage failure");
    StanzaError::internal()
}

#[async_trait::async_trait]
impl RoomKind for MucLight {
    type Room = LightRoom;

    fn queue(&self) -> usize {
        self.cfg.room_queue
    }

    fn hibernate(&self) -> Duration {
        Duration::from_millis(self.cfg.hibernate_timeout)
    }

    async fn load(&self, ctx: &ServerContext, jid: &BareJid) -> Result<Option<LightRoom>, StanzaError> {
        let (service, name) = (jid.domain().as_str(), jid.node().map_or("", |n| n.as_str()));
        let Some(stored) = ctx.stores.muc.load_room(service, name).await.map_err(storage_error)? else {
            return Ok(None);
        };
        LightRoom::from_stored(jid.clone(), &stored.config, &self.schema, stored.affiliations).map(Some).map_err(|e| {
            tracing::error!(room = %jid, error = %e, "a stored MUC Light room does not parse");
            StanzaError::internal()
        })
    }

    async fn handle(&self, ctx: &ServerContext, room: &mut Option<LightRoom>, st: Stanza) {
        self.room_stanza(ctx, room, st).await
    }

    fn keep(&self, r: &LightRoom) -> bool {
        !r.destroyed
    }

    fn idle(&self, _r: &LightRoom) -> bool {
        true
    }

    fn summary(&self, r: &LightRoom) -> Summary {
        Summary { exists: true, public: false, name: r.name() }
    }

    async fn service_iq(
        &self,
        host: &RoomHost<Self>,
        ctx: &ServerContext,
        st: &Stanza,
    ) -> Option<Result<Option<Element>, StanzaError>> {
        let mut children = st.el.children();
        let (Some(q), None) = (children.next(), children.next()) else {
            return Some(Err(bad("an IQ carries exactly one payload")));
        };
        let get = st.iq_type() == Some(IqType::Get);
        Some(match (q.ns(), get) {
            (ns::DISCO_INFO, true) => {
                let r = Element::builder("query", ns::DISCO_INFO)
                    .append(
                        Element::builder("identity", ns::DISCO_INFO)
                            .attr("category", "conference")
                            .attr("type", "text")
                            .attr("name", "MUC Light Service")
                            .build(),
                    )
                    .append(Element::builder("feature", ns::DISCO_INFO).attr("var", NS_MUCLIGHT).build())
                    .build();
                Ok(Some(r))
            }
            (ns::DISCO_ITEMS, true) => self.rooms_of(ctx, st).await,
            (NS_BLOCKING, _) => self.blocking(ctx, st, q).await,
            // §5.1.1: a room with a name the service makes up.
            (NS_CREATE, false) => {
                let service = st.to.as_ref().map(|t| t.domain().as_str().to_owned()).unwrap_or_default();
                let Ok(room) = Jid::new(&format!("{}@{service}", random_id(16).to_lowercase())) else {
                    return Some(Err(StanzaError::internal()));
                };
                let mut el = st.el.clone();
                el.set_attr("to", room.as_str());
                Box::pin(meerkat_core::hooks::Service::route(host, ctx, Stanza::from_trusted(el), 0)).await;
                return None;
            }
            _ => Err(StanzaError::service_unavailable()),
        })
    }
}
