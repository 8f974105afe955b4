//! Delivery rules: RFC 6120 §10 (server rules for processing XML stanzas) and
//! RFC 6121 §8 (rules for stanzas addressed to local users).

use std::sync::Arc;

use std::sync::OnceLock;

use meerkat_core::cluster::{ClusterLink, Forward, MsgTarget, NodeName};
use meerkat_core::hooks::{Flow, IqScope, OfflineOutcome};
use meerkat_core::router::{SessionHandle, SessionInfo};
use meerkat_core::{account, Router, ServerContext, SessionId, SessionMsg};
use meerkat_stanza::{BareJid, FullJid, Jid, Stanza, StanzaError, StanzaErrorCondition, StanzaKind};
use meerkat_storage::Subscription;
use meerkat_xml::Element;
use tokio::sync::mpsc::error::TrySendError;

use crate::table::{Entry, Location, SessionTable};

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

/// A stanza is forwarded between nodes at most this often: two nodes whose views
/// of a session differ for a moment cannot bounce it between them.
const MAX_HOPS: u8 = 2;

/// The router: this node's sessions, and in a cluster the other nodes' too.
#[derive(Default)]
pub struct LocalRouter {
    table: SessionTable,
    cluster: OnceLock<Arc<dyn ClusterLink>>,
}

/// Microseconds since the epoch.
fn now_micros() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// A message no session took at once: what routing it still needs.
enum MessageRest {
    /// RFC 6121 §8.5.2.2: the offline path for this user.
    Offline(BareJid, Stanza),
    /// An error back to the sender.
    Bounce(Stanza, StanzaError),
}

impl LocalRouter {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Joins a cluster: from now on the table also holds other nodes' sessions
    /// and stanzas for them go through `link`. Set once, before serving.
    pub fn set_cluster(&self, link: Arc<dyn ClusterLink>) {
        if self.cluster.set(link).is_err() {
            panic!("the router joined a cluster twice");
        }
    }

    /// The session table (the cluster transport applies other nodes' changes).
    pub fn table(&self) -> &SessionTable {
        &self.table
    }

    /// Delivers a stanza to a session wherever it is: into a local mailbox, or
    /// forwarded to its node. Gives it back if a local mailbox is full (the
    /// session is then told to close) or gone, or if it has been forwarded too
    /// often already.
    #[allow(clippy::result_large_err)] // the error gives the stanza back, by design
    fn try_deliver(&self, e: &Entry, st: Stanza, fallback: bool, hops: u8) -> Result<(), Stanza> {
        match &e.at {
            Location::Local(h) => self.try_deliver_local(h, st),
            Location::Remote { jid, node, .. } => {
                let Some(link) = self.cluster.get() else { return Err(st) };
                if hops >= MAX_HOPS {
                    tracing::warn!(to = %jid, %node, "not forwarding a stanza again: its session moved too often");
                    return Err(st);
                }
                link.forward(node, Forward::Stanza { to: jid.clone(), stanza: st, fallback, hops: hops + 1 });
                Ok(())
            }
        }
    }

    /// Puts a stanza in a local session's mailbox; gives it back if the mailbox
    /// is full (the session is then told to close) or gone.
    #[allow(clippy::result_large_err)] // the error gives the stanza back, by design
    pub(crate) fn try_deliver_local(&self, h: &SessionHandle, st: Stanza) -> Result<(), Stanza> {
        match h.mailbox.try_send(SessionMsg::Stanza(Box::new(st))) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(SessionMsg::Stanza(st))) => {
                let st = *st;
                tracing::warn!(jid = %h.jid, "session mailbox full: closing the session");
                h.overflow.raise();
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
    fn deliver_full(&self, jid: &FullJid, st: Stanza, hops: u8) -> Result<SessionId, Stanza> {
        let mut st = Some(st);
        let res = self
            .table
            .with_session(jid, |e| self.try_deliver(e, st.take().expect("taken once"), true, hops).map(|()| e.id()));
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

    /// Routes a stanza forwarded from another node whose session is gone here.
    pub(crate) async fn route_forwarded(&self, ctx: &ServerContext, to: Jid, st: Stanza, hops: u8) {
        self.to_local_user(ctx, to, st, hops).await
    }

    /// RFC 6121 §8.5: a stanza for a local account. `hops`: how often it was
    /// forwarded between nodes already (its delivery hooks ran on the first).
    async fn to_local_user(&self, ctx: &ServerContext, to: Jid, st: Stanza, hops: u8) {
        match st.kind {
            StanzaKind::Message => {
                if let Some(rest) = self.message(ctx, to, st, hops) {
                    Box::pin(self.message_rest(ctx, rest)).await;
                }
            }
            // Boxed, like every path that waits for storage or answers with
            // an error: the future of the common one (a message delivered at
            // once) stays small enough for the allocator's fast bins.
            StanzaKind::Presence => Box::pin(self.presence(ctx, to, st, hops)).await,
            StanzaKind::Iq => Box::pin(self.iq(ctx, to, st, hops)).await,
        }
    }

    /// RFC 6121 §8.5.2 / §8.5.3.1 / §8.5.3.2.1 for messages: delivers to the
    /// sessions that take it without waiting, and returns what is left to do
    /// (offline storage or an error) for [`Self::message_rest`]. Not async, so
    /// the routing future of the common case holds none of its state.
    fn message(&self, ctx: &ServerContext, to: Jid, mut st: Stanza, hops: u8) -> Option<MessageRest> {
        let ty = MessageType::of(&st);
        // A bare address (most chat messages, every group chat copy) becomes
        // the bare JID without a copy.
        let (bare, full) = match to.try_into_full() {
            Ok(full) => (full.to_bare(), Some(full)),
            Err(bare) => (bare, None),
        };
        if hops == 0 && matches!(ty, MessageType::Chat | MessageType::Normal | MessageType::Headline) {
            self.stamp(ctx, &bare, &mut st);
        }
        // Keep a copy for hooks that want to know where chat messages went
        // (carbons) — only when the user has several sessions, so a single-device
        // user costs no clone.
        let copy = (matches!(ty, MessageType::Chat | MessageType::Normal)
            && ctx.hooks.delivery.iter().any(|h| h.wants_delivered_messages())
            && self.table.with_user(bare.as_str(), |l| l.len()) > 1)
            .then(|| st.clone());
        if let Some(full) = &full {
            // §8.5.3.1: a connected resource that matches exactly gets it.
            match self.deliver_full(full, st, hops) {
                Ok(id) => {
                    self.delivered(ctx, &bare, copy, &[id]);
                    return None;
                }
                Err(back) => st = back,
            }
            // §8.5.3.2.1: no such resource; chat and normal fall back to the bare JID.
            match ty {
                MessageType::Chat | MessageType::Normal => {}
                MessageType::Groupchat => return Some(MessageRest::Bounce(st, StanzaError::service_unavailable())),
                MessageType::Headline | MessageType::Error => return None, // silently ignored
            }
        }
        // A group chat service (MUC Light) addresses a member's bare JID: every
        // available resource gets it, like a headline; nothing is stored offline
        // (the room's archive holds it). From anyone else, §8.5.2.1.1: an error.
        let from_service = ty == MessageType::Groupchat
            && st.from.as_ref().is_some_and(|f| ctx.hooks.service(f.domain().as_str()).is_some());
        match ty {
            MessageType::Error => return None,
            MessageType::Groupchat if !from_service => {
                return Some(MessageRest::Bounce(st, StanzaError::service_unavailable()))
            }
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
            let top = if matches!(ty, MessageType::Headline | MessageType::Groupchat) {
                None
            } else {
                avail().map(|e| e.priority).max()
            };
            let targets = || avail().filter(|e| top.is_none_or(|t| e.priority == t));
            // A copy forwarded to another node may fall back to the missing-resource
            // rules there only when it is the one copy (else others took it).
            let only_one = targets().nth(1).is_none();
            let mut targets = targets().peekable();
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
                match self.try_deliver(e, one, only_one, hops) {
                    Ok(()) => {
                        took = true;
                        if want_ids {
                            receivers.push(e.id());
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
            self.delivered(ctx, &bare, copy, &receivers);
            return None;
        }
        let st = pending?;
        // §8.5.2.2: no available resource took it.
        if matches!(ty, MessageType::Headline | MessageType::Groupchat) {
            return None;
        }
        Some(MessageRest::Offline(bare, st))
    }

    /// What [`Self::message`] left to do.
    async fn message_rest(&self, ctx: &ServerContext, rest: MessageRest) {
        match rest {
            MessageRest::Offline(bare, st) => self.offline(ctx, &bare, st).await,
            MessageRest::Bounce(st, e) => self.bounce(ctx, &st, e).await,
        }
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
    async fn presence(&self, ctx: &ServerContext, to: Jid, st: Stanza, hops: u8) {
        let bare = to.to_bare();
        match st.type_attr() {
            Some("subscribe" | "subscribed" | "unsubscribe" | "unsubscribed") => {
                // RFC 6121 §3: subscription stanzas go to the bare JID. A copy
                // forwarded from another node already went through these hooks.
                if hops == 0 {
                    for h in &ctx.hooks.delivery {
                        match h.on_inbound_subscription(ctx, &bare, &st).await {
                            Flow::Continue => {}
                            Flow::Drop => return,
                            Flow::Bounce(e) => return self.bounce(ctx, &st, e).await,
                        }
                    }
                }
                self.to_available(&bare, &st, hops);
            }
            Some("probe") => self.probe(ctx, to, &st).await,
            _ => match to.try_as_full() {
                Ok(full) => {
                    let _ = self.deliver_full(full, st, hops);
                }
                Err(_) => self.to_available(&bare, &st, hops),
            },
        }
    }

    /// Delivers a copy to every available resource of `bare` (under the shard's
    /// read lock: delivery never waits).
    fn to_available(&self, bare: &BareJid, st: &Stanza, hops: u8) {
        self.table.with_user(bare.as_str(), |l| {
            for e in l.iter().filter(|e| e.presence.is_some()) {
                let _ = self.try_deliver(e, st.clone(), false, hops);
            }
        });
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
    async fn iq(&self, ctx: &ServerContext, to: Jid, st: Stanza, hops: u8) {
        match to.try_as_full() {
            Ok(full) => {
                if let Err(back) = self.deliver_full(full, st, hops) {
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
            if let Some(svc) = ctx.hooks.service(to.domain().as_str()) {
                return svc.route(ctx, st, 0).await;
            }
            // No server-to-server yet: RFC 6120 §10.4.
            return Box::pin(self.bounce(ctx, &st, StanzaError::new(StanzaErrorCondition::RemoteServerNotFound))).await;
        }
        if to.node().is_none() {
            return Box::pin(self.to_server(ctx, to, st)).await;
        }
        self.to_local_user(ctx, to, st, 0).await
    }

    fn register(&self, handle: SessionHandle) -> Option<SessionHandle> {
        let since = now_micros();
        let link = self.cluster.get();
        if let Some(link) = link {
            link.session_added(&handle.jid, handle.id, since);
        }
        let old = self.table.insert(handle, since)?;
        match old.at {
            Location::Local(h) => Some(h),
            Location::Remote { id, jid, node } => {
                // RFC 6120 §7.7.2.2 across nodes: the older session's node closes it.
                if let Some(link) = link {
                    link.forward(&node, Forward::Msg { to: MsgTarget::Session(jid, id), msg: SessionMsg::Replaced });
                }
                None
            }
        }
    }

    fn unregister(&self, jid: &FullJid, id: SessionId) {
        self.table.remove(jid, id);
        // Only this node's sessions unregister. Tell the others even when the row
        // was already taken by a newer session of the same JID (here or on
        // another node): the directory must drop this session id either way.
        if let Some(link) = self.cluster.get() {
            link.session_removed(jid, id);
        }
    }

    fn set_presence(&self, jid: &FullJid, id: SessionId, priority: i8, presence: Option<Arc<Element>>) {
        if let Some(link) = self.cluster.get() {
            link.presence_changed(jid, id, priority, presence.as_ref());
        }
        self.table.set_presence(jid, id, priority, presence)
    }

    fn sessions(&self, bare: &BareJid) -> Vec<SessionInfo> {
        self.table.sessions(bare)
    }

    fn send(&self, jid: &FullJid, msg: SessionMsg) -> bool {
        let Some(e) = self.table.get(jid) else { return false };
        match e.at {
            Location::Local(h) => send_local(&h, msg),
            Location::Remote { id, jid, node } => match self.cluster.get() {
                Some(link) => {
                    link.forward(&node, Forward::Msg { to: MsgTarget::Session(jid, id), msg });
                    true
                }
                None => false,
            },
        }
    }

    fn send_all(&self, bare: &BareJid, msg: &dyn Fn() -> SessionMsg) -> usize {
        let (handles, nodes) = self.table.with_user(bare.as_str(), |l| {
            let mut nodes: Vec<(NodeName, usize)> = Vec::new();
            let mut handles = Vec::with_capacity(l.len());
            for e in l {
                match &e.at {
                    Location::Local(h) => handles.push(h.clone()),
                    Location::Remote { node, .. } => match nodes.iter_mut().find(|(n, _)| n == node) {
                        Some((_, count)) => *count += 1,
                        None => nodes.push((node.clone(), 1)),
                    },
                }
            }
            (handles, nodes)
        });
        let mut n = handles.into_iter().filter(|h| send_local(h, msg())).count();
        if let Some(link) = self.cluster.get() {
            for (node, count) in nodes {
                link.forward(&node, Forward::Msg { to: MsgTarget::User(bare.clone()), msg: msg() });
                n += count;
            }
        }
        n
    }

    fn forward_to_node(&self, node: &NodeName, st: Stanza, hops: u8) -> Result<(), Stanza> {
        match self.cluster.get() {
            Some(link) => {
                link.forward(node, Forward::Service { stanza: st, hops });
                Ok(())
            }
            None => Err(st),
        }
    }

    fn session_count(&self) -> usize {
        self.table.len()
    }

    fn user_session_count(&self, bare: &BareJid) -> usize {
        self.table.with_user(bare.as_str(), |l| l.len())
    }
}

/// Puts a session message in a local mailbox; a full mailbox tells the session to close.
fn send_local(h: &SessionHandle, msg: SessionMsg) -> bool {
    match h.mailbox.try_send(msg) {
        Ok(()) => true,
        Err(TrySendError::Full(_)) => {
            h.overflow.raise();
            false
        }
        Err(TrySendError::Closed(_)) => false,
    }
}
