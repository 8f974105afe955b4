//! Resource binding (RFC 6120 §7) and the bound session: stanzas from the client,
//! messages from the mailbox.

use std::sync::Arc;

use meerkat_core::hooks::{Flow, IqScope};
use meerkat_core::router::{Overflow, SessionHandle};
use meerkat_core::{ServerContext, SessionMsg, SessionState};
use meerkat_stanza::{
    make_error_reply, make_iq_result, ns, BareJid, IqType, Jid, Stanza, StanzaError, StanzaKind, StreamError,
};
use meerkat_xml::Element;
use tokio::sync::mpsc;

use crate::c2s::{C2s, Output, Pinger, Stage, State};

impl C2s {
    /// RFC 6120 §7: the bind IQ, the only stanza accepted between SASL and binding.
    pub(crate) async fn bind(&mut self, bare: BareJid, el: Element) {
        let stage = Stage::Authenticated(bare.clone());
        let is_bind = el.attr("type") == Some("set") && el.has_child("bind", ns::BIND);
        if !is_bind {
            return self.stream_error(StreamError::NotAuthorized, Some("bind a resource first")).await;
        }
        let requested = el
            .get_child("bind", ns::BIND)
            .and_then(|b| b.child_text("resource", ns::BIND))
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty());
        let resource = requested.unwrap_or_else(|| format!("meerkat-{}", meerkat_core::util::random_id(10)));
        let jid = match bare.with_resource_str(&resource) {
            Ok(j) => j,
            Err(_) => {
                // RFC 6120 §7.7.2.1: a resource that cannot be prepared.
                self.out.push(Output::Element(make_error_reply(&el, &StanzaError::bad_request("invalid resource"))));
                self.state = State::Open(stage);
                return;
            }
        };
        let mut s = match self.bind_session(jid.clone()).await {
            Ok(s) => s,
            Err(e) => {
                self.out.push(Output::Element(make_error_reply(&el, &e)));
                self.state = State::Open(stage);
                return;
            }
        };
        let mut reply = make_iq_result(&el, None);
        reply.append_child(
            Element::builder("bind", ns::BIND)
                .append(Element::builder("jid", ns::BIND).text(jid.as_str()).build())
                .build(),
        );
        self.out.push(Output::Element(reply));
        self.flush_outbox(&mut s);
        tracing::debug!(jid = %jid, "session bound");
        self.state = State::Bound(s);
    }

    /// Makes `jid` a session here: its state (after the modules' `on_bound`),
    /// its mailbox, its row in the router (replacing an older session of the
    /// same full JID, RFC 6120 §7.7.2.2), server pings.
    pub(crate) async fn bind_session(
        &mut self,
        jid: meerkat_stanza::FullJid,
    ) -> Result<Box<SessionState>, StanzaError> {
        let id = self.ctx.next_session_id();
        let (tx, rx) = mpsc::channel(self.ctx.config.general.session_mailbox.max(16));
        let overflow = Arc::new(Overflow::default());
        let mut s = Box::new(SessionState::new(id, jid.clone(), self.info.peer));
        for h in &self.ctx.hooks.session {
            h.on_bound(&self.ctx, &mut s).await?;
        }
        let handle = SessionHandle { id, jid, mailbox: tx, overflow: overflow.clone() };
        if let Some(old) = self.ctx.router.register(handle) {
            if old.mailbox.try_send(SessionMsg::Replaced).is_err() {
                old.overflow.raise();
            }
        }
        self.mailbox = Some(crate::c2s::Inbox::new(rx, overflow));
        self.deadline = None;
        if let Some(p) = self.ctx.config.modules.mod_ping.as_ref().filter(|p| p.send_pings) {
            self.pinger = Some(Pinger {
                interval: std::time::Duration::from_secs(p.ping_interval),
                timeout: std::time::Duration::from_secs(p.ping_req_timeout),
                kill: p.timeout_action == meerkat_config::TimeoutAction::Kill,
                pending: None,
            });
        }
        Ok(s)
    }

    fn flush_outbox(&mut self, s: &mut SessionState) {
        for el in std::mem::take(&mut s.outbox) {
            self.emit(el);
        }
    }

    /// A top-level element from a bound client.
    pub(crate) async fn bound_element(&mut self, el: Element) {
        self.tokens -= 1.0;
        if el.ns() == ns::CLIENT && matches!(el.name(), "message" | "presence" | "iq") {
            self.sm_inbound();
        }
        if el.ns() != ns::CLIENT || !matches!(el.name(), "message" | "presence" | "iq") {
            if self.sm_nonza(&el).await {
                return;
            }
            if let State::Bound(s) = &mut self.state {
                let ctx = self.ctx.clone();
                if ctx.hooks.session.iter().any(|h| h.on_nonza(&ctx, s, &el)) {
                    for e in std::mem::take(&mut s.outbox) {
                        self.emit(e);
                    }
                    return;
                }
            }
            return self.stream_error(StreamError::UnsupportedStanzaType, None).await;
        }
        let mut st = match Stanza::parse(el) {
            Ok(st) => st,
            Err((el, Some(err))) => {
                if el.attr("type") != Some("error") {
                    self.out.push(Output::Element(make_error_reply(&el, &err)));
                }
                return;
            }
            Err((_, None)) => return self.stream_error(StreamError::UnsupportedStanzaType, None).await,
        };
        let State::Bound(mut s) = std::mem::replace(&mut self.state, State::Closed) else { return };
        // RFC 6120 §8.1.2.1: the server stamps the full JID; a client-supplied 'from'
        // must be the session's own address.
        if let Some(from) = &st.from {
            let own = match from.try_as_full() {
                Ok(f) => f == &s.jid,
                Err(b) => b == &s.bare,
            };
            if !own {
                self.state = State::Bound(s);
                return self.stream_error(StreamError::InvalidFrom, None).await;
            }
        }
        st.set_from(Jid::from(s.jid.clone()));
        self.handle_stanza(&mut s, st).await;
        self.flush_outbox(&mut s);
        self.state = State::Bound(s);
        self.sm_check_buffer().await;
    }

    /// Handles one stanza from the bound client.
    async fn handle_stanza(&mut self, s: &mut SessionState, mut st: Stanza) {
        let ctx = self.ctx.clone();
        match st.kind {
            StanzaKind::Iq => {
                let to_self = st.to.as_ref().is_none_or(|t| t.to_bare() == s.bare && t.resource().is_none());
                let to_server = st.to.as_ref().is_some_and(|t| {
                    t.node().is_none() && t.resource().is_none() && ctx.is_local_domain(t.domain().as_str())
                });
                if to_self || to_server {
                    if let Some(IqType::Result | IqType::Error) = st.iq_type() {
                        // Answers to server pings (XEP-0199 §4.2) and other
                        // server-originated requests.
                        if let (Some(p), Some(id)) = (&mut self.pinger, st.id()) {
                            if p.pending.as_ref().is_some_and(|(pid, _)| pid == id) {
                                p.pending = None;
                            }
                        }
                        return;
                    }
                    if st.iq_type() == Some(IqType::Set) && st.el.has_child("session", ns::SESSION) {
                        // RFC 3921 §3: legacy session establishment is a no-op.
                        s.send(make_iq_result(&st.el, None));
                        return;
                    }
                    if st.el.has_child("bind", ns::BIND) {
                        s.send(make_error_reply(&st.el, &StanzaError::not_allowed().with_text("already bound")));
                        return;
                    }
                    let (scope, to) = if to_server {
                        (IqScope::Server, st.to.clone().expect("server IQs have a 'to'"))
                    } else {
                        (IqScope::Account, Jid::from(s.bare.clone()))
                    };
                    let from = Jid::from(s.jid.clone());
                    let peer = s.peer;
                    if let Some(mut reply) = ctx.dispatch_iq(scope, &st, &from, &to, Some(s), Some(peer)).await {
                        if st.to.is_none() {
                            // RFC 6120 §10.3.3: no 'to' in, no 'from' out.
                            reply.remove_attr("from");
                        }
                        s.send(reply);
                    }
                    return;
                }
                if !self.ctx.run_send_hooks(s, &mut st).await {
                    return;
                }
                ctx.route(st).await;
            }
            StanzaKind::Presence => {
                if st.to.is_none() {
                    if let Some(status) = crate::presence::broadcast(&ctx, s, st).await {
                        self.last_status = status;
                    }
                    return;
                }
                if !self.ctx.run_send_hooks(s, &mut st).await {
                    return;
                }
                crate::presence::directed(&ctx, s, st).await;
            }
            StanzaKind::Message => {
                if st.to.is_none() {
                    // RFC 6121 §8.1.1.1: a message without 'to' is for the sender's bare JID.
                    st.set_to(Jid::from(s.bare.clone()));
                }
                if !self.ctx.run_send_hooks(s, &mut st).await {
                    return;
                }
                ctx.route(st).await;
            }
        }
    }

    /// Writes one stanza from the mailbox to the client, after the receive hooks
    /// (which may drop it, hold it back or bounce it).
    async fn deliver(&mut self, s: &mut SessionState, mut st: Stanza) {
        for h in &self.ctx.hooks.session {
            match h.on_user_receive(&self.ctx, s, &mut st) {
                Flow::Continue => {}
                Flow::Drop => return,
                Flow::Bounce(e) => {
                    if let Some(reply) = st.error_reply(&e) {
                        let ctx = self.ctx.clone();
                        ctx.route(reply).await;
                    }
                    return;
                }
            }
        }
        // What hooks queued (e.g. presence held back by CSI) goes first.
        self.flush_outbox(s);
        self.emit(st.el);
    }

    /// A message from the session's mailbox.
    pub async fn on_mailbox(&mut self, m: crate::Mailbox) {
        let msg = match m {
            crate::Mailbox::Msg(m) => m,
            crate::Mailbox::Overflow => {
                return self.stream_error(StreamError::PolicyViolation, Some("too many unread stanzas")).await;
            }
            // The transport handles takeovers; a stray one is refused by dropping it.
            crate::Mailbox::Takeover(_) => return,
        };
        let State::Bound(mut s) = std::mem::replace(&mut self.state, State::Closed) else {
            return;
        };
        match msg {
            SessionMsg::Stanza(st) => self.deliver(&mut s, *st).await,
            SessionMsg::Batch(sts) => {
                for st in sts {
                    self.deliver(&mut s, st).await;
                }
            }
            SessionMsg::Event(ev) => {
                let ctx = self.ctx.clone();
                for h in &ctx.hooks.session {
                    h.on_event(&ctx, &mut s, &ev).await;
                }
            }
            SessionMsg::Replaced => {
                self.state = State::Bound(s);
                return self
                    .stream_error(StreamError::Conflict, Some("replaced by a new session with the same resource"))
                    .await;
            }
            SessionMsg::Kick(cond, text) => {
                self.state = State::Bound(s);
                return self.stream_error(cond, text.as_deref()).await;
            }
        }
        self.flush_outbox(&mut s);
        self.state = State::Bound(s);
        self.sm_check_buffer().await;
    }
}

/// An unacknowledged stanza of a session that ended (XEP-0198): routed again now
/// that the session is gone — a message to another resource or offline storage,
/// an IQ request answered with an error; presence is not repeated.
pub(crate) async fn reroute_unacked(
    ctx: &ServerContext,
    bare: &BareJid,
    full: &meerkat_stanza::FullJid,
    mut st: Stanza,
) {
    if st.kind == StanzaKind::Presence || st.is_error() {
        return;
    }
    if st.kind == StanzaKind::Iq && !st.iq_type().is_some_and(|t| t.is_request()) {
        return;
    }
    if st.to.as_ref().is_none_or(|t| t.try_as_full().is_ok_and(|f| f == full)) {
        st.set_to(Jid::from(bare.clone()));
    }
    ctx.route(st).await;
}

/// A stanza left in the mailbox of a session that closed: route it again, now that
/// the session is gone (a message then goes to another resource or offline storage,
/// an IQ request gets `service-unavailable`).
pub(crate) async fn reroute_undelivered(ctx: &ServerContext, s: &SessionState, st: Stanza) {
    if st.kind == StanzaKind::Presence {
        return;
    }
    if st.to.as_ref().is_some_and(|t| t.try_as_full().is_ok_and(|f| f == &s.jid)) || st.to.is_none() {
        ctx.route(st).await;
    } else {
        // Addressed to the bare JID: route to the bare JID again.
        let mut st = st;
        st.set_to(Jid::from(s.bare.clone()));
        ctx.route(st).await;
    }
}
