//! Presence handled by the user's own server (RFC 6121 §4): initial and updated
//! presence broadcast to subscribers, probes on login, directed presence, and
//! unavailable presence on logout or disconnect. Subscriptions themselves (RFC 6121
//! §3) are the roster module's.

use std::sync::Arc;

use meerkat_core::session::ensure_roster;
use meerkat_core::{ServerContext, SessionState};
use meerkat_stanza::{ns, Jid, Stanza};
use meerkat_xml::Element;

/// Routes a copy of `el` from the session to `to`, unless a module forbids it
/// (XEP-0191: no presence to blocked contacts).
async fn send_copy(ctx: &ServerContext, s: &SessionState, el: &Element, to: &str) {
    if let Ok(jid) = Jid::new(to) {
        if !ctx.hooks.session.iter().all(|h| h.allows_presence_to(ctx, s, &jid)) {
            return;
        }
    }
    let mut copy = el.clone();
    copy.set_attr("from", s.jid.as_str());
    copy.set_attr("to", to);
    ctx.route(Stanza::from_trusted(copy)).await;
}

/// RFC 6121 §4.2 / §4.4: presence without `to` (available or unavailable).
pub(crate) async fn broadcast(ctx: &ServerContext, s: &mut SessionState, st: Stanza) -> Option<String> {
    match st.type_attr() {
        None => {
            available(ctx, s, st.el).await;
            None
        }
        Some("unavailable") => {
            let status = st.el.child_text("status", ns::CLIENT).unwrap_or_default();
            go_unavailable(ctx, s, Some(st.el)).await;
            Some(status)
        }
        // probe / error / subscription types without 'to' make no sense here.
        _ => None,
    }
}

async fn available(ctx: &ServerContext, s: &mut SessionState, mut el: Element) {
    let priority = el.child_text("priority", ns::CLIENT).and_then(|p| p.trim().parse::<i8>().ok()).unwrap_or(0);
    el.remove_attr("to");
    el.set_attr("from", s.jid.as_str());
    let initial = s.presence.is_none();
    let el = Arc::new(el);
    s.presence = Some(el.clone());
    s.priority = priority;
    ctx.router.set_presence(&s.jid, s.id, priority, Some(el.clone()));
    let roster = match ensure_roster(ctx, s).await {
        Ok(r) => r.clone(),
        Err(_) => return,
    };
    // §4.2.2 / §4.4.2: to every subscriber, and to all of the user's own resources.
    for item in roster.presence_subscribers() {
        send_copy(ctx, s, &el, &item.jid).await;
    }
    send_copy(ctx, s, &el, s.bare.as_str()).await;
    // Directed-presence recipients keep getting updates (RFC 6121 §4.6.2 note).
    let directed: Vec<Jid> = s.directed.iter().cloned().collect();
    for to in directed {
        send_copy(ctx, s, &el, to.as_str()).await;
    }
    if initial {
        // §4.2.2: probe every contact we are subscribed to, and our own account
        // (so the new resource learns about the user's other resources).
        let probe = Element::builder("presence", ns::CLIENT).attr("type", "probe").build();
        for item in roster.presence_subscriptions() {
            send_copy(ctx, s, &probe, &item.jid).await;
        }
        send_copy(ctx, s, &probe, s.bare.as_str()).await;
    }
    for h in &ctx.hooks.session {
        h.on_available(ctx, s, initial).await;
    }
}

/// RFC 6121 §4.5: unavailable presence to subscribers, own resources and directed
/// recipients. `el` is the client's own unavailable presence, if it sent one.
pub(crate) async fn go_unavailable(ctx: &ServerContext, s: &mut SessionState, el: Option<Element>) {
    let was_available = s.presence.take().is_some();
    let directed: Vec<Jid> = s.directed.drain().collect();
    if !was_available && directed.is_empty() {
        return;
    }
    let mut el = el.unwrap_or_else(|| Element::new("presence", ns::CLIENT));
    el.set_attr("type", "unavailable");
    el.remove_attr("to");
    ctx.router.set_presence(&s.jid, s.id, 0, None);
    if was_available {
        if let Some(roster) = s.roster.clone() {
            for item in roster.presence_subscribers() {
                send_copy(ctx, s, &el, &item.jid).await;
            }
        }
        send_copy(ctx, s, &el, s.bare.as_str()).await;
    }
    for to in directed {
        send_copy(ctx, s, &el, to.as_str()).await;
    }
}

/// RFC 6121 §4.6: directed presence. Remembers recipients that are not presence
/// subscribers, so they get unavailable presence when the session ends.
pub(crate) async fn directed(ctx: &ServerContext, s: &mut SessionState, st: Stanza) {
    if let Some(to) = &st.to {
        let bare = to.to_bare();
        let subscribed = s.roster.as_ref().is_some_and(|r| {
            r.items.get(bare.as_str()).is_some_and(|i| {
                matches!(i.subscription, meerkat_storage::Subscription::From | meerkat_storage::Subscription::Both)
            })
        });
        match st.type_attr() {
            None if !subscribed && bare != s.bare => {
                s.directed.insert(to.clone());
            }
            Some("unavailable") => {
                s.directed.remove(to);
            }
            _ => {}
        }
    }
    ctx.route(st).await;
}
