//! A MUC room in a cluster: it runs on one node (a cluster-wide singleton),
//! occupants on every node take part, and when the room's node stops another
//! node takes the (persistent) room over from storage.

mod cluster_support;

use std::time::Duration;

use cluster_support::{cluster_name, node, online, pg_schema, Nats};
use meerkat::testing::RawClient;
use meerkat_config::TlsMode;
use meerkat_stanza::ns;
use meerkat_xml::Element;

const MUC: &str = "http://jabber.org/protocol/muc";
const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
const ROOM: &str = "hall@conference.localhost";

fn body(e: &Element) -> Option<String> {
    e.child_text("body", ns::CLIENT)
}

fn from_room(e: &Element) -> bool {
    e.attr("from").is_some_and(|f| f.starts_with(ROOM))
}

/// Joins and reads up to the subject; returns the history messages seen.
async fn join(c: &mut RawClient, nick: &str) -> Vec<Element> {
    c.send(&format!("<presence to='{ROOM}/{nick}'><x xmlns='{MUC}'/></presence>")).await;
    let mut history = Vec::new();
    loop {
        let e = c.expect_where(from_room).await;
        assert_ne!(e.attr("type"), Some("error"), "{nick} joining: {e}");
        if e.name() == "message" && e.has_child("subject", ns::CLIENT) {
            return history;
        }
        if e.name() == "message" {
            history.push(e);
        }
    }
}

#[tokio::test]
async fn a_room_serves_occupants_on_every_node_and_moves_when_its_node_stops() {
    let nats = Nats::start();
    let schema = pg_schema("muc");
    let cluster = cluster_name();
    let n1 = node("n1", &nats, &schema, &cluster).await;
    let n2 = node("n2", &nats, &schema, &cluster).await;
    let n3 = node("n3", &nats, &schema, &cluster).await;
    for u in ["owner", "bob", "carol"] {
        n1.add_user(&format!("{u}@localhost"), &format!("{u}-pass")).await;
    }
    let mut owner = online(n1.addr(TlsMode::None), "owner", "owner-pass", "r").await;
    let mut bob = online(n2.addr(TlsMode::None), "bob", "bob-pass", "r").await;
    let mut carol = online(n3.addr(TlsMode::None), "carol", "carol-pass", "r").await;

    // The owner creates a persistent room through n1, which now runs it.
    owner.send(&format!("<presence to='{ROOM}/Boss'><x xmlns='{MUC}'/></presence>")).await;
    owner.expect_where(|e| from_room(e) && e.name() == "message").await;
    owner
        .send(&format!(
            "<iq type='set' to='{ROOM}' id='cfg'><query xmlns='http://jabber.org/protocol/muc#owner'>\
               <x xmlns='jabber:x:data' type='submit'>\
                 <field var='muc#roomconfig_persistentroom'><value>1</value></field>\
               </x></query></iq>"
        ))
        .await;
    let r = owner.expect_where(|e| e.attr("id") == Some("cfg")).await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");

    // Occupants on n2 and n3 join through their own nodes: their stanzas are
    // forwarded to n1, the room's answers come back to them.
    join(&mut bob, "Bob").await;
    join(&mut carol, "Carol").await;
    owner.expect_where(|e| e.attr("from") == Some("hall@conference.localhost/Carol")).await;
    owner.send(&format!("<message to='{ROOM}' type='groupchat'><body>one</body></message>")).await;
    bob.send(&format!("<message to='{ROOM}' type='groupchat'><body>two</body></message>")).await;
    for c in [&mut owner, &mut bob, &mut carol] {
        let mut got = Vec::new();
        while got.len() < 2 {
            let m = c.expect_where(|e| e.name() == "message" && body(e).is_some()).await;
            got.push(body(&m).unwrap());
        }
        got.sort();
        assert_eq!(got, ["one", "two"]);
    }
    // A private message between occupants on n3 and n2.
    carol.send(&format!("<message to='{ROOM}/Bob' type='chat' id='pm'><body>psst</body></message>")).await;
    let m = bob.expect_where(|e| e.attr("id") == Some("pm")).await;
    assert_eq!(m.attr("from"), Some("hall@conference.localhost/Carol"));
    assert!(m.has_child("x", MUC_USER));

    // n1 stops. The room's next stanza claims it for another node, which loads
    // it from storage; Bob (not an occupant there) rejoins and gets the history.
    drop(owner);
    n1.stop().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let history = loop {
        bob.send(&format!("<presence to='{ROOM}/Bob'><x xmlns='{MUC}'><history maxstanzas='5'/></x></presence>")).await;
        let mut history = Vec::new();
        let mut ok = false;
        while let Some(e) = bob.next(Duration::from_secs(2)).await {
            if !from_room(&e) {
                continue;
            }
            if e.attr("type") == Some("error") {
                break;
            }
            if e.name() == "message" && e.has_child("subject", ns::CLIENT) {
                ok = true;
                break;
            }
            if e.name() == "message" && body(&e).is_some() {
                history.push(body(&e).unwrap());
            }
        }
        if ok {
            break history;
        }
        assert!(tokio::time::Instant::now() < deadline, "the room did not come back on another node");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(history, ["one", "two"], "history from the room's archive");
    // Carol, on the third node, reaches the room on its new node.
    join(&mut carol, "Carol").await;
    carol.send(&format!("<message to='{ROOM}' type='groupchat'><body>three</body></message>")).await;
    let m = bob.expect_where(|e| body(e).as_deref() == Some("three")).await;
    assert_eq!(m.attr("from"), Some("hall@conference.localhost/Carol"));

    n2.stop().await;
    n3.stop().await;
    cluster_support::drop_schema(&schema).await;
}
