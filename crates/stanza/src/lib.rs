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
