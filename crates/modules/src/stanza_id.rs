//! Stanza ids: XEP-0359 (Unique and Stable Stanza IDs, version 0.7.0).
//!
//! - Every `chat` or `normal` message with a body delivered to a local user gets a
//!   `<stanza-id xmlns='urn:xmpp:sid:0' id='…' by='user@domain'/>` (§3.1), the `by`
//!   being the user's bare JID (the entity that assigns it, §3.2).
//! - Any `<stanza-id/>` already on a message whose `by` is the recipient's bare JID
//!   is removed first, whatever the message type, so that nobody can spoof the ids
//!   this server assigns (§5 Security Considerations).
//! - Clients never assign stanza ids (they set `<origin-id/>`, which is left alone):
//!   top-level `<stanza-id/>` elements in messages a client sends are removed.
//!
//! Ids are unique without coordination and cheap to make: the milliseconds since the
//! epoch and a counter (time-ordered within one process), plus a random suffix
//! chosen at start so that two processes (cluster nodes, restarts within the same
//! millisecond) do not collide.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use meerkat_core::hooks::{DeliveryHooks, Flow, SessionHooks};
use meerkat_core::util::{now_ms, random_id};
use meerkat_core::{HookRegistry, Module, ServerContext, SessionState};
use meerkat_stanza::{ns, BareJid, Stanza, StanzaKind};
use meerkat_xml::Element;

/// The stanza id module (`[modules.mod_stanza_id]`).
pub struct StanzaId;

/// Ids made by this process so far.
static COUNTER: AtomicU64 = AtomicU64::new(0);
/// This process's random id suffix.
static SUFFIX: OnceLock<String> = OnceLock::new();

/// A new unique id.
fn next_id() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut out = String::with_capacity(32);
    push_base32(&mut out, u64::try_from(now_ms()).unwrap_or(0), 9);
    push_base32(&mut out, n, 5);
    out.push_str(SUFFIX.get_or_init(|| random_id(6)));
    out
}

/// Appends `v` in lowercase base32 (RFC 4648 alphabet), at least `width` digits
/// (more when `v` needs them), most significant first so ids sort by time.
fn push_base32(out: &mut String, mut v: u64, width: usize) {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut digits = [0u8; 13];
    let mut n = 0;
    while v > 0 || n < width {
        digits[n] = ALPHABET[(v & 31) as usize];
        v >>= 5;
        n += 1;
    }
    out.extend(digits[..n].iter().rev().map(|&b| b as char));
}

impl Module for StanzaId {
    fn name(&self) -> &'static str {
        "mod_stanza_id"
    }

    fn register(self: Arc<Self>, reg: &mut HookRegistry) {
        reg.on_delivery(90, self.clone());
        reg.on_session(90, self);
        reg.account_feature(ns::SID);
    }
}

#[async_trait::async_trait]
impl DeliveryHooks for StanzaId {
    fn on_deliver_message(&self, _ctx: &ServerContext, to: &BareJid, st: &mut Stanza) {
        if st.kind != StanzaKind::Message {
            return;
        }
        let by = to.as_str();
        st.el.remove_children(|c| c.is("stanza-id", ns::SID) && c.attr("by") == Some(by));
        let chat = matches!(st.type_attr(), None | Some("chat" | "normal"));
        let has_body = st.el.children().any(|c| c.is("body", ns::CLIENT));
        if chat && has_body {
            st.el.append_child(Element::builder("stanza-id", ns::SID).attr("id", next_id()).attr("by", by).build());
        }
    }
}

#[async_trait::async_trait]
impl SessionHooks for StanzaId {
    fn on_user_send(&self, _ctx: &ServerContext, _s: &mut SessionState, st: &mut Stanza) -> Flow {
        if st.kind == StanzaKind::Message {
            st.el.remove_children(|c| c.is("stanza-id", ns::SID));
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_ordered() {
        let a = next_id();
        let b = next_id();
        assert_ne!(a, b);
        assert!(a < b, "{a} < {b}");
        assert!(a.len() >= 20);
        assert!(a.chars().all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c)));
        let mut s = String::new();
        push_base32(&mut s, 33, 3);
        assert_eq!(s, "abb");
    }
}
