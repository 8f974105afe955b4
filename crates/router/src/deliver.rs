//! Delivery rules: RFC 6120 §10 (server rules for processing XML stanzas) and
//! RFC 6121 §8 (rules for stanzas addressed to local users).

use std::sync::Arc;

use meerkat_core::hooks::{Flow, IqScope, OfflineOutcome};
use meerkat_core::router::{SessionHandle, SessionInfo};
use meerkat_core::{account, Router, ServerContext, SessionId, SessionMsg};
use meerkat_stanza::{BareJid, FullJid, Jid, Stanza, StanzaError, StanzaErrorCondition, StanzaKind};
use meerkat_storage::Subscription;
use meerkat_xml::Element;
use tokio::sync::mpsc::error::TrySendError;

use crate::table::SessionTable;

/// RFC 6121 §5.2.2 message types (absent = normal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MessageType {
    Chat,
    Normal,
    Headline,
    Groupchat,
    Error,
}

impl MessageType {
    fn of(st: &Stanza) -> Self {
        match st.type_attr() {
            Some("chat") => MessageType::Chat,
            Some("headline") => MessageType::Headline,
            Some("groupchat") => MessageType::Groupchat,
            Some("error") => MessageType::Error,
            // RFC 6121 §5.2.2: an unknown type is treated as normal.
            _ => MessageType::Normal,
        }
    }
}

/// The single-node router.
#[derive(Default)]
pub struct LocalRouter {
    table: SessionTable,
}

impl LocalRouter {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts a stanza in a session's mailbox; gives it back if the mailbox is full
    /// (the session is then told to close) or gone.
    #[allow(clippy::result_large_err)] // the error gives the stanza back, by design
    fn try_deliver(&self, h: &SessionHandle, st: Stanza) -> Result<(), Stanza> {
        match h.mailbox.try_send(SessionMsg::Stanza(Box::new(st))) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(SessionMsg::Stanza(st))) => {
                let st = *st;
                tracing::warn!(jid = %h.jid, "session mailbox full: closing the session");
                h.overflow.notify_one();
                Err(st)
            }
            Err(TrySendError::Closed(SessionMsg::Stanza(st))) => Err(*st),
            Err(_) => unreachable!("try_send gives back the message it was given"),
        }
    }

    /// [`Self::try_deliver`] to a full JID, under the table's read lock (no handle
    /// clone). Returns the receiving session, or gives the stanza back when there
    /// is no such session or it could not take it.
    #[allow(clippy::result_large_err)] // the error gives the stanza back, by design
    fn deliver_full(&self, jid: &FullJid, st: Stanza) -> Result<SessionId, Stanza> {
        let mut st = Some(st);
        let res = self
            .table
            .with_session(jid, |e| self.try_deliver(&e.handle, st.take().expect("taken once")).map(|()| e.handle.id));
        match res {
            Some(r) => r,
            None => Err(st.take().expect("not taken when the session is absent")),
        }
    }

    /// Tells the delivery hooks which sessions took a message.
    fn delivered(&self, ctx: &ServerContext, bare: &BareJid, copy: Option<Stanza>, receivers: &[SessionId]) {
        if let Some(copy) = copy {
            for h in &ctx.hooks.delivery {
                h.on_message_delivered(ctx, bare, &copy, receivers);
            }
        }
    }

    /// Sends an error reply for `st` back to its sender (never for errors).
    async fn bounce(&self, ctx: &ServerContext, st: &Stanza, err: StanzaError) {
        if let Some(reply) = st.error_reply(&err) {
            if reply.to.is_some() {
                Box::pin(self.route(ctx, reply)).await;
            }
        }
    }

    /// RFC 6121 §8.5: a stanza for a local account.
    async fn to_local_user(&self, ctx: &ServerContext, to: Jid, st: Stanza) {
        match st.kind {
            StanzaKind::Message => self.message(ctx, to, st).await,
            StanzaKind::Presence => self.presence(ctx, to, st).await,
            StanzaKind::Iq => self.iq(ctx, to, st).await,
        }
    }

    /// RFC 6121 §8.5.2 / §8.5.3.1 / §8.5.3.2.1 for messages.
    async fn message(&self, ctx: &ServerContext, to: Jid, mut st: Stanza) {
        let ty = MessageType::of(&st);
        let bare = to.to_bare();
        if matches!(ty, MessageType::Chat | MessageType::Normal | MessageType::Headline) {
            self.stamp(ctx, &bare, &mut st);
        }
        // Keep a copy for hooks that want to know where chat messages went
        // (carbons) — only when the user has several sessions, so a single-device
        // user costs no clone.
        let copy = (matches!(ty, MessageType::Chat | MessageType::Normal)
            && ctx.hooks.delivery.iter().any(|h| h.wants_delivered_messages())
            && self.table.with_user(bare.as_str(), |l| l.len()) > 1)
            .then(|| st.clone());
        if let Ok(full) = to.try_as_full() {
            // §8.5.3.1: a connected resource that matches exactly gets it.
            match self.deliver_full(full, st) {
                Ok(id) => return self.delivered(ctx, &bare, copy, &[id]),
                Err(back) => st = back,
            }
            // §8.5.3.2.1: no such resource; chat and normal fall back to the bare JID.
            match ty {
                MessageType::Chat | MessageType::Normal => {}
                MessageType::Groupchat => return self.bounce(ctx, &st, StanzaError::service_unavailable()).await,
                MessageType::Headline | MessageType::Error => return, // silently ignored
            }
        }
        match ty {
            MessageType::Error => return,
            MessageType::Groupchat => return self.bounce(ctx, &st, StanzaError::service_unavailable()).await,
            _ => {}
        }
        // §8.5.2.1: available resources with non-negative priority; headlines go to
        // all of them, chat and normal to the highest-priority ones. Delivered under
        // the shard's read lock (`try_send` never waits), so no handle is cloned and
        // a single-session user costs no allocation here.
        let want_ids = copy.is_some();
        let mut receivers: Vec<SessionId> = Vec::new();
        let mut took = false;
        let pending = self.table.with_user(bare.as_str(), |list| {
            let avail = || list.iter().filter(|e| e.presence.is_some() && e.priority >= 0);
            let top = if ty == MessageType::Headline { None } else { avail().map(|e| e.priority).max() };
            let mut targets = avail().filter(|e| top.is_none_or(|t| e.priority == t)).peekable();
            let mut pending = Some(st);
            while let Some(e) = targets.next() {
                let Some(p) = pending.take() else { break };
                let one = if targets.peek().is_some() {
                    let c = p.clone();
                    pending = Some(p);
                    c
                } else {
                    p
                };
                match self.try_deliver(&e.handle, one) {
                    Ok(()) => {
                        took = true;
                        if want_ids {
                            receivers.push(e.handle.id);
                        }
                    }
                    Err(back) => {
                        if pending.is_none() {
                            pending = Some(back);
                        }
                    }
                }
            }
            pending
        });
        if took {
            return self.delivered(ctx, &bare, copy, &receivers);
        }
        let Some(st) = pending else { return };
        // §8.5.2.2: no available resource took it.
        if ty == MessageType::Headline {
            return;
        }
        self.offline(ctx, &bare, st).await;
    }

    /// Stamps hooks' per-delivery changes (e.g. XEP-0359 stanza ids) once.
    fn stamp(&self, ctx: &ServerContext, bare: &BareJid, st: &mut Stanza) {
        for h in &ctx.hooks.delivery {
            h.on_deliver_message(ctx, bare, st);
        }
    }

    /// The offline path: account check, offline filters, offline storage, or a bounce.
    async fn offline(&self, ctx: &ServerContext, bare: &BareJid, st: Stanza) {
        let Some(acc) = account(bare) else { return };
        match ctx.stores.auth.user_exists(acc).await {
            Ok(true) => {}
            Ok(false) => return self.bounce(ctx, &st, StanzaError::service_unavailable()).await,
            Err(e) => {
                tracing::error!(to = %bare, error = %e, "storage failure checking a message recipient");
                return self.bounce(ctx, &st, StanzaError::internal()).await;
            }
        }
        for h in &ctx.hooks.delivery {
            match h.on_inbound_offline_filter(ctx, bare, &st).await {
                Flow::Continue => {}
                Flow::Drop => return,
                Flow::Bounce(e) => return self.bounce(ctx, &st, e).await,
            }
        }
        for h in &ctx.hooks.delivery {
            match h.on_offline_message(ctx, bare, &st).await {
                OfflineOutcome::Stored => return,
                OfflineOutcome::NotHandled => {}
                OfflineOutcome::Refused(e) => return self.bounce(ctx, &st, e).await,
            }
        }
        self.bounce(ctx, &st, StanzaError::service_unavailable()).await
    }

    /// RFC 6121 §8.5.2.1.2 / §8.5.3 and §4.3 / §3 for presence.
    async fn presence(&self, ctx: &ServerContext, to: Jid, st: Stanza) {
        let bare = to.to_bare();
        match st.type_attr() {
            Some("subscribe" | "subscribed" | "unsubscribe" | "unsubscribed") => {
                // RFC 6121 §3: subscription stanzas go to the bare JID.
                for h in &ctx.hooks.delivery {
                    match h.on_inbound_subscription(ctx, &bare, &st).await {
                        Flow::Continue => {}
                        Flow::Drop => return,
                        Flow::Bounce(e) => return self.bounce(ctx, &st, e).await,
                    }
                }
                self.to_available(&bare, &st);
            }
            Some("probe") => self.probe(ctx, to, &st).await,
            _ => match to.try_as_full() {
                Ok(full) => {
                    let _ = self.deliver_full(full, st);
                }
                Err(_) => self.to_available(&bare, &st),
            },
        }
    }

    /// Delivers a copy to every available resource of `bare`.
    fn to_available(&self, bare: &BareJid, st: &Stanza) {
        let targets: Vec<SessionHandle> = self.table.with_user(bare.as_str(), |l| {
            l.iter().filter(|e| e.presence.is_some()).map(|e| e.handle.clone()).collect()
        });
        for h in targets {
            let _ = self.try_deliver(&h, st.clone());
        }
    }

    /// RFC 6121 §4.3.2: answer a probe on behalf of a local user, if the prober
    /// is allowed to see the user's presence (a subscription `from`/`both` in the
    /// user's stored roster, or the user's own account).
    async fn probe(&self, ctx: &ServerContext, to: Jid, st: &Stanza) {
        let Some(from) = st.from.clone() else { return };
        let bare = to.to_bare();
        let sessions: Vec<SessionInfo> = self.table.sessions(&bare);
        let available: Vec<&SessionInfo> = sessions
            .iter()
            .filter(|s| s.presence.is_some())
            .filter(|s| to.try_as_full().is_ok_and(|f| &s.jid == f) || to.is_bare())
            // A resource probing its own account learns about the others only.
            .filter(|s| from.try_as_full().is_ok_and(|f| &s.jid != f) || from.is_bare())
            .collect();
        if available.is_empty() {
            return;
        }
        let from_bare = from.to_bare();
        // XEP-0191 §3.3: a blocked prober learns nothing.
        for h in &ctx.hooks.delivery {
            if !matches!(h.on_inbound_offline_filter(ctx, &bare, st).await, Flow::Continue) {
                return;
            }
        }
        if from_bare != bare {
            let Some(acc) = account(&bare) else { return };
            match ctx.stores.roster.get_item(acc, from_bare.as_str()).await {
                Ok(Some(item)) if matches!(item.subscription, Subscription::From | Subscription::Both) => {}
                Ok(_) => return,
                Err(e) => {
                    tracing::error!(user = %bare, error = %e, "storage failure answering a presence probe");
                    return;
                }
            }
        }
        for s in available {
            if let Some(p) = &s.presence {
                let mut el = (**p).clone();
                el.set_attr("from", s.jid.as_str());
                el.set_attr("to", from.as_str());
                Box::pin(self.route(ctx, Stanza::from_trusted(el))).await;
            }
        }
    }

    /// RFC 6121 §8.5.2.1.3 / §8.5.3 for IQs.
    async fn iq(&self, ctx: &ServerContext, to: Jid, st: Stanza) {
        match to.try_as_full() {
            Ok(full) => {
                if let Err(back) = self.deliver_full(full, st) {
                    self.bounce(ctx, &back, StanzaError::service_unavailable()).await;
                }
            }
            Err(_) => {
                // §8.5.2.1.3: the server handles an IQ to a bare JID on the user's behalf.
                let Some(from) = st.from.clone() else { return };
                if let Some(reply) = ctx.dispatch_iq(IqScope::Account, &st, &from, &to, None, None).await {
                    Box::pin(self.route(ctx, Stanza::from_trusted(reply))).await;
                }
            }
        }
    }

    /// RFC 6120 §10.3.1-3: a stanza for the server's own domain.
    async fn to_server(&self, ctx: &ServerContext, to: Jid, st: Stanza) {
        if st.kind == StanzaKind::Iq {
            let Some(from) = st.from.clone() else { return };
            if let Some(reply) = ctx.dispatch_iq(IqScope::Server, &st, &from, &to, None, None).await {
                Box::pin(self.route(ctx, Stanza::from_trusted(reply))).await;
            }
        }
        // Messages and presence for the server itself have no handler: ignored.
    }
}

#[async_trait::async_trait]
impl Router for LocalRouter {
    async fn route(&self, ctx: &ServerContext, st: Stanza) {
        let Some(to) = st.to.clone() else {
            tracing::debug!("dropping a stanza without 'to' handed to the router");
            return;
        };
        if !ctx.is_local_domain(to.domain().as_str()) {
            // No server-to-server yet: RFC 6120 §10.4.
            return self.bounce(ctx, &st, StanzaError::new(StanzaErrorCondition::RemoteServerNotFound)).await;
        }
        if to.node().is_none() {
            return self.to_server(ctx, to, st).await;
        }
        self.to_local_user(ctx, to, st).await
    }

    fn register(&self, handle: SessionHandle) -> Option<SessionHandle> {
        self.table.insert(handle)
    }

    fn unregister(&self, jid: &FullJid, id: SessionId) {
        self.table.remove(jid, id)
    }

    fn set_presence(&self, jid: &FullJid, id: SessionId, priority: i8, presence: Option<Arc<Element>>) {
        self.table.set_presence(jid, id, priority, presence)
    }

    fn sessions(&self, bare: &BareJid) -> Vec<SessionInfo> {
        self.table.sessions(bare)
    }

    fn send(&self, jid: &FullJid, msg: SessionMsg) -> bool {
        let Some(h) = self.table.get(jid) else { return false };
        match h.mailbox.try_send(msg) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                h.overflow.notify_one();
                false
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }

    fn send_all(&self, bare: &BareJid, msg: &dyn Fn() -> SessionMsg) -> usize {
        let handles: Vec<SessionHandle> =
            self.table.with_user(bare.as_str(), |l| l.iter().map(|e| e.handle.clone()).collect());
        let mut n = 0;
        for h in handles {
            match h.mailbox.try_send(msg()) {
                Ok(()) => n += 1,
                Err(TrySendError::Full(_)) => h.overflow.notify_one(),
                Err(TrySendError::Closed(_)) => {}
            }
        }
        n
    }

    fn session_count(&self) -> usize {
        self.table.len()
    }

    fn user_session_count(&self, bare: &BareJid) -> usize {
        self.table.with_user(bare.as_str(), |l| l.len())
    }
}
