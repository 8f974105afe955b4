//! meerkat-xml: a strict, bounded, sans-I/O streaming XML codec for XMPP.
//!
//! Implements the subset of XML 1.0 (Fifth Edition) and Namespaces in XML
//! 1.0 that RFC 6120 §11 ("XML Usage") allows on an XMPP stream: UTF-8 only
//! (§11.6), no comments, processing instructions, DTDs or entity references
//! other than the predefined ones (§11.1), namespace-aware (§11.2, §4.8).
//! Bytes go in with [`Decoder::feed`]; [`StreamEvent`]s come out of
//! [`Decoder::next_event`]. Two framings are supported: a TCP XML stream
//! (RFC 6120 §4.2, [`Framing::Stream`]) and self-contained top-level
//! elements as carried by WebSocket (RFC 7395) and BOSH (XEP-0124/0206)
//! ([`Framing::Fragments`]).
//!
//! This is the first code hostile input reaches, so it is strict (any
//! deviation is an error, never a guess) and bounded by [`Limits`]: the size
//! of a top-level element is checked while its bytes are still arriving,
//! nesting depth and attribute count at the start tag, before anything is
//! allocated for it. Parsing and serialisation never recurse on depth.
//!
//! ```
//! use meerkat_xml::{Decoder, Element, Framing, Limits, StreamEvent, STREAM_NS};
//!
//! let mut dec = Decoder::new(Framing::Stream, Limits::default());
//! dec.feed(b"<stream:stream xmlns='jabber:client' \
//!     xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>");
//! dec.feed(b"<message to='romeo@example.net'><body>hi</body></message>");
//! let Some(StreamEvent::Header(h)) = dec.next_event()? else { panic!() };
//! assert!(h.is("stream", STREAM_NS));
//! assert_eq!(dec.default_ns(), "jabber:client");
//! let Some(StreamEvent::Element(m)) = dec.next_event()? else { panic!() };
//! assert_eq!(m.child_text("body", "jabber:client").as_deref(), Some("hi"));
//! assert_eq!(dec.next_event()?, None); // needs more bytes
//!
//! let reply = Element::builder("message", "jabber:client")
//!     .attr("to", "juliet@example.com")
//!     .append(Element::builder("body", "jabber:client").text("a < b").build())
//!     .build();
//! let mut out = Vec::new();
//! reply.write_to(&mut out, "jabber:client");
//! assert_eq!(out, b"<message to='juliet@example.com'><body>a &lt; b</body></message>");
//! # Ok::<(), meerkat_xml::Error>(())
//! ```
//!
//! # Design choices for speed
//!
//! * One buffer, consumed token by token: a token (tag, text run, CDATA) is
//!   delimited with a forward byte scan that resumes where the previous one
//!   stopped, then parsed from the borrowed slice straight into the owned
//!   [`Element`] under construction. Nothing is re-scanned on a slow drip;
//!   consumed bytes are compacted away at the next [`Decoder::feed`].
//! * UTF-8 and `Char` validity are checked once per token with the standard
//!   library's validator plus one byte loop; names, attribute values and text
//!   are then sliced from the validated `&str` without further checks.
//! * Decoding fast paths: text and values without `&` / CR are copied with
//!   one `push_str`; adjacent text (around CDATA) merges into one node.
//! * Allocation is per output string only (names, values, text, child
//!   vectors); the attribute scratch vector and the element stack are reused
//!   across stanzas. [`Decoder::shrink`] returns all of it when idle.
//! * Namespace scopes are a flat vector of bindings with a mark per open
//!   element: lookups walk a handful of entries from the end.
//! * `Element` is 96 bytes (two `String`s, two `Vec`s); attributes are a
//!   small vector searched linearly, which beats a map for the 2–6
//!   attributes a stanza carries.

#![warn(missing_docs)]

mod chars;
mod decoder;
mod element;
mod error;
mod escape;
mod parser;
mod writer;

pub use decoder::{parse_element, Decoder, StreamEvent};
pub use element::{CompactString, Element, ElementBuilder, Node};
pub use error::Error;
pub use escape::{escape_attr, escape_text};

/// The namespace of the stream framing elements (RFC 6120 §4.8.1):
/// `<stream:stream>`, `<stream:features>`, `<stream:error>`.
pub const STREAM_NS: &str = "http://etherx.jabber.org/streams";

/// The namespace bound to the `xml` prefix (Namespaces in XML §3), e.g. of
/// `xml:lang`.
pub const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

/// Resource limits enforced by the [`Decoder`] (RFC 6120 §13.12 advises
/// limiting stanza size and nesting to resist denial of service).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum bytes of one top-level element, counted from its `<` up to
    /// and including its end tag. Default 65536.
    pub max_stanza_bytes: usize,
    /// Maximum nesting depth inside a top-level element, the element itself
    /// being depth 1. Default 32.
    pub max_depth: usize,
    /// Maximum attributes on one element, default 64. Namespace
    /// declarations (`xmlns`, `xmlns:p`) are counted separately against the
    /// same maximum, and at most twice this many declarations may be in
    /// scope at once (stream header included).
    pub max_attrs: usize,
    /// Maximum bytes of the stream header tag (and of the XML declaration).
    /// Default 4096.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_stanza_bytes: 65536, max_depth: 32, max_attrs: 64, max_header_bytes: 4096 }
    }
}

/// How top-level content is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// A TCP XML stream (RFC 6120 §4.2): a `<stream:stream …>` header, then
    /// stanzas and nonzas at depth 1, then `</stream:stream>`.
    Stream,
    /// WebSocket (RFC 7395) messages or BOSH bodies: every top-level element
    /// is one complete event; there is no stream header.
    Fragments,
}

/// Support code for the `stream_parser` fuzz target (`fuzz/` at the
/// workspace root) and for the equivalent deterministic test. Not part of
/// the stable API.
#[doc(hidden)]
pub mod fuzzing {
    use crate::{parse_element, Decoder, Error, Framing, Limits, StreamEvent};

    /// Small limits so that the fuzzer reaches them.
    pub const LIMITS: Limits = Limits { max_stanza_bytes: 4096, max_depth: 8, max_attrs: 8, max_header_bytes: 512 };

    fn drain(d: &mut Decoder, events: &mut Vec<StreamEvent>) -> Option<Error> {
        loop {
            match d.next_event() {
                Ok(Some(ev)) => events.push(ev),
                Ok(None) => return None,
                Err(e) => return Some(e),
            }
        }
    }

    /// Decodes `chunks` in order with a [`Framing::Stream`] decoder and
    /// [`LIMITS`]; returns the events and the error that ended decoding.
    pub fn decode_chunks(chunks: &[&[u8]]) -> (Vec<StreamEvent>, Option<Error>) {
        let mut d = Decoder::new(Framing::Stream, LIMITS);
        let mut events = Vec::new();
        for chunk in chunks {
            d.feed(chunk);
            if let Some(e) = drain(&mut d, &mut events) {
                return (events, Some(e));
            }
        }
        (events, None)
    }

    /// The fuzz property. Panics if it is violated:
    /// * decoding `data` whole, or split in two at a point derived from the
    ///   input, gives the same events and error;
    /// * every element (and header) serialises to text that
    ///   [`parse_element`] reads back to an equal element.
    pub fn stream_parser(data: &[u8]) {
        let split = match data.first() {
            Some(&b) => (b as usize * 7 + data.len() / 2) % (data.len() + 1),
            None => 0,
        };
        let whole = decode_chunks(&[data]);
        let (a, b) = data.split_at(split);
        let parts = decode_chunks(&[a, b]);
        assert_eq!(whole, parts, "chunking changed the result (split at {split})");
        // Serialisation may add namespace declarations and escapes, so the
        // re-parse gets room beyond the decoding limits.
        let roomy = Limits {
            max_stanza_bytes: 1 << 30,
            max_depth: LIMITS.max_depth,
            max_attrs: LIMITS.max_attrs * 2 + 2,
            max_header_bytes: 1 << 30,
        };
        for ev in &whole.0 {
            let el = match ev {
                StreamEvent::Header(el) | StreamEvent::Element(el) => el,
                StreamEvent::Close => continue,
            };
            let text = el.to_string_with_ns();
            match parse_element(&text, &roomy) {
                Ok(back) => assert!(back == *el, "round trip changed {text}: got {back}"),
                Err(e) => panic!("re-parse of {text} failed: {e}"),
            }
        }
    }
}
