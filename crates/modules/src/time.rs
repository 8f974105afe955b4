//! Entity time: XEP-0202 (Entity Time, version 2.0).
//!
//! The server answers `<time xmlns='urn:xmpp:time'/>` gets sent to its domain with
//! its time in UTC: `<tzo>+00:00</tzo>` and a XEP-0082 `<utc/>` DateTime (§3).

use std::sync::Arc;

use meerkat_core::hooks::{IqHandler, IqRequest, IqResult, IqScope};
use meerkat_core::util::{now_ms, xep82_datetime};
use meerkat_core::{HookRegistry, Module, ServerContext};
use meerkat_stanza::{ns, StanzaError};
use meerkat_xml::Element;

/// The entity time module (`[modules.mod_time]`).
pub struct Time;

impl Module for Time {
    fn name(&self) -> &'static str {
        "mod_time"
    }

    fn register(self: Arc<Self>, reg: &mut HookRegistry) {
        reg.on_iq(IqScope::Server, ns::TIME, self);
        reg.server_feature(ns::TIME);
    }
}

#[async_trait::async_trait]
impl IqHandler for Time {
    async fn handle_iq(&self, _ctx: &ServerContext, req: IqRequest<'_>) -> IqResult {
        if !req.payload.is("time", ns::TIME) {
            return Err(StanzaError::bad_request("expected <time/>"));
        }
        if req.is_set {
            return Err(StanzaError::not_allowed().with_text("the server's time cannot be set"));
        }
        Ok(Some(
            Element::builder("time", ns::TIME)
                .append(Element::builder("tzo", ns::TIME).text("+00:00").build())
                .append(Element::builder("utc", ns::TIME).text(xep82_datetime(now_ms())).build())
                .build(),
        ))
    }
}
