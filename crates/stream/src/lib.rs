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
mod sm;

/// Runs a detached, resumable session (XEP-0198) until a new connection takes it
/// over or its resumption timeout ends it.
pub async fn park(mut c2s: C2s) {
    loop {
        let deadline = c2s.next_deadline();
        tokio::select! {
            m = c2s.recv() => match m {
                Mailbox::Takeover(tx) => {
                    let _ = tx.send(Box::new(c2s));
                    return;
                }
                m => c2s.on_mailbox(m).await,
            },
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            } => c2s.on_timer().await,
        }
        // Nothing can be written while detached; stanzas were counted into the
        // unacked buffer and are sent again on resumption.
        c2s.out.clear();
        if c2s.is_closed() {
            return;
        }
    }
}

pub use c2s::{C2s, Listener, Mailbox, Output, TlsState, TransportInfo};
pub use sm::Mover;
