//! [`Stanza`]: a typed view over a top-level `<message/>`, `<presence/>` or `<iq/>`
//! (RFC 6120 §8). The element is kept whole; only the routing attributes are parsed.

use crate::error::StanzaError;
use crate::ns;
use jid::Jid;
use meerkat_xml::Element;

/// The three stanza kinds (RFC 6120 §8.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StanzaKind {
    /// `<message/>`
    Message,
    /// `<presence/>`
    Presence,
    /// `<iq/>`
    Iq,
}

/// RFC 6120 §8.2.3 IQ types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IqType {
    /// Request for data.
    Get,
    /// Provides data or a change.
    Set,
    /// Success response.
    Result,
    /// Error response.
    Error,
}

impl IqType {
    /// Parses the `type` attribute.
    pub fn parse(s: Option<&str>) -> Option<Self> {
        Some(match s? {
            "get" => IqType::Get,
            "set" => IqType::Set,
            "result" => IqType::Result,
            "error" => IqType::Error,
            _ => return None,
        })
    }
    /// Whether the IQ is a request (get or set) that must be answered.
    pub fn is_request(self) -> bool {
        matches!(self, IqType::Get | IqType::Set)
    }
}

/// A stanza with its routing addresses parsed.
#[derive(Debug, Clone)]
pub struct Stanza {
    /// Kind, from the element name.
    pub kind: StanzaKind,
    /// `from`, parsed.
    pub from: Option<Jid>,
    /// `to`, parsed.
    pub to: Option<Jid>,
    /// The element itself, with every attribute and child as received.
    pub el: Element,
    /// A message as the sender's archive stored it (XEP-0313), set where it was
    /// sent, so that the recipient's archive stores the same text without
    /// serialising the message again. Whatever changes a message's content
    /// between its sender and its recipients must clear it.
    pub archive_text: Option<std::sync::Arc<str>>,
}

impl Stanza {
    /// Wraps an element. Fails with `jid-malformed` when `to` or `from` are not JIDs,
    /// and with `None` when the element is not a stanza in `jabber:client`
    /// (the caller answers `unsupported-stanza-type`).
    #[allow(clippy::result_large_err)] // the error gives the element back, by design
    pub fn parse(el: Element) -> Result<Stanza, (Element, Option<StanzaError>)> {
        let kind = if el.ns() != ns::CLIENT {
            None
        } else {
            match el.name() {
                "message" => Some(StanzaKind::Message),
                "presence" => Some(StanzaKind::Presence),
                "iq" => Some(StanzaKind::Iq),
                _ => None,
            }
        };
        let Some(kind) = kind else {
            return Err((el, None));
        };
        let parse_jid = |name: &str| -> Result<Option<Jid>, StanzaError> {
            match el.attr(name) {
                None => Ok(None),
                Some(s) => Jid::new(s).map(Some).map_err(|e| {
                    StanzaError::new(crate::StanzaErrorCondition::JidMalformed).with_text(format!("'{name}': {e}"))
                }),
            }
        };
        let to = match parse_jid("to") {
            Ok(t) => t,
            Err(e) => return Err((el, Some(e))),
        };
        let from = match parse_jid("from") {
            Ok(f) => f,
            Err(e) => return Err((el, Some(e))),
        };
        Ok(Stanza { kind, from, to, el, archive_text: None })
    }

    /// Builds a stanza from an element the server made itself (its `to`/`from` are trusted).
    pub fn from_trusted(el: Element) -> Stanza {
        let kind = match el.name() {
            "message" => StanzaKind::Message,
            "presence" => StanzaKind::Presence,
            _ => StanzaKind::Iq,
        };
        let to = el.attr("to").and_then(|s| Jid::new(s).ok());
        let from = el.attr("from").and_then(|s| Jid::new(s).ok());
        Stanza { kind, from, to, el, archive_text: None }
    }

    /// Whether this is a presence subscription stanza (RFC 6121 §3).
    pub fn is_subscription(&self) -> bool {
        self.kind == StanzaKind::Presence
            && matches!(self.type_attr(), Some("subscribe" | "subscribed" | "unsubscribe" | "unsubscribed"))
    }

    /// The `type` attribute.
    pub fn type_attr(&self) -> Option<&str> {
        self.el.attr("type")
    }

    /// The `id` attribute.
    pub fn id(&self) -> Option<&str> {
        self.el.attr("id")
    }

    /// The IQ type (`None` for other kinds or an invalid type).
    pub fn iq_type(&self) -> Option<IqType> {
        if self.kind == StanzaKind::Iq {
            IqType::parse(self.type_attr())
        } else {
            None
        }
    }

    /// Whether this is an error stanza (never answered with another error, RFC 6120 §8.3.1).
    pub fn is_error(&self) -> bool {
        self.type_attr() == Some("error")
    }

    /// Sets `from` (RFC 6120 §8.1.2.1: the server stamps the sender's full JID).
    pub fn set_from(&mut self, jid: Jid) {
        self.el.set_attr("from", jid.as_str());
        self.from = Some(jid);
    }

    /// Sets `to`.
    pub fn set_to(&mut self, jid: Jid) {
        self.el.set_attr("to", jid.as_str());
        self.to = Some(jid);
    }

    /// The error reply to this stanza, or `None` when it is itself an error
    /// (RFC 6120 §8.3.1: an entity MUST NOT respond to an error with an error).
    pub fn error_reply(&self, err: &StanzaError) -> Option<Stanza> {
        if self.is_error() {
            return None;
        }
        Some(Stanza {
            kind: self.kind,
            from: self.to.clone(),
            to: self.from.clone(),
            el: make_error_reply(&self.el, err),
            archive_text: None,
        })
    }
}

/// The error reply to `el` (RFC 6120 §8.3.1): same name and id, `from`/`to` swapped,
/// `type='error'`, the original payload kept, the `<error/>` appended.
pub fn make_error_reply(el: &Element, err: &StanzaError) -> Element {
    let mut reply = Element::new(el.name(), el.ns());
    if let Some(id) = el.attr("id") {
        reply.set_attr("id", id);
    }
    if let Some(to) = el.attr("to") {
        reply.set_attr("from", to);
    }
    if let Some(from) = el.attr("from") {
        reply.set_attr("to", from);
    }
    reply.set_attr("type", "error");
    for child in el.children() {
        if !(child.name() == "error" && child.ns() == ns::CLIENT) {
            reply.append_child(child.clone());
        }
    }
    reply.append_child(err.to_element());
    reply
}

/// The `type='result'` reply to an IQ request, with an optional payload.
pub fn make_iq_result(iq: &Element, payload: Option<Element>) -> Element {
    let mut reply = Element::new("iq", ns::CLIENT);
    if let Some(id) = iq.attr("id") {
        reply.set_attr("id", id);
    }
    if let Some(to) = iq.attr("to") {
        reply.set_attr("from", to);
    }
    if let Some(from) = iq.attr("from") {
        reply.set_attr("to", from);
    }
    reply.set_attr("type", "result");
    if let Some(p) = payload {
        reply.append_child(p);
    }
    reply
}
