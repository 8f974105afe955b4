//! Stored SCRAM credentials (RFC 5802 §3): salt, iteration count, StoredKey and
//! ServerKey per hash. Passwords are never stored; PLAIN logins are checked by
//! deriving the StoredKey from the offered password.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

/// Iteration count for newly set passwords (RFC 7677 §4 recommends at least 4096).
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// The hash functions SCRAM is offered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlg {
    /// SCRAM-SHA-1 (RFC 5802).
    Sha1,
    /// SCRAM-SHA-256 (RFC 7677).
    Sha256,
    /// SCRAM-SHA-512.
    Sha512,
}

impl HashAlg {
    /// Every algorithm, strongest first.
    pub const ALL: [HashAlg; 3] = [HashAlg::Sha512, HashAlg::Sha256, HashAlg::Sha1];

    /// Name used in the stored-credentials format and in mechanism names.
    pub fn name(self) -> &'static str {
        match self {
            HashAlg::Sha1 => "SHA-1",
            HashAlg::Sha256 => "SHA-256",
            HashAlg::Sha512 => "SHA-512",
        }
    }

    /// Output length of the hash in bytes (20, 32 or 64): the length of StoredKey,
    /// ServerKey, ClientProof and ServerSignature.
    pub fn output_len(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha256 => 32,
            HashAlg::Sha512 => 64,
        }
    }

    /// `H(data)`.
    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            HashAlg::Sha1 => Sha1::digest(data).to_vec(),
            HashAlg::Sha256 => Sha256::digest(data).to_vec(),
            HashAlg::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// `HMAC(key, data)`.
    pub fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        fn run<M: Mac + KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
            let mut m = <M as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
        match self {
            HashAlg::Sha1 => run::<Hmac<Sha1>>(key, data),
            HashAlg::Sha256 => run::<Hmac<Sha256>>(key, data),
            HashAlg::Sha512 => run::<Hmac<Sha512>>(key, data),
        }
    }

    /// `Hi(password, salt, i)` = PBKDF2-HMAC (RFC 5802 §2.2).
    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            HashAlg::Sha1 => {
                let mut out = [0u8; 20];
                pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, iterations, &mut out);
                out.to_vec()
            }
            HashAlg::Sha256 => {
                let mut out = [0u8; 32];
                pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
                out.to_vec()
            }
            HashAlg::Sha512 => {
                let mut out = [0u8; 64];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
                out.to_vec()
            }
        }
    }
}

/// SCRAM keys for one hash function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramKeys {
    /// Random salt.
    pub salt: Vec<u8>,
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// `H(ClientKey)`.
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: Vec<u8>,
}

impl ScramKeys {
    /// Derives the keys from a password.
    pub fn derive(alg: HashAlg, password: &str, salt: &[u8], iterations: u32) -> Self {
        let salted = alg.salted_password(password.as_bytes(), salt, iterations);
        let client_key = alg.hmac(&salted, b"Client Key");
        ScramKeys {
            salt: salt.to_vec(),
            iterations,
            stored_key: alg.hash(&client_key),
            server_key: alg.hmac(&salted, b"Server Key"),
        }
    }

    /// Whether `password` derives to the same StoredKey (constant-time compare).
    pub fn verify_password(&self, alg: HashAlg, password: &str) -> bool {
        let salted = alg.salted_password(password.as_bytes(), &self.salt, self.iterations);
        let stored = alg.hash(&alg.hmac(&salted, b"Client Key"));
        stored.ct_eq(&self.stored_key).into()
    }
}

/// An account's credentials: SCRAM keys for every supported hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCredentials {
    /// SCRAM-SHA-1 keys.
    pub sha1: ScramKeys,
    /// SCRAM-SHA-256 keys.
    pub sha256: ScramKeys,
    /// SCRAM-SHA-512 keys.
    pub sha512: ScramKeys,
}

/// Why a stored credentials string could not be read.
#[derive(Debug, thiserror::Error)]
#[error("malformed stored credentials: {0}")]
pub struct CredentialsFormatError(&'static str);

impl StoredCredentials {
    /// Derives keys for every hash from `password` with fresh random salts.
    pub fn from_password(password: &str, iterations: u32) -> Self {
        let salt = |n: usize| {
            let mut s = vec![0u8; n];
            getrandom::fill(&mut s).expect("the OS random source is available");
            s
        };
        StoredCredentials {
            sha1: ScramKeys::derive(HashAlg::Sha1, password, &salt(16), iterations),
            sha256: ScramKeys::derive(HashAlg::Sha256, password, &salt(16), iterations),
            sha512: ScramKeys::derive(HashAlg::Sha512, password, &salt(16), iterations),
        }
    }

    /// The keys for one hash.
    pub fn keys(&self, alg: HashAlg) -> &ScramKeys {
        match alg {
            HashAlg::Sha1 => &self.sha1,
            HashAlg::Sha256 => &self.sha256,
            HashAlg::Sha512 => &self.sha512,
        }
    }

    /// Checks a plaintext password (SASL PLAIN) against the SHA-256 keys.
    pub fn verify_password(&self, password: &str) -> bool {
        self.sha256.verify_password(HashAlg::Sha256, password)
    }

    /// Serialises to the one-line text form backends store:
    /// `scram1;SHA-1:<iter>:<salt>:<stored>:<server>;SHA-256:…;SHA-512:…` (base64 fields).
    pub fn to_storage_string(&self) -> String {
        let mut s = String::from("scram1");
        for alg in [HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha512] {
            let k = self.keys(alg);
            s.push(';');
            s.push_str(alg.name());
            s.push(':');
            s.push_str(&k.iterations.to_string());
            for part in [&k.salt, &k.stored_key, &k.server_key] {
                s.push(':');
                s.push_str(&B64.encode(part));
            }
        }
        s
    }

    /// Parses [`to_storage_string`](Self::to_storage_string)'s output.
    pub fn from_storage_string(s: &str) -> Result<Self, CredentialsFormatError> {
        let mut parts = s.split(';');
        if parts.next() != Some("scram1") {
            return Err(CredentialsFormatError("unknown format tag"));
        }
        let mut read = |alg: HashAlg| -> Result<ScramKeys, CredentialsFormatError> {
            let p = parts.next().ok_or(CredentialsFormatError("missing hash entry"))?;
            let mut f = p.split(':');
            if f.next() != Some(alg.name()) {
                return Err(CredentialsFormatError("hash entries out of order"));
            }
            let iterations =
                f.next().and_then(|i| i.parse().ok()).ok_or(CredentialsFormatError("bad iteration count"))?;
            let mut b = || f.next().and_then(|x| B64.decode(x).ok()).ok_or(CredentialsFormatError("bad base64 field"));
            Ok(ScramKeys { iterations, salt: b()?, stored_key: b()?, server_key: b()? })
        };
        Ok(StoredCredentials {
            sha1: read(HashAlg::Sha1)?,
            sha256: read(HashAlg::Sha256)?,
            sha512: read(HashAlg::Sha512)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc5802_sha1_keys() {
        // RFC 5802 §5: user "user", password "pencil", salt QSXCR+Q6sek8bf92, i=4096.
        let salt = B64.decode("QSXCR+Q6sek8bf92").unwrap();
        let k = ScramKeys::derive(HashAlg::Sha1, "pencil", &salt, 4096);
        // ServerSignature in the RFC is HMAC(ServerKey, AuthMessage); check ServerKey via it.
        let auth = b"n=user,r=fyko+d2lbbFgONRv9qkxdawL,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096,c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j";
        let sig = HashAlg::Sha1.hmac(&k.server_key, auth);
        assert_eq!(B64.encode(sig), "rmF9pqV8S7suAoZWja4dJRkFsKQ=");
        assert!(k.verify_password(HashAlg::Sha1, "pencil"));
        assert!(!k.verify_password(HashAlg::Sha1, "pencil2"));
    }

    #[test]
    fn storage_string_roundtrip() {
        let c = StoredCredentials::from_password("secret", 64);
        let s = c.to_storage_string();
        assert!(!s.contains("secret"));
        assert_eq!(StoredCredentials::from_storage_string(&s).unwrap(), c);
        assert!(StoredCredentials::from_storage_string("plain:secret").is_err());
        assert!(c.verify_password("secret"));
        assert!(!c.verify_password("Secret"));
    }
}
