//! Error type of the codec.
//!
//! The variants map onto the stream error conditions of RFC 6120 §4.9.3:
//! [`Error::NotWellFormed`] is `<not-well-formed/>` (XML 1.0 §2.1 and
//! Namespaces in XML §7 well-formedness), [`Error::Restricted`] is
//! `<restricted-xml/>` (RFC 6120 §11.1), [`Error::InvalidNamespace`] is
//! `<invalid-namespace/>` (RFC 6120 §4.8.1), [`Error::UnsupportedEncoding`] is
//! `<unsupported-encoding/>` (RFC 6120 §11.6), and the three limit variants
//! are `<policy-violation/>` (or `<resource-constraint/>`), at the caller's
//! choice.

/// Everything that can go wrong while decoding XML.
///
/// Errors are sticky: once [`crate::Decoder::next_event`] returned an error,
/// every further call returns the same error until [`crate::Decoder::reset`].
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// Any syntax or well-formedness error (XML 1.0, Namespaces in XML):
    /// mismatched end tag, bad UTF-8, characters outside `Char`, duplicate
    /// attribute, undeclared prefix, text outside an element, content after
    /// the stream was closed, etc. The string is a short human-readable hint
    /// that never contains peer data.
    #[error("not well-formed: {0}")]
    NotWellFormed(String),
    /// XML that RFC 6120 §11.1 forbids: comments, processing instructions
    /// (other than a leading XML declaration), DTDs and entity references
    /// other than the five predefined ones and character references.
    #[error("restricted XML: {0}")]
    Restricted(&'static str),
    /// A top-level element (or the stream header) exceeded its byte limit.
    #[error("stanza exceeds the size limit")]
    StanzaTooBig,
    /// Elements nested deeper than [`crate::Limits::max_depth`].
    #[error("elements nested too deeply")]
    TooDeep,
    /// More attributes (or namespace declarations) on one element than
    /// [`crate::Limits::max_attrs`], or too many declarations in scope.
    #[error("too many attributes")]
    TooManyAttrs,
    /// The stream header is not `stream` in `http://etherx.jabber.org/streams`
    /// (RFC 6120 §4.8.1). Holds the namespace actually received (peer data,
    /// at most `max_header_bytes`), or a hint naming the wrong element.
    #[error("invalid stream namespace: {0}")]
    InvalidNamespace(String),
    /// The XML declaration names an encoding other than UTF-8 (RFC 6120 §11.6).
    #[error("unsupported encoding")]
    UnsupportedEncoding,
}

/// Shorthand for a [`Error::NotWellFormed`] with a static message.
pub(crate) fn nwf(msg: &str) -> Error {
    Error::NotWellFormed(msg.to_owned())
}
