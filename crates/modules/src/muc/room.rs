//! One XEP-0045 room: its state and how it answers every stanza. A room is
//! owned by one task ([`super::service`]), so its state needs no lock; it
//! never waits for an occupant (deliveries go into session mailboxes without
//! waiting) and never touches the database per occupant.

use std::collections::{HashMap, VecDeque};

use meerkat_core::util::{now_ms, random_id, xep82_datetime};
use meerkat_core::SessionMsg;
use meerkat_stanza::{
    make_error_reply, make_iq_result, ns, BareJid, ErrorType, FullJid, IqType, Jid, Stanza, StanzaError,
    StanzaErrorCondition, StanzaKind,
};
use meerkat_storage::{ArchivedMessage, Direction, RoomAffiliation};
use meerkat_xml::Element;
use sha2::Digest;

use super::config::{roominfo, AllowPm, RoomConfig};
use super::{Env, NS_MODERATE, NS_MUC, NS_MUC_ADMIN, NS_MUC_OWNER, NS_MUC_USER, NS_OCCUPANT_ID};
use crate::mam::{NS_MAM1, NS_MAM2, NS_RETRACT};
use crate::stanza_id::{encode_id, new_archive_id};

/// XEP-0045 §5.2 affiliations, in rank order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Affiliation {
    Outcast,
    None,
    Member,
    Admin,
    Owner,
}

impl Affiliation {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Affiliation::Outcast => "outcast",
            Affiliation::None => "none",
            Affiliation::Member => "member",
            Affiliation::Admin => "admin",
            Affiliation::Owner => "owner",
        }
    }
    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "outcast" => Affiliation::Outcast,
            "none" => Affiliation::None,
            "member" => Affiliation::Member,
            "admin" => Affiliation::Admin,
            "owner" => Affiliation::Owner,
            _ => return None,
        })
    }
}

/// XEP-0045 §5.1 roles, in rank order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Role {
    None,
    Visitor,
    Participant,
    Moderator,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Visitor => "visitor",
            Role::Participant => "participant",
            Role::Moderator => "moderator",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Role::None,
            "visitor" => Role::Visitor,
            "participant" => Role::Participant,
            "moderator" => Role::Moderator,
            _ => return None,
        })
    }
}

/// One occupant: a nick, the user behind it and each of the user's sessions
/// in the room with the presence it sent.
#[derive(Debug)]
struct Occupant {
    bare: BareJid,
    sessions: Vec<(FullJid, Element)>,
    role: Role,
    /// XEP-0421 id.
    id: String,
}

/// A user's affiliation with the room, why it was given, and the nickname the
/// user reserved by registering (§7.10; empty: none).
#[derive(Debug, Clone)]
struct Aff {
    aff: Affiliation,
    reason: String,
    nick: String,
}

/// An affiliation change: who, to what, why, and the reserved nickname to
/// keep (`None`: the current one).
type AffChange = (BareJid, Affiliation, String, Option<String>);

/// FORM_TYPE of the registration form (§7.10, §15.5.2).
const NS_MUC_REGISTER: &str = "http://jabber.org/protocol/muc#register";

/// A message kept for history on join.
#[derive(Debug)]
struct HistoryItem {
    /// The message as broadcast, without `to`, with its room stanza id.
    el: Element,
    /// When it was sent (ms since the epoch).
    at_ms: i64,
    /// Characters of its serialisation (`maxchars`).
    chars: usize,
}

/// Why an occupant leaves (the status code it and the others see).
#[derive(Debug, Clone, Copy)]
enum Removal {
    Kicked,
    Banned,
    MembersOnlyAffiliation,
    MembersOnlyRoom,
    Error,
}

impl Removal {
    fn code(self) -> &'static str {
        match self {
            Removal::Banned => "301",
            Removal::Kicked => "307",
            Removal::MembersOnlyAffiliation => "321",
            Removal::MembersOnlyRoom => "322",
            Removal::Error => "333",
        }
    }
}

/// A room's state.
pub(crate) struct Room {
    pub(crate) jid: BareJid,
    pub(crate) cfg: RoomConfig,
    affs: HashMap<String, Aff>,
    /// Reserved nickname → the bare JID that registered it (from `affs`).
    reserved: HashMap<String, String>,
    occupants: HashMap<String, Occupant>,
    /// Real full JID → nick.
    by_jid: HashMap<FullJid, String>,
    history: VecDeque<HistoryItem>,
    /// Created and not yet configured (XEP-0045 §10.1.1: only the owner may enter).
    locked: bool,
    /// The room has a row in storage.
    stored: bool,
    /// The room was destroyed: its task ends.
    pub(crate) destroyed: bool,
    /// IQs forwarded between occupants and not answered yet: our id → (the
    /// requester's id, the requester, the target's nick). Bounded.
    forwarded_iqs: HashMap<String, (String, Jid, String)>,
}

/// Forwarded IQs a room waits for at most; the oldest are forgotten beyond it.
const MAX_FORWARDED_IQS: usize = 1000;

/// A stanza error from `room` (or `room/nick`) back to `st`'s sender.
fn error_from(st: &Stanza, from: &Jid, err: StanzaError) -> Option<Element> {
    if st.is_error() {
        return None;
    }
    let mut e = make_error_reply(&st.el, &err);
    e.set_attr("from", from.as_str());
    if let Some(to) = &st.from {
        e.set_attr("to", to.as_str());
    }
    Some(e)
}

fn item(aff: Affiliation, role: Role, jid: Option<&str>, nick: Option<&str>) -> Element {
    let mut i = Element::builder("item", NS_MUC_USER).attr("affiliation", aff.as_str()).attr("role", role.as_str());
    if let Some(j) = jid {
        i = i.attr("jid", j);
    }
    if let Some(n) = nick {
        i = i.attr("nick", n);
    }
    i.build()
}

fn status(code: &str) -> Element {
    Element::builder("status", NS_MUC_USER).attr("code", code).build()
}

impl Room {
    fn new(jid: BareJid, cfg: RoomConfig, affs: HashMap<String, Aff>, locked: bool, stored: bool) -> Room {
        let reserved =
            affs.iter().filter(|(_, a)| !a.nick.is_empty()).map(|(j, a)| (a.nick.clone(), j.clone())).collect();
        Room {
            jid,
            cfg,
            affs,
            reserved,
            occupants: HashMap::new(),
            by_jid: HashMap::new(),
            history: VecDeque::new(),
            locked,
            stored,
            destroyed: false,
            forwarded_iqs: HashMap::new(),
        }
    }

    /// A new room created by `owner` (locked until configured, unless `instant`).
    pub(crate) fn create(jid: BareJid, cfg: RoomConfig, owner: &BareJid, locked: bool) -> Room {
        let owner_aff = Aff { aff: Affiliation::Owner, reason: String::new(), nick: String::new() };
        let affs = HashMap::from([(owner.as_str().to_owned(), owner_aff)]);
        Room::new(jid, cfg, affs, locked, false)
    }

    /// A room loaded from storage, with its newest archived messages as history.
    pub(crate) fn from_storage(
        jid: BareJid,
        cfg: RoomConfig,
        affiliations: Vec<RoomAffiliation>,
        tail: Vec<ArchivedMessage>,
    ) -> Room {
        let affs = affiliations
            .into_iter()
            .filter_map(|a| {
                let aff = Affiliation::parse(&a.affiliation)?;
                Some((a.jid, Aff { aff, reason: a.reason, nick: a.nick }))
            })
            .collect();
        let mut room = Room::new(jid, cfg, affs, false, true);
        let limits = meerkat_xml::Limits::default();
        for m in tail {
            if let Ok(mut el) = meerkat_xml::parse_element(&m.stanza, &limits) {
                el.set_ns(ns::CLIENT);
                if el.has_child("body", ns::CLIENT) {
                    room.remember(el, crate::stanza_id::id_micros(m.id) / 1000);
                }
            }
        }
        room
    }

    /// Whether nobody is in the room.
    pub(crate) fn is_empty(&self) -> bool {
        self.occupants.is_empty()
    }

    /// Number of occupants.
    pub(crate) fn occupant_count(&self) -> usize {
        self.occupants.len()
    }

    fn affiliation(&self, bare: &BareJid) -> Affiliation {
        self.affs.get(bare.as_str()).map_or(Affiliation::None, |a| a.aff)
    }

    /// Who reserved `nick` by registering (§7.10), if anyone.
    fn reserved_by(&self, nick: &str) -> Option<&str> {
        self.reserved.get(nick).map(String::as_str)
    }

    /// The nickname `bare` reserved, if any.
    fn reserved_nick(&self, bare: &BareJid) -> Option<&str> {
        self.affs.get(bare.as_str()).map(|a| a.nick.as_str()).filter(|n| !n.is_empty())
    }

    fn owners(&self) -> Vec<String> {
        self.with_affiliation(Affiliation::Owner)
    }

    fn with_affiliation(&self, a: Affiliation) -> Vec<String> {
        let mut v: Vec<String> = self.affs.iter().filter(|(_, x)| x.aff == a).map(|(j, _)| j.clone()).collect();
        v.sort();
        v
    }

    fn occupant_jid(&self, nick: &str) -> Jid {
        Jid::new(&format!("{}/{}", self.jid, nick)).unwrap_or_else(|_| Jid::from(self.jid.clone()))
    }

    /// The sender's nick, if the sender is in the room.
    fn nick_of(&self, from: &Jid) -> Option<&str> {
        from.try_as_full().ok().and_then(|f| self.by_jid.get(f)).map(String::as_str)
    }

    fn occupant_id(&self, bare: &BareJid) -> String {
        let h = sha2::Sha256::digest(format!("{}\0{}\0{}", self.cfg.occupant_salt, self.jid, bare).as_bytes());
        h.iter().take(16).map(|b| format!("{b:02x}")).collect()
    }

    /// Whether an occupant with `role` has its presence sent to the others
    /// (`muc#roomconfig_presencebroadcast`).
    fn broadcasts(&self, role: Role) -> bool {
        let bit = match role {
            Role::Moderator => 1,
            Role::Participant => 2,
            Role::Visitor => 4,
            Role::None => 0,
        };
        self.cfg.presence_broadcast & bit != 0
    }

    /// The role an occupant with `aff` gets on entering.
    fn default_role(&self, aff: Affiliation) -> Role {
        match aff {
            Affiliation::Owner | Affiliation::Admin => Role::Moderator,
            Affiliation::Member => Role::Participant,
            _ if self.cfg.moderated && !self.cfg.members_by_default => Role::Visitor,
            _ => Role::Participant,
        }
    }

    /// Delivers one element to every session of every occupant, each with its own
    /// `to` (the element is otherwise shared by all copies).
    async fn broadcast(&self, env: &Env<'_>, el: &Element) {
        let targets: Vec<Jid> =
            self.occupants.values().flat_map(|o| o.sessions.iter().map(|(j, _)| Jid::from(j.clone()))).collect();
        crate::rooms::fan_out(env.ctx, el, targets).await;
    }

    async fn send(env: &Env<'_>, el: Element) {
        env.ctx.route(Stanza::from_trusted(el)).await;
    }

    /// Stanzas for one session, in order, in one slot of its mailbox (a join's
    /// occupant list and history): the room bounds their number, the mailbox
    /// counts them as one. Nothing is sent if the session is gone.
    fn send_burst(env: &Env<'_>, to: &FullJid, els: Vec<Element>) {
        if !els.is_empty() {
            let sts = els.into_iter().map(Stanza::from_trusted).collect();
            env.ctx.router.send(to, SessionMsg::Batch(sts));
        }
    }

    /// An occupant's presence as `viewer` (a moderator or, in a non-anonymous
    /// room, anyone sees real JIDs) receives it.
    fn presence_of(&self, nick: &str, o: &Occupant, viewer_is_moderator: bool, extra: &[Element]) -> Element {
        let aff = self.affiliation(&o.bare);
        let base = o.sessions.last().map(|(_, p)| p.clone());
        let mut p = base.unwrap_or_else(|| Element::new("presence", ns::CLIENT));
        p.set_attr("from", self.occupant_jid(nick).as_str());
        p.remove_attr("to");
        p.remove_attr("id");
        let show_jid = self.cfg.non_anonymous || viewer_is_moderator;
        let real = o.sessions.last().map(|(j, _)| j.as_str().to_owned());
        let mut x = Element::builder("x", NS_MUC_USER)
            .append(item(aff, o.role, show_jid.then_some(real.as_deref()).flatten(), None))
            .build();
        for e in extra {
            x.append_child(e.clone());
        }
        p.append_child(x);
        p.append_child(Element::builder("occupant-id", NS_OCCUPANT_ID).attr("id", o.id.as_str()).build());
        p
    }

    /// Sends `nick`'s current presence to everyone (`self_extra`: status codes
    /// for the occupant's own sessions).
    async fn broadcast_presence(&self, env: &Env<'_>, nick: &str, self_extra: &[Element], all_extra: &[Element]) {
        let Some(o) = self.occupants.get(nick) else { return };
        let to_all = self.broadcasts(o.role);
        // The others see one of two forms (a moderator's, with the real JID, or
        // anyone else's), each built once with its children serialised once.
        let mut views: [Option<Element>; 2] = [None, None];
        for (vnick, v) in &self.occupants {
            let is_self = vnick == nick;
            if !is_self && !to_all {
                continue;
            }
            let moderator = v.role == Role::Moderator;
            let own;
            let p = if is_self {
                let extra: Vec<Element> = all_extra.iter().chain(self_extra).cloned().collect();
                own = self.presence_of(nick, o, moderator, &extra);
                &own
            } else {
                views[usize::from(moderator)].get_or_insert_with(|| {
                    let mut p = self.presence_of(nick, o, moderator, all_extra);
                    p.freeze_children();
                    p
                })
            };
            for (jid, _) in &v.sessions {
                let mut c = p.clone();
                c.set_attr("to", jid.as_str());
                Self::send(env, c).await;
            }
        }
    }

    /// Handles one stanza for the room or one of its occupants.
    pub(crate) async fn handle(&mut self, env: &Env<'_>, st: Stanza) {
        let Some(to) = st.to.clone() else { return };
        let Some(from) = st.from.clone() else { return };
        let nick = to.resource().map(|r| r.as_str().to_owned());
        if st.kind == StanzaKind::Iq && matches!(st.iq_type(), Some(IqType::Result | IqType::Error)) {
            return self.iq_response(env, st, &from).await;
        }
        if st.is_error() {
            // A delivery to an occupant failed (its session is gone): it leaves.
            if st.kind != StanzaKind::Iq {
                if let Some(n) = self.nick_of(&from).map(str::to_owned) {
                    if let Ok(f) = from.try_as_full() {
                        self.leave_session(env, &n, f, Some(Removal::Error), None).await;
                    }
                }
            }
            return;
        }
        match (st.kind, nick) {
            (StanzaKind::Presence, Some(nick)) => self.presence(env, st, &from, nick).await,
            (StanzaKind::Presence, None) => {
                let e = StanzaError::new(StanzaErrorCondition::JidMalformed).with_text("a room nickname is required");
                if let Some(e) = error_from(&st, &to, e) {
                    Self::send(env, e).await;
                }
            }
            (StanzaKind::Message, None) => self.message_to_room(env, st, &from).await,
            (StanzaKind::Message, Some(nick)) => self.private_message(env, st, &from, &nick).await,
            (StanzaKind::Iq, None) => {
                if matches!(st.iq_type(), Some(IqType::Get | IqType::Set)) {
                    let reply = match self.iq(env, &st, &from).await {
                        Ok(payload) => make_iq_result(&st.el, payload),
                        Err(e) => make_error_reply(&st.el, &e),
                    };
                    let mut reply = reply;
                    reply.set_attr("from", self.jid.as_str());
                    reply.set_attr("to", from.as_str());
                    Self::send(env, reply).await;
                }
            }
            (StanzaKind::Iq, Some(nick)) => self.iq_to_occupant(env, &st, &from, &nick).await,
        }
    }

    // ---- presence (XEP-0045 §7.2, §7.6, §7.14) ----

    async fn presence(&mut self, env: &Env<'_>, st: Stanza, from: &Jid, nick: String) {
        let Ok(real) = from.try_as_full().cloned() else { return };
        let unavailable = st.type_attr() == Some("unavailable");
        if st.type_attr().is_some() && !unavailable {
            return; // subscriptions and probes to a room are ignored
        }
        match self.by_jid.get(&real).cloned() {
            None if unavailable => {}
            None => self.join(env, st, real, nick).await,
            Some(current) if unavailable => {
                let text = st.el.get_child("status", ns::CLIENT).cloned();
                self.leave_session(env, &current, &real, None, text).await;
            }
            Some(current) if current == nick => {
                // §7.7: a presence update.
                if let Some(o) = self.occupants.get_mut(&current) {
                    if let Some(s) = o.sessions.iter_mut().find(|(j, _)| *j == real) {
                        s.1 = client_presence(&st.el);
                    }
                }
                self.broadcast_presence(env, &current, &[status("110")], &[]).await;
            }
            Some(current) => self.change_nick(env, &st, real, &current, nick).await,
        }
    }

    async fn join(&mut self, env: &Env<'_>, st: Stanza, real: FullJid, nick: String) {
        let bare = real.to_bare();
        let aff = self.affiliation(&bare);
        let occ_jid = self.occupant_jid(&nick);
        let x = st.el.get_child("x", NS_MUC);
        let refuse = |cond: StanzaErrorCondition, text: &str| StanzaError::new(cond).with_text(text);
        let err = if self.locked && aff != Affiliation::Owner {
            Some(refuse(StanzaErrorCondition::ItemNotFound, "the room is being configured"))
        } else if aff == Affiliation::Outcast {
            Some(refuse(StanzaErrorCondition::Forbidden, "you are banned from this room"))
        } else if self.occupants.get(&nick).is_some_and(|o| o.bare != bare) {
            Some(refuse(StanzaErrorCondition::Conflict, "this nickname is in use").with_type(ErrorType::Cancel))
        } else if self.reserved_by(&nick).is_some_and(|j| j != bare.as_str()) {
            // §7.2.9: a nickname another user registered with the room.
            Some(refuse(StanzaErrorCondition::Conflict, "this nickname is reserved").with_type(ErrorType::Cancel))
        } else if self.cfg.members_only && aff < Affiliation::Member {
            Some(refuse(StanzaErrorCondition::RegistrationRequired, "the room is members-only"))
        } else if !self.cfg.password.is_empty()
            && aff < Affiliation::Owner
            && x.and_then(|x| x.child_text("password", NS_MUC)).as_deref() != Some(self.cfg.password.as_str())
        {
            Some(refuse(StanzaErrorCondition::NotAuthorized, "a password is required"))
        } else if !self.occupants.contains_key(&nick)
            && self.occupants.len() >= self.cfg.max_users
            && aff < Affiliation::Admin
        {
            Some(refuse(StanzaErrorCondition::ServiceUnavailable, "the room is full").with_type(ErrorType::Wait))
        } else {
            None
        };
        if let Some(e) = err {
            // The refusal echoes <x/> but not what it held (the password).
            if let Some(mut reply) = error_from(&st, &occ_jid, e) {
                reply.remove_children(|c| !c.is("error", ns::CLIENT));
                reply.append_child(Element::new("x", NS_MUC));
                Self::send(env, reply).await;
            }
            return;
        }
        let presence = client_presence(&st.el);
        let new_occupant = !self.occupants.contains_key(&nick);
        if new_occupant {
            let id = self.occupant_id(&bare);
            let role = self.default_role(aff);
            self.occupants.insert(nick.clone(), Occupant { bare: bare.clone(), sessions: Vec::new(), role, id });
        }
        self.by_jid.insert(real.clone(), nick.clone());
        if let Some(o) = self.occupants.get_mut(&nick) {
            o.sessions.push((real.clone(), presence));
        }
        // §7.2.3: the others' presence first, to the new session only, as one
        // burst: a room of thousands would overflow the session's mailbox one
        // presence at a time.
        let me_moderator = self.occupants.get(&nick).is_some_and(|o| o.role == Role::Moderator);
        let mut burst = Vec::with_capacity(self.occupants.len());
        for (onick, o) in &self.occupants {
            if *onick == nick || !self.broadcasts(o.role) {
                continue;
            }
            let mut p = self.presence_of(onick, o, me_moderator, &[]);
            p.set_attr("to", real.as_str());
            burst.push(p);
        }
        Self::send_burst(env, &real, burst);
        // Then its own presence, to everyone (its own sessions with 110 and friends).
        let mut self_codes = vec![status("110")];
        if self.cfg.non_anonymous {
            self_codes.push(status("100"));
        }
        if env.archived() {
            self_codes.push(status("170"));
        }
        if self.locked {
            self_codes.push(status("201"));
        }
        if new_occupant {
            self.broadcast_presence(env, &nick, &self_codes, &[]).await;
        } else if let Some(o) = self.occupants.get(&nick) {
            let mut p = self.presence_of(&nick, o, me_moderator, &self_codes);
            p.set_attr("to", real.as_str());
            Self::send(env, p).await;
        }
        // §7.2.15: history, then §7.2.16: the subject (always, even empty), as
        // one burst.
        let mut burst = self.history_for(&real, x.and_then(|x| x.get_child("history", NS_MUC)));
        let mut subject = Element::builder("message", ns::CLIENT)
            .attr("type", "groupchat")
            .attr(
                "from",
                if self.cfg.subject_by.is_empty() { self.jid.as_str().to_owned() } else { self.cfg.subject_by.clone() },
            )
            .attr("to", real.as_str())
            .attr("id", random_id(12))
            .append(Element::builder("subject", ns::CLIENT).text(self.cfg.subject.as_str()).build())
            .build();
        if self.cfg.subject.is_empty() {
            subject.remove_attr("from");
            subject.set_attr("from", self.jid.as_str());
        }
        burst.push(subject);
        Self::send_burst(env, &real, burst);
    }

    /// The history a joiner asked for (§7.2.15), addressed to it.
    fn history_for(&self, to: &FullJid, h: Option<&Element>) -> Vec<Element> {
        let now = now_ms();
        let num = |a: &str| h.and_then(|h| h.attr(a)).and_then(|v| v.parse::<i64>().ok());
        let maxstanzas = num("maxstanzas").map_or(usize::MAX, |n| n.max(0) as usize);
        let maxchars = num("maxchars").map_or(usize::MAX, |n| n.max(0) as usize);
        let since_ms = num("seconds")
            .map(|s| now - s * 1000)
            .into_iter()
            .chain(h.and_then(|h| h.attr("since")).and_then(crate::mam::parse_datetime).map(|us| us / 1000))
            .max();
        let mut picked: Vec<&HistoryItem> = Vec::new();
        let mut chars = 0usize;
        for it in self.history.iter().rev() {
            if picked.len() >= maxstanzas || since_ms.is_some_and(|s| it.at_ms < s) {
                break;
            }
            chars += it.chars;
            if chars > maxchars {
                break;
            }
            picked.push(it);
        }
        picked
            .into_iter()
            .rev()
            .map(|it| {
                let mut el = it.el.clone();
                el.set_attr("to", to.as_str());
                el.append_child(
                    Element::builder("delay", ns::DELAY)
                        .attr("from", self.jid.as_str())
                        .attr("stamp", xep82_datetime(it.at_ms))
                        .build(),
                );
                el
            })
            .collect()
    }

    async fn change_nick(&mut self, env: &Env<'_>, st: &Stanza, real: FullJid, old: &str, new: String) {
        let bare = real.to_bare();
        let new_jid = self.occupant_jid(&new);
        let err = if self.occupants.contains_key(&new) {
            Some(StanzaError::new(StanzaErrorCondition::Conflict).with_text("this nickname is in use"))
        } else if self.reserved_by(&new).is_some_and(|j| j != bare.as_str()) {
            Some(StanzaError::new(StanzaErrorCondition::Conflict).with_text("this nickname is reserved"))
        } else if self.occupants.get(old).is_some_and(|o| o.sessions.len() > 1) {
            Some(
                StanzaError::new(StanzaErrorCondition::NotAcceptable).with_text("leave with your other sessions first"),
            )
        } else {
            None
        };
        if let Some(e) = err {
            if let Some(reply) = error_from(st, &new_jid, e) {
                Self::send(env, reply).await;
            }
            return;
        }
        // §7.6: unavailable for the old nick with 303 and the new nick, then the new presence.
        let Some(o) = self.occupants.get(old) else { return };
        let aff = self.affiliation(&bare);
        let to_all = self.broadcasts(o.role);
        for (vnick, v) in &self.occupants {
            if vnick != old && !to_all {
                continue;
            }
            let mut p = Element::builder("presence", ns::CLIENT)
                .attr("type", "unavailable")
                .attr("from", self.occupant_jid(old).as_str())
                .build();
            let show_jid = self.cfg.non_anonymous || v.role == Role::Moderator;
            let mut x = Element::builder("x", NS_MUC_USER)
                .append(item(aff, o.role, show_jid.then_some(real.as_str()), Some(&new)))
                .append(status("303"))
                .build();
            if vnick == old {
                x.append_child(status("110"));
            }
            p.append_child(x);
            p.append_child(Element::builder("occupant-id", NS_OCCUPANT_ID).attr("id", o.id.as_str()).build());
            for (jid, _) in &v.sessions {
                let mut c = p.clone();
                c.set_attr("to", jid.as_str());
                Self::send(env, c).await;
            }
        }
        let Some(mut o) = self.occupants.remove(old) else { return };
        if let Some(s) = o.sessions.iter_mut().find(|(j, _)| *j == real) {
            s.1 = client_presence(&st.el);
        }
        self.occupants.insert(new.clone(), o);
        self.by_jid.insert(real, new.clone());
        self.broadcast_presence(env, &new, &[status("110")], &[]).await;
    }

    /// Removes one session; when it was the occupant's last, the occupant
    /// leaves and everyone is told.
    async fn leave_session(
        &mut self,
        env: &Env<'_>,
        nick: &str,
        real: &FullJid,
        why: Option<Removal>,
        text: Option<Element>,
    ) {
        self.by_jid.remove(real);
        let occ_jid = self.occupant_jid(nick);
        let Some(o) = self.occupants.get_mut(nick) else { return };
        o.sessions.retain(|(j, _)| j != real);
        if !o.sessions.is_empty() {
            // The session alone is told it left.
            let mut p = Element::builder("presence", ns::CLIENT)
                .attr("type", "unavailable")
                .attr("from", occ_jid.as_str())
                .attr("to", real.as_str())
                .append(Element::builder("x", NS_MUC_USER).append(status("110")).build())
                .build();
            p.append_child(Element::builder("occupant-id", NS_OCCUPANT_ID).attr("id", o.id.as_str()).build());
            Self::send(env, p).await;
            return;
        }
        let o = self.occupants.remove(nick).expect("present");
        let aff = self.affiliation(&o.bare);
        let to_all = self.broadcasts(o.role);
        let mut recipients: Vec<(&str, bool, Vec<FullJid>)> = self
            .occupants
            .iter()
            .filter(|_| to_all)
            .map(|(n, v)| (n.as_str(), v.role == Role::Moderator, v.sessions.iter().map(|(j, _)| j.clone()).collect()))
            .collect();
        recipients.push((nick, false, vec![real.clone()]));
        for (vnick, moderator, sessions) in recipients {
            let show_jid = self.cfg.non_anonymous || moderator;
            let mut x = Element::builder("x", NS_MUC_USER)
                .append(item(aff, Role::None, show_jid.then_some(real.as_str()), None))
                .build();
            if let Some(w) = why {
                x.append_child(status(w.code()));
            }
            if vnick == nick {
                x.append_child(status("110"));
            }
            let mut p = Element::builder("presence", ns::CLIENT)
                .attr("type", "unavailable")
                .attr("from", self.occupant_jid(nick).as_str())
                .append(x)
                .append(Element::builder("occupant-id", NS_OCCUPANT_ID).attr("id", o.id.as_str()).build())
                .build();
            if let Some(t) = &text {
                p.append_child(t.clone());
            }
            for jid in sessions {
                if matches!(why, Some(Removal::Error)) && &jid == real {
                    continue; // it cannot be reached
                }
                p.set_attr("to", jid.as_str());
                Self::send(env, p.clone()).await;
            }
        }
    }

    /// Removes an occupant with all its sessions (kick, ban, membership lost).
    async fn remove_occupant(&mut self, env: &Env<'_>, nick: &str, why: Removal, actor: Option<&str>, reason: &str) {
        let Some(o) = self.occupants.remove(nick) else { return };
        let aff = self.affiliation(&o.bare);
        for (j, _) in &o.sessions {
            self.by_jid.remove(j);
        }
        let real = o.sessions.last().map(|(j, _)| j.as_str().to_owned());
        let make = |to_self: bool, show_jid: bool| {
            let mut it = item(aff, Role::None, show_jid.then_some(real.as_deref()).flatten(), None);
            if let Some(a) = actor {
                it.append_child(Element::builder("actor", NS_MUC_USER).attr("nick", a).build());
            }
            if !reason.is_empty() {
                it.append_child(Element::builder("reason", NS_MUC_USER).text(reason).build());
            }
            let mut x = Element::builder("x", NS_MUC_USER).append(it).append(status(why.code())).build();
            if to_self {
                x.append_child(status("110"));
            }
            Element::builder("presence", ns::CLIENT)
                .attr("type", "unavailable")
                .attr("from", self.occupant_jid(nick).as_str())
                .append(x)
                .append(Element::builder("occupant-id", NS_OCCUPANT_ID).attr("id", o.id.as_str()).build())
                .build()
        };
        let own = make(true, true);
        for (j, _) in &o.sessions {
            let mut p = own.clone();
            p.set_attr("to", j.as_str());
            Self::send(env, p).await;
        }
        let others = if self.broadcasts(o.role) { self.occupants.len() } else { 0 };
        for v in self.occupants.values().take(others) {
            let p = make(false, self.cfg.non_anonymous || v.role == Role::Moderator);
            for (j, _) in &v.sessions {
                let mut c = p.clone();
                c.set_attr("to", j.as_str());
                Self::send(env, c).await;
            }
        }
    }

    // ---- messages (XEP-0045 §7.4, §7.5, §7.8, §8.1) ----

    async fn message_to_room(&mut self, env: &Env<'_>, st: Stanza, from: &Jid) {
        let room_jid = Jid::from(self.jid.clone());
        if st.type_attr() != Some("groupchat") {
            return self.message_to_room_other(env, st, from).await;
        }
        let Some(nick) = self.nick_of(from).map(str::to_owned) else {
            let e = StanzaError::new(StanzaErrorCondition::NotAcceptable)
                .with_text("only occupants may send messages to the room");
            if let Some(e) = error_from(&st, &room_jid, e) {
                Self::send(env, e).await;
            }
            return;
        };
        let Some(o) = self.occupants.get(&nick) else { return };
        let role = o.role;
        let occupant_id = o.id.clone();
        let sender_bare = o.bare.clone();
        let is_subject = st.el.has_child("subject", ns::CLIENT) && !st.el.has_child("body", ns::CLIENT);
        let archive_full =
            env.archived() && env.mam.is_some_and(|m| !m.accepts()) && st.el.has_child("body", ns::CLIENT);
        if archive_full {
            // The archive cannot keep up (storage down or behind): refuse rather
            // than accept a message the room could not keep.
            let e = StanzaError::new(StanzaErrorCondition::ResourceConstraint)
                .with_type(ErrorType::Wait)
                .with_text("the room's archive is busy; try again");
            if let Some(e) = error_from(&st, &room_jid, e) {
                Self::send(env, e).await;
            }
            return;
        }
        let denied = if role < Role::Participant {
            Some("visitors may not speak in a moderated room")
        } else if is_subject && !self.cfg.change_subject && role < Role::Moderator {
            Some("only moderators may change the subject")
        } else {
            None
        };
        if let Some(text) = denied {
            let e = StanzaError::new(StanzaErrorCondition::Forbidden).with_text(text);
            if let Some(e) = error_from(&st, &room_jid, e) {
                Self::send(env, e).await;
            }
            return;
        }
        let occ_jid = self.occupant_jid(&nick);
        let mut el = st.el;
        el.set_attr("from", occ_jid.as_str());
        el.remove_attr("to");
        // Only the room says which stanza id and occupant id a message has.
        let room_str = self.jid.as_str().to_owned();
        el.remove_children(|c| {
            (c.is("stanza-id", ns::SID) && c.attr("by") == Some(room_str.as_str()))
                || c.is("occupant-id", NS_OCCUPANT_ID)
        });
        el.append_child(Element::builder("occupant-id", NS_OCCUPANT_ID).attr("id", occupant_id).build());
        if is_subject {
            self.cfg.subject = el.child_text("subject", ns::CLIENT).unwrap_or_default();
            self.cfg.subject_by = occ_jid.as_str().to_owned();
            self.save_config(env).await;
            self.broadcast(env, &el).await;
            return;
        }
        let archived = env.archived() && (el.has_child("body", ns::CLIENT) || el.has_child("retract", NS_RETRACT));
        let id = new_archive_id();
        el.append_child(
            Element::builder("stanza-id", ns::SID).attr("id", encode_id(id)).attr("by", room_str.as_str()).build(),
        );
        if archived {
            if let Some(mam) = env.mam {
                let row = ArchivedMessage {
                    id,
                    with_jid: Default::default(),
                    with_resource: Default::default(),
                    direction: Direction::Incoming,
                    sender: format!("{sender_bare}/{nick}").into(),
                    origin_id: Some(encode_id(id)),
                    stanza: el.to_string_with_ns().into(),
                };
                mam.archive_room(env.ctx, &self.jid, row);
            }
        }
        if el.has_child("body", ns::CLIENT) && self.cfg.history_length > 0 {
            self.remember(el.clone(), now_ms());
        }
        self.broadcast(env, &el).await;
    }

    fn remember(&mut self, mut el: Element, at_ms: i64) {
        el.remove_attr("to");
        let chars = el.to_string_with_ns().chars().count();
        self.history.push_back(HistoryItem { el, at_ms, chars });
        while self.history.len() > self.cfg.history_length {
            self.history.pop_front();
        }
    }

    /// Messages to the room that are not group chat: mediated invitations and
    /// declines (§7.8.2), voice requests (§7.13).
    async fn message_to_room_other(&mut self, env: &Env<'_>, st: Stanza, from: &Jid) {
        let room_jid = Jid::from(self.jid.clone());
        let x = st.el.get_child("x", NS_MUC_USER);
        let invites: Vec<&Element> =
            x.map(|x| x.children().filter(|c| c.is("invite", NS_MUC_USER)).collect()).unwrap_or_default();
        if !invites.is_empty() {
            let nick = self.nick_of(from).map(str::to_owned);
            let aff = self.affiliation(&from.to_bare());
            let allowed = nick.is_some()
                && (self.cfg.allow_invites
                    || aff >= Affiliation::Admin
                    || (!self.cfg.members_only && aff >= Affiliation::Member));
            if !allowed {
                let e = StanzaError::forbidden().with_text("you may not invite others to this room");
                if let Some(e) = error_from(&st, &room_jid, e) {
                    Self::send(env, e).await;
                }
                return;
            }
            for inv in invites {
                let Some(to) = inv.attr("to").and_then(|t| Jid::new(t).ok()) else {
                    let e = StanzaError::new(StanzaErrorCondition::JidMalformed)
                        .with_text("an invitation needs a 'to' JID");
                    if let Some(e) = error_from(&st, &room_jid, e) {
                        Self::send(env, e).await;
                    }
                    return;
                };
                // §9.4: in a members-only room, an invitation by an admin makes the invitee a member.
                if self.cfg.members_only && self.affiliation(&to.to_bare()) < Affiliation::Member {
                    let change = vec![(to.to_bare(), Affiliation::Member, String::new(), None)];
                    if self.apply_affiliations(env, change, None).await.is_err() {
                        return;
                    }
                }
                let mut fwd = Element::builder("invite", NS_MUC_USER).attr("from", from.to_bare().as_str()).build();
                if let Some(r) = inv.get_child("reason", NS_MUC_USER) {
                    fwd.append_child(r.clone());
                }
                let mut ux = Element::builder("x", NS_MUC_USER).append(fwd).build();
                if !self.cfg.password.is_empty() {
                    ux.append_child(Element::builder("password", NS_MUC_USER).text(self.cfg.password.as_str()).build());
                }
                let msg = Element::builder("message", ns::CLIENT)
                    .attr("from", self.jid.as_str())
                    .attr("to", to.as_str())
                    .attr("id", st.id().map_or_else(|| random_id(12), str::to_owned))
                    .append(ux)
                    .append(Element::builder("x", "jabber:x:conference").attr("jid", self.jid.as_str()).build())
                    .build();
                Self::send(env, msg).await;
            }
            return;
        }
        if let Some(decline) = x.and_then(|x| x.get_child("decline", NS_MUC_USER)) {
            if let Some(to) = decline.attr("to").and_then(|t| Jid::new(t).ok()) {
                let mut d = Element::builder("decline", NS_MUC_USER).attr("from", from.to_bare().as_str()).build();
                if let Some(r) = decline.get_child("reason", NS_MUC_USER) {
                    d.append_child(r.clone());
                }
                let msg = Element::builder("message", ns::CLIENT)
                    .attr("from", self.jid.as_str())
                    .attr("to", to.as_str())
                    .append(Element::builder("x", NS_MUC_USER).append(d).build())
                    .build();
                Self::send(env, msg).await;
            }
            return;
        }
        let is_voice_request = st.el.children().any(|c| {
            c.is("x", ns::DATA_FORMS)
                && super::config::form_value(c, "FORM_TYPE").as_deref()
                    == Some("http://jabber.org/protocol/muc#request")
        });
        if is_voice_request && self.nick_of(from).is_some() {
            // §7.13: the request goes to the moderators.
            let mut el = st.el.clone();
            el.set_attr("from", self.jid.as_str());
            for o in self.occupants.values().filter(|o| o.role == Role::Moderator) {
                for (j, _) in &o.sessions {
                    let mut c = el.clone();
                    c.set_attr("to", j.as_str());
                    Self::send(env, c).await;
                }
            }
            return;
        }
        let e = StanzaError::new(StanzaErrorCondition::NotAcceptable)
            .with_text("messages to a room must be of type groupchat");
        if let Some(e) = error_from(&st, &room_jid, e) {
            Self::send(env, e).await;
        }
    }

    async fn private_message(&mut self, env: &Env<'_>, st: Stanza, from: &Jid, nick: &str) {
        let to_jid = self.occupant_jid(nick);
        let fail = |c: StanzaErrorCondition, t: &str| StanzaError::new(c).with_text(t);
        let sender = self.nick_of(from).map(str::to_owned);
        let sender_role = sender.as_ref().and_then(|n| self.occupants.get(n)).map_or(Role::None, |o| o.role);
        let err = if st.type_attr() == Some("groupchat") {
            Some(
                fail(StanzaErrorCondition::BadRequest, "group chat messages go to the room")
                    .with_type(ErrorType::Modify),
            )
        } else if sender.is_none() {
            Some(fail(StanzaErrorCondition::NotAcceptable, "only occupants may send private messages"))
        } else if !self.occupants.contains_key(nick) {
            Some(fail(StanzaErrorCondition::ItemNotFound, "no such occupant"))
        } else if match self.cfg.allow_pm {
            AllowPm::Anyone => false,
            AllowPm::Participants => sender_role < Role::Participant,
            AllowPm::Moderators => sender_role < Role::Moderator,
            AllowPm::None => true,
        } {
            Some(fail(StanzaErrorCondition::Forbidden, "private messages are not allowed in this room"))
        } else {
            None
        };
        if let Some(e) = err {
            if let Some(e) = error_from(&st, &to_jid, e) {
                Self::send(env, e).await;
            }
            return;
        }
        let sender = sender.expect("checked");
        let Some(target) = self.occupants.get(nick) else { return };
        let mut el = st.el;
        el.set_attr("from", self.occupant_jid(&sender).as_str());
        if !el.has_child("x", NS_MUC_USER) {
            el.append_child(Element::new("x", NS_MUC_USER));
        }
        for (j, _) in &target.sessions {
            let mut c = el.clone();
            c.set_attr("to", j.as_str());
            Self::send(env, c).await;
        }
    }

    async fn iq_to_occupant(&mut self, env: &Env<'_>, st: &Stanza, from: &Jid, nick: &str) {
        if !matches!(st.iq_type(), Some(IqType::Get | IqType::Set)) {
            return;
        }
        let to_jid = self.occupant_jid(nick);
        let sender = self.nick_of(from).map(str::to_owned);
        let is_ping = st.el.children().next().is_some_and(|c| c.is("ping", ns::PING));
        let reply = match (sender, self.occupants.contains_key(nick)) {
            // XEP-0410: the room answers a ping to an occupant for the occupant.
            (Some(_), true) if is_ping => {
                let mut r = make_iq_result(&st.el, None);
                r.set_attr("from", to_jid.as_str());
                r.set_attr("to", from.as_str());
                Some(r)
            }
            (None, _) => error_from(st, &to_jid, StanzaError::new(StanzaErrorCondition::NotAcceptable)),
            (Some(_), false) => error_from(st, &to_jid, StanzaError::item_not_found()),
            // Other IQs (vCards, versions) go to the occupant's session, from the
            // requester's occupant JID; the answer comes back the same way.
            (Some(me), true) => {
                let target = self.occupants.get(nick).and_then(|o| o.sessions.last()).map(|(j, _)| j.clone());
                let Some(target) = target else { return };
                if self.forwarded_iqs.len() >= MAX_FORWARDED_IQS {
                    self.forwarded_iqs.clear();
                }
                let id = random_id(16);
                self.forwarded_iqs
                    .insert(id.clone(), (st.id().unwrap_or_default().to_owned(), from.clone(), nick.to_owned()));
                let mut fwd = st.el.clone();
                fwd.set_attr("from", self.occupant_jid(&me).as_str());
                fwd.set_attr("to", target.as_str());
                fwd.set_attr("id", id);
                Some(fwd)
            }
        };
        if let Some(r) = reply {
            Self::send(env, r).await;
        }
    }

    /// The answer to an IQ forwarded to an occupant goes back to the requester.
    async fn iq_response(&mut self, env: &Env<'_>, st: Stanza, from: &Jid) {
        let Some(id) = st.id() else { return };
        let Some((_, _, nick)) = self.forwarded_iqs.get(id) else { return };
        // Only the occupant asked may answer.
        if self.nick_of(from) != Some(nick.as_str()) {
            return;
        }
        let Some((orig, requester, nick)) = self.forwarded_iqs.remove(id) else { return };
        let mut el = st.el;
        el.set_attr("from", self.occupant_jid(&nick).as_str());
        el.set_attr("to", requester.as_str());
        el.set_attr("id", orig);
        Self::send(env, el).await;
    }

    // ---- IQs to the room ----

    async fn iq(&mut self, env: &Env<'_>, st: &Stanza, from: &Jid) -> Result<Option<Element>, StanzaError> {
        let is_set = st.iq_type() == Some(IqType::Set);
        let mut children = st.el.children();
        let (Some(q), None) = (children.next(), children.next()) else {
            return Err(StanzaError::bad_request("an IQ get or set carries exactly one payload"));
        };
        let aff = self.affiliation(&from.to_bare());
        match (q.ns(), is_set) {
            // §7.12: the nickname the requester reserved.
            (ns::DISCO_INFO, false) if q.attr("node") == Some("x-roomuser-item") => {
                let mut out = Element::builder("query", ns::DISCO_INFO).attr("node", "x-roomuser-item").build();
                if let Some(n) = self.reserved_nick(&from.to_bare()) {
                    out.append_child(
                        Element::builder("identity", ns::DISCO_INFO)
                            .attr("category", "conference")
                            .attr("type", "text")
                            .attr("name", n)
                            .build(),
                    );
                }
                Ok(Some(out))
            }
            (ns::DISCO_INFO, false) => Ok(Some(self.disco_info(env))),
            (ns::DISCO_ITEMS, false) => Ok(Some(self.disco_items(from))),
            (ns::PING, false) => Ok(None),
            (NS_MUC_ADMIN, false) => self.admin_get(q, from, aff),
            (NS_MUC_ADMIN, true) => self.admin_set(env, q, from, aff).await.map(|()| None),
            (NS_MUC_OWNER, false) if aff == Affiliation::Owner => {
                let max = env.svc.cfg.max_users;
                let form = self.cfg.form(&self.owners(), &self.with_affiliation(Affiliation::Admin), max);
                Ok(Some(Element::builder("query", NS_MUC_OWNER).append(form).build()))
            }
            (NS_MUC_OWNER, true) if aff == Affiliation::Owner => self.owner_set(env, q, from).await.map(|()| None),
            (NS_MUC_OWNER, _) => Err(StanzaError::forbidden().with_text("only owners may configure the room")),
            (NS_MODERATE, true) => self.moderate(env, q, from).await.map(|()| None),
            (NS_MAM2 | NS_MAM1, _) => self.mam(env, st, q, from, aff, is_set).await,
            (ns::REGISTER, false) => self.register_get(&from.to_bare(), aff).map(Some),
            (ns::REGISTER, true) => self.register_set(env, q, &from.to_bare(), aff).await.map(|()| None),
            _ => Err(StanzaError::service_unavailable()),
        }
    }

    fn features(&self, env: &Env<'_>) -> Vec<&'static str> {
        let c = &self.cfg;
        let mut f = vec![
            ns::DISCO_INFO,
            NS_MUC,
            if c.persistent { "muc_persistent" } else { "muc_temporary" },
            if c.public { "muc_public" } else { "muc_hidden" },
            if c.members_only { "muc_membersonly" } else { "muc_open" },
            if c.moderated { "muc_moderated" } else { "muc_unmoderated" },
            if c.password.is_empty() { "muc_unsecured" } else { "muc_passwordprotected" },
            if c.non_anonymous { "muc_nonanonymous" } else { "muc_semianonymous" },
            NS_OCCUPANT_ID,
            NS_MODERATE,
            ns::REGISTER,
            "http://jabber.org/protocol/muc#self-ping-optimization",
        ];
        if env.archived() {
            f.extend([NS_MAM2, "urn:xmpp:mam:2#extended", NS_MAM1]);
        }
        f.sort_unstable();
        f
    }

    fn disco_info(&self, env: &Env<'_>) -> Element {
        let name =
            if self.cfg.name.is_empty() { self.jid.node().map_or("", |n| n.as_str()) } else { self.cfg.name.as_str() };
        let mut q = Element::builder("query", ns::DISCO_INFO)
            .append(
                Element::builder("identity", ns::DISCO_INFO)
                    .attr("category", "conference")
                    .attr("type", "text")
                    .attr("name", name)
                    .build(),
            )
            .build();
        for f in self.features(env) {
            q.append_child(Element::builder("feature", ns::DISCO_INFO).attr("var", f).build());
        }
        q.append_child(roominfo(&self.cfg, self.occupants.len()));
        q
    }

    /// §6.5: occupants are listed to occupants only (nicks are not public).
    fn disco_items(&self, from: &Jid) -> Element {
        let mut q = Element::new("query", ns::DISCO_ITEMS);
        if self.nick_of(from).is_some() {
            let mut nicks: Vec<&String> = self.occupants.keys().collect();
            nicks.sort();
            for n in nicks {
                q.append_child(
                    Element::builder("item", ns::DISCO_ITEMS)
                        .attr("jid", self.occupant_jid(n).as_str())
                        .attr("name", n.as_str())
                        .build(),
                );
            }
        }
        q
    }

    async fn mam(
        &self,
        env: &Env<'_>,
        st: &Stanza,
        q: &Element,
        from: &Jid,
        aff: Affiliation,
        is_set: bool,
    ) -> Result<Option<Element>, StanzaError> {
        let Some(mam) = env.mam.filter(|_| env.archived()) else { return Err(StanzaError::service_unavailable()) };
        let ns_q: &'static str = if q.ns() == NS_MAM1 { NS_MAM1 } else { NS_MAM2 };
        // Who may read a room's archive: its occupants and members, and anyone for
        // a public room that is open.
        let allowed = aff != Affiliation::Outcast
            && (self.nick_of(from).is_some()
                || aff >= Affiliation::Member
                || (self.cfg.public && !self.cfg.members_only));
        if !allowed {
            return Err(StanzaError::forbidden().with_text("only occupants and members may read this room's archive"));
        }
        if q.name() != "query" {
            return Err(StanzaError::bad_request("only <query/> is supported on a room archive"));
        }
        if !is_set {
            return Ok(Some(crate::mam::form(ns_q)));
        }
        let (results, fin) = mam.query(env.ctx, &self.jid, from, q, ns_q).await?;
        let _ = st;
        for r in results {
            Self::send(env, r).await;
        }
        Ok(Some(fin))
    }

    // ---- XEP-0425 moderation ----

    async fn moderate(&mut self, env: &Env<'_>, q: &Element, from: &Jid) -> Result<(), StanzaError> {
        let Some(nick) = self.nick_of(from).map(str::to_owned) else {
            return Err(StanzaError::forbidden().with_text("only moderators may moderate messages"));
        };
        let Some(me) = self.occupants.get(&nick) else { return Err(StanzaError::forbidden()) };
        if me.role != Role::Moderator {
            return Err(StanzaError::forbidden().with_text("only moderators may moderate messages"));
        }
        if !q.is("moderate", NS_MODERATE) || !q.has_child("retract", NS_RETRACT) {
            return Err(StanzaError::bad_request("expected <moderate><retract/></moderate>"));
        }
        let Some(id) = q.attr("id").map(str::to_owned) else {
            return Err(StanzaError::bad_request("<moderate/> needs the message's stanza id"));
        };
        if crate::stanza_id::decode_id(&id).is_none() {
            return Err(StanzaError::item_not_found());
        }
        let reason = q.child_text("reason", NS_MODERATE);
        let by = self.occupant_jid(&nick);
        let moderated = || {
            Element::builder("moderated", NS_MODERATE)
                .attr("by", by.as_str())
                .append(Element::builder("occupant-id", NS_OCCUPANT_ID).attr("id", me.id.as_str()).build())
                .build()
        };
        let mut retract = Element::builder("retract", NS_RETRACT).attr("id", id.as_str()).append(moderated()).build();
        if let Some(r) = &reason {
            retract.append_child(Element::builder("reason", NS_RETRACT).text(r.as_str()).build());
        }
        let notice = Element::builder("message", ns::CLIENT)
            .attr("type", "groupchat")
            .attr("from", self.jid.as_str())
            .attr("id", random_id(12))
            .append(retract)
            .build();
        // The tombstone: the original's envelope, its contents replaced.
        let original = self
            .history
            .iter()
            .position(|h| h.el.children().any(|c| c.is("stanza-id", ns::SID) && c.attr("id") == Some(id.as_str())));
        let mut tomb = Element::builder("message", ns::CLIENT).attr("type", "groupchat").build();
        if let Some(i) = original {
            let h = self.history.remove(i).expect("index found");
            for a in ["from", "id"] {
                if let Some(v) = h.el.attr(a) {
                    tomb.set_attr(a, v);
                }
            }
            if let Some(o) = h.el.get_child("occupant-id", NS_OCCUPANT_ID) {
                tomb.append_child(o.clone());
            }
        }
        tomb.append_child(
            Element::builder("retracted", NS_RETRACT)
                .attr("stamp", xep82_datetime(now_ms()))
                .append(moderated())
                .build(),
        );
        if let (Some(mam), true) = (env.mam, env.archived()) {
            mam.tombstone_room(env.ctx, &self.jid, &id, tomb.to_string_with_ns());
        }
        self.broadcast(env, &notice).await;
        Ok(())
    }

    // ---- admin (§8, §9) ----

    fn admin_get(&self, q: &Element, from: &Jid, aff: Affiliation) -> Result<Option<Element>, StanzaError> {
        let it = q
            .children()
            .find(|c| c.is("item", NS_MUC_ADMIN))
            .ok_or_else(|| StanzaError::bad_request("expected <item/>"))?;
        let my_role = self.nick_of(from).and_then(|n| self.occupants.get(n)).map_or(Role::None, |o| o.role);
        let mut out = Element::new("query", NS_MUC_ADMIN);
        if let Some(a) = it.attr("affiliation") {
            let a = Affiliation::parse(a).ok_or_else(|| StanzaError::bad_request("unknown affiliation"))?;
            if a == Affiliation::None {
                return Err(StanzaError::bad_request("there is no list of affiliation none"));
            }
            if aff < Affiliation::Admin && !(a == Affiliation::Member && aff >= Affiliation::Member) {
                return Err(StanzaError::forbidden().with_text("only admins and owners may read this list"));
            }
            for jid in self.with_affiliation(a) {
                let mut i = Element::builder("item", NS_MUC_ADMIN)
                    .attr("affiliation", a.as_str())
                    .attr("jid", jid.as_str())
                    .build();
                let entry = &self.affs[&jid];
                let in_room = || self.occupants.iter().find(|(_, o)| o.bare.as_str() == jid).map(|(n, _)| n.as_str());
                if let Some(n) = Some(entry.nick.as_str()).filter(|n| !n.is_empty()).or_else(in_room) {
                    i.set_attr("nick", n);
                }
                let reason = &entry.reason;
                if !reason.is_empty() {
                    i.append_child(Element::builder("reason", NS_MUC_ADMIN).text(reason.as_str()).build());
                }
                out.append_child(i);
            }
            return Ok(Some(out));
        }
        if let Some(r) = it.attr("role") {
            let r = Role::parse(r).ok_or_else(|| StanzaError::bad_request("unknown role"))?;
            if my_role != Role::Moderator {
                return Err(StanzaError::forbidden().with_text("only moderators may read role lists"));
            }
            let mut v: Vec<(&String, &Occupant)> = self.occupants.iter().filter(|(_, o)| o.role == r).collect();
            v.sort_by(|a, b| a.0.cmp(b.0));
            for (n, o) in v {
                let real = o.sessions.last().map(|(j, _)| j.as_str().to_owned()).unwrap_or_default();
                out.append_child(
                    Element::builder("item", NS_MUC_ADMIN)
                        .attr("role", r.as_str())
                        .attr("affiliation", self.affiliation(&o.bare).as_str())
                        .attr("nick", n.as_str())
                        .attr("jid", real)
                        .build(),
                );
            }
            return Ok(Some(out));
        }
        Err(StanzaError::bad_request("an <item/> names an affiliation or a role"))
    }

    async fn admin_set(&mut self, env: &Env<'_>, q: &Element, from: &Jid, aff: Affiliation) -> Result<(), StanzaError> {
        let my_nick = self.nick_of(from).map(str::to_owned);
        let my_role = my_nick.as_ref().and_then(|n| self.occupants.get(n)).map_or(Role::None, |o| o.role);
        let mut roles: Vec<(String, Role, String)> = Vec::new();
        let mut affs: Vec<AffChange> = Vec::new();
        let items: Vec<&Element> = q.children().filter(|c| c.is("item", NS_MUC_ADMIN)).collect();
        if items.is_empty() {
            return Err(StanzaError::bad_request("expected <item/>"));
        }
        for it in items {
            let reason = it.child_text("reason", NS_MUC_ADMIN).unwrap_or_default();
            if let Some(a) = it.attr("affiliation") {
                let a = Affiliation::parse(a).ok_or_else(|| StanzaError::bad_request("unknown affiliation"))?;
                let target = match (it.attr("jid"), it.attr("nick")) {
                    (Some(j), _) => {
                        Jid::new(j).map_err(|_| StanzaError::new(StanzaErrorCondition::JidMalformed))?.to_bare()
                    }
                    (None, Some(n)) => {
                        self.occupants.get(n).map(|o| o.bare.clone()).ok_or_else(StanzaError::item_not_found)?
                    }
                    (None, None) => return Err(StanzaError::bad_request("an affiliation change names a jid")),
                };
                let current = self.affiliation(&target);
                // §9, §10: admins manage members and outcasts below admin;
                // owners manage everything.
                let ok = match aff {
                    Affiliation::Owner => true,
                    Affiliation::Admin => current < Affiliation::Admin && a < Affiliation::Admin,
                    _ => false,
                };
                if !ok {
                    return Err(StanzaError::not_allowed().with_text("you may not change this affiliation"));
                }
                affs.push((target, a, reason, None));
            } else if let Some(r) = it.attr("role") {
                let r = Role::parse(r).ok_or_else(|| StanzaError::bad_request("unknown role"))?;
                let nick = it.attr("nick").ok_or_else(|| StanzaError::bad_request("a role change names a nick"))?;
                let target = self.occupants.get(nick).ok_or_else(StanzaError::item_not_found)?;
                let target_aff = self.affiliation(&target.bare);
                if my_role != Role::Moderator {
                    return Err(StanzaError::forbidden().with_text("only moderators may change roles"));
                }
                // §8.2, §9.6: nobody changes the role of a higher affiliation;
                // only admins and owners grant or revoke moderation.
                let ok = target_aff <= aff
                    && !(target_aff >= Affiliation::Admin && r < Role::Moderator)
                    && (r != Role::Moderator && target.role != Role::Moderator || aff >= Affiliation::Admin);
                if !ok {
                    return Err(StanzaError::not_allowed().with_text("you may not change this occupant's role"));
                }
                roles.push((nick.to_owned(), r, reason));
            } else {
                return Err(StanzaError::bad_request("an <item/> names an affiliation or a role"));
            }
        }
        // The room keeps an owner.
        let mut owners: Vec<String> = self.owners();
        for (j, a, _, _) in &affs {
            owners.retain(|o| o != j.as_str());
            if *a == Affiliation::Owner {
                owners.push(j.as_str().to_owned());
            }
        }
        if owners.is_empty() {
            return Err(StanzaError::new(StanzaErrorCondition::Conflict).with_text("the room must keep an owner"));
        }
        if !affs.is_empty() {
            self.apply_affiliations(env, affs, my_nick.as_deref()).await?;
        }
        for (nick, r, reason) in roles {
            self.set_role(env, &nick, r, my_nick.as_deref(), &reason).await;
        }
        Ok(())
    }

    async fn set_role(&mut self, env: &Env<'_>, nick: &str, r: Role, actor: Option<&str>, reason: &str) {
        if r == Role::None {
            return self.remove_occupant(env, nick, Removal::Kicked, actor, reason).await;
        }
        if let Some(o) = self.occupants.get_mut(nick) {
            o.role = r;
        }
        self.broadcast_presence(env, nick, &[status("110")], &[]).await;
    }

    /// Stores and applies affiliation changes, then tells the occupants
    /// concerned (those whose affiliation changed). A change's nickname is the
    /// reservation to keep (`None`: the current one); a user who loses the
    /// affiliation, or is banned, loses the reservation too.
    async fn apply_affiliations(
        &mut self,
        env: &Env<'_>,
        changes: Vec<AffChange>,
        actor: Option<&str>,
    ) -> Result<(), StanzaError> {
        let changes: Vec<(BareJid, Affiliation, String, String)> = changes
            .into_iter()
            .map(|(j, a, reason, nick)| {
                let nick = match a {
                    Affiliation::None | Affiliation::Outcast => String::new(),
                    _ => nick.unwrap_or_else(|| self.reserved_nick(&j).unwrap_or_default().to_owned()),
                };
                (j, a, reason, nick)
            })
            .collect();
        if self.stored {
            let rows: Vec<RoomAffiliation> = changes
                .iter()
                .map(|(j, a, r, nick)| RoomAffiliation {
                    jid: j.as_str().to_owned(),
                    affiliation: a.as_str().to_owned(),
                    reason: r.clone(),
                    nick: nick.clone(),
                })
                .collect();
            let (service, room) = (self.jid.domain().as_str(), self.jid.node().map_or("", |n| n.as_str()));
            if let Err(e) = env.ctx.stores.muc.set_affiliations(service, room, &rows).await {
                tracing::error!(room = %self.jid, error = %e, "storing room affiliations");
                return Err(StanzaError::internal());
            }
        }
        for (jid, a, reason, nick) in changes {
            let before = self.affiliation(&jid);
            let old = if a == Affiliation::None {
                self.affs.remove(jid.as_str())
            } else {
                if !nick.is_empty() {
                    self.reserved.insert(nick.clone(), jid.as_str().to_owned());
                }
                self.affs.insert(jid.as_str().to_owned(), Aff { aff: a, reason: reason.clone(), nick })
            };
            // The previous reservation ends unless it is the one just kept.
            if let Some(old) = old.filter(|o| !o.nick.is_empty()) {
                if self.reserved.get(&old.nick).is_some_and(|j| *j == *jid.as_str())
                    && self.affs.get(jid.as_str()).is_none_or(|e| e.nick != old.nick)
                {
                    self.reserved.remove(&old.nick);
                }
            }
            if before == a {
                continue;
            }
            let nicks: Vec<String> =
                self.occupants.iter().filter(|(_, o)| o.bare == jid).map(|(n, _)| n.clone()).collect();
            for nick in nicks {
                if a == Affiliation::Outcast {
                    self.remove_occupant(env, &nick, Removal::Banned, actor, &reason).await;
                } else if self.cfg.members_only && a < Affiliation::Member {
                    self.remove_occupant(env, &nick, Removal::MembersOnlyAffiliation, actor, &reason).await;
                } else {
                    let role = self.default_role(a);
                    if let Some(o) = self.occupants.get_mut(&nick) {
                        o.role = role;
                    }
                    self.broadcast_presence(env, &nick, &[status("110")], &[]).await;
                }
            }
        }
        Ok(())
    }

    // ---- registration (§7.10) ----

    /// Whether `aff` may register: not banned, and in a members-only room
    /// already on the member list (registration then only reserves a
    /// nickname; membership there is granted by admins).
    fn may_register(&self, aff: Affiliation) -> Result<(), StanzaError> {
        if aff == Affiliation::Outcast {
            return Err(StanzaError::not_allowed().with_text("you are banned from this room"));
        }
        if self.cfg.members_only && aff < Affiliation::Member {
            return Err(
                StanzaError::not_allowed().with_text("the room is members-only: membership is granted by its admins")
            );
        }
        Ok(())
    }

    /// The registration form, or the nickname already registered.
    fn register_get(&self, bare: &BareJid, aff: Affiliation) -> Result<Element, StanzaError> {
        self.may_register(aff)?;
        let mut q = Element::new("query", ns::REGISTER);
        if let Some(n) = self.reserved_nick(bare) {
            q.append_child(Element::new("registered", ns::REGISTER));
            q.append_child(Element::builder("username", ns::REGISTER).text(n).build());
            return Ok(q);
        }
        let field =
            |var: &str, kind: &str| Element::builder("field", ns::DATA_FORMS).attr("var", var).attr("type", kind);
        let x = Element::builder("x", ns::DATA_FORMS)
            .attr("type", "form")
            .append(Element::builder("title", ns::DATA_FORMS).text(format!("Registration with {}", self.jid)).build())
            .append(
                Element::builder("instructions", ns::DATA_FORMS)
                    .text("Choose the nickname to reserve in this room; registering makes you a member.")
                    .build(),
            )
            .append(
                field("FORM_TYPE", "hidden")
                    .append(Element::builder("value", ns::DATA_FORMS).text(NS_MUC_REGISTER).build())
                    .build(),
            )
            .append(
                field("muc#register_roomnick", "text-single")
                    .attr("label", "Nickname")
                    .append(Element::new("required", ns::DATA_FORMS))
                    .build(),
            )
            .build();
        q.append_child(x);
        Ok(q)
    }

    /// A submitted registration form (the user becomes a member with the
    /// nickname reserved), a cancelled one, or `<remove/>` (XEP-0077 §3.2:
    /// the reservation goes, and a member's membership with it).
    async fn register_set(
        &mut self,
        env: &Env<'_>,
        q: &Element,
        bare: &BareJid,
        aff: Affiliation,
    ) -> Result<(), StanzaError> {
        self.may_register(aff)?;
        let reason = self.affs.get(bare.as_str()).map(|e| e.reason.clone()).unwrap_or_default();
        if q.has_child("remove", ns::REGISTER) {
            let change = match aff {
                Affiliation::Member => (bare.clone(), Affiliation::None, String::new(), None),
                a if a > Affiliation::Member => (bare.clone(), a, reason, Some(String::new())),
                _ => return Err(StanzaError::item_not_found().with_text("you are not registered with this room")),
            };
            return self.apply_affiliations(env, vec![change], None).await;
        }
        let x = q
            .get_child("x", ns::DATA_FORMS)
            .ok_or_else(|| StanzaError::bad_request("expected a muc#register data form"))?;
        if x.attr("type") == Some("cancel") {
            return Ok(());
        }
        if x.attr("type") != Some("submit")
            || super::config::form_value(x, "FORM_TYPE").is_some_and(|t| t != NS_MUC_REGISTER)
        {
            return Err(StanzaError::bad_request("expected a submitted muc#register form"));
        }
        let wanted = super::config::form_value(x, "muc#register_roomnick").unwrap_or_default();
        // The nickname as an occupant JID's resource (RFC 7622 resourceprep).
        let nick = Jid::new(&format!("{}/{}", self.jid, wanted.trim()))
            .ok()
            .and_then(|j| j.resource().map(|r| r.as_str().to_owned()))
            .filter(|n| !n.is_empty())
            .ok_or_else(|| StanzaError::bad_request("muc#register_roomnick is not a valid nickname"))?;
        let taken = self.reserved_by(&nick).is_some_and(|j| j != bare.as_str())
            || self.occupants.get(&nick).is_some_and(|o| o.bare != *bare);
        if taken {
            return Err(
                StanzaError::new(StanzaErrorCondition::Conflict).with_text("this nickname is reserved or in use")
            );
        }
        let change = (bare.clone(), aff.max(Affiliation::Member), reason, Some(nick));
        self.apply_affiliations(env, vec![change], None).await
    }

    // ---- owner (§10) ----

    async fn owner_set(&mut self, env: &Env<'_>, q: &Element, from: &Jid) -> Result<(), StanzaError> {
        if let Some(d) = q.get_child("destroy", NS_MUC_OWNER) {
            return self.destroy(env, d).await;
        }
        let Some(x) = q.get_child("x", ns::DATA_FORMS) else {
            return Err(StanzaError::bad_request("expected a data form or <destroy/>"));
        };
        match x.attr("type") {
            Some("cancel") => {
                // §10.1.3: cancelling the first configuration destroys the new room.
                if self.locked {
                    self.destroy(env, &Element::new("destroy", NS_MUC_OWNER)).await?;
                }
                return Ok(());
            }
            Some("submit") => {}
            _ => return Err(StanzaError::bad_request("the form must be of type submit or cancel")),
        }
        let before = self.cfg.clone();
        let max_users = env.svc.cfg.max_users;
        let max_history = env.svc.cfg.history_length;
        let lists = self.cfg.apply_form(x, max_users, max_history)?;
        let mut changes: Vec<AffChange> = Vec::new();
        for (list, a) in [(&lists.owners, Affiliation::Owner), (&lists.admins, Affiliation::Admin)] {
            let Some(list) = list else { continue };
            let wanted: Vec<BareJid> = list
                .iter()
                .filter(|s| !s.trim().is_empty())
                .map(|s| Jid::new(s.trim()).map(|j| j.to_bare()))
                .collect::<Result<_, _>>()
                .map_err(|_| StanzaError::new(StanzaErrorCondition::JidMalformed))?;
            for j in self.with_affiliation(a) {
                if !wanted.iter().any(|w| w.as_str() == j) {
                    if let Ok(b) = BareJid::new(&j) {
                        changes.push((b, Affiliation::None, String::new(), None));
                    }
                }
            }
            for w in wanted {
                changes.push((w, a, String::new(), None));
            }
        }
        if lists.owners.as_ref().is_some_and(|o| o.iter().all(|s| s.trim().is_empty())) {
            self.cfg = before;
            return Err(StanzaError::new(StanzaErrorCondition::Conflict).with_text("the room must keep an owner"));
        }
        let was_locked = self.locked;
        self.locked = false;
        if let Err(e) = self.persist(env).await {
            self.cfg = before;
            self.locked = was_locked;
            return Err(e);
        }
        if !changes.is_empty() {
            self.apply_affiliations(env, changes, self.nick_of(from).map(str::to_owned).as_deref()).await?;
        }
        // §10.2.1: occupants learn that the configuration changed.
        if !was_locked {
            let mut x = Element::builder("x", NS_MUC_USER).append(status("104")).build();
            if before.non_anonymous != self.cfg.non_anonymous {
                x.append_child(status(if self.cfg.non_anonymous { "172" } else { "173" }));
            }
            let notice = Element::builder("message", ns::CLIENT)
                .attr("type", "groupchat")
                .attr("from", self.jid.as_str())
                .attr("id", random_id(12))
                .append(x)
                .build();
            self.broadcast(env, &notice).await;
        }
        // §9.4.1 / §10.2: a room that became members-only loses its non-members.
        if self.cfg.members_only && !before.members_only {
            let out: Vec<String> = self
                .occupants
                .iter()
                .filter(|(_, o)| self.affiliation(&o.bare) < Affiliation::Member)
                .map(|(n, _)| n.clone())
                .collect();
            for n in out {
                self.remove_occupant(env, &n, Removal::MembersOnlyRoom, None, "").await;
            }
        }
        Ok(())
    }

    /// Brings storage in line with the configuration: a persistent room is
    /// stored (created with its affiliations, or updated).
    async fn persist(&mut self, env: &Env<'_>) -> Result<(), StanzaError> {
        let muc = &env.ctx.stores.muc;
        let (service, room) = (self.jid.domain().as_str(), self.jid.node().map_or("", |n| n.as_str()));
        let res = if self.cfg.persistent && !self.stored {
            let rows: Vec<RoomAffiliation> = self
                .affs
                .iter()
                .map(|(j, a)| RoomAffiliation {
                    jid: j.clone(),
                    affiliation: a.aff.as_str().to_owned(),
                    reason: a.reason.clone(),
                    nick: a.nick.clone(),
                })
                .collect();
            match muc.create_room(service, room, &self.cfg.to_stored(), &rows).await {
                Err(meerkat_storage::Error::AlreadyExists) => {
                    // A row left by an earlier incarnation: replace it.
                    let _ = muc.delete_room(service, room).await;
                    muc.create_room(service, room, &self.cfg.to_stored(), &rows).await
                }
                r => r,
            }
            .map(|()| self.stored = true)
        } else if self.stored && !self.cfg.persistent {
            muc.delete_room(service, room).await.map(|_| self.stored = false)
        } else if self.stored {
            muc.update_room(service, room, &self.cfg.to_stored()).await
        } else {
            Ok(())
        };
        res.map_err(|e| {
            tracing::error!(room = %self.jid, error = %e, "storing a room");
            StanzaError::internal()
        })
    }

    async fn save_config(&mut self, env: &Env<'_>) {
        if self.stored {
            let _ = self.persist(env).await;
        }
    }

    /// §10.9: everyone leaves with the destroy notice; the room and its data are gone.
    async fn destroy(&mut self, env: &Env<'_>, d: &Element) -> Result<(), StanzaError> {
        if self.stored {
            let (service, room) = (self.jid.domain().as_str(), self.jid.node().map_or("", |n| n.as_str()));
            if let Err(e) = env.ctx.stores.muc.delete_room(service, room).await {
                tracing::error!(room = %self.jid, error = %e, "deleting a room");
                return Err(StanzaError::internal());
            }
            self.stored = false;
        }
        let mut destroy = Element::builder("destroy", NS_MUC_USER).build();
        if let Some(j) = d.attr("jid") {
            destroy.set_attr("jid", j);
        }
        if let Some(r) = d.child_text("reason", NS_MUC_OWNER) {
            destroy.append_child(Element::builder("reason", NS_MUC_USER).text(r).build());
        }
        for (nick, o) in &self.occupants {
            let p = Element::builder("presence", ns::CLIENT)
                .attr("type", "unavailable")
                .attr("from", self.occupant_jid(nick).as_str())
                .append(
                    Element::builder("x", NS_MUC_USER)
                        .append(item(Affiliation::None, Role::None, None, None))
                        .append(destroy.clone())
                        .append(status("110"))
                        .build(),
                )
                .build();
            for (j, _) in &o.sessions {
                let mut c = p.clone();
                c.set_attr("to", j.as_str());
                Self::send(env, c).await;
            }
        }
        self.occupants.clear();
        self.by_jid.clear();
        self.history.clear();
        self.destroyed = true;
        Ok(())
    }

    /// A room the owner's first join created: stored right away when the
    /// defaults make it persistent.
    pub(crate) async fn created(&mut self, env: &Env<'_>) -> Result<(), StanzaError> {
        self.persist(env).await
    }
}

/// The client's presence as kept for broadcast: its show, status, priority and
/// extensions, without the MUC join element.
fn client_presence(el: &Element) -> Element {
    let mut p = el.clone();
    p.remove_children(|c| c.is("x", NS_MUC) || c.is("x", NS_MUC_USER) || c.is("occupant-id", NS_OCCUPANT_ID));
    p.remove_attr("type");
    p
}
