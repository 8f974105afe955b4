//! SASL PLAIN (RFC 4616): `[authzid] NUL authcid NUL passwd`, in one message from the
//! client. Only the parsing is done here; the caller checks the password against the
//! stored credentials (`StoredCredentials::verify_password`) and the authzid against the
//! account. RFC 6120 §6.4 requires PLAIN to be offered only over TLS; that is the caller's
//! policy too.

use crate::attr::message_str;
use crate::saslprep::saslprep;
use crate::{AuthRequest, Failure};

/// Parses a PLAIN message (server side, RFC 4616 §2).
///
/// - more than [`MAX_MESSAGE_LEN`](crate::MAX_MESSAGE_LEN) bytes, not UTF-8, not exactly
///   three NUL-separated fields, empty authcid or empty password → [`Failure::MalformedRequest`];
/// - authcid containing a character SASLprep prohibits, or empty after SASLprep →
///   [`Failure::NotAuthorized`].
///
/// The authcid is SASLprep'ed (see [`crate::saslprep`]); an empty authzid becomes `None`;
/// the password is returned verbatim (stored keys are derived from the unprepared
/// password, see `ScramKeys::derive`).
pub fn parse_plain(msg: &[u8]) -> Result<(AuthRequest, String), Failure> {
    let s = message_str(msg)?;
    let mut fields = s.split('\0');
    let (Some(authzid), Some(authcid), Some(password), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(Failure::MalformedRequest);
    };
    if authcid.is_empty() || password.is_empty() {
        return Err(Failure::MalformedRequest);
    }
    let authcid = saslprep(authcid).filter(|a| !a.is_empty()).ok_or(Failure::NotAuthorized)?;
    let authzid = (!authzid.is_empty()).then(|| authzid.to_owned());
    Ok((AuthRequest { authcid, authzid }, password.to_owned()))
}

/// Builds a PLAIN message (client side): `[authzid] NUL username NUL password`.
pub fn plain_client_message(authzid: Option<&str>, username: &str, password: &str) -> Vec<u8> {
    let authzid = authzid.unwrap_or("");
    let mut out = Vec::with_capacity(authzid.len() + username.len() + password.len() + 2);
    out.extend_from_slice(authzid.as_bytes());
    out.push(0);
    out.extend_from_slice(username.as_bytes());
    out.push(0);
    out.extend_from_slice(password.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(authcid: &str, authzid: Option<&str>) -> AuthRequest {
        AuthRequest { authcid: authcid.into(), authzid: authzid.map(Into::into) }
    }

    #[test]
    fn rfc4616_examples() {
        // RFC 4616 §4.
        assert_eq!(parse_plain(b"\0tim\0tanstaaftanstaaf"), Ok((req("tim", None), "tanstaaftanstaaf".into())));
        assert_eq!(parse_plain(b"Ursel\0Kurt\0xipj3plmq"), Ok((req("Kurt", Some("Ursel")), "xipj3plmq".into())));
    }

    #[test]
    fn client_message_roundtrip() {
        let m = plain_client_message(Some("juliet@example.com"), "juliet", "r0m30");
        assert_eq!(m, b"juliet@example.com\0juliet\0r0m30");
        assert_eq!(parse_plain(&m), Ok((req("juliet", Some("juliet@example.com")), "r0m30".into())));
        assert_eq!(plain_client_message(None, "a", "b"), b"\0a\0b");
    }

    #[test]
    fn saslprep_applies_to_authcid_only() {
        let (r, p) = parse_plain("\0ju\u{00AD}liet\0pass\u{00A0}word".as_bytes()).unwrap();
        assert_eq!(r.authcid, "juliet");
        assert_eq!(p, "pass\u{00A0}word");
    }

    #[test]
    fn malformed() {
        for m in [&b""[..], b"\0", b"\0\0", b"\0user\0", b"\0\0pass", b"a\0b\0c\0d", b"user\0pass", b"\0\xff\0p"] {
            assert_eq!(parse_plain(m), Err(Failure::MalformedRequest), "{m:?}");
        }
        let mut big = b"\0user\0".to_vec();
        big.resize(crate::MAX_MESSAGE_LEN + 1, b'x');
        assert_eq!(parse_plain(&big), Err(Failure::MalformedRequest));
        assert_eq!(parse_plain(b"\0us\x07er\0pass"), Err(Failure::NotAuthorized));
        assert_eq!(parse_plain("\0\u{00AD}\0pass".as_bytes()), Err(Failure::NotAuthorized));
    }
}
