//! XMPP over BOSH (XEP-0124 / XEP-0206): session creation, SASL with the
//! third-party `sasl` crate, restart, bind, held requests carrying messages from a
//! TCP client, rid rules, and bad requests.

use std::net::SocketAddr;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use meerkat::testing::{RawClient, TestServer};
use meerkat_config::TlsMode;
use meerkat_stanza::ns;
use meerkat_xml::{parse_element, Element, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HTTPBIND: &str = "http://jabber.org/protocol/httpbind";

/// One HTTP/1.1 POST on its own connection; returns (status, body).
async fn post(addr: SocketAddr, content_type: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /http-bind HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut buf)).await.expect("a response").unwrap();
    let text = String::from_utf8(buf).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

async fn bosh(addr: SocketAddr, body: &str) -> Element {
    let (status, text) = post(addr, "text/xml; charset=utf-8", body).await;
    assert_eq!(status, 200, "{text}");
    let el = parse_element(&text, &Limits::default()).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(el.is("body", HTTPBIND), "{el}");
    el
}

fn body(sid: &str, rid: u64, inner: &str) -> String {
    format!("<body xmlns='{HTTPBIND}' sid='{sid}' rid='{rid}'>{inner}</body>")
}

#[tokio::test]
async fn bosh_session_end_to_end() {
    use sasl::client::mechanisms::Scram;
    use sasl::client::Mechanism as _;
    use sasl::common::scram::Sha256;
    let s = TestServer::start().await.unwrap();
    s.add_user("alice@localhost", "alice-pass").await;
    s.add_user("bob@localhost", "bob-pass").await;
    let http = s.http_addrs[0];
    // §7.1 session creation; XEP-0206 §4 features in the response.
    let r = bosh(http, &format!("<body xmlns='{HTTPBIND}' rid='1000' to='localhost' wait='3' hold='1' ver='1.6' xml:lang='en' xmpp:version='1.0' xmlns:xmpp='urn:xmpp:xbosh'/>")).await;
    let sid = r.attr("sid").expect("sid").to_string();
    assert_eq!(r.attr("wait"), Some("3"));
    assert_eq!(r.attr("hold"), Some("1"));
    assert!(r.attr("requests").is_some() && r.attr("inactivity").is_some());
    let f = r.get_child("features", ns::STREAM).expect("features in the creation response");
    let mechs: Vec<String> = f.get_child("mechanisms", ns::SASL).unwrap().children().map(|m| m.text()).collect();
    assert!(mechs.contains(&"SCRAM-SHA-256".into()) && !mechs.contains(&"PLAIN".into()), "{mechs:?}");
    // SASL SCRAM-SHA-256.
    let mut m = Scram::<Sha256>::new("alice", "alice-pass", sasl::common::ChannelBinding::None).unwrap();
    let r = bosh(
        http,
        &body(
            &sid,
            1001,
            &format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{}</auth>",
                B64.encode(m.initial())
            ),
        ),
    )
    .await;
    let ch = r.get_child("challenge", ns::SASL).expect("challenge");
    let resp = m.response(&B64.decode(ch.text()).unwrap()).unwrap();
    let r = bosh(
        http,
        &body(
            &sid,
            1002,
            &format!("<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>", B64.encode(resp)),
        ),
    )
    .await;
    let ok = r.get_child("success", ns::SASL).expect("success");
    m.success(&B64.decode(ok.text()).unwrap()).unwrap();
    // XEP-0206 §5 restart, then bind.
    let r = bosh(http, &format!("<body xmlns='{HTTPBIND}' sid='{sid}' rid='1003' xmpp:restart='true' xmlns:xmpp='urn:xmpp:xbosh' to='localhost'/>")).await;
    assert!(r.get_child("features", ns::STREAM).is_some_and(|f| f.has_child("bind", ns::BIND)), "{r}");
    let r = bosh(http, &body(&sid, 1004, "<iq xmlns='jabber:client' type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>bosh</resource></bind></iq>")).await;
    assert!(r.to_string().contains("alice@localhost/bosh"), "{r}");
    // Stanzas may inherit the body's namespace (XEP-0206 §6).
    let mut rid = 1005;
    let r = bosh(
        http,
        &body(&sid, rid, "<presence/><iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"),
    )
    .await;
    let mut got: Vec<Element> = r.children().cloned().collect();
    while !got.iter().any(|e| e.attr("id") == Some("p")) {
        rid += 1;
        let r = bosh(http, &body(&sid, rid, "")).await;
        got.extend(r.children().cloned());
    }
    assert!(got.iter().any(|e| e.attr("id") == Some("p") && e.attr("type") == Some("result")), "{got:?}");
    let sid2 = sid.clone();
    // A held request carries a message that arrives while it waits.
    let mut rid = rid + 1;
    let held = tokio::spawn(async move { bosh(http, &body(&sid, rid, "")).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut b = RawClient::connect(s.addr(TlsMode::None)).await.unwrap();
    b.login_plain("bob", "bob-pass", "tcp").await;
    b.send("<message to='alice@localhost/bosh' type='chat' id='hb'><body>over bosh</body></message>").await;
    let mut r = held.await.unwrap();
    while !r.children().any(|e| e.name() == "message") {
        rid += 1;
        r = bosh(http, &body(r.attr("sid").unwrap_or(&sid2), rid, "")).await;
    }
    let msg = r.children().find(|e| e.name() == "message").unwrap();
    assert_eq!(msg.child_text("body", ns::CLIENT).as_deref(), Some("over bosh"));
    let sid = r.attr("sid").map(str::to_string);
    assert!(sid.is_none(), "only the creation response carries the sid");
    s.stop().await;
}

#[tokio::test]
async fn bosh_bad_requests() {
    let s = TestServer::start().await.unwrap();
    let http = s.http_addrs[0];
    // Unknown sid: 404 with a terminate body.
    let (status, text) = post(http, "text/xml", &body("nope", 1, "")).await;
    assert_eq!(status, 404);
    assert!(text.contains("item-not-found") && text.contains("terminate"), "{text}");
    // Wrong content type, malformed XML, wrong root: 400 bad-request.
    let (status, text) = post(http, "application/json", "{}").await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("bad-request"));
    let (status, _) = post(http, "text/xml", "<body xmlns='http://jabber.org/protocol/httpbind' rid='1'").await;
    assert_eq!(status, 400);
    let (status, _) = post(http, "text/xml", "<notbody rid='1'/>").await;
    assert_eq!(status, 400);
    let (status, _) = post(http, "text/xml", &format!("<body xmlns='{HTTPBIND}' to='localhost'/>")).await;
    assert_eq!(status, 400, "rid is required");
    // Unknown host at creation.
    let r = bosh(http, &format!("<body xmlns='{HTTPBIND}' rid='5' to='elsewhere.example' wait='2' hold='1'/>")).await;
    assert_eq!(r.attr("type"), Some("terminate"));
    assert_eq!(r.attr("condition"), Some("host-unknown"));
    // A rid far outside the window ends the session.
    let r = bosh(http, &format!("<body xmlns='{HTTPBIND}' rid='100' to='localhost' wait='2' hold='1'/>")).await;
    let sid = r.attr("sid").unwrap().to_string();
    let r = bosh(http, &body(&sid, 500, "")).await;
    assert_eq!(r.attr("type"), Some("terminate"));
    assert_eq!(r.attr("condition"), Some("item-not-found"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _) = post(http, "text/xml", &body(&sid, 101, "")).await;
    assert_eq!(status, 404, "the session is gone");
    // A repeated rid gets the same answer (§14.3).
    let r = bosh(http, &format!("<body xmlns='{HTTPBIND}' rid='200' to='localhost' wait='1' hold='1'/>")).await;
    let sid = r.attr("sid").unwrap().to_string();
    let first =
        bosh(http, &body(&sid, 201, "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='X-NOPE'>AA==</auth>"))
            .await;
    let again =
        bosh(http, &body(&sid, 201, "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='X-NOPE'>AA==</auth>"))
            .await;
    assert!(first.to_string().contains("invalid-mechanism"), "{first}");
    assert_eq!(first.to_string(), again.to_string());
    // Client-initiated terminate.
    let r = bosh(http, &format!("<body xmlns='{HTTPBIND}' sid='{sid}' rid='202' type='terminate'/>")).await;
    assert_eq!(r.attr("type"), Some("terminate"));
    // CORS preflight.
    let mut c = tokio::net::TcpStream::connect(http).await.unwrap();
    c.write_all(b"OPTIONS /http-bind HTTP/1.1\r\nHost: localhost\r\nOrigin: http://example.com\r\nAccess-Control-Request-Method: POST\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut buf = String::new();
    c.read_to_string(&mut buf).await.unwrap();
    assert!(buf.starts_with("HTTP/1.1 200") && buf.to_lowercase().contains("access-control-allow-origin: *"), "{buf}");
    s.stop().await;
}
