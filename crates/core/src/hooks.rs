//! Hooks: how modules plug into the server, modelled on MongooseIM's `gen_hook`.
//!
//! At start every enabled [`Module`] registers its handlers in a [`HookRegistry`];
//! the registry is then frozen into [`Hooks`] inside the [`ServerContext`], so the hot
//! path reads it without locks. Three kinds of plug-in points:
//!
//! - **IQ handlers** by payload namespace, for IQs addressed to the server
//!   ([`IqScope::Server`]), to an account's bare JID ([`IqScope::Account`]; RFC 6120
//!   §10.3.3: an IQ without `to` is for the sender's own account), or sent before
//!   authentication ([`IqScope::PreAuth`], in-band registration).
//! - **Session hooks**: run in the session task with `&mut SessionState`
//!   (outgoing and incoming stanza filters, becoming available, closing, events).
//! - **Delivery hooks**: run wherever a stanza for a local user is routed, without a
//!   session (offline storage, inbound subscriptions, stamping stanza ids).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use meerkat_stanza::{BareJid, Jid, Stanza, StanzaError};
use meerkat_xml::Element;

use crate::context::ServerContext;
use crate::session::{EventDecoder, SessionEvent, SessionId, SessionState};

/// What a filter decides about a stanza.
#[derive(Debug)]
pub enum Flow {
    /// Go on (possibly with the stanza changed).
    Continue,
    /// Drop it silently.
    Drop,
    /// Drop it and answer the sender with this error (unless it is an error itself).
    Bounce(StanzaError),
}

/// An IQ request handed to a handler.
pub struct IqRequest<'a> {
    /// The requester (full JID; for pre-auth IQs the server domain).
    pub from: &'a Jid,
    /// The addressee: the domain for server IQs, the account's bare JID for account IQs.
    pub to: &'a Jid,
    /// The whole IQ.
    pub iq: &'a Stanza,
    /// `true` for `set`, `false` for `get`.
    pub is_set: bool,
    /// The payload element (the IQ's single child).
    pub payload: &'a Element,
    /// The requester's own session, when the IQ is about the requester's own account
    /// (or is a server IQ sent by a local session).
    pub session: Option<&'a mut SessionState>,
    /// The requester's network address (registration limits).
    pub peer: Option<SocketAddr>,
}

/// A handler's answer: the result payload (or none), or a stanza error.
pub type IqResult = Result<Option<Element>, StanzaError>;

/// Handles IQs of one namespace.
#[async_trait::async_trait]
pub trait IqHandler: Send + Sync + 'static {
    /// Handles a `get` or `set`.
    async fn handle_iq(&self, ctx: &ServerContext, req: IqRequest<'_>) -> IqResult;
}

/// Where an IQ handler answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IqScope {
    /// IQs to the server's domain.
    Server = 0,
    /// IQs to an account's bare JID (or without `to`, for the sender's own account).
    Account = 1,
    /// IQs before authentication (XEP-0077 registration).
    PreAuth = 2,
}

/// Hooks that run in a session task.
#[async_trait::async_trait]
pub trait SessionHooks: Send + Sync + 'static {
    /// The session was bound (load per-session caches here).
    async fn on_bound(&self, _ctx: &ServerContext, _s: &mut SessionState) -> Result<(), StanzaError> {
        Ok(())
    }
    /// A stanza the client sent, after `from` was stamped, before routing. It runs
    /// for every stanza, so it is synchronous and touches in-memory state only (no
    /// boxed future per hook per stanza); work that needs storage belongs in
    /// [`SessionHooks::on_outbound_subscription`] or in a task of the module's own.
    fn on_user_send(&self, _ctx: &ServerContext, _s: &mut SessionState, _st: &mut Stanza) -> Flow {
        Flow::Continue
    }
    /// An outbound presence subscription stanza (RFC 6121 §3: `subscribe`,
    /// `subscribed`, `unsubscribe`, `unsubscribed`) that every
    /// [`SessionHooks::on_user_send`] let through; may await storage.
    async fn on_outbound_subscription(&self, _ctx: &ServerContext, _s: &mut SessionState, _st: &mut Stanza) -> Flow {
        Flow::Continue
    }
    /// A top-level element from the bound client that is not a stanza (a "nonza",
    /// e.g. XEP-0352 `<active/>`). Returns whether the hook handled it; an element
    /// no hook handles ends the stream with `unsupported-stanza-type`.
    fn on_nonza(&self, _ctx: &ServerContext, _s: &mut SessionState, _el: &Element) -> bool {
        false
    }
    /// A stanza about to be written to the client (cheap, synchronous filter).
    fn on_user_receive(&self, _ctx: &ServerContext, _s: &mut SessionState, _st: &mut Stanza) -> Flow {
        Flow::Continue
    }
    /// Whether the session's presence broadcast (RFC 6121 §4.2.2, §4.5.2) may go
    /// to `to` (XEP-0191: not to blocked contacts). Cheap and synchronous.
    fn allows_presence_to(&self, _ctx: &ServerContext, _s: &SessionState, _to: &Jid) -> bool {
        true
    }
    /// The session sent available presence (`initial` = its first one).
    async fn on_available(&self, _ctx: &ServerContext, _s: &mut SessionState, _initial: bool) {}
    /// A module event reached the session.
    async fn on_event(&self, _ctx: &ServerContext, _s: &mut SessionState, _ev: &SessionEvent) {}
    /// The session is closing (`status` = text of the last unavailable presence).
    async fn on_closed(&self, _ctx: &ServerContext, _s: &mut SessionState, _status: &str) {}
    /// This module's state of the session, as XML, when the session moves to
    /// another node (a XEP-0198 resumption there); `None` when it has none.
    fn export_state(&self, _s: &SessionState) -> Option<Element> {
        None
    }
    /// State that [`SessionHooks::export_state`] gave on another node, after the
    /// moved session was bound here; `true` if `el` was this module's.
    fn import_state(&self, _s: &mut SessionState, _el: &Element) -> bool {
        false
    }
}

/// What happened to a message for a user with no session to take it.
#[derive(Debug)]
pub enum OfflineOutcome {
    /// A module stored it.
    Stored,
    /// No module took it (the router bounces `service-unavailable`).
    NotHandled,
    /// Refused with this error (e.g. offline quota full, storage down).
    Refused(StanzaError),
}

/// Hooks on the path of stanzas routed to a local user.
#[async_trait::async_trait]
pub trait DeliveryHooks: Send + Sync + 'static {
    /// A message (chat/normal) for `to` that no session can take right now.
    async fn on_offline_message(&self, _ctx: &ServerContext, _to: &BareJid, _st: &Stanza) -> OfflineOutcome {
        OfflineOutcome::NotHandled
    }
    /// Inbound subscription presence (`subscribe`, `subscribed`, `unsubscribe`,
    /// `unsubscribed`) for the local user `to` (RFC 6121 §3). Returns whether the
    /// stanza should still be delivered to the user's available resources.
    async fn on_inbound_subscription(&self, _ctx: &ServerContext, _to: &BareJid, _st: &Stanza) -> Flow {
        Flow::Continue
    }
    /// A message about to be delivered to local user `to` (e.g. stamp a stanza id).
    fn on_deliver_message(&self, _ctx: &ServerContext, _to: &BareJid, _st: &mut Stanza) {}
    /// Whether [`DeliveryHooks::on_message_delivered`] is wanted (the router then
    /// keeps a copy of each chat/normal message it delivers).
    fn wants_delivered_messages(&self) -> bool {
        false
    }
    /// A chat or normal message was put in the mailboxes of these sessions of
    /// local user `to` (e.g. XEP-0280 carbons for the others).
    fn on_message_delivered(&self, _ctx: &ServerContext, _to: &BareJid, _st: &Stanza, _receivers: &[SessionId]) {}
    /// A stanza for local user `to`, checked against the user's stored policy (the
    /// XEP-0191 blocklist) where no session of the user decides: before offline
    /// storage, and before answering a presence probe.
    async fn on_inbound_offline_filter(&self, _ctx: &ServerContext, _to: &BareJid, _st: &Stanza) -> Flow {
        Flow::Continue
    }
}

/// A hook run once when the server stops, after the sessions closed (e.g. to
/// write what a module still holds in memory).
#[async_trait::async_trait]
pub trait ShutdownHook: Send + Sync + 'static {
    /// The server is stopping.
    async fn on_shutdown(&self, ctx: &ServerContext);
}

/// A hook run before an account is removed in-band (XEP-0077 §3.2), so modules
/// drop what they hold for it in memory (e.g. archive rows not yet written, which
/// would otherwise be written after the account's data was deleted).
#[async_trait::async_trait]
pub trait AccountHooks: Send + Sync + 'static {
    /// `user`'s account is about to be deleted.
    async fn before_remove(&self, ctx: &ServerContext, user: &BareJid);
}

/// A service with a domain of its own (XEP-0045's `conference.<host>`): the
/// router hands it every stanza addressed to that domain or to a JID in it.
#[async_trait::async_trait]
pub trait Service: Send + Sync + 'static {
    /// A stanza for the service's domain (`from` and `to` are set). `hops`: how
    /// often another node forwarded it here already (0 when it was sent on this
    /// node), so a service that places its entities on cluster nodes forwards a
    /// stanza a bounded number of times.
    async fn route(&self, ctx: &ServerContext, st: Stanza, hops: u8);
}

/// Items a module adds to users' rosters (MUC Light's rooms-in-roster): they
/// come with every roster get, after the stored items.
#[async_trait::async_trait]
pub trait RosterExtra: Send + Sync + 'static {
    /// `jabber:iq:roster` `<item/>` elements for `user`.
    async fn roster_items(&self, ctx: &ServerContext, user: &BareJid) -> Vec<Element>;
}

/// A feature module.
pub trait Module: Send + Sync + 'static {
    /// The `[modules.NAME]` name.
    fn name(&self) -> &'static str;
    /// Registers the module's handlers.
    fn register(self: Arc<Self>, hooks: &mut HookRegistry);
}

/// Mutable registry used while modules start; frozen into [`Hooks`].
#[derive(Default)]
pub struct HookRegistry {
    iq: [HashMap<&'static str, Arc<dyn IqHandler>>; 3],
    session: Vec<(i32, Arc<dyn SessionHooks>)>,
    delivery: Vec<(i32, Arc<dyn DeliveryHooks>)>,
    shutdown: Vec<Arc<dyn ShutdownHook>>,
    account: Vec<Arc<dyn AccountHooks>>,
    server_features: Vec<&'static str>,
    account_features: Vec<&'static str>,
    stream_features_preauth: Vec<Element>,
    stream_features_bound: Vec<Element>,
    server_info_forms: Vec<Element>,
    modules: Vec<&'static str>,
    event_decoders: Vec<(&'static str, EventDecoder)>,
    services: Vec<(String, String, Arc<dyn Service>)>,
    roster_extra: Vec<Arc<dyn RosterExtra>>,
}

impl HookRegistry {
    /// Adds items to every roster get.
    pub fn roster_extra(&mut self, h: Arc<dyn RosterExtra>) {
        self.roster_extra.push(h);
    }
    /// Serves the domain `domain` with `h`; `name` is its disco#items name. A
    /// domain served twice is a configuration error caught at start.
    pub fn service(&mut self, domain: String, name: String, h: Arc<dyn Service>) {
        assert!(self.services.iter().all(|(d, _, _)| *d != domain), "two services for {domain}");
        self.services.push((domain, name, h));
    }
    /// Decodes session events that arrive from other cluster nodes as elements in
    /// namespace `ns` (see [`crate::session::Event::to_element`]).
    pub fn event_decoder(&mut self, ns: &'static str, f: EventDecoder) {
        assert!(self.event_decoders.iter().all(|(n, _)| *n != ns), "two event decoders for {ns}");
        self.event_decoders.push((ns, f));
    }
    /// Handles IQs whose payload is in `ns`, in `scope`. A second handler for the
    /// same (scope, ns) is a programming error.
    pub fn on_iq(&mut self, scope: IqScope, ns: &'static str, h: Arc<dyn IqHandler>) {
        let prev = self.iq[scope as usize].insert(ns, h);
        assert!(prev.is_none(), "two IQ handlers for {ns} in {scope:?}");
    }
    /// Adds session hooks; lower `prio` runs first.
    pub fn on_session(&mut self, prio: i32, h: Arc<dyn SessionHooks>) {
        self.session.push((prio, h));
    }
    /// Adds delivery hooks; lower `prio` runs first.
    pub fn on_delivery(&mut self, prio: i32, h: Arc<dyn DeliveryHooks>) {
        self.delivery.push((prio, h));
    }
    /// Runs `h` when the server stops.
    pub fn on_shutdown(&mut self, h: Arc<dyn ShutdownHook>) {
        self.shutdown.push(h);
    }
    /// Runs `h` before an account is removed.
    pub fn on_account(&mut self, h: Arc<dyn AccountHooks>) {
        self.account.push(h);
    }
    /// Advertises a feature in the server's disco#info.
    pub fn server_feature(&mut self, var: &'static str) {
        self.server_features.push(var);
    }
    /// Advertises a feature in accounts' disco#info.
    pub fn account_feature(&mut self, var: &'static str) {
        self.account_features.push(var);
    }
    /// Adds a stream feature offered before authentication (e.g. XEP-0077's `<register/>`).
    pub fn stream_feature_preauth(&mut self, el: Element) {
        self.stream_features_preauth.push(el);
    }
    /// Adds a stream feature offered after authentication (e.g. XEP-0352's `<csi/>`).
    pub fn stream_feature_bound(&mut self, el: Element) {
        self.stream_features_bound.push(el);
    }
    /// Adds an XEP-0128 extended-information form to the server's disco#info.
    pub fn server_info_form(&mut self, form: Element) {
        self.server_info_forms.push(form);
    }
    /// Records that a module is running.
    pub fn module(&mut self, name: &'static str) {
        self.modules.push(name);
    }

    /// Freezes the registry.
    pub fn freeze(mut self) -> Hooks {
        self.session.sort_by_key(|(p, _)| *p);
        self.delivery.sort_by_key(|(p, _)| *p);
        self.server_features.sort_unstable();
        self.server_features.dedup();
        self.account_features.sort_unstable();
        self.account_features.dedup();
        Hooks {
            iq: self.iq,
            session: self.session.into_iter().map(|(_, h)| h).collect(),
            delivery: self.delivery.into_iter().map(|(_, h)| h).collect(),
            shutdown: self.shutdown,
            account: self.account,
            server_features: self.server_features,
            account_features: self.account_features,
            stream_features_preauth: self.stream_features_preauth,
            stream_features_bound: self.stream_features_bound,
            server_info_forms: self.server_info_forms,
            modules: self.modules,
            event_decoders: self.event_decoders,
            services: self.services,
            roster_extra: self.roster_extra,
        }
    }
}

/// The frozen hooks of a running server.
pub struct Hooks {
    iq: [HashMap<&'static str, Arc<dyn IqHandler>>; 3],
    /// Session hooks in priority order.
    pub session: Vec<Arc<dyn SessionHooks>>,
    /// Delivery hooks in priority order.
    pub delivery: Vec<Arc<dyn DeliveryHooks>>,
    /// Shutdown hooks.
    pub shutdown: Vec<Arc<dyn ShutdownHook>>,
    /// Account removal hooks.
    pub account: Vec<Arc<dyn AccountHooks>>,
    /// Server disco#info features (sorted).
    pub server_features: Vec<&'static str>,
    /// Account disco#info features (sorted).
    pub account_features: Vec<&'static str>,
    /// Extra pre-authentication stream features.
    pub stream_features_preauth: Vec<Element>,
    /// Extra stream features after authentication.
    pub stream_features_bound: Vec<Element>,
    /// XEP-0128 forms for the server's disco#info.
    pub server_info_forms: Vec<Element>,
    /// Names of running modules.
    pub modules: Vec<&'static str>,
    event_decoders: Vec<(&'static str, EventDecoder)>,
    services: Vec<(String, String, Arc<dyn Service>)>,
    /// Modules adding items to roster gets.
    pub roster_extra: Vec<Arc<dyn RosterExtra>>,
}

impl Hooks {
    /// The service serving `domain`, if any.
    pub fn service(&self, domain: &str) -> Option<&Arc<dyn Service>> {
        self.services.iter().find(|(d, _, _)| d == domain).map(|(_, _, h)| h)
    }

    /// Every service's domain and name (the server's disco#items).
    pub fn services(&self) -> impl Iterator<Item = (&str, &str)> {
        self.services.iter().map(|(d, n, _)| (d.as_str(), n.as_str()))
    }

    /// The handler for (scope, ns).
    pub fn iq_handler(&self, scope: IqScope, ns: &str) -> Option<&Arc<dyn IqHandler>> {
        self.iq[scope as usize].get(ns)
    }

    /// Turns an event element from another node back into a session event.
    pub fn decode_event(&self, el: &Element) -> Option<SessionEvent> {
        let (_, f) = self.event_decoders.iter().find(|(ns, _)| *ns == el.ns())?;
        f(el)
    }

    /// Whether a module is running.
    pub fn has_module(&self, name: &str) -> bool {
        self.modules.contains(&name)
    }
}
