//! Blocking: XEP-0191 (Blocking Command, version 1.3), with the JID matching rules
//! of XEP-0016 (Privacy Lists, version 1.7) §2.1.
//!
//! - The owner's sessions get the blocklist (§3.2; the session then receives
//!   blocklist pushes), block JIDs (§3.3) and unblock some or all of them (§3.4,
//!   §3.5). An empty `<block/>` is a `bad-request`; an item whose `jid` is missing or
//!   malformed a `jid-malformed`. Pushes (`<iq type='set'><block/></iq>` or
//!   `<unblock/>`) reach every resource of the user that requested the blocklist.
//! - Blocking a contact: each available resource of the user sends unavailable
//!   presence to the blocked contacts that could see it (presence subscribers and
//!   directed-presence recipients); unblocking sends them the current presence again.
//! - Enforcement, from a per-session copy of the blocklist loaded at bind time and
//!   kept current by the same events as the pushes (no database access per stanza):
//!   - outbound (§3.3): a message or IQ to a blocked JID is refused with
//!     `not-acceptable` plus `<blocked xmlns='urn:xmpp:blocking:errors'/>`; presence
//!     to it is dropped;
//!   - inbound: presence from a blocked JID is dropped silently, messages and IQ
//!     get/set are answered with `service-unavailable`, other IQs dropped.
//! - When the user has no session to filter (offline messages) and for inbound
//!   subscription requests, the stored blocklist is checked.
//! - Other modules that answer IQs on the user's behalf ask [`blocks_requester`].
//!
//! Matching (XEP-0016 §2.1): an item `user@domain/resource` matches only that full
//! JID; `user@domain` any resource of the user; `domain/resource` only that JID;
//! `domain` the domain itself and every JID at it.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use meerkat_core::hooks::{DeliveryHooks, Flow, IqHandler, IqRequest, IqResult, IqScope, SessionHooks};
use meerkat_core::session::ensure_roster;
use meerkat_core::{
    account, event_as, Event, HookRegistry, Module, ServerContext, SessionEvent, SessionMsg, SessionState,
};
use meerkat_stanza::{ns, BareJid, ErrorType, IqType, Jid, Stanza, StanzaError, StanzaErrorCondition, StanzaKind};
use meerkat_xml::Element;

/// `SessionState::ext` key of the per-session blocklist copy.
const EXT: &str = "mod_blocking";

/// The blocking command module (`[modules.mod_blocking]`).
pub struct Blocking;

impl Module for Blocking {
    fn name(&self) -> &'static str {
        "mod_blocking"
    }

    fn register(self: Arc<Self>, reg: &mut HookRegistry) {
        reg.on_iq(IqScope::Account, ns::BLOCKING, self.clone());
        // Before the roster (10): subscription presence to or from a blocked JID is
        // dropped before it changes any roster state.
        reg.on_session(5, self.clone());
        reg.on_delivery(5, self);
        reg.event_decoder(CHANGE_NS, BlocklistChange::decode);
        reg.account_feature(ns::BLOCKING);
    }
}

/// The blocklist a session keeps (see the module documentation).
/// A moved session's blocklist state between nodes.
const NS_STATE: &str = "urn:meerkat:session:blocking";

#[derive(Debug, Default)]
struct Cache {
    /// Blocked JIDs, normalised.
    list: HashSet<String>,
    /// The client requested the blocklist, so it gets pushes (§3.2).
    requested: bool,
}

/// A change to a user's blocklist, sent to each of the user's sessions.
#[derive(Debug, Clone)]
pub struct BlocklistChange {
    /// `true` for a block, `false` for an unblock.
    pub blocked: bool,
    /// The JIDs blocked or unblocked (for "unblock all", the JIDs that were blocked).
    pub jids: Vec<String>,
    /// The change was "unblock all" (§3.5): the push carries an empty `<unblock/>`.
    pub all: bool,
}

/// The namespace a [`BlocklistChange`] travels in between cluster nodes.
const CHANGE_NS: &str = "urn:meerkat:cluster:blocklist-change";

impl Event for BlocklistChange {
    fn to_element(&self) -> Option<Element> {
        let mut el = Element::builder("blocklist-change", CHANGE_NS)
            .attr("blocked", if self.blocked { "1" } else { "0" })
            .attr("all", if self.all { "1" } else { "0" })
            .build();
        for j in &self.jids {
            el.append_child(Element::builder("jid", CHANGE_NS).text(j.clone()).build());
        }
        Some(el)
    }
}

impl BlocklistChange {
    fn decode(el: &Element) -> Option<SessionEvent> {
        Some(Arc::new(BlocklistChange {
            blocked: el.attr("blocked") == Some("1"),
            all: el.attr("all") == Some("1"),
            jids: el.children().filter(|c| c.is("jid", CHANGE_NS)).map(Element::text).collect(),
        }))
    }
}

/// Whether the blocklist `list` matches `jid` (XEP-0016 §2.1).
fn matches(list: impl Fn(&str) -> bool, jid: &Jid) -> bool {
    if list(jid.as_str()) {
        return true;
    }
    let domain = jid.domain().as_str();
    if jid.node().is_some() && jid.resource().is_some() && list(jid.to_bare().as_str()) {
        return true;
    }
    jid.as_str() != domain && list(domain)
}

fn set_matches(set: &HashSet<String>, jid: &Jid) -> bool {
    !set.is_empty() && matches(|s| set.contains(s), jid)
}

/// Loads a user's stored blocklist.
async fn stored(ctx: &ServerContext, user: &BareJid) -> Result<Vec<String>, StanzaError> {
    let acc = account(user).ok_or_else(StanzaError::internal)?;
    ctx.stores.blocking.blocklist(acc).await.map_err(|e| {
        tracing::error!(user = %user, error = %e, "storage failure reading a blocklist");
        StanzaError::internal()
    })
}

/// Whether local user `user` blocked `requester`, per the stored blocklist, when the
/// blocking module runs (`false` otherwise). For modules that answer IQs on a user's
/// behalf: XEP-0191 §3.3 asks for `service-unavailable` to a blocked requester.
pub async fn blocks_requester(ctx: &ServerContext, user: &BareJid, requester: &Jid) -> Result<bool, StanzaError> {
    if !ctx.hooks.has_module("mod_blocking") || requester.to_bare() == *user {
        return Ok(false);
    }
    let list = stored(ctx, user).await?;
    Ok(matches(|s| list.iter().any(|b| b == s), requester))
}

/// Whether the session's copy of its user's blocklist blocks `other` (for
/// stanzas a module writes to the client directly, bypassing the receive hooks).
pub fn session_blocks(ctx: &ServerContext, s: &SessionState, other: &Jid) -> bool {
    s.ext::<Cache>(EXT).is_some_and(|c| set_matches(&c.list, other)) && !exempt(ctx, &s.bare, other)
}

fn item(jid: &str) -> Element {
    Element::builder("item", ns::BLOCKING).attr("jid", jid).build()
}

/// §3.3: the error for an outbound stanza to a blocked JID.
fn blocked_error() -> StanzaError {
    StanzaError::new(StanzaErrorCondition::NotAcceptable)
        .with_type(ErrorType::Cancel)
        .with_app(Element::new("blocked", ns::BLOCKING_ERRORS))
}

/// Whether a stanza from `from` to local user `user` is server traffic or the
/// user's own, which the user's blocklist never filters.
fn exempt(ctx: &ServerContext, user: &BareJid, other: &Jid) -> bool {
    other.to_bare() == *user
        || (other.node().is_none() && other.resource().is_none() && ctx.is_local_domain(other.domain().as_str()))
}

/// §3.3: what happens to an inbound stanza from a blocked JID.
fn inbound_blocked(st: &Stanza) -> Flow {
    match st.kind {
        StanzaKind::Presence => Flow::Drop,
        StanzaKind::Message if st.is_error() => Flow::Drop,
        StanzaKind::Message => Flow::Bounce(StanzaError::service_unavailable()),
        StanzaKind::Iq => match st.iq_type() {
            Some(IqType::Get | IqType::Set) => Flow::Bounce(StanzaError::service_unavailable()),
            _ => Flow::Drop,
        },
    }
}

#[allow(clippy::result_large_err)] // StanzaError is the handlers' error type
fn parse_items(payload: &Element) -> Result<Vec<String>, StanzaError> {
    let mut out = BTreeSet::new();
    for it in payload.children().filter(|c| c.is("item", ns::BLOCKING)) {
        let jid = it
            .attr("jid")
            .and_then(|j| Jid::new(j).ok())
            .ok_or_else(|| StanzaError::new(StanzaErrorCondition::JidMalformed).with_text("invalid item JID"))?;
        out.insert(jid.as_str().to_string());
    }
    Ok(out.into_iter().collect())
}

impl Blocking {
    async fn get(&self, ctx: &ServerContext, s: &mut SessionState) -> IqResult {
        let list = stored(ctx, &s.bare).await?;
        let mut el = Element::new("blocklist", ns::BLOCKING);
        for j in &list {
            el.append_child(item(j));
        }
        let cache = Cache { list: list.into_iter().collect(), requested: true };
        s.ext.insert(EXT, Box::new(cache));
        Ok(Some(el))
    }

    async fn set(&self, ctx: &ServerContext, s: &mut SessionState, payload: &Element, block: bool) -> IqResult {
        let jids = parse_items(payload)?;
        let acc = account(&s.bare).ok_or_else(StanzaError::internal)?;
        let user = s.bare.clone();
        let fail = |e: meerkat_storage::Error| {
            tracing::error!(user = %user, error = %e, "storage failure changing a blocklist");
            StanzaError::internal()
        };
        let change = if block {
            // §3.3: a block without items is malformed.
            if jids.is_empty() {
                return Err(StanzaError::bad_request("a block carries at least one item"));
            }
            ctx.stores.blocking.block(acc, &jids).await.map_err(fail)?;
            BlocklistChange { blocked: true, jids, all: false }
        } else if jids.is_empty() {
            // §3.5: unblock everything.
            let was = stored(ctx, &s.bare).await?;
            ctx.stores.blocking.unblock(acc, &[]).await.map_err(fail)?;
            BlocklistChange { blocked: false, jids: was, all: true }
        } else {
            ctx.stores.blocking.unblock(acc, &jids).await.map_err(fail)?;
            BlocklistChange { blocked: false, jids, all: false }
        };
        // The requesting session filters with the new list from now on; every session
        // (this one included) then gets the event for pushes and presence.
        apply(s, &change);
        let ev: SessionEvent = Arc::new(change);
        ctx.router.send_all(&s.bare, &|| SessionMsg::Event(ev.clone()));
        Ok(None)
    }
}

/// Updates a session's copy of the blocklist.
fn apply(s: &mut SessionState, change: &BlocklistChange) {
    if s.ext::<Cache>(EXT).is_none() {
        s.ext.insert(EXT, Box::new(Cache::default()));
    }
    let Some(cache) = s.ext_mut::<Cache>(EXT) else { return };
    if change.blocked {
        cache.list.extend(change.jids.iter().cloned());
    } else if change.all {
        cache.list.clear();
    } else {
        for j in &change.jids {
            cache.list.remove(j);
        }
    }
}

/// Where a change of `blocked` matters for presence: each presence recipient
/// `target` (a subscriber's bare JID or a directed-presence recipient) that one of
/// `jids` matches, or the full JID in `jids` of a resource of such a target.
fn presence_targets(jids: &[String], targets: &[Jid]) -> Vec<Jid> {
    let mut out: Vec<Jid> = Vec::new();
    for j in jids {
        let Ok(item) = Jid::new(j) else { continue };
        for t in targets {
            let dest = if matches(|s| s == item.as_str(), t) {
                t.clone()
            } else if item.resource().is_some() && item.node().is_some() && item.to_bare() == *t {
                item.clone()
            } else {
                continue;
            };
            if !out.contains(&dest) {
                out.push(dest);
            }
        }
    }
    out
}

#[async_trait::async_trait]
impl IqHandler for Blocking {
    async fn handle_iq(&self, ctx: &ServerContext, req: IqRequest<'_>) -> IqResult {
        // Only the user's own sessions manage their blocklist.
        let Some(s) = req.session else { return Err(StanzaError::forbidden()) };
        if req.to.to_bare() != s.bare {
            return Err(StanzaError::forbidden());
        }
        match (req.is_set, req.payload.name()) {
            (false, "blocklist") => self.get(ctx, s).await,
            (true, "block") => self.set(ctx, s, req.payload, true).await,
            (true, "unblock") => self.set(ctx, s, req.payload, false).await,
            _ => Err(StanzaError::bad_request("expected a blocklist get, or a block or unblock set")),
        }
    }
}

#[async_trait::async_trait]
impl SessionHooks for Blocking {
    /// A session that asked for the blocklist keeps getting its pushes on the
    /// node it moves to (the list itself is loaded there when it is bound).
    fn export_state(&self, s: &SessionState) -> Option<Element> {
        s.ext::<Cache>(EXT).filter(|c| c.requested).map(|_| Element::new("requested", NS_STATE))
    }

    fn import_state(&self, s: &mut SessionState, el: &Element) -> bool {
        if !el.is("requested", NS_STATE) {
            return false;
        }
        match s.ext_mut::<Cache>(EXT) {
            Some(c) => c.requested = true,
            None => s.ext.insert(EXT, Box::new(Cache { list: HashSet::new(), requested: true })),
        }
        true
    }

    async fn on_bound(&self, ctx: &ServerContext, s: &mut SessionState) -> Result<(), StanzaError> {
        let list = stored(ctx, &s.bare).await?;
        s.ext.insert(EXT, Box::new(Cache { list: list.into_iter().collect(), requested: false }));
        Ok(())
    }

    fn on_user_send(&self, ctx: &ServerContext, s: &mut SessionState, st: &mut Stanza) -> Flow {
        let Some(to) = &st.to else { return Flow::Continue };
        let Some(cache) = s.ext::<Cache>(EXT) else { return Flow::Continue };
        if !set_matches(&cache.list, to) || exempt(ctx, &s.bare, to) {
            return Flow::Continue;
        }
        match st.kind {
            StanzaKind::Presence => Flow::Drop,
            StanzaKind::Iq if !matches!(st.iq_type(), Some(IqType::Get | IqType::Set)) => Flow::Drop,
            StanzaKind::Message | StanzaKind::Iq => Flow::Bounce(blocked_error()),
        }
    }

    fn allows_presence_to(&self, ctx: &ServerContext, s: &SessionState, to: &Jid) -> bool {
        !session_blocks(ctx, s, to)
    }

    fn on_user_receive(&self, ctx: &ServerContext, s: &mut SessionState, st: &mut Stanza) -> Flow {
        let Some(from) = &st.from else { return Flow::Continue };
        let Some(cache) = s.ext::<Cache>(EXT) else { return Flow::Continue };
        if !set_matches(&cache.list, from) || exempt(ctx, &s.bare, from) {
            return Flow::Continue;
        }
        inbound_blocked(st)
    }

    async fn on_event(&self, ctx: &ServerContext, s: &mut SessionState, ev: &SessionEvent) {
        let Some(change) = event_as::<BlocklistChange>(ev) else { return };
        apply(s, change);
        if s.ext::<Cache>(EXT).is_some_and(|c| c.requested) {
            let mut payload = Element::new(if change.blocked { "block" } else { "unblock" }, ns::BLOCKING);
            if !change.all {
                for j in &change.jids {
                    payload.append_child(item(j));
                }
            }
            s.send(
                Element::builder("iq", ns::CLIENT)
                    .attr("type", "set")
                    .attr("id", format!("push-{}", meerkat_core::util::random_id(10)))
                    .attr("to", s.jid.as_str())
                    .append(payload)
                    .build(),
            );
        }
        let Some(presence) = s.presence.clone() else { return };
        // Who sees this resource's presence: subscribers and directed recipients.
        let mut targets: Vec<Jid> = s.directed.iter().cloned().collect();
        if let Ok(roster) = ensure_roster(ctx, s).await {
            targets.extend(roster.presence_subscribers().filter_map(|i| Jid::new(&i.jid).ok()));
        }
        let dests = presence_targets(&change.jids, &targets);
        for dest in dests {
            let mut el = if change.blocked {
                // §3.3: the blocked contact sees the user go offline.
                Element::builder("presence", ns::CLIENT).attr("type", "unavailable").build()
            } else {
                // Unblocked: the contact gets the current presence, unless another
                // item still blocks it.
                if s.ext::<Cache>(EXT).is_some_and(|c| set_matches(&c.list, &dest)) {
                    continue;
                }
                (*presence).clone()
            };
            el.set_attr("from", s.jid.as_str());
            el.set_attr("to", dest.as_str());
            ctx.route(Stanza::from_trusted(el)).await;
        }
    }
}

#[async_trait::async_trait]
impl DeliveryHooks for Blocking {
    async fn on_inbound_subscription(&self, ctx: &ServerContext, to: &BareJid, st: &Stanza) -> Flow {
        let Some(from) = &st.from else { return Flow::Continue };
        if exempt(ctx, to, from) {
            return Flow::Continue;
        }
        match stored(ctx, to).await {
            Ok(list) if matches(|s| list.iter().any(|b| b == s), from) => Flow::Drop,
            // A storage failure was logged; the roster module decides alone.
            _ => Flow::Continue,
        }
    }

    async fn on_inbound_offline_filter(&self, ctx: &ServerContext, to: &BareJid, st: &Stanza) -> Flow {
        let Some(from) = &st.from else { return Flow::Continue };
        if exempt(ctx, to, from) {
            return Flow::Continue;
        }
        match stored(ctx, to).await {
            Ok(list) if matches(|s| list.iter().any(|b| b == s), from) => inbound_blocked(st),
            Ok(_) => Flow::Continue,
            Err(e) => Flow::Bounce(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jid(s: &str) -> Jid {
        Jid::new(s).expect("valid test JID")
    }

    fn list(items: &[&str]) -> HashSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn xep0016_matching() {
        let full = list(&["romeo@example.net/orchard"]);
        assert!(set_matches(&full, &jid("romeo@example.net/orchard")));
        assert!(!set_matches(&full, &jid("romeo@example.net/balcony")));
        assert!(!set_matches(&full, &jid("romeo@example.net")));

        let bare = list(&["romeo@example.net"]);
        assert!(set_matches(&bare, &jid("romeo@example.net")));
        assert!(set_matches(&bare, &jid("romeo@example.net/any")));
        assert!(!set_matches(&bare, &jid("juliet@example.net/any")));

        let domain_res = list(&["example.net/bot"]);
        assert!(set_matches(&domain_res, &jid("example.net/bot")));
        assert!(!set_matches(&domain_res, &jid("romeo@example.net/bot")));

        let domain = list(&["example.net"]);
        assert!(set_matches(&domain, &jid("example.net")));
        assert!(set_matches(&domain, &jid("example.net/x")));
        assert!(set_matches(&domain, &jid("romeo@example.net/x")));
        assert!(!set_matches(&domain, &jid("romeo@example.org")));
        assert!(!set_matches(&HashSet::new(), &jid("romeo@example.net")));
    }

    #[test]
    fn presence_targets_follow_matching() {
        let subs = vec![jid("romeo@example.net"), jid("nurse@example.org"), jid("bot@other.example/x")];
        let t = presence_targets(&["example.org".into()], &subs);
        assert_eq!(t, vec![jid("nurse@example.org")]);
        let t = presence_targets(&["romeo@example.net/orchard".into()], &subs);
        assert_eq!(t, vec![jid("romeo@example.net/orchard")]);
        let t = presence_targets(&["bot@other.example".into()], &subs);
        assert_eq!(t, vec![jid("bot@other.example/x")]);
        assert!(presence_targets(&["tybalt@example.net".into()], &subs).is_empty());
    }
}
