//! Mechanism names, failure conditions and channel-binding input shared by every SASL
//! mechanism in this crate. Mechanism names follow RFC 4422 §3.1, RFC 5802 §4 and
//! RFC 7677 §2; failure conditions are those of RFC 6120 §6.5; channel binding is
//! `tls-exporter` as defined by RFC 9266.

use crate::HashAlg;

/// Mechanism names as advertised in `<mechanisms/>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// `PLAIN` (RFC 4616).
    Plain,
    /// `SCRAM-<hash>` (RFC 5802, RFC 7677), or `SCRAM-<hash>-PLUS` when `plus` is set.
    Scram {
        /// The hash function.
        alg: HashAlg,
        /// Whether this is the channel-binding (`-PLUS`) variant.
        plus: bool,
    },
}

const ALL_MECHANISMS: [Mechanism; 7] = [
    Mechanism::Scram { alg: HashAlg::Sha512, plus: true },
    Mechanism::Scram { alg: HashAlg::Sha256, plus: true },
    Mechanism::Scram { alg: HashAlg::Sha1, plus: true },
    Mechanism::Scram { alg: HashAlg::Sha512, plus: false },
    Mechanism::Scram { alg: HashAlg::Sha256, plus: false },
    Mechanism::Scram { alg: HashAlg::Sha1, plus: false },
    Mechanism::Plain,
];

impl Mechanism {
    /// The registered name: `PLAIN`, `SCRAM-SHA-1`, `SCRAM-SHA-1-PLUS`, `SCRAM-SHA-256`, …,
    /// `SCRAM-SHA-512-PLUS`.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Scram { alg: HashAlg::Sha1, plus: false } => "SCRAM-SHA-1",
            Mechanism::Scram { alg: HashAlg::Sha1, plus: true } => "SCRAM-SHA-1-PLUS",
            Mechanism::Scram { alg: HashAlg::Sha256, plus: false } => "SCRAM-SHA-256",
            Mechanism::Scram { alg: HashAlg::Sha256, plus: true } => "SCRAM-SHA-256-PLUS",
            Mechanism::Scram { alg: HashAlg::Sha512, plus: false } => "SCRAM-SHA-512",
            Mechanism::Scram { alg: HashAlg::Sha512, plus: true } => "SCRAM-SHA-512-PLUS",
        }
    }

    /// Parses a mechanism name as sent in `<auth mechanism='…'/>`. Names are matched
    /// exactly (SASL mechanism names are upper case, RFC 4422 §3.1).
    pub fn from_name(s: &str) -> Option<Self> {
        ALL_MECHANISMS.iter().copied().find(|m| m.name() == s)
    }

    /// Every supported mechanism, strongest first: SCRAM-SHA-512-PLUS, SCRAM-SHA-256-PLUS,
    /// SCRAM-SHA-1-PLUS, SCRAM-SHA-512, SCRAM-SHA-256, SCRAM-SHA-1, PLAIN.
    pub fn all() -> &'static [Mechanism] {
        &ALL_MECHANISMS
    }

    /// Whether this is a `-PLUS` (channel-binding) mechanism.
    pub fn is_plus(self) -> bool {
        matches!(self, Mechanism::Scram { plus: true, .. })
    }
}

impl std::fmt::Display for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// SASL failure conditions (RFC 6120 §6.5), each maps to a `<failure/>` child.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// `<aborted/>`: the client aborted the exchange.
    #[error("authentication aborted")]
    Aborted,
    /// `<account-disabled/>`.
    #[error("account disabled")]
    AccountDisabled,
    /// `<credentials-expired/>`.
    #[error("credentials expired")]
    CredentialsExpired,
    /// `<encryption-required/>`: the mechanism needs TLS first.
    #[error("encryption required")]
    EncryptionRequired,
    /// `<incorrect-encoding/>`: the base64 of the `<auth/>`/`<response/>` payload is wrong.
    #[error("incorrect encoding")]
    IncorrectEncoding,
    /// `<invalid-authzid/>`.
    #[error("invalid authorization identity")]
    InvalidAuthzid,
    /// `<invalid-mechanism/>`.
    #[error("invalid mechanism")]
    InvalidMechanism,
    /// `<malformed-request/>`: the message does not follow the mechanism's syntax.
    #[error("malformed request")]
    MalformedRequest,
    /// `<mechanism-too-weak/>`.
    #[error("mechanism too weak")]
    MechanismTooWeak,
    /// `<not-authorized/>`: wrong credentials, unknown user, channel-binding mismatch.
    #[error("not authorized")]
    NotAuthorized,
    /// `<temporary-auth-failure/>`: a server-side problem (storage, randomness).
    #[error("temporary authentication failure")]
    TemporaryAuthFailure,
}

impl Failure {
    /// Every condition, in the order of RFC 6120 §6.5.
    pub const ALL: [Failure; 11] = [
        Failure::Aborted,
        Failure::AccountDisabled,
        Failure::CredentialsExpired,
        Failure::EncryptionRequired,
        Failure::IncorrectEncoding,
        Failure::InvalidAuthzid,
        Failure::InvalidMechanism,
        Failure::MalformedRequest,
        Failure::MechanismTooWeak,
        Failure::NotAuthorized,
        Failure::TemporaryAuthFailure,
    ];

    /// The name of the `<failure/>` child element, e.g. `not-authorized`.
    pub fn condition(&self) -> &'static str {
        match self {
            Failure::Aborted => "aborted",
            Failure::AccountDisabled => "account-disabled",
            Failure::CredentialsExpired => "credentials-expired",
            Failure::EncryptionRequired => "encryption-required",
            Failure::IncorrectEncoding => "incorrect-encoding",
            Failure::InvalidAuthzid => "invalid-authzid",
            Failure::InvalidMechanism => "invalid-mechanism",
            Failure::MalformedRequest => "malformed-request",
            Failure::MechanismTooWeak => "mechanism-too-weak",
            Failure::NotAuthorized => "not-authorized",
            Failure::TemporaryAuthFailure => "temporary-auth-failure",
        }
    }

    /// The inverse of [`condition`](Self::condition), for clients reading `<failure/>`.
    pub fn from_condition(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|f| f.condition() == s).cloned()
    }
}

/// What the TLS layer offers for channel binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelBinding {
    /// Plaintext connection: no channel binding possible.
    None,
    /// RFC 9266 `tls-exporter`: 32 bytes exported with label `EXPORTER-Channel-Binding`
    /// and an empty context (TLS 1.3 only).
    TlsExporter(Vec<u8>),
    /// TLS, but no usable binding (e.g. TLS 1.2, where `tls-exporter` is not safe).
    Unsupported,
}

/// The result of parsing a PLAIN or SCRAM client-first message: who wants to log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRequest {
    /// The authentication identity (username), SASLprep'ed (see [`crate::saslprep`]).
    /// It is not yet an XMPP localpart: the caller applies RFC 7622 preparation.
    pub authcid: String,
    /// The requested authorization identity, if the client sent a non-empty one. It is
    /// returned verbatim (decoded, not prepared); the caller checks it (for XMPP it must be
    /// the bare JID of `authcid`).
    pub authzid: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip() {
        let names: Vec<_> = Mechanism::all().iter().map(|m| m.name()).collect();
        assert_eq!(
            names,
            [
                "SCRAM-SHA-512-PLUS",
                "SCRAM-SHA-256-PLUS",
                "SCRAM-SHA-1-PLUS",
                "SCRAM-SHA-512",
                "SCRAM-SHA-256",
                "SCRAM-SHA-1",
                "PLAIN"
            ]
        );
        for m in Mechanism::all() {
            assert_eq!(Mechanism::from_name(m.name()), Some(*m));
        }
        assert_eq!(Mechanism::from_name("scram-sha-1"), None);
        assert_eq!(Mechanism::from_name("DIGEST-MD5"), None);
        assert!(Mechanism::from_name("SCRAM-SHA-1-PLUS").is_some_and(Mechanism::is_plus));
    }

    #[test]
    fn conditions_roundtrip() {
        for f in Failure::ALL {
            assert_eq!(Failure::from_condition(f.condition()), Some(f.clone()));
        }
        assert_eq!(Failure::NotAuthorized.condition(), "not-authorized");
        assert_eq!(Failure::MalformedRequest.condition(), "malformed-request");
        assert_eq!(Failure::from_condition("bogus"), None);
    }
}
