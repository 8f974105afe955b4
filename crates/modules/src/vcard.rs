//! vCards: XEP-0054 (vcard-temp, version 1.3.0).
//!
//! - The owner retrieves (§3.1) and updates (§3.2) their vCard with IQs to their own
//!   account; a user without a stored vCard gets an empty `<vCard/>`.
//! - Anybody may view another user's vCard (§3.3). When the user does not exist,
//!   has no vCard, or has blocked the requester (XEP-0191 §3.3), the answer is the
//!   same `service-unavailable`, so that vCard queries cannot be used to harvest
//!   accounts (§3.3 asks for one error condition for both cases).
//! - Only the owner's own session may set it (`forbidden` otherwise); a vCard larger
//!   than `max_size` bytes (serialised) is refused with `not-acceptable`.
//! - The server's own vCard (an IQ to its domain) names the server.
//!
//! vCards are kept in the XML store as serialised XML under `("vcard", "")`.

use std::sync::Arc;

use meerkat_config::VcardCfg;
use meerkat_core::hooks::{IqHandler, IqRequest, IqResult, IqScope};
use meerkat_core::{account, HookRegistry, Module, ServerContext};
use meerkat_stanza::{ns, StanzaError, StanzaErrorCondition};
use meerkat_xml::{Element, Limits};

/// XML store kind of vCards.
const KIND: &str = "vcard";

/// The vCard module (`[modules.mod_vcard]`).
pub struct Vcard {
    cfg: VcardCfg,
}

impl Vcard {
    /// With options from `[modules.mod_vcard]`.
    pub fn new(cfg: VcardCfg) -> Self {
        Vcard { cfg }
    }
}

impl Module for Vcard {
    fn name(&self) -> &'static str {
        "mod_vcard"
    }

    fn register(self: Arc<Self>, reg: &mut HookRegistry) {
        reg.on_iq(IqScope::Account, ns::VCARD, self.clone());
        reg.on_iq(IqScope::Server, ns::VCARD, Arc::new(ServerVcard));
        reg.account_feature(ns::VCARD);
        reg.server_feature(ns::VCARD);
    }
}

fn storage_error(user: &impl std::fmt::Display, what: &str, e: meerkat_storage::Error) -> StanzaError {
    tracing::error!(user = %user, error = %e, "storage failure {what}");
    StanzaError::internal()
}

#[async_trait::async_trait]
impl IqHandler for Vcard {
    async fn handle_iq(&self, ctx: &ServerContext, req: IqRequest<'_>) -> IqResult {
        if !req.payload.is("vCard", ns::VCARD) {
            return Err(StanzaError::bad_request("expected <vCard/>"));
        }
        let user = req.to.to_bare();
        let Some(acc) = account(&user) else { return Err(StanzaError::service_unavailable()) };
        let owner = req.from.to_bare() == user;
        if req.is_set {
            // §3.2: only the user, from one of their own sessions.
            if !owner || req.session.is_none() {
                return Err(StanzaError::forbidden());
            }
            let xml = req.payload.to_string_with_ns();
            if xml.len() > self.cfg.max_size {
                return Err(StanzaError::new(StanzaErrorCondition::NotAcceptable)
                    .with_text(format!("vCard too large (at most {} bytes)", self.cfg.max_size)));
            }
            ctx.stores
                .xml
                .set_xml(acc, KIND, "", &xml)
                .await
                .map_err(|e| storage_error(&user, "storing a vCard", e))?;
            return Ok(None);
        }
        if !owner {
            match ctx.stores.auth.user_exists(acc).await {
                Ok(true) => {}
                Ok(false) => return Err(StanzaError::service_unavailable()),
                Err(e) => return Err(storage_error(&user, "checking an account for a vCard", e)),
            }
            if crate::blocking::blocks_requester(ctx, &user, req.from).await? {
                return Err(StanzaError::service_unavailable());
            }
        }
        let stored =
            ctx.stores.xml.get_xml(acc, KIND, "").await.map_err(|e| storage_error(&user, "reading a vCard", e))?;
        match stored {
            Some(xml) => {
                let limits = Limits { max_stanza_bytes: self.cfg.max_size.max(1 << 20), ..Limits::default() };
                match meerkat_xml::parse_element(&xml, &limits) {
                    Ok(el) => Ok(Some(el)),
                    Err(e) => {
                        tracing::error!(user = %user, error = %e, "stored vCard does not parse");
                        Err(StanzaError::internal())
                    }
                }
            }
            // §3.1: the owner gets an empty vCard.
            None if owner => Ok(Some(Element::new("vCard", ns::VCARD))),
            None => Err(StanzaError::service_unavailable()),
        }
    }
}

/// The server's own vCard (read-only).
struct ServerVcard;

#[async_trait::async_trait]
impl IqHandler for ServerVcard {
    async fn handle_iq(&self, _ctx: &ServerContext, req: IqRequest<'_>) -> IqResult {
        if !req.payload.is("vCard", ns::VCARD) {
            return Err(StanzaError::bad_request("expected <vCard/>"));
        }
        if req.is_set {
            return Err(StanzaError::not_allowed().with_text("the server's vCard is read-only"));
        }
        Ok(Some(
            Element::builder("vCard", ns::VCARD)
                .append(Element::builder("FN", ns::VCARD).text("Meerkat").build())
                .build(),
        ))
    }
}
