//! Roster groups as one JSON text column.
//!
//! Groups are free text (any character, including quotes, backslashes and newlines),
//! and their order matters, so they are stored as a JSON array of strings: readable by
//! SQLite's own `json_each()` for operators, and encoded and decoded here without a
//! JSON dependency. The decoder accepts any valid JSON array of strings (whitespace,
//! every escape form, surrogate pairs), not only what [`encode`] writes.

use std::fmt::Write as _;

/// Encodes groups as a JSON array of strings.
pub(crate) fn encode(groups: &[String]) -> String {
    let mut out = String::with_capacity(2 + groups.iter().map(|g| g.len() + 3).sum::<usize>());
    out.push('[');
    for (i, g) in groups.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for c in g.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push(']');
    out
}

/// Decodes a JSON array of strings; the error names what is wrong.
pub(crate) fn decode(s: &str) -> Result<Vec<String>, &'static str> {
    let mut p = Parser { chars: s.chars().peekable() };
    p.skip_ws();
    if p.chars.next() != Some('[') {
        return Err("expected '['");
    }
    let mut out = Vec::new();
    p.skip_ws();
    if p.chars.peek() == Some(&']') {
        p.chars.next();
    } else {
        loop {
            p.skip_ws();
            out.push(p.string()?);
            p.skip_ws();
            match p.chars.next() {
                Some(',') => continue,
                Some(']') => break,
                _ => return Err("expected ',' or ']'"),
            }
        }
    }
    p.skip_ws();
    if p.chars.next().is_some() {
        return Err("trailing characters after the array");
    }
    Ok(out)
}

struct Parser<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while matches!(self.chars.peek(), Some(' ' | '\t' | '\n' | '\r')) {
            self.chars.next();
        }
    }

    fn string(&mut self) -> Result<String, &'static str> {
        if self.chars.next() != Some('"') {
            return Err("expected a string");
        }
        let mut out = String::new();
        loop {
            match self.chars.next().ok_or("unterminated string")? {
                '"' => return Ok(out),
                '\\' => {
                    let c = match self.chars.next().ok_or("unterminated escape")? {
                        '"' => '"',
                        '\\' => '\\',
                        '/' => '/',
                        'b' => '\u{8}',
                        'f' => '\u{c}',
                        'n' => '\n',
                        'r' => '\r',
                        't' => '\t',
                        'u' => self.unicode_escape()?,
                        _ => return Err("unknown escape"),
                    };
                    out.push(c);
                }
                c if (c as u32) < 0x20 => return Err("unescaped control character"),
                c => out.push(c),
            }
        }
    }

    /// The character of a `\u` escape (the `\u` already consumed), joining surrogate pairs.
    fn unicode_escape(&mut self) -> Result<char, &'static str> {
        let hi = self.hex4()?;
        if (0xD800..0xDC00).contains(&hi) {
            if self.chars.next() != Some('\\') || self.chars.next() != Some('u') {
                return Err("unpaired high surrogate");
            }
            let lo = self.hex4()?;
            if !(0xDC00..0xE000).contains(&lo) {
                return Err("invalid low surrogate");
            }
            let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
            return char::from_u32(c).ok_or("invalid surrogate pair");
        }
        char::from_u32(hi).ok_or("unpaired low surrogate")
    }

    fn hex4(&mut self) -> Result<u32, &'static str> {
        let mut v = 0;
        for _ in 0..4 {
            let d = self.chars.next().and_then(|c| c.to_digit(16)).ok_or("bad \\u escape")?;
            v = v * 16 + d;
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn roundtrip() {
        for groups in [
            v(&[]),
            v(&[""]),
            v(&["", ""]),
            v(&["Friends", "Work"]),
            v(&["q\"uote", "back\\slash", "new\nline", "\r\t\u{1}\u{1f}", "[\"x\"]", ", ]"]),
            v(&["日本語", "🐈‍⬛", "\u{7f}", "\u{2028}"]),
        ] {
            let enc = encode(&groups);
            assert_eq!(decode(&enc).unwrap(), groups, "{enc}");
        }
    }

    #[test]
    fn encoding_is_plain_json() {
        assert_eq!(encode(&v(&["a", "b\"c"])), r#"["a","b\"c"]"#);
        assert_eq!(encode(&v(&[])), "[]");
        assert_eq!(encode(&v(&["\u{1}"])), r#"["\u0001"]"#);
    }

    #[test]
    fn decodes_foreign_json() {
        assert_eq!(decode(" [ \"a\" , \"\\u00e9\\/\" ] ").unwrap(), v(&["a", "é/"]));
        assert_eq!(decode(r#"["\ud83d\ude00"]"#).unwrap(), v(&["😀"]));
        assert_eq!(decode(r#"["\b\f"]"#).unwrap(), v(&["\u{8}\u{c}"]));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "[", "[\"a\"", "[\"a\",]", "[a]", "[\"a\"] x", "{}", r#"["\ud83d"]"#, r#"["\x"]"#, "[\"\n\"]"] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }
}
