//! STARTTLS, direct TLS and every SASL mechanism over real TLS 1.3, with the
//! third-party `sasl` crate (xmpp-rs) as the SCRAM client where it has the hash,
//! and tls-exporter channel binding (RFC 9266) for the -PLUS variants.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use meerkat::testing::TestServer;
use meerkat_config::TlsMode;
use meerkat_stanza::ns;
use meerkat_xml::{Decoder, Element, Framing, Limits, StreamEvent};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The test server's certificate is self-signed: accept it (signatures are still checked).
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn connector(alpn: bool) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    if alpn {
        cfg.alpn_protocols = vec![b"xmpp-client".to_vec()];
    }
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

struct Xmpp<S> {
    s: S,
    dec: Decoder,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Xmpp<S> {
    fn new(s: S) -> Self {
        Xmpp { s, dec: Decoder::new(Framing::Stream, Limits::default()) }
    }
    async fn send(&mut self, x: &str) {
        self.s.write_all(x.as_bytes()).await.unwrap();
        self.s.flush().await.unwrap();
    }
    async fn open(&mut self) {
        self.dec.reset();
        self.send("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>").await;
    }
    async fn expect(&mut self) -> Element {
        loop {
            match self.dec.next_event().unwrap() {
                Some(StreamEvent::Element(e)) => return e,
                Some(StreamEvent::Close) => panic!("stream closed"),
                Some(StreamEvent::Header(_)) => continue,
                None => {}
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut buf)).await.unwrap().unwrap();
            assert!(n > 0, "connection closed");
            self.dec.feed(&buf[..n]);
        }
    }
    fn into_inner(self) -> S {
        self.s
    }
}

fn mechanisms(f: &Element) -> Vec<String> {
    f.get_child("mechanisms", ns::SASL).map(|m| m.children().map(|c| c.text()).collect()).unwrap_or_default()
}

/// STARTTLS on the first listener; returns the TLS stream, the features after TLS,
/// and the tls-exporter binding the client computed.
async fn starttls(s: &TestServer) -> (Xmpp<TlsStream<TcpStream>>, Element, Vec<u8>) {
    let tcp = TcpStream::connect(s.addr(TlsMode::Starttls)).await.unwrap();
    let mut x = Xmpp::new(tcp);
    x.open().await;
    let f = x.expect().await;
    assert!(f.has_child("starttls", ns::TLS));
    x.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>").await;
    assert_eq!(x.expect().await.name(), "proceed");
    let tls = connector(false).connect(ServerName::try_from("localhost").unwrap(), x.into_inner()).await.unwrap();
    let cb = exporter(&tls);
    let mut x = Xmpp::new(tls);
    x.open().await;
    let f = x.expect().await;
    (x, f, cb)
}

fn exporter(tls: &TlsStream<TcpStream>) -> Vec<u8> {
    let conn = tls.get_ref().1;
    assert_eq!(conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    let mut out = vec![0u8; 32];
    conn.export_keying_material(&mut out, b"EXPORTER-Channel-Binding", None).unwrap();
    out
}

/// Runs a client mechanism to the end; returns the final element.
async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    x: &mut Xmpp<S>,
    mech: &mut dyn sasl::client::Mechanism,
) -> Element {
    let initial = mech.initial();
    x.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{}'>{}</auth>",
        mech.name(),
        B64.encode(initial)
    ))
    .await;
    loop {
        let e = x.expect().await;
        match e.name() {
            "challenge" => {
                let data = B64.decode(e.text().trim()).unwrap();
                let resp = mech.response(&data).expect("valid server challenge");
                x.send(&format!("<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>", B64.encode(resp)))
                    .await;
            }
            "success" => {
                let data = B64.decode(e.text().trim()).unwrap();
                mech.success(&data).expect("server signature verifies");
                return e;
            }
            _ => return e,
        }
    }
}

async fn bind<S: AsyncRead + AsyncWrite + Unpin>(x: &mut Xmpp<S>) -> String {
    x.open().await;
    let f = x.expect().await;
    assert!(f.has_child("bind", ns::BIND));
    x.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>tls</resource></bind></iq>")
        .await;
    let r = x.expect().await;
    r.get_child("bind", ns::BIND).unwrap().child_text("jid", ns::BIND).unwrap()
}

async fn server() -> TestServer {
    let s = TestServer::start().await.unwrap();
    s.add_user("alice@localhost", "wonderland").await;
    s
}

#[tokio::test]
async fn scram_plus_with_third_party_client_over_starttls() {
    use sasl::client::mechanisms::Scram;
    use sasl::common::scram::{Sha1, Sha256};
    use sasl::common::ChannelBinding;
    let s = server().await;
    for plus in [true, false] {
        for hash in ["SHA-1", "SHA-256"] {
            let (mut x, f, cb) = starttls(&s).await;
            let offered = mechanisms(&f);
            for m in ["SCRAM-SHA-512-PLUS", "SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "PLAIN"] {
                assert!(offered.contains(&m.to_string()), "{m} not offered: {offered:?}");
            }
            // XEP-0440: tls-exporter advertised.
            let cbs = f.get_child("sasl-channel-binding", ns::SASL_CB).expect("XEP-0440 element");
            assert_eq!(cbs.children().next().unwrap().attr("type"), Some("tls-exporter"));
            let binding = if plus { ChannelBinding::TlsExporter(cb) } else { ChannelBinding::None };
            let mut mech: Box<dyn sasl::client::Mechanism> = match hash {
                "SHA-1" => Box::new(Scram::<Sha1>::new("alice", "wonderland", binding).unwrap()),
                _ => Box::new(Scram::<Sha256>::new("alice", "wonderland", binding).unwrap()),
            };
            let r = authenticate(&mut x, mech.as_mut()).await;
            assert_eq!(r.name(), "success", "SCRAM-{hash} plus={plus}: {r}");
            assert_eq!(bind(&mut x).await, "alice@localhost/tls");
        }
    }
    // Wrong channel binding data is refused.
    let (mut x, _, mut cb) = starttls(&s).await;
    cb[0] ^= 1;
    let mut mech = Scram::<Sha256>::new("alice", "wonderland", ChannelBinding::TlsExporter(cb)).unwrap();
    let r = authenticate(&mut x, &mut mech).await;
    assert_eq!(r.name(), "failure");
    assert!(r.has_child("not-authorized", ns::SASL), "{r}");
    // Downgrade: claiming the server has no binding while it advertised PLUS.
    let (mut x, _, _) = starttls(&s).await;
    let mut mech = Scram::<Sha256>::new("alice", "wonderland", ChannelBinding::Unsupported).unwrap();
    let r = authenticate(&mut x, &mut mech).await;
    assert!(r.has_child("not-authorized", ns::SASL), "downgrade accepted: {r}");
    // Wrong password.
    let (mut x, _, _) = starttls(&s).await;
    let mut mech = Scram::<Sha256>::new("alice", "looking-glass", ChannelBinding::None).unwrap();
    let r = authenticate(&mut x, &mut mech).await;
    assert!(r.has_child("not-authorized", ns::SASL), "{r}");
    s.stop().await;
}

/// SCRAM-SHA-512(-PLUS): the `sasl` crate has no SHA-512, so this uses Meerkat's
/// own client (its server and client are cross-checked against RFC vectors).
#[tokio::test]
async fn scram_sha512_and_plain_over_direct_tls() {
    let s = server().await;
    for plus in [true, false] {
        let tcp = TcpStream::connect(s.addr(TlsMode::Tls)).await.unwrap();
        let tls = connector(true).connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"xmpp-client"[..]));
        let cb = exporter(&tls);
        let mut x = Xmpp::new(tls);
        x.open().await;
        let f = x.expect().await;
        assert!(!f.has_child("starttls", ns::TLS), "STARTTLS offered on direct TLS");
        let binding =
            if plus { meerkat_sasl::ChannelBinding::TlsExporter(cb) } else { meerkat_sasl::ChannelBinding::None };
        let mut c = meerkat_sasl::ScramClient::new(meerkat_sasl::HashAlg::Sha512, "alice", "wonderland", binding);
        x.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{}'>{}</auth>",
            c.mechanism(),
            B64.encode(c.client_first())
        ))
        .await;
        let ch = x.expect().await;
        let fin = c.handle_server_first(&B64.decode(ch.text()).unwrap()).unwrap();
        x.send(&format!("<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>", B64.encode(fin))).await;
        let ok = x.expect().await;
        assert_eq!(ok.name(), "success", "{ok}");
        c.verify_server_final(&B64.decode(ok.text()).unwrap()).unwrap();
        assert_eq!(bind(&mut x).await, "alice@localhost/tls");
    }
    // PLAIN over TLS.
    let tcp = TcpStream::connect(s.addr(TlsMode::Tls)).await.unwrap();
    let tls = connector(true).connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    let mut x = Xmpp::new(tls);
    x.open().await;
    x.expect().await;
    let msg = meerkat_sasl::plain_client_message(None, "alice", "wonderland");
    x.send(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>", B64.encode(msg)))
        .await;
    assert_eq!(x.expect().await.name(), "success");
    s.stop().await;
}

#[tokio::test]
async fn self_signed_certificate_is_generated_once_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = meerkat::testing::test_config(dir.path());
    let s = TestServer::start_with(cfg.clone(), None).await.unwrap();
    // The server prepares TLS as it starts serving: connect once to be sure.
    let tcp = TcpStream::connect(s.addr(TlsMode::Tls)).await.unwrap();
    connector(true).connect(ServerName::try_from("localhost").unwrap(), tcp).await.expect("TLS handshake");
    let cert = std::fs::read(dir.path().join("cert.pem")).unwrap();
    assert!(String::from_utf8_lossy(&cert).contains("BEGIN CERTIFICATE"));
    s.stop().await;
    let s = TestServer::start_with(cfg, None).await.unwrap();
    assert_eq!(std::fs::read(dir.path().join("cert.pem")).unwrap(), cert, "certificate regenerated");
    // ECDSA P-256: the key's PKCS#8 encoding names the prime256v1 curve OID.
    let key = std::fs::read_to_string(dir.path().join("key.pem")).unwrap();
    let der = B64.decode(key.lines().filter(|l| !l.starts_with("-----")).collect::<String>()).unwrap();
    let p256_oid = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    assert!(der.windows(p256_oid.len()).any(|w| w == p256_oid), "not a P-256 key");
    let tcp = TcpStream::connect(s.addr(TlsMode::Tls)).await.unwrap();
    connector(true)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS with the reused certificate");
    s.stop().await;
}
