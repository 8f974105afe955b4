//! SASL for XMPP (RFC 6120 §6): PLAIN (RFC 4616) and SCRAM (RFC 5802, RFC 7677) with
//! SHA-1, SHA-256 and SHA-512, plus their -PLUS variants bound to the TLS channel with
//! `tls-exporter` (RFC 9266).
//!
//! Everything here is a pure state machine: bytes in, bytes out, no I/O. Looking up the
//! stored credentials is the caller's job (it is asynchronous storage access). Messages
//! are the base64-decoded payloads of `<auth/>`, `<challenge/>`, `<response/>` and
//! `<success/>`; decoding that base64 (and answering `<incorrect-encoding/>`) is the
//! caller's job too.
//!
//! A SCRAM exchange, server and client side:
//!
//! ```
//! use meerkat_sasl::{ChannelBinding, HashAlg, Mechanism, ScramClient, ScramServer, StoredCredentials};
//!
//! let creds = StoredCredentials::from_password("r0m30", 64);
//! let cb = ChannelBinding::TlsExporter(vec![0x42; 32]); // from the TLS layer
//! let mut client = ScramClient::new(HashAlg::Sha256, "juliet", "r0m30", cb.clone());
//! assert_eq!(client.mechanism(), Mechanism::from_name("SCRAM-SHA-256-PLUS").unwrap());
//!
//! let mut server = ScramServer::new(HashAlg::Sha256, true, true, cb);
//! let who = server.handle_client_first(&client.client_first())?;   // <auth/>
//! assert_eq!(who.authcid, "juliet");
//! // ... look `who.authcid` up in storage; `None` if there is no such account ...
//! let server_first = server.server_first(Some(creds.keys(HashAlg::Sha256)))?; // <challenge/>
//! let client_final = client.handle_server_first(&server_first)?;   // <response/>
//! let server_final = server.handle_client_final(&client_final)?;   // <success/>
//! client.verify_server_final(&server_final)?;
//! # Ok::<(), meerkat_sasl::Failure>(())
//! ```
#![warn(missing_docs)]

mod attr;
mod credentials;
mod mechanism;
mod plain;
pub mod saslprep;
mod scram_client;
mod scram_server;

pub use attr::MAX_MESSAGE_LEN;
pub use credentials::{CredentialsFormatError, HashAlg, ScramKeys, StoredCredentials, DEFAULT_ITERATIONS};
pub use mechanism::{AuthRequest, ChannelBinding, Failure, Mechanism};
pub use plain::{parse_plain, plain_client_message};
pub use scram_client::{ScramClient, MAX_CLIENT_ITERATIONS};
pub use scram_server::{set_unknown_user_secret, ScramServer};
