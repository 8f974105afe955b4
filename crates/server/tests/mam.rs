//! XEP-0313 message archive end to end over real sockets: archiving at both ends
//! (online and offline recipients), every query filter, paging over more than 1,000
//! messages in both directions, flip-page, preferences (XEP-0441), retraction
//! (XEP-0424), errors, metadata, account deletion and the writer's shutdown flush,
//! on SQLite and on PostgreSQL.

use std::time::Duration;

use meerkat::testing::{test_config, RawClient, TestServer};
use meerkat_config::TlsMode;
use meerkat_modules::stanza_id::{encode_id, new_archive_id};
use meerkat_stanza::ns;
use meerkat_storage::{Account, ArchiveEntry, ArchiveQuery, ArchivedMessage, Direction};
use meerkat_xml::Element;

const MAM: &str = "urn:xmpp:mam:2";
const RSM: &str = "http://jabber.org/protocol/rsm";

async fn sqlite_server() -> TestServer {
    let s = TestServer::start().await.expect("server starts");
    users(&s).await;
    s
}

async fn users(s: &TestServer) {
    for u in ["alice", "bob", "carol"] {
        s.add_user(&format!("{u}@localhost"), &format!("{u}-pass")).await;
    }
}

async fn online(s: &TestServer, user: &str, res: &str) -> RawClient {
    let mut c = RawClient::connect(s.addr(TlsMode::None)).await.expect("connect");
    c.login_plain(user, &format!("{user}-pass"), res).await;
    c.send("<presence/>").await;
    c.expect_where(|e| e.name() == "presence").await;
    c
}

fn body(m: &Element) -> Option<String> {
    m.child_text("body", ns::CLIENT)
}

/// One archived result: its archive id and the forwarded message.
struct Hit {
    id: String,
    msg: Element,
    stamp: String,
}

/// Sends a query and collects the results and the IQ answer.
async fn query(c: &mut RawClient, ns_: &str, qid: &str, form: &str, set: &str, extra: &str) -> (Vec<Hit>, Element) {
    let x = if form.is_empty() {
        String::new()
    } else {
        format!(
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>{ns_}</value></field>{form}</x>"
        )
    };
    let iq_id = format!("iq-{qid}");
    c.send(&format!("<iq type='set' id='{iq_id}'><query xmlns='{ns_}' queryid='{qid}'>{x}{set}{extra}</query></iq>"))
        .await;
    let mut hits = Vec::new();
    loop {
        let e = c.expect().await;
        if e.name() == "iq" && e.attr("id") == Some(iq_id.as_str()) {
            return (hits, e);
        }
        if let Some(r) = e.get_child("result", ns_) {
            assert_eq!(r.attr("queryid"), Some(qid), "{e}");
            let fwd = r.get_child("forwarded", ns::FORWARD).expect("forwarded");
            let stamp = fwd.get_child("delay", ns::DELAY).and_then(|d| d.attr("stamp")).expect("delay").to_owned();
            let msg = fwd.get_child("message", ns::CLIENT).expect("message").clone();
            hits.push(Hit { id: r.attr("id").expect("id").to_owned(), msg, stamp });
        }
    }
}

fn with(jid: &str) -> String {
    format!("<field var='with'><value>{jid}</value></field>")
}

fn field(var: &str, v: &str) -> String {
    format!("<field var='{var}'><value>{v}</value></field>")
}

fn rsm(inner: &str) -> String {
    format!("<set xmlns='{RSM}'>{inner}</set>")
}

fn fin(iq: &Element) -> &Element {
    assert_eq!(iq.attr("type"), Some("result"), "{iq}");
    iq.get_child("fin", MAM).unwrap_or_else(|| panic!("no fin: {iq}"))
}

fn error_condition(iq: &Element) -> String {
    assert_eq!(iq.attr("type"), Some("error"), "{iq}");
    let err = iq.get_child("error", ns::CLIENT).expect("error");
    err.children().find(|c| c.ns() == ns::STANZAS).map(|c| c.name().to_owned()).expect("condition")
}

fn bodies(hits: &[Hit]) -> Vec<String> {
    hits.iter().map(|h| body(&h.msg).unwrap_or_default()).collect()
}

#[tokio::test]
async fn archives_both_ends_and_filters() {
    let s = sqlite_server().await;
    let mut a = online(&s, "alice", "desk").await;
    let mut b = online(&s, "bob", "phone").await;

    // Three archived messages, and four that are not: a chat state, a no-store
    // hint, a headline and an error.
    let mut seen_ids = Vec::new();
    for i in 1..=3 {
        a.send(&format!("<message to='bob@localhost' type='chat' id='m{i}'><body>hello {i}</body></message>")).await;
        let m = b.expect_where(|e| e.name() == "message").await;
        let sid = m
            .children()
            .find(|c| c.is("stanza-id", ns::SID) && c.attr("by") == Some("bob@localhost"))
            .and_then(|c| c.attr("id"))
            .expect("stanza id by bob")
            .to_owned();
        seen_ids.push(sid);
    }
    a.send("<message to='bob@localhost' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>")
        .await;
    a.send("<message to='bob@localhost' type='chat'><body>secret</body><no-store xmlns='urn:xmpp:hints'/></message>")
        .await;
    a.send("<message to='bob@localhost' type='headline'><body>news</body></message>").await;
    a.send("<message to='bob@localhost' type='error'><body>err</body></message>").await;
    // Bob replies from his phone.
    b.send("<message to='alice@localhost/desk' type='chat' id='r1'><body>reply</body></message>").await;
    a.expect_where(|e| e.name() == "message" && body(e).as_deref() == Some("reply")).await;

    // Bob's archive: the ids are the stanza ids he saw; in order; delay stamps.
    let (hits, iq) = query(&mut b, MAM, "q1", "", "", "").await;
    assert_eq!(bodies(&hits), vec!["hello 1", "hello 2", "hello 3", "reply"]);
    assert_eq!(hits.iter().take(3).map(|h| h.id.clone()).collect::<Vec<_>>(), seen_ids);
    assert!(hits.iter().all(|h| h.stamp.ends_with('Z')));
    assert_eq!(hits[0].msg.attr("from"), Some("alice@localhost/desk"));
    let f = fin(&iq);
    assert_eq!(f.attr("complete"), Some("true"));
    let set = f.get_child("set", RSM).expect("set");
    assert_eq!(set.child_text("first", RSM).as_deref(), Some(hits[0].id.as_str()));
    assert_eq!(set.child_text("last", RSM).as_deref(), Some(hits[3].id.as_str()));
    assert!(set.get_child("count", RSM).is_none());

    // Alice's archive has the same conversation, with her own ids.
    let (ahits, _) = query(&mut a, MAM, "q2", "", "", "").await;
    assert_eq!(bodies(&ahits), vec!["hello 1", "hello 2", "hello 3", "reply"]);
    assert!(ahits.iter().all(|h| !seen_ids.contains(&h.id)));
    // Both archives hold the message as its sender sent it, without the stanza
    // ids the archives stamped (each result carries its own id).
    for (mine, theirs) in ahits.iter().zip(&hits) {
        assert_eq!(mine.msg, theirs.msg);
        assert!(!mine.msg.has_child("stanza-id", ns::SID), "{}", mine.msg);
    }

    // with: bare, full (resource), other.
    let (h, _) = query(&mut a, MAM, "w1", &with("bob@localhost"), "", "").await;
    assert_eq!(h.len(), 4);
    let (h, _) = query(&mut a, MAM, "w2", &with("bob@localhost/phone"), "", "").await;
    assert_eq!(bodies(&h), vec!["reply"], "only the message from bob's phone has that resource");
    let (h, _) = query(&mut a, MAM, "w3", &with("carol@localhost"), "", "").await;
    assert!(h.is_empty());

    // start / end from the delay stamps (millisecond precision: inclusive).
    let (h, _) = query(&mut b, MAM, "t1", &field("start", &hits[1].stamp), "", "").await;
    assert!(bodies(&h).starts_with(&["hello 2".to_owned()]) || bodies(&h).starts_with(&["hello 1".to_owned()]));
    assert!(bodies(&h).contains(&"reply".to_owned()));
    let (h, _) = query(&mut b, MAM, "t2", &field("end", "2000-01-01T00:00:00Z"), "", "").await;
    assert!(h.is_empty());
    let (h, _) = query(&mut b, MAM, "t3", &field("start", "2000-01-01T00:00:00+01:00"), "", "").await;
    assert_eq!(h.len(), 4);

    // after-id / before-id / both, ids.
    let (h, _) = query(&mut b, MAM, "i1", &field("after-id", &hits[1].id), "", "").await;
    assert_eq!(bodies(&h), vec!["hello 3", "reply"]);
    let (h, _) = query(&mut b, MAM, "i2", &field("before-id", &hits[1].id), "", "").await;
    assert_eq!(bodies(&h), vec!["hello 1"]);
    let both = format!("{}{}", field("after-id", &hits[0].id), field("before-id", &hits[3].id));
    let (h, _) = query(&mut b, MAM, "i3", &both, "", "").await;
    assert_eq!(bodies(&h), vec!["hello 2", "hello 3"]);
    let ids = format!("<field var='ids'><value>{}</value><value>{}</value></field>", hits[3].id, hits[0].id);
    let (h, _) = query(&mut b, MAM, "i4", &ids, "", "").await;
    assert_eq!(bodies(&h), vec!["hello 1", "reply"]);

    // RSM paging and flip-page.
    let (h, iq) = query(&mut b, MAM, "p1", "", &rsm("<max>2</max>"), "").await;
    assert_eq!(bodies(&h), vec!["hello 1", "hello 2"]);
    assert_eq!(fin(&iq).attr("complete"), Some("false"));
    let (h, iq) = query(&mut b, MAM, "p2", "", &rsm(&format!("<max>2</max><after>{}</after>", hits[1].id)), "").await;
    assert_eq!(bodies(&h), vec!["hello 3", "reply"]);
    assert_eq!(fin(&iq).attr("complete"), Some("true"));
    let (h, iq) = query(&mut b, MAM, "p3", "", &rsm("<max>3</max><before/>"), "").await;
    assert_eq!(bodies(&h), vec!["hello 2", "hello 3", "reply"]);
    assert_eq!(fin(&iq).attr("complete"), Some("false"));
    let (h, iq) = query(&mut b, MAM, "p4", "", &rsm("<max>3</max><before/>"), "<flip-page/>").await;
    assert_eq!(bodies(&h), vec!["reply", "hello 3", "hello 2"]);
    assert_eq!(fin(&iq).attr("complete"), Some("false"));
    let (h, _) = query(&mut b, MAM, "p5", "", &rsm(&format!("<before>{}</before>", hits[1].id)), "").await;
    assert_eq!(bodies(&h), vec!["hello 1"]);

    // urn:xmpp:mam:1: the same archive, queryid on <fin/>.
    let (h, iq) = query(&mut b, "urn:xmpp:mam:1", "v1", "", "", "").await;
    assert_eq!(h.len(), 4);
    let f = iq.get_child("fin", "urn:xmpp:mam:1").expect("fin");
    assert_eq!(f.attr("queryid"), Some("v1"));

    // Form discovery, metadata, disco features.
    b.send(&format!("<iq type='get' id='form'><query xmlns='{MAM}'/></iq>")).await;
    let r = b.expect_where(|e| e.attr("id") == Some("form")).await;
    let x = r.get_child("query", MAM).and_then(|q| q.get_child("x", ns::DATA_FORMS)).expect("form");
    let vars: Vec<&str> = x.children().filter_map(|f| f.attr("var")).collect();
    assert_eq!(vars, vec!["FORM_TYPE", "with", "start", "end", "before-id", "after-id", "ids"]);
    b.send(&format!("<iq type='get' id='md'><metadata xmlns='{MAM}'/></iq>")).await;
    let r = b.expect_where(|e| e.attr("id") == Some("md")).await;
    let md = r.get_child("metadata", MAM).expect("metadata");
    assert_eq!(md.get_child("start", MAM).and_then(|e| e.attr("id")), Some(hits[0].id.as_str()));
    assert_eq!(md.get_child("end", MAM).and_then(|e| e.attr("id")), Some(hits[3].id.as_str()));
    assert_eq!(md.get_child("end", MAM).and_then(|e| e.attr("timestamp")), Some(hits[3].stamp.as_str()));
    let mut c = online(&s, "carol", "x").await;
    c.send(&format!("<iq type='get' id='md'><metadata xmlns='{MAM}'/></iq>")).await;
    let r = c.expect_where(|e| e.attr("id") == Some("md")).await;
    assert_eq!(r.get_child("metadata", MAM).map(|m| m.children().count()), Some(0), "empty archive: {r}");
    b.send("<iq type='get' id='di' to='bob@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await;
    let r = b.expect_where(|e| e.attr("id") == Some("di")).await;
    let feats: Vec<&str> =
        r.get_child("query", ns::DISCO_INFO).unwrap().children().filter_map(|f| f.attr("var")).collect();
    for f in [MAM, "urn:xmpp:mam:2#extended", "urn:xmpp:mam:1", "urn:xmpp:message-retract:1#tombstone"] {
        assert!(feats.contains(&f), "{f} in {feats:?}");
    }

    // Her other device sees her archive id in the sent carbon (as with ejabberd).
    let mut a2 = online(&s, "alice", "laptop").await;
    a2.send("<iq type='set' id='cc'><enable xmlns='urn:xmpp:carbons:2'/></iq>").await;
    a2.expect_where(|e| e.attr("id") == Some("cc")).await;
    a.send("<message to='bob@localhost' type='chat' id='m4'><body>hello 4</body></message>").await;
    b.expect_where(|e| body(e).as_deref() == Some("hello 4")).await;
    let carbon = a2.expect_where(|e| e.has_child("sent", ns::CARBONS)).await;
    let sent = carbon.get_child("sent", ns::CARBONS).and_then(|s| s.get_child("forwarded", ns::FORWARD)).unwrap();
    let inner = sent.get_child("message", ns::CLIENT).expect("forwarded message");
    let mine = inner
        .children()
        .find(|c| c.is("stanza-id", ns::SID) && c.attr("by") == Some("alice@localhost"))
        .and_then(|c| c.attr("id"))
        .expect("sender's archive id")
        .to_owned();
    let (h, _) = query(&mut a2, MAM, "q3", "", &rsm("<max>1</max><before/>"), "").await;
    assert_eq!(h[0].id, mine);
    assert_eq!(body(&h[0].msg).as_deref(), Some("hello 4"));
    // A <store/> hint archives a message without a body.
    a.send(
        "<message to='bob@localhost' type='chat' id='st'><store xmlns='urn:xmpp:hints'/><x xmlns='urn:x'/></message>",
    )
    .await;
    b.expect_where(|e| e.attr("id") == Some("st")).await;
    let (h, _) = query(&mut b, MAM, "q4", "", &rsm("<max>1</max><before/>"), "").await;
    assert_eq!(h[0].msg.attr("id"), Some("st"));
    s.stop().await;
}

#[tokio::test]
async fn offline_recipients_are_archived_once_and_errors() {
    let s = sqlite_server().await;
    let mut a = online(&s, "alice", "desk").await;
    a.send("<message to='carol@localhost' type='chat' id='o1'><body>while you were away</body></message>").await;
    a.send("<message to='nobody@localhost' type='chat' id='o2'><body>no such user</body></message>").await;
    a.expect_where(|e| e.name() == "message" && e.attr("type") == Some("error")).await;
    let mut c = RawClient::connect(s.addr(TlsMode::None)).await.expect("connect");
    c.login_plain("carol", "carol-pass", "x").await;
    c.send("<presence/>").await;
    let m = c.expect_where(|e| e.name() == "message").await;
    assert_eq!(body(&m).as_deref(), Some("while you were away"));
    while let Some(e) = c.next(Duration::from_millis(300)).await {
        assert_ne!(e.name(), "message", "delivered once: {e}");
    }
    let (h, _) = query(&mut c, MAM, "c1", "", "", "").await;
    assert_eq!(bodies(&h), vec!["while you were away"]);
    let sid = m.children().find(|e| e.is("stanza-id", ns::SID) && e.attr("by") == Some("carol@localhost")).unwrap();
    assert_eq!(sid.attr("id"), Some(h[0].id.as_str()), "the offline copy carries the archive id");
    let none = s.ctx.stores.archive.query(Account::new("nobody", "localhost"), &ArchiveQuery::default()).await.unwrap();
    assert!(none.rows.is_empty(), "no archive for a user that does not exist");

    // Errors.
    a.send(&format!("<iq type='set' id='e1' to='carol@localhost'><query xmlns='{MAM}'/></iq>")).await;
    let r = a.expect_where(|e| e.attr("id") == Some("e1")).await;
    assert_eq!(error_condition(&r), "forbidden");
    let (_, r) = query(&mut a, MAM, "e2", &field("include-groupchat", "true"), "", "").await;
    assert_eq!(error_condition(&r), "bad-request");
    let (_, r) = query(&mut a, MAM, "e3", &field("after-id", &encode_id(new_archive_id())), "", "").await;
    assert_eq!(error_condition(&r), "item-not-found");
    let (_, r) = query(&mut a, MAM, "e4", &field("before-id", "not-an-id"), "", "").await;
    assert_eq!(error_condition(&r), "item-not-found");
    let (_, r) = query(&mut a, MAM, "e5", "", &rsm(&format!("<after>{}</after>", encode_id(5))), "").await;
    assert_eq!(error_condition(&r), "item-not-found");
    let (_, r) = query(&mut a, MAM, "e6", "", &rsm("<index>3</index>"), "").await;
    assert_eq!(error_condition(&r), "feature-not-implemented");
    let (_, r) = query(&mut a, MAM, "e7", &field("start", "yesterday"), "", "").await;
    assert_eq!(error_condition(&r), "bad-request");
    let (_, r) = query(&mut a, MAM, "e8", "", &rsm("<max>many</max>"), "").await;
    assert_eq!(error_condition(&r), "bad-request");
    let (_, r) = query(&mut a, MAM, "e9", &field("FORM_TYPE", "urn:other"), "", "").await;
    assert_eq!(error_condition(&r), "bad-request");
    let (_, r) = query(&mut a, MAM, "e10", &field("with", "@@bad"), "", "").await;
    assert_eq!(error_condition(&r), "jid-malformed");
    let (_, r) = query(&mut a, MAM, "e11", "", "", "<bogus xmlns='urn:x'/>").await;
    assert_eq!(error_condition(&r), "bad-request");
    let many: String = (0..51).map(|i| format!("<value>{}</value>", encode_id(i))).collect();
    let (_, r) = query(&mut a, MAM, "e13", &format!("<field var='ids'>{many}</field>"), "", "").await;
    assert_eq!(error_condition(&r), "policy-violation");
    a.send(&format!("<iq type='set' id='e12'><prefs xmlns='{MAM}' default='sometimes'/></iq>")).await;
    let r = a.expect_where(|e| e.attr("id") == Some("e12")).await;
    assert_eq!(error_condition(&r), "bad-request");
    s.stop().await;
}

#[tokio::test]
async fn preferences_roster_mode_and_retraction() {
    let s = sqlite_server().await;
    let mut a = online(&s, "alice", "desk").await;
    let mut b = online(&s, "bob", "phone").await;
    let mut c = online(&s, "carol", "x").await;

    // Defaults, then never + always [bob].
    a.send(&format!("<iq type='get' id='g1'><prefs xmlns='{MAM}'/></iq>")).await;
    let r = a.expect_where(|e| e.attr("id") == Some("g1")).await;
    assert_eq!(r.get_child("prefs", MAM).and_then(|p| p.attr("default")), Some("always"));
    a.send(&format!(
        "<iq type='set' id='s1'><prefs xmlns='{MAM}' default='never'><always><jid>bob@localhost/ignored</jid></always>\
         <never><jid>carol@localhost</jid></never></prefs></iq>"
    ))
    .await;
    let r = a.expect_where(|e| e.attr("id") == Some("s1")).await;
    let p = r.get_child("prefs", MAM).expect("prefs");
    assert_eq!(p.get_child("always", MAM).unwrap().child_text("jid", MAM).as_deref(), Some("bob@localhost"));
    b.send("<message to='alice@localhost' type='chat'><body>from bob</body></message>").await;
    c.send("<message to='alice@localhost' type='chat'><body>from carol</body></message>").await;
    for _ in 0..2 {
        a.expect_where(|e| e.name() == "message").await;
    }
    a.send("<message to='carol@localhost' type='chat'><body>to carol</body></message>").await;
    c.expect_where(|e| body(e).as_deref() == Some("to carol")).await;
    let (h, _) = query(&mut a, MAM, "a1", "", "", "").await;
    assert_eq!(bodies(&h), vec!["from bob"]);
    // Carol archives everything (her default), including what alice sent.
    let (h, _) = query(&mut c, MAM, "c1", "", "", "").await;
    assert_eq!(bodies(&h), vec!["from carol", "to carol"]);

    // Roster mode: bob is in alice's roster, carol is not.
    a.send("<iq type='set' id='r'><query xmlns='jabber:iq:roster'><item jid='bob@localhost'/></query></iq>").await;
    a.expect_where(|e| e.attr("id") == Some("r")).await;
    a.send(&format!("<iq type='set' id='s2'><prefs xmlns='{MAM}' default='roster'/></iq>")).await;
    a.expect_where(|e| e.attr("id") == Some("s2")).await;
    b.send("<message to='alice@localhost' type='chat'><body>roster bob</body></message>").await;
    c.send("<message to='alice@localhost' type='chat'><body>stranger carol</body></message>").await;
    for _ in 0..2 {
        a.expect_where(|e| e.name() == "message").await;
    }
    a.send("<message to='bob@localhost' type='chat'><body>to roster bob</body></message>").await;
    a.send("<message to='carol@localhost' type='chat'><body>to stranger carol</body></message>").await;
    let (h, _) = query(&mut a, MAM, "a2", "", "", "").await;
    assert_eq!(bodies(&h), vec!["from bob", "roster bob", "to roster bob"]);
    a.send(&format!("<iq type='get' id='g2'><prefs xmlns='{MAM}'/></iq>")).await;
    let r = a.expect_where(|e| e.attr("id") == Some("g2")).await;
    let p = r.get_child("prefs", MAM).expect("prefs");
    assert_eq!(p.attr("default"), Some("roster"));
    assert_eq!(p.get_child("always", MAM).map(|l| l.children().count()), Some(0), "replaced as a whole");

    // Retraction: the original becomes a tombstone in both archives; the
    // retraction is delivered and archived.
    b.send("<message to='carol@localhost' type='chat' id='oops'><body>wrong person</body></message>").await;
    c.expect_where(|e| body(e).as_deref() == Some("wrong person")).await;
    b.send(
        "<message to='carol@localhost' type='chat' id='ret1'><retract id='oops' xmlns='urn:xmpp:message-retract:1'/>\
         <body>retracted</body></message>",
    )
    .await;
    let r = c.expect_where(|e| e.has_child("retract", "urn:xmpp:message-retract:1")).await;
    assert_eq!(r.attr("id"), Some("ret1"));
    for (client, qid, other) in [(&mut b, "rb", "carol@localhost"), (&mut c, "rc", "bob@localhost")] {
        let (h, _) = query(client, MAM, qid, &with(other), "", "").await;
        let h: Vec<&Hit> =
            h.iter().filter(|h| h.msg.attr("id") == Some("oops") || h.msg.attr("id") == Some("ret1")).collect();
        assert_eq!(h.len(), 2, "{qid}");
        assert!(body(&h[0].msg).is_none(), "{}", h[0].msg);
        let t = h[0].msg.get_child("retracted", "urn:xmpp:message-retract:1").expect("tombstone");
        assert_eq!(t.attr("id"), Some("ret1"));
        assert!(t.attr("stamp").is_some());
        assert!(h[1].msg.has_child("retract", "urn:xmpp:message-retract:1"));
    }

    // A message the recipient's blocklist rejects is not archived by the recipient
    // (XEP-0313 §6.1), online or offline.
    c.send("<iq type='set' id='bl'><block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></block></iq>").await;
    let r = c.expect_where(|e| e.attr("id") == Some("bl")).await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    b.send("<message to='carol@localhost' type='chat'><body>blocked online</body></message>").await;
    b.send("<message to='carol@localhost/x' type='chat'><body>blocked full</body></message>").await;
    b.send("<message to='carol@localhost' type='chat'><body>after</body></message>").await;
    for _ in 0..3 {
        b.expect_where(|e| e.name() == "message" && e.attr("type") == Some("error")).await;
    }
    c.send("<iq type='set' id='ub'><unblock xmlns='urn:xmpp:blocking'/></iq>").await;
    c.expect_where(|e| e.attr("id") == Some("ub")).await;
    b.send("<message to='carol@localhost' type='chat'><body>unblocked</body></message>").await;
    c.expect_where(|e| body(e).as_deref() == Some("unblocked")).await;
    let (h, _) = query(&mut c, MAM, "rc3", &with("bob@localhost"), "", "").await;
    let got = bodies(&h);
    assert!(!got.iter().any(|b| b.starts_with("blocked") || b == "after"), "{got:?}");
    assert_eq!(got.last().map(String::as_str), Some("unblocked"));
    s.stop().await;
}

/// 1,050 rows paged forwards and backwards with the server's page limit.
async fn page_everything(s: &TestServer) {
    let acc = Account::new("alice", "localhost");
    let mut ids = Vec::new();
    let mut rows = Vec::new();
    for i in 0..1050 {
        let id = new_archive_id();
        ids.push(encode_id(id).to_string());
        let msg = ArchivedMessage {
            id,
            with_jid: "bob@localhost".into(),
            with_resource: "phone".into(),
            direction: Direction::Incoming,
            sender: "bob@localhost/phone".into(),
            origin_id: Some(format!("m{i}").into()),
            stanza: format!("<message xmlns='jabber:client' from='bob@localhost/phone' to='alice@localhost' type='chat' id='m{i}'><body>{i}</body></message>").into(),
        };
        rows.push(ArchiveEntry { user: acc.user.into(), domain: acc.domain.into(), msg });
    }
    for chunk in rows.chunks(300) {
        s.ctx.stores.archive.append(std::sync::Arc::new(chunk.to_vec())).await.unwrap();
    }
    let mut a = online(s, "alice", "desk").await;
    // Forwards: <max> above max_result_limit (50) is clamped.
    let mut got: Vec<String> = Vec::new();
    let mut after = String::new();
    let mut n = 0;
    loop {
        let set = if after.is_empty() {
            rsm("<max>500</max>")
        } else {
            rsm(&format!("<max>500</max><after>{after}</after>"))
        };
        let (h, iq) = query(&mut a, MAM, &format!("f{n}"), &with("bob@localhost"), &set, "").await;
        n += 1;
        assert!(h.len() <= 50);
        got.extend(h.iter().map(|h| h.id.clone()));
        let f = fin(&iq);
        if f.attr("complete") == Some("true") {
            break;
        }
        after = f.get_child("set", RSM).and_then(|s| s.child_text("last", RSM)).expect("last");
    }
    assert_eq!(got, ids, "forwards: every message once, in order");
    assert_eq!(n, 21);
    // Backwards from the last page.
    let mut got: Vec<String> = Vec::new();
    let mut before = String::new();
    loop {
        let set = rsm(&format!("<max>40</max><before>{before}</before>"));
        let (h, iq) = query(&mut a, MAM, "b", "", &set, "").await;
        let mut page: Vec<String> = h.iter().map(|h| h.id.clone()).collect();
        page.extend(got);
        got = page;
        let f = fin(&iq);
        if f.attr("complete") == Some("true") {
            break;
        }
        before = f.get_child("set", RSM).and_then(|s| s.child_text("first", RSM)).expect("first");
    }
    assert_eq!(got, ids, "backwards: every message once, in order");
    // Flipped backwards page: newest first.
    let (h, _) = query(&mut a, MAM, "flip", "", &rsm("<max>5</max><before/>"), "<flip-page/>").await;
    let flipped: Vec<String> = h.iter().map(|h| h.id.clone()).collect();
    let mut expect: Vec<String> = ids[ids.len() - 5..].to_vec();
    expect.reverse();
    assert_eq!(flipped, expect);

    // Account deletion removes the archive.
    assert!(s.ctx.stores.auth.delete_user(acc).await.unwrap());
    let q = ArchiveQuery { limit: 10, ..ArchiveQuery::default() };
    assert!(s.ctx.stores.archive.query(acc, &q).await.unwrap().rows.is_empty());
}

#[tokio::test]
async fn paging_over_a_thousand_messages_on_sqlite() {
    let s = sqlite_server().await;
    page_everything(&s).await;
    s.stop().await;
}

fn pg_url() -> String {
    std::env::var("MEERKAT_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

#[tokio::test]
async fn archive_on_postgres() {
    let schema = format!("meerkat_mam_{}", meerkat_storage::conformance::unique_tag());
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(dir.path());
    let stores = meerkat_storage_postgres::open_with_schema(&pg_url(), &schema)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL must be reachable at {}: {e}", pg_url()));
    let s = TestServer::start_with_stores(cfg, stores, Some(dir)).await.unwrap();
    users(&s).await;
    page_everything(&s).await;
    let mut b = online(&s, "bob", "phone").await;
    let mut c = online(&s, "carol", "x").await;
    b.send("<message to='carol@localhost' type='chat' id='pg'><body>on postgres</body></message>").await;
    c.expect_where(|e| e.name() == "message").await;
    let (h, _) = query(&mut b, MAM, "pb", "", "", "").await;
    assert_eq!(bodies(&h), vec!["on postgres"]);
    let (h, _) = query(&mut c, MAM, "pc", "", "", "").await;
    assert_eq!(bodies(&h), vec!["on postgres"]);
    s.stop().await;
    let (client, conn) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await.unwrap();
}

#[tokio::test]
async fn shutdown_writes_pending_rows_and_removal_drops_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    // Rows wait for a full batch or a minute: only the shutdown writes them.
    let mam = cfg.modules.mod_mam.as_mut().expect("mod_mam in the example");
    mam.async_writer.batch_size = 1000;
    mam.async_writer.flush_interval = 60_000;
    let s = TestServer::start_with(cfg.clone(), None).await.unwrap();
    users(&s).await;
    let mut a = online(&s, "alice", "desk").await;
    let mut b = online(&s, "bob", "phone").await;
    a.send("<message to='bob@localhost' type='chat'><body>before shutdown</body></message>").await;
    b.expect_where(|e| e.name() == "message").await;
    let acc = Account::new("bob", "localhost");
    assert!(s.ctx.stores.archive.query(acc, &ArchiveQuery::default()).await.unwrap().rows.is_empty(), "still queued");
    // Alice removes her account in-band: her queued row is dropped, not written
    // after her data was deleted.
    a.send("<iq type='set' id='rm'><query xmlns='jabber:iq:register'><remove/></query></iq>").await;
    let r = a.expect_where(|e| e.attr("id") == Some("rm")).await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    s.stop().await;
    let stores = meerkat::open_storage(&cfg).await.unwrap();
    let rows = stores.archive.query(acc, &ArchiveQuery::default()).await.unwrap().rows;
    assert_eq!(rows.len(), 1);
    assert!(rows[0].stanza.contains("before shutdown"));
    let alice = Account::new("alice", "localhost");
    assert!(stores.archive.query(alice, &ArchiveQuery::default()).await.unwrap().rows.is_empty());
}
