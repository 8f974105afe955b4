//! A practical subset of SASLprep (RFC 4013, a profile of stringprep, RFC 3454), used to
//! prepare usernames (RFC 5802 §5.1, RFC 4616 §2).
//!
//! What is implemented:
//! - mapping (RFC 4013 §2.1): characters "commonly mapped to nothing" (RFC 3454 table B.1)
//!   are deleted, then non-ASCII space characters (table C.1.2) are mapped to U+0020;
//! - prohibited output (RFC 4013 §2.3): ASCII and non-ASCII control characters (C.2.1,
//!   C.2.2), private-use characters (C.3), non-character code points (C.4), characters
//!   inappropriate for plain text (C.6) or canonical representation (C.7), display-changing
//!   and deprecated characters (C.8) and tagging characters (C.9) are rejected. Surrogates
//!   (C.5) cannot occur in a Rust `str`.
//!
//! What is NOT implemented, deliberately: NFKC normalisation (RFC 4013 §2.2, it needs the
//! Unicode normalisation tables), the bidirectional-text check (RFC 3454 §6) and the
//! unassigned-code-point check (table A.1). ASCII input is therefore prepared exactly as
//! full SASLprep would; non-ASCII input that full SASLprep would change by normalisation
//! is left as is.

/// Prepares `input` with the SASLprep subset described in the module documentation.
/// Returns `None` if the result would contain a prohibited character. The result may be
/// empty (e.g. the input was only soft hyphens); callers decide whether that is allowed.
pub fn saslprep(input: &str) -> Option<String> {
    let mut out = String::with_capacity(input.len());
    for c in input.chars() {
        if mapped_to_nothing(c) {
            continue;
        }
        let c = if non_ascii_space(c) { ' ' } else { c };
        if prohibited(c) {
            return None;
        }
        out.push(c);
    }
    Some(out)
}

/// RFC 3454 table B.1: commonly mapped to nothing.
fn mapped_to_nothing(c: char) -> bool {
    matches!(
        c as u32,
        0x00AD
            | 0x034F
            | 0x1806
            | 0x180B..=0x180D
            | 0x200B..=0x200D
            | 0x2060
            | 0xFE00..=0xFE0F
            | 0xFEFF
    )
}

/// RFC 3454 table C.1.2: non-ASCII space characters.
fn non_ascii_space(c: char) -> bool {
    matches!(c as u32, 0x00A0 | 0x1680 | 0x2000..=0x200B | 0x202F | 0x205F | 0x3000)
}

/// RFC 4013 §2.3 prohibited output (tables C.1.2, C.2.1, C.2.2, C.3, C.4, C.6, C.7, C.8, C.9).
fn prohibited(c: char) -> bool {
    let u = c as u32;
    // C.1.2 (only reachable if mapping were skipped) and C.2.1.
    if non_ascii_space(c) || u <= 0x1F || u == 0x7F {
        return true;
    }
    // C.4: non-character code points (U+FDD0..U+FDEF and the last two of every plane).
    if (0xFDD0..=0xFDEF).contains(&u) || (u & 0xFFFE) == 0xFFFE {
        return true;
    }
    matches!(
        u,
        // C.2.2 non-ASCII control characters.
        0x80..=0x9F
            | 0x06DD
            | 0x070F
            | 0x180E
            | 0x200C
            | 0x200D
            | 0x2028
            | 0x2029
            | 0x2060..=0x2063
            | 0x206A..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFC
            | 0x1D173..=0x1D17A
            // C.3 private use.
            | 0xE000..=0xF8FF
            | 0xF0000..=0xFFFFD
            | 0x100000..=0x10FFFD
            // C.6 inappropriate for plain text.
            | 0xFFFD
            // C.7 inappropriate for canonical representation.
            | 0x2FF0..=0x2FFB
            // C.8 change display properties or deprecated.
            | 0x0340
            | 0x0341
            | 0x200E
            | 0x200F
            | 0x202A..=0x202E
            // C.9 tagging characters.
            | 0xE0001
            | 0xE0020..=0xE007F
    )
}

#[cfg(test)]
mod tests {
    use super::saslprep;

    #[test]
    fn rfc4013_examples() {
        // RFC 4013 §3, the examples that do not need NFKC.
        assert_eq!(saslprep("I\u{00AD}X").as_deref(), Some("IX"));
        assert_eq!(saslprep("user").as_deref(), Some("user"));
        assert_eq!(saslprep("USER").as_deref(), Some("USER"));
        assert_eq!(saslprep("\u{0007}"), None);
    }

    #[test]
    fn mapping() {
        assert_eq!(saslprep("a\u{00A0}b\u{3000}c").as_deref(), Some("a b c"));
        assert_eq!(saslprep("a\u{200B}b\u{FEFF}c\u{FE0F}").as_deref(), Some("abc"));
        assert_eq!(saslprep("\u{00AD}").as_deref(), Some(""));
        assert_eq!(saslprep("jürgen").as_deref(), Some("jürgen"));
        assert_eq!(saslprep("日本").as_deref(), Some("日本"));
    }

    #[test]
    fn prohibited() {
        for s in [
            "a\0b",
            "a\nb",
            "\u{7F}",
            "\u{85}",
            "\u{E000}",
            "\u{FDD0}",
            "\u{FFFE}",
            "\u{1FFFF}",
            "\u{10FFFF}",
            "\u{FFFD}",
            "\u{202E}x",
            "\u{E0041}",
            "\u{2028}",
            "\u{2FF0}",
        ] {
            assert_eq!(saslprep(s), None, "{s:?}");
        }
    }
}
