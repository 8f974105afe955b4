//! Client/server exchanges through the public API (RFC 5802, RFC 7677, RFC 9266,
//! RFC 4616): round trips for every mechanism, and the failures RFC 5802 §5–§7 and
//! RFC 6120 §6.5 call for.

use meerkat_sasl::{
    parse_plain, plain_client_message, AuthRequest, ChannelBinding, Failure, HashAlg, Mechanism, ScramClient,
    ScramKeys, ScramServer, StoredCredentials, DEFAULT_ITERATIONS, MAX_MESSAGE_LEN,
};

/// Low iteration count so debug-build tests stay fast.
const ITER: u32 = 64;

fn keys(alg: HashAlg, password: &str) -> ScramKeys {
    ScramKeys::derive(alg, password, b"0123456789abcdef", ITER)
}

fn exporter(byte: u8) -> ChannelBinding {
    ChannelBinding::TlsExporter(vec![byte; 32])
}

/// Runs a full exchange; returns the first failure, from either side.
fn exchange(
    mech: Mechanism,
    plus_advertised: bool,
    server_cb: ChannelBinding,
    mut client: ScramClient,
    server_keys: Option<&ScramKeys>,
) -> Result<AuthRequest, Failure> {
    let Mechanism::Scram { alg, plus } = mech else { panic!("not SCRAM") };
    let mut server = ScramServer::new(alg, plus, plus_advertised, server_cb);
    let req = server.handle_client_first(&client.client_first())?;
    let sf = server.server_first(server_keys)?;
    let cf = client.handle_server_first(&sf)?;
    let sfinal = server.handle_client_final(&cf)?;
    client.verify_server_final(&sfinal)?;
    Ok(req)
}

#[test]
fn all_scram_mechanisms_round_trip() {
    for &mech in Mechanism::all() {
        let Mechanism::Scram { alg, plus } = mech else {
            continue;
        };
        let cb = if plus { exporter(7) } else { ChannelBinding::None };
        let client = ScramClient::new(alg, "juliet", "r0m30myr0m30", cb.clone());
        assert_eq!(client.mechanism(), mech);
        let req = exchange(mech, plus, cb, client, Some(&keys(alg, "r0m30myr0m30"))).unwrap();
        assert_eq!(req, AuthRequest { authcid: "juliet".into(), authzid: None }, "{mech}");
    }
}

#[test]
fn round_trip_with_stored_credentials_and_authzid() {
    let creds = StoredCredentials::from_password("s3cr3t", ITER);
    for alg in HashAlg::ALL {
        let mech = Mechanism::Scram { alg, plus: true };
        let client = ScramClient::new(alg, "a,b=c", "s3cr3t", exporter(1)).with_authzid("a,b=c@example.com");
        let req = exchange(mech, true, exporter(1), client, Some(creds.keys(alg))).unwrap();
        assert_eq!(req.authcid, "a,b=c");
        assert_eq!(req.authzid.as_deref(), Some("a,b=c@example.com"));
    }
}

#[test]
fn tls_without_binding_uses_y_when_plus_not_advertised() {
    for alg in HashAlg::ALL {
        let mech = Mechanism::Scram { alg, plus: false };
        let client = ScramClient::new(alg, "juliet", "pw", ChannelBinding::Unsupported);
        exchange(mech, false, ChannelBinding::Unsupported, client, Some(&keys(alg, "pw"))).unwrap();
    }
}

#[test]
fn client_without_binding_support_may_use_n_even_if_plus_advertised() {
    let alg = HashAlg::Sha256;
    let client = ScramClient::new(alg, "juliet", "pw", ChannelBinding::None);
    exchange(Mechanism::Scram { alg, plus: false }, true, exporter(3), client, Some(&keys(alg, "pw"))).unwrap();
}

#[test]
fn plain_round_trip() {
    let creds = StoredCredentials::from_password("r0m30", ITER);
    let (req, pw) = parse_plain(&plain_client_message(None, "juliet", "r0m30")).unwrap();
    assert_eq!(req, AuthRequest { authcid: "juliet".into(), authzid: None });
    assert!(creds.verify_password(&pw));
    let (req, pw) = parse_plain(&plain_client_message(Some("juliet@example.com"), "juliet", "wrong")).unwrap();
    assert_eq!(req.authzid.as_deref(), Some("juliet@example.com"));
    assert!(!creds.verify_password(&pw));
    // An empty authzid is no authzid.
    let (req, _) = parse_plain(&plain_client_message(Some(""), "juliet", "r0m30")).unwrap();
    assert_eq!(req.authzid, None);
}

#[test]
fn wrong_password_is_not_authorized() {
    for &mech in Mechanism::all() {
        let Mechanism::Scram { alg, plus } = mech else {
            continue;
        };
        let cb = if plus { exporter(7) } else { ChannelBinding::None };
        let client = ScramClient::new(alg, "juliet", "wrong", cb.clone());
        assert_eq!(exchange(mech, plus, cb, client, Some(&keys(alg, "right"))), Err(Failure::NotAuthorized), "{mech}");
    }
}

#[test]
fn mismatching_channel_binding_data_is_not_authorized() {
    for alg in HashAlg::ALL {
        let mech = Mechanism::Scram { alg, plus: true };
        let client = ScramClient::new(alg, "juliet", "pw", exporter(1));
        assert_eq!(exchange(mech, true, exporter(2), client, Some(&keys(alg, "pw"))), Err(Failure::NotAuthorized));
    }
}

#[test]
fn downgrade_is_not_authorized() {
    // The client supports binding but thinks the server does not ('y'), yet the server
    // advertised -PLUS: someone stripped it from <mechanisms/> (RFC 5802 §6).
    for alg in HashAlg::ALL {
        let mech = Mechanism::Scram { alg, plus: false };
        let client = ScramClient::new(alg, "juliet", "pw", ChannelBinding::Unsupported);
        assert_eq!(exchange(mech, true, exporter(1), client, Some(&keys(alg, "pw"))), Err(Failure::NotAuthorized));
    }
}

#[test]
fn unknown_user_gets_plausible_server_first_then_not_authorized() {
    let alg = HashAlg::Sha256;
    let server_first_for = |user: &str, k: Option<&ScramKeys>| {
        let mut client = ScramClient::new(alg, user, "pw", ChannelBinding::None);
        let mut server = ScramServer::new(alg, false, false, ChannelBinding::None);
        server.handle_client_first(&client.client_first()).unwrap();
        let sf = server.server_first(k).unwrap();
        // The client finds nothing wrong with it.
        let cf = client.handle_server_first(&sf).unwrap();
        (String::from_utf8(sf).unwrap(), server.handle_client_final(&cf))
    };
    let (sf, result) = server_first_for("nobody", None);
    assert_eq!(result, Err(Failure::NotAuthorized));

    // Same shape as a real account's (random 16-byte salt, default iterations).
    let real = ScramKeys::derive(alg, "pw", b"fedcba9876543210", DEFAULT_ITERATIONS);
    let (real_sf, real_result) = server_first_for("somebody", Some(&real));
    assert!(real_result.is_ok());
    let shape = |s: &str| s.split(',').map(|a| (a[..2].to_owned(), a.len())).collect::<Vec<_>>();
    assert_eq!(shape(&sf), shape(&real_sf));

    // Deterministic per user, different between users.
    let salt = |s: &str| s.split(',').nth(1).unwrap().to_owned();
    assert_eq!(salt(&server_first_for("nobody", None).0), salt(&sf));
    assert_ne!(salt(&server_first_for("nobody2", None).0), salt(&sf));
}

#[test]
fn server_nonce_extends_client_nonce_with_fresh_randomness() {
    let mut a = ScramServer::new(HashAlg::Sha1, false, false, ChannelBinding::None);
    let mut b = ScramServer::new(HashAlg::Sha1, false, false, ChannelBinding::None);
    a.handle_client_first(b"n,,n=user,r=CLIENT").unwrap();
    b.handle_client_first(b"n,,n=user,r=CLIENT").unwrap();
    let k = keys(HashAlg::Sha1, "pw");
    let na = String::from_utf8(a.server_first(Some(&k)).unwrap()).unwrap();
    let nb = String::from_utf8(b.server_first(Some(&k)).unwrap()).unwrap();
    let nonce = |s: &str| s.split(',').next().unwrap().strip_prefix("r=CLIENT").unwrap().to_owned();
    assert_eq!(nonce(&na).len(), 32); // 24 random bytes, base64
    assert_ne!(nonce(&na), nonce(&nb));
}

// ---- client-first failures -------------------------------------------------------------

fn client_first(plus: bool, plus_advertised: bool, cb: ChannelBinding, msg: &[u8]) -> Result<AuthRequest, Failure> {
    ScramServer::new(HashAlg::Sha256, plus, plus_advertised, cb).handle_client_first(msg)
}

#[test]
fn malformed_client_first() {
    let mut cases: Vec<Vec<u8>> = [
        "",
        ",",
        "n,,",
        "n,",
        "x,,n=user,r=abc",
        "N,,n=user,r=abc",
        "p,,n=user,r=abc",
        "p=,,n=user,r=abc",
        "p=tls exporter,,n=user,r=abc",
        "n,b=user,n=user,r=abc",
        "n,a=,n=user,r=abc",
        "n,a=x=41,n=user,r=abc",
        "n,a=x=2c,n=user,r=abc",
        "n,a=x=,n=user,r=abc",
        "n,,m=ext,n=user,r=abc",
        "n,,n=,r=abc",
        "n,,n=us=er,r=abc",
        "n,,n=us=3der,r=abc",
        "n,,n=user,r=",
        "n,,n=user,r=a b",
        "n,,n=user,r=ab\u{e9}",
        "n,,n=user",
        "n,,n=user,",
        "n,,r=abc,n=user",
        "n,,u=user,r=abc",
        "n,,n=user,r=abc,m=x",
        "n,,n=user,r=abc,1=x",
        "n,,n=user,r=abc,x=",
        "n,,n=user,r=abc,,",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    cases.push(b"n,,n=us\xffer,r=abc".to_vec());
    let mut big = b"n,,n=user,r=".to_vec();
    big.resize(MAX_MESSAGE_LEN + 1, b'A');
    cases.push(big);
    for m in cases {
        assert_eq!(
            client_first(false, false, ChannelBinding::None, &m),
            Err(Failure::MalformedRequest),
            "{:?}",
            String::from_utf8_lossy(&m)
        );
    }
}

#[test]
fn client_first_size_limit_is_inclusive() {
    let mut m = b"n,,n=user,r=".to_vec();
    m.resize(MAX_MESSAGE_LEN, b'A');
    assert!(client_first(false, false, ChannelBinding::None, &m).is_ok());
}

#[test]
fn saslname_decoding_in_client_first() {
    let req = client_first(false, false, ChannelBinding::None, b"n,a=x=2Cy=3Dz,n=a=2Cb=3D=3D,r=abc").unwrap();
    assert_eq!(req, AuthRequest { authcid: "a,b==".into(), authzid: Some("x,y=z".into()) });
    // Unknown extensions are ignored.
    let req = client_first(false, false, ChannelBinding::None, b"n,,n=user,r=abc,x=ext,y=more=data").unwrap();
    assert_eq!(req.authcid, "user");
}

#[test]
fn username_is_saslprepped() {
    let req = client_first(false, false, ChannelBinding::None, "n,,n=ju\u{AD}li\u{A0}et,r=abc".as_bytes()).unwrap();
    assert_eq!(req.authcid, "juli et");
    for m in ["n,,n=us\u{7}er,r=abc", "n,,n=\u{AD},r=abc", "n,,n=a\u{202E}b,r=abc"] {
        assert_eq!(
            client_first(false, false, ChannelBinding::None, m.as_bytes()),
            Err(Failure::NotAuthorized),
            "{m:?}"
        );
    }
}

#[test]
fn channel_binding_policy() {
    use ChannelBinding as Cb;
    let ok = |r: Result<AuthRequest, Failure>| r.map(|_| ());
    // 'p=' on a non-PLUS mechanism.
    assert_eq!(ok(client_first(false, true, exporter(1), b"p=tls-exporter,,n=u,r=a")), Err(Failure::MalformedRequest));
    // PLUS mechanism without 'p='.
    assert_eq!(ok(client_first(true, true, exporter(1), b"n,,n=u,r=a")), Err(Failure::MalformedRequest));
    assert_eq!(ok(client_first(true, true, exporter(1), b"y,,n=u,r=a")), Err(Failure::MalformedRequest));
    // Binding types other than tls-exporter.
    for name in ["tls-unique", "tls-server-end-point", "TLS-EXPORTER"] {
        let m = format!("p={name},,n=u,r=a");
        assert_eq!(ok(client_first(true, true, exporter(1), m.as_bytes())), Err(Failure::NotAuthorized), "{name}");
    }
    // PLUS selected although TLS offers no binding.
    assert_eq!(ok(client_first(true, true, Cb::Unsupported, b"p=tls-exporter,,n=u,r=a")), Err(Failure::NotAuthorized));
    assert_eq!(ok(client_first(true, false, Cb::None, b"p=tls-exporter,,n=u,r=a")), Err(Failure::NotAuthorized));
    // Downgrade.
    assert_eq!(ok(client_first(false, true, exporter(1), b"y,,n=u,r=a")), Err(Failure::NotAuthorized));
    // Accepted combinations.
    assert_eq!(ok(client_first(true, true, exporter(1), b"p=tls-exporter,,n=u,r=a")), Ok(()));
    assert_eq!(ok(client_first(false, true, exporter(1), b"n,,n=u,r=a")), Ok(()));
    assert_eq!(ok(client_first(false, false, Cb::Unsupported, b"y,,n=u,r=a")), Ok(()));
    assert_eq!(ok(client_first(false, false, Cb::None, b"y,,n=u,r=a")), Ok(()));
}

// ---- client-final failures -------------------------------------------------------------

/// A server that has sent server-first for user "user" (password "pw", SHA-1, no binding)
/// and the client-final a correct client would send.
fn at_client_final() -> (ScramServer, String) {
    let alg = HashAlg::Sha1;
    let mut client = ScramClient::new(alg, "user", "pw", ChannelBinding::None);
    let mut server = ScramServer::new(alg, false, false, ChannelBinding::None);
    server.handle_client_first(&client.client_first()).unwrap();
    let sf = server.server_first(Some(&keys(alg, "pw"))).unwrap();
    let cf = String::from_utf8(client.handle_server_first(&sf).unwrap()).unwrap();
    (server, cf)
}

#[test]
fn client_final_failures() {
    let (_, good) = at_client_final();
    let mut parts = good.split(',');
    let (c, r, p) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    assert_eq!(c, "c=biws");
    let other_nonce = format!("{}X", r);
    let mut big = format!("{c},{r},x=");
    big.push_str(&"A".repeat(MAX_MESSAGE_LEN));
    big.push_str(&format!(",{p}"));
    let cases: Vec<(String, Failure)> = vec![
        (format!("{c},{r}"), Failure::MalformedRequest),
        (format!("{r},{c},{p}"), Failure::MalformedRequest),
        (format!("{c},{p}"), Failure::MalformedRequest),
        (format!("c=***,{r},{p}"), Failure::MalformedRequest),
        (format!("{c},{r},p=***"), Failure::MalformedRequest),
        (format!("{c},{r},p=AAAA"), Failure::MalformedRequest),
        (format!("{c},{r},m=x,{p}"), Failure::MalformedRequest),
        (format!("{c},{r},{p},"), Failure::MalformedRequest),
        (big, Failure::MalformedRequest),
        (format!("{c},{other_nonce},{p}"), Failure::NotAuthorized),
        // c= for "y,," while the client sent "n,,".
        (format!("c=eSws,{r},{p}"), Failure::NotAuthorized),
        // c= with cb-data appended although none was negotiated.
        (format!("c=biwsAA==,{r},{p}"), Failure::NotAuthorized),
    ];
    for (msg, want) in cases {
        let (mut server, _) = at_client_final();
        assert_eq!(server.handle_client_final(msg.as_bytes()), Err(want), "{msg}");
    }
    // Extensions before the proof are ignored by the server, but they are part of the
    // AuthMessage, so a proof computed without them no longer verifies.
    let (mut server, _) = at_client_final();
    assert_eq!(server.handle_client_final(format!("{c},{r},x=1,{p}").as_bytes()), Err(Failure::NotAuthorized));
    // And the untouched message still works.
    let (mut server, good) = at_client_final();
    assert!(server.handle_client_final(good.as_bytes()).is_ok());
}

#[test]
fn exchange_cannot_be_replayed_on_the_same_state_machine() {
    let (mut server, good) = at_client_final();
    assert!(server.handle_client_final(good.as_bytes()).is_ok());
    assert_eq!(server.handle_client_final(good.as_bytes()), Err(Failure::MalformedRequest));
}

#[test]
fn failure_conditions() {
    assert_eq!(Failure::NotAuthorized.condition(), "not-authorized");
    assert_eq!(Failure::MalformedRequest.condition(), "malformed-request");
    assert_eq!(Failure::TemporaryAuthFailure.condition(), "temporary-auth-failure");
    assert_eq!(Mechanism::from_name("SCRAM-SHA-256-PLUS"), Some(Mechanism::Scram { alg: HashAlg::Sha256, plus: true }));
    assert_eq!(Mechanism::Plain.name(), "PLAIN");
}
