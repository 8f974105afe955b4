//! The incremental decoder: bytes in, [`StreamEvent`]s out.
//!
//! Tokenization follows XML 1.0 §2–§3 with the restrictions of RFC 6120
//! §11.1 applied as soon as a construct is recognisable (`<!--`, `<!DOCTYPE`,
//! `<?` after the start). A token is delimited by scanning forward from where
//! the previous scan stopped (`Scan::off`, plus the quote state inside a
//! start tag), so a slow drip of a large stanza costs O(n) overall. Complete
//! tokens are consumed at once into the element under construction, so the
//! buffer holds at most one partial token plus unread input.
//!
//! Limits are enforced while scanning: a token may extend at most
//! `window` bytes (what remains of `max_stanza_bytes` for the current
//! top-level element, or `max_header_bytes` for the stream header / XML
//! declaration). The scan never looks past the window, which makes every
//! decision a function of the byte prefix alone: feeding the same bytes in
//! any chunking yields the same events and the same error.

use crate::chars::is_ws;
use crate::error::{nwf, Error};
use crate::parser::{Kind, Parser, State};
use crate::{Element, Framing, Limits};

/// One decoded unit of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// Stream framing: the opening `<stream:stream>` tag (only in
    /// [`Framing::Stream`]). Holds the element with its attributes (`to`,
    /// `from`, `version`, `xml:lang`, `id`) and resolved namespace; no
    /// children. The default namespace it declared is
    /// [`Decoder::default_ns`].
    Header(Element),
    /// A complete top-level element (a stanza, or a nonza like
    /// `<starttls/>`, `<auth/>`), with its children.
    Element(Element),
    /// `</stream:stream>` (only in [`Framing::Stream`]).
    Close,
}

/// The UTF-8 byte order mark (XML 1.0 §4.3.3, Appendix F).
const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// A token whose end has not been found yet.
#[derive(Debug, Clone, Copy)]
struct Scan {
    kind: Kind,
    /// Offset from the token start (= `Decoder::pos`) where scanning resumes.
    off: usize,
    /// Inside a start tag: the quote of the attribute value being scanned.
    quote: u8,
}

impl Scan {
    fn new(kind: Kind, off: usize) -> Self {
        Scan { kind, off, quote: 0 }
    }
}

/// Sans-I/O streaming XML decoder for XMPP (see the crate documentation).
///
/// Call [`Decoder::feed`] with received bytes, then [`Decoder::next_event`]
/// until it returns `Ok(None)`. Errors are fatal and sticky: after one, the
/// decoder drops its buffers, ignores input and keeps returning the same
/// error until [`Decoder::reset`].
pub struct Decoder {
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    pos: usize,
    scan: Option<Scan>,
    error: Option<Error>,
    p: Parser,
}

impl Decoder {
    /// A decoder for a new stream.
    pub fn new(framing: Framing, limits: Limits) -> Self {
        Decoder { buf: Vec::new(), pos: 0, scan: None, error: None, p: Parser::new(framing, limits) }
    }

    /// Appends received bytes. Ignored after an error.
    pub fn feed(&mut self, data: &[u8]) {
        if self.error.is_some() {
            return;
        }
        if self.pos > 0 {
            // Compact: only the unconsumed tail (a partial token and
            // unread input) moves, and only once per feed.
            if self.pos >= self.buf.len() {
                self.buf.clear();
            } else {
                self.buf.drain(..self.pos);
            }
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next event, `Ok(None)` if more bytes are needed.
    ///
    /// # Errors
    ///
    /// Any [`Error`] when the input violates XML 1.0, Namespaces in XML,
    /// RFC 6120 §11 or the [`Limits`]. The decoder is then unusable until
    /// [`Decoder::reset`].
    pub fn next_event(&mut self) -> Result<Option<StreamEvent>, Error> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        match self.advance() {
            Ok(ev) => Ok(ev),
            Err(e) => {
                self.error = Some(e.clone());
                self.buf = Vec::new();
                self.pos = 0;
                self.scan = None;
                self.p.reset();
                self.p.shrink();
                Err(e)
            }
        }
    }

    /// Starts over for a new stream (after STARTTLS or SASL success, RFC
    /// 6120 §5.4.3.3 / §6.4.6): drops buffered bytes (which must not leak
    /// across the security layer change), namespace context, partial
    /// elements and any error. An XML declaration is allowed again.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.pos = 0;
        self.scan = None;
        self.error = None;
        self.p.reset();
    }

    /// Bytes held for the current stream: unconsumed input plus the bytes
    /// of the partially built top-level element (for memory accounting).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos + self.p.stanza_bytes
    }

    /// Releases spare buffer capacity; call when the session goes idle.
    /// With nothing buffered the decoder then holds no heap memory beyond
    /// the stream's namespace declarations.
    pub fn shrink(&mut self) {
        if self.pos >= self.buf.len() {
            self.buf = Vec::new();
        } else {
            self.buf.drain(..self.pos);
            self.buf.shrink_to_fit();
        }
        self.pos = 0;
        self.p.shrink();
    }

    /// The default namespace in scope at stream level: the `xmlns` of the
    /// stream header (`jabber:client`, `jabber:server`, …; RFC 6120 §4.8.2),
    /// `""` if none was declared or in [`Framing::Fragments`]. Top-level
    /// elements without their own `xmlns` inherit it.
    pub fn default_ns(&self) -> &str {
        if !self.p.in_element() {
            self.p.default_ns()
        } else {
            // Mid-element, the innermost bindings are not the stream's.
            ""
        }
    }

    /// The framing this decoder was created with.
    pub fn framing(&self) -> Framing {
        self.p.framing
    }

    /// The limits this decoder enforces.
    pub fn limits(&self) -> &Limits {
        &self.p.limits
    }

    fn advance(&mut self) -> Result<Option<StreamEvent>, Error> {
        loop {
            if let Some(ev) = self.p.take_pending_close() {
                return Ok(Some(ev));
            }
            let Some((kind, len)) = self.next_token()? else {
                return Ok(None);
            };
            let start = self.pos;
            let ev = self.p.process(kind, &self.buf[start..start + len])?;
            self.pos = start + len;
            if !self.p.in_element() {
                self.p.stanza_bytes = 0;
            } else {
                self.p.stanza_bytes += len;
            }
            if ev.is_some() {
                return Ok(ev);
            }
        }
    }

    /// Delimits the next complete token at `pos`; returns its kind and
    /// length, or `None` if more input is needed.
    fn next_token(&mut self) -> Result<Option<(Kind, usize)>, Error> {
        let mut scan = match self.scan.take() {
            Some(s) => s,
            None => match self.begin_token()? {
                Some(s) => s,
                None => return Ok(None),
            },
        };
        let avail = &self.buf[self.pos..];
        let window = self.p.window(scan.kind);
        if scan.kind == Kind::Text {
            // The terminating `<` is not part of the token: a text of
            // exactly `window` bytes is fine.
            let end = avail.len().min(window.saturating_add(1));
            if scan.off < end {
                if let Some(i) = avail[scan.off..end].iter().position(|&b| b == b'<') {
                    return Ok(Some((Kind::Text, scan.off + i)));
                }
            }
            if avail.len() > window {
                return Err(Error::StanzaTooBig);
            }
            scan.off = avail.len();
            self.scan = Some(scan);
            return Ok(None);
        }
        let end = avail.len().min(window);
        let mut i = scan.off;
        while i < end {
            let b = avail[i];
            let found = match scan.kind {
                Kind::StartTag => {
                    if scan.quote != 0 {
                        if b == scan.quote {
                            scan.quote = 0;
                        }
                        false
                    } else if b == b'\'' || b == b'"' {
                        scan.quote = b;
                        false
                    } else {
                        b == b'>'
                    }
                }
                Kind::EndTag => b == b'>',
                Kind::CData => b == b'>' && i >= 11 && avail[i - 2..i] == *b"]]",
                Kind::XmlDecl => b == b'>' && i >= 7 && avail[i - 1] == b'?',
                Kind::Text => false,
            };
            if found {
                return Ok(Some((scan.kind, i + 1)));
            }
            i += 1;
        }
        if avail.len() >= window {
            return Err(Error::StanzaTooBig);
        }
        scan.off = i.max(scan.off);
        self.scan = Some(scan);
        Ok(None)
    }

    /// Classifies the token starting at `pos` (skipping inter-element
    /// whitespace and a leading BOM). `None`: more input needed.
    fn begin_token(&mut self) -> Result<Option<Scan>, Error> {
        loop {
            let at_top = !self.p.in_element();
            if at_top {
                let n = self.buf[self.pos..].iter().take_while(|&&b| is_ws(b)).count();
                if n > 0 {
                    self.pos += n;
                    self.p.leave_start();
                }
            }
            let avail = &self.buf[self.pos..];
            let Some(&first) = avail.first() else {
                return Ok(None);
            };
            if first != b'<' {
                if !at_top {
                    return Ok(Some(Scan::new(Kind::Text, 0)));
                }
                if self.p.state == State::Start && first == BOM[0] {
                    let n = avail.len().min(3);
                    if avail[..n] == BOM[..n] {
                        if n < 3 {
                            return Ok(None);
                        }
                        self.pos += 3;
                        self.p.state = State::AfterBom;
                        continue;
                    }
                }
                return Err(if self.p.state == State::Closed {
                    nwf("content after the end of the stream")
                } else {
                    nwf("text outside of an element")
                });
            }
            if self.p.state == State::Closed {
                return Err(nwf("content after the end of the stream"));
            }
            let Some(&second) = avail.get(1) else {
                return Ok(None);
            };
            let scan = match second {
                b'/' => Scan::new(Kind::EndTag, 2),
                b'!' => match classify(avail, &[b"<!--", b"<![CDATA[", b"<!DOCTYPE"]) {
                    Some(Some(0)) => return Err(Error::Restricted("comment")),
                    Some(Some(1)) if at_top => return Err(nwf("CDATA section outside of an element")),
                    Some(Some(1)) => Scan::new(Kind::CData, 9),
                    Some(Some(_)) => return Err(Error::Restricted("DTD")),
                    Some(None) => return Err(nwf("invalid markup declaration")),
                    None => return Ok(None),
                },
                b'?' => {
                    if !self.p.decl_allowed() {
                        return Err(Error::Restricted("processing instruction"));
                    }
                    match classify(avail, &[b"<?xml ", b"<?xml\t", b"<?xml\r", b"<?xml\n"]) {
                        Some(Some(_)) => Scan::new(Kind::XmlDecl, 6),
                        Some(None) => return Err(Error::Restricted("processing instruction")),
                        None => return Ok(None),
                    }
                }
                _ => Scan::new(Kind::StartTag, 1),
            };
            return Ok(Some(scan));
        }
    }
}

/// Matches the start of `avail` against keywords none of which is a prefix
/// of another: `Some(Some(i))` keyword `i` matched, `Some(None)` none can
/// match, `None` undecided until more bytes arrive.
fn classify(avail: &[u8], keywords: &[&[u8]]) -> Option<Option<usize>> {
    let mut undecided = false;
    for (i, kw) in keywords.iter().enumerate() {
        if avail.len() >= kw.len() {
            if avail.starts_with(kw) {
                return Some(Some(i));
            }
        } else if kw.starts_with(avail) {
            undecided = true;
        }
    }
    if undecided {
        None
    } else {
        Some(None)
    }
}

/// Parses one complete standalone element (e.g. a stored stanza): an
/// optional XML declaration, the element, optional surrounding whitespace.
/// Namespace context starts empty, so the root must carry its own `xmlns`
/// (as [`Element::to_string_with_ns`] writes it).
///
/// # Errors
///
/// Any [`Error`] the [`Decoder`] reports (with [`Framing::Fragments`]), or
/// [`Error::NotWellFormed`] if the input is incomplete or has content after
/// the element.
pub fn parse_element(xml: &str, limits: &Limits) -> Result<Element, Error> {
    let mut d = Decoder::new(Framing::Fragments, *limits);
    d.feed(xml.as_bytes());
    let el = match d.next_event()? {
        Some(StreamEvent::Element(el)) => el,
        Some(_) => return Err(nwf("unexpected stream framing")),
        None => return Err(nwf("incomplete element")),
    };
    match d.next_event()? {
        None if d.buf.len() == d.pos => Ok(el),
        _ => Err(nwf("content after the element")),
    }
}
