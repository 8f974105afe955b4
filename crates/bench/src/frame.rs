//! A light framer for the measured phase: splits what the server sends into
//! top-level elements and reads the bench-stamped messages without building a tree.
//!
//! A generator that parses every delivery with the strict decoder spends as much
//! CPU per message as the server it measures (on two shared cores, that CPU is
//! taken from the server, and its own lateness adds to the times it measures).
//! Messages are the bulk of what arrives in the measured phase, so only they take
//! this path: the framer finds where the top-level element ends (tags, quoted
//! attribute values; nothing else can hold a `<` or `>` in well-formed XML), and a
//! `<message>` whose direct child is `<bench xmlns='urn:meerkat:bench' …/>` is read
//! from its two start tags. Every other element is handed, complete, to the strict
//! decoder; anything the framer does not expect at the top level (a comment, a
//! processing instruction, text, the stream's end tag) hands the rest of the stream
//! back to the decoder for good.

use memchr::{memchr, memchr3};

use crate::session::NS_BENCH;

/// What a bench-stamped message says (its `<bench/>` attributes, parsed as numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BenchMsg {
    /// `type='error'`: the server bounced it.
    pub error: bool,
    /// Run id.
    pub r: Option<u64>,
    /// Scheduled send time (Unix µs).
    pub t: Option<u64>,
    /// Sender's index.
    pub s: Option<u64>,
    /// Sender's message number.
    pub n: Option<u64>,
    /// Group (room) index.
    pub g: Option<u64>,
}

impl BenchMsg {
    /// From whether the message is an error and its `<bench/>` attributes.
    fn read<'a>(error: bool, attr: impl Fn(&str) -> Option<&'a str>) -> Self {
        let num = |a: &str| attr(a).and_then(|v| v.parse::<u64>().ok());
        BenchMsg { error, r: num("r"), t: num("t"), s: num("s"), n: num("n"), g: num("g") }
    }

    /// The same from a parsed message and its `<bench/>` child.
    pub fn from_element(msg: &meerkat_xml::Element, b: &meerkat_xml::Element) -> Self {
        Self::read(msg.attr("type") == Some("error"), |a| b.attr(a))
    }
}

/// The next top-level item at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// More bytes are needed (the buffer holds only whitespace or part of an element).
    Incomplete,
    /// A bench-stamped message, `len` bytes (with leading whitespace).
    Bench { len: usize, msg: BenchMsg },
    /// Another complete element: `&buf[skip..len]`, for the strict decoder.
    Element { skip: usize, len: usize },
    /// Something the framer does not handle: the decoder takes the rest of the stream.
    Unhandled,
}

/// Finds the first top-level item in `buf`.
pub fn next(buf: &[u8]) -> Frame {
    let Some(start) = buf.iter().position(|b| !b.is_ascii_whitespace()) else { return Frame::Incomplete };
    if buf[start] != b'<' {
        return Frame::Unhandled;
    }
    let mut depth = 0usize;
    let mut i = start;
    // The top-level start tag and a direct `<bench>` child's, as byte ranges.
    let mut top: Option<(usize, usize)> = None;
    let mut bench: Option<(usize, usize)> = None;
    loop {
        let Some(lt) = memchr(b'<', &buf[i..]).map(|p| i + p) else { return Frame::Incomplete };
        let Some(&c) = buf.get(lt + 1) else { return Frame::Incomplete };
        match c {
            b'/' => {
                if depth == 0 {
                    return Frame::Unhandled; // the stream's end tag
                }
                let Some(gt) = memchr(b'>', &buf[lt..]).map(|p| lt + p) else { return Frame::Incomplete };
                depth -= 1;
                i = gt + 1;
            }
            b'!' | b'?' => return Frame::Unhandled,
            _ => {
                let Some(gt) = tag_end(buf, lt + 1) else { return Frame::Incomplete };
                let empty = buf[gt - 1] == b'/';
                if depth == 0 {
                    top = Some((lt, gt));
                } else if depth == 1 && bench.is_none() && name(&buf[lt + 1..gt]) == b"bench" {
                    bench = Some((lt, gt));
                }
                if !empty {
                    depth += 1;
                }
                i = gt + 1;
            }
        }
        if depth == 0 {
            break;
        }
    }
    let len = i;
    if let (Some((ts, te)), Some((bs, be))) = (top, bench) {
        let head = &buf[ts + 1..te];
        if name(head) == b"message" {
            if let Some(msg) = bench_attrs(head, &buf[bs + 1..be]) {
                return Frame::Bench { len, msg };
            }
        }
    }
    Frame::Element { skip: start, len }
}

/// A `<bench/>` tag's numbers, read in one pass over its attributes (the first
/// of a name counts); `None` when its namespace is not the bench's.
fn bench_attrs(head: &[u8], bench: &[u8]) -> Option<BenchMsg> {
    let mut msg = BenchMsg { error: attr(head, b"type") == Some(b"error"), ..BenchMsg::default() };
    let mut ns = None;
    for (key, value) in attrs(bench) {
        let slot = match key {
            b"xmlns" => {
                ns.get_or_insert(value);
                continue;
            }
            b"r" => &mut msg.r,
            b"t" => &mut msg.t,
            b"s" => &mut msg.s,
            b"n" => &mut msg.n,
            b"g" => &mut msg.g,
            _ => continue,
        };
        if slot.is_none() {
            *slot = number(value);
        }
    }
    (ns == Some(NS_BENCH.as_bytes())).then_some(msg)
}

/// A decimal number, as `str::parse::<u64>` reads it (an optional `+`, then
/// digits, no overflow).
fn number(v: &[u8]) -> Option<u64> {
    let digits = v.strip_prefix(b"+").unwrap_or(v);
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if d.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        } else {
            None
        }
    })
}

/// The index of the `>` ending the tag whose name starts at `from` (quoted values skipped).
fn tag_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut j = from;
    loop {
        j += memchr3(b'>', b'\'', b'"', &buf[j..])?;
        match buf[j] {
            b'>' => return Some(j),
            q => j += 1 + memchr(q, &buf[j + 1..])? + 1,
        }
    }
}

/// A tag's name: what precedes the first whitespace, `/` or end.
fn name(tag: &[u8]) -> &[u8] {
    let end = tag.iter().position(|&b| b.is_ascii_whitespace() || b == b'/').unwrap_or(tag.len());
    &tag[..end]
}

/// The raw value of attribute `want` in a start tag's inside (`name a='v' …`).
fn attr<'a>(tag: &'a [u8], want: &[u8]) -> Option<&'a [u8]> {
    attrs(tag).find(|(key, _)| *key == want).map(|(_, value)| value)
}

/// The attributes of a start tag's inside, in order, as raw (name, value); the
/// iteration ends at the first malformed one.
fn attrs(tag: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut rest = &tag[name(tag).len()..];
    std::iter::from_fn(move || {
        let s = rest.iter().position(|b| !b.is_ascii_whitespace())?;
        rest = &rest[s..];
        let eq = memchr(b'=', rest)?;
        let key = rest[..eq].trim_ascii();
        rest = rest[eq + 1..].trim_ascii_start();
        let q = *rest.first()?;
        if q != b'\'' && q != b'"' {
            return None;
        }
        let end = memchr(q, &rest[1..])?;
        let value = &rest[1..1 + end];
        rest = &rest[end + 2..];
        Some((key, value))
    })
}

#[cfg(test)]
mod tests {
    use meerkat_xml::{Decoder, Framing, Limits, StreamEvent};

    use super::*;

    const STREAM: &str = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

    /// What the strict decoder makes of `items` after a stream header.
    fn strict(items: &str) -> Vec<meerkat_xml::Element> {
        let mut d = Decoder::new(Framing::Stream, Limits::default());
        d.feed(STREAM.as_bytes());
        d.feed(items.as_bytes());
        let mut out = Vec::new();
        while let Some(ev) = d.next_event().unwrap() {
            if let StreamEvent::Element(el) = ev {
                out.push(el);
            }
        }
        out
    }

    #[test]
    fn bench_messages_read_like_the_strict_decoder_reads_them() {
        let items = format!(
            "\n<message from='a@x/r' to='b@x/r' type='chat' id='s1-2'><body>a &lt;bench&gt; 'quoted' \"x\" &gt;</body>\
             <bench xmlns='{NS_BENCH}' r='7' t='1795950869721000' s='1' n='2'/><stanza-id xmlns='urn:xmpp:sid:0' by='b@x' id='X&apos;'/></message> \
             <message type=\"error\" from='x'><bench xmlns=\"{NS_BENCH}\" r=\"7\" t=\"5\" s=\"3\" n=\"4\" g=\"9\"></bench><error type='cancel'/></message>\
             <iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>\
             <message><x><bench xmlns='{NS_BENCH}' r='1' t='1' s='1' n='1'/></x></message>\
             <message><bench xmlns='other' r='1' t='1' s='1' n='1'/></message><presence/>"
        );
        let els = strict(&items);
        let mut buf = items.as_bytes();
        let mut fast = Vec::new();
        let mut parsed = Vec::new();
        loop {
            match next(buf) {
                Frame::Bench { len, msg } => {
                    fast.push((parsed.len() + fast.len(), msg));
                    buf = &buf[len..];
                }
                Frame::Element { skip, len } => {
                    parsed.push(std::str::from_utf8(&buf[skip..len]).unwrap().to_owned());
                    buf = &buf[len..];
                }
                Frame::Incomplete => break,
                Frame::Unhandled => panic!("unhandled at {:?}", std::str::from_utf8(buf)),
            }
        }
        assert!(buf.is_empty());
        assert_eq!(fast.len() + parsed.len(), els.len());
        // The first two are bench messages and read as the strict decoder reads them.
        assert_eq!(fast.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![0, 1]);
        for (i, msg) in &fast {
            let el = &els[*i];
            assert_eq!(*msg, BenchMsg::from_element(el, el.get_child("bench", NS_BENCH).unwrap()));
        }
        assert_eq!(fast[0].1.t, Some(1_795_950_869_721_000));
        assert!(fast[1].1.error && fast[1].1.g == Some(9));
        // The rest (a nested or foreign bench, other stanzas) go to the decoder whole.
        assert_eq!(parsed.len(), 4);
        assert!(parsed[0].starts_with("<iq ") && parsed[3] == "<presence/>");
        assert_eq!(strict(&parsed.concat()).len(), 4);
    }

    #[test]
    fn a_partial_element_waits_and_the_unexpected_goes_to_the_decoder() {
        let full = format!("<message type='chat'><bench xmlns='{NS_BENCH}' r='1' t='2' s='3' n='4'/></message>");
        for cut in 0..full.len() {
            assert_eq!(next(&full.as_bytes()[..cut]), Frame::Incomplete, "cut at {cut}");
        }
        assert!(matches!(next(full.as_bytes()), Frame::Bench { len, .. } if len == full.len()));
        assert_eq!(next(b"  </stream:stream>"), Frame::Unhandled);
        assert_eq!(next(b"<!-- c --><presence/>"), Frame::Unhandled);
        assert_eq!(next(b"text<presence/>"), Frame::Unhandled);
        assert_eq!(next(b" \r\n "), Frame::Incomplete);
    }

    #[test]
    fn numbers_read_as_str_parse_reads_them() {
        for v in [
            "0",
            "7",
            "+5",
            "1795950869721000",
            "18446744073709551615",
            "18446744073709551616",
            "",
            "+",
            "1a",
            "-1",
            " 1",
        ] {
            assert_eq!(number(v.as_bytes()), v.parse::<u64>().ok(), "{v:?}");
        }
    }

    #[test]
    fn a_quoted_gt_does_not_end_a_tag() {
        let tag = format!(
            "<message id='a>b' to=\"c'>d\"><bench xmlns='{NS_BENCH}' r='1' t='2' s='3' n='4' r='9'/></message>"
        );
        match next(tag.as_bytes()) {
            Frame::Bench { len, msg } => {
                assert_eq!(len, tag.len());
                assert_eq!(msg, BenchMsg { error: false, r: Some(1), t: Some(2), s: Some(3), n: Some(4), g: None });
            }
            other => panic!("{other:?}"),
        }
    }
}
