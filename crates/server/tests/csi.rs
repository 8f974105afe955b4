//! Client state indication (XEP-0352): presence held while inactive, messages at once.

use std::time::Duration;

use meerkat::testing::{RawClient, TestServer};
use meerkat_config::TlsMode;
use meerkat_stanza::ns;

#[tokio::test]
async fn inactive_clients_get_messages_at_once_and_presence_later() {
    let s = TestServer::start().await.unwrap();
    s.add_user("alice@localhost", "alice-pass").await;
    s.add_user("bob@localhost", "bob-pass").await;
    let mut a = RawClient::connect(s.addr(TlsMode::None)).await.unwrap();
    a.login_plain("alice", "alice-pass", "phone").await;
    a.send("<presence/>").await;
    a.expect_where(|e| e.name() == "presence").await;
    let mut b = RawClient::connect(s.addr(TlsMode::None)).await.unwrap();
    b.login_plain("bob", "bob-pass", "b").await;
    b.send("<presence/>").await;
    // Alice's phone goes inactive; Bob's presence changes are held, latest only.
    a.send("<inactive xmlns='urn:xmpp:csi:0'/>").await;
    b.send("<presence to='alice@localhost/phone'><show>away</show></presence>").await;
    b.send("<presence to='alice@localhost/phone'><show>dnd</show></presence>").await;
    assert!(a.next(Duration::from_millis(300)).await.is_none(), "presence reached an inactive client");
    // A message goes out at once, after the held presence.
    b.send("<message to='alice@localhost/phone' type='chat' id='m'><body>wake up</body></message>").await;
    let p = a.expect().await;
    assert_eq!(p.name(), "presence", "{p}");
    assert_eq!(p.child_text("show", ns::CLIENT).as_deref(), Some("dnd"));
    let m = a.expect().await;
    assert_eq!(m.attr("id"), Some("m"));
    // Active again: presence flows immediately.
    a.send("<active xmlns='urn:xmpp:csi:0'/>").await;
    b.send("<presence to='alice@localhost/phone'><show>chat</show></presence>").await;
    let p = a.expect_where(|e| e.name() == "presence").await;
    assert_eq!(p.child_text("show", ns::CLIENT).as_deref(), Some("chat"));
    // An unknown nonza still ends the stream.
    a.send("<bogus xmlns='urn:example'/>").await;
    assert_eq!(a.expect_stream_error().await.as_deref(), Some("unsupported-stanza-type"));
    s.stop().await;
}

#[tokio::test]
async fn csi_is_offered_after_authentication() {
    use base64::Engine as _;
    let s = TestServer::start().await.unwrap();
    s.add_user("alice@localhost", "alice-pass").await;
    let mut a = RawClient::connect(s.addr(TlsMode::None)).await.unwrap();
    a.open().await;
    a.expect().await;
    let data = base64::engine::general_purpose::STANDARD.encode("\0alice\0alice-pass");
    a.send(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{data}</auth>")).await;
    a.expect().await;
    a.open().await;
    let f = a.expect().await;
    assert!(f.has_child("csi", ns::CSI), "{f}");
    s.stop().await;
}
