//! Stream resumption (XEP-0198) on another node: a client whose connection to
//! one node died resumes on another; the session moves there with its
//! unacknowledged and not yet sent stanzas, each delivered once, and keeps
//! receiving there.

mod cluster_support;

use std::time::Duration;

use cluster_support::{cluster_name, node, online, pg_schema, Nats};
use meerkat::testing::{RawClient, TestServer};
use meerkat_config::TlsMode;
use meerkat_stanza::ns;
use meerkat_xml::Element;

/// Authenticates (PLAIN); the client is at the bind stage.
async fn authenticated(s: &TestServer, user: &str) -> RawClient {
    let mut c = RawClient::connect(s.addr(TlsMode::None)).await.unwrap();
    c.authenticate_plain(user, &format!("{user}-pass")).await;
    c
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
async fn a_session_resumes_on_another_node() {
    let nats = Nats::start();
    let schema = pg_schema("resume");
    let cluster = cluster_name();
    let n1 = node("n1", &nats, &schema, &cluster).await;
    let n2 = node("n2", &nats, &schema, &cluster).await;
    n1.add_user("alice@localhost", "alice-pass").await;
    n1.add_user("bob@localhost", "bob-pass").await;

    // Alice on n1, resumable; Bob on n2 writes to her.
    let mut a = authenticated(&n1, "alice").await;
    a.send(
        "<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>phone</resource></bind></iq>",
    )
    .await;
    a.expect_where(|e| e.attr("id") == Some("b")).await;
    a.send("<iq type='set' id='cc'><enable xmlns='urn:xmpp:carbons:2'/></iq>").await;
    a.expect_where(|e| e.attr("id") == Some("cc") && e.attr("type") == Some("result")).await;
    a.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>").await;
    let id = a.expect_where(|e| e.is("enabled", ns::SM)).await.attr("id").unwrap().to_owned();
    a.send("<presence/>").await;
    let mut b = online(n2.addr(TlsMode::None), "bob", "bob-pass", "desk").await;
    b.send("<message to='alice@localhost/phone' type='chat' id='m1'><body>m1</body></message>").await;
    let seen = drain(&mut a).await;
    assert_eq!(bodies(&seen), ["m1"]);
    let handled = seen.iter().filter(|e| e.ns() == ns::CLIENT).count();
    a.send(&format!("<a xmlns='urn:xmpp:sm:3' h='{handled}'/>")).await;
    // m2 arrives unacknowledged; the connection dies; m3 arrives while detached.
    b.send("<message to='alice@localhost/phone' type='chat' id='m2'><body>m2</body></message>").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.send("<message to='alice@localhost/phone' type='chat' id='m3'><body>m3</body></message>").await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Alice comes back through n2: the session moves from n1.
    let mut a = authenticated(&n2, "alice").await;
    a.send(&format!("<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='{handled}'/>")).await;
    let r = a.expect_where(|e| e.is("resumed", ns::SM) || e.is("failed", ns::SM)).await;
    assert!(r.is("resumed", ns::SM), "{r}");
    assert_eq!(r.attr("h"), Some("1"), "the server had one stanza (the presence) from the client");
    let again = drain(&mut a).await;
    assert_eq!(bodies(&again), ["m2", "m3"], "each once, in order: {again:?}");
    // The session lives on n2 now: new messages and replies go both ways.
    b.send("<message to='alice@localhost/phone' type='chat' id='m4'><body>m4</body></message>").await;
    let m = a.expect_where(|e| e.name() == "message").await;
    assert_eq!(m.child_text("body", ns::CLIENT).as_deref(), Some("m4"));
    a.send("<message to='bob@localhost/desk' type='chat' id='r1'><body>back</body></message>").await;
    let m = b.expect_where(|e| e.name() == "message" && e.attr("id") == Some("r1")).await;
    assert_eq!(m.attr("from"), Some("alice@localhost/phone"));
    assert_eq!(n1.ctx.router.user_session_count(&"alice@localhost".parse().unwrap()), 1, "one session, on n2");
    // Carbons, enabled on n1, came along: a message to Alice's laptop on n1
    // reaches the phone on n2 as a carbon copy.
    let mut laptop = online(n1.addr(TlsMode::None), "alice", "alice-pass", "laptop").await;
    b.send("<message to='alice@localhost/laptop' type='chat' id='c1'><body>to the laptop</body></message>").await;
    laptop.expect_where(|e| e.attr("id") == Some("c1")).await;
    let copy = a.expect_where(|e| e.name() == "message" && e.has_child("received", ns::CARBONS)).await;
    assert_eq!(copy.attr("from"), Some("alice@localhost"), "{copy}");
    // An id no node knows fails cleanly.
    let mut c = authenticated(&n2, "alice").await;
    c.send("<resume xmlns='urn:xmpp:sm:3' previd='nobody-has-this' h='0'/>").await;
    let f = c.expect_where(|e| e.is("failed", ns::SM)).await;
    assert!(f.has_child("item-not-found", ns::STANZAS), "{f}");

    n1.stop().await;
    n2.stop().await;
    cluster_support::drop_schema(&schema).await;
}
