//! Tree building from complete tokens: tags, text, CDATA, XML declaration.
//!
//! Implements the element and attribute grammar of XML 1.0 §3.1 (STag,
//! ETag, EmptyElemTag, Attribute, unique attribute names per §3.1 WFC
//! "Unique Att Spec"), the XML declaration of §2.8 (with the UTF-8 only
//! rule of RFC 6120 §11.6), and namespace resolution of Namespaces in XML
//! 1.0 §5–§6 (prefix declarations scoped to the element, default namespace
//! inheritance, reserved `xml` / `xmlns` prefixes, "Attributes Unique" on
//! expanded names). The tokenizer in `decoder.rs` hands over only complete
//! tokens, so nothing here ever waits for input, and there is no recursion:
//! open elements live on an explicit stack bounded by `Limits::max_depth`.

use crate::chars::{is_ws, split_qname, validate};
use crate::element::CompactString;
use crate::element::{Attr, Element, Node};
use crate::error::{nwf, Error};
use crate::escape::{decode_attr, decode_cdata, decode_text};
use crate::{Framing, Limits, StreamEvent, STREAM_NS, XML_NS};

/// The namespace bound to the `xmlns` prefix (Namespaces in XML §3).
const XMLNS_NS: &str = "http://www.w3.org/2000/xmlns/";

/// Where the decoder is in the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Nothing consumed yet: a BOM or an XML declaration may come.
    Start,
    /// A BOM was consumed: an XML declaration may still come.
    AfterBom,
    /// Stream: before the header. Fragments: between top-level elements.
    Prolog,
    /// Stream: the header was received.
    Body,
    /// Stream: `</stream:stream>` was received.
    Closed,
}

/// Kind of a token delimited by the tokenizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Character data up to (excluding) the next `<`.
    Text,
    /// `<name …>` or `<name …/>`.
    StartTag,
    /// `</name>`.
    EndTag,
    /// `<![CDATA[…]]>`.
    CData,
    /// `<?xml …?>`.
    XmlDecl,
}

/// An element whose end tag has not been seen yet.
struct Open {
    el: Element,
    /// The prefix its start tag used, to match the end tag's QName.
    prefix: Box<str>,
    /// `bindings.len()` before its namespace declarations.
    mark: usize,
}

/// A namespace declaration in scope. The empty prefix is the default one.
struct Binding {
    prefix: Box<str>,
    uri: CompactString,
}

/// An attribute as written, before namespace processing.
struct RawAttr {
    /// Byte range of the QName in the tag.
    start: usize,
    end: usize,
    /// Length of the prefix (0 if none).
    prefix_len: usize,
    value: CompactString,
    /// It is a namespace declaration (consumed by resolution).
    decl: bool,
}

/// Builds elements from tokens and tracks namespaces and stream state.
pub(crate) struct Parser {
    pub(crate) framing: Framing,
    pub(crate) limits: Limits,
    pub(crate) state: State,
    stack: Vec<Open>,
    bindings: Vec<Binding>,
    /// Prefix of the stream header (`Some` while the stream is open).
    header_prefix: Option<Box<str>>,
    /// Bytes of the current top-level element consumed so far.
    pub(crate) stanza_bytes: usize,
    /// A self-closing stream header was received: emit `Close` next.
    pub(crate) pending_close: bool,
}

thread_local! {
    /// The attribute list of the tag being parsed (see [`Parser::start_tag`]).
    static SCRATCH: std::cell::Cell<Vec<RawAttr>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Parser {
    pub(crate) fn new(framing: Framing, limits: Limits) -> Self {
        Parser {
            framing,
            limits,
            state: State::Start,
            stack: Vec::new(),
            bindings: Vec::new(),
            header_prefix: None,
            stanza_bytes: 0,
            pending_close: false,
        }
    }

    /// Forgets everything (new stream).
    pub(crate) fn reset(&mut self) {
        self.state = State::Start;
        self.stack.clear();
        self.bindings.clear();
        self.header_prefix = None;
        self.stanza_bytes = 0;
        self.pending_close = false;
    }

    /// Releases spare capacity.
    pub(crate) fn shrink(&mut self) {
        self.stack.shrink_to_fit();
        // A few spare slots stay: an element declaring its own namespace (most
        // extension payloads do) would otherwise grow and shrink this every time.
        if self.bindings.capacity() > self.bindings.len() + 4 {
            self.bindings.shrink_to_fit();
        }
    }

    /// Whether a top-level element is being built.
    pub(crate) fn in_element(&self) -> bool {
        !self.stack.is_empty()
    }

    /// Whether an XML declaration may still come.
    pub(crate) fn decl_allowed(&self) -> bool {
        matches!(self.state, State::Start | State::AfterBom)
    }

    /// Marks that something other than a BOM / XML declaration was seen.
    pub(crate) fn leave_start(&mut self) {
        if self.decl_allowed() {
            self.state = State::Prolog;
        }
    }

    /// The number of bytes the token being scanned may still occupy.
    pub(crate) fn window(&self, kind: Kind) -> usize {
        let in_header =
            self.framing == Framing::Stream && matches!(self.state, State::Start | State::AfterBom | State::Prolog);
        if kind == Kind::XmlDecl || in_header {
            self.limits.max_header_bytes
        } else {
            self.limits.max_stanza_bytes.saturating_sub(self.stanza_bytes)
        }
    }

    /// The default namespace in scope (`""` if none).
    pub(crate) fn default_ns(&self) -> &str {
        self.lookup("").unwrap_or("")
    }

    fn lookup(&self, prefix: &str) -> Option<&str> {
        self.bindings.iter().rev().find(|b| &*b.prefix == prefix).map(|b| b.uri.as_str())
    }

    /// Consumes one complete token.
    pub(crate) fn process(&mut self, kind: Kind, tok: &[u8]) -> Result<Option<StreamEvent>, Error> {
        if kind != Kind::XmlDecl {
            self.leave_start();
        }
        match kind {
            Kind::Text => self.text(tok).map(|()| None),
            Kind::CData => self.cdata(tok).map(|()| None),
            Kind::StartTag => self.start_tag(tok),
            Kind::EndTag => self.end_tag(tok),
            Kind::XmlDecl => {
                // `<?xml` … `?>`
                let inner = validate(tok.get(5..tok.len().saturating_sub(2)).unwrap_or_default())?;
                parse_xml_decl(inner)?;
                self.state = State::Prolog;
                Ok(None)
            }
        }
    }

    /// A `Close` event for a self-closed stream header.
    pub(crate) fn take_pending_close(&mut self) -> Option<StreamEvent> {
        if !self.pending_close {
            return None;
        }
        self.pending_close = false;
        self.close_stream();
        Some(StreamEvent::Close)
    }

    fn close_stream(&mut self) {
        self.state = State::Closed;
        self.bindings.clear();
        self.header_prefix = None;
    }

    fn text(&mut self, tok: &[u8]) -> Result<(), Error> {
        let s = validate(tok)?;
        let top = self.stack.last_mut().ok_or_else(|| nwf("text outside of an element"))?;
        match top.el.nodes.last_mut() {
            Some(Node::Text(t)) => decode_text(s, t),
            _ => {
                let mut t = String::with_capacity(s.len());
                decode_text(s, &mut t)?;
                top.el.nodes.push(Node::Text(t));
                Ok(())
            }
        }
    }

    fn cdata(&mut self, tok: &[u8]) -> Result<(), Error> {
        // `<![CDATA[` … `]]>`
        let s = validate(tok.get(9..tok.len().saturating_sub(3)).unwrap_or_default())?;
        let top = self.stack.last_mut().ok_or_else(|| nwf("CDATA section outside of an element"))?;
        if s.is_empty() {
            return Ok(());
        }
        match top.el.nodes.last_mut() {
            Some(Node::Text(t)) => decode_cdata(s, t),
            _ => {
                let mut t = String::with_capacity(s.len());
                decode_cdata(s, &mut t);
                top.el.nodes.push(Node::Text(t));
            }
        }
        Ok(())
    }

    fn start_tag(&mut self, tok: &[u8]) -> Result<Option<StreamEvent>, Error> {
        let self_closing = tok.len() >= 3 && tok[tok.len() - 2] == b'/';
        let inner = tok.get(1..tok.len() - if self_closing { 2 } else { 1 }).unwrap_or_default();
        let is_header = self.framing == Framing::Stream && self.state != State::Body;
        if !is_header && self.stack.len() >= self.limits.max_depth {
            return Err(Error::TooDeep);
        }
        let s = validate(inner)?;
        let name_end = s.as_bytes().iter().position(|&c| is_ws(c)).unwrap_or(s.len());
        let (prefix, local) = split_qname(&s[..name_end])?;

        // The raw attribute list is scratch space, used only within this call:
        // one per thread, so that neither a session holds it while idle nor a
        // tag allocates it.
        let result = SCRATCH.with(|cell| {
            let mut raw = cell.take();
            raw.clear();
            let result = parse_attrs(s, name_end, self.limits.max_attrs, &mut raw)
                .and_then(|()| self.resolve(s, prefix, local, &mut raw));
            raw.clear();
            cell.replace(raw);
            result
        });
        let (el, mark) = result?;

        if is_header {
            if el.ns != STREAM_NS {
                return Err(Error::InvalidNamespace(el.ns.to_string()));
            }
            if el.name != "stream" {
                return Err(Error::InvalidNamespace(format!("<{}/> is not a stream header", el.name)));
            }
            self.header_prefix = Some(prefix.into());
            self.state = State::Body;
            self.pending_close = self_closing;
            return Ok(Some(StreamEvent::Header(el)));
        }
        if self_closing {
            self.bindings.truncate(mark);
            Ok(self.finish(el))
        } else {
            self.stack.push(Open { el, prefix: prefix.into(), mark });
            Ok(None)
        }
    }

    /// Applies namespace declarations and builds the element. Returns the
    /// binding mark to restore when the element ends.
    fn resolve(&mut self, s: &str, prefix: &str, local: &str, raw: &mut [RawAttr]) -> Result<(Element, usize), Error> {
        // Unique Att Spec (XML 1.0 §3.1), on the names as written.
        for (i, a) in raw.iter().enumerate() {
            let name = &s[a.start..a.end];
            if raw[..i].iter().any(|b| &s[b.start..b.end] == name) {
                return Err(nwf("duplicate attribute"));
            }
        }
        let mark = self.bindings.len();
        let mut plain = 0;
        for a in raw.iter_mut() {
            let name = &s[a.start..a.end];
            let decl_prefix = if name == "xmlns" {
                ""
            } else if a.prefix_len == 5 && name.starts_with("xmlns:") {
                &name[6..]
            } else {
                plain += 1;
                continue;
            };
            a.decl = true;
            let uri = std::mem::take(&mut a.value);
            match decl_prefix {
                "xmlns" => return Err(nwf("the xmlns prefix must not be declared")),
                "xml" if uri == XML_NS => continue,
                "xml" => return Err(nwf("the xml prefix must not be rebound")),
                _ if uri == XML_NS || uri == XMLNS_NS => {
                    return Err(nwf("reserved namespace name bound to another prefix"))
                }
                "" => {}
                _ if uri.is_empty() => return Err(nwf("a namespace prefix cannot be undeclared")),
                _ => {}
            }
            // Bound the scope walked by every lookup (declarations nested
            // over many levels would make each lookup slow).
            if self.bindings.len() >= self.limits.max_attrs.saturating_mul(2) {
                return Err(Error::TooManyAttrs);
            }
            self.bindings.push(Binding { prefix: decl_prefix.into(), uri });
        }
        let ns = match prefix {
            "" => self.default_ns().into(),
            "xml" => XML_NS.into(),
            "xmlns" => return Err(nwf("the xmlns prefix is reserved")),
            p => self.lookup(p).ok_or_else(|| nwf("undeclared namespace prefix"))?.into(),
        };
        let mut attrs = Vec::with_capacity(plain);
        for a in raw.iter_mut() {
            if a.decl {
                continue;
            }
            let name = &s[a.start..a.end];
            let value = std::mem::take(&mut a.value);
            let attr_ns = match &name[..a.prefix_len] {
                "" | "xml" => None,
                p => {
                    let uri = self.lookup(p).ok_or_else(|| nwf("undeclared namespace prefix"))?;
                    let local = &name[a.prefix_len + 1..];
                    // Attributes Unique (Namespaces in XML §6.3): same local
                    // name and namespace under two prefixes.
                    let dup = attrs.iter().any(|b: &Attr| {
                        b.ns.as_deref() == Some(uri)
                            && b.name.len() > local.len()
                            && b.name.ends_with(local)
                            && b.name.as_bytes()[b.name.len() - local.len() - 1] == b':'
                    });
                    if dup {
                        return Err(nwf("duplicate attribute"));
                    }
                    Some(uri.into())
                }
            };
            attrs.push(Attr { name: name.into(), value, ns: attr_ns });
        }
        let el = Element { name: local.into(), ns, attrs, nodes: Vec::new() };
        Ok((el, mark))
    }

    /// Attaches a finished element to its parent, or returns it as an event.
    fn finish(&mut self, el: Element) -> Option<StreamEvent> {
        match self.stack.last_mut() {
            Some(parent) => {
                parent.el.nodes.push(Node::Element(el));
                None
            }
            None => Some(StreamEvent::Element(el)),
        }
    }

    fn end_tag(&mut self, tok: &[u8]) -> Result<Option<StreamEvent>, Error> {
        // `</` name S? `>`
        let mut name = tok.get(2..tok.len().saturating_sub(1)).unwrap_or_default();
        while let [rest @ .., last] = name {
            if !is_ws(*last) {
                break;
            }
            name = rest;
        }
        match self.stack.pop() {
            Some(open) => {
                if !qname_eq(name, &open.prefix, &open.el.name) {
                    return Err(nwf("mismatched end tag"));
                }
                self.bindings.truncate(open.mark);
                Ok(self.finish(open.el))
            }
            None => {
                let closes_stream = self.state == State::Body
                    && self.header_prefix.as_deref().is_some_and(|p| qname_eq(name, p, "stream"));
                if closes_stream {
                    self.close_stream();
                    Ok(Some(StreamEvent::Close))
                } else {
                    Err(nwf("unexpected end tag"))
                }
            }
        }
    }
}

/// Whether `name` (bytes of an end tag) equals `prefix:local` (or `local`).
fn qname_eq(name: &[u8], prefix: &str, local: &str) -> bool {
    if prefix.is_empty() {
        return name == local.as_bytes();
    }
    name.len() == prefix.len() + 1 + local.len()
        && name.starts_with(prefix.as_bytes())
        && name[prefix.len()] == b':'
        && name.ends_with(local.as_bytes())
}

/// Parses `(S Attribute)* S?` of a start tag from byte `i` of `s`.
fn parse_attrs(s: &str, mut i: usize, max: usize, out: &mut Vec<RawAttr>) -> Result<(), Error> {
    let b = s.as_bytes();
    let (mut plain, mut decls) = (0, 0);
    loop {
        let ws_start = i;
        while i < b.len() && is_ws(b[i]) {
            i += 1;
        }
        if i == b.len() {
            return Ok(());
        }
        if i == ws_start {
            return Err(nwf("expected whitespace before attribute"));
        }
        let start = i;
        while i < b.len() && !is_ws(b[i]) && b[i] != b'=' {
            i += 1;
        }
        let end = i;
        let (prefix, _) = split_qname(&s[start..end])?;
        while i < b.len() && is_ws(b[i]) {
            i += 1;
        }
        if b.get(i) != Some(&b'=') {
            return Err(nwf("expected '=' after attribute name"));
        }
        i += 1;
        while i < b.len() && is_ws(b[i]) {
            i += 1;
        }
        let quote = match b.get(i) {
            Some(&q) if q == b'\'' || q == b'"' => q,
            _ => return Err(nwf("expected quoted attribute value")),
        };
        i += 1;
        let len = b[i..].iter().position(|&c| c == quote).ok_or_else(|| nwf("unterminated attribute value"))?;
        let raw = &s[i..i + len];
        if raw.as_bytes().contains(&b'<') {
            return Err(nwf("'<' in attribute value"));
        }
        // Namespace declarations and ordinary attributes are limited
        // separately, so that re-serialising (which may move declarations)
        // stays within the same limit.
        let is_decl = prefix == "xmlns" || &s[start..end] == "xmlns";
        let count = if is_decl { &mut decls } else { &mut plain };
        if *count >= max {
            return Err(Error::TooManyAttrs);
        }
        *count += 1;
        // Most values hold no reference and no white space to normalise: they
        // are taken as they are (inline, without allocating, up to 24 bytes).
        let value = if raw.bytes().any(|c| matches!(c, b'&' | b'\t' | b'\n' | b'\r')) {
            let mut value = String::with_capacity(raw.len());
            decode_attr(raw, &mut value)?;
            CompactString::from(value)
        } else {
            CompactString::from(raw)
        };
        out.push(RawAttr { start, end, prefix_len: prefix.len(), value, decl: false });
        i += len + 1;
    }
}

/// Checks `S 'version' Eq VersionNum (S 'encoding' Eq EncName)?
/// (S 'standalone' Eq ('yes'|'no'))? S?` (XML 1.0 §2.8, §4.3.3).
fn parse_xml_decl(s: &str) -> Result<(), Error> {
    const NAMES: [&str; 3] = ["version", "encoding", "standalone"];
    let b = s.as_bytes();
    let mut i = 0;
    let mut next_name = 0; // index into NAMES of the earliest allowed name
    let bad = || nwf("malformed XML declaration");
    loop {
        let ws_start = i;
        while i < b.len() && is_ws(b[i]) {
            i += 1;
        }
        if i == b.len() {
            break;
        }
        if i == ws_start {
            return Err(bad());
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let name = &s[start..i];
        let idx = NAMES.iter().position(|n| *n == name).ok_or_else(bad)?;
        if idx < next_name || (next_name == 0 && idx != 0) {
            return Err(bad());
        }
        next_name = idx + 1;
        while i < b.len() && is_ws(b[i]) {
            i += 1;
        }
        if b.get(i) != Some(&b'=') {
            return Err(bad());
        }
        i += 1;
        while i < b.len() && is_ws(b[i]) {
            i += 1;
        }
        let quote = match b.get(i) {
            Some(&q) if q == b'\'' || q == b'"' => q,
            _ => return Err(bad()),
        };
        i += 1;
        let len = b[i..].iter().position(|&c| c == quote).ok_or_else(bad)?;
        let value = &s[i..i + len];
        i += len + 1;
        match idx {
            0 => {
                let minor = value.strip_prefix("1.").ok_or_else(bad)?;
                if minor.is_empty() || !minor.bytes().all(|c| c.is_ascii_digit()) {
                    return Err(bad());
                }
            }
            1 => {
                let vb = value.as_bytes();
                let valid = vb.first().is_some_and(u8::is_ascii_alphabetic)
                    && vb.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
                if !valid {
                    return Err(bad());
                }
                if !value.eq_ignore_ascii_case("UTF-8") {
                    return Err(Error::UnsupportedEncoding);
                }
            }
            _ => {
                if value != "yes" && value != "no" {
                    return Err(bad());
                }
            }
        }
    }
    if next_name == 0 {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_xml_decl;
    use crate::Error;

    #[test]
    fn xml_decl() {
        assert!(parse_xml_decl(" version='1.0'").is_ok());
        assert!(parse_xml_decl(" version=\"1.0\" encoding='utf-8' standalone='yes' ").is_ok());
        assert!(parse_xml_decl(" version = '1.1' encoding = 'UTF-8'").is_ok());
        assert_eq!(parse_xml_decl(" version='1.0' encoding='ISO-8859-1'"), Err(Error::UnsupportedEncoding));
        for bad in [
            "",
            " ",
            " encoding='UTF-8'",
            " version='2.0'",
            " version='1.'",
            " version='1.0'encoding='UTF-8'",
            " version='1.0' encoding='UTF-8' version='1.0'",
            " version='1.0' standalone='yes' encoding='UTF-8'",
            " version='1.0' standalone='maybe'",
            " version='1.0' foo='bar'",
            " version='1.0",
            " version='1.0' encoding='8bit'",
        ] {
            assert!(matches!(parse_xml_decl(bad), Err(Error::NotWellFormed(_))), "{bad:?}");
        }
    }
}
