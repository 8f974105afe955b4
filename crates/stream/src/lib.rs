//! The client-to-server session, independent of the transport (RFC 6120, RFC 6121).
//!
//! [`C2s`] is a state machine that any transport drives — TCP with STARTTLS or
//! direct TLS now, WebSocket (RFC 7395) and BOSH (XEP-0206) later — by handing it
//! decoded [`meerkat_xml::StreamEvent`]s, mailbox messages and timer ticks, and
//! writing out the [`Output`]s it queues. It holds no socket. The transport owns
//! framing (`<stream:stream>` versus `<open/>`), TLS and the decoder.
//!
//! States ([`c2s`]): wait for the stream header → negotiate (STARTTLS, SASL, in-band
//! registration) → wait for the restarted header → bind → bound session. A stanza
//! that arrives in a state that cannot take it gets the RFC's stream error.
#![warn(missing_docs)]

mod bound;
pub mod c2s;
mod features;
mod presence;
mod sasl;

pub use c2s::{C2s, Listener, Mailbox, Output, TlsState, TransportInfo};
