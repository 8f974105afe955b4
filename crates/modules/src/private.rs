//! Private XML storage: XEP-0049 (Private XML Storage, version 1.2).
//!
//! A user stores arbitrary XML fragments on their account, one per namespace
//! (bookmarks, roster notes, client preferences), and reads them back (§2):
//!
//! - Only the user's own sessions may get or set (`forbidden` otherwise, §3).
//! - The `<query/>` must hold a child element qualified by a namespace of its own
//!   (`not-acceptable` otherwise, §2.1); a get names exactly one namespace
//!   (`bad-request` for several, or for none, §3 "Bad Format").
//! - Namespaces reserved for XMPP protocols (`jabber:*`, `vcard-temp`, the IETF
//!   `urn:ietf:params:xml:ns:xmpp-*` ones, the stream namespace) cannot be used as
//!   storage keys (`not-acceptable`, §3).
//! - A set may store several namespaces at once; one element per namespace
//!   (`not-acceptable` for two elements of the same namespace). An element larger
//!   than `max_size` bytes serialised is refused with `not-acceptable`.
//! - A get of a namespace never stored returns the requested element as it came
//!   (§2.2: the empty element echoed back).
//!
//! Fragments are kept in the XML store under `("private", namespace)`.

use std::sync::Arc;

use meerkat_config::PrivateCfg;
use meerkat_core::hooks::{IqHandler, IqRequest, IqResult, IqScope};
use meerkat_core::{account, HookRegistry, Module, ServerContext};
use meerkat_stanza::{ns, StanzaError, StanzaErrorCondition};
use meerkat_xml::{Element, Limits};

/// XML store kind of private fragments.
const KIND: &str = "private";

/// The private XML storage module (`[modules.mod_private]`).
pub struct Private {
    cfg: PrivateCfg,
}

impl Private {
    /// With options from `[modules.mod_private]`.
    pub fn new(cfg: PrivateCfg) -> Self {
        Private { cfg }
    }
}

impl Module for Private {
    fn name(&self) -> &'static str {
        "mod_private"
    }

    fn register(self: Arc<Self>, reg: &mut HookRegistry) {
        reg.on_iq(IqScope::Account, ns::PRIVATE, self);
        reg.account_feature(ns::PRIVATE);
    }
}

fn not_acceptable(text: &str) -> StanzaError {
    StanzaError::new(StanzaErrorCondition::NotAcceptable).with_text(text)
}

/// §3: namespaces that name XMPP protocols, not private data.
fn reserved(namespace: &str) -> bool {
    namespace.is_empty()
        || namespace.starts_with("jabber:")
        || namespace == ns::VCARD
        || namespace == ns::STREAM
        || namespace.starts_with("urn:ietf:params:xml:ns:xmpp-")
}

fn storage_error(user: &impl std::fmt::Display, what: &str, e: meerkat_storage::Error) -> StanzaError {
    tracing::error!(user = %user, error = %e, "storage failure {what}");
    StanzaError::internal()
}

#[async_trait::async_trait]
impl IqHandler for Private {
    async fn handle_iq(&self, ctx: &ServerContext, req: IqRequest<'_>) -> IqResult {
        let user = req.to.to_bare();
        // §3: another user's private data is forbidden.
        if req.session.is_none() || req.from.to_bare() != user {
            return Err(StanzaError::forbidden());
        }
        let Some(acc) = account(&user) else { return Err(StanzaError::forbidden()) };
        if !req.payload.is("query", ns::PRIVATE) {
            return Err(StanzaError::bad_request("expected <query/>"));
        }
        let children: Vec<&Element> = req.payload.children().collect();
        if children.is_empty() {
            return Err(if req.is_set {
                not_acceptable("nothing to store")
            } else {
                StanzaError::bad_request("name the namespace to retrieve")
            });
        }
        if let Some(bad) = children.iter().find(|c| reserved(c.ns())) {
            return Err(not_acceptable(&format!("namespace '{}' is reserved", bad.ns())));
        }
        if !req.is_set {
            let [wanted] = children.as_slice() else {
                return Err(StanzaError::bad_request("retrieve one namespace at a time"));
            };
            let stored = ctx
                .stores
                .xml
                .get_xml(acc, KIND, wanted.ns())
                .await
                .map_err(|e| storage_error(&user, "reading private XML", e))?;
            let el = match stored {
                None => (*wanted).clone(),
                Some(xml) => {
                    let limits = Limits { max_stanza_bytes: self.cfg.max_size.max(1 << 20), ..Limits::default() };
                    meerkat_xml::parse_element(&xml, &limits).map_err(|e| {
                        tracing::error!(user = %user, error = %e, "stored private XML does not parse");
                        StanzaError::internal()
                    })?
                }
            };
            return Ok(Some(Element::builder("query", ns::PRIVATE).append(el).build()));
        }
        let mut writes: Vec<(&str, String)> = Vec::with_capacity(children.len());
        for c in &children {
            if writes.iter().any(|(n, _)| *n == c.ns()) {
                return Err(not_acceptable("one element per namespace"));
            }
            let xml = c.to_string_with_ns();
            if xml.len() > self.cfg.max_size {
                return Err(not_acceptable(&format!("element too large (at most {} bytes)", self.cfg.max_size)));
            }
            writes.push((c.ns(), xml));
        }
        for (namespace, xml) in writes {
            ctx.stores
                .xml
                .set_xml(acc, KIND, namespace, &xml)
                .await
                .map_err(|e| storage_error(&user, "storing private XML", e))?;
        }
        Ok(None)
    }
}
