//! Offline messages: XEP-0160 (Best Practices for Handling Offline Messages,
//! version 1.0.1), delivered with XEP-0203 (Delayed Delivery, version 2.0) stamps,
//! honouring XEP-0334 (Message Processing Hints, version 0.3.0).
//!
//! - A `normal` or `chat` message (or one without a type) for a user with no
//!   available resource is stored (§3) when it carries content: a body or any
//!   payload other than a thread, chat states, processing hints or stanza ids. A
//!   message with only chat states (XEP-0085 §5.4) is consumed without being stored
//!   (not worth an error); one with the `<no-store/>` hint, or without content, is not
//!   handled (the router answers `service-unavailable`, RFC 6121 §8.5.2.2.1).
//!   `<store/>` forces storage.
//! - At most `max_messages` per user: beyond, the sender gets `service-unavailable`
//!   ("offline queue full", §3); a storage failure gives `internal-server-error`.
//! - When a session becomes available with a non-negative priority (its initial
//!   presence, or a change from a negative priority) the stored messages are sent
//!   to it, oldest first, in batches of 100, each with a `<delay/>` from the domain
//!   stamped with the storage time (XEP-0203 §3, XEP-0160 §4), and removed once sent;
//!   messages from senders the user has blocked since are dropped.

use std::sync::Arc;

use meerkat_config::OfflineCfg;
use meerkat_core::hooks::{DeliveryHooks, OfflineOutcome, SessionHooks};
use meerkat_core::util::{now_ms, xep82_datetime};
use meerkat_core::{account, HookRegistry, Module, ServerContext, SessionState};
use meerkat_stanza::{ns, BareJid, Jid, Stanza, StanzaError, StanzaKind};
use meerkat_xml::{Element, Limits};

/// XEP-0334 namespace.
const HINTS: &str = "urn:xmpp:hints";
/// XEP-0085 namespace.
const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
/// Messages fetched from storage at a time.
const BATCH: usize = 100;
/// `SessionState::ext` key: the priority last seen by this module.
const EXT: &str = "mod_offline";

/// The offline message module (`[modules.mod_offline]`).
pub struct Offline {
    cfg: OfflineCfg,
}

impl Offline {
    /// With options from `[modules.mod_offline]`.
    pub fn new(cfg: OfflineCfg) -> Self {
        Offline { cfg }
    }
}

impl Module for Offline {
    fn name(&self) -> &'static str {
        "mod_offline"
    }

    fn register(self: Arc<Self>, reg: &mut HookRegistry) {
        reg.on_delivery(50, self.clone());
        reg.on_session(50, self);
        reg.server_feature(ns::MSGOFFLINE);
    }
}

/// What to do with a message for an offline user.
#[derive(Debug, PartialEq, Eq)]
enum Keep {
    Store,
    /// Consume silently (chat states only).
    Discard,
    /// Leave to the router (error reply).
    No,
}

fn classify(el: &Element) -> Keep {
    if !matches!(el.attr("type"), None | Some("normal" | "chat")) || el.has_child("no-store", HINTS) {
        return Keep::No;
    }
    if el.has_child("store", HINTS) {
        return Keep::Store;
    }
    let mut chat_state = false;
    for c in el.children() {
        match c.ns() {
            CHATSTATES => chat_state = true,
            HINTS | ns::SID => {}
            ns::CLIENT if c.name() == "thread" => {}
            ns::CLIENT if c.name() == "body" && c.text().trim().is_empty() => {}
            _ => return Keep::Store,
        }
    }
    if chat_state {
        Keep::Discard
    } else {
        Keep::No
    }
}

impl Offline {
    /// Sends every stored message to the session, then removes them.
    async fn flush(&self, ctx: &ServerContext, s: &mut SessionState) {
        let user = s.bare.clone();
        let Some(acc) = account(&user) else { return };
        let limits = Limits { max_stanza_bytes: 1 << 20, ..Limits::default() };
        let domain = s.bare.domain().as_str().to_string();
        loop {
            let batch = match ctx.stores.offline.fetch(acc, BATCH).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(user = %s.bare, error = %e, "storage failure fetching offline messages");
                    return;
                }
            };
            let Some(last) = batch.last().map(|m| m.id) else { return };
            let full = batch.len() == BATCH;
            for m in batch {
                let mut el = match meerkat_xml::parse_element(&m.stanza, &limits) {
                    Ok(el) => el,
                    Err(e) => {
                        tracing::error!(user = %s.bare, id = m.id, error = %e, "stored offline message does not parse; dropped");
                        continue;
                    }
                };
                // Stored before the user blocked the sender (XEP-0191 §3.3).
                let from = el.attr("from").and_then(|f| Jid::new(f).ok());
                if from.is_some_and(|f| crate::blocking::session_blocks(ctx, s, &f)) {
                    continue;
                }
                el.append_child(
                    Element::builder("delay", ns::DELAY)
                        .attr("from", domain.clone())
                        .attr("stamp", xep82_datetime(m.stored_at_ms))
                        .text("Offline Storage")
                        .build(),
                );
                s.send(el);
            }
            if let Err(e) = ctx.stores.offline.remove_up_to(acc, last).await {
                // Stop rather than send the same batch again.
                tracing::error!(user = %s.bare, error = %e, "storage failure removing delivered offline messages");
                return;
            }
            if !full {
                return;
            }
        }
    }
}

#[async_trait::async_trait]
impl DeliveryHooks for Offline {
    async fn on_offline_message(&self, ctx: &ServerContext, to: &BareJid, st: &Stanza) -> OfflineOutcome {
        if st.kind != StanzaKind::Message {
            return OfflineOutcome::NotHandled;
        }
        match classify(&st.el) {
            Keep::Store => {}
            Keep::Discard => return OfflineOutcome::Stored,
            Keep::No => return OfflineOutcome::NotHandled,
        }
        let Some(acc) = account(to) else { return OfflineOutcome::NotHandled };
        match ctx.stores.offline.push(acc, now_ms(), &st.el.to_string_with_ns(), self.cfg.max_messages).await {
            Ok(true) => OfflineOutcome::Stored,
            Ok(false) => OfflineOutcome::Refused(StanzaError::service_unavailable().with_text("offline queue full")),
            Err(e) => {
                tracing::error!(user = %to, error = %e, "storage failure storing an offline message");
                OfflineOutcome::Refused(StanzaError::internal())
            }
        }
    }
}

#[async_trait::async_trait]
impl SessionHooks for Offline {
    async fn on_available(&self, ctx: &ServerContext, s: &mut SessionState, initial: bool) {
        let before = if initial { None } else { s.ext::<i8>(EXT).copied() };
        s.ext.insert(EXT, Box::new(s.priority));
        // Messages are stored only while no resource takes them (priority >= 0).
        if s.priority >= 0 && before.is_none_or(|p| p < 0) {
            self.flush(ctx, s).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(xml: &str) -> Element {
        meerkat_xml::parse_element(xml, &Limits::default()).expect("test XML parses")
    }

    #[test]
    fn what_is_stored() {
        assert_eq!(classify(&msg("<message xmlns='jabber:client'><body>hi</body></message>")), Keep::Store);
        assert_eq!(
            classify(&msg("<message xmlns='jabber:client' type='chat'><x xmlns='urn:x'/></message>")),
            Keep::Store
        );
        assert_eq!(
            classify(&msg("<message xmlns='jabber:client' type='headline'><body>hi</body></message>")),
            Keep::No
        );
        assert_eq!(
            classify(&msg(
                "<message xmlns='jabber:client' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>"
            )),
            Keep::Discard
        );
        assert_eq!(
            classify(&msg(
                "<message xmlns='jabber:client'><body>hi</body><no-store xmlns='urn:xmpp:hints'/></message>"
            )),
            Keep::No
        );
        assert_eq!(
            classify(&msg("<message xmlns='jabber:client'><store xmlns='urn:xmpp:hints'/></message>")),
            Keep::Store
        );
        assert_eq!(classify(&msg("<message xmlns='jabber:client'><thread>t</thread></message>")), Keep::No);
    }
}
