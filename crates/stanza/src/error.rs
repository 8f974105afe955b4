//! Stanza errors (RFC 6120 §8.3) and stream errors (RFC 6120 §4.9): the single place
//! where error conditions become XML.

use crate::ns;
use meerkat_xml::Element;

/// RFC 6120 §8.3.2: the error `type` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    /// Retry after providing credentials.
    Auth,
    /// Do not retry (the error cannot be remedied).
    Cancel,
    /// Proceed (the condition was only a warning).
    Continue,
    /// Retry after changing the data sent.
    Modify,
    /// Retry after waiting (the error is temporary).
    Wait,
}

impl ErrorType {
    /// Wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::Auth => "auth",
            ErrorType::Cancel => "cancel",
            ErrorType::Continue => "continue",
            ErrorType::Modify => "modify",
            ErrorType::Wait => "wait",
        }
    }
}

/// RFC 6120 §8.3.3 defined conditions.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StanzaErrorCondition {
    BadRequest,
    Conflict,
    FeatureNotImplemented,
    Forbidden,
    Gone,
    InternalServerError,
    ItemNotFound,
    JidMalformed,
    NotAcceptable,
    NotAllowed,
    NotAuthorized,
    PolicyViolation,
    RecipientUnavailable,
    Redirect,
    RegistrationRequired,
    RemoteServerNotFound,
    RemoteServerTimeout,
    ResourceConstraint,
    ServiceUnavailable,
    SubscriptionRequired,
    UndefinedCondition,
    UnexpectedRequest,
}

impl StanzaErrorCondition {
    /// Element name of the condition.
    pub fn as_str(self) -> &'static str {
        use StanzaErrorCondition::*;
        match self {
            BadRequest => "bad-request",
            Conflict => "conflict",
            FeatureNotImplemented => "feature-not-implemented",
            Forbidden => "forbidden",
            Gone => "gone",
            InternalServerError => "internal-server-error",
            ItemNotFound => "item-not-found",
            JidMalformed => "jid-malformed",
            NotAcceptable => "not-acceptable",
            NotAllowed => "not-allowed",
            NotAuthorized => "not-authorized",
            PolicyViolation => "policy-violation",
            RecipientUnavailable => "recipient-unavailable",
            Redirect => "redirect",
            RegistrationRequired => "registration-required",
            RemoteServerNotFound => "remote-server-not-found",
            RemoteServerTimeout => "remote-server-timeout",
            ResourceConstraint => "resource-constraint",
            ServiceUnavailable => "service-unavailable",
            SubscriptionRequired => "subscription-required",
            UndefinedCondition => "undefined-condition",
            UnexpectedRequest => "unexpected-request",
        }
    }

    /// The error type RFC 6120 §8.3.3 recommends for the condition.
    pub fn default_type(self) -> ErrorType {
        use StanzaErrorCondition::*;
        match self {
            BadRequest | JidMalformed | NotAcceptable | PolicyViolation | Redirect => ErrorType::Modify,
            Conflict
            | FeatureNotImplemented
            | Gone
            | ItemNotFound
            | NotAllowed
            | RemoteServerNotFound
            | ServiceUnavailable
            | UndefinedCondition => ErrorType::Cancel,
            Forbidden | NotAuthorized | RegistrationRequired | SubscriptionRequired => ErrorType::Auth,
            InternalServerError | RecipientUnavailable | RemoteServerTimeout | ResourceConstraint
            | UnexpectedRequest => ErrorType::Wait,
        }
    }
}

/// A stanza error: condition, type, optional text and optional application payload.
#[derive(Debug, Clone, PartialEq)]
pub struct StanzaError {
    /// The defined condition.
    pub condition: StanzaErrorCondition,
    /// The error type.
    pub kind: ErrorType,
    /// Human-readable text (English).
    pub text: Option<String>,
    /// Application-specific condition element (e.g. XEP-0191 `<blocked/>`), boxed
    /// to keep the error small on `Result` paths.
    pub app: Option<Box<Element>>,
}

impl StanzaError {
    /// The condition with its recommended type.
    pub fn new(condition: StanzaErrorCondition) -> Self {
        StanzaError { condition, kind: condition.default_type(), text: None, app: None }
    }
    /// Overrides the type.
    pub fn with_type(mut self, kind: ErrorType) -> Self {
        self.kind = kind;
        self
    }
    /// Adds a text.
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.text = Some(text.into());
        self
    }
    /// Adds an application-specific condition.
    pub fn with_app(mut self, app: Element) -> Self {
        self.app = Some(Box::new(app));
        self
    }
    /// `<bad-request/>` with a text.
    pub fn bad_request(text: &str) -> Self {
        Self::new(StanzaErrorCondition::BadRequest).with_text(text)
    }
    /// `<service-unavailable/>`.
    pub fn service_unavailable() -> Self {
        Self::new(StanzaErrorCondition::ServiceUnavailable)
    }
    /// `<internal-server-error/>` of type wait (storage failures, RFC 6120 §8.3.3.6).
    pub fn internal() -> Self {
        Self::new(StanzaErrorCondition::InternalServerError)
    }
    /// `<forbidden/>`.
    pub fn forbidden() -> Self {
        Self::new(StanzaErrorCondition::Forbidden)
    }
    /// `<item-not-found/>`.
    pub fn item_not_found() -> Self {
        Self::new(StanzaErrorCondition::ItemNotFound)
    }
    /// `<not-allowed/>`.
    pub fn not_allowed() -> Self {
        Self::new(StanzaErrorCondition::NotAllowed)
    }
    /// `<feature-not-implemented/>`.
    pub fn not_implemented() -> Self {
        Self::new(StanzaErrorCondition::FeatureNotImplemented)
    }

    /// The `<error/>` element.
    pub fn to_element(&self) -> Element {
        let mut e = Element::new("error", ns::CLIENT);
        e.set_attr("type", self.kind.as_str());
        e.append_child(Element::new(self.condition.as_str(), ns::STANZAS));
        if let Some(t) = &self.text {
            let mut te = Element::new("text", ns::STANZAS);
            te.set_attr("xml:lang", "en");
            te.append_text(t.clone());
            e.append_child(te);
        }
        if let Some(app) = &self.app {
            e.append_child((**app).clone());
        }
        e
    }
}

/// RFC 6120 §4.9.3 stream error conditions.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamError {
    BadFormat,
    BadNamespacePrefix,
    Conflict,
    ConnectionTimeout,
    HostGone,
    HostUnknown,
    ImproperAddressing,
    InternalServerError,
    InvalidFrom,
    InvalidNamespace,
    InvalidXml,
    NotAuthorized,
    NotWellFormed,
    PolicyViolation,
    RemoteConnectionFailed,
    Reset,
    ResourceConstraint,
    RestrictedXml,
    SeeOtherHost,
    SystemShutdown,
    UndefinedCondition,
    UnsupportedEncoding,
    UnsupportedFeature,
    UnsupportedStanzaType,
    UnsupportedVersion,
}

impl StreamError {
    /// Element name of the condition.
    pub fn as_str(self) -> &'static str {
        use StreamError::*;
        match self {
            BadFormat => "bad-format",
            BadNamespacePrefix => "bad-namespace-prefix",
            Conflict => "conflict",
            ConnectionTimeout => "connection-timeout",
            HostGone => "host-gone",
            HostUnknown => "host-unknown",
            ImproperAddressing => "improper-addressing",
            InternalServerError => "internal-server-error",
            InvalidFrom => "invalid-from",
            InvalidNamespace => "invalid-namespace",
            InvalidXml => "invalid-xml",
            NotAuthorized => "not-authorized",
            NotWellFormed => "not-well-formed",
            PolicyViolation => "policy-violation",
            RemoteConnectionFailed => "remote-connection-failed",
            Reset => "reset",
            ResourceConstraint => "resource-constraint",
            RestrictedXml => "restricted-xml",
            SeeOtherHost => "see-other-host",
            SystemShutdown => "system-shutdown",
            UndefinedCondition => "undefined-condition",
            UnsupportedEncoding => "unsupported-encoding",
            UnsupportedFeature => "unsupported-feature",
            UnsupportedStanzaType => "unsupported-stanza-type",
            UnsupportedVersion => "unsupported-version",
        }
    }

    /// The condition named `name` (the inverse of [`Self::as_str`]).
    pub fn parse(name: &str) -> Option<Self> {
        use StreamError::*;
        Some(match name {
            "bad-format" => BadFormat,
            "bad-namespace-prefix" => BadNamespacePrefix,
            "conflict" => Conflict,
            "connection-timeout" => ConnectionTimeout,
            "host-gone" => HostGone,
            "host-unknown" => HostUnknown,
            "improper-addressing" => ImproperAddressing,
            "internal-server-error" => InternalServerError,
            "invalid-from" => InvalidFrom,
            "invalid-namespace" => InvalidNamespace,
            "invalid-xml" => InvalidXml,
            "not-authorized" => NotAuthorized,
            "not-well-formed" => NotWellFormed,
            "policy-violation" => PolicyViolation,
            "remote-connection-failed" => RemoteConnectionFailed,
            "reset" => Reset,
            "resource-constraint" => ResourceConstraint,
            "restricted-xml" => RestrictedXml,
            "see-other-host" => SeeOtherHost,
            "system-shutdown" => SystemShutdown,
            "undefined-condition" => UndefinedCondition,
            "unsupported-encoding" => UnsupportedEncoding,
            "unsupported-feature" => UnsupportedFeature,
            "unsupported-stanza-type" => UnsupportedStanzaType,
            "unsupported-version" => UnsupportedVersion,
            _ => return None,
        })
    }

    /// The `<stream:error/>` element, with an optional text.
    pub fn to_element(self, text: Option<&str>) -> Element {
        let mut e = Element::new("error", ns::STREAM);
        e.append_child(Element::new(self.as_str(), ns::STREAMS));
        if let Some(t) = text {
            let mut te = Element::new("text", ns::STREAMS);
            te.set_attr("xml:lang", "en");
            te.append_text(t.to_string());
            e.append_child(te);
        }
        e
    }
}

impl From<&meerkat_xml::Error> for StreamError {
    /// RFC 6120 §4.9.3: the one mapping of codec errors onto stream errors.
    fn from(e: &meerkat_xml::Error) -> Self {
        use meerkat_xml::Error as X;
        match e {
            X::NotWellFormed(_) => StreamError::NotWellFormed,
            X::Restricted(_) => StreamError::RestrictedXml,
            X::StanzaTooBig | X::TooDeep | X::TooManyAttrs => StreamError::PolicyViolation,
            X::InvalidNamespace(_) => StreamError::InvalidNamespace,
            X::UnsupportedEncoding => StreamError::UnsupportedEncoding,
        }
    }
}
