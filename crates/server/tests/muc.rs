//! Multi-user chat (XEP-0045) over real sockets: creation and configuration,
//! joining, messages, history, subject, private messages, invitations, roles
//! and affiliations, bad input, destruction, persistence across a restart,
//! room archives (XEP-0313), moderation (XEP-0425) and self-ping (XEP-0410).

use std::time::Duration;

use meerkat::testing::{test_config, RawClient, TestServer};
use meerkat_config::TlsMode;
use meerkat_stanza::ns;
use meerkat_xml::Element;

const MUC: &str = "http://jabber.org/protocol/muc";
const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
const ROOM: &str = "lobby@conference.localhost";

async fn online(s: &TestServer, user: &str) -> RawClient {
    let mut c = RawClient::connect(s.addr(TlsMode::None)).await.unwrap();
    c.login_plain(user, &format!("{user}-pass"), "r").await;
    c.send("<presence/>").await;
    // The server reflects the initial presence to the user's own session.
    c.expect_where(|e| e.name() == "presence").await;
    c
}

async fn users(s: &TestServer, names: &[&str]) {
    for u in names {
        s.add_user(&format!("{u}@localhost"), &format!("{u}-pass")).await;
    }
}

fn codes(p: &Element) -> Vec<String> {
    p.get_child("x", MUC_USER)
        .map(|x| {
            x.children().filter(|c| c.name() == "status").filter_map(|c| c.attr("code").map(str::to_owned)).collect()
        })
        .unwrap_or_default()
}

fn muc_item(p: &Element) -> Option<&Element> {
    p.get_child("x", MUC_USER)?.get_child("item", MUC_USER)
}

fn error_condition(e: &Element) -> Option<String> {
    e.get_child("error", ns::CLIENT)?.children().next().map(|c| c.name().to_owned())
}

/// Joins `room` as `nick` and reads up to the subject message; returns what
/// came before it (others' presence, own presence, history).
async fn join(c: &mut RawClient, room: &str, nick: &str, extra: &str) -> Vec<Element> {
    c.send(&format!("<presence to='{room}/{nick}'><x xmlns='{MUC}'>{extra}</x></presence>")).await;
    let mut seen = Vec::new();
    loop {
        let e = c.expect().await;
        if e.name() == "message" && e.has_child("subject", ns::CLIENT) && !e.has_child("body", ns::CLIENT) {
            return seen;
        }
        assert_ne!(e.attr("type"), Some("error"), "joining {room} as {nick}: {e}");
        seen.push(e);
    }
}

/// Creates an instant room (XEP-0045 §10.1.2) owned by `c`.
async fn create_instant(c: &mut RawClient, room: &str, nick: &str) {
    c.send(&format!("<presence to='{room}/{nick}'><x xmlns='{MUC}'/></presence>")).await;
    let p = c.expect_where(|e| e.name() == "presence").await;
    assert_eq!(codes(&p), ["110", "170", "201"], "a new room says it was created: {p}");
    assert_eq!(muc_item(&p).and_then(|i| i.attr("affiliation")), Some("owner"));
    c.expect_where(|e| e.name() == "message" && e.has_child("subject", ns::CLIENT)).await;
    configure(c, room, "").await;
}

async fn configure(c: &mut RawClient, room: &str, fields: &str) {
    c.send(&format!(
        "<iq type='set' to='{room}' id='cfg'><query xmlns='http://jabber.org/protocol/muc#owner'>\
           <x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>{fields}\
           </x></query></iq>"
    ))
    .await;
    let r = c.expect_where(|e| e.attr("id") == Some("cfg")).await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
}

async fn iq(c: &mut RawClient, id: &str, xml: &str) -> Element {
    c.send(xml).await;
    c.expect_where(|e| e.name() == "iq" && e.attr("id") == Some(id)).await
}

async fn quiet(c: &mut RawClient) {
    while c.next(Duration::from_millis(200)).await.is_some() {}
}

#[tokio::test]
async fn create_join_chat_history_subject() {
    let s = TestServer::start().await.unwrap();
    users(&s, &["alice", "bob", "carol"]).await;
    let mut alice = online(&s, "alice").await;
    let mut bob = online(&s, "bob").await;
    let mut carol = online(&s, "carol").await;

    // The server lists the MUC service; the service describes itself.
    let items = iq(
        &mut alice,
        "it",
        "<iq type='get' to='localhost' id='it'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
    )
    .await;
    assert!(items.to_string().contains("conference.localhost"), "{items}");
    let info = iq(
        &mut alice,
        "si",
        "<iq type='get' to='conference.localhost' id='si'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
    )
    .await;
    assert!(
        info.to_string().contains("category=\"conference\"") || info.to_string().contains("category='conference'"),
        "{info}"
    );

    // A new room is locked until its owner configures it.
    alice.send(&format!("<presence to='{ROOM}/Alice'><x xmlns='{MUC}'/></presence>")).await;
    let p = alice.expect_where(|e| e.name() == "presence").await;
    assert_eq!(codes(&p), ["110", "170", "201"], "{p}");
    alice.expect_where(|e| e.name() == "message").await;
    bob.send(&format!("<presence to='{ROOM}/Bob'><x xmlns='{MUC}'/></presence>")).await;
    let e = bob.expect_where(|e| e.name() == "presence").await;
    assert_eq!(error_condition(&e).as_deref(), Some("item-not-found"), "{e}");
    // The owner asks for the form and submits it.
    let form = iq(
        &mut alice,
        "f",
        &format!("<iq type='get' to='{ROOM}' id='f'><query xmlns='http://jabber.org/protocol/muc#owner'/></iq>"),
    )
    .await;
    assert!(form.to_string().contains("muc#roomconfig_roomname"), "{form}");
    configure(&mut alice, ROOM, "<field var='muc#roomconfig_roomname'><value>The Lobby</value></field>").await;

    // Bob enters: Alice's presence first, then his own with 110, then the (empty) subject.
    let seen = join(&mut bob, ROOM, "Bob", "").await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].attr("from"), Some("lobby@conference.localhost/Alice"));
    assert_eq!(muc_item(&seen[0]).and_then(|i| i.attr("role")), Some("moderator"));
    assert!(muc_item(&seen[0]).and_then(|i| i.attr("jid")).is_none(), "semi-anonymous: no real JID for a participant");
    assert!(seen[0].has_child("occupant-id", "urn:xmpp:occupant-id:0"));
    assert_eq!(codes(&seen[1]), ["110", "170"]);
    assert_eq!(muc_item(&seen[1]).and_then(|i| i.attr("role")), Some("participant"));
    // The moderator sees Bob's real JID.
    let p = alice
        .expect_where(|e| e.name() == "presence" && e.attr("from") == Some("lobby@conference.localhost/Bob"))
        .await;
    assert_eq!(muc_item(&p).and_then(|i| i.attr("jid")), Some("bob@localhost/r"));

    // Group chat: everyone gets it, with the room's stanza id and the occupant id.
    alice.send(&format!("<message to='{ROOM}' type='groupchat' id='m1'><body>first</body></message>")).await;
    alice.send(&format!("<message to='{ROOM}' type='groupchat' id='m2'><body>second</body></message>")).await;
    for c in [&mut alice, &mut bob] {
        for body in ["first", "second"] {
            let m = c.expect_where(|e| e.name() == "message" && e.has_child("body", ns::CLIENT)).await;
            assert_eq!(m.child_text("body", ns::CLIENT).as_deref(), Some(body));
            assert_eq!(m.attr("from"), Some("lobby@conference.localhost/Alice"));
            assert_eq!(m.attr("type"), Some("groupchat"));
            let sid = m.get_child("stanza-id", ns::SID).expect("stanza id");
            assert_eq!(sid.attr("by"), Some(ROOM));
            assert!(m.has_child("occupant-id", "urn:xmpp:occupant-id:0"));
        }
    }
    // The subject: Bob may change it (the default), everyone sees it.
    bob.send(&format!("<message to='{ROOM}' type='groupchat'><subject>Tea at five</subject></message>")).await;
    for c in [&mut alice, &mut bob] {
        let m = c.expect_where(|e| e.has_child("subject", ns::CLIENT)).await;
        assert_eq!(m.child_text("subject", ns::CLIENT).as_deref(), Some("Tea at five"));
    }

    // Carol joins asking for one message of history: the last one, delayed; then the subject.
    carol.send(&format!("<presence to='{ROOM}/Carol'><x xmlns='{MUC}'><history maxstanzas='1'/></x></presence>")).await;
    let mut history = Vec::new();
    let subject = loop {
        let e = carol.expect().await;
        if e.name() == "message" && e.has_child("subject", ns::CLIENT) {
            break e;
        }
        if e.name() == "message" {
            history.push(e);
        }
    };
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0].child_text("body", ns::CLIENT).as_deref(), Some("second"));
    assert!(history[0].has_child("delay", ns::DELAY));
    assert_eq!(subject.child_text("subject", ns::CLIENT).as_deref(), Some("Tea at five"));
    assert_eq!(subject.attr("from"), Some("lobby@conference.localhost/Bob"));

    // Nick change (§7.6): 303 with the new nick, then the new presence.
    bob.send(&format!("<presence to='{ROOM}/Robert'/>")).await;
    let p = carol.expect_where(|e| e.name() == "presence" && e.attr("type") == Some("unavailable")).await;
    assert_eq!(codes(&p), ["303"]);
    assert_eq!(muc_item(&p).and_then(|i| i.attr("nick")), Some("Robert"));
    carol.expect_where(|e| e.name() == "presence" && e.attr("from") == Some("lobby@conference.localhost/Robert")).await;

    // Private message through the room.
    carol.send(&format!("<message to='{ROOM}/Robert' type='chat' id='pm'><body>psst</body></message>")).await;
    let m = bob.expect_where(|e| e.attr("id") == Some("pm")).await;
    assert_eq!(m.attr("from"), Some("lobby@conference.localhost/Carol"));
    assert!(m.has_child("x", MUC_USER));

    // An IQ to an occupant (a vCard request) goes to its session through the
    // room, and the answer comes back from the occupant's room JID.
    carol.send(&format!("<iq type='get' to='{ROOM}/Robert' id='vc'><vCard xmlns='vcard-temp'/></iq>")).await;
    let q = bob.expect_where(|e| e.name() == "iq" && e.has_child("vCard", "vcard-temp")).await;
    assert_eq!(q.attr("from"), Some("lobby@conference.localhost/Carol"));
    assert_ne!(q.attr("id"), Some("vc"), "the room uses its own id");
    bob.send(&format!(
        "<iq type='result' to='{}' id='{}'><vCard xmlns='vcard-temp'><FN>Bob</FN></vCard></iq>",
        q.attr("from").unwrap(),
        q.attr("id").unwrap()
    ))
    .await;
    let r = carol.expect_where(|e| e.name() == "iq" && e.attr("id") == Some("vc")).await;
    assert_eq!((r.attr("type"), r.attr("from")), (Some("result"), Some("lobby@conference.localhost/Robert")));
    assert!(r.to_string().contains("<FN>Bob</FN>"), "{r}");

    // Leaving: the others see unavailable; the room lists what remains.
    carol.send(&format!("<presence to='{ROOM}/Carol' type='unavailable'/>")).await;
    let p = carol.expect_where(|e| e.name() == "presence").await;
    assert_eq!((p.attr("type"), codes(&p)), (Some("unavailable"), vec!["110".to_owned()]));
    alice
        .expect_where(|e| {
            e.attr("from") == Some("lobby@conference.localhost/Carol") && e.attr("type") == Some("unavailable")
        })
        .await;
    let info = iq(
        &mut alice,
        "ri",
        &format!("<iq type='get' to='{ROOM}' id='ri'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"),
    )
    .await;
    let t = info.to_string();
    assert!(t.contains("The Lobby") && t.contains("muc_temporary") && t.contains("urn:xmpp:mam:2"), "{t}");
    let rooms = iq(&mut alice, "ri2", "<iq type='get' to='conference.localhost' id='ri2'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>").await;
    assert!(rooms.to_string().contains(ROOM), "{rooms}");

    // A client that disconnects leaves every room.
    drop(bob);
    let p = alice.expect_where(|e| e.attr("from") == Some("lobby@conference.localhost/Robert")).await;
    assert_eq!(p.attr("type"), Some("unavailable"));
    // The last occupant leaves: a temporary room is gone.
    alice.send(&format!("<presence to='{ROOM}/Alice' type='unavailable'/>")).await;
    alice.expect_where(|e| e.name() == "presence").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let gone = iq(
        &mut carol,
        "g",
        &format!("<iq type='get' to='{ROOM}' id='g'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"),
    )
    .await;
    assert_eq!(error_condition(&gone).as_deref(), Some("item-not-found"), "{gone}");
    s.stop().await;
}

#[tokio::test]
async fn bad_input_gets_the_xep_errors() {
    let s = TestServer::start().await.unwrap();
    users(&s, &["owner", "bob", "mallory"]).await;
    let mut owner = online(&s, "owner").await;
    let mut bob = online(&s, "bob").await;
    let mut mallory = online(&s, "mallory").await;
    create_instant(&mut owner, ROOM, "Boss").await;

    // A nick in use.
    bob.send(&format!("<presence to='{ROOM}/Boss'><x xmlns='{MUC}'/></presence>")).await;
    let e = bob.expect_where(|e| e.name() == "presence").await;
    assert_eq!(error_condition(&e).as_deref(), Some("conflict"), "{e}");
    // No nick at all.
    bob.send(&format!("<presence to='{ROOM}'><x xmlns='{MUC}'/></presence>")).await;
    let e = bob.expect_where(|e| e.name() == "presence").await;
    assert_eq!(error_condition(&e).as_deref(), Some("jid-malformed"), "{e}");
    // A message from a non-occupant.
    mallory.send(&format!("<message to='{ROOM}' type='groupchat' id='x'><body>spam</body></message>")).await;
    let e = mallory.expect_where(|e| e.attr("id") == Some("x")).await;
    assert_eq!(error_condition(&e).as_deref(), Some("not-acceptable"), "{e}");
    // A malformed configuration form.
    owner
        .send(&format!(
            "<iq type='set' to='{ROOM}' id='bad'><query xmlns='http://jabber.org/protocol/muc#owner'>\
               <x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_maxusers'><value>lots</value></field></x>\
             </query></iq>"
        ))
        .await;
    let e = owner.expect_where(|e| e.attr("id") == Some("bad")).await;
    assert_eq!(error_condition(&e).as_deref(), Some("bad-request"), "{e}");
    // A non-owner asking for the configuration.
    let e = iq(
        &mut bob,
        "nf",
        &format!("<iq type='get' to='{ROOM}' id='nf'><query xmlns='http://jabber.org/protocol/muc#owner'/></iq>"),
    )
    .await;
    assert_eq!(error_condition(&e).as_deref(), Some("forbidden"));

    // Password protection.
    configure(
        &mut owner,
        ROOM,
        "<field var='muc#roomconfig_passwordprotectedroom'><value>1</value></field>\
         <field var='muc#roomconfig_roomsecret'><value>sesame</value></field>",
    )
    .await;
    bob.send(&format!("<presence to='{ROOM}/Bob'><x xmlns='{MUC}'><password>wrong</password></x></presence>")).await;
    let e = bob.expect_where(|e| e.name() == "presence").await;
    assert_eq!(error_condition(&e).as_deref(), Some("not-authorized"), "{e}");
    assert!(!e.to_string().contains("wrong"), "the refusal does not echo the password: {e}");
    join(&mut bob, ROOM, "Bob", "<password>sesame</password>").await;
    quiet(&mut owner).await;

    // A participant may not kick.
    let e = iq(
        &mut bob,
        "k",
        &format!("<iq type='set' to='{ROOM}' id='k'><query xmlns='http://jabber.org/protocol/muc#admin'><item nick='Boss' role='none'/></query></iq>"),
    )
    .await;
    assert_eq!(error_condition(&e).as_deref(), Some("forbidden"), "{e}");
    // The owner may not leave the room without an owner.
    let e = iq(
        &mut owner,
        "lo",
        &format!("<iq type='set' to='{ROOM}' id='lo'><query xmlns='http://jabber.org/protocol/muc#admin'><item jid='owner@localhost' affiliation='member'/></query></iq>"),
    )
    .await;
    assert_eq!(error_condition(&e).as_deref(), Some("conflict"), "{e}");

    // Ban Mallory: a banned user cannot enter.
    let r = iq(
        &mut owner,
        "ban",
        &format!("<iq type='set' to='{ROOM}' id='ban'><query xmlns='http://jabber.org/protocol/muc#admin'><item jid='mallory@localhost' affiliation='outcast'><reason>spam</reason></item></query></iq>"),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    mallory.send(&format!("<presence to='{ROOM}/M'><x xmlns='{MUC}'><password>sesame</password></x></presence>")).await;
    let e = mallory.expect_where(|e| e.name() == "presence").await;
    assert_eq!(error_condition(&e).as_deref(), Some("forbidden"), "{e}");
    let list = iq(
        &mut owner,
        "ol",
        &format!("<iq type='get' to='{ROOM}' id='ol'><query xmlns='http://jabber.org/protocol/muc#admin'><item affiliation='outcast'/></query></iq>"),
    )
    .await;
    assert!(list.to_string().contains("mallory@localhost") && list.to_string().contains("spam"), "{list}");

    // Members-only: a non-member gets registration-required.
    configure(&mut owner, ROOM, "<field var='muc#roomconfig_membersonly'><value>1</value></field>").await;
    // Bob, not a member, was removed with 322.
    let p = bob.expect_where(|e| e.name() == "presence" && e.attr("type") == Some("unavailable")).await;
    assert!(codes(&p).contains(&"322".to_owned()), "{p}");
    bob.send(&format!("<presence to='{ROOM}/Bob'><x xmlns='{MUC}'><password>sesame</password></x></presence>")).await;
    let e = bob.expect_where(|e| e.name() == "presence").await;
    assert_eq!(error_condition(&e).as_deref(), Some("registration-required"), "{e}");
    s.stop().await;
}

#[tokio::test]
async fn roles_affiliations_invitations_moderation_destroy() {
    let s = TestServer::start().await.unwrap();
    users(&s, &["owner", "bob", "carol", "dave"]).await;
    let mut owner = online(&s, "owner").await;
    let mut bob = online(&s, "bob").await;
    let mut carol = online(&s, "carol").await;
    let mut dave = online(&s, "dave").await;
    create_instant(&mut owner, ROOM, "Boss").await;
    join(&mut bob, ROOM, "Bob", "").await;
    join(&mut carol, ROOM, "Carol", "").await;
    quiet(&mut owner).await;
    quiet(&mut bob).await;

    // Make Bob an admin: he becomes a moderator; everyone sees it.
    let r = iq(
        &mut owner,
        "a",
        &format!("<iq type='set' to='{ROOM}' id='a'><query xmlns='http://jabber.org/protocol/muc#admin'><item jid='bob@localhost' affiliation='admin'/></query></iq>"),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let p = carol
        .expect_where(|e| e.name() == "presence" && e.attr("from") == Some("lobby@conference.localhost/Bob"))
        .await;
    assert_eq!(muc_item(&p).map(|i| (i.attr("affiliation"), i.attr("role"))), Some((Some("admin"), Some("moderator"))));
    // Bob (moderator) kicks Carol: 307 with the actor and reason.
    let r = iq(
        &mut bob,
        "k",
        &format!("<iq type='set' to='{ROOM}' id='k'><query xmlns='http://jabber.org/protocol/muc#admin'><item nick='Carol' role='none'><reason>off topic</reason></item></query></iq>"),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let p = carol.expect_where(|e| e.name() == "presence" && e.attr("type") == Some("unavailable")).await;
    assert_eq!(codes(&p), ["307", "110"]);
    assert!(p.to_string().contains("off topic"));
    // An admin cannot kick the owner.
    let e = iq(
        &mut bob,
        "k2",
        &format!("<iq type='set' to='{ROOM}' id='k2'><query xmlns='http://jabber.org/protocol/muc#admin'><item nick='Boss' role='none'/></query></iq>"),
    )
    .await;
    assert_eq!(error_condition(&e).as_deref(), Some("not-allowed"), "{e}");

    // Mediated invitation (§7.8.2): allowed for admins; the invitee gets it from the room.
    bob.send(&format!(
        "<message to='{ROOM}'><x xmlns='{MUC_USER}'><invite to='dave@localhost'><reason>join us</reason></invite></x></message>"
    ))
    .await;
    let inv = dave.expect_where(|e| e.name() == "message").await;
    assert_eq!(inv.attr("from"), Some(ROOM));
    let invite = inv.get_child("x", MUC_USER).and_then(|x| x.get_child("invite", MUC_USER)).expect("invite");
    assert_eq!(invite.attr("from"), Some("bob@localhost"));
    // Dave declines; Bob learns it.
    dave.send(&format!("<message to='{ROOM}'><x xmlns='{MUC_USER}'><decline to='bob@localhost'><reason>busy</reason></decline></x></message>")).await;
    let d = bob.expect_where(|e| e.name() == "message" && e.has_child("x", MUC_USER)).await;
    assert_eq!(
        d.get_child("x", MUC_USER).and_then(|x| x.get_child("decline", MUC_USER)).and_then(|d| d.attr("from")),
        Some("dave@localhost")
    );
    // A direct invitation (XEP-0249) travels from client to client.
    bob.send("<message to='dave@localhost/r' id='di'><x xmlns='jabber:x:conference' jid='lobby@conference.localhost'/></message>").await;
    let di = dave.expect_where(|e| e.attr("id") == Some("di")).await;
    assert!(di.has_child("x", "jabber:x:conference"));

    // Self-ping (XEP-0410): joined → result; not joined → not-acceptable.
    let r =
        iq(&mut bob, "sp", &format!("<iq type='get' to='{ROOM}/Bob' id='sp'><ping xmlns='urn:xmpp:ping'/></iq>")).await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let r =
        iq(&mut carol, "sp2", &format!("<iq type='get' to='{ROOM}/Carol' id='sp2'><ping xmlns='urn:xmpp:ping'/></iq>"))
            .await;
    assert_eq!(error_condition(&r).as_deref(), Some("not-acceptable"), "{r}");

    // Moderation (XEP-0425): the owner retracts Bob's message; everyone sees the retraction.
    bob.send(&format!("<message to='{ROOM}' type='groupchat'><body>oops</body></message>")).await;
    let m = owner.expect_where(|e| e.child_text("body", ns::CLIENT).as_deref() == Some("oops")).await;
    let sid = m.get_child("stanza-id", ns::SID).and_then(|s| s.attr("id")).unwrap().to_owned();
    bob.expect_where(|e| e.child_text("body", ns::CLIENT).as_deref() == Some("oops")).await;
    let r = iq(
        &mut owner,
        "mod",
        &format!("<iq type='set' to='{ROOM}' id='mod'><moderate id='{sid}' xmlns='urn:xmpp:message-moderate:1'><retract xmlns='urn:xmpp:message-retract:1'/><reason>rude</reason></moderate></iq>"),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let n = bob.expect_where(|e| e.has_child("retract", "urn:xmpp:message-retract:1")).await;
    assert_eq!(n.get_child("retract", "urn:xmpp:message-retract:1").and_then(|r| r.attr("id")), Some(sid.as_str()));
    // A participant may not moderate.
    join(&mut dave, ROOM, "Dave", "").await;
    let e = iq(
        &mut dave,
        "mod2",
        &format!("<iq type='set' to='{ROOM}' id='mod2'><moderate id='{sid}' xmlns='urn:xmpp:message-moderate:1'><retract xmlns='urn:xmpp:message-retract:1'/></moderate></iq>"),
    )
    .await;
    assert_eq!(error_condition(&e).as_deref(), Some("forbidden"));
    // The room archive (XEP-0313 on the room JID) holds the tombstone, not the text.
    let r = iq(
        &mut dave,
        "q",
        &format!("<iq type='set' to='{ROOM}' id='q'><query xmlns='urn:xmpp:mam:2' queryid='qq'/></iq>"),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let fin = r.get_child("fin", "urn:xmpp:mam:2").expect("fin");
    assert_eq!(fin.attr("complete"), Some("true"));

    // Destroy with a reason and an alternate venue.
    let r = iq(
        &mut owner,
        "d",
        &format!("<iq type='set' to='{ROOM}' id='d'><query xmlns='http://jabber.org/protocol/muc#owner'><destroy jid='new@conference.localhost'><reason>moving</reason></destroy></query></iq>"),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let p = dave.expect_where(|e| e.name() == "presence" && e.attr("type") == Some("unavailable")).await;
    let destroy = p.get_child("x", MUC_USER).and_then(|x| x.get_child("destroy", MUC_USER)).expect("destroy");
    assert_eq!(destroy.attr("jid"), Some("new@conference.localhost"));
    assert_eq!(destroy.child_text("reason", MUC_USER).as_deref(), Some("moving"));
    s.stop().await;
}

#[tokio::test]
async fn room_archive_pages_and_is_read_protected() {
    let s = TestServer::start().await.unwrap();
    users(&s, &["owner", "bob", "eve"]).await;
    let mut owner = online(&s, "owner").await;
    let mut eve = online(&s, "eve").await;
    create_instant(&mut owner, ROOM, "Boss").await;
    for i in 0..30 {
        owner.send(&format!("<message to='{ROOM}' type='groupchat'><body>m{i}</body></message>")).await;
    }
    for _ in 0..30 {
        owner.expect_where(|e| e.has_child("body", ns::CLIENT)).await;
    }
    // Page through the room's archive, 12 at a time, forwards: every message once, in order.
    let mut got = Vec::new();
    let mut after = String::new();
    loop {
        let rsm = if after.is_empty() { String::new() } else { format!("<after>{after}</after>") };
        owner
            .send(&format!(
                "<iq type='set' to='{ROOM}' id='p'><query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'><max>12</max>{rsm}</set></query></iq>"
            ))
            .await;
        loop {
            let e = owner.expect().await;
            if e.name() == "iq" && e.attr("id") == Some("p") {
                assert_eq!(e.attr("type"), Some("result"), "{e}");
                let fin = e.get_child("fin", "urn:xmpp:mam:2").unwrap();
                after = fin
                    .get_child("set", "http://jabber.org/protocol/rsm")
                    .and_then(|s| s.child_text("last", "http://jabber.org/protocol/rsm"))
                    .unwrap_or_default();
                if fin.attr("complete") == Some("true") {
                    assert_eq!(got.len(), 30);
                    let want: Vec<String> = (0..30).map(|i| format!("m{i}")).collect();
                    assert_eq!(got, want);
                    // Members-only rooms are not readable by outsiders.
                    configure(&mut owner, ROOM, "<field var='muc#roomconfig_membersonly'><value>1</value></field>")
                        .await;
                    let e = iq(
                        &mut eve,
                        "x",
                        &format!("<iq type='set' to='{ROOM}' id='x'><query xmlns='urn:xmpp:mam:2'/></iq>"),
                    )
                    .await;
                    assert_eq!(error_condition(&e).as_deref(), Some("forbidden"), "{e}");
                    s.stop().await;
                    return;
                }
                break;
            }
            let fwd = e
                .get_child("result", "urn:xmpp:mam:2")
                .and_then(|r| r.get_child("forwarded", ns::FORWARD))
                .expect("a result");
            let m = fwd.get_child("message", ns::CLIENT).unwrap();
            assert_eq!(m.attr("from"), Some("lobby@conference.localhost/Boss"));
            got.push(m.child_text("body", ns::CLIENT).unwrap());
        }
    }
}

#[tokio::test]
async fn persistent_room_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(dir.path());
    let s = TestServer::start_with(cfg.clone(), None).await.unwrap();
    users(&s, &["owner", "bob"]).await;
    let mut owner = online(&s, "owner").await;
    create_instant(&mut owner, ROOM, "Boss").await;
    configure(
        &mut owner,
        ROOM,
        "<field var='muc#roomconfig_persistentroom'><value>1</value></field>\
         <field var='muc#roomconfig_roomname'><value>Kept</value></field>",
    )
    .await;
    let r = iq(
        &mut owner,
        "m",
        &format!("<iq type='set' to='{ROOM}' id='m'><query xmlns='http://jabber.org/protocol/muc#admin'><item jid='bob@localhost' affiliation='member'/></query></iq>"),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"));
    owner.send(&format!("<message to='{ROOM}' type='groupchat'><body>before the restart</body></message>")).await;
    owner.expect_where(|e| e.has_child("body", ns::CLIENT)).await;
    drop(owner);
    s.stop().await;

    let s = TestServer::start_with(cfg, None).await.unwrap();
    let mut bob = online(&s, "bob").await;
    // Configuration, membership and history are back.
    let seen = join(&mut bob, ROOM, "Bob", "").await;
    let own = seen.iter().find(|e| e.name() == "presence").expect("own presence");
    assert_eq!(muc_item(own).and_then(|i| i.attr("affiliation")), Some("member"), "{own}");
    let hist: Vec<&Element> = seen.iter().filter(|e| e.name() == "message").collect();
    assert_eq!(hist.len(), 1, "{seen:?}");
    assert_eq!(hist[0].child_text("body", ns::CLIENT).as_deref(), Some("before the restart"));
    let info = iq(
        &mut bob,
        "i",
        &format!("<iq type='get' to='{ROOM}' id='i'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"),
    )
    .await;
    assert!(info.to_string().contains("Kept") && info.to_string().contains("muc_persistent"), "{info}");
    s.stop().await;
}

/// `muc#roomconfig_presencebroadcast`: with only moderators' presence
/// broadcast (a large room), participants join and leave without a presence to
/// everyone, still see the moderators, and still chat.
#[tokio::test]
async fn presence_broadcast_for_chosen_roles_only() {
    let s = TestServer::start().await.unwrap();
    users(&s, &["owner", "bob", "carol"]).await;
    let mut owner = online(&s, "owner").await;
    let mut bob = online(&s, "bob").await;
    let mut carol = online(&s, "carol").await;
    create_instant(&mut owner, ROOM, "Boss").await;
    configure(&mut owner, ROOM, "<field var='muc#roomconfig_presencebroadcast'><value>moderator</value></field>").await;
    let seen = join(&mut bob, ROOM, "Bob", "").await;
    let froms: Vec<&str> = seen.iter().filter_map(|e| e.attr("from")).collect();
    assert_eq!(
        froms,
        ["lobby@conference.localhost/Boss", "lobby@conference.localhost/Bob"],
        "the moderator, then itself"
    );
    let seen = join(&mut carol, ROOM, "Carol", "").await;
    let froms: Vec<&str> = seen.iter().filter_map(|e| e.attr("from")).collect();
    assert_eq!(froms, ["lobby@conference.localhost/Boss", "lobby@conference.localhost/Carol"], "not Bob");
    bob.send(&format!("<message to='{ROOM}' type='groupchat' id='b1'><body>quietly</body></message>")).await;
    for c in [&mut owner, &mut carol] {
        let m = c.expect_where(|e| e.name() == "message" && e.attr("id") == Some("b1")).await;
        assert_eq!(m.attr("from"), Some("lobby@conference.localhost/Bob"));
    }
    bob.send(&format!("<presence to='{ROOM}/Bob' type='unavailable'/>")).await;
    bob.expect_where(|e| e.name() == "presence" && e.attr("type") == Some("unavailable")).await;
    // Neither the owner nor Carol heard of Bob's or Carol's presence.
    for c in [&mut owner, &mut carol] {
        while let Some(e) = c.next(Duration::from_millis(300)).await {
            let from = e.attr("from").unwrap_or_default();
            assert!(e.name() != "presence" || from.ends_with("/Boss"), "a participant's presence was broadcast: {e}");
        }
    }
    // An unknown role in the form is a bad request.
    owner
        .send(&format!(
            "<iq type='set' to='{ROOM}' id='pb'><query xmlns='http://jabber.org/protocol/muc#owner'>\
               <x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_presencebroadcast'><value>everyone</value></field></x>\
             </query></iq>"
        ))
        .await;
    let e = owner.expect_where(|e| e.attr("id") == Some("pb")).await;
    assert_eq!(error_condition(&e).as_deref(), Some("bad-request"), "{e}");
    s.stop().await;
}

/// A room larger than a session's mailbox and its stream-management buffer:
/// the joiner gets every occupant's presence as one burst (one mailbox slot)
/// and, with XEP-0198 on, has `ack_timeout` to acknowledge it; a client that
/// then stops acknowledging is disconnected.
#[tokio::test]
async fn a_room_larger_than_the_mailbox_and_the_sm_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.general.session_mailbox = 16;
    let sm = cfg.modules.mod_stream_management.as_mut().unwrap();
    sm.buffer_max = 10;
    sm.ack_timeout = 1;
    let s = TestServer::start_with(cfg, Some(dir)).await.unwrap();
    const N: usize = 40;
    let names: Vec<String> = (0..N).map(|i| format!("u{i}")).chain(["late".to_owned()]).collect();
    users(&s, &names.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let room = "big@conference.localhost";
    let mut occupants = Vec::new();
    for (i, name) in names[..N].iter().enumerate() {
        let mut c = online(&s, name).await;
        if i == 0 {
            create_instant(&mut c, room, name).await;
            occupants.push(c);
            continue;
        }
        let seen = join(&mut c, room, name, "").await;
        let presences = seen.iter().filter(|e| e.name() == "presence").count();
        assert_eq!(presences, i + 1, "{name} sees everyone before it and itself");
        occupants.push(c);
    }
    let mut late = online(&s, "late").await;
    late.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    late.expect_where(|e| e.name() == "enabled").await;
    let seen = join(&mut late, room, "late", "").await;
    let presences: Vec<&Element> = seen.iter().filter(|e| e.name() == "presence").collect();
    assert_eq!(presences.len(), N + 1, "every occupant, then itself");
    assert_eq!(codes(presences[N]).first().map(String::as_str), Some("110"), "its own presence comes last");
    // One request for acknowledgement covers the whole burst.
    assert_eq!(seen.iter().filter(|e| e.name() == "r").count(), 1, "one <r/> while it is unanswered");
    // Everything since <enable/> (N + 1 presences, the subject) is
    // acknowledged, well past buffer_max but within ack_timeout; an answer
    // that leaves some unacknowledged gets a new request at once.
    late.send(&format!("<a xmlns='urn:xmpp:sm:3' h='{}'/>", N + 1)).await;
    late.expect_where(|e| e.name() == "r").await;
    late.send(&format!("<a xmlns='urn:xmpp:sm:3' h='{}'/>", N + 2)).await;
    occupants[0].send(&format!("<message to='{room}' type='groupchat' id='hi'><body>hi</body></message>")).await;
    late.expect_where(|e| e.name() == "message" && e.attr("id") == Some("hi")).await;
    // A client that stops acknowledging beyond buffer_max is disconnected once
    // ack_timeout passes.
    for (i, c) in occupants.iter_mut().enumerate().take(12) {
        c.send(&format!("<message to='{room}' type='groupchat' id='m{i}'><body>{i}</body></message>")).await;
    }
    late.expect_where(|e| e.name() == "message" && e.attr("id") == Some("m11")).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    occupants[0].send(&format!("<message to='{room}' type='groupchat' id='last'><body>!</body></message>")).await;
    assert_eq!(late.expect_stream_error().await.as_deref(), Some("resource-constraint"));
    s.stop().await;
}

/// §7.10 registration: the form, registering (membership and a reserved
/// nickname), `<registered/>` afterwards, the reservation enforced on join and
/// nick change, §7.12 discovery of the reserved nickname, the member list, the
/// refusals (taken nickname, banned user, members-only room, bad form),
/// cancellation with `<remove/>`, and the reservation kept across a restart.
#[tokio::test]
async fn registration_reserves_a_nickname_and_grants_membership() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(dir.path());
    let s = TestServer::start_with(cfg.clone(), None).await.unwrap();
    users(&s, &["owner", "bob", "carol", "troll", "dan"]).await;
    let mut owner = online(&s, "owner").await;
    create_instant(&mut owner, ROOM, "Boss").await;
    configure(&mut owner, ROOM, "<field var='muc#roomconfig_persistentroom'><value>1</value></field>").await;
    let reg = |id: &str, body: &str| {
        format!("<iq type='set' to='{ROOM}' id='{id}'><query xmlns='jabber:iq:register'>{body}</query></iq>")
    };
    let submit = |nick: &str| {
        format!(
            "<x xmlns='jabber:x:data' type='submit'>\
               <field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#register</value></field>\
               <field var='muc#register_roomnick'><value>{nick}</value></field></x>"
        )
    };
    let info = iq(
        &mut owner,
        "f",
        &format!("<iq type='get' to='{ROOM}' id='f'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"),
    )
    .await;
    assert!(info.to_string().contains("jabber:iq:register"), "registration is advertised: {info}");

    // Bob (no affiliation) gets the form, joins, then registers: he becomes a
    // member and the room tells everyone.
    let mut bob = online(&s, "bob").await;
    let form =
        iq(&mut bob, "g", &format!("<iq type='get' to='{ROOM}' id='g'><query xmlns='jabber:iq:register'/></iq>")).await;
    assert_eq!(form.attr("type"), Some("result"), "{form}");
    let f = form.to_string();
    assert!(f.contains("muc#register_roomnick") && f.contains("http://jabber.org/protocol/muc#register"), "{f}");
    join(&mut bob, ROOM, "Bobby", "").await;
    owner.expect_where(|e| e.name() == "presence").await;
    let r = iq(&mut bob, "r", &reg("r", &submit("Bobby"))).await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let p = owner.expect_where(|e| e.name() == "presence").await;
    assert_eq!(muc_item(&p).and_then(|i| i.attr("affiliation")), Some("member"), "{p}");
    let again =
        iq(&mut bob, "g2", &format!("<iq type='get' to='{ROOM}' id='g2'><query xmlns='jabber:iq:register'/></iq>"))
            .await;
    let q = again.get_child("query", ns::REGISTER).expect("query");
    assert!(q.has_child("registered", ns::REGISTER), "{again}");
    assert_eq!(q.child_text("username", ns::REGISTER).as_deref(), Some("Bobby"));
    let mine = iq(&mut bob, "n", &format!("<iq type='get' to='{ROOM}' id='n'><query xmlns='http://jabber.org/protocol/disco#info' node='x-roomuser-item'/></iq>")).await;
    let id = mine
        .get_child("query", ns::DISCO_INFO)
        .and_then(|q| q.get_child("identity", ns::DISCO_INFO))
        .map(|i| i.attr("name").map(str::to_owned));
    assert_eq!(id, Some(Some("Bobby".to_owned())), "{mine}");
    let members = iq(&mut owner, "m", &format!("<iq type='get' to='{ROOM}' id='m'><query xmlns='http://jabber.org/protocol/muc#admin'><item affiliation='member'/></query></iq>")).await;
    assert!(
        members.to_string().contains("jid=\"bob@localhost\"") || members.to_string().contains("jid='bob@localhost'"),
        "{members}"
    );
    assert!(members.to_string().contains("Bobby"), "the member list shows the reserved nick: {members}");
    // Registering again changes the reservation; the old nickname is free again.
    let r = iq(&mut bob, "r2", &reg("r2", &submit("Robert"))).await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let r = iq(&mut bob, "r3", &reg("r3", &submit("Bobby"))).await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let mut dan = online(&s, "dan").await;
    join(&mut dan, ROOM, "Robert", "").await;
    dan.send(&format!("<presence to='{ROOM}/Robert' type='unavailable'/>")).await;
    dan.expect_where(|e| e.name() == "presence" && e.attr("type") == Some("unavailable")).await;
    quiet(&mut owner).await;
    quiet(&mut bob).await;

    // Carol: the reserved nick is refused on registration, on join and on a
    // nick change; she has no reservation of her own to discover.
    let mut carol = online(&s, "carol").await;
    let r = iq(&mut carol, "r", &reg("r", &submit("Bobby"))).await;
    assert_eq!(error_condition(&r).as_deref(), Some("conflict"), "{r}");
    let none = iq(&mut carol, "n", &format!("<iq type='get' to='{ROOM}' id='n'><query xmlns='http://jabber.org/protocol/disco#info' node='x-roomuser-item'/></iq>")).await;
    assert!(none.get_child("query", ns::DISCO_INFO).is_some_and(|q| q.children().next().is_none()), "{none}");
    bob.send(&format!("<presence to='{ROOM}/Bobby' type='unavailable'/>")).await;
    bob.expect_where(|e| e.name() == "presence").await;
    carol.send(&format!("<presence to='{ROOM}/Bobby'><x xmlns='{MUC}'/></presence>")).await;
    let e = carol.expect_where(|e| e.name() == "presence").await;
    assert_eq!(error_condition(&e).as_deref(), Some("conflict"), "a reserved nick is refused on join: {e}");
    join(&mut carol, ROOM, "Caro", "").await;
    carol.send(&format!("<presence to='{ROOM}/Bobby'/>")).await;
    let e = carol.expect_where(|e| e.name() == "presence" && e.attr("type") == Some("error")).await;
    assert_eq!(error_condition(&e).as_deref(), Some("conflict"), "a reserved nick is refused on nick change: {e}");
    // Bad forms.
    let r = iq(&mut carol, "b", &reg("b", "<x xmlns='jabber:x:data' type='submit'/>")).await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"), "{r}");
    let r = iq(&mut carol, "b2", &reg("b2", "")).await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"), "{r}");

    // A banned user may not register.
    let ban = iq(&mut owner, "ban", &format!("<iq type='set' to='{ROOM}' id='ban'><query xmlns='http://jabber.org/protocol/muc#admin'><item jid='troll@localhost' affiliation='outcast'/></query></iq>")).await;
    assert_eq!(ban.attr("type"), Some("result"));
    let mut troll = online(&s, "troll").await;
    let r = iq(&mut troll, "r", &reg("r", &submit("Troll"))).await;
    assert_eq!(error_condition(&r).as_deref(), Some("not-allowed"), "{r}");
    drop((bob, carol, troll, owner, dan));
    s.stop().await;

    // The reservation survives a restart; <remove/> ends it and the membership.
    let s = TestServer::start_with(cfg, None).await.unwrap();
    let mut carol = online(&s, "carol").await;
    carol.send(&format!("<presence to='{ROOM}/Bobby'><x xmlns='{MUC}'/></presence>")).await;
    let e = carol.expect_where(|e| e.name() == "presence").await;
    assert_eq!(error_condition(&e).as_deref(), Some("conflict"), "still reserved after a restart: {e}");
    let mut bob = online(&s, "bob").await;
    let r = iq(&mut bob, "x", &reg("x", "<remove/>")).await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let seen = join(&mut carol, ROOM, "Bobby", "").await;
    let own =
        seen.iter().find(|e| e.name() == "presence" && codes(e).contains(&"110".to_owned())).expect("own presence");
    assert_eq!(muc_item(own).and_then(|i| i.attr("affiliation")), Some("none"), "{own}");
    // Bob is no longer a member, and a members-only room refuses registration
    // to non-members.
    let mut owner = online(&s, "owner").await;
    configure(&mut owner, ROOM, "<field var='muc#roomconfig_membersonly'><value>1</value></field>").await;
    let r = iq(&mut bob, "y", &reg("y", &submit("Bob"))).await;
    assert_eq!(error_condition(&r).as_deref(), Some("not-allowed"), "{r}");
    s.stop().await;
}
