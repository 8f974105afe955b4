//! Namespace URIs used by the server, in one place (RFC 6120, RFC 6121 and the XEPs cited).

/// RFC 6120 §4.8.3: the client content namespace.
pub const CLIENT: &str = "jabber:client";
/// RFC 6120 §4.8.1: the stream namespace.
pub const STREAM: &str = "http://etherx.jabber.org/streams";
/// RFC 7395 §3.3.2: WebSocket framing.
pub const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
/// RFC 6120 §4.9.3: stream error conditions.
pub const STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
/// RFC 6120 §8.3: stanza error conditions.
pub const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
/// RFC 6120 §5: STARTTLS.
pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
/// RFC 6120 §6: SASL.
pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
/// RFC 6120 §7: resource binding.
pub const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
/// RFC 3921 §3 (kept by RFC 6121 as optional): legacy session establishment.
pub const SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
/// RFC 6121 §2: roster.
pub const ROSTER: &str = "jabber:iq:roster";
/// XEP-0237: roster versioning stream feature.
pub const ROSTER_VER: &str = "urn:xmpp:features:rosterver";
/// XEP-0030.
pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
/// XEP-0030.
pub const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
/// XEP-0199.
pub const PING: &str = "urn:xmpp:ping";
/// XEP-0092.
pub const VERSION: &str = "jabber:iq:version";
/// XEP-0202.
pub const TIME: &str = "urn:xmpp:time";
/// XEP-0012.
pub const LAST: &str = "jabber:iq:last";
/// XEP-0054.
pub const VCARD: &str = "vcard-temp";
/// XEP-0049.
pub const PRIVATE: &str = "jabber:iq:private";
/// XEP-0191.
pub const BLOCKING: &str = "urn:xmpp:blocking";
/// XEP-0191 §3.5: error payload.
pub const BLOCKING_ERRORS: &str = "urn:xmpp:blocking:errors";
/// XEP-0160 / XEP-0203.
pub const DELAY: &str = "urn:xmpp:delay";
/// XEP-0077.
pub const REGISTER: &str = "jabber:iq:register";
/// XEP-0077 stream feature.
pub const REGISTER_FEATURE: &str = "http://jabber.org/features/iq-register";
/// XEP-0359.
pub const SID: &str = "urn:xmpp:sid:0";
/// XEP-0004.
pub const DATA_FORMS: &str = "jabber:x:data";
/// XEP-0440: SASL channel-binding type capability.
pub const SASL_CB: &str = "urn:xmpp:sasl-cb:0";
/// XEP-0160 §2: offline message retrieval marker feature.
pub const MSGOFFLINE: &str = "msgoffline";
/// XEP-0280 message carbons.
pub const CARBONS: &str = "urn:xmpp:carbons:2";
/// XEP-0198 stream management.
pub const SM: &str = "urn:xmpp:sm:3";
/// XEP-0352 client state indication.
pub const CSI: &str = "urn:xmpp:csi:0";
/// XEP-0297 stanza forwarding.
pub const FORWARD: &str = "urn:xmpp:forward:0";
/// XEP-0334 message processing hints.
pub const HINTS: &str = "urn:xmpp:hints";
/// XEP-0115 entity capabilities (parsed from presence only).
pub const CAPS: &str = "http://jabber.org/protocol/caps";
