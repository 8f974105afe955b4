//! Character classes of XML 1.0 (Fifth Edition) and Namespaces in XML 1.0.
//!
//! * `Char` (XML 1.0 §2.2): tab, LF, CR, U+0020–U+D7FF, U+E000–U+FFFD,
//!   U+10000–U+10FFFF. Everything else (C0 controls, U+FFFE, U+FFFF; the
//!   surrogates cannot occur in valid UTF-8) makes a document not
//!   well-formed, which RFC 6120 §11.2 maps to `<not-well-formed/>`.
//! * `S` (XML 1.0 §2.3): space, tab, CR, LF.
//! * `NameStartChar` / `NameChar` (XML 1.0 §2.3, Fifth Edition ranges) and
//!   `NCName` / `QName` (Namespaces in XML §3: at most one colon, which
//!   separates two non-empty NCNames).

use crate::error::{nwf, Error};

/// `S` of XML 1.0 §2.3.
#[inline]
pub(crate) fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// `Char` of XML 1.0 §2.2.
#[inline]
pub(crate) fn is_xml_char(c: u32) -> bool {
    matches!(c, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
}

/// Validates that `bytes` is UTF-8 made only of XML `Char`s and returns it
/// as a `&str`.
///
/// One pass over the bytes: invalid UTF-8 is rejected by the standard
/// library's (vectorised) validator, then a byte loop rejects C0 controls and
/// the encodings of U+FFFE / U+FFFF (`EF BF BE`, `EF BF BF`). No other
/// non-`Char` code point is representable in valid UTF-8.
pub(crate) fn validate(bytes: &[u8]) -> Result<&str, Error> {
    let s = std::str::from_utf8(bytes).map_err(|_| nwf("invalid UTF-8"))?;
    let mut i = 0;
    while i < bytes.len() {
        // Eight bytes at a time while they are printable ASCII (most text and
        // markup): no C0 control and no 0xEF among them.
        if let Some(word) = bytes.get(i..i + 8) {
            let w = u64::from_le_bytes(word.try_into().unwrap_or_default());
            if w & HIGH == 0 && w.wrapping_sub(LOW * 0x20) & !w & HIGH == 0 {
                i += 8;
                continue;
            }
        }
        let b = bytes[i];
        if b < 0x20 {
            if !matches!(b, b'\t' | b'\n' | b'\r') {
                return Err(nwf("invalid character"));
            }
        } else if b == 0xEF && bytes.get(i + 1) == Some(&0xBF) && matches!(bytes.get(i + 2), Some(0xBE | 0xBF)) {
            return Err(nwf("invalid character"));
        }
        i += 1;
    }
    Ok(s)
}

/// 0x01 in every byte of a word (for tests of eight bytes at once).
pub(crate) const LOW: u64 = u64::from_ne_bytes([1; 8]);
/// 0x80 in every byte of a word.
pub(crate) const HIGH: u64 = LOW * 0x80;

/// `NameStartChar` of XML 1.0 §2.3 without the colon (i.e. of an NCName).
#[inline]
fn is_ncname_start(c: char) -> bool {
    match c {
        'a'..='z' | 'A'..='Z' | '_' => true,
        '\0'..='\u{7F}' => false,
        _ => matches!(c as u32,
            0xC0..=0xD6 | 0xD8..=0xF6 | 0xF8..=0x2FF | 0x370..=0x37D | 0x37F..=0x1FFF
            | 0x200C..=0x200D | 0x2070..=0x218F | 0x2C00..=0x2FEF | 0x3001..=0xD7FF
            | 0xF900..=0xFDCF | 0xFDF0..=0xFFFD | 0x10000..=0xEFFFF),
    }
}

/// `NameChar` of XML 1.0 §2.3 without the colon.
#[inline]
fn is_ncname_char(c: char) -> bool {
    match c {
        'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '-' | '.' => true,
        '\0'..='\u{7F}' => false,
        _ => is_ncname_start(c) || matches!(c as u32, 0xB7 | 0x300..=0x36F | 0x203F..=0x2040),
    }
}

/// Validates an NCName (a name without colon).
pub(crate) fn check_ncname(s: &str) -> Result<(), Error> {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if is_ncname_start(c) => {}
        Some(':') => return Err(nwf("misplaced colon in name")),
        _ => return Err(nwf("invalid name")),
    }
    if chars.all(is_ncname_char) {
        Ok(())
    } else {
        Err(nwf("invalid name"))
    }
}

/// Validates a QName (Namespaces in XML §4) and splits it into
/// `(prefix, local)`; the prefix is `""` when there is none.
pub(crate) fn split_qname(s: &str) -> Result<(&str, &str), Error> {
    match s.find(':') {
        None => {
            check_ncname(s)?;
            Ok(("", s))
        }
        Some(i) => {
            let (prefix, local) = (&s[..i], &s[i + 1..]);
            check_ncname(prefix)?;
            check_ncname(local)?;
            Ok((prefix, local))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(split_qname("a").ok(), Some(("", "a")));
        assert_eq!(split_qname("stream:stream").ok(), Some(("stream", "stream")));
        assert_eq!(split_qname("x-y.z_1").ok(), Some(("", "x-y.z_1")));
        assert_eq!(split_qname("été").ok(), Some(("", "été")));
        assert_eq!(split_qname("名前").ok(), Some(("", "名前")));
        for bad in ["", "1a", "-a", ":a", "a:", "a:b:c", "a b", "a\u{D7}", ".a", "a:1"] {
            assert!(split_qname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn chars() {
        assert!(validate(b"abc\t\r\n").is_ok());
        assert!(validate("\u{FFFD}\u{10FFFF}".as_bytes()).is_ok());
        assert!(validate(b"a\x00").is_err());
        assert!(validate(b"a\x1b").is_err());
        assert!(validate("\u{FFFE}".as_bytes()).is_err());
        assert!(validate("\u{FFFF}".as_bytes()).is_err());
        assert!(validate(b"\xED\xA0\x80").is_err()); // encoded surrogate
        assert!(validate(b"\xC3").is_err());
        // The eight-byte steps: a bad byte at every offset of a long text.
        let text = b"The quick brown fox jumps over the lazy dog. 0123456789".to_vec();
        assert!(validate(&text).is_ok());
        for at in 0..text.len() {
            for bad in [&b"\x00"[..], b"\x1f", b"\x08", "\u{FFFE}".as_bytes(), "\u{FFFF}".as_bytes()] {
                let mut t = text.clone();
                t.splice(at..at + 1, bad.iter().copied());
                assert!(validate(&t).is_err(), "{bad:?} at {at}");
            }
            let mut t = text.clone();
            t.splice(at..at + 1, "\u{FFFD}\t\n\r".bytes());
            assert!(validate(&t).is_ok(), "allowed at {at}");
        }
    }
}
