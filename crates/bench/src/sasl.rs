//! Client side of SASL for the simulated users: PLAIN, and SCRAM (RFC 5802 / 7677)
//! without channel binding (`n,,`) built on `meerkat_sasl::HashAlg`.
//!
//! Unlike `meerkat_sasl::ScramClient`, this one caches the PBKDF2 result per (hash,
//! salt, iteration count): accounts created with `meerkat user bulk-add` share one
//! salt, so a worker computes PBKDF2 once instead of once per login. The server never
//! runs PBKDF2 at login (it stores the derived keys), so without the cache the
//! generator would spend more CPU per login than the server it measures. What goes on
//! the wire is unchanged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use meerkat_sasl::HashAlg;

/// ClientKey, StoredKey and ServerKey for one (password, salt, iterations).
#[derive(Debug)]
struct Keys {
    client_key: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

/// (hash, salt, iterations): what the derived keys depend on besides the password.
type KeyId = (HashAlg, Vec<u8>, u32);

/// Derived SCRAM keys shared by the users of one worker (one password per run).
#[derive(Debug, Default)]
pub struct KeyCache {
    map: Mutex<HashMap<KeyId, Arc<Keys>>>,
    /// How many PBKDF2 derivations were computed (cache misses).
    pub derivations: std::sync::atomic::AtomicU64,
}

impl KeyCache {
    fn keys(&self, alg: HashAlg, password: &str, salt: &[u8], iterations: u32) -> Arc<Keys> {
        let key = (alg, salt.to_vec(), iterations);
        if let Some(k) = self.map.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return k.clone();
        }
        let salted = alg.salted_password(password.as_bytes(), salt, iterations);
        let client_key = alg.hmac(&salted, b"Client Key");
        let keys = Arc::new(Keys {
            stored_key: alg.hash(&client_key),
            client_key,
            server_key: alg.hmac(&salted, b"Server Key"),
        });
        self.derivations.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.map.lock().unwrap_or_else(|e| e.into_inner()).insert(key, keys.clone());
        keys
    }
}

/// The base64 payload of `<auth mechanism='PLAIN'>`.
pub fn plain_initial(user: &str, password: &str) -> String {
    B64.encode(meerkat_sasl::plain_client_message(None, user, password))
}

/// One SCRAM exchange: [`client_first`](Self::client_first), then
/// [`client_final`](Self::client_final), then [`verify`](Self::verify).
pub struct Scram {
    alg: HashAlg,
    cnonce: String,
    first_bare: String,
    server_signature: Option<Vec<u8>>,
}

const GS2: &str = "n,,";

impl Scram {
    /// Starts an exchange for `user` with client nonce `cnonce` (printable, no comma).
    pub fn new(alg: HashAlg, user: &str, cnonce: String) -> Self {
        let mut name = String::with_capacity(user.len());
        for c in user.chars() {
            match c {
                '=' => name.push_str("=3D"),
                ',' => name.push_str("=2C"),
                c => name.push(c),
            }
        }
        let first_bare = format!("n={name},r={cnonce}");
        Scram { alg, cnonce, first_bare, server_signature: None }
    }

    /// The base64 client-first message.
    pub fn client_first(&self) -> String {
        B64.encode(format!("{GS2}{}", self.first_bare))
    }

    /// Reads the base64 server-first message and returns the base64 client-final.
    pub fn client_final(&mut self, server_first_b64: &str, password: &str, cache: &KeyCache) -> Result<String, String> {
        let sf = B64.decode(server_first_b64.trim()).map_err(|_| "server-first is not base64")?;
        let sf = std::str::from_utf8(&sf).map_err(|_| "server-first is not UTF-8")?;
        let (mut nonce, mut salt, mut iters) = (None, None, None);
        for part in sf.split(',') {
            match part.split_once('=') {
                Some(("r", v)) => nonce = Some(v),
                Some(("s", v)) => salt = Some(v),
                Some(("i", v)) => iters = Some(v),
                Some(("e", v)) => return Err(format!("server error {v}")),
                _ => {}
            }
        }
        let nonce = nonce.ok_or("server-first without nonce")?;
        if !nonce.starts_with(&self.cnonce) || nonce.len() <= self.cnonce.len() {
            return Err("server nonce does not extend the client's".into());
        }
        let salt = B64.decode(salt.ok_or("server-first without salt")?).map_err(|_| "salt is not base64")?;
        let iters: u32 = iters.ok_or("server-first without iterations")?.parse().map_err(|_| "bad iteration count")?;
        if iters == 0 || iters > meerkat_sasl::MAX_CLIENT_ITERATIONS {
            return Err("iteration count out of range".into());
        }
        let keys = cache.keys(self.alg, password, &salt, iters);
        // c = base64("n,,") = "biws"
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{sf},{without_proof}", self.first_bare);
        let client_sig = self.alg.hmac(&keys.stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = keys.client_key.iter().zip(&client_sig).map(|(k, s)| k ^ s).collect();
        self.server_signature = Some(self.alg.hmac(&keys.server_key, auth_message.as_bytes()));
        Ok(B64.encode(format!("{without_proof},p={}", B64.encode(proof))))
    }

    /// Checks the base64 server-final (`v=…`) carried by `<success/>`.
    pub fn verify(&self, server_final_b64: &str) -> Result<(), String> {
        let expected = self.server_signature.as_ref().ok_or("success before the SCRAM exchange finished")?;
        let sf = B64.decode(server_final_b64.trim()).map_err(|_| "server-final is not base64")?;
        let sf = std::str::from_utf8(&sf).map_err(|_| "server-final is not UTF-8")?;
        let v = sf.split(',').find_map(|p| p.strip_prefix("v=")).ok_or("server-final without signature")?;
        let v = B64.decode(v).map_err(|_| "server signature is not base64")?;
        if &v == expected {
            Ok(())
        } else {
            Err("wrong server signature".into())
        }
    }
}

/// A cheap source of client nonces (a benchmark needs uniqueness, not secrecy).
#[derive(Debug)]
pub struct NonceGen(u64);

impl NonceGen {
    /// Seeded from the clock, the process id and `salt`.
    pub fn new(salt: u64) -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        NonceGen(t ^ (u64::from(std::process::id()) << 32) ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// 24 base64 characters.
    pub fn next(&mut self) -> String {
        let mut raw = [0u8; 18];
        for chunk in raw.chunks_mut(8) {
            // splitmix64
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
        B64.encode(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meerkat_sasl::{ChannelBinding, ScramServer, StoredCredentials};

    /// Runs this client against the server state machine of meerkat-sasl.
    fn exchange(creds: &StoredCredentials, alg: HashAlg, password: &str, cache: &KeyCache) -> Result<(), String> {
        let mut server = ScramServer::new(alg, false, false, ChannelBinding::None);
        let mut client = Scram::new(alg, "user1", NonceGen::new(1).next());
        let cf = B64.decode(client.client_first()).unwrap();
        let req = server.handle_client_first(&cf).map_err(|e| format!("{e:?}"))?;
        assert_eq!(req.authcid, "user1");
        let sf = server.server_first(Some(creds.keys(alg))).map_err(|e| format!("{e:?}"))?;
        let cfin = client.client_final(&B64.encode(sf), password, cache)?;
        let v = server.handle_client_final(&B64.decode(cfin).unwrap()).map_err(|e| format!("{e:?}"))?;
        client.verify(&B64.encode(v))
    }

    #[test]
    fn scram_against_the_server_state_machine() {
        let cache = KeyCache::default();
        let creds = StoredCredentials::from_password("secret", 4096);
        for alg in HashAlg::ALL {
            exchange(&creds, alg, "secret", &cache).unwrap();
            exchange(&creds, alg, "secret", &cache).unwrap();
        }
        // One derivation per algorithm: the second login of each hit the cache.
        assert_eq!(cache.derivations.load(std::sync::atomic::Ordering::Relaxed), 3);
        assert!(exchange(&creds, HashAlg::Sha256, "wrong", &KeyCache::default()).is_err());
    }

    #[test]
    fn nonces_differ_and_are_printable() {
        let mut g = NonceGen::new(7);
        let (a, b) = (g.next(), g.next());
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_graphic() && c != b','));
    }
}
