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
//! Ids are the message archive's ids too (XEP-0313 §5.1.2: the archive id is the
//! stanza id), so they are made to sort in time order: a u64 of the microseconds
//! since the epoch (strictly increasing within the process, even when the clock
//! steps back or two messages share a microsecond) shifted left by 8 bits, plus an
//! 8-bit node part chosen at random at start so that two processes (cluster nodes)
//! do not collide. It is written as 13 characters of base32 with an alphabet in
//! ASCII order, so string order and numeric order agree.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use meerkat_core::hooks::{DeliveryHooks, Flow, SessionHooks};
use meerkat_core::{HookRegistry, Module, ServerContext, SessionState};
use meerkat_stanza::{ns, BareJid, Stanza, StanzaKind};
use meerkat_xml::{CompactString, Element};

/// The stanza id module (`[modules.mod_stanza_id]`).
pub struct StanzaId;

/// The time part of the last id made by this process.
static LAST_MICROS: AtomicU64 = AtomicU64::new(0);
/// This process's node part.
static NODE: OnceLock<u8> = OnceLock::new();
/// Base32 digits in ASCII order.
const ALPHABET: &[u8; 32] = b"234567abcdefghijklmnopqrstuvwxyz";
/// Characters of an encoded id (13 × 5 bits ≥ 64 bits).
const ID_LEN: usize = 13;

/// Sets this process's node part of archive ids (a cluster node: from its name);
/// without it a random byte is used. The first call wins (one process, one node).
pub fn set_node_part(b: u8) {
    let _ = NODE.set(b);
}

/// A new archive id: increasing within the process, unique across processes with
/// different node parts, and at most `i64::MAX` (the databases store it signed).
pub fn new_archive_id() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
    let prev = LAST_MICROS.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| Some(now.max(last + 1)));
    let micros = now.max(prev.unwrap_or(0) + 1);
    let node = *NODE.get_or_init(|| {
        let mut b = [0u8; 1];
        getrandom::fill(&mut b).expect("the OS random source is available");
        b[0]
    });
    (((micros & (u64::MAX >> 9)) << 8) | u64::from(node)) as i64
}

/// The time an archive id was made, in microseconds since the epoch.
pub fn id_micros(id: i64) -> i64 {
    id >> 8
}

/// The smallest and largest ids made in a microsecond.
pub fn id_range_of_micros(micros: i64) -> (i64, i64) {
    let base = micros.clamp(0, i64::MAX >> 8) << 8;
    (base, base | 0xff)
}

/// The wire form of an archive id (13 characters: held inline, no allocation).
pub fn encode_id(id: i64) -> CompactString {
    let mut v = id as u64;
    let mut digits = [0u8; ID_LEN];
    for d in digits.iter_mut().rev() {
        *d = ALPHABET[(v & 31) as usize];
        v >>= 5;
    }
    let s = std::str::from_utf8(&digits).expect("the alphabet is ASCII");
    CompactString::new(s)
}

/// Parses the wire form of an archive id (`None` for anything [`encode_id`] cannot make).
pub fn decode_id(s: &str) -> Option<i64> {
    if s.len() != ID_LEN {
        return None;
    }
    let mut v: u128 = 0;
    for b in s.bytes() {
        let d = ALPHABET.iter().position(|&a| a == b)?;
        v = (v << 5) | d as u128;
    }
    i64::try_from(v).ok()
}

/// A new unique id.
fn next_id() -> CompactString {
    encode_id(new_archive_id())
}

impl Module for StanzaId {
    fn name(&self) -> &'static str {
        "mod_stanza_id"
    }

    fn register(self: Arc<Self>, reg: &mut HookRegistry) {
        reg.on_delivery(90, self.clone());
        // First among the send hooks: client-supplied stanza ids are gone before
        // carbons copy the message and the archive stamps its own.
        reg.on_session(10, self);
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
        assert_eq!(a.len(), ID_LEN);
        let ids: Vec<i64> = (0..1000).map(|_| new_archive_id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert!(ids.windows(2).all(|w| encode_id(w[0]) < encode_id(w[1])), "string order is numeric order");
        for id in [0, 1, 255, ids[0], i64::MAX] {
            assert_eq!(decode_id(&encode_id(id)), Some(id));
        }
        assert_eq!(decode_id("zzzzzzzzzzzzz"), None, "above i64::MAX");
        assert_eq!(decode_id("abc"), None);
        assert_eq!(decode_id("0000000000000"), None);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as i64;
        assert!((id_micros(ids[0]) - now).abs() < 5_000_000);
        assert_eq!(id_range_of_micros(id_micros(ids[0])).0 >> 8, id_micros(ids[0]));
    }
}
