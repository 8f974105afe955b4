//! The XMPP stanza vocabulary shared by every layer above the XML codec:
//! JIDs (RFC 7622, via the `jid` crate), namespace constants, stanza errors
//! (RFC 6120 §8.3) and stream errors (RFC 6120 §4.9), and [`Stanza`], a thin typed
//! view over a [`meerkat_xml::Element`] that keeps the element itself untouched so
//! unknown attributes and payloads travel end to end.
#![warn(missing_docs)]

pub mod error;
pub mod ns;
mod stanza;

pub use error::{ErrorType, StanzaError, StanzaErrorCondition, StreamError};
pub use jid::{BareJid, FullJid, Jid};
pub use meerkat_xml::Element;
pub use stanza::{make_error_reply, make_iq_result, IqType, Stanza, StanzaKind};

/// The bare part of `jid` as a slice of its string, without building a
/// [`BareJid`] (which allocates): neither a localpart nor a domain can hold a
/// `/`, so the first one starts the resource.
pub fn bare_str(jid: &Jid) -> &str {
    let s = jid.as_str();
    s.split_once('/').map_or(s, |(bare, _)| bare)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_str_is_the_bare_jid() {
        for j in ["a@b", "a@b/r", "b", "b/r/with/slashes", "a@b/r@x"] {
            let jid = Jid::new(j).unwrap();
            assert_eq!(bare_str(&jid), jid.to_bare().as_str(), "{j}");
        }
    }
}
