//! Last activity: XEP-0012 (Last Activity, version 2.0).
//!
//! - To the server's domain (§5): seconds since the server started.
//! - To an account's bare JID (§4, answered by the server on the user's behalf):
//!   the requester must be allowed to see the user's presence, i.e. be the user or
//!   hold a presence subscription (the user's roster item for the requester has
//!   subscription `from` or `both`), else `forbidden`; a requester the user blocked
//!   gets `service-unavailable` (XEP-0191 §3.3). When the user has an available
//!   resource the answer is `seconds='0'` (the user is active now; Meerkat does not
//!   forward the query to a client); otherwise the seconds since the last session
//!   ended, with the status text of its last unavailable presence, or
//!   `item-not-found` when the user never logged out.
//!
//! Each session records its end time and status when it closes; with several
//! sessions the last one to close writes last, which is the value queried once the
//! user has no available resource left.

use std::sync::Arc;

use meerkat_core::hooks::{IqHandler, IqRequest, IqResult, IqScope, SessionHooks};
use meerkat_core::util::now_secs;
use meerkat_core::{account, HookRegistry, Module, ServerContext, SessionState};
use meerkat_stanza::{ns, StanzaError};
use meerkat_storage::{LastActivity, Subscription};
use meerkat_xml::Element;

/// The last activity module (`[modules.mod_last]`).
pub struct Last;

impl Module for Last {
    fn name(&self) -> &'static str {
        "mod_last"
    }

    fn register(self: Arc<Self>, reg: &mut HookRegistry) {
        reg.on_iq(IqScope::Server, ns::LAST, self.clone());
        reg.on_iq(IqScope::Account, ns::LAST, self.clone());
        reg.on_session(50, self);
        reg.server_feature(ns::LAST);
        reg.account_feature(ns::LAST);
    }
}

fn query(seconds: u64, status: &str) -> Element {
    let mut q = Element::builder("query", ns::LAST).attr("seconds", seconds.to_string()).build();
    q.append_text(status);
    q
}

fn storage_error(user: &impl std::fmt::Display, what: &str, e: meerkat_storage::Error) -> StanzaError {
    tracing::error!(user = %user, error = %e, "storage failure {what}");
    StanzaError::internal()
}

#[async_trait::async_trait]
impl IqHandler for Last {
    async fn handle_iq(&self, ctx: &ServerContext, req: IqRequest<'_>) -> IqResult {
        if !req.payload.is("query", ns::LAST) {
            return Err(StanzaError::bad_request("expected <query/>"));
        }
        if req.is_set {
            return Err(StanzaError::not_allowed().with_text("last activity is read-only"));
        }
        let user = req.to.to_bare();
        let Some(acc) = account(&user) else {
            // §5: server uptime.
            return Ok(Some(query(ctx.started.elapsed().as_secs(), "")));
        };
        let requester = req.from.to_bare();
        if requester != user {
            match ctx.stores.auth.user_exists(acc).await {
                Ok(true) => {}
                Ok(false) => return Err(StanzaError::service_unavailable()),
                Err(e) => return Err(storage_error(&user, "checking an account for last activity", e)),
            }
            if crate::blocking::blocks_requester(ctx, &user, req.from).await? {
                return Err(StanzaError::service_unavailable());
            }
            // §4: only entities allowed to see the user's presence.
            let item = ctx
                .stores
                .roster
                .get_item(acc, requester.as_str())
                .await
                .map_err(|e| storage_error(&user, "reading a roster item for last activity", e))?;
            if !item.is_some_and(|i| matches!(i.subscription, Subscription::From | Subscription::Both)) {
                return Err(StanzaError::forbidden());
            }
        }
        if ctx.router.sessions(&user).iter().any(|s| s.presence.is_some()) {
            return Ok(Some(query(0, "")));
        }
        match ctx.stores.last.get_last(acc).await {
            Ok(Some(last)) => {
                let seconds = u64::try_from(now_secs().saturating_sub(last.at_secs)).unwrap_or(0);
                Ok(Some(query(seconds, &last.status)))
            }
            Ok(None) => Err(StanzaError::item_not_found()),
            Err(e) => Err(storage_error(&user, "reading last activity", e)),
        }
    }
}

#[async_trait::async_trait]
impl SessionHooks for Last {
    async fn on_closed(&self, ctx: &ServerContext, s: &mut SessionState, status: &str) {
        let Some(acc) = account(&s.bare) else { return };
        let last = LastActivity { at_secs: now_secs(), status: status.to_string() };
        if let Err(e) = ctx.stores.last.set_last(acc, &last).await {
            tracing::error!(user = %s.bare, error = %e, "storage failure recording last activity");
        }
    }
}
