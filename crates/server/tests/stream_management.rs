//! Stream management (XEP-0198): acks, a connection killed mid-conversation and
//! resumed with every unacknowledged message delivered exactly once, resumption
//! failures, and timed-out sessions whose messages go to offline storage.

use std::time::Duration;

use meerkat::testing::{test_config, RawClient, TestServer};
use meerkat_config::TlsMode;
use meerkat_stanza::ns;
use meerkat_xml::Element;

async fn server(resume_timeout: u64) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    let sm = cfg.modules.mod_stream_management.as_mut().unwrap();
    sm.resume_timeout = resume_timeout;
    sm.ack_freq = 1000; // the test asks for acks itself
    let s = TestServer::start_with(cfg, Some(dir)).await.unwrap();
    s.add_user("alice@localhost", "alice-pass").await;
    s.add_user("bob@localhost", "bob-pass").await;
    s
}

/// Authenticates (PLAIN) and returns the client at the bind stage.
async fn authenticated(s: &TestServer, user: &str) -> RawClient {
    let mut c = RawClient::connect(s.addr(TlsMode::None)).await.unwrap();
    let f = c.authenticate_plain(user, &format!("{user}-pass")).await;
    assert!(f.has_child("sm", ns::SM), "XEP-0198 feature: {f}");
    c
}

async fn bind(c: &mut RawClient, res: &str) {
    c.send(&format!(
        "<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{res}</resource></bind></iq>"
    ))
    .await;
    assert_eq!(c.expect().await.attr("type"), Some("result"));
}

/// Enables resumable SM; returns the resumption id.
async fn enable(c: &mut RawClient) -> String {
    c.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>").await;
    let e = c.expect_where(|e| e.is("enabled", ns::SM)).await;
    assert_eq!(e.attr("resume"), Some("true"));
    e.attr("id").expect("resumption id").to_string()
}

fn bodies(els: &[Element]) -> Vec<String> {
    els.iter().filter(|e| e.name() == "message").filter_map(|e| e.child_text("body", ns::CLIENT)).collect()
}

async fn drain(c: &mut RawClient) -> Vec<Element> {
    let mut v = Vec::new();
    while let Some(e) = c.next(Duration::from_millis(300)).await {
        v.push(e);
    }
    v
}

#[tokio::test]
async fn killed_connection_resumes_with_every_unacked_message_once() {
    let s = server(30).await;
    let mut a = authenticated(&s, "alice").await;
    bind(&mut a, "phone").await;
    let id = enable(&mut a).await;
    a.send("<presence/>").await;
    let mut b = RawClient::connect(s.addr(TlsMode::None)).await.unwrap();
    b.login_plain("bob", "bob-pass", "b").await;
    for i in 1..=3 {
        b.send(&format!("<message to='alice@localhost/phone' type='chat' id='m{i}'><body>m{i}</body></message>")).await;
    }
    // Alice reads m1..m3 and acknowledges everything she has seen so far.
    let seen = drain(&mut a).await;
    assert_eq!(bodies(&seen), ["m1", "m2", "m3"]);
    a.send("<r xmlns='urn:xmpp:sm:3'/>").await;
    let ack = a.expect_where(|e| e.is("a", ns::SM)).await;
    assert_eq!(ack.attr("h"), Some("1"), "one stanza (the presence) received from the client");
    let handled = seen.iter().filter(|e| e.ns() == ns::CLIENT).count();
    a.send(&format!("<a xmlns='urn:xmpp:sm:3' h='{handled}'/>")).await;
    // Two more arrive; the connection dies before Alice acknowledges them.
    b.send("<message to='alice@localhost/phone' type='chat' id='m4'><body>m4</body></message>").await;
    b.send("<message to='alice@localhost/phone' type='chat' id='m5'><body>m5</body></message>").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(a); // socket closed without </stream:stream>
    tokio::time::sleep(Duration::from_millis(200)).await;
    // While detached, messages are kept for the session.
    b.send("<message to='alice@localhost/phone' type='chat' id='m6'><body>m6</body></message>").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Resume on a new connection: m4, m5, m6 once each, nothing already acknowledged.
    let mut a = authenticated(&s, "alice").await;
    a.send(&format!("<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='{handled}'/>")).await;
    let r = a.expect_where(|e| e.is("resumed", ns::SM)).await;
    assert_eq!(r.attr("previd"), Some(id.as_str()));
    assert_eq!(r.attr("h"), Some("1"));
    let again = drain(&mut a).await;
    assert_eq!(bodies(&again), ["m4", "m5", "m6"], "{again:?}");
    // The resumed session keeps routing.
    b.send("<message to='alice@localhost/phone' type='chat' id='m7'><body>m7</body></message>").await;
    let m = a.expect_where(|e| e.name() == "message").await;
    assert_eq!(m.attr("id"), Some("m7"));
    // Nothing went to offline storage.
    let acc = meerkat_storage::Account::new("alice", "localhost");
    assert_eq!(s.ctx.stores.offline.count(acc).await.unwrap(), 0);
    s.stop().await;
}

#[tokio::test]
async fn timed_out_session_sends_unacked_messages_to_offline_storage() {
    let s = server(1).await;
    let mut a = authenticated(&s, "alice").await;
    bind(&mut a, "phone").await;
    let id = enable(&mut a).await;
    a.send("<presence/>").await;
    let mut b = RawClient::connect(s.addr(TlsMode::None)).await.unwrap();
    b.login_plain("bob", "bob-pass", "b").await;
    b.send("<message to='alice@localhost/phone' type='chat' id='lost1'><body>never acked</body></message>").await;
    a.expect_where(|e| e.name() == "message").await;
    drop(a);
    // The resumption window (1 s) passes.
    let acc = meerkat_storage::Account::new("alice", "localhost");
    let mut stored = 0;
    for _ in 0..60 {
        stored = s.ctx.stores.offline.count(acc).await.unwrap();
        if stored > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stored, 1, "the unacknowledged message went to offline storage");
    // A late resume fails, telling how much of the client's stream was handled.
    let mut a = authenticated(&s, "alice").await;
    a.send(&format!("<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='0'/>")).await;
    let f = a.expect_where(|e| e.is("failed", ns::SM)).await;
    assert!(f.has_child("item-not-found", ns::STANZAS), "{f}");
    assert_eq!(f.attr("h"), Some("1"));
    // Binding a fresh session still works and gets the message with a delay stamp.
    bind(&mut a, "phone").await;
    a.send("<presence/>").await;
    let m = a.expect_where(|e| e.name() == "message").await;
    assert_eq!(m.child_text("body", ns::CLIENT).as_deref(), Some("never acked"));
    assert!(m.has_child("delay", ns::DELAY));
    s.stop().await;
}

#[tokio::test]
async fn bad_resumptions_and_acks() {
    let s = server(30).await;
    // Unknown previd.
    let mut a = authenticated(&s, "alice").await;
    a.send("<resume xmlns='urn:xmpp:sm:3' previd='nope' h='0'/>").await;
    assert!(a.expect().await.has_child("item-not-found", ns::STANZAS));
    // Someone else's session cannot be resumed.
    bind(&mut a, "phone").await;
    let id = enable(&mut a).await;
    let mut b = authenticated(&s, "bob").await;
    b.send(&format!("<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='0'/>")).await;
    assert!(b.expect().await.has_child("item-not-found", ns::STANZAS));
    // Enabling twice.
    a.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    assert!(a.expect_where(|e| e.is("failed", ns::SM)).await.has_child("unexpected-request", ns::STANZAS));
    // Acknowledging more than was sent ends the stream.
    a.send("<a xmlns='urn:xmpp:sm:3' h='99'/>").await;
    assert_eq!(a.expect_stream_error().await.as_deref(), Some("undefined-condition"));
    s.stop().await;
}

#[tokio::test]
async fn resume_takes_over_a_still_connected_session() {
    let s = server(30).await;
    let mut old = authenticated(&s, "alice").await;
    bind(&mut old, "phone").await;
    let id = enable(&mut old).await;
    old.send("<presence/>").await;
    drain(&mut old).await;
    // The client reconnects before the server noticed the old connection is dead.
    let mut new = authenticated(&s, "alice").await;
    new.send(&format!("<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='0'/>")).await;
    assert!(new.expect_where(|e| e.is("resumed", ns::SM)).await.attr("h").is_some());
    assert!(old.is_disconnected(Duration::from_secs(3)).await, "the old connection is closed");
    let mut b = RawClient::connect(s.addr(TlsMode::None)).await.unwrap();
    b.login_plain("bob", "bob-pass", "b").await;
    b.send("<message to='alice@localhost/phone' type='chat' id='x'><body>to the new connection</body></message>").await;
    let m = new.expect_where(|e| e.name() == "message").await;
    assert_eq!(m.attr("id"), Some("x"));
    s.stop().await;
}
