//! Server side of SCRAM (RFC 5802 §5, §7; RFC 7677 for SHA-256) and of the channel-bound
//! `-PLUS` variants with `tls-exporter` (RFC 9266), as a state machine the caller drives:
//! client-first → (storage lookup) → server-first → client-final → server-final.
//!
//! Unknown users get a plausible server-first whose salt is derived from the username and
//! a server secret (so repeated attempts see the same salt, as for a real account) and
//! fail only at client-final, with [`Failure::NotAuthorized`], after the same amount of
//! work as a wrong password.

use std::fmt;
use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use subtle::ConstantTimeEq;

use crate::attr::{check_extensions, decode_saslname, expect_attr, message_str, valid_nonce};
use crate::saslprep::saslprep;
use crate::{AuthRequest, ChannelBinding, Failure, HashAlg, ScramKeys, DEFAULT_ITERATIONS};

/// The only channel-binding type this implementation supports (RFC 9266).
pub(crate) const TLS_EXPORTER: &str = "tls-exporter";

/// Number of random bytes in the server's nonce suffix (base64-encoded to 32 characters).
const SERVER_NONCE_BYTES: usize = 24;

/// Length of the fake salt shown for unknown users (what `StoredCredentials::from_password`
/// uses for real accounts).
const FAKE_SALT_LEN: usize = 16;

static UNKNOWN_USER_SECRET: OnceLock<[u8; 32]> = OnceLock::new();

/// Sets the secret from which fake salts for unknown users are derived. Call it once at
/// startup with a persistent secret (e.g. from configuration or the database) so the fake
/// salt of a non-existent account stays the same across restarts, like a real one does.
/// Without it a random secret is generated on first use (fake salts then change at every
/// restart, which lets a patient attacker tell them apart). Returns `false` if a secret
/// was already set or generated; the earlier one stays in force.
pub fn set_unknown_user_secret(secret: [u8; 32]) -> bool {
    UNKNOWN_USER_SECRET.set(secret).is_ok()
}

fn unknown_user_secret() -> Result<&'static [u8; 32], Failure> {
    if let Some(s) = UNKNOWN_USER_SECRET.get() {
        return Ok(s);
    }
    let mut fresh = [0u8; 32];
    getrandom::fill(&mut fresh).map_err(|_| Failure::TemporaryAuthFailure)?;
    // If another thread won the race its secret is kept; either way it is set now.
    let _ = UNKNOWN_USER_SECRET.set(fresh);
    UNKNOWN_USER_SECRET.get().ok_or(Failure::TemporaryAuthFailure)
}

/// Deterministic stand-in keys for a user that does not exist.
fn fake_keys(alg: HashAlg, authcid: &str) -> Result<ScramKeys, Failure> {
    let secret = unknown_user_secret()?;
    let label = |what: &str| {
        let mut m = Vec::with_capacity(32 + authcid.len());
        m.extend_from_slice(b"meerkat-scram-unknown-user\0");
        m.extend_from_slice(what.as_bytes());
        m.push(0);
        m.extend_from_slice(alg.name().as_bytes());
        m.push(0);
        m.extend_from_slice(authcid.as_bytes());
        m
    };
    let mut salt = HashAlg::Sha256.hmac(secret, &label("salt"));
    salt.truncate(FAKE_SALT_LEN);
    Ok(ScramKeys {
        salt,
        iterations: DEFAULT_ITERATIONS,
        stored_key: alg.hmac(secret, &label("stored-key")),
        server_key: alg.hmac(secret, &label("server-key")),
    })
}

/// What the client-first message established.
struct ClientFirst {
    /// The GS2 header exactly as sent (`n,,`, `y,,`, `p=tls-exporter,a=…,`).
    gs2_header: String,
    /// Whether the client used channel binding (`p=`), so cb-data follows the header in `c=`.
    bound: bool,
    /// client-first-message-bare, for the AuthMessage.
    bare: String,
    /// The client's nonce.
    cnonce: String,
    /// The prepared username (for fake keys).
    authcid: String,
}

enum State {
    Start,
    GotClientFirst(ClientFirst),
    SentServerFirst {
        first: ClientFirst,
        server_first: String,
        nonce: String,
        keys: ScramKeys,
        known: bool,
    },
    /// Finished (successfully or not): every further call fails.
    Done,
}

/// Server side of SCRAM (RFC 5802 §5, RFC 7677), a state machine driven by the caller:
/// [`handle_client_first`](Self::handle_client_first), then (after looking the user up)
/// [`server_first`](Self::server_first), then [`handle_client_final`](Self::handle_client_final).
/// Any error ends the exchange: later calls fail with [`Failure::MalformedRequest`], as do
/// calls out of order.
pub struct ScramServer {
    alg: HashAlg,
    plus: bool,
    plus_advertised: bool,
    cb: ChannelBinding,
    nonce_suffix: Option<String>,
    state: State,
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Start => "start",
            State::GotClientFirst(_) => "got-client-first",
            State::SentServerFirst { .. } => "sent-server-first",
            State::Done => "done",
        };
        f.debug_struct("ScramServer")
            .field("alg", &self.alg)
            .field("plus", &self.plus)
            .field("plus_advertised", &self.plus_advertised)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl ScramServer {
    /// Starts an exchange. `plus` = the -PLUS variant was selected; `cb` = what TLS offers;
    /// `plus_advertised` = whether the server advertised any -PLUS mechanism on this
    /// connection (for downgrade detection per RFC 5802 §6: a client sending `y` while the
    /// server did advertise PLUS fails with [`Failure::NotAuthorized`]).
    pub fn new(alg: HashAlg, plus: bool, plus_advertised: bool, cb: ChannelBinding) -> Self {
        ScramServer { alg, plus, plus_advertised, cb, nonce_suffix: None, state: State::Start }
    }

    /// Like [`new`](Self::new) but with a fixed server nonce suffix instead of a random one.
    /// For reproducing the RFC test vectors only: a fixed nonce defeats replay protection.
    #[doc(hidden)]
    pub fn with_nonce_suffix(
        alg: HashAlg,
        plus: bool,
        plus_advertised: bool,
        cb: ChannelBinding,
        suffix: &str,
    ) -> Self {
        ScramServer { nonce_suffix: Some(suffix.to_owned()), ..Self::new(alg, plus, plus_advertised, cb) }
    }

    /// Parses client-first (RFC 5802 §7 `client-first-message`) and returns who wants to
    /// log in so the caller can look the credentials up.
    ///
    /// Failures: oversized or non-UTF-8 message, bad GS2 header, `a=`/`n=` not a valid
    /// saslname (only `=2C` and `=3D` escapes), empty username, reserved `m=`, bad nonce,
    /// `p=` on a non-PLUS mechanism, a PLUS mechanism without `p=` →
    /// [`Failure::MalformedRequest`]. A channel-binding type other than `tls-exporter`,
    /// `p=` when TLS offers no binding, `y` while PLUS was advertised (downgrade), or a
    /// username that SASLprep rejects → [`Failure::NotAuthorized`].
    pub fn handle_client_first(&mut self, msg: &[u8]) -> Result<AuthRequest, Failure> {
        if !matches!(self.state, State::Start) {
            self.state = State::Done;
            return Err(Failure::MalformedRequest);
        }
        self.state = State::Done;
        let (first, request) = self.parse_client_first(msg)?;
        self.state = State::GotClientFirst(first);
        Ok(request)
    }

    fn parse_client_first(&self, msg: &[u8]) -> Result<(ClientFirst, AuthRequest), Failure> {
        let s = message_str(msg)?;
        let mut parts = s.splitn(3, ',');
        let (Some(flag), Some(authz), Some(bare)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Failure::MalformedRequest);
        };
        let gs2_header = &s[..flag.len() + authz.len() + 2];

        // gs2-cbind-flag = ("p=" cb-name) / "n" / "y"
        enum Flag<'a> {
            N,
            Y,
            P(&'a str),
        }
        let flag = match flag {
            "n" => Flag::N,
            "y" => Flag::Y,
            f => match f.strip_prefix("p=") {
                Some(name)
                    if !name.is_empty()
                        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') =>
                {
                    Flag::P(name)
                }
                _ => return Err(Failure::MalformedRequest),
            },
        };
        let authzid = match authz {
            "" => None,
            a => Some(decode_saslname(a.strip_prefix("a=").ok_or(Failure::MalformedRequest)?)?),
        };

        // client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
        let mut attrs = bare.split(',');
        let first = attrs.next();
        if first.is_some_and(|a| a.starts_with("m=")) {
            return Err(Failure::MalformedRequest);
        }
        let username = decode_saslname(expect_attr(first, b'n')?)?;
        let cnonce = expect_attr(attrs.next(), b'r')?;
        if !valid_nonce(cnonce) {
            return Err(Failure::MalformedRequest);
        }
        check_extensions(attrs)?;

        // Channel-binding policy (RFC 5802 §6).
        match flag {
            Flag::P(_) if !self.plus => return Err(Failure::MalformedRequest),
            Flag::P(name) if name != TLS_EXPORTER => return Err(Failure::NotAuthorized),
            Flag::P(_) if !matches!(self.cb, ChannelBinding::TlsExporter(_)) => return Err(Failure::NotAuthorized),
            Flag::N | Flag::Y if self.plus => return Err(Failure::MalformedRequest),
            Flag::Y if self.plus_advertised => return Err(Failure::NotAuthorized),
            _ => {}
        }

        let authcid = saslprep(&username).filter(|u| !u.is_empty()).ok_or(Failure::NotAuthorized)?;
        let first = ClientFirst {
            gs2_header: gs2_header.to_owned(),
            bound: matches!(flag, Flag::P(_)),
            bare: bare.to_owned(),
            cnonce: cnonce.to_owned(),
            authcid: authcid.clone(),
        };
        Ok((first, AuthRequest { authcid, authzid }))
    }

    /// Continues with the stored keys for that user and returns server-first
    /// (`r=<client nonce><server nonce>,s=<salt>,i=<iterations>`). The salt and the
    /// iteration count are those of `keys`.
    ///
    /// `None` = unknown user: a plausible server-first is still produced, with a fake salt
    /// derived deterministically from the username and a server secret (see
    /// [`set_unknown_user_secret`]) and [`DEFAULT_ITERATIONS`], and the exchange then fails
    /// at client-final with [`Failure::NotAuthorized`].
    ///
    /// Fails with [`Failure::TemporaryAuthFailure`] if `keys` are unusable (zero iterations,
    /// empty salt, key lengths not matching the hash) or no randomness is available.
    pub fn server_first(&mut self, keys: Option<&ScramKeys>) -> Result<Vec<u8>, Failure> {
        let State::GotClientFirst(first) = std::mem::replace(&mut self.state, State::Done) else {
            return Err(Failure::MalformedRequest);
        };
        let (keys, known) = match keys {
            Some(k) => {
                let n = self.alg.output_len();
                if k.iterations == 0 || k.salt.is_empty() || k.stored_key.len() != n || k.server_key.len() != n {
                    return Err(Failure::TemporaryAuthFailure);
                }
                (k.clone(), true)
            }
            None => (fake_keys(self.alg, &first.authcid)?, false),
        };
        let suffix = match &self.nonce_suffix {
            Some(s) => s.clone(),
            None => {
                let mut raw = [0u8; SERVER_NONCE_BYTES];
                getrandom::fill(&mut raw).map_err(|_| Failure::TemporaryAuthFailure)?;
                B64.encode(raw)
            }
        };
        let nonce = format!("{}{}", first.cnonce, suffix);
        let server_first = format!("r={nonce},s={},i={}", B64.encode(&keys.salt), keys.iterations);
        let out = server_first.clone().into_bytes();
        self.state = State::SentServerFirst { first, server_first, nonce, keys, known };
        Ok(out)
    }

    /// Verifies client-final (RFC 5802 §7 `client-final-message`: channel binding, nonce,
    /// proof) and returns server-final (`v=<ServerSignature>`), to be sent in `<success/>`.
    ///
    /// Failures: oversized or non-UTF-8 message, attributes missing or out of order, bad
    /// base64 in `c=`/`p=`, a proof of the wrong length, reserved `m=` →
    /// [`Failure::MalformedRequest`]; `c=` not exactly base64(gs2-header + cb-data), a
    /// nonce other than the combined one, a wrong proof, or an unknown user →
    /// [`Failure::NotAuthorized`].
    pub fn handle_client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, Failure> {
        let State::SentServerFirst { first, server_first, nonce, keys, known } =
            std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(Failure::MalformedRequest);
        };
        let alg = self.alg;
        let s = message_str(msg)?;

        // client-final-message = channel-binding "," nonce ["," extensions] "," proof
        let (without_proof, proof_attr) = s.rsplit_once(',').ok_or(Failure::MalformedRequest)?;
        let proof = expect_attr(Some(proof_attr), b'p')?;
        let mut attrs = without_proof.split(',');
        let cbind = expect_attr(attrs.next(), b'c')?;
        let client_nonce = expect_attr(attrs.next(), b'r')?;
        check_extensions(attrs)?;
        let cbind = B64.decode(cbind).map_err(|_| Failure::MalformedRequest)?;
        let proof = B64.decode(proof).map_err(|_| Failure::MalformedRequest)?;
        if proof.len() != alg.output_len() {
            return Err(Failure::MalformedRequest);
        }

        let mut expected_cbind = first.gs2_header.as_bytes().to_vec();
        if first.bound {
            match &self.cb {
                ChannelBinding::TlsExporter(data) => expected_cbind.extend_from_slice(data),
                // Unreachable: handle_client_first refuses `p=` without exporter data.
                _ => return Err(Failure::NotAuthorized),
            }
        }
        let cb_ok = cbind.len() == expected_cbind.len() && bool::from(cbind.ct_eq(&expected_cbind));
        let nonce_ok = client_nonce == nonce;

        let auth_message = format!("{},{},{}", first.bare, server_first, without_proof);
        let client_signature = alg.hmac(&keys.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(&client_signature).map(|(p, s)| p ^ s).collect();
        let proof_ok: bool = alg.hash(&client_key).ct_eq(&keys.stored_key).into();

        if !(cb_ok && nonce_ok && proof_ok && known) {
            return Err(Failure::NotAuthorized);
        }
        let server_signature = alg.hmac(&keys.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(alg: HashAlg, salt_b64: &str) -> ScramKeys {
        ScramKeys::derive(alg, "pencil", &B64.decode(salt_b64).unwrap(), 4096)
    }

    #[test]
    fn rfc5802_server_side() {
        let mut s =
            ScramServer::with_nonce_suffix(HashAlg::Sha1, false, false, ChannelBinding::None, "3rfcNHYJY1ZVvWVs7j");
        let req = s.handle_client_first(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL").unwrap();
        assert_eq!(req, AuthRequest { authcid: "user".into(), authzid: None });
        let sf = s.server_first(Some(&keys(HashAlg::Sha1, "QSXCR+Q6sek8bf92"))).unwrap();
        assert_eq!(sf, b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096");
        let sfinal = s
            .handle_client_final(b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=")
            .unwrap();
        assert_eq!(sfinal, b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=");
        // The exchange is over.
        assert_eq!(s.handle_client_final(b"c=biws"), Err(Failure::MalformedRequest));
    }

    #[test]
    fn out_of_order_calls() {
        let mut s = ScramServer::new(HashAlg::Sha256, false, false, ChannelBinding::None);
        assert_eq!(s.server_first(None), Err(Failure::MalformedRequest));
        let mut s = ScramServer::new(HashAlg::Sha256, false, false, ChannelBinding::None);
        assert_eq!(s.handle_client_final(b"c=biws,r=x,p=AAAA"), Err(Failure::MalformedRequest));
        let mut s = ScramServer::new(HashAlg::Sha256, false, false, ChannelBinding::None);
        s.handle_client_first(b"n,,n=user,r=abc").unwrap();
        assert_eq!(s.handle_client_first(b"n,,n=user,r=abc"), Err(Failure::MalformedRequest));
        assert_eq!(s.server_first(None), Err(Failure::MalformedRequest));
    }

    #[test]
    fn failed_client_first_ends_exchange() {
        let mut s = ScramServer::new(HashAlg::Sha256, false, false, ChannelBinding::None);
        assert_eq!(s.handle_client_first(b"x,,n=user,r=abc"), Err(Failure::MalformedRequest));
        assert_eq!(s.handle_client_first(b"n,,n=user,r=abc"), Err(Failure::MalformedRequest));
    }

    #[test]
    fn unusable_keys() {
        let mut s = ScramServer::new(HashAlg::Sha256, false, false, ChannelBinding::None);
        s.handle_client_first(b"n,,n=user,r=abc").unwrap();
        // SHA-1-sized keys offered to a SHA-256 exchange.
        let k = keys(HashAlg::Sha1, "QSXCR+Q6sek8bf92");
        assert_eq!(s.server_first(Some(&k)), Err(Failure::TemporaryAuthFailure));
    }

    #[test]
    fn fake_salt_is_deterministic_and_per_user() {
        let a = fake_keys(HashAlg::Sha256, "alice").unwrap();
        let a2 = fake_keys(HashAlg::Sha256, "alice").unwrap();
        let b = fake_keys(HashAlg::Sha256, "bob").unwrap();
        let a1 = fake_keys(HashAlg::Sha1, "alice").unwrap();
        assert_eq!(a, a2);
        assert_ne!(a.salt, b.salt);
        assert_ne!(a.salt, a1.salt);
        assert_eq!(a.salt.len(), FAKE_SALT_LEN);
        assert_eq!(a.stored_key.len(), 32);
        assert_eq!(a1.stored_key.len(), 20);
        assert_eq!(a.iterations, DEFAULT_ITERATIONS);
    }

    #[test]
    fn debug_hides_keys() {
        let mut s = ScramServer::new(HashAlg::Sha1, false, false, ChannelBinding::None);
        s.handle_client_first(b"n,,n=user,r=abc").unwrap();
        s.server_first(Some(&keys(HashAlg::Sha1, "QSXCR+Q6sek8bf92"))).unwrap();
        let d = format!("{s:?}");
        assert!(d.contains("sent-server-first") && !d.contains("stored_key"), "{d}");
    }
}
