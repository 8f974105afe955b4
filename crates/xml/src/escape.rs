//! Escaping for output and entity decoding for input.
//!
//! RFC 6120 §11.1 allows only the five predefined entities of XML 1.0 §4.6
//! (`&amp;` `&lt;` `&gt;` `&apos;` `&quot;`) and character references
//! (XML 1.0 §4.1, `&#NN;` / `&#xHH;`, which must designate a `Char`). Any
//! other entity reference is restricted XML. Decoding also applies the
//! end-of-line handling of XML 1.0 §2.11 (CR LF and lone CR become LF) and,
//! for attribute values, the normalisation of XML 1.0 §3.3.3 (literal tab,
//! CR, LF become a space; a CR LF pair becomes one space).
//!
//! Output escaping is chosen so that parse → write → parse is the identity:
//! CR in text and tab/CR/LF in attribute values are written as character
//! references, because their literal forms would be normalised away.

use crate::chars::{is_xml_char, split_qname, HIGH, LOW};
use crate::error::{nwf, Error};

/// Something the serialiser can append UTF-8 text to.
pub(crate) trait Sink {
    /// Appends `s`.
    fn put(&mut self, s: &str);
}

impl Sink for String {
    #[inline]
    fn put(&mut self, s: &str) {
        self.push_str(s);
    }
}

impl Sink for Vec<u8> {
    #[inline]
    fn put(&mut self, s: &str) {
        self.extend_from_slice(s.as_bytes());
    }
}

#[inline]
fn text_escape(b: u8) -> Option<&'static str> {
    match b {
        b'&' => Some("&amp;"),
        b'<' => Some("&lt;"),
        b'>' => Some("&gt;"),
        b'\r' => Some("&#xD;"),
        _ => None,
    }
}

#[inline]
fn attr_escape(b: u8) -> Option<&'static str> {
    match b {
        b'&' => Some("&amp;"),
        b'<' => Some("&lt;"),
        b'>' => Some("&gt;"),
        b'\'' => Some("&apos;"),
        b'"' => Some("&quot;"),
        b'\t' => Some("&#x9;"),
        b'\n' => Some("&#xA;"),
        b'\r' => Some("&#xD;"),
        _ => None,
    }
}

/// Whether the eight bytes of `w` may hold one that [`attr_escape`] replaces:
/// a byte below 0x28 (tab, LF, CR, `"`, `&`, `'` and a few others) or `<` /
/// `>` (0x3C, 0x3E: equal once bit 1 is set). Never false when one is there;
/// JIDs, ids and names (letters, digits, `@./-:_`) pass in one test.
#[inline]
fn may_escape_attr(w: u64) -> bool {
    let below = w.wrapping_sub(LOW * 0x28) & !w;
    let angle = (w | (LOW * 0x02)) ^ (LOW * 0x3E);
    (below | (angle.wrapping_sub(LOW) & !angle)) & HIGH != 0
}

/// Copies `s` to `out` escaped for an attribute value: eight bytes at a time
/// while [`may_escape_attr`] clears them, else byte by byte. Runs of ordinary
/// bytes are copied as whole slices; all escaped bytes are ASCII, so the slice
/// boundaries are always char boundaries.
fn escape_attr_with<S: Sink>(s: &str, out: &mut S) {
    let bytes = s.as_bytes();
    let mut run = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(word) = bytes.get(i..i + 8) {
            if !may_escape_attr(u64::from_le_bytes(word.try_into().unwrap_or_default())) {
                i += 8;
                continue;
            }
        }
        if let Some(rep) = attr_escape(bytes[i]) {
            out.put(&s[run..i]);
            out.put(rep);
            run = i + 1;
        }
        i += 1;
    }
    out.put(&s[run..]);
}

/// Appends `s` escaped for use as character data (element text):
/// `&`, `<`, `>` become entity references and CR becomes `&#xD;`.
pub fn escape_text(s: &str, out: &mut String) {
    escape_text_to(s, out);
}

/// Appends `s` escaped for use inside a quoted attribute value (either
/// quote style): `&`, `<`, `>`, `'`, `"` become entity references and tab,
/// LF, CR become character references (so they survive attribute-value
/// normalisation on the receiving side).
pub fn escape_attr(s: &str, out: &mut String) {
    escape_attr_with(s, out);
}

pub(crate) fn escape_text_to<S: Sink>(s: &str, out: &mut S) {
    // Text is often long and seldom escaped: searched for the four bytes with
    // memchr (16 or 32 bytes per step) instead of a test per byte.
    let bytes = s.as_bytes();
    let end = bytes.len();
    let find_cr = |from: usize| memchr::memchr(b'\r', &bytes[from..]).map_or(end, |p| from + p);
    let mut cr = find_cr(0);
    let mut run = 0;
    loop {
        let next = memchr::memchr3(b'&', b'<', b'>', &bytes[run..cr]).map_or(cr, |p| run + p);
        if next == end {
            out.put(&s[run..]);
            return;
        }
        out.put(&s[run..next]);
        out.put(text_escape(bytes[next]).unwrap_or_default());
        run = next + 1;
        if next == cr {
            cr = find_cr(run);
        }
    }
}

pub(crate) fn escape_attr_to<S: Sink>(s: &str, out: &mut S) {
    escape_attr_with(s, out);
}

/// Decodes the reference starting at `s[0] == '&'`, appends its value and
/// returns the number of bytes consumed.
fn decode_ref(s: &str, out: &mut String) -> Result<usize, Error> {
    // Longest legal reference body: "#x10FFFF" or a long entity name; the
    // search is bounded by the token the caller already delimited.
    let end = match s.as_bytes().iter().position(|&b| b == b';') {
        Some(e) => e,
        None => return Err(nwf("unterminated entity reference")),
    };
    let body = &s[1..end];
    let ch = match body {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "apos" => '\'',
        "quot" => '"',
        _ => {
            if let Some(num) = body.strip_prefix('#') {
                let (digits, radix) = match num.strip_prefix('x') {
                    Some(hex) => (hex, 16),
                    None => (num, 10),
                };
                if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| (b as char).is_digit(radix)) {
                    return Err(nwf("invalid character reference"));
                }
                let code = u32::from_str_radix(digits, radix).map_err(|_| nwf("invalid character reference"))?;
                match char::from_u32(code) {
                    Some(c) if is_xml_char(code) => c,
                    _ => return Err(nwf("character reference to a non-XML character")),
                }
            } else if split_qname(body).is_ok() {
                return Err(Error::Restricted("entity reference"));
            } else {
                return Err(nwf("invalid entity reference"));
            }
        }
    };
    out.push(ch);
    Ok(end + 1)
}

/// Decodes character data (text between tags): references, end-of-line
/// handling, and rejection of the literal `]]>` (XML 1.0 §2.4).
pub(crate) fn decode_text(s: &str, out: &mut String) -> Result<(), Error> {
    let bytes = s.as_bytes();
    let mut run = 0;
    let mut i = 0;
    while i < bytes.len() {
        // The next byte that is not copied as it is (memchr: many bytes per step).
        let Some(at) = memchr::memchr3(b'&', b'\r', b'>', &bytes[i..]) else { break };
        i += at;
        match bytes[i] {
            b'&' => {
                out.push_str(&s[run..i]);
                i += decode_ref(&s[i..], out)?;
                run = i;
            }
            b'\r' => {
                out.push_str(&s[run..i]);
                out.push('\n');
                i += 1;
                if bytes.get(i) == Some(&b'\n') {
                    i += 1;
                }
                run = i;
            }
            b'>' if i >= 2 && &bytes[i - 2..i] == b"]]" => {
                return Err(nwf("']]>' in character data"));
            }
            _ => i += 1,
        }
    }
    out.push_str(&s[run..]);
    Ok(())
}

/// Decodes the content of a CDATA section: only end-of-line handling.
pub(crate) fn decode_cdata(s: &str, out: &mut String) {
    let mut parts = s.split('\r');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    for part in parts {
        out.push('\n');
        out.push_str(part.strip_prefix('\n').unwrap_or(part));
    }
}

/// Decodes an attribute value (without its quotes): references and
/// attribute-value normalisation (XML 1.0 §3.3.3). The caller has checked
/// that the value contains no `<`.
pub(crate) fn decode_attr(s: &str, out: &mut String) -> Result<(), Error> {
    let bytes = s.as_bytes();
    let mut run = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'&' => {
                out.push_str(&s[run..i]);
                i += decode_ref(&s[i..], out)?;
                run = i;
            }
            b'\t' | b'\n' | b'\r' => {
                out.push_str(&s[run..i]);
                out.push(' ');
                if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                i += 1;
                run = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(&s[run..]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Result<String, Error> {
        let mut out = String::new();
        decode_text(s, &mut out).map(|()| out)
    }

    fn attr(s: &str) -> Result<String, Error> {
        let mut out = String::new();
        decode_attr(s, &mut out).map(|()| out)
    }

    #[test]
    fn decode() {
        assert_eq!(text("a &amp; b &lt;&gt;&apos;&quot;").unwrap(), "a & b <>'\"");
        assert_eq!(text("&#65;&#x42;&#x1F600;").unwrap(), "AB😀");
        assert_eq!(text("a\r\nb\rc\n").unwrap(), "a\nb\nc\n");
        assert_eq!(text("]]"), Ok("]]".into()));
        assert!(matches!(text("a]]>b"), Err(Error::NotWellFormed(_))));
        assert_eq!(text("&foo;"), Err(Error::Restricted("entity reference")));
        assert!(matches!(text("&#0;"), Err(Error::NotWellFormed(_))));
        assert!(matches!(text("&#xD800;"), Err(Error::NotWellFormed(_))));
        assert!(matches!(text("&#xFFFE;"), Err(Error::NotWellFormed(_))));
        assert!(matches!(text("&#x110000;"), Err(Error::NotWellFormed(_))));
        assert!(matches!(text("&#99999999999;"), Err(Error::NotWellFormed(_))));
        assert!(matches!(text("&amp"), Err(Error::NotWellFormed(_))));
        assert!(matches!(text("a & b"), Err(Error::NotWellFormed(_))));
        assert!(matches!(text("&#;"), Err(Error::NotWellFormed(_))));
        assert!(matches!(text("&#x;"), Err(Error::NotWellFormed(_))));
        assert!(matches!(text("&;"), Err(Error::NotWellFormed(_))));
        assert_eq!(attr("a\tb\r\nc\rd\ne&#9;").unwrap(), "a b c d e\t");
    }

    /// What the fast paths must produce: every byte through `table`, one by one.
    fn byte_by_byte(s: &str, table: fn(u8) -> Option<&'static str>) -> String {
        let mut out = String::new();
        for c in s.chars() {
            let escaped = if c.is_ascii() { table(c as u8) } else { None };
            out.push_str(escaped.unwrap_or(c.encode_utf8(&mut [0; 4])));
        }
        out
    }

    #[test]
    fn escape() {
        let mut s = String::new();
        escape_text("a<b>&c'\"\r", &mut s);
        assert_eq!(s, "a&lt;b&gt;&amp;c'\"&#xD;");
        // Every mix of the escaped bytes, around and between runs of text, and a
        // carriage return before, among and after the others.
        for t in ["", "plain", "\r", "\r\r<", "<\r>", "x\ry&z\r", "&&<<>>", "long text without any \r then <b>"] {
            let mut s = String::new();
            escape_text(t, &mut s);
            assert_eq!(s, byte_by_byte(t, text_escape), "{t:?}");
            assert_eq!(text(&s).as_deref(), Ok(t), "decodes back: {t:?}");
        }
        let mut s = String::new();
        escape_attr("a<b>&c'\"\t\n\ré", &mut s);
        assert_eq!(s, "a&lt;b&gt;&amp;c&apos;&quot;&#x9;&#xA;&#xD;é");
        // The eight-byte test, at every offset of a long value, for every byte
        // that is escaped and a few that are not.
        let jid = "user123@conference.example.org/résource-1:x_y";
        for at in 0..jid.len() {
            if !jid.is_char_boundary(at) {
                continue;
            }
            for c in ['<', '>', '&', '\'', '"', '\t', '\n', '\r', '=', ' ', ';', '?', 'é'] {
                let mut v = jid.to_owned();
                v.insert(at, c);
                let mut s = String::new();
                escape_attr(&v, &mut s);
                assert_eq!(s, byte_by_byte(&v, attr_escape), "{c:?} at {at}");
            }
        }
    }
}
