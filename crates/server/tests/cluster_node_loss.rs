//! Node loss: three Meerkat processes in one cluster over a nats-server of the
//! test's own; one is killed with SIGKILL. Its users' contacts see them go
//! offline within the node timeout, messages sent to them — including those
//! forwarded to the dead node before anyone noticed — end in offline storage,
//! and the users get them when they reconnect to a surviving node. A persistent
//! MUC room of the killed node comes back on a survivor from storage.

mod cluster_support;

use std::time::{Duration, Instant};

use cluster_support::{
    add_users, befriend, cluster_name, create_schema, drop_schema, online, pg_schema, Nats, NodeProcess,
};
use meerkat::testing::RawClient;
use meerkat_stanza::ns;

#[tokio::test]
async fn a_killed_node_is_noticed_and_nothing_is_lost() {
    let nats = Nats::start();
    let schema = pg_schema("loss");
    create_schema(&schema).await;
    let cluster = cluster_name();
    let n1 = NodeProcess::start("n1", &nats.url(), &schema, &cluster);
    let mut n2 = NodeProcess::start("n2", &nats.url(), &schema, &cluster);
    let n3 = NodeProcess::start("n3", &nats.url(), &schema, &cluster);
    add_users(&schema, &[("alice@localhost", "alice-pass"), ("bob@localhost", "bob-pass")]).await;
    // The nodes serve once they learnt each other.
    tokio::time::sleep(Duration::from_millis(800)).await;

    let mut a = online(n1.addr(), "alice", "alice-pass", "laptop").await;
    let mut b = online(n2.addr(), "bob", "bob-pass", "phone").await;
    befriend(&mut a, &mut b).await;
    a.send("<message to='bob@localhost' type='chat' id='m0'><body>before</body></message>").await;
    let m = b.expect_where(|e| e.name() == "message").await;
    assert_eq!(m.attr("id"), Some("m0"), "n1 → n2 works before the kill");
    // Acknowledgements go out every 10 ms: a stanza delivered in the last
    // instants before a crash is routed again (at least once, same stanza id).
    tokio::time::sleep(Duration::from_millis(100)).await;

    // kill -9: n2's sessions cannot say goodbye.
    n2.kill();
    let killed = Instant::now();
    // Sent before the cluster noticed: forwarded to the dead node, unacknowledged.
    a.send("<message to='bob@localhost' type='chat' id='m1'><body>into the void?</body></message>").await;
    let p = a.expect_where(|e| e.name() == "presence" && e.attr("from") == Some("bob@localhost/phone")).await;
    let noticed = killed.elapsed();
    assert_eq!(p.attr("type"), Some("unavailable"), "{p}");
    assert!(noticed <= Duration::from_secs(5), "the node's loss took {noticed:?} to notice");
    // Sent after: stored offline at once.
    a.send("<message to='bob@localhost' type='chat' id='m2'><body>after</body></message>").await;

    // bob reconnects to a surviving node and gets both, once each.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut b2 = RawClient::connect(n3.addr()).await.unwrap();
    b2.login_plain("bob", "bob-pass", "phone").await;
    b2.send("<presence/>").await;
    let mut got = Vec::new();
    while let Some(e) = b2.next(Duration::from_secs(2)).await {
        if e.name() == "message" {
            assert!(e.has_child("delay", ns::DELAY), "from offline storage: {e}");
            got.push(e.attr("id").unwrap_or_default().to_string());
        }
    }
    got.sort();
    assert_eq!(got, ["m1", "m2"], "n1's log:\n{}\nn3's log:\n{}", n1.log(), n3.log());

    drop(n1);
    drop(n3);
    drop_schema(&schema).await;
}

/// A persistent MUC room whose node is killed: the next stanza for it on a
/// surviving node claims it (the dead owner is no live member), loads it from
/// storage with its history from the room archive, and the occupants rejoin.
#[tokio::test]
async fn a_room_of_a_killed_node_comes_back_from_storage() {
    const ROOM: &str = "keep@conference.localhost";
    const MUC: &str = "http://jabber.org/protocol/muc";
    let nats = Nats::start();
    let schema = pg_schema("mucloss");
    create_schema(&schema).await;
    let cluster = cluster_name();
    let mut n1 = NodeProcess::start("n1", &nats.url(), &schema, &cluster);
    let n2 = NodeProcess::start("n2", &nats.url(), &schema, &cluster);
    add_users(&schema, &[("alice@localhost", "alice-pass"), ("bob@localhost", "bob-pass")]).await;
    tokio::time::sleep(Duration::from_millis(800)).await;

    // Alice creates a persistent room through n1, which runs it; Bob joins from n2.
    let mut a = online(n1.addr(), "alice", "alice-pass", "laptop").await;
    a.send(&format!("<presence to='{ROOM}/Alice'><x xmlns='{MUC}'/></presence>")).await;
    a.expect_where(|e| e.name() == "message" && e.attr("from") == Some(ROOM)).await;
    a.send(&format!(
        "<iq type='set' to='{ROOM}' id='cfg'><query xmlns='http://jabber.org/protocol/muc#owner'>\
           <x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_persistentroom'><value>1</value></field></x>\
         </query></iq>"
    ))
    .await;
    let r = a.expect_where(|e| e.attr("id") == Some("cfg")).await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let mut b = online(n2.addr(), "bob", "bob-pass", "phone").await;
    b.send(&format!("<presence to='{ROOM}/Bob'><x xmlns='{MUC}'/></presence>")).await;
    b.expect_where(|e| e.name() == "message" && e.has_child("subject", ns::CLIENT)).await;
    a.send(&format!("<message to='{ROOM}' type='groupchat' id='g1'><body>kept</body></message>")).await;
    b.expect_where(|e| e.attr("id") == Some("g1")).await;
    // The archive writer flushes every 100 ms here; then n1 dies.
    tokio::time::sleep(Duration::from_millis(500)).await;
    n1.kill();

    // Bob joins again (his room is gone with n1): once n2 takes the room over,
    // the join succeeds and the history comes from the room's archive.
    let deadline = Instant::now() + Duration::from_secs(10);
    let history = loop {
        b.send(&format!("<presence to='{ROOM}/Bob'><x xmlns='{MUC}'><history maxstanzas='5'/></x></presence>")).await;
        let mut history = Vec::new();
        let mut joined = false;
        while let Some(e) = b.next(Duration::from_secs(2)).await {
            if !e.attr("from").is_some_and(|f| f.starts_with(ROOM)) {
                continue;
            }
            if e.attr("type") == Some("error") {
                break;
            }
            if e.name() == "message" && e.has_child("subject", ns::CLIENT) {
                joined = true;
                break;
            }
            if let Some(body) = e.child_text("body", ns::CLIENT) {
                history.push(body);
            }
        }
        if joined {
            break history;
        }
        assert!(Instant::now() < deadline, "the room did not come back; n2's log:\n{}", n2.log());
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(history, ["kept"]);
    b.send(&format!("<message to='{ROOM}' type='groupchat' id='g2'><body>still here</body></message>")).await;
    let m = b.expect_where(|e| e.attr("id") == Some("g2")).await;
    assert_eq!(m.attr("from"), Some("keep@conference.localhost/Bob"));
    drop(n2);
    drop_schema(&schema).await;
}
