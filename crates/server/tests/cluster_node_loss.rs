//! Node loss: three Meerkat processes in one cluster over a nats-server of the
//! test's own; one is killed with SIGKILL. Its users' contacts see them go
//! offline within the node timeout, messages sent to them — including those
//! forwarded to the dead node before anyone noticed — end in offline storage,
//! and the users get them when they reconnect to a surviving node.

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
