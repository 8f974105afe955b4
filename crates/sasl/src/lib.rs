//! SASL for XMPP (RFC 6120 §6): PLAIN (RFC 4616) and SCRAM (RFC 5802, RFC 7677) with
//! SHA-1, SHA-256 and SHA-512, plus their -PLUS variants bound to the TLS channel with
//! `tls-exporter` (RFC 9266).
//!
//! Everything here is a pure state machine: bytes in, bytes out, no I/O. Looking up the
//! stored credentials is the caller's job (it is asynchronous storage access).
#![warn(missing_docs)]

mod credentials;

pub use credentials::{HashAlg, ScramKeys, StoredCredentials, DEFAULT_ITERATIONS};
