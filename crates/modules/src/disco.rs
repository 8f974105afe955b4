//! Service discovery: XEP-0030 (Service Discovery, version 2.5rc3), with
//! XEP-0128 (Service Discovery Extensions, version 1.0.1) forms and XEP-0157
//! (Contact Addresses for XMPP Services, version 1.1.1).
//!
//! - `disco#info` to the server: identity `server/im` named "Meerkat", every feature
//!   a running module registered with [`HookRegistry::server_feature`], and the
//!   XEP-0128 forms of [`HookRegistry::server_info_form`] (this module adds the
//!   XEP-0157 `serverinfo` form when `server_info` is configured).
//! - `disco#items` to the server: the services with domains of their own
//!   ([`HookRegistry::service`], e.g. the MUC service `conference.<host>`).
//! - `disco#info` to an account's bare JID: identity `account/registered` and the
//!   features of [`HookRegistry::account_feature`], answered by the server on the
//!   user's behalf (RFC 6121 §8.5.2.1.3). Answered for existing accounts only
//!   (else `service-unavailable`, RFC 6121 §8.5.1); the owner may always ask.
//! - `disco#items` to an account's bare JID: for the owner, the user's connected
//!   resources (one `<item jid='user@domain/resource'/>` each, XEP-0030 §4.2 leaves
//!   the items of an account to the implementation); for anybody else an empty list,
//!   so that other entities do not learn which resources are online.
//!
//! No node is published anywhere, so any `node` attribute gets `item-not-found`
//! (XEP-0030 §3.1 / §4.1).

use std::sync::Arc;

use meerkat_config::DiscoCfg;
use meerkat_core::hooks::{IqHandler, IqRequest, IqResult, IqScope};
use meerkat_core::{account, HookRegistry, Module, ServerContext};
use meerkat_stanza::{ns, StanzaError};
use meerkat_xml::Element;

/// XEP-0157 §3: the `FORM_TYPE` of the contact-addresses form.
const SERVERINFO: &str = "http://jabber.org/network/serverinfo";

/// The service discovery module (`[modules.mod_disco]`).
pub struct Disco {
    cfg: DiscoCfg,
}

impl Disco {
    /// With options from `[modules.mod_disco]`.
    pub fn new(cfg: DiscoCfg) -> Self {
        Disco { cfg }
    }

    /// The XEP-0157 form, when contact addresses are configured.
    fn serverinfo_form(&self) -> Option<Element> {
        if self.cfg.server_info.is_empty() {
            return None;
        }
        let mut x = Element::builder("x", ns::DATA_FORMS).attr("type", "result").build();
        x.append_child(
            Element::builder("field", ns::DATA_FORMS)
                .attr("var", "FORM_TYPE")
                .attr("type", "hidden")
                .append(Element::builder("value", ns::DATA_FORMS).text(SERVERINFO).build())
                .build(),
        );
        for entry in &self.cfg.server_info {
            let field = x.append_child(
                Element::builder("field", ns::DATA_FORMS)
                    .attr("var", entry.name.clone())
                    .attr("type", "list-multi")
                    .build(),
            );
            for url in &entry.urls {
                field.append_child(Element::builder("value", ns::DATA_FORMS).text(url.clone()).build());
            }
        }
        Some(x)
    }
}

impl Module for Disco {
    fn name(&self) -> &'static str {
        "mod_disco"
    }

    fn register(self: Arc<Self>, reg: &mut HookRegistry) {
        if let Some(form) = self.serverinfo_form() {
            reg.server_info_form(form);
        }
        reg.on_iq(IqScope::Server, ns::DISCO_INFO, Arc::new(Handler { scope: IqScope::Server, info: true }));
        reg.on_iq(IqScope::Server, ns::DISCO_ITEMS, Arc::new(Handler { scope: IqScope::Server, info: false }));
        reg.on_iq(IqScope::Account, ns::DISCO_INFO, Arc::new(Handler { scope: IqScope::Account, info: true }));
        reg.on_iq(IqScope::Account, ns::DISCO_ITEMS, Arc::new(Handler { scope: IqScope::Account, info: false }));
        reg.server_feature(ns::DISCO_INFO);
        reg.server_feature(ns::DISCO_ITEMS);
        reg.account_feature(ns::DISCO_INFO);
        reg.account_feature(ns::DISCO_ITEMS);
    }
}

/// One of the four (scope, namespace) handlers.
struct Handler {
    scope: IqScope,
    /// `disco#info` (else `disco#items`).
    info: bool,
}

fn identity(category: &str, ty: &str, name: Option<&str>) -> Element {
    let mut el = Element::builder("identity", ns::DISCO_INFO).attr("category", category).attr("type", ty).build();
    if let Some(n) = name {
        el.set_attr("name", n);
    }
    el
}

fn feature(var: &str) -> Element {
    Element::builder("feature", ns::DISCO_INFO).attr("var", var).build()
}

#[async_trait::async_trait]
impl IqHandler for Handler {
    async fn handle_iq(&self, ctx: &ServerContext, req: IqRequest<'_>) -> IqResult {
        let namespace = if self.info { ns::DISCO_INFO } else { ns::DISCO_ITEMS };
        if !req.payload.is("query", namespace) {
            return Err(StanzaError::bad_request("expected <query/>"));
        }
        if req.is_set {
            // XEP-0030 defines only 'get' requests.
            return Err(StanzaError::not_allowed().with_text("service discovery is read-only"));
        }
        if req.payload.attr("node").is_some() {
            // Meerkat publishes no nodes (XEP-0030 §3.1 / §4.1).
            return Err(StanzaError::item_not_found());
        }
        match (self.scope, self.info) {
            (IqScope::Account, info) => account_query(ctx, &req, info).await,
            (_, true) => Ok(Some(server_info(ctx))),
            (_, false) => Ok(Some(server_items(ctx, req.to.domain().as_str()))),
        }
    }
}

/// XEP-0030 §3.1: the server's identity, features and (XEP-0128) extended forms.
fn server_info(ctx: &ServerContext) -> Element {
    let mut q = Element::new("query", ns::DISCO_INFO);
    q.append_child(identity("server", "im", Some("Meerkat")));
    for var in &ctx.hooks.server_features {
        q.append_child(feature(var));
    }
    for form in &ctx.hooks.server_info_forms {
        q.append_child(form.clone());
    }
    q
}

/// XEP-0030 §4.1: the services of this host (their domain is a subdomain of the
/// host, or a domain served on its behalf).
fn server_items(ctx: &ServerContext, host: &str) -> Element {
    let mut q = Element::new("query", ns::DISCO_ITEMS);
    for (domain, name) in ctx.hooks.services() {
        if domain.strip_suffix(host).is_some_and(|p| p.ends_with('.')) || ctx.config.hosts().len() == 1 {
            q.append_child(Element::builder("item", ns::DISCO_ITEMS).attr("jid", domain).attr("name", name).build());
        }
    }
    q
}

/// `disco#info` / `disco#items` to an account's bare JID.
async fn account_query(ctx: &ServerContext, req: &IqRequest<'_>, info: bool) -> IqResult {
    let user = req.to.to_bare();
    let owner = req.from.to_bare() == user;
    let Some(acc) = account(&user) else { return Err(StanzaError::service_unavailable()) };
    if !owner {
        match ctx.stores.auth.user_exists(acc).await {
            Ok(true) => {}
            // RFC 6121 §8.5.1: no such account.
            Ok(false) => return Err(StanzaError::service_unavailable()),
            Err(e) => {
                tracing::error!(user = %user, error = %e, "storage failure checking an account for disco");
                return Err(StanzaError::internal());
            }
        }
        // XEP-0191 §3.3: a blocked entity gets service-unavailable for IQ get/set.
        if crate::blocking::blocks_requester(ctx, &user, req.from).await? {
            return Err(StanzaError::service_unavailable());
        }
    }
    if info {
        let mut q = Element::new("query", ns::DISCO_INFO);
        q.append_child(identity("account", "registered", None));
        for var in &ctx.hooks.account_features {
            q.append_child(feature(var));
        }
        return Ok(Some(q));
    }
    let mut q = Element::new("query", ns::DISCO_ITEMS);
    if owner {
        let mut sessions = ctx.router.sessions(&user);
        sessions.sort_by(|a, b| a.jid.as_str().cmp(b.jid.as_str()));
        for s in sessions {
            q.append_child(
                Element::builder("item", ns::DISCO_ITEMS)
                    .attr("jid", s.jid.as_str())
                    .attr("name", s.jid.resource().as_str())
                    .build(),
            );
        }
    }
    Ok(Some(q))
}
