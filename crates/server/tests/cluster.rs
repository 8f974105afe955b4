//! Three Meerkat nodes in one cluster: a nats-server started by the test
//! (Debian's `nats-server`), one shared PostgreSQL schema, clients on different
//! nodes. Messages, presence, IQs, bare-JID delivery by priority across nodes,
//! session conflict across nodes, and an orderly leave.

mod cluster_support;

use std::time::Duration;

use cluster_support::{befriend, cluster_name, node, node_at, online, pg_schema, wait_sessions, Nats, TwoDatacenters};
use meerkat::testing::RawClient;
use meerkat_config::NatsUrls;
use meerkat_config::TlsMode;
use meerkat_stanza::ns;

fn body(e: &meerkat_xml::Element) -> Option<String> {
    e.child_text("body", ns::CLIENT)
}

#[tokio::test]
async fn three_nodes_serve_one_domain() {
    let nats = Nats::start();
    let schema = pg_schema("cluster3");
    let cluster = cluster_name();
    let n1 = node("n1", &nats, &schema, &cluster).await;
    let n2 = node("n2", &nats, &schema, &cluster).await;
    let n3 = node("n3", &nats, &schema, &cluster).await;
    n1.add_user("alice@localhost", "alice-pass").await;
    n1.add_user("bob@localhost", "bob-pass").await;

    let mut a = online(n1.addr(TlsMode::None), "alice", "alice-pass", "laptop").await;
    let mut b = online(n2.addr(TlsMode::None), "bob", "bob-pass", "phone").await;

    // Presence subscriptions, roster pushes and approval across nodes.
    befriend(&mut a, &mut b).await;

    // A presence update reaches the contact on the other node.
    b.send("<presence><show>away</show></presence>").await;
    let p = a
        .expect_where(|e| {
            e.name() == "presence" && e.attr("from") == Some("bob@localhost/phone") && e.has_child("show", ns::CLIENT)
        })
        .await;
    assert_eq!(p.child_text("show", ns::CLIENT).as_deref(), Some("away"));

    // Messages to the bare and to the full JID, both ways.
    a.send("<message to='bob@localhost' type='chat' id='m1'><body>hi bob</body></message>").await;
    let m = b.expect_where(|e| e.name() == "message").await;
    assert_eq!(body(&m).as_deref(), Some("hi bob"));
    assert_eq!(m.attr("from"), Some("alice@localhost/laptop"));
    assert!(m.has_child("stanza-id", ns::SID), "the stanza id is stamped once, before forwarding: {m}");
    b.send("<message to='alice@localhost/laptop' type='chat' id='m2'><body>hi alice</body></message>").await;
    let m = a.expect_where(|e| e.name() == "message").await;
    assert_eq!(body(&m).as_deref(), Some("hi alice"));

    // An IQ to a full JID on another node, and its result back.
    b.send("<iq to='alice@localhost/laptop' type='get' id='v1'><query xmlns='jabber:iq:version'/></iq>").await;
    let iq = a.expect_where(|e| e.name() == "iq" && e.attr("id") == Some("v1")).await;
    assert_eq!(iq.attr("from"), Some("bob@localhost/phone"));
    a.send("<iq to='bob@localhost/phone' type='result' id='v1'><query xmlns='jabber:iq:version'><name>x</name></query></iq>")
        .await;
    let r = b.expect_where(|e| e.name() == "iq" && e.attr("id") == Some("v1")).await;
    assert_eq!(r.attr("type"), Some("result"));
    // An IQ to a resource that exists nowhere: the RFC's error, from wherever it is routed.
    b.send("<iq to='alice@localhost/nowhere' type='get' id='v2'><query xmlns='jabber:iq:version'/></iq>").await;
    let r = b.expect_where(|e| e.name() == "iq" && e.attr("id") == Some("v2")).await;
    assert!(r.get_child("error", ns::CLIENT).is_some_and(|e| e.has_child("service-unavailable", ns::STANZAS)), "{r}");

    // Bare-JID delivery by priority across nodes: alice's second resource on n3
    // with a higher priority takes chat to the bare JID.
    let mut a2 = RawClient::connect(n3.addr(TlsMode::None)).await.unwrap();
    a2.login_plain("alice", "alice-pass", "desk").await;
    a2.send("<presence><priority>10</priority></presence>").await;
    // bob sees the new resource: the directory carries presence to n2 too.
    b.expect_where(|e| e.name() == "presence" && e.attr("from") == Some("alice@localhost/desk")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    b.send("<message to='alice@localhost' type='chat' id='m3'><body>to the top</body></message>").await;
    let m = a2.expect_where(|e| e.name() == "message" && e.attr("id") == Some("m3")).await;
    assert_eq!(body(&m).as_deref(), Some("to the top"));
    assert!(
        a.next(Duration::from_millis(500)).await.is_none_or(|e| !(e.name() == "message" && e.attr("id") == Some("m3"))),
        "the lower-priority resource on n1 must not get it"
    );

    // Session conflict across nodes: alice/desk logs in again on n2; the n3
    // session is replaced (RFC 6120 §7.7.2.2).
    let mut a3 = RawClient::connect(n2.addr(TlsMode::None)).await.unwrap();
    a3.login_plain("alice", "alice-pass", "desk").await;
    assert_eq!(a2.expect_stream_error().await.as_deref(), Some("conflict"));
    a3.send("<presence><priority>5</priority></presence>").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.send("<message to='alice@localhost/desk' type='chat' id='m4'><body>new desk</body></message>").await;
    let m = a3.expect_where(|e| e.name() == "message").await;
    assert_eq!(m.attr("id"), Some("m4"));

    // An orderly stop of n2: its users' contacts get unavailable presence from
    // their sessions, and messages to them are then stored offline.
    n2.stop().await;
    let p = a.expect_where(|e| e.name() == "presence" && e.attr("from") == Some("bob@localhost/phone")).await;
    assert_eq!(p.attr("type"), Some("unavailable"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.send("<message to='bob@localhost' type='chat' id='m5'><body>while you were out</body></message>").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut b2 = RawClient::connect(n3.addr(TlsMode::None)).await.unwrap();
    b2.login_plain("bob", "bob-pass", "phone").await;
    b2.send("<presence/>").await;
    let m = b2.expect_where(|e| e.name() == "message").await;
    assert_eq!(body(&m).as_deref(), Some("while you were out"));
    assert!(m.has_child("delay", ns::DELAY));

    n1.stop().await;
    n3.stop().await;
    cluster_support::drop_schema(&schema).await;
}

/// What a session sends in one burst crosses to another node as few NATS
/// messages (batches of envelopes), and arrives complete and in order.
#[tokio::test]
async fn a_burst_crosses_nodes_in_batches_and_in_order() {
    let nats = Nats::start();
    let schema = pg_schema("batch");
    let cluster = cluster_name();
    let n1 = node("n1", &nats, &schema, &cluster).await;
    let n2 = node("n2", &nats, &schema, &cluster).await;
    n1.add_user("alice@localhost", "alice-pass").await;
    n1.add_user("bob@localhost", "bob-pass").await;
    let mut a = online(n1.addr(TlsMode::None), "alice", "alice-pass", "laptop").await;
    let mut b = online(n2.addr(TlsMode::None), "bob", "bob-pass", "phone").await;
    wait_sessions(&n1, "bob@localhost", 1).await;

    // A second subscriber on the nodes' subjects sees what n1 sends n2. It is
    // in place once its own probe (on a subject no node reads) comes back: the
    // server handles a connection's commands in order, but `flush` does not
    // wait for it, and a subscription still in flight missed the one NATS
    // message the whole burst travels in (CI, sessions 14 and 16).
    let raw = async_nats::connect(nats.url()).await.unwrap();
    let mut tap = raw.subscribe(format!("{cluster}.node.*")).await.unwrap();
    raw.publish(format!("{cluster}.node.probe"), "probe".into()).await.unwrap();
    let probe = async {
        while let Some(m) = futures_util::StreamExt::next(&mut tap).await {
            if m.subject.ends_with(".node.probe") {
                return true;
            }
        }
        false
    };
    assert_eq!(tokio::time::timeout(Duration::from_secs(20), probe).await, Ok(true), "the tap's probe came back");
    let for_n2 = format!("{cluster}.node.n2");

    const N: usize = 50;
    let burst: String = (0..N)
        .map(|i| format!("<message to='bob@localhost/phone' type='chat' id='b{i}'><body>{i}</body></message>"))
        .collect();
    a.send(&burst).await;
    for i in 0..N {
        let m = b.expect_where(|e| e.name() == "message").await;
        assert_eq!(m.attr("id"), Some(format!("b{i}").as_str()), "in order");
    }

    let (mut nats_messages, mut envelopes, mut largest) = (0, 0, 0);
    while envelopes < N {
        // Generous: the envelopes were all sent before bob's last message
        // arrived, but CI runs the other cluster tests on the same two cores.
        let Ok(m) = tokio::time::timeout(Duration::from_secs(20), futures_util::StreamExt::next(&mut tap)).await else {
            panic!("n1's traffic for n2: {envelopes} of {N} envelopes in {nats_messages} NATS messages after 20 s");
        };
        let m = m.expect("the tap's subscription ended");
        if m.subject.as_str() != for_n2 {
            continue; // n2's acknowledgements to n1
        }
        let n = meerkat_cluster::wire::split_batch(&m.payload).map_or(1, |items| items.len());
        nats_messages += 1;
        envelopes += n;
        largest = largest.max(n);
    }
    assert!(largest > 1, "no batch: {nats_messages} NATS messages for {envelopes} envelopes");
    assert!(nats_messages < N / 2, "{nats_messages} NATS messages for {envelopes} envelopes");

    n1.stop().await;
    n2.stop().await;
    cluster_support::drop_schema(&schema).await;
}

/// Multi-datacenter: two NATS clusters of two servers joined by a gateway, a
/// Meerkat node in each, one domain and one (global) PostgreSQL. A user in dc1
/// and a user in dc2 subscribe to each other and chat.
#[tokio::test]
async fn two_datacenters_joined_by_a_nats_gateway() {
    let dcs = TwoDatacenters::start();
    let schema = pg_schema("dc");
    let cluster = cluster_name();
    let eu = node_at("eu1", NatsUrls::Many(dcs.dc1.clone()), &schema, &cluster).await;
    let us = node_at("us1", NatsUrls::Many(dcs.dc2.clone()), &schema, &cluster).await;
    eu.add_user("alice@localhost", "alice-pass").await;
    eu.add_user("bob@localhost", "bob-pass").await;

    let mut a = online(eu.addr(TlsMode::None), "alice", "alice-pass", "berlin").await;
    let mut b = online(us.addr(TlsMode::None), "bob", "bob-pass", "boston").await;
    // The gateway forms within a few seconds; then each node knows the other's sessions.
    wait_sessions(&eu, "bob@localhost", 1).await;
    wait_sessions(&us, "alice@localhost", 1).await;

    befriend(&mut a, &mut b).await;
    a.send("<message to='bob@localhost' type='chat' id='x1'><body>hello from Berlin</body></message>").await;
    let m = b.expect_where(|e| e.name() == "message").await;
    assert_eq!(body(&m).as_deref(), Some("hello from Berlin"));
    b.send("<message to='alice@localhost/berlin' type='chat' id='x2'><body>hi from Boston</body></message>").await;
    let m = a.expect_where(|e| e.name() == "message").await;
    assert_eq!(body(&m).as_deref(), Some("hi from Boston"));
    b.send("<presence><status>at lunch</status></presence>").await;
    let p = a
        .expect_where(|e| e.name() == "presence" && e.child_text("status", ns::CLIENT).as_deref() == Some("at lunch"))
        .await;
    assert_eq!(p.attr("from"), Some("bob@localhost/boston"));

    eu.stop().await;
    us.stop().await;
    cluster_support::drop_schema(&schema).await;
}

/// Cluster-wide singletons (the mechanism MUC rooms use): one owner per key,
/// a lost owner's key goes to the next claimer, an owner learns when another
/// node took its key over, and an orderly stop releases what a node owned.
#[tokio::test]
async fn singletons_have_one_owner_and_move_when_the_owner_is_gone() {
    use meerkat_core::cluster::Owner;
    let nats = Nats::start();
    let schema = pg_schema("single");
    let cluster = cluster_name();
    let n1 = node("n1", &nats, &schema, &cluster).await;
    let n2 = node("n2", &nats, &schema, &cluster).await;
    let n3 = node("n3", &nats, &schema, &cluster).await;

    let Owner::Me(mut lease) = n1.ctx.singletons().claim("room1").await.unwrap() else {
        panic!("a free key goes to its first claimer")
    };
    match n2.ctx.singletons().claim("room1").await.unwrap() {
        Owner::Node(n) => assert_eq!(&*n, "n1"),
        Owner::Me(_) => panic!("room1 has an owner already"),
    }
    assert!(matches!(n1.ctx.singletons().claim("room1").await.unwrap(), Owner::Me(_)), "still n1's");

    // A key held by a node that is not a live member (a lost node's) is taken over.
    let store = &n1.ctx.stores.singletons;
    assert!(store.create_singleton("room2", "ghost 1").await.unwrap());
    assert!(matches!(n2.ctx.singletons().claim("room2").await.unwrap(), Owner::Me(_)));
    match n1.ctx.singletons().claim("room2").await.unwrap() {
        Owner::Node(n) => assert_eq!(&*n, "n2"),
        Owner::Me(_) => panic!("room2 went to n2"),
    }

    // An owner taken for lost (a partition) hears of the takeover when the
    // taker announces it on the directory subject; an announcement about another
    // incarnation of the node is not its loss.
    assert!(!lease.is_lost());
    let (owner, _) = store.singleton_owner("room1").await.unwrap().unwrap();
    let (_, inc) = owner.split_once(' ').unwrap();
    let inc: u64 = inc.parse().unwrap();
    let raw = async_nats::connect(nats.url()).await.unwrap();
    let took = |from: String| {
        let msg = meerkat_cluster::wire::Msg::Took { key: "room1".into(), from };
        meerkat_cluster::wire::Envelope { from: "n9".into(), inc: 9, msg }.encode()
    };
    raw.publish(format!("{cluster}.dir"), took(format!("n1 {}", inc ^ 1))).await.unwrap();
    raw.flush().await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(500), lease.lost()).await.is_err(), "not this incarnation");
    raw.publish(format!("{cluster}.dir"), took(owner.clone())).await.unwrap();
    raw.flush().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), lease.lost()).await.expect("the owner hears of the takeover");
    assert!(lease.is_lost());

    // An orderly stop releases: the key is free for the other node at once.
    assert!(matches!(n1.ctx.singletons().claim("room3").await.unwrap(), Owner::Me(_)));
    n1.stop().await;
    assert!(matches!(n2.ctx.singletons().claim("room3").await.unwrap(), Owner::Me(_)));

    n2.stop().await;
    n3.stop().await;
    cluster_support::drop_schema(&schema).await;
}

/// A node whose NATS cannot be reached does not start, and says where it tried.
#[tokio::test]
async fn an_unreachable_nats_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = meerkat::testing::test_config(dir.path());
    let url = format!("nats://127.0.0.1:{}", cluster_support::free_port());
    cfg.cluster = Some(cluster_support::cluster_config("n1", NatsUrls::One(url.clone()), "t"));
    let server = meerkat::build(std::sync::Arc::new(cfg), meerkat_storage::memory::stores());
    let err = meerkat_cluster::join(server.ctx.clone(), server.router.clone()).await.err().expect("no NATS, no node");
    assert!(format!("{err:#}").contains(&format!("connecting to NATS at {url}")), "{err:#}");
}
