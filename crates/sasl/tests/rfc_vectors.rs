//! The published SCRAM test vectors: RFC 5802 §5 (SCRAM-SHA-1) and RFC 7677 §3
//! (SCRAM-SHA-256), reproduced byte for byte by both the server and the client state
//! machines, with the nonces injected.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use meerkat_sasl::{AuthRequest, ChannelBinding, HashAlg, ScramClient, ScramKeys, ScramServer};

struct Vector {
    alg: HashAlg,
    cnonce: &'static str,
    snonce: &'static str,
    salt: &'static str,
    client_first: &'static str,
    server_first: &'static str,
    client_final: &'static str,
    server_final: &'static str,
}

const RFC5802: Vector = Vector {
    alg: HashAlg::Sha1,
    cnonce: "fyko+d2lbbFgONRv9qkxdawL",
    snonce: "3rfcNHYJY1ZVvWVs7j",
    salt: "QSXCR+Q6sek8bf92",
    client_first: "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
    server_first: "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
    client_final: "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
    server_final: "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
};

// The server nonce suffix is `%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0` as printed in RFC 7677 §3
// (a variant ending in `kNlF6mQMmNf` circulates but does not produce the RFC's proof).
const RFC7677: Vector = Vector {
    alg: HashAlg::Sha256,
    cnonce: "rOprNGfwEbeRWgbNEkqO",
    snonce: "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
    salt: "W22ZaJ0SNY7soEsUEjb6gQ==",
    client_first: "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
    server_first: "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
    client_final:
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
    server_final: "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
};

fn check_server(v: &Vector) {
    let keys = ScramKeys::derive(v.alg, "pencil", &B64.decode(v.salt).unwrap(), 4096);
    let mut s = ScramServer::with_nonce_suffix(v.alg, false, false, ChannelBinding::None, v.snonce);
    let req = s.handle_client_first(v.client_first.as_bytes()).unwrap();
    assert_eq!(req, AuthRequest { authcid: "user".into(), authzid: None });
    assert_eq!(s.server_first(Some(&keys)).unwrap(), v.server_first.as_bytes());
    assert_eq!(s.handle_client_final(v.client_final.as_bytes()).unwrap(), v.server_final.as_bytes());
}

fn check_client(v: &Vector) {
    let mut c = ScramClient::with_nonce(v.alg, "user", "pencil", ChannelBinding::None, v.cnonce);
    assert_eq!(c.client_first(), v.client_first.as_bytes());
    assert_eq!(c.handle_server_first(v.server_first.as_bytes()).unwrap(), v.client_final.as_bytes());
    c.verify_server_final(v.server_final.as_bytes()).unwrap();
}

#[test]
fn rfc5802_sha1_server() {
    check_server(&RFC5802);
}

#[test]
fn rfc5802_sha1_client() {
    check_client(&RFC5802);
}

#[test]
fn rfc7677_sha256_server() {
    check_server(&RFC7677);
}

#[test]
fn rfc7677_sha256_client() {
    check_client(&RFC7677);
}

#[test]
fn rfc5802_wrong_password_is_not_authorized() {
    let v = &RFC5802;
    let keys = ScramKeys::derive(v.alg, "pencil2", &B64.decode(v.salt).unwrap(), 4096);
    let mut s = ScramServer::with_nonce_suffix(v.alg, false, false, ChannelBinding::None, v.snonce);
    s.handle_client_first(v.client_first.as_bytes()).unwrap();
    s.server_first(Some(&keys)).unwrap();
    assert_eq!(s.handle_client_final(v.client_final.as_bytes()), Err(meerkat_sasl::Failure::NotAuthorized));
}
