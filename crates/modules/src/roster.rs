//! Rosters and presence subscriptions (RFC 6121 §2 and §3) with roster versioning
//! (XEP-0237).
//!
//! - The `jabber:iq:roster` IQ (get, set, remove) for the owner's sessions.
//! - Outbound subscription presence from the user's sessions (§3.1.2, §3.1.5,
//!   §3.2.2, §3.3.2, §3.4 pre-approval).
//! - Inbound subscription presence for a local user, online or not (§3.1.3,
//!   §3.1.6, §3.2.3, §3.3.3), with pending requests stored and redelivered at login.
//! - Roster pushes (§2.1.6) as [`RosterChange`] events to every session of the user,
//!   which also keep each session's cached roster current.
//!
//! Every change to a stored item is a read-modify-write of that item from storage
//! under the owner's lock ([`UserLocks`]), never from a session's cached roster: the
//! cache learns of changes through the session's mailbox, so two changes close
//! together (the user's `subscribed` crossing the contact's) would otherwise start
//! from a stale item and undo one another. No stanza is routed while a lock is held
//! (routing may reach the other party's roster, whose handling may route back).
//! The lock is per node; a cluster needs the same guarantee from storage.

use std::collections::HashMap;
use std::sync::Arc;

use meerkat_config::RosterCfg;
use meerkat_core::hooks::{DeliveryHooks, Flow, IqHandler, IqRequest, IqResult, IqScope, SessionHooks};
use meerkat_core::session::{ensure_roster, RosterChange};
use meerkat_core::{account, event_as, HookRegistry, Module, ServerContext, SessionEvent, SessionMsg, SessionState};
use meerkat_stanza::{ns, BareJid, Jid, Stanza, StanzaError, StanzaErrorCondition};
use meerkat_storage::{RosterItem, Subscription};
use meerkat_xml::Element;

/// The roster module (always on).
pub struct Roster {
    cfg: RosterCfg,
    locks: UserLocks,
}

impl Roster {
    /// With options from `[modules.mod_roster]`.
    pub fn new(cfg: RosterCfg) -> Self {
        Roster { cfg, locks: UserLocks::default() }
    }
}

/// One async lock per user whose roster is being changed; an entry lives only
/// while someone holds or waits for it.
#[derive(Default)]
struct UserLocks(parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

/// Holds a user's roster lock; see [`UserLocks`].
struct UserGuard<'a> {
    locks: &'a UserLocks,
    user: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    /// The storage's lock, when several processes share it (a cluster).
    _shared: Option<meerkat_storage::RosterLock>,
}

impl UserLocks {
    /// This node's lock on `user`'s roster, then the storage's (which serialises
    /// the change against the other nodes of a cluster).
    async fn lock(&self, ctx: &ServerContext, user: &BareJid) -> Result<UserGuard<'_>, StanzaError> {
        let lock = self.0.lock().entry(user.as_str().to_string()).or_default().clone();
        let guard = lock.clone().lock_owned().await;
        let mut g = UserGuard { locks: self, user: user.as_str().to_string(), lock, guard: Some(guard), _shared: None };
        let acc = account(user).ok_or_else(StanzaError::internal)?;
        g._shared = ctx.stores.roster.lock_roster(acc).await.map_err(|e| {
            tracing::error!(user = %user, error = %e, "storage failure locking a roster");
            StanzaError::internal()
        })?;
        Ok(g)
    }
}

impl Drop for UserGuard<'_> {
    fn drop(&mut self) {
        self._shared = None;
        self.guard = None;
        let mut map = self.locks.0.lock();
        // Clones are made only under the map's lock: the map's and ours are the
        // last two, so nobody waits for this user.
        if Arc::strong_count(&self.lock) == 2 {
            map.remove(&self.user);
        }
    }
}

impl Module for Roster {
    fn name(&self) -> &'static str {
        "mod_roster"
    }

    fn register(self: Arc<Self>, reg: &mut HookRegistry) {
        reg.on_iq(IqScope::Account, ns::ROSTER, self.clone());
        reg.on_session(10, self.clone());
        reg.on_delivery(10, self);
        reg.event_decoder(meerkat_core::session::ROSTER_CHANGE_NS, RosterChange::decode);
    }
}

fn item_element(item: &RosterItem, removed: bool) -> Element {
    let mut el = Element::new("item", ns::ROSTER);
    el.set_attr("jid", item.jid.clone());
    if removed {
        el.set_attr("subscription", "remove");
        return el;
    }
    if let Some(n) = &item.name {
        el.set_attr("name", n.clone());
    }
    el.set_attr("subscription", item.subscription.as_str());
    if item.ask_out {
        el.set_attr("ask", "subscribe");
    }
    if item.approved {
        el.set_attr("approved", "true");
    }
    for g in &item.groups {
        el.append_child(Element::builder("group", ns::ROSTER).text(g.clone()).build());
    }
    el
}

/// Stores an item and tells every session of the user (RFC 6121 §2.1.6).
async fn save(ctx: &ServerContext, user: &BareJid, item: RosterItem) -> Result<(), StanzaError> {
    save_from(ctx, user, item, None).await.map(|_| ())
}

/// [`save`], noting the session that made the change (it pushes to its own client
/// at once, before its IQ result).
async fn save_from(
    ctx: &ServerContext,
    user: &BareJid,
    item: RosterItem,
    origin: Option<&mut SessionState>,
) -> Result<Arc<RosterChange>, StanzaError> {
    let acc = account(user).ok_or_else(StanzaError::internal)?;
    let version = ctx.stores.roster.put_item(acc, &item).await.map_err(|e| {
        tracing::error!(user = %user, error = %e, "storage failure saving a roster item");
        StanzaError::internal()
    })?;
    let change = Arc::new(RosterChange { item, removed: false, version, origin: origin.as_ref().map(|s| s.id) });
    if let Some(s) = origin {
        apply_and_push(s, &change, versioning_of(ctx));
    }
    ctx.router.send_all(user, &|| SessionMsg::Event(change.clone()));
    Ok(change)
}

fn versioning_of(ctx: &ServerContext) -> bool {
    ctx.config.modules.mod_roster.as_ref().is_none_or(|r| r.versioning)
}

/// Updates a session's cached roster and pushes the change to its client if it
/// asked for the roster (RFC 6121 §2.1.6).
fn apply_and_push(s: &mut SessionState, change: &RosterChange, versioning: bool) {
    if let Some(r) = &mut s.roster {
        if !r.apply(change) {
            return; // older than what the session holds: neither cached nor pushed
        }
    }
    if s.roster_requested && (change.removed || change.item.visible) {
        let mut q = Element::new("query", ns::ROSTER);
        if versioning {
            q.set_attr("ver", change.version.to_string());
        }
        q.append_child(item_element(&change.item, change.removed));
        let push = Element::builder("iq", ns::CLIENT)
            .attr("type", "set")
            .attr("id", format!("push-{}", meerkat_core::util::random_id(10)))
            .attr("to", s.jid.as_str())
            .append(q)
            .build();
        s.send(push);
    }
}

async fn remove(ctx: &ServerContext, user: &BareJid, jid: &str) -> Result<(), StanzaError> {
    remove_from(ctx, user, jid, None).await
}

async fn remove_from(
    ctx: &ServerContext,
    user: &BareJid,
    jid: &str,
    origin: Option<&mut SessionState>,
) -> Result<(), StanzaError> {
    let acc = account(user).ok_or_else(StanzaError::internal)?;
    let version = ctx.stores.roster.delete_item(acc, jid).await.map_err(|e| {
        tracing::error!(user = %user, error = %e, "storage failure removing a roster item");
        StanzaError::internal()
    })?;
    if let Some(version) = version {
        let item = RosterItem { jid: jid.to_string(), ..RosterItem::default() };
        let change = Arc::new(RosterChange { item, removed: true, version, origin: origin.as_ref().map(|s| s.id) });
        if let Some(s) = origin {
            apply_and_push(s, &change, versioning_of(ctx));
        }
        ctx.router.send_all(user, &|| SessionMsg::Event(change.clone()));
    }
    Ok(())
}

async fn load(ctx: &ServerContext, user: &BareJid, contact: &str) -> Result<RosterItem, StanzaError> {
    let acc = account(user).ok_or_else(StanzaError::internal)?;
    match ctx.stores.roster.get_item(acc, contact).await {
        Ok(Some(i)) => Ok(i),
        Ok(None) => Ok(RosterItem { jid: contact.to_string(), ..RosterItem::default() }),
        Err(e) => {
            tracing::error!(user = %user, error = %e, "storage failure reading a roster item");
            Err(StanzaError::internal())
        }
    }
}

/// Routes a presence of `ty` from `from` to `to` (bare JIDs).
async fn send_presence(ctx: &ServerContext, from: &str, to: &str, ty: Option<&str>) {
    let mut el = Element::builder("presence", ns::CLIENT).attr("from", from).attr("to", to).build();
    if let Some(t) = ty {
        el.set_attr("type", t);
    }
    ctx.route(Stanza::from_trusted(el)).await;
}

/// Sends the current presence of each of `user`'s available resources to `to`
/// (RFC 6121 §3.1.5), or unavailable from each of them (§3.2.2, §3.3.3).
async fn send_resources_presence(ctx: &ServerContext, user: &BareJid, to: &str, unavailable: bool) {
    for s in ctx.router.sessions(user) {
        let Some(p) = s.presence else { continue };
        let mut el = if unavailable {
            Element::builder("presence", ns::CLIENT).attr("type", "unavailable").build()
        } else {
            (*p).clone()
        };
        el.set_attr("from", s.jid.as_str());
        el.set_attr("to", to);
        ctx.route(Stanza::from_trusted(el)).await;
    }
}

impl Roster {
    async fn get(&self, ctx: &ServerContext, s: &mut SessionState, payload: &Element) -> IqResult {
        let versioning = self.cfg.versioning;
        // Items other modules add (MUC Light rooms) change on their own: their
        // digest is part of the version, so a client with an older list gets it.
        let mut extra = Vec::new();
        for h in &ctx.hooks.roster_extra {
            extra.extend(h.roster_items(ctx, &s.bare).await);
        }
        let roster = ensure_roster(ctx, s).await?;
        let current = roster.version.to_string();
        let mut items: Vec<&RosterItem> = roster.items.values().filter(|i| i.visible).collect();
        items.sort_by(|a, b| a.jid.cmp(&b.jid));
        let mut q = Element::new("query", ns::ROSTER);
        let current = if extra.is_empty() {
            current
        } else {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in extra.iter().flat_map(|e| e.to_string_with_ns().into_bytes()) {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
            format!("{current}-{h:x}")
        };
        if versioning {
            // XEP-0237 §3.3: the client is up to date: empty result, pushes follow.
            if payload.attr("ver") == Some(current.as_str()) {
                s.roster_requested = true;
                return Ok(None);
            }
            q.set_attr("ver", current);
        }
        for i in items {
            q.append_child(item_element(i, false));
        }
        for e in extra {
            q.append_child(e);
        }
        s.roster_requested = true;
        Ok(Some(q))
    }

    async fn set(&self, ctx: &ServerContext, s: &mut SessionState, payload: &Element) -> IqResult {
        // RFC 6121 §2.3.3: exactly one item.
        let mut items = payload.children().filter(|c| c.is("item", ns::ROSTER));
        let (Some(item), None) = (items.next(), items.next()) else {
            return Err(StanzaError::bad_request("a roster set carries exactly one item"));
        };
        let jid = item
            .attr("jid")
            .and_then(|j| Jid::new(j).ok())
            .ok_or_else(|| StanzaError::new(StanzaErrorCondition::JidMalformed))?;
        if jid.resource().is_some() {
            return Err(StanzaError::bad_request("roster items are bare JIDs"));
        }
        let contact = jid.to_bare();
        let user = s.bare.clone();
        if item.attr("subscription") == Some("remove") {
            let existing = load(ctx, &user, contact.as_str()).await?;
            // RFC 6121 §2.5.2: cancel subscriptions in both directions.
            if matches!(existing.subscription, Subscription::To | Subscription::Both) || existing.ask_out {
                send_presence(ctx, user.as_str(), contact.as_str(), Some("unsubscribe")).await;
            }
            if matches!(existing.subscription, Subscription::From | Subscription::Both) || existing.pending_in {
                send_presence(ctx, user.as_str(), contact.as_str(), Some("unsubscribed")).await;
            }
            let roster = ensure_roster(ctx, s).await?;
            if !roster.items.contains_key(contact.as_str()) {
                return Err(StanzaError::item_not_found());
            }
            let _guard = self.locks.lock(ctx, &user).await?;
            remove_from(ctx, &user, contact.as_str(), Some(s)).await?;
            return Ok(None);
        }
        let mut groups: Vec<String> = Vec::new();
        for g in item.children().filter(|c| c.is("group", ns::ROSTER)) {
            let name = g.text();
            if name.is_empty() || name.len() > 1023 {
                return Err(StanzaError::new(StanzaErrorCondition::NotAcceptable).with_text("invalid group name"));
            }
            if groups.contains(&name) {
                return Err(StanzaError::bad_request("duplicate group"));
            }
            groups.push(name);
        }
        let name = item.attr("name").map(str::to_string);
        if name.as_ref().is_some_and(|n| n.len() > 1023) {
            return Err(StanzaError::new(StanzaErrorCondition::NotAcceptable).with_text("name too long"));
        }
        let visible = ensure_roster(ctx, s).await?.items.values().filter(|i| i.visible).count();
        let _guard = self.locks.lock(ctx, &user).await?;
        let mut it = load(ctx, &user, contact.as_str()).await?;
        if !it.visible && visible >= self.cfg.max_roster_size {
            return Err(StanzaError::new(StanzaErrorCondition::NotAllowed).with_text("roster is full"));
        }
        it.name = name.filter(|n| !n.is_empty());
        it.groups = groups;
        it.visible = true;
        save_from(ctx, &user, it, Some(s)).await?;
        Ok(None)
    }

    /// RFC 6121 §3: subscription presence sent by the user.
    async fn outbound(&self, ctx: &ServerContext, s: &mut SessionState, st: &Stanza, ty: &str) -> Flow {
        let Some(to) = &st.to else { return Flow::Drop };
        let contact = to.to_bare();
        if contact == s.bare {
            return Flow::Drop;
        }
        let user = s.bare.clone();
        let guard = match self.locks.lock(ctx, &user).await {
            Ok(g) => g,
            Err(e) => return Flow::Bounce(e),
        };
        let mut it = match load(ctx, &user, contact.as_str()).await {
            Ok(i) => i,
            Err(e) => return Flow::Bounce(e),
        };
        let before = it.clone();
        let mut route = true;
        let mut then_presence: Option<bool> = None;
        match ty {
            "subscribe" => {
                if !matches!(it.subscription, Subscription::To | Subscription::Both) {
                    it.ask_out = true;
                }
                it.visible = true;
            }
            "subscribed" => {
                if it.pending_in {
                    it.subscription = match it.subscription {
                        Subscription::None => Subscription::From,
                        Subscription::To => Subscription::Both,
                        other => other,
                    };
                    it.pending_in = false;
                    it.pending_in_stanza = None;
                    it.visible = true;
                    then_presence = Some(false);
                } else if matches!(it.subscription, Subscription::None | Subscription::To) {
                    // §3.4: pre-approval; not routed.
                    it.approved = true;
                    it.visible = true;
                    route = false;
                } else {
                    route = false;
                }
            }
            "unsubscribe" => {
                it.subscription = match it.subscription {
                    Subscription::To => Subscription::None,
                    Subscription::Both => Subscription::From,
                    other => other,
                };
                it.ask_out = false;
            }
            "unsubscribed" => {
                if matches!(it.subscription, Subscription::From | Subscription::Both) {
                    then_presence = Some(true);
                }
                it.subscription = match it.subscription {
                    Subscription::From => Subscription::None,
                    Subscription::Both => Subscription::To,
                    other => other,
                };
                it.pending_in = false;
                it.pending_in_stanza = None;
                it.approved = false;
            }
            _ => return Flow::Continue,
        }
        if it != before {
            if let Err(e) = save_from(ctx, &user, it, Some(s)).await {
                return Flow::Bounce(e);
            }
        }
        drop(guard);
        if route {
            // §3.1.2: outbound subscription stanzas carry the user's bare JID.
            let mut el = st.el.clone();
            el.set_attr("from", user.as_str());
            el.set_attr("to", contact.as_str());
            ctx.route(Stanza::from_trusted(el)).await;
        }
        if let Some(unavailable) = then_presence {
            send_resources_presence(ctx, &user, contact.as_str(), unavailable).await;
        }
        Flow::Drop
    }

    /// RFC 6121 §3: subscription presence arriving for local user `user`.
    async fn inbound(&self, ctx: &ServerContext, user: &BareJid, st: &Stanza) -> Result<Flow, StanzaError> {
        let Some(from) = &st.from else { return Ok(Flow::Drop) };
        let contact = from.to_bare();
        if &contact == user {
            return Ok(Flow::Drop);
        }
        let Some(acc) = account(user) else { return Ok(Flow::Drop) };
        if !ctx.stores.auth.user_exists(acc).await.map_err(|e| {
            tracing::error!(user = %user, error = %e, "storage failure checking an account");
            StanzaError::internal()
        })? {
            // RFC 6121 §8.5.1: no such account; presence is silently dropped.
            return Ok(Flow::Drop);
        }
        let guard = self.locks.lock(ctx, user).await?;
        let mut it = load(ctx, user, contact.as_str()).await?;
        let before = it.clone();
        let mut unavailable_after = false;
        let ty = st.type_attr().unwrap_or_default();
        let flow = match ty {
            "subscribe" => {
                if matches!(it.subscription, Subscription::From | Subscription::Both) {
                    // §3.1.3: already subscribed: answer for the user.
                    drop(guard);
                    send_presence(ctx, user.as_str(), contact.as_str(), Some("subscribed")).await;
                    return Ok(Flow::Drop);
                } else if it.approved {
                    // §3.4: pre-approved.
                    it.subscription =
                        if it.subscription == Subscription::To { Subscription::Both } else { Subscription::From };
                    it.approved = false;
                    save(ctx, user, it.clone()).await?;
                    drop(guard);
                    send_presence(ctx, user.as_str(), contact.as_str(), Some("subscribed")).await;
                    send_resources_presence(ctx, user, contact.as_str(), false).await;
                    return Ok(Flow::Drop);
                } else {
                    it.pending_in = true;
                    let mut el = st.el.clone();
                    el.set_attr("from", contact.as_str());
                    el.remove_attr("to");
                    it.pending_in_stanza = Some(el.to_string_with_ns());
                    Flow::Continue
                }
            }
            "subscribed" => {
                if it.ask_out {
                    it.subscription = match it.subscription {
                        Subscription::None => Subscription::To,
                        Subscription::From => Subscription::Both,
                        other => other,
                    };
                    it.ask_out = false;
                    Flow::Continue
                } else {
                    Flow::Drop // §3.1.6: not requested
                }
            }
            "unsubscribe" => {
                let was = matches!(it.subscription, Subscription::From | Subscription::Both) || it.pending_in;
                it.subscription = match it.subscription {
                    Subscription::From => Subscription::None,
                    Subscription::Both => Subscription::To,
                    other => other,
                };
                it.pending_in = false;
                it.pending_in_stanza = None;
                if was {
                    // §3.3.3: the contact no longer sees the user's presence
                    // (sent once the item is saved and the lock released).
                    unavailable_after = true;
                    Flow::Continue
                } else {
                    Flow::Drop
                }
            }
            "unsubscribed" => {
                if matches!(it.subscription, Subscription::To | Subscription::Both) || it.ask_out {
                    it.subscription = match it.subscription {
                        Subscription::To => Subscription::None,
                        Subscription::Both => Subscription::From,
                        other => other,
                    };
                    it.ask_out = false;
                    Flow::Continue
                } else {
                    Flow::Drop
                }
            }
            _ => Flow::Continue,
        };
        if it != before {
            if !it.visible && it.subscription == Subscription::None && !it.pending_in && !it.ask_out {
                remove(ctx, user, contact.as_str()).await?;
            } else {
                save(ctx, user, it).await?;
            }
        }
        drop(guard);
        if unavailable_after {
            send_resources_presence(ctx, user, contact.as_str(), true).await;
        }
        Ok(flow)
    }
}

#[async_trait::async_trait]
impl IqHandler for Roster {
    async fn handle_iq(&self, ctx: &ServerContext, req: IqRequest<'_>) -> IqResult {
        // RFC 6121 §2.1.5: only the user's own sessions touch their roster.
        let Some(s) = req.session else { return Err(StanzaError::forbidden()) };
        if req.to.to_bare() != s.bare {
            return Err(StanzaError::forbidden());
        }
        if req.is_set {
            self.set(ctx, s, req.payload).await
        } else {
            self.get(ctx, s, req.payload).await
        }
    }
}

#[async_trait::async_trait]
impl SessionHooks for Roster {
    async fn on_outbound_subscription(&self, ctx: &ServerContext, s: &mut SessionState, st: &mut Stanza) -> Flow {
        match st.type_attr() {
            Some(ty @ ("subscribe" | "subscribed" | "unsubscribe" | "unsubscribed")) => {
                let ty = ty.to_string();
                self.outbound(ctx, s, st, &ty).await
            }
            _ => Flow::Continue,
        }
    }

    async fn on_available(&self, ctx: &ServerContext, s: &mut SessionState, initial: bool) {
        if !initial {
            return;
        }
        // RFC 6121 §3.1.3: pending inbound requests are delivered when the user
        // becomes available.
        let Ok(roster) = ensure_roster(ctx, s).await else { return };
        let pending: Vec<Element> = roster
            .items
            .values()
            .filter(|i| i.pending_in)
            .map(|i| {
                i.pending_in_stanza
                    .as_deref()
                    .and_then(|x| meerkat_xml::parse_element(x, &meerkat_xml::Limits::default()).ok())
                    .unwrap_or_else(|| {
                        Element::builder("presence", ns::CLIENT)
                            .attr("from", i.jid.clone())
                            .attr("type", "subscribe")
                            .build()
                    })
            })
            .collect();
        for mut el in pending {
            el.set_attr("to", s.jid.as_str());
            // The receive filters still apply (XEP-0191: the sender may have been
            // blocked since the request was stored).
            let mut st = Stanza::from_trusted(el);
            if ctx.hooks.session.iter().all(|h| matches!(h.on_user_receive(ctx, s, &mut st), Flow::Continue)) {
                s.send(st.el);
            }
        }
    }

    async fn on_event(&self, _ctx: &ServerContext, s: &mut SessionState, ev: &SessionEvent) {
        let Some(change) = event_as::<RosterChange>(ev) else { return };
        if change.origin == Some(s.id) {
            return; // already applied and pushed by the session that made it
        }
        apply_and_push(s, change, self.cfg.versioning);
    }
}

#[async_trait::async_trait]
impl DeliveryHooks for Roster {
    async fn on_inbound_subscription(&self, ctx: &ServerContext, to: &BareJid, st: &Stanza) -> Flow {
        match self.inbound(ctx, to, st).await {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(user = %to, "inbound subscription not processed: {:?}", e.condition);
                Flow::Drop
            }
        }
    }
}
