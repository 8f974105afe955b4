//! Software version: XEP-0092 (Software Version, version 1.1).
//!
//! The server answers `jabber:iq:version` gets sent to its domain with its name
//! ("Meerkat") and version; the operating system only when `os_info = true`
//! (§4 Security Considerations: revealing it helps attackers, so it is opt-in).

use std::sync::Arc;

use meerkat_config::VersionCfg;
use meerkat_core::hooks::{IqHandler, IqRequest, IqResult, IqScope};
use meerkat_core::{HookRegistry, Module, ServerContext};
use meerkat_stanza::{ns, StanzaError};
use meerkat_xml::Element;

/// The software version module (`[modules.mod_version]`).
pub struct Version {
    cfg: VersionCfg,
}

impl Version {
    /// With options from `[modules.mod_version]`.
    pub fn new(cfg: VersionCfg) -> Self {
        Version { cfg }
    }
}

impl Module for Version {
    fn name(&self) -> &'static str {
        "mod_version"
    }

    fn register(self: Arc<Self>, reg: &mut HookRegistry) {
        reg.on_iq(IqScope::Server, ns::VERSION, self);
        reg.server_feature(ns::VERSION);
    }
}

#[async_trait::async_trait]
impl IqHandler for Version {
    async fn handle_iq(&self, _ctx: &ServerContext, req: IqRequest<'_>) -> IqResult {
        if !req.payload.is("query", ns::VERSION) {
            return Err(StanzaError::bad_request("expected <query/>"));
        }
        if req.is_set {
            return Err(StanzaError::not_allowed().with_text("the software version is read-only"));
        }
        let text = |name: &str, value: &str| Element::builder(name, ns::VERSION).text(value).build();
        let mut q = Element::new("query", ns::VERSION);
        q.append_child(text("name", "Meerkat"));
        q.append_child(text("version", env!("CARGO_PKG_VERSION")));
        if self.cfg.os_info {
            q.append_child(text("os", std::env::consts::OS));
        }
        Ok(Some(q))
    }
}
