//! MUC Light (MongooseIM's `urn:xmpp:muclight:0`) over real sockets: creation
//! with occupants, messages to every member, configuration and occupant lists
//! with versions, affiliation changes and their notifications, blocking, the
//! room archive, leaving, destruction, and the protocol's errors.

use std::collections::VecDeque;
use std::time::Duration;

use meerkat::testing::{RawClient, TestServer};
use meerkat_config::TlsMode;
use meerkat_stanza::ns;
use meerkat_xml::Element;

const ROOM: &str = "coven@muclight.localhost";
const AFFS: &str = "urn:xmpp:muclight:0#affiliations";
const CONFIG: &str = "urn:xmpp:muclight:0#configuration";

/// A client that keeps what it read past while waiting for something else
/// (a room's notifications arrive before the IQ result that caused them).
struct Client {
    raw: RawClient,
    backlog: VecDeque<Element>,
}

impl Client {
    async fn send(&mut self, xml: &str) {
        self.raw.send(xml).await;
    }

    async fn expect_where(&mut self, pred: impl Fn(&Element) -> bool) -> Element {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i).expect("found");
        }
        loop {
            let e = self.raw.next(Duration::from_secs(5)).await.expect("a matching element from the server");
            if pred(&e) {
                return e;
            }
            self.backlog.push_back(e);
        }
    }

    async fn next(&mut self, wait: Duration) -> Option<Element> {
        match self.backlog.pop_front() {
            Some(e) => Some(e),
            None => self.raw.next(wait).await,
        }
    }
}

async fn online(s: &TestServer, user: &str) -> Client {
    let mut c = RawClient::connect(s.addr(TlsMode::None)).await.unwrap();
    c.login_plain(user, &format!("{user}-pass"), "r").await;
    c.send("<presence/>").await;
    c.expect_where(|e| e.name() == "presence").await;
    Client { raw: c, backlog: VecDeque::new() }
}

async fn iq(c: &mut Client, id: &str, xml: &str) -> Element {
    c.send(xml).await;
    c.expect_where(|e| e.name() == "iq" && e.attr("id") == Some(id)).await
}

fn error_condition(e: &Element) -> Option<String> {
    e.get_child("error", ns::CLIENT)?.children().next().map(|c| c.name().to_owned())
}

/// The (user, affiliation) items and versions of an affiliation notification.
fn affs(m: &Element) -> (Vec<(String, String)>, Option<String>, Option<String>) {
    let x = m.get_child("x", AFFS).expect("an affiliations notification");
    let users = x
        .children()
        .filter(|c| c.name() == "user")
        .map(|u| (u.text(), u.attr("affiliation").unwrap_or_default().to_owned()))
        .collect();
    (users, x.child_text("version", AFFS), x.child_text("prev-version", AFFS))
}

async fn notification(c: &mut Client, ns: &'static str) -> Element {
    c.expect_where(move |e| e.name() == "message" && e.has_child("x", ns)).await
}

fn pair(u: &str, a: &str) -> (String, String) {
    (u.to_owned(), a.to_owned())
}

#[tokio::test]
async fn muc_light_rooms_end_to_end() {
    let s = TestServer::start().await.unwrap();
    for u in ["alice", "bob", "carol", "dave", "erin"] {
        s.add_user(&format!("{u}@localhost"), &format!("{u}-pass")).await;
    }
    let mut alice = online(&s, "alice").await;
    let mut bob = online(&s, "bob").await;
    let mut carol = online(&s, "carol").await;
    let mut dave = online(&s, "dave").await;
    let mut erin = online(&s, "erin").await;

    // The service describes itself.
    let info = iq(
        &mut alice,
        "i",
        "<iq type='get' to='muclight.localhost' id='i'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
    )
    .await;
    assert!(info.to_string().contains("urn:xmpp:muclight:0"), "{info}");

    // Creation with two members: each learns its own affiliation and the version.
    let r = iq(
        &mut alice,
        "c1",
        &format!(
            "<iq type='set' to='{ROOM}' id='c1'><query xmlns='urn:xmpp:muclight:0#create'>\
               <configuration><roomname>A Dark Cave</roomname></configuration>\
               <occupants><user affiliation='member'>bob@localhost</user><user affiliation='member'>carol@localhost</user></occupants>\
             </query></iq>"
        ),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let (users, version, prev) = affs(&notification(&mut alice, AFFS).await);
    assert_eq!(users, [pair("alice@localhost", "owner")]);
    assert!(version.is_some() && prev.is_none());
    let (users, _, _) = affs(&notification(&mut bob, AFFS).await);
    assert_eq!(users, [pair("bob@localhost", "member")]);
    notification(&mut carol, AFFS).await;
    // One owner at most may be named; then the creator is a member.
    let e = iq(
        &mut dave,
        "c3",
        "<iq type='set' to='two@muclight.localhost' id='c3'><query xmlns='urn:xmpp:muclight:0#create'><occupants>\
           <user affiliation='owner'>erin@localhost</user><user affiliation='owner'>carol@localhost</user>\
         </occupants></query></iq>",
    )
    .await;
    assert_eq!(error_condition(&e).as_deref(), Some("bad-request"), "{e}");
    let r = iq(
        &mut dave,
        "c4",
        "<iq type='set' to='named@muclight.localhost' id='c4'><query xmlns='urn:xmpp:muclight:0#create'><occupants>\
           <user affiliation='owner'>carol@localhost</user></occupants></query></iq>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let (users, _, _) = affs(&notification(&mut dave, AFFS).await);
    assert_eq!(users, [pair("dave@localhost", "member")]);
    let (users, _, _) = affs(&notification(&mut carol, AFFS).await);
    assert_eq!(users, [pair("carol@localhost", "owner")]);
    // Creating it again: conflict.
    let e = iq(
        &mut dave,
        "c2",
        &format!("<iq type='set' to='{ROOM}' id='c2'><query xmlns='urn:xmpp:muclight:0#create'/></iq>"),
    )
    .await;
    assert_eq!(error_condition(&e).as_deref(), Some("conflict"), "{e}");

    // A message reaches every member, from room/sender-bare-jid, with the room's stanza id.
    bob.send(&format!("<message to='{ROOM}' type='groupchat' id='m1'><body>Harpier cries</body></message>")).await;
    for c in [&mut alice, &mut bob, &mut carol] {
        let m = c.expect_where(|e| e.attr("id") == Some("m1")).await;
        assert_eq!(m.attr("from"), Some("coven@muclight.localhost/bob@localhost"));
        assert_eq!(m.child_text("body", ns::CLIENT).as_deref(), Some("Harpier cries"));
        assert_eq!(m.get_child("stanza-id", ns::SID).and_then(|s| s.attr("by")), Some(ROOM));
    }
    // Non-occupants: the room does not exist for them (§7.1); wrong types are bad requests (§7.3).
    dave.send(&format!("<message to='{ROOM}' type='groupchat' id='x1'><body>hi</body></message>")).await;
    let e = dave.expect_where(|e| e.attr("id") == Some("x1")).await;
    assert_eq!(error_condition(&e).as_deref(), Some("item-not-found"), "{e}");
    let e = iq(&mut dave, "x2", &format!("<iq type='get' to='{ROOM}' id='x2'><query xmlns='{CONFIG}'/></iq>")).await;
    assert_eq!(error_condition(&e).as_deref(), Some("item-not-found"));
    bob.send(&format!("<message to='{ROOM}' type='chat' id='x3'><body>hi</body></message>")).await;
    let e = bob.expect_where(|e| e.attr("id") == Some("x3")).await;
    assert_eq!(error_condition(&e).as_deref(), Some("bad-request"), "{e}");

    // Configuration: read by any occupant; an unchanged version gets an empty result.
    let r = iq(&mut bob, "g1", &format!("<iq type='get' to='{ROOM}' id='g1'><query xmlns='{CONFIG}'/></iq>")).await;
    let q = r.get_child("query", CONFIG).expect("config");
    assert_eq!(q.child_text("roomname", CONFIG).as_deref(), Some("A Dark Cave"));
    let v = q.child_text("version", CONFIG).unwrap();
    let r = iq(
        &mut bob,
        "g2",
        &format!("<iq type='get' to='{ROOM}' id='g2'><query xmlns='{CONFIG}'><version>{v}</version></query></iq>"),
    )
    .await;
    assert!(r.attr("type") == Some("result") && r.children().next().is_none(), "{r}");
    // Only the owner changes it; everyone is told with both versions.
    let e = iq(
        &mut bob,
        "s1",
        &format!("<iq type='set' to='{ROOM}' id='s1'><query xmlns='{CONFIG}'><roomname>Mine</roomname></query></iq>"),
    )
    .await;
    assert_eq!(error_condition(&e).as_deref(), Some("not-allowed"));
    let e = iq(
        &mut alice,
        "s2",
        &format!("<iq type='set' to='{ROOM}' id='s2'><query xmlns='{CONFIG}'><colour>red</colour></query></iq>"),
    )
    .await;
    assert_eq!(error_condition(&e).as_deref(), Some("bad-request"), "an unknown field");
    let r = iq(
        &mut alice,
        "s3",
        &format!("<iq type='set' to='{ROOM}' id='s3'><query xmlns='{CONFIG}'><subject>To be</subject></query></iq>"),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let n = notification(&mut carol, CONFIG).await;
    let x = n.get_child("x", CONFIG).unwrap();
    assert_eq!(x.child_text("subject", CONFIG).as_deref(), Some("To be"));
    assert_eq!(x.child_text("prev-version", CONFIG).as_deref(), Some(v.as_str()));

    // Erin blocks the room: adding her is skipped without an error (§4.5).
    let r = iq(
        &mut erin,
        "b1",
        &format!("<iq type='set' to='muclight.localhost' id='b1'><query xmlns='urn:xmpp:muclight:0#blocking'><room action='deny'>{ROOM}</room></query></iq>"),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let r = iq(
        &mut erin,
        "b2",
        "<iq type='get' to='muclight.localhost' id='b2'><query xmlns='urn:xmpp:muclight:0#blocking'/></iq>",
    )
    .await;
    assert!(r.to_string().contains(ROOM), "{r}");

    // One change request: add Dave (and Erin, who blocks), make Bob the owner, remove Carol.
    let r = iq(
        &mut alice,
        "a1",
        &format!(
            "<iq type='set' to='{ROOM}' id='a1'><query xmlns='{AFFS}'>\
               <user affiliation='member'>dave@localhost</user>\
               <user affiliation='member'>erin@localhost</user>\
               <user affiliation='owner'>bob@localhost</user>\
               <user affiliation='none'>carol@localhost</user>\
             </query></iq>"
        ),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    // Alice (demoted automatically) and Bob get the whole change with both versions.
    let (users, version, prev) = affs(&notification(&mut alice, AFFS).await);
    assert!(prev.is_some() && version.is_some());
    assert_eq!(
        users,
        [
            pair("alice@localhost", "member"),
            pair("bob@localhost", "owner"),
            pair("carol@localhost", "none"),
            pair("dave@localhost", "member")
        ]
    );
    notification(&mut bob, AFFS).await;
    // The newcomer gets only its own affiliation, no prev-version; the removed only its none.
    let (users, _, prev) = affs(&notification(&mut dave, AFFS).await);
    assert_eq!((users, prev), (vec![pair("dave@localhost", "member")], None));
    let (users, version, _) = affs(&notification(&mut carol, AFFS).await);
    assert_eq!((users, version), (vec![pair("carol@localhost", "none")], None));
    assert!(erin.next(Duration::from_millis(300)).await.is_none(), "erin blocked the room");
    // The occupant list, and Dave's rooms at the service.
    let r = iq(&mut dave, "l1", &format!("<iq type='get' to='{ROOM}' id='l1'><query xmlns='{AFFS}'/></iq>")).await;
    let users: Vec<String> =
        r.get_child("query", AFFS).unwrap().children().filter(|c| c.name() == "user").map(|u| u.text()).collect();
    assert_eq!(users, ["alice@localhost", "bob@localhost", "dave@localhost"]);
    let r = iq(
        &mut dave,
        "l2",
        "<iq type='get' to='muclight.localhost' id='l2'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
    )
    .await;
    assert!(r.to_string().contains(ROOM) && r.to_string().contains("A Dark Cave"), "{r}");
    // Meaningless and forbidden changes.
    let e = iq(&mut bob, "a2", &format!("<iq type='set' to='{ROOM}' id='a2'><query xmlns='{AFFS}'><user affiliation='member'>dave@localhost</user></query></iq>")).await;
    assert_eq!(error_condition(&e).as_deref(), Some("bad-request"));
    let e = iq(&mut dave, "a3", &format!("<iq type='set' to='{ROOM}' id='a3'><query xmlns='{AFFS}'><user affiliation='none'>alice@localhost</user></query></iq>")).await;
    assert_eq!(error_condition(&e).as_deref(), Some("not-allowed"));
    let e = iq(&mut dave, "a4", &format!("<iq type='set' to='{ROOM}' id='a4'><query xmlns='{AFFS}'><user affiliation='boss'>dave@localhost</user></query></iq>")).await;
    assert_eq!(error_condition(&e).as_deref(), Some("bad-request"));

    // The room's archive: the message and the affiliation events.
    let r =
        iq(&mut dave, "q", &format!("<iq type='set' to='{ROOM}' id='q'><query xmlns='urn:xmpp:mam:2'/></iq>")).await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");

    // Leaving: Dave sets his own affiliation to none.
    let r = iq(&mut dave, "lv", &format!("<iq type='set' to='{ROOM}' id='lv'><query xmlns='{AFFS}'><user affiliation='none'>dave@localhost</user></query></iq>")).await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let (users, _, _) = affs(&notification(&mut bob, AFFS).await);
    assert_eq!(users, [pair("dave@localhost", "none")]);

    // A room with a name the service picks.
    let r = iq(
        &mut dave,
        "u1",
        "<iq type='set' to='muclight.localhost' id='u1'><query xmlns='urn:xmpp:muclight:0#create'/></iq>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let fresh = r.attr("from").unwrap().to_owned();
    assert!(fresh.ends_with("@muclight.localhost"), "{r}");

    // Destruction: only the owner; everyone is told.
    let e = iq(
        &mut alice,
        "d0",
        &format!("<iq type='set' to='{ROOM}' id='d0'><query xmlns='urn:xmpp:muclight:0#destroy'/></iq>"),
    )
    .await;
    assert_eq!(error_condition(&e).as_deref(), Some("not-allowed"));
    let r = iq(
        &mut bob,
        "d1",
        &format!("<iq type='set' to='{ROOM}' id='d1'><query xmlns='urn:xmpp:muclight:0#destroy'/></iq>"),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let n = alice.expect_where(|e| e.has_child("x", "urn:xmpp:muclight:0#destroy")).await;
    assert_eq!(affs(&n).0, [pair("alice@localhost", "none")]);
    let e = iq(&mut bob, "d2", &format!("<iq type='get' to='{ROOM}' id='d2'><query xmlns='{CONFIG}'/></iq>")).await;
    assert_eq!(error_condition(&e).as_deref(), Some("item-not-found"));
    s.stop().await;
}

#[tokio::test]
async fn rooms_in_rosters() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = meerkat::testing::test_config(dir.path());
    cfg.modules.mod_muc_light.as_mut().unwrap().rooms_in_rosters = true;
    let s = TestServer::start_with(cfg, Some(dir)).await.unwrap();
    for u in ["alice", "bob"] {
        s.add_user(&format!("{u}@localhost"), &format!("{u}-pass")).await;
    }
    let mut alice = online(&s, "alice").await;
    let mut bob = online(&s, "bob").await;
    let r = iq(&mut bob, "r0", "<iq type='get' id='r0'><query xmlns='jabber:iq:roster'/></iq>").await;
    let empty_ver = r.get_child("query", "jabber:iq:roster").and_then(|q| q.attr("ver")).map(str::to_owned);
    let r = iq(
        &mut alice,
        "c",
        &format!(
            "<iq type='set' to='{ROOM}' id='c'><query xmlns='urn:xmpp:muclight:0#create'>\
               <configuration><roomname>Roster room</roomname></configuration>\
               <occupants><user affiliation='member'>bob@localhost</user></occupants></query></iq>"
        ),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    // Bob's roster lists the room (subscription to, the MUC Light group, its
    // version); the roster version changed, so a versioned client gets it too.
    let r = iq(
        &mut bob,
        "r1",
        &format!(
            "<iq type='get' id='r1'><query xmlns='jabber:iq:roster' ver='{}'/></iq>",
            empty_ver.clone().unwrap_or_default()
        ),
    )
    .await;
    let q = r.get_child("query", "jabber:iq:roster").expect("a full roster");
    assert_ne!(q.attr("ver").map(str::to_owned), empty_ver);
    let item = q.children().find(|i| i.attr("jid") == Some(ROOM)).expect("the room in the roster");
    assert_eq!(item.attr("subscription"), Some("to"));
    assert_eq!(item.attr("name"), Some("Roster room"));
    assert_eq!(item.child_text("group", "jabber:iq:roster").as_deref(), Some("urn:xmpp:muclight:0"));
    assert!(item.child_text("version", "jabber:iq:roster").is_some());
    s.stop().await;
}
