//! The unknown-user secret (RFC 5802 §9 recommends not revealing whether a user exists):
//! once set, fake salts are derived from it. Its own test binary because the secret is
//! process-global.

use meerkat_sasl::{set_unknown_user_secret, ChannelBinding, HashAlg, ScramServer};

fn fake_server_first(user: &str) -> Vec<u8> {
    let mut s = ScramServer::with_nonce_suffix(HashAlg::Sha512, false, false, ChannelBinding::None, "S");
    s.handle_client_first(format!("n,,n={user},r=C").as_bytes()).unwrap();
    s.server_first(None).unwrap()
}

#[test]
fn configured_secret_is_used_and_cannot_be_replaced() {
    assert!(set_unknown_user_secret([42; 32]));
    assert!(!set_unknown_user_secret([43; 32]));
    let a = fake_server_first("ghost");
    assert_eq!(a, fake_server_first("ghost"));
    assert_ne!(a, fake_server_first("ghost2"));
    assert!(a.starts_with(b"r=CS,s=") && a.ends_with(b",i=4096"));
}
