//! XMPP over WebSocket (RFC 7395) at the protocol level, with tokio-tungstenite as
//! the WebSocket client and the third-party `sasl` crate for SCRAM.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use meerkat::testing::{RawClient, TestServer};
use meerkat_config::TlsMode;
use meerkat_stanza::ns;
use meerkat_xml::{parse_element, Element, Limits};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(s: &TestServer, protocol: Option<&str>) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut req = format!("ws://{}/ws-xmpp", s.http_addrs[0]).into_client_request().unwrap();
    if let Some(p) = protocol {
        req.headers_mut().insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    tokio_tungstenite::connect_async(req).await.map(|(ws, resp)| {
        assert_eq!(resp.headers().get("sec-websocket-protocol").unwrap(), "xmpp");
        ws
    })
}

async fn send(ws: &mut Ws, xml: &str) {
    ws.send(Message::Text(xml.into())).await.unwrap();
}

/// The next text message, parsed (None when the socket closed).
async fn recv(ws: &mut Ws) -> Option<Element> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("a message within 5 s") {
            Some(Ok(Message::Text(t))) => {
                return Some(parse_element(&t, &Limits::default()).expect("one element per message"))
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

const OPEN: &str = "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0'/>";

async fn login(ws: &mut Ws, user: &str, password: &str) -> String {
    use sasl::client::mechanisms::Scram;
    use sasl::client::Mechanism as _;
    use sasl::common::scram::Sha256;
    send(ws, OPEN).await;
    let open = recv(ws).await.unwrap();
    assert!(open.is("open", ns::FRAMING), "{open}");
    assert_eq!(open.attr("from"), Some("localhost"));
    let f = recv(ws).await.unwrap();
    assert!(f.is("features", ns::STREAM), "{f}");
    assert!(!f.has_child("starttls", ns::TLS), "STARTTLS offered over WebSocket");
    let mechs: Vec<String> = f.get_child("mechanisms", ns::SASL).unwrap().children().map(|m| m.text()).collect();
    assert!(mechs.contains(&"SCRAM-SHA-256".into()) && !mechs.contains(&"PLAIN".into()), "{mechs:?}");
    let mut m = Scram::<Sha256>::new(user, password, sasl::common::ChannelBinding::None).unwrap();
    send(
        ws,
        &format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{}</auth>",
            B64.encode(m.initial())
        ),
    )
    .await;
    let ch = recv(ws).await.unwrap();
    let resp = m.response(&B64.decode(ch.text()).unwrap()).unwrap();
    send(ws, &format!("<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>", B64.encode(resp))).await;
    let ok = recv(ws).await.unwrap();
    assert_eq!(ok.name(), "success", "{ok}");
    m.success(&B64.decode(ok.text()).unwrap()).unwrap();
    send(ws, OPEN).await;
    assert!(recv(ws).await.unwrap().is("open", ns::FRAMING));
    assert!(recv(ws).await.unwrap().has_child("bind", ns::BIND));
    send(ws, "<iq xmlns='jabber:client' type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>web</resource></bind></iq>").await;
    let r = recv(ws).await.unwrap();
    assert_eq!(r.ns(), ns::CLIENT, "elements carry their namespace");
    r.get_child("bind", ns::BIND).unwrap().child_text("jid", ns::BIND).unwrap()
}

#[tokio::test]
async fn websocket_session_talks_to_a_tcp_client() {
    let s = TestServer::start().await.unwrap();
    s.add_user("alice@localhost", "alice-pass").await;
    s.add_user("bob@localhost", "bob-pass").await;
    let mut ws = connect(&s, Some("xmpp")).await.unwrap();
    assert_eq!(login(&mut ws, "alice", "alice-pass").await, "alice@localhost/web");
    send(&mut ws, "<presence xmlns='jabber:client'/>").await;
    let mut b = RawClient::connect(s.addr(TlsMode::None)).await.unwrap();
    b.login_plain("bob", "bob-pass", "tcp").await;
    b.send("<presence/>").await;
    send(
        &mut ws,
        "<message xmlns='jabber:client' to='bob@localhost/tcp' type='chat' id='w1'><body>from the web</body></message>",
    )
    .await;
    let m = b.expect_where(|e| e.name() == "message").await;
    assert_eq!(m.attr("from"), Some("alice@localhost/web"));
    assert_eq!(m.child_text("body", ns::CLIENT).as_deref(), Some("from the web"));
    b.send("<message to='alice@localhost/web' type='chat' id='t1'><body>from tcp</body></message>").await;
    let m = loop {
        let e = recv(&mut ws).await.unwrap();
        if e.name() == "message" {
            break e;
        }
    };
    assert_eq!(m.child_text("body", ns::CLIENT).as_deref(), Some("from tcp"));
    // Directed presence, so Bob hears when Alice leaves.
    send(&mut ws, "<presence xmlns='jabber:client' to='bob@localhost/tcp'/>").await;
    b.expect_where(|e| e.name() == "presence" && e.attr("from") == Some("alice@localhost/web")).await;
    // Clean close: <close/> answered with <close/>.
    send(&mut ws, "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>").await;
    loop {
        match recv(&mut ws).await {
            Some(e) if e.is("close", ns::FRAMING) => break,
            Some(_) => continue,
            None => panic!("closed without <close/>"),
        }
    }
    let p = b.expect_where(|e| e.name() == "presence" && e.attr("type") == Some("unavailable")).await;
    assert_eq!(p.attr("from"), Some("alice@localhost/web"));
    s.stop().await;
}

#[tokio::test]
async fn websocket_bad_input() {
    let s = TestServer::start().await.unwrap();
    s.add_user("alice@localhost", "alice-pass").await;
    // Without the xmpp subprotocol the upgrade is refused.
    assert!(connect(&s, None).await.is_err());
    assert!(connect(&s, Some("chat")).await.is_err());
    // Malformed XML: stream error, <close/>, and the socket ends.
    let mut ws = connect(&s, Some("xmpp")).await.unwrap();
    send(&mut ws, OPEN).await;
    recv(&mut ws).await;
    recv(&mut ws).await;
    send(&mut ws, "<message xmlns='jabber:client'><body>x</bod></message>").await;
    let e = recv(&mut ws).await.unwrap();
    assert!(e.is("error", ns::STREAM) && e.has_child("not-well-formed", ns::STREAMS), "{e}");
    assert!(recv(&mut ws).await.unwrap().is("close", ns::FRAMING));
    assert!(recv(&mut ws).await.is_none());
    // Binary frames are not XMPP.
    let mut ws = connect(&s, Some("xmpp")).await.unwrap();
    send(&mut ws, OPEN).await;
    recv(&mut ws).await;
    recv(&mut ws).await;
    ws.send(Message::Binary(vec![1u8, 2, 3].into())).await.unwrap();
    let e = recv(&mut ws).await.unwrap();
    assert!(e.is("error", ns::STREAM), "{e}");
    // Oversized message: policy-violation (or the WebSocket layer refuses it).
    let mut ws = connect(&s, Some("xmpp")).await.unwrap();
    send(&mut ws, OPEN).await;
    recv(&mut ws).await;
    recv(&mut ws).await;
    let big = format!("<message xmlns='jabber:client'><body>{}</body></message>", "x".repeat(70_000));
    let _ = ws.send(Message::Text(big.into())).await;
    // Either a policy-violation stream error, or the WebSocket layer's own limit closed it.
    if let Some(e) = recv(&mut ws).await {
        assert!(e.has_child("policy-violation", ns::STREAMS), "{e}");
    }
    // Stanzas before authentication: not-authorized.
    let mut ws = connect(&s, Some("xmpp")).await.unwrap();
    send(&mut ws, OPEN).await;
    recv(&mut ws).await;
    recv(&mut ws).await;
    send(&mut ws, "<message xmlns='jabber:client' to='alice@localhost'><body>hi</body></message>").await;
    let e = recv(&mut ws).await.unwrap();
    assert!(e.has_child("not-authorized", ns::STREAMS), "{e}");
    // The server still serves others.
    let mut ws = connect(&s, Some("xmpp")).await.unwrap();
    assert_eq!(login(&mut ws, "alice", "alice-pass").await, "alice@localhost/web");
    s.stop().await;
}
