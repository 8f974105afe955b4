//! Sockets for XMPP clients: TCP listeners with STARTTLS (RFC 6120 §5) or direct TLS
//! (XEP-0368), and HTTP listeners carrying XMPP over WebSocket (RFC 7395); each
//! connection drives one [`meerkat_stream::C2s`].
//!
//! A connection task is a thin loop (`c2s.rs`): `select!` on socket reads, the
//! session mailbox, timers and shutdown; hand the event to the state machine; write
//! what it queued. TLS material (`tls.rs`) is loaded from the configured PEM files
//! or, when none are configured, a self-signed ECDSA P-256 certificate generated on
//! first start under the data directory and reused afterwards.
#![warn(missing_docs)]

mod bosh;
mod c2s;
pub mod tls;
mod waits;
mod websocket;

pub use bosh::BoshSessions;
pub use c2s::{serve_c2s, ListenerRuntime};
pub use websocket::{serve_http, HttpRuntime};
