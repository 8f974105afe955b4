//! Message carbons (XEP-0280 v1.0.1): a user's other devices get copies of the
//! chat messages the user sends and receives, so every device sees the whole
//! conversation. Honours XEP-0334 `<no-copy/>` and the carbons `<private/>` element.
//!
//! Enabling is per session (an IQ `<enable/>`/`<disable/>`). Copies travel as
//! session events: sent copies from the sending session to the user's other
//! sessions; received copies from the router's delivery hook to the sessions that
//! did not receive the original. Each session wraps the copy only if it enabled
//! carbons, so no shared state is needed.

use std::sync::Arc;

use meerkat_core::hooks::{DeliveryHooks, Flow, IqHandler, IqRequest, IqResult, IqScope, SessionHooks};
use meerkat_core::{
    event_as, Event, HookRegistry, Module, ServerContext, SessionEvent, SessionId, SessionMsg, SessionState,
};
use meerkat_stanza::{ns, BareJid, Stanza, StanzaError, StanzaKind};
use meerkat_xml::Element;

const EXT: &str = "mod_carboncopy";

/// The carbons module.
pub struct Carbons;

/// Whether a session enabled carbons.
struct Enabled;

/// A copy on its way to the user's other sessions.
#[derive(Debug)]
struct Copy {
    sent: bool,
    msg: Element,
    /// Sessions that must not get the copy (the sender, or the receivers of the original).
    skip: Vec<SessionId>,
}

/// The namespace a [`Copy`] travels in between cluster nodes.
const COPY_NS: &str = "urn:meerkat:cluster:carbon";

impl Event for Copy {
    fn to_element(&self) -> Option<Element> {
        let skip = self.skip.iter().map(|s| s.0.to_string()).collect::<Vec<_>>().join(" ");
        Some(
            Element::builder("carbon", COPY_NS)
                .attr("sent", if self.sent { "1" } else { "0" })
                .attr("skip", skip)
                .append(self.msg.clone())
                .build(),
        )
    }
}

impl Copy {
    fn decode(el: &Element) -> Option<SessionEvent> {
        let skip = el
            .attr("skip")?
            .split_ascii_whitespace()
            .map(|s| s.parse().map(SessionId))
            .collect::<Result<_, _>>()
            .ok()?;
        let msg = el.children().next()?.clone();
        Some(Arc::new(Copy { sent: el.attr("sent") == Some("1"), msg, skip }))
    }
}

impl Module for Carbons {
    fn name(&self) -> &'static str {
        "mod_carboncopy"
    }

    fn register(self: Arc<Self>, reg: &mut HookRegistry) {
        reg.on_iq(IqScope::Account, ns::CARBONS, self.clone());
        reg.on_iq(IqScope::Server, ns::CARBONS, self.clone());
        reg.on_session(40, self.clone());
        reg.on_delivery(40, self);
        reg.event_decoder(COPY_NS, Copy::decode);
        reg.server_feature(ns::CARBONS);
        reg.account_feature(ns::CARBONS);
    }
}

/// XEP-0280 §6: which messages are copied.
fn eligible(el: &Element) -> bool {
    let ty = el.attr("type").unwrap_or("normal");
    let copyable = ty == "chat" || (ty == "normal" && el.has_child("body", ns::CLIENT));
    copyable
        && !el.has_child("private", ns::CARBONS)
        && !el.has_child("no-copy", ns::HINTS)
        && !el.has_child("sent", ns::CARBONS)
        && !el.has_child("received", ns::CARBONS)
}

#[async_trait::async_trait]
impl IqHandler for Carbons {
    async fn handle_iq(&self, _ctx: &ServerContext, req: IqRequest<'_>) -> IqResult {
        // §4: the client's own session enables or disables carbons for itself.
        let Some(s) = req.session else { return Err(StanzaError::forbidden()) };
        if !req.is_set {
            return Err(StanzaError::bad_request("carbons are enabled or disabled with an IQ set"));
        }
        match req.payload.name() {
            "enable" => {
                s.ext.insert(EXT, Box::new(Enabled));
            }
            "disable" => {
                s.ext.remove(EXT);
            }
            _ => return Err(StanzaError::bad_request("expected <enable/> or <disable/>")),
        }
        Ok(None)
    }
}

#[async_trait::async_trait]
impl SessionHooks for Carbons {
    fn export_state(&self, s: &SessionState) -> Option<Element> {
        s.ext.contains_key(EXT).then(|| Element::new("enable", ns::CARBONS))
    }

    fn import_state(&self, s: &mut SessionState, el: &Element) -> bool {
        if !el.is("enable", ns::CARBONS) {
            return false;
        }
        s.ext.insert(EXT, Box::new(Enabled));
        true
    }

    fn on_user_send(&self, ctx: &ServerContext, s: &mut SessionState, st: &mut Stanza) -> Flow {
        // Only when another session of the user could want the copy: no clone and
        // no mailbox traffic for the common single-device case.
        if st.kind == StanzaKind::Message
            && ctx.router.user_session_count(&s.bare) > 1
            && eligible(&st.el)
            && st.to.as_ref().is_none_or(|t| t.to_bare() != s.bare)
        {
            // §5: a copy of what this device sent, for the user's other devices.
            let copy = Arc::new(Copy { sent: true, msg: st.el.clone(), skip: vec![s.id] });
            ctx.router.send_all(&s.bare, &|| SessionMsg::Event(copy.clone()));
        }
        Flow::Continue
    }

    async fn on_event(&self, _ctx: &ServerContext, s: &mut SessionState, ev: &SessionEvent) {
        let Some(c) = event_as::<Copy>(ev) else { return };
        if !s.ext.contains_key(EXT) || c.skip.contains(&s.id) {
            return;
        }
        let mut inner = c.msg.clone();
        inner.set_ns(ns::CLIENT);
        let wrapper = Element::builder(if c.sent { "sent" } else { "received" }, ns::CARBONS)
            .append(Element::builder("forwarded", ns::FORWARD).append(inner).build())
            .build();
        let copy = Element::builder("message", ns::CLIENT)
            .attr("from", s.bare.as_str())
            .attr("to", s.jid.as_str())
            .attr("type", c.msg.attr("type").unwrap_or("normal"))
            .append(wrapper)
            .build();
        s.send(copy);
    }
}

impl DeliveryHooks for Carbons {
    fn wants_delivered_messages(&self) -> bool {
        true
    }

    fn on_message_delivered(&self, ctx: &ServerContext, to: &BareJid, st: &Stanza, receivers: &[SessionId]) {
        if ctx.router.user_session_count(to) <= receivers.len() || !eligible(&st.el) {
            return;
        }
        // §6: the user's other devices get a copy of what one of them received.
        let copy = Arc::new(Copy { sent: false, msg: st.el.clone(), skip: receivers.to_vec() });
        ctx.router.send_all(to, &|| SessionMsg::Event(copy.clone()));
    }
}
