//! [`ServerContext`]: one running server's shared, immutable state. Built once at
//! start and passed as `&ServerContext` / `Arc<ServerContext>`; several servers can
//! run in one process (tests), since nothing here is global.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use meerkat_config::Config;
use meerkat_stanza::{BareJid, Stanza};
use meerkat_storage::{Account, Stores};

use crate::hooks::Hooks;
use crate::router::Router;
use crate::session::SessionId;

/// The shared state of one server.
pub struct ServerContext {
    /// The configuration the server runs with.
    pub config: Arc<Config>,
    /// Storage.
    pub stores: Stores,
    /// Frozen module hooks.
    pub hooks: Hooks,
    /// The router.
    pub router: Arc<dyn Router>,
    /// When the server started (XEP-0012 uptime).
    pub started: Instant,
    /// Resumable sessions (XEP-0198).
    pub resumptions: crate::resumption::Resumptions,
    /// Cluster-wide singletons, once a cluster is joined (see [`Self::singletons`]).
    pub cluster_singletons: std::sync::OnceLock<Arc<dyn crate::cluster::Singletons>>,
    next_session: AtomicU64,
    me: std::sync::Weak<ServerContext>,
}

impl ServerContext {
    /// Assembles a context. In a cluster, session ids start with 24 bits taken
    /// from the node name, so they are unique across the cluster's nodes.
    pub fn new(config: Arc<Config>, stores: Stores, hooks: Hooks, router: Arc<dyn Router>) -> Arc<Self> {
        let first = config.cluster.as_ref().map_or(0, |c| node_tag(c.node_name.get_ref()) << 40);
        Arc::new_cyclic(|me| ServerContext {
            config,
            stores,
            hooks,
            router,
            started: Instant::now(),
            resumptions: Default::default(),
            cluster_singletons: std::sync::OnceLock::new(),
            next_session: AtomicU64::new(first | 1),
            me: me.clone(),
        })
    }

    /// The context as an `Arc`, for tasks a module starts (e.g. a MUC room).
    pub fn arc(&self) -> Arc<ServerContext> {
        self.me.upgrade().expect("a ServerContext lives in the Arc ServerContext::new made")
    }

    /// Whether `domain` is served here.
    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.config.hosts().iter().any(|h| h == domain)
    }

    /// Who owns cluster-wide singletons (MUC rooms): the cluster's placement, or
    /// this node for everything on a single node.
    pub fn singletons(&self) -> &dyn crate::cluster::Singletons {
        match self.cluster_singletons.get() {
            Some(s) => s.as_ref(),
            None => &crate::cluster::LocalSingletons,
        }
    }

    /// A new process-unique session id.
    pub fn next_session_id(&self) -> SessionId {
        SessionId(self.next_session.fetch_add(1, Ordering::Relaxed))
    }

    /// Runs the send hooks on a stanza a session sent: every synchronous
    /// `on_user_send`, then, for subscription presence, every asynchronous
    /// `on_outbound_subscription`. `false`: a hook consumed it (dropped, or
    /// bounced with the error queued for the sender, never for an error).
    pub async fn run_send_hooks(&self, s: &mut crate::session::SessionState, st: &mut Stanza) -> bool {
        for h in &self.hooks.session {
            if !flow_continues(h.on_user_send(self, s, st), s, st) {
                return false;
            }
        }
        if st.is_subscription() {
            for h in &self.hooks.session {
                if !flow_continues(h.on_outbound_subscription(self, s, st).await, s, st) {
                    return false;
                }
            }
        }
        true
    }

    /// Routes a stanza (shorthand for `self.router.route(self, st)`).
    pub async fn route(&self, st: Stanza) {
        self.router.route(self, st).await
    }
}

/// 24 bits derived from a node name (FNV-1a), never 0 (0 is a single node's).
pub fn node_tag(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    ((h ^ (h >> 24) ^ (h >> 48)) & 0xFF_FFFF).max(1)
}

/// The storage key of a bare JID's account (a bare JID without a localpart is a
/// domain, which has no account: `None`).
pub fn account(bare: &BareJid) -> Option<Account<'_>> {
    Some(Account::new(bare.node()?.as_str(), bare.domain().as_str()))
}

impl ServerContext {
    /// Dispatches an IQ `get`/`set` to the handler registered for its payload
    /// namespace in `scope`, and builds the reply (RFC 6120 §8.2.3: exactly one
    /// payload child, else `bad-request`; no handler: `service-unavailable`).
    /// Returns `None` for `result`/`error` IQs, which get no reply.
    pub async fn dispatch_iq(
        &self,
        scope: crate::hooks::IqScope,
        iq: &Stanza,
        from: &meerkat_stanza::Jid,
        to: &meerkat_stanza::Jid,
        session: Option<&mut crate::session::SessionState>,
        peer: Option<std::net::SocketAddr>,
    ) -> Option<meerkat_xml::Element> {
        use meerkat_stanza::{make_error_reply, make_iq_result, IqType, StanzaError};
        let ty = iq.iq_type();
        let is_set = match ty {
            Some(IqType::Get) => false,
            Some(IqType::Set) => true,
            Some(IqType::Result) | Some(IqType::Error) => return None,
            None => {
                return Some(make_error_reply(
                    &iq.el,
                    &StanzaError::bad_request("IQ type must be get, set, result or error"),
                ))
            }
        };
        let mut children = iq.el.children();
        let (Some(payload), None) = (children.next(), children.next()) else {
            return Some(make_error_reply(
                &iq.el,
                &StanzaError::bad_request("an IQ get or set carries exactly one payload"),
            ));
        };
        let Some(h) = self.hooks.iq_handler(scope, payload.ns()) else {
            return Some(make_error_reply(&iq.el, &StanzaError::service_unavailable()));
        };
        let req = crate::hooks::IqRequest { from, to, iq, is_set, payload, session, peer };
        let mut reply = match h.handle_iq(self, req).await {
            Ok(p) => make_iq_result(&iq.el, p),
            Err(e) => make_error_reply(&iq.el, &e),
        };
        // The reply comes from the addressee (RFC 6120 §8.1.2.1), and goes to the requester.
        reply.set_attr("from", to.as_str());
        reply.set_attr("to", from.as_str());
        Some(reply)
    }
}

/// Applies a send hook's verdict: `true` to go on; on a bounce, the error goes
/// back to the sender (never for an error).
fn flow_continues(flow: crate::hooks::Flow, s: &mut crate::session::SessionState, st: &Stanza) -> bool {
    match flow {
        crate::hooks::Flow::Continue => true,
        crate::hooks::Flow::Drop => false,
        crate::hooks::Flow::Bounce(e) => {
            if !st.is_error() {
                let mut reply = meerkat_stanza::make_error_reply(&st.el, &e);
                reply.remove_attr("to");
                s.send(reply);
            }
            false
        }
    }
}
