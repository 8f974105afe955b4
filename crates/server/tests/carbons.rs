//! Message carbons (XEP-0280) across a user's devices.

use std::time::Duration;

use meerkat::testing::{RawClient, TestServer};
use meerkat_config::TlsMode;
use meerkat_stanza::ns;

async fn online(s: &TestServer, user: &str, res: &str, carbons: bool) -> RawClient {
    let mut c = RawClient::connect(s.addr(TlsMode::None)).await.unwrap();
    c.login_plain(user, &format!("{user}-pass"), res).await;
    if carbons {
        c.send("<iq type='set' id='cb'><enable xmlns='urn:xmpp:carbons:2'/></iq>").await;
        assert_eq!(c.expect_where(|e| e.attr("id") == Some("cb")).await.attr("type"), Some("result"));
    }
    c.send("<presence/>").await;
    c
}

fn forwarded_body(e: &meerkat_xml::Element, kind: &str) -> Option<String> {
    e.get_child(kind, ns::CARBONS)?
        .get_child("forwarded", ns::FORWARD)?
        .get_child("message", ns::CLIENT)?
        .child_text("body", ns::CLIENT)
}

#[tokio::test]
async fn carbons_copy_sent_and_received_messages() {
    let s = TestServer::start().await.unwrap();
    for u in ["alice", "bob"] {
        s.add_user(&format!("{u}@localhost"), &format!("{u}-pass")).await;
    }
    let mut phone = online(&s, "alice", "phone", true).await;
    let mut laptop = online(&s, "alice", "laptop", true).await;
    let mut old = online(&s, "alice", "old", false).await;
    let mut bob = online(&s, "bob", "b", false).await;
    // Received: Bob writes to the phone; the laptop gets a <received/> copy.
    bob.send("<message to='alice@localhost/phone' type='chat' id='r1'><body>hi phone</body></message>").await;
    let m = phone.expect_where(|e| e.name() == "message").await;
    assert_eq!(m.child_text("body", ns::CLIENT).as_deref(), Some("hi phone"));
    let c = laptop.expect_where(|e| e.name() == "message").await;
    assert_eq!(c.attr("from"), Some("alice@localhost"));
    assert_eq!(forwarded_body(&c, "received").as_deref(), Some("hi phone"), "{c}");
    // Sent: the laptop answers; the phone gets a <sent/> copy, the laptop none.
    laptop.send("<message to='bob@localhost' type='chat' id='s1'><body>hi bob</body></message>").await;
    bob.expect_where(|e| e.attr("id") == Some("s1")).await;
    let c = phone.expect_where(|e| e.name() == "message").await;
    assert_eq!(forwarded_body(&c, "sent").as_deref(), Some("hi bob"), "{c}");
    // Private and no-copy messages are not copied.
    bob.send("<message to='alice@localhost/phone' type='chat' id='p1'><body>secret</body><private xmlns='urn:xmpp:carbons:2'/></message>").await;
    phone.expect_where(|e| e.attr("id") == Some("p1")).await;
    while let Some(e) = laptop.next(Duration::from_millis(300)).await {
        assert!(forwarded_body(&e, "received").as_deref() != Some("secret"), "private message copied: {e}");
    }
    // The session without carbons never gets copies.
    while let Some(e) = old.next(Duration::from_millis(300)).await {
        assert!(
            !e.has_child("sent", ns::CARBONS) && !e.has_child("received", ns::CARBONS),
            "copy without carbons: {e}"
        );
    }
    // Disabling stops the copies.
    laptop.send("<iq type='set' id='off'><disable xmlns='urn:xmpp:carbons:2'/></iq>").await;
    laptop.expect_where(|e| e.attr("id") == Some("off")).await;
    bob.send("<message to='alice@localhost/phone' type='chat' id='r2'><body>again</body></message>").await;
    phone.expect_where(|e| e.attr("id") == Some("r2")).await;
    while let Some(e) = laptop.next(Duration::from_millis(300)).await {
        assert!(forwarded_body(&e, "received").is_none(), "copy after disable: {e}");
    }
    s.stop().await;
}

#[tokio::test]
async fn carbons_are_advertised_and_need_a_session() {
    let s = TestServer::start().await.unwrap();
    s.add_user("alice@localhost", "alice-pass").await;
    let mut a = online(&s, "alice", "a", false).await;
    a.send("<iq type='get' id='d' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    let r = a.expect_where(|e| e.attr("id") == Some("d")).await;
    assert!(r.to_string().contains("urn:xmpp:carbons:2"), "{r}");
    a.send("<iq type='get' id='g'><enable xmlns='urn:xmpp:carbons:2'/></iq>").await;
    let r = a.expect_where(|e| e.attr("id") == Some("g")).await;
    assert_eq!(r.attr("type"), Some("error"));
    s.stop().await;
}
