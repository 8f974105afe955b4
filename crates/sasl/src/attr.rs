//! Lexical helpers for the SCRAM message syntax of RFC 5802 §7: `attr=value` pairs,
//! `saslname` escaping (`=2C` for `,`, `=3D` for `=`), nonce characters and the overall
//! size bound applied to every message.

use crate::Failure;

/// The largest SASL message (after base64 decoding) any mechanism here accepts; longer
/// messages fail with [`Failure::MalformedRequest`].
pub const MAX_MESSAGE_LEN: usize = 4096;

/// Checks the size bound and UTF-8 validity of a whole message.
pub(crate) fn message_str(msg: &[u8]) -> Result<&str, Failure> {
    if msg.len() > MAX_MESSAGE_LEN {
        return Err(Failure::MalformedRequest);
    }
    std::str::from_utf8(msg).map_err(|_| Failure::MalformedRequest)
}

/// Splits `x=value` into (`x`, `value`); the name must be one ASCII letter.
pub(crate) fn split_attr(s: &str) -> Result<(u8, &str), Failure> {
    let b = s.as_bytes();
    if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b'=' {
        Ok((b[0], &s[2..]))
    } else {
        Err(Failure::MalformedRequest)
    }
}

/// Expects attribute `name` and returns its value.
pub(crate) fn expect_attr(s: Option<&str>, name: u8) -> Result<&str, Failure> {
    match s.map(split_attr).transpose()? {
        Some((n, v)) if n == name => Ok(v),
        _ => Err(Failure::MalformedRequest),
    }
}

/// Checks optional trailing extensions (`attr-val` list). The reserved `m=` attribute
/// is refused (RFC 5802 §5.1: its presence MUST cause authentication failure); other
/// well-formed extensions are ignored.
pub(crate) fn check_extensions<'a>(rest: impl Iterator<Item = &'a str>) -> Result<(), Failure> {
    for ext in rest {
        let (name, value) = split_attr(ext)?;
        if name == b'm' || value.is_empty() || value.contains('\0') {
            return Err(Failure::MalformedRequest);
        }
    }
    Ok(())
}

/// Whether `s` is a valid (non-empty) nonce: printable ASCII except `,`.
pub(crate) fn valid_nonce(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7E).contains(&b) && b != b',')
}

/// Decodes a `saslname`: `=2C` → `,`, `=3D` → `=`; any other `=`, a NUL or an empty
/// name is a [`Failure::MalformedRequest`].
pub(crate) fn decode_saslname(s: &str) -> Result<String, Failure> {
    if s.is_empty() {
        return Err(Failure::MalformedRequest);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(['=', ',', '\0']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("=2C") {
            out.push(',');
        } else if tail.starts_with("=3D") {
            out.push('=');
        } else {
            return Err(Failure::MalformedRequest);
        }
        rest = &tail[3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Encodes a `saslname`: `,` → `=2C`, `=` → `=3D`.
pub(crate) fn encode_saslname(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            ',' => out.push_str("=2C"),
            '=' => out.push_str("=3D"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saslname_escapes() {
        assert_eq!(decode_saslname("a=2Cb=3Dc").as_deref(), Ok("a,b=c"));
        assert_eq!(decode_saslname("=3D=3D").as_deref(), Ok("=="));
        assert_eq!(decode_saslname("=2C").as_deref(), Ok(","));
        assert_eq!(decode_saslname("plain").as_deref(), Ok("plain"));
        for bad in ["", "a=", "a=2", "a=2c", "a=3d", "a=41", "=", "a\0b", "a,b", "x=3"] {
            assert_eq!(decode_saslname(bad), Err(Failure::MalformedRequest), "{bad:?}");
        }
        assert_eq!(encode_saslname("a,b=c"), "a=2Cb=3Dc");
        assert_eq!(decode_saslname(&encode_saslname("=,x,=")).as_deref(), Ok("=,x,="));
    }

    #[test]
    fn nonces() {
        assert!(valid_nonce("fyko+d2lbbFgONRv9qkxdawL"));
        assert!(valid_nonce("%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"));
        assert!(!valid_nonce(""));
        assert!(!valid_nonce("a b"));
        assert!(!valid_nonce("a\u{e9}"));
        assert!(!valid_nonce("a\x7f"));
    }

    #[test]
    fn size_bound() {
        assert!(message_str(&[b'a'; MAX_MESSAGE_LEN]).is_ok());
        assert_eq!(message_str(&[b'a'; MAX_MESSAGE_LEN + 1]), Err(Failure::MalformedRequest));
        assert_eq!(message_str(b"\xff"), Err(Failure::MalformedRequest));
    }
}
