//! Client side of SCRAM (RFC 5802 §5, §7; RFC 7677) with optional `tls-exporter` channel
//! binding (RFC 9266), for the benchmark tool and the tests. The password is used as given
//! (not SASLprep'ed), matching how `ScramKeys::derive` computes the stored keys.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use subtle::ConstantTimeEq;

use crate::attr::{check_extensions, encode_saslname, expect_attr, message_str, split_attr, valid_nonce};
use crate::saslprep::saslprep;
use crate::scram_server::TLS_EXPORTER;
use crate::{ChannelBinding, Failure, HashAlg, Mechanism};

/// The largest iteration count the client accepts from a server (a hostile server could
/// otherwise make it spin for hours).
pub const MAX_CLIENT_ITERATIONS: u32 = 1_000_000;

/// Client side of SCRAM: [`client_first`](Self::client_first), then
/// [`handle_server_first`](Self::handle_server_first), then
/// [`verify_server_final`](Self::verify_server_final).
pub struct ScramClient {
    alg: HashAlg,
    username: String,
    password: String,
    authzid: Option<String>,
    cb: ChannelBinding,
    cnonce: String,
    gs2_header: String,
    client_first_bare: Option<String>,
    server_signature: Option<Vec<u8>>,
}

impl std::fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramClient")
            .field("mechanism", &self.mechanism())
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl ScramClient {
    /// Prepares an exchange. `cb` picks the variant: `TlsExporter` → the -PLUS mechanism with
    /// `p=tls-exporter`; `None` → `n,,` (no TLS); `Unsupported` → `y,,` (the client could
    /// bind but the channel offers nothing usable). Use [`mechanism`](Self::mechanism) for
    /// the name to put in `<auth/>`.
    pub fn new(alg: HashAlg, username: &str, password: &str, cb: ChannelBinding) -> Self {
        let mut raw = [0u8; 24];
        getrandom::fill(&mut raw).expect("the OS random source is available");
        Self::with_nonce(alg, username, password, cb, &B64.encode(raw))
    }

    /// Like [`new`](Self::new) with a fixed client nonce, to reproduce RFC test vectors.
    #[doc(hidden)]
    pub fn with_nonce(alg: HashAlg, username: &str, password: &str, cb: ChannelBinding, cnonce: &str) -> Self {
        ScramClient {
            alg,
            username: username.to_owned(),
            password: password.to_owned(),
            authzid: None,
            cb,
            cnonce: cnonce.to_owned(),
            gs2_header: String::new(),
            client_first_bare: None,
            server_signature: None,
        }
    }

    /// Requests an authorization identity (sent as `a=` in the GS2 header). Call it before
    /// [`client_first`](Self::client_first).
    pub fn with_authzid(mut self, authzid: &str) -> Self {
        self.authzid = Some(authzid.to_owned());
        self
    }

    /// The mechanism to select: `SCRAM-<hash>-PLUS` with `tls-exporter` binding data,
    /// plain `SCRAM-<hash>` otherwise.
    pub fn mechanism(&self) -> Mechanism {
        Mechanism::Scram { alg: self.alg, plus: matches!(self.cb, ChannelBinding::TlsExporter(_)) }
    }

    /// The client-first message: `gs2-header n=<user>,r=<nonce>`. The username is
    /// SASLprep'ed when possible (RFC 5802 §5.1) and saslname-escaped.
    pub fn client_first(&mut self) -> Vec<u8> {
        let flag = match self.cb {
            ChannelBinding::TlsExporter(_) => format!("p={TLS_EXPORTER}"),
            ChannelBinding::None => "n".to_owned(),
            ChannelBinding::Unsupported => "y".to_owned(),
        };
        let authz = self.authzid.as_deref().map(|a| format!("a={}", encode_saslname(a))).unwrap_or_default();
        self.gs2_header = format!("{flag},{authz},");
        let user = saslprep(&self.username).unwrap_or_else(|| self.username.clone());
        let bare = format!("n={},r={}", encode_saslname(&user), self.cnonce);
        let out = format!("{}{}", self.gs2_header, bare).into_bytes();
        self.client_first_bare = Some(bare);
        out
    }

    /// Checks server-first and computes client-final (`c=…,r=…,p=<ClientProof>`).
    ///
    /// Failures: called before [`client_first`](Self::client_first) or twice, malformed
    /// message, bad salt, an iteration count of 0 or above [`MAX_CLIENT_ITERATIONS`], a
    /// reserved `m=` → [`Failure::MalformedRequest`]; a server error (`e=`) or a nonce that
    /// does not extend the client's → [`Failure::NotAuthorized`].
    pub fn handle_server_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, Failure> {
        let bare = match (&self.client_first_bare, &self.server_signature) {
            (Some(b), None) => b.clone(),
            _ => return Err(Failure::MalformedRequest),
        };
        let s = message_str(msg)?;
        // server-first-message = [reserved-mext ","] nonce "," salt "," iteration-count ["," extensions]
        let mut attrs = s.split(',');
        let first = attrs.next();
        match first.map(split_attr).transpose()? {
            Some((b'e', _)) => return Err(Failure::NotAuthorized),
            Some((b'm', _)) => return Err(Failure::MalformedRequest),
            _ => {}
        }
        let nonce = expect_attr(first, b'r')?;
        if !valid_nonce(nonce) {
            return Err(Failure::MalformedRequest);
        }
        if nonce.len() <= self.cnonce.len() || !nonce.starts_with(&self.cnonce) {
            return Err(Failure::NotAuthorized);
        }
        let salt = B64.decode(expect_attr(attrs.next(), b's')?).map_err(|_| Failure::MalformedRequest)?;
        let iterations: u32 = expect_attr(attrs.next(), b'i')?.parse().map_err(|_| Failure::MalformedRequest)?;
        if salt.is_empty() || iterations == 0 || iterations > MAX_CLIENT_ITERATIONS {
            return Err(Failure::MalformedRequest);
        }
        check_extensions(attrs)?;

        let alg = self.alg;
        let salted = alg.salted_password(self.password.as_bytes(), &salt, iterations);
        let client_key = alg.hmac(&salted, b"Client Key");
        let stored_key = alg.hash(&client_key);
        let mut cbind = self.gs2_header.as_bytes().to_vec();
        if let ChannelBinding::TlsExporter(data) = &self.cb {
            cbind.extend_from_slice(data);
        }
        let without_proof = format!("c={},r={}", B64.encode(&cbind), nonce);
        let auth_message = format!("{bare},{s},{without_proof}");
        let client_signature = alg.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&client_signature).map(|(k, s)| k ^ s).collect();
        let server_key = alg.hmac(&salted, b"Server Key");
        self.server_signature = Some(alg.hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Verifies server-final (`v=<ServerSignature>`, the `<success/>` payload): proves the
    /// server knew the ServerKey. A server error (`e=`) or a wrong signature →
    /// [`Failure::NotAuthorized`]; anything unparsable or a call before
    /// [`handle_server_first`](Self::handle_server_first) → [`Failure::MalformedRequest`].
    pub fn verify_server_final(&self, msg: &[u8]) -> Result<(), Failure> {
        let expected = self.server_signature.as_ref().ok_or(Failure::MalformedRequest)?;
        let s = message_str(msg)?;
        let mut attrs = s.split(',');
        let first = attrs.next();
        if let Some((b'e', _)) = first.map(split_attr).transpose()? {
            return Err(Failure::NotAuthorized);
        }
        let v = B64.decode(expect_attr(first, b'v')?).map_err(|_| Failure::MalformedRequest)?;
        check_extensions(attrs)?;
        if v.len() == expected.len() && bool::from(v.ct_eq(expected)) {
            Ok(())
        } else {
            Err(Failure::NotAuthorized)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc5802_client_side() {
        let mut c =
            ScramClient::with_nonce(HashAlg::Sha1, "user", "pencil", ChannelBinding::None, "fyko+d2lbbFgONRv9qkxdawL");
        assert_eq!(c.mechanism().name(), "SCRAM-SHA-1");
        assert_eq!(c.client_first(), b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL");
        let cf =
            c.handle_server_first(b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096").unwrap();
        assert_eq!(cf, b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=");
        assert_eq!(c.verify_server_final(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ="), Ok(()));
        assert_eq!(c.verify_server_final(b"v=rmF9pqV8S7suAoZWja4dJRkFsKA="), Err(Failure::NotAuthorized));
        assert_eq!(c.verify_server_final(b"e=invalid-proof"), Err(Failure::NotAuthorized));
        assert_eq!(c.verify_server_final(b"v=!!"), Err(Failure::MalformedRequest));
    }

    #[test]
    fn bad_server_first() {
        let fresh = || {
            let mut c = ScramClient::with_nonce(HashAlg::Sha1, "user", "pencil", ChannelBinding::None, "abc");
            c.client_first();
            c
        };
        for (m, f) in [
            (&b"e=unknown-user"[..], Failure::NotAuthorized),
            (b"r=xyzdef,s=QSXCR+Q6sek8bf92,i=4096", Failure::NotAuthorized),
            (b"r=abc,s=QSXCR+Q6sek8bf92,i=4096", Failure::NotAuthorized),
            (b"m=x,r=abcdef,s=QSXCR+Q6sek8bf92,i=4096", Failure::MalformedRequest),
            (b"r=abcdef,s=QSXCR+Q6sek8bf92,i=0", Failure::MalformedRequest),
            (b"r=abcdef,s=QSXCR+Q6sek8bf92,i=99999999", Failure::MalformedRequest),
            (b"r=abcdef,s=,i=4096", Failure::MalformedRequest),
            (b"r=abcdef,s=***,i=4096", Failure::MalformedRequest),
            (b"r=abcdef,i=4096,s=QSXCR+Q6sek8bf92", Failure::MalformedRequest),
            (b"r=abcdef,s=QSXCR+Q6sek8bf92", Failure::MalformedRequest),
        ] {
            assert_eq!(fresh().handle_server_first(m), Err(f), "{}", String::from_utf8_lossy(m));
        }
        let mut c = ScramClient::with_nonce(HashAlg::Sha1, "user", "pencil", ChannelBinding::None, "abc");
        assert_eq!(c.handle_server_first(b"r=abcdef,s=QSXCR+Q6sek8bf92,i=1"), Err(Failure::MalformedRequest));
        assert_eq!(c.verify_server_final(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ="), Err(Failure::MalformedRequest));
    }

    #[test]
    fn gs2_headers() {
        let first = |cb, authzid: Option<&str>| {
            let mut c = ScramClient::with_nonce(HashAlg::Sha256, "a,b=c", "p", cb, "N");
            if let Some(a) = authzid {
                c = c.with_authzid(a);
            }
            String::from_utf8(c.client_first()).unwrap()
        };
        assert_eq!(first(ChannelBinding::None, None), "n,,n=a=2Cb=3Dc,r=N");
        assert_eq!(first(ChannelBinding::Unsupported, None), "y,,n=a=2Cb=3Dc,r=N");
        assert_eq!(
            first(ChannelBinding::TlsExporter(vec![1; 32]), Some("x=y,z")),
            "p=tls-exporter,a=x=3Dy=2Cz,n=a=2Cb=3Dc,r=N"
        );
    }
}
