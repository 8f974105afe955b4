//! XMPP Ping: XEP-0199 (XMPP Ping, version 2.0.1).
//!
//! Answers `<ping xmlns='urn:xmpp:ping'/>` IQ gets sent to the server (client-to-server
//! ping, §4.2) and to an account's bare JID (the server answers on the user's behalf,
//! RFC 6121 §8.5.2.1.3; for another user's account only when it exists, RFC 6121
//! §8.5.1, and the requester is not blocked, XEP-0191 §3.3). Server-initiated pings
//! (§4.1) are sent by the session itself, configured by `[modules.mod_ping]`.

use std::sync::Arc;

use meerkat_core::hooks::{IqHandler, IqRequest, IqResult, IqScope};
use meerkat_core::{account, HookRegistry, Module, ServerContext};
use meerkat_stanza::{ns, StanzaError};

/// The ping module (`[modules.mod_ping]`).
pub struct Ping;

impl Module for Ping {
    fn name(&self) -> &'static str {
        "mod_ping"
    }

    fn register(self: Arc<Self>, reg: &mut HookRegistry) {
        reg.on_iq(IqScope::Server, ns::PING, self.clone());
        reg.on_iq(IqScope::Account, ns::PING, self);
        reg.server_feature(ns::PING);
        reg.account_feature(ns::PING);
    }
}

#[async_trait::async_trait]
impl IqHandler for Ping {
    async fn handle_iq(&self, ctx: &ServerContext, req: IqRequest<'_>) -> IqResult {
        if !req.payload.is("ping", ns::PING) {
            return Err(StanzaError::bad_request("expected <ping/>"));
        }
        if req.is_set {
            // §3: a ping is an IQ get.
            return Err(StanzaError::not_allowed().with_text("a ping is an IQ get"));
        }
        let to = req.to.to_bare();
        if to.node().is_some() && req.from.to_bare() != to {
            let Some(acc) = account(&to) else { return Err(StanzaError::service_unavailable()) };
            match ctx.stores.auth.user_exists(acc).await {
                Ok(true) => {}
                Ok(false) => return Err(StanzaError::service_unavailable()),
                Err(e) => {
                    tracing::error!(user = %to, error = %e, "storage failure checking an account for a ping");
                    return Err(StanzaError::internal());
                }
            }
            if crate::blocking::blocks_requester(ctx, &to, req.from).await? {
                return Err(StanzaError::service_unavailable());
            }
        }
        Ok(None)
    }
}
