//! The conformance suite every storage backend runs from its tests.
//!
//! [`run`] exercises every trait of a [`Stores`] bundle and panics (through `assert!`)
//! on the first deviation from the documented semantics. Every run works in its own
//! domains, named after [`unique_tag`], so the suite can run repeatedly against a
//! persistent database and several runs can share one database concurrently.
//!
//! The suite pins down behaviour the trait docs leave implicit, so all backends agree:
//! lists are sorted by byte order (not by a locale collation), roster versions grow by
//! exactly one per change, `Some("")` and `None` are distinct, and strings are stored
//! verbatim (quotes, backslashes, newlines, non-ASCII).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

mod archive;

use crate::{Account, Error, LastActivity, RosterItem, StoredCredentials, Stores, Subscription};

/// A string that differs between calls, processes and runs: lowercase ASCII letters
/// and digits only, so it is usable in domain names and SQL schema names.
pub fn unique_tag() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("t{nanos:x}p{:x}c{n}", std::process::id())
}

/// Runs the whole suite against `stores`; panics on the first failure.
pub async fn run(stores: &Stores) {
    let tag = unique_tag();
    let domain = format!("{tag}.conformance.example");
    auth(stores, &domain).await;
    auth_concurrent_create(stores, &domain).await;
    list_users(stores, &tag).await;
    roster(stores, &domain).await;
    roster_concurrent(stores, &domain).await;
    offline(stores, &domain).await;
    offline_concurrent_limit(stores, &domain).await;
    xml(stores, &domain).await;
    blocking(stores, &domain).await;
    last(stores, &domain).await;
    delete_user_cascades(stores, &domain).await;
    hostile_strings(stores, &domain).await;
    archive::archive(stores, &domain).await;
    archive::delete_user_removes_archive(stores, &domain).await;
    singletons(stores, &tag).await;
    rooms(stores, &tag).await;
}

/// Singleton ownership: create only when free, compare-and-set on the
/// revision, delete only by the owner; concurrent creators: exactly one wins.
async fn singletons(stores: &Stores, tag: &str) {
    let s = &stores.singletons;
    let key = format!("room-{tag}@conference.example");
    assert_eq!(s.singleton_owner(&key).await.unwrap(), None);
    assert!(s.create_singleton(&key, "n1 1").await.unwrap());
    assert!(!s.create_singleton(&key, "n2 1").await.unwrap(), "a key has one owner");
    let (owner, rev) = s.singleton_owner(&key).await.unwrap().unwrap();
    assert_eq!(owner, "n1 1");
    assert!(s.replace_singleton(&key, "n2 1", rev).await.unwrap());
    assert!(!s.replace_singleton(&key, "n3 1", rev).await.unwrap(), "a stale revision loses");
    let (owner, rev2) = s.singleton_owner(&key).await.unwrap().unwrap();
    assert_eq!(owner, "n2 1");
    assert!(rev2 > rev);
    s.delete_singleton(&key, "n1 1").await.unwrap();
    assert!(s.singleton_owner(&key).await.unwrap().is_some(), "only the owner frees a key");
    s.delete_singleton(&key, "n2 1").await.unwrap();
    assert_eq!(s.singleton_owner(&key).await.unwrap(), None);
    // Racing creators.
    let race = format!("race-{tag}");
    let tries = (0..8).map(|i| {
        let (s, race) = (s.clone(), race.clone());
        async move { s.create_singleton(&race, &format!("n{i} 1")).await.unwrap() }
    });
    let wins = futures_join_all(tries).await.into_iter().filter(|w| *w).count();
    assert_eq!(wins, 1, "exactly one of the racing creators owns the key");
}

/// Rooms: create once, configuration and affiliation changes, a user's rooms
/// by index, deletion with the room's archive.
async fn rooms(stores: &Stores, tag: &str) {
    use crate::{ArchiveEntry, ArchiveQuery, ArchivedMessage, Direction, RoomAffiliation};
    let m = &stores.muc;
    let service = format!("conference.{tag}.example");
    let aff = |jid: &str, a: &str| RoomAffiliation { jid: jid.into(), affiliation: a.into(), ..Default::default() };
    assert_eq!(m.load_room(&service, "lobby").await.unwrap(), None);
    assert!(matches!(m.update_room(&service, "lobby", "x").await, Err(Error::NotFound)));
    assert!(matches!(m.set_affiliations(&service, "lobby", &[aff("a@x", "member")]).await, Err(Error::NotFound)));
    m.create_room(&service, "lobby", "<config v='1'/>", &[aff("owner@x", "owner"), aff("bob@x", "member")])
        .await
        .unwrap();
    assert!(matches!(m.create_room(&service, "lobby", "other", &[]).await, Err(Error::AlreadyExists)));
    m.create_room(&service, "attic", "<config v='a'/>", &[aff("bob@x", "admin")]).await.unwrap();
    m.update_room(&service, "lobby", "<config v='2'/>").await.unwrap();
    let banned = RoomAffiliation {
        jid: "troll@x".into(),
        affiliation: "outcast".into(),
        reason: "spam".into(),
        ..Default::default()
    };
    // A registered member's reserved nickname (XEP-0045 §7.10) is kept, and
    // replaced by a later change of the row.
    let dave = |nick: &str| RoomAffiliation {
        jid: "dave@x".into(),
        affiliation: "member".into(),
        nick: nick.into(),
        ..Default::default()
    };
    m.set_affiliations(&service, "lobby", &[dave("davy")]).await.unwrap();
    m.set_affiliations(
        &service,
        "lobby",
        &[aff("bob@x", "none"), banned.clone(), aff("carol@x", "admin"), dave("dave")],
    )
    .await
    .unwrap();
    let r = m.load_room(&service, "lobby").await.unwrap().unwrap();
    assert_eq!(r.config, "<config v='2'/>");
    assert_eq!(r.affiliations, vec![aff("carol@x", "admin"), dave("dave"), aff("owner@x", "owner"), banned]);
    let listed = m.list_rooms(&service).await.unwrap();
    assert_eq!(listed, vec![("attic".into(), "<config v='a'/>".into()), ("lobby".into(), "<config v='2'/>".into())]);
    assert_eq!(m.rooms_of(&service, "bob@x").await.unwrap(), vec![("attic".into(), "admin".into())]);
    assert_eq!(m.rooms_of(&service, "nobody@x").await.unwrap(), vec![]);
    // A room's history is in the archive with the room as owner; deleting the room deletes it.
    let row = ArchivedMessage {
        id: 77,
        with_jid: Default::default(),
        with_resource: Default::default(),
        direction: Direction::Incoming,
        sender: "owner@x/phone".into(),
        origin_id: None,
        stanza: "<message type='groupchat'><body>hi</body></message>".into(),
    };
    let entry = ArchiveEntry { user: "lobby".into(), domain: service.as_str().into(), msg: row };
    stores.archive.append(std::sync::Arc::new(vec![entry])).await.unwrap();
    let acc = Account::new("lobby", &service);
    assert_eq!(stores.archive.query(acc, &ArchiveQuery::default()).await.unwrap().rows.len(), 1);
    assert!(m.delete_room(&service, "lobby").await.unwrap());
    assert!(!m.delete_room(&service, "lobby").await.unwrap());
    assert_eq!(m.load_room(&service, "lobby").await.unwrap(), None);
    assert!(stores.archive.query(acc, &ArchiveQuery::default()).await.unwrap().rows.is_empty());
    assert_eq!(m.list_rooms(&service).await.unwrap().len(), 1);
    assert!(m.delete_room(&service, "attic").await.unwrap());
    assert_eq!(m.rooms_of(&service, "bob@x").await.unwrap(), vec![]);
}

/// Runs futures concurrently (the crate has no futures dependency).
async fn futures_join_all<F: std::future::Future<Output = bool> + Send + 'static>(
    fs: impl Iterator<Item = F>,
) -> Vec<bool> {
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("no panic"));
    }
    out
}

/// Credentials with a cheap iteration count (the suite checks storage, not hashing).
fn creds(password: &str) -> StoredCredentials {
    StoredCredentials::from_password(password, 2)
}

fn item(jid: &str) -> RosterItem {
    RosterItem { jid: jid.to_owned(), visible: true, ..RosterItem::default() }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v = strings(v);
    v.sort();
    v
}

async fn auth(s: &Stores, domain: &str) {
    let alice = Account::new("alice", domain);
    let c1 = creds("pencil");
    let c2 = creds("crayon");

    assert!(!s.auth.user_exists(alice).await.unwrap(), "fresh account must not exist");
    assert_eq!(s.auth.get_credentials(alice).await.unwrap(), None);
    assert!(
        matches!(s.auth.set_credentials(alice, &c1).await, Err(Error::NotFound)),
        "set_credentials on an unknown account must be NotFound"
    );
    assert!(!s.auth.user_exists(alice).await.unwrap(), "set_credentials must not create the account");
    assert!(!s.auth.delete_user(alice).await.unwrap(), "deleting an unknown account returns false");

    s.auth.create_user(alice, &c1).await.unwrap();
    assert!(s.auth.user_exists(alice).await.unwrap());
    assert!(
        matches!(s.auth.create_user(alice, &c2).await, Err(Error::AlreadyExists)),
        "second create_user must be AlreadyExists"
    );
    let got = s.auth.get_credentials(alice).await.unwrap().expect("credentials stored");
    assert_eq!(got, c1, "credentials roundtrip exactly (and the failed create did not overwrite)");
    assert!(got.verify_password("pencil"));

    s.auth.set_credentials(alice, &c2).await.unwrap();
    let got = s.auth.get_credentials(alice).await.unwrap().expect("credentials stored");
    assert_eq!(got, c2);
    assert!(got.verify_password("crayon") && !got.verify_password("pencil"));

    // Accounts are compared exactly: case and domain both matter.
    let upper = Account::new("Alice", domain);
    assert!(!s.auth.user_exists(upper).await.unwrap(), "user names are compared byte-exactly");
    let other_domain = format!("other.{domain}");
    let elsewhere = Account::new("alice", &other_domain);
    assert!(!s.auth.user_exists(elsewhere).await.unwrap(), "accounts are scoped by domain");
    s.auth.create_user(elsewhere, &c1).await.unwrap();
    assert_eq!(s.auth.get_credentials(elsewhere).await.unwrap(), Some(c1.clone()));
    assert_eq!(s.auth.get_credentials(alice).await.unwrap(), Some(c2.clone()));

    assert!(s.auth.delete_user(elsewhere).await.unwrap());
    assert!(!s.auth.user_exists(elsewhere).await.unwrap());
    assert!(s.auth.user_exists(alice).await.unwrap(), "deleting one domain's user leaves the other");
    assert!(s.auth.delete_user(alice).await.unwrap());
    assert!(!s.auth.delete_user(alice).await.unwrap());
    assert_eq!(s.auth.get_credentials(alice).await.unwrap(), None);

    // A deleted account can be created again.
    s.auth.create_user(alice, &c1).await.unwrap();
    assert_eq!(s.auth.get_credentials(alice).await.unwrap(), Some(c1));
    assert!(s.auth.delete_user(alice).await.unwrap());
}

async fn auth_concurrent_create(s: &Stores, domain: &str) {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..8 {
        let s = s.clone();
        let domain = domain.to_owned();
        set.spawn(async move {
            let c = creds(&format!("pw{i}"));
            let r = s.auth.create_user(Account::new("racer", &domain), &c).await;
            (r, c)
        });
    }
    let mut winners = Vec::new();
    while let Some(res) = set.join_next().await {
        match res.expect("task panicked") {
            (Ok(()), c) => winners.push(c),
            (Err(Error::AlreadyExists), _) => {}
            (Err(e), _) => panic!("concurrent create_user failed unexpectedly: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one concurrent create_user wins");
    let acc = Account::new("racer", domain);
    assert_eq!(s.auth.get_credentials(acc).await.unwrap().as_ref(), winners.first());
    assert!(s.auth.delete_user(acc).await.unwrap());
}

async fn list_users(s: &Stores, tag: &str) {
    // Three domains where one is a prefix / suffix of another, to catch LIKE-style scoping.
    let d1 = format!("{tag}.list.example");
    let d2 = format!("{tag}.list.example.sub");
    let d3 = format!("x{tag}.list.example");
    let empty = format!("{tag}.nobody.example");
    assert!(s.auth.list_users(&empty).await.unwrap().is_empty());

    let names = ["zed", "amy", "bob", "Bob", "_under", "a.b", "émile", "日本", "a", "a%", "a_b"];
    for n in names {
        s.auth.create_user(Account::new(n, &d1), &creds("x")).await.unwrap();
    }
    s.auth.create_user(Account::new("carl", &d2), &creds("x")).await.unwrap();
    s.auth.create_user(Account::new("dora", &d3), &creds("x")).await.unwrap();

    assert_eq!(s.auth.list_users(&d1).await.unwrap(), sorted(&names), "byte-order sorted, scoped to the domain");
    assert_eq!(s.auth.list_users(&d2).await.unwrap(), strings(&["carl"]));
    assert_eq!(s.auth.list_users(&d3).await.unwrap(), strings(&["dora"]));
    assert!(s.auth.list_users(&empty).await.unwrap().is_empty());

    assert!(s.auth.delete_user(Account::new("bob", &d1)).await.unwrap());
    let rest: Vec<&str> = names.iter().copied().filter(|n| *n != "bob").collect();
    assert_eq!(s.auth.list_users(&d1).await.unwrap(), sorted(&rest));

    for n in rest {
        assert!(s.auth.delete_user(Account::new(n, &d1)).await.unwrap());
    }
    assert!(s.auth.delete_user(Account::new("carl", &d2)).await.unwrap());
    assert!(s.auth.delete_user(Account::new("dora", &d3)).await.unwrap());
    assert!(s.auth.list_users(&d1).await.unwrap().is_empty());
}

async fn roster(s: &Stores, domain: &str) {
    let acc = Account::new("rosie", domain);
    let other = Account::new("otto", domain);
    s.auth.create_user(acc, &creds("x")).await.unwrap();
    s.auth.create_user(other, &creds("x")).await.unwrap();

    let r = s.roster.get_roster(acc).await.unwrap();
    assert_eq!(r.version, 0, "a roster never changed has version 0");
    assert!(r.items.is_empty());
    assert_eq!(s.roster.get_item(acc, "nobody@example.org").await.unwrap(), None);
    assert_eq!(s.roster.delete_item(acc, "nobody@example.org").await.unwrap(), None);
    assert_eq!(s.roster.get_roster(acc).await.unwrap().version, 0, "deleting nothing does not bump");

    let juliet = RosterItem {
        jid: "juliet@example.com".into(),
        name: Some("Juliet".into()),
        subscription: Subscription::Both,
        ask_out: false,
        pending_in: false,
        pending_in_stanza: None,
        approved: true,
        visible: true,
        groups: strings(&["Friends", "Capulets"]),
    };
    assert_eq!(s.roster.put_item(acc, &juliet).await.unwrap(), 1);
    assert_eq!(s.roster.get_item(acc, &juliet.jid).await.unwrap(), Some(juliet.clone()));

    // A hidden item that only remembers an inbound subscription request.
    let hidden = RosterItem {
        jid: "benvolio@example.net".into(),
        name: None,
        subscription: Subscription::None,
        ask_out: false,
        pending_in: true,
        pending_in_stanza: Some(
            "<presence from='benvolio@example.net/x' to='rosie@example' type='subscribe'><status>hi</status></presence>"
                .into(),
        ),
        approved: false,
        visible: false,
        groups: vec![],
    };
    assert_eq!(s.roster.put_item(acc, &hidden).await.unwrap(), 2);

    let mercutio = RosterItem {
        jid: "Mercutio@example.org".into(),
        name: Some(String::new()),
        subscription: Subscription::To,
        ask_out: true,
        pending_in: false,
        pending_in_stanza: None,
        approved: false,
        visible: true,
        groups: strings(&["z", "a", "m", "a b", ""]),
    };
    assert_eq!(s.roster.put_item(acc, &mercutio).await.unwrap(), 3);

    let r = s.roster.get_roster(acc).await.unwrap();
    assert_eq!(r.version, 3);
    let mut expected = vec![juliet.clone(), hidden.clone(), mercutio.clone()];
    expected.sort_by(|a, b| a.jid.cmp(&b.jid));
    assert_eq!(r.items, expected, "all items, hidden ones included, sorted by jid (byte order)");
    assert_eq!(
        s.roster.get_item(acc, &mercutio.jid).await.unwrap().map(|i| i.name),
        Some(Some(String::new())),
        "an empty name is not the same as no name"
    );

    // Replace: every field changes, groups reorder, the hidden item becomes visible.
    let juliet2 = RosterItem {
        name: None,
        subscription: Subscription::From,
        ask_out: true,
        pending_in: true,
        pending_in_stanza: Some("<presence type='subscribe'/>".into()),
        approved: false,
        visible: false,
        groups: strings(&["Capulets", "Friends", "Verona"]),
        ..juliet.clone()
    };
    assert_eq!(s.roster.put_item(acc, &juliet2).await.unwrap(), 4);
    assert_eq!(s.roster.get_item(acc, &juliet.jid).await.unwrap(), Some(juliet2.clone()));
    let hidden2 = RosterItem {
        visible: true,
        pending_in: false,
        pending_in_stanza: None,
        subscription: Subscription::From,
        ..hidden.clone()
    };
    assert_eq!(s.roster.put_item(acc, &hidden2).await.unwrap(), 5);
    // Putting an identical item still counts as a change.
    assert_eq!(s.roster.put_item(acc, &hidden2).await.unwrap(), 6);
    assert_eq!(s.roster.get_roster(acc).await.unwrap().items.len(), 3, "replacing does not duplicate");

    // Every subscription state roundtrips.
    for (i, sub) in
        [Subscription::None, Subscription::To, Subscription::From, Subscription::Both].into_iter().enumerate()
    {
        let it = RosterItem { subscription: sub, ..item(&format!("sub{i}@example.org")) };
        s.roster.put_item(acc, &it).await.unwrap();
        assert_eq!(s.roster.get_item(acc, &it.jid).await.unwrap(), Some(it));
    }
    assert_eq!(s.roster.get_roster(acc).await.unwrap().version, 10);

    // The other account's roster is separate, with its own version.
    assert_eq!(s.roster.get_roster(other).await.unwrap(), crate::Roster::default());
    assert_eq!(s.roster.put_item(other, &juliet).await.unwrap(), 1);
    assert_eq!(s.roster.get_item(other, &juliet.jid).await.unwrap(), Some(juliet.clone()));
    assert_eq!(s.roster.get_item(acc, &juliet.jid).await.unwrap(), Some(juliet2.clone()));

    // Deletes.
    assert_eq!(s.roster.delete_item(acc, &juliet.jid).await.unwrap(), Some(11));
    assert_eq!(s.roster.get_item(acc, &juliet.jid).await.unwrap(), None);
    assert_eq!(s.roster.delete_item(acc, &juliet.jid).await.unwrap(), None);
    assert_eq!(s.roster.get_roster(acc).await.unwrap().version, 11);
    assert_eq!(s.roster.get_item(other, &juliet.jid).await.unwrap(), Some(juliet.clone()), "other roster untouched");
    // JIDs are compared exactly.
    assert_eq!(s.roster.delete_item(acc, "mercutio@example.org").await.unwrap(), None);
    assert_eq!(s.roster.delete_item(acc, &mercutio.jid).await.unwrap(), Some(12));
    let r = s.roster.get_roster(acc).await.unwrap();
    assert_eq!(r.version, 12);
    let jids: Vec<&str> = r.items.iter().map(|i| i.jid.as_str()).collect();
    let mut want =
        vec![hidden.jid.as_str(), "sub0@example.org", "sub1@example.org", "sub2@example.org", "sub3@example.org"];
    want.sort();
    assert_eq!(jids, want);

    // Re-adding after delete works and bumps.
    assert_eq!(s.roster.put_item(acc, &juliet).await.unwrap(), 13);
    assert_eq!(s.roster.get_item(acc, &juliet.jid).await.unwrap(), Some(juliet));

    assert!(s.auth.delete_user(acc).await.unwrap());
    assert!(s.auth.delete_user(other).await.unwrap());
}

async fn roster_concurrent(s: &Stores, domain: &str) {
    const TASKS: usize = 8;
    const PER_TASK: usize = 4;
    let user = "crowd";
    s.auth.create_user(Account::new(user, domain), &creds("x")).await.unwrap();
    let mut set = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let s = s.clone();
        let domain = domain.to_owned();
        set.spawn(async move {
            let acc = Account::new(user, &domain);
            let mut versions = Vec::new();
            for i in 0..PER_TASK {
                let it = RosterItem { groups: strings(&[&format!("g{t}")]), ..item(&format!("c{t}-{i}@example.org")) };
                versions.push(s.roster.put_item(acc, &it).await.expect("concurrent put_item"));
            }
            // Every task also removes its first item again.
            let del = s.roster.delete_item(acc, &format!("c{t}-0@example.org")).await.expect("concurrent delete_item");
            versions.push(del.expect("the item this task put is there"));
            versions
        });
    }
    let mut all = Vec::new();
    while let Some(res) = set.join_next().await {
        all.extend(res.expect("task panicked"));
    }
    let changes = TASKS * (PER_TASK + 1);
    let unique: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(unique.len(), changes, "every concurrent change got its own version: {all:?}");
    let max = all.iter().copied().max().unwrap_or(0);
    assert_eq!(max, changes as u64, "versions grow by exactly one per change");
    let r = s.roster.get_roster(Account::new(user, domain)).await.unwrap();
    assert_eq!(r.version, max);
    assert_eq!(r.items.len(), TASKS * (PER_TASK - 1), "every concurrent put landed");
    for t in 0..TASKS {
        for i in 1..PER_TASK {
            let jid = format!("c{t}-{i}@example.org");
            let it = r.items.iter().find(|it| it.jid == jid).expect("item present");
            assert_eq!(it.groups, vec![format!("g{t}")]);
        }
    }
    assert!(s.auth.delete_user(Account::new(user, domain)).await.unwrap());
}

async fn offline(s: &Stores, domain: &str) {
    let acc = Account::new("olive", domain);
    let other = Account::new("oscar", domain);
    s.auth.create_user(acc, &creds("x")).await.unwrap();
    s.auth.create_user(other, &creds("x")).await.unwrap();

    assert_eq!(s.offline.count(acc).await.unwrap(), 0);
    assert!(s.offline.fetch(acc, 10).await.unwrap().is_empty());
    assert!(!s.offline.push(acc, 1, "<message/>", 0).await.unwrap(), "limit 0 stores nothing");
    assert_eq!(s.offline.count(acc).await.unwrap(), 0);

    let stanzas = [
        "<message from='a@b' to='olive@x'><body>one</body></message>",
        "<message><body>two — ünïcødé 🐱</body></message>",
        "<message><body>three 'quoted' \"double\"</body></message>",
    ];
    for (i, st) in stanzas.iter().enumerate() {
        assert!(s.offline.push(acc, 1_700_000_000_000 + i as i64, st, 3).await.unwrap());
    }
    assert!(!s.offline.push(acc, 5, "<message>four</message>", 3).await.unwrap(), "limit reached");
    assert_eq!(s.offline.count(acc).await.unwrap(), 3);
    assert!(s.offline.push(acc, 5, "<message>four</message>", 4).await.unwrap(), "a higher limit admits more");
    assert_eq!(s.offline.count(acc).await.unwrap(), 4);
    assert!(!s.offline.push(acc, 6, "<message>five</message>", 2).await.unwrap(), "over the limit already");

    // The other account is unaffected and has its own limit.
    assert!(s.offline.push(other, 9, "<message>for oscar</message>", 1).await.unwrap());
    assert_eq!(s.offline.count(other).await.unwrap(), 1);

    let all = s.offline.fetch(acc, 100).await.unwrap();
    assert_eq!(all.len(), 4);
    for (i, st) in stanzas.iter().enumerate() {
        assert_eq!(all[i].stanza, *st, "fetch is oldest first");
        assert_eq!(all[i].stored_at_ms, 1_700_000_000_000 + i as i64);
    }
    assert_eq!(all[3].stanza, "<message>four</message>");
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "ids increase");
    assert_eq!(s.offline.fetch(acc, 2).await.unwrap(), all[..2].to_vec(), "fetch honours max");
    assert!(s.offline.fetch(acc, 0).await.unwrap().is_empty());
    assert_eq!(s.offline.count(acc).await.unwrap(), 4, "fetch does not remove");

    s.offline.remove_up_to(acc, all[1].id).await.unwrap();
    assert_eq!(s.offline.count(acc).await.unwrap(), 2);
    assert_eq!(s.offline.fetch(acc, 10).await.unwrap(), all[2..].to_vec());
    assert_eq!(s.offline.count(other).await.unwrap(), 1, "remove_up_to is scoped to the account");

    // New messages get larger ids than everything before.
    assert!(s.offline.push(acc, 7, "<message>six</message>", 10).await.unwrap());
    let now = s.offline.fetch(acc, 10).await.unwrap();
    assert_eq!(now.len(), 3);
    assert!(now[2].id > all[3].id);
    assert_eq!(now[2].stanza, "<message>six</message>");

    // Removing below the oldest id removes nothing; removing everything empties the queue.
    s.offline.remove_up_to(acc, all[0].id).await.unwrap();
    assert_eq!(s.offline.count(acc).await.unwrap(), 3);
    s.offline.remove_up_to(acc, i64::MAX).await.unwrap();
    assert_eq!(s.offline.count(acc).await.unwrap(), 0);
    assert!(s.offline.fetch(acc, 10).await.unwrap().is_empty());
    assert_eq!(s.offline.fetch(other, 10).await.unwrap().len(), 1);

    // Room again after removal.
    assert!(s.offline.push(acc, 8, "<message>seven</message>", 1).await.unwrap());
    let last = s.offline.fetch(acc, 10).await.unwrap();
    assert_eq!(last.len(), 1);
    assert!(last[0].id > now[2].id);

    assert!(s.auth.delete_user(acc).await.unwrap());
    assert!(s.auth.delete_user(other).await.unwrap());
}

async fn offline_concurrent_limit(s: &Stores, domain: &str) {
    const LIMIT: usize = 5;
    let user = "flood";
    s.auth.create_user(Account::new(user, domain), &creds("x")).await.unwrap();
    let mut set = tokio::task::JoinSet::new();
    for t in 0..8 {
        let s = s.clone();
        let domain = domain.to_owned();
        set.spawn(async move {
            let acc = Account::new(user, &domain);
            let mut stored = 0usize;
            for i in 0..2 {
                if s.offline.push(acc, t * 10 + i, &format!("<message>{t}/{i}</message>"), LIMIT).await.expect("push") {
                    stored += 1;
                }
            }
            stored
        });
    }
    let mut stored = 0;
    while let Some(res) = set.join_next().await {
        stored += res.expect("task panicked");
    }
    assert_eq!(stored, LIMIT, "concurrent pushes never exceed the limit");
    let acc = Account::new(user, domain);
    assert_eq!(s.offline.count(acc).await.unwrap(), LIMIT);
    let msgs = s.offline.fetch(acc, 100).await.unwrap();
    assert_eq!(msgs.len(), LIMIT);
    assert!(msgs.windows(2).all(|w| w[0].id < w[1].id));
    assert!(s.auth.delete_user(acc).await.unwrap());
}

async fn xml(s: &Stores, domain: &str) {
    let acc = Account::new("xena", domain);
    let other = Account::new("xavier", domain);
    s.auth.create_user(acc, &creds("x")).await.unwrap();

    assert_eq!(s.xml.get_xml(acc, "vcard", "").await.unwrap(), None);
    s.xml.delete_xml(acc, "vcard", "").await.unwrap(); // absent: no error

    let vcard = "<vCard xmlns='vcard-temp'><FN>Xena</FN></vCard>";
    let bookmarks = "<storage xmlns='storage:bookmarks'><conference jid='a@b'/></storage>";
    let notes = "<storage xmlns='storage:rosternotes'/>";
    s.xml.set_xml(acc, "vcard", "", vcard).await.unwrap();
    s.xml.set_xml(acc, "private", "storage:bookmarks", bookmarks).await.unwrap();
    s.xml.set_xml(acc, "private", "storage:rosternotes", notes).await.unwrap();
    // (kind, key) pairs that would collide if naively concatenated.
    s.xml.set_xml(acc, "ab", "c", "<one/>").await.unwrap();
    s.xml.set_xml(acc, "a", "bc", "<two/>").await.unwrap();

    assert_eq!(s.xml.get_xml(acc, "vcard", "").await.unwrap().as_deref(), Some(vcard));
    assert_eq!(s.xml.get_xml(acc, "private", "storage:bookmarks").await.unwrap().as_deref(), Some(bookmarks));
    assert_eq!(s.xml.get_xml(acc, "private", "storage:rosternotes").await.unwrap().as_deref(), Some(notes));
    assert_eq!(s.xml.get_xml(acc, "ab", "c").await.unwrap().as_deref(), Some("<one/>"));
    assert_eq!(s.xml.get_xml(acc, "a", "bc").await.unwrap().as_deref(), Some("<two/>"));
    assert_eq!(s.xml.get_xml(acc, "private", "").await.unwrap(), None, "kinds and keys are separate");
    assert_eq!(s.xml.get_xml(acc, "vcard", "storage:bookmarks").await.unwrap(), None);
    assert_eq!(s.xml.get_xml(other, "vcard", "").await.unwrap(), None, "scoped to the account");

    // Replace.
    let vcard2 = "<vCard xmlns='vcard-temp'><FN>Xena II</FN><NICKNAME>x</NICKNAME></vCard>";
    s.xml.set_xml(acc, "vcard", "", vcard2).await.unwrap();
    assert_eq!(s.xml.get_xml(acc, "vcard", "").await.unwrap().as_deref(), Some(vcard2));
    // Empty XML is stored as is (distinct from absent).
    s.xml.set_xml(acc, "private", "storage:rosternotes", "").await.unwrap();
    assert_eq!(s.xml.get_xml(acc, "private", "storage:rosternotes").await.unwrap().as_deref(), Some(""));

    // A large blob survives intact.
    let big = format!("<vCard xmlns='vcard-temp'><PHOTO><BINVAL>{}</BINVAL></PHOTO></vCard>", "QUJD".repeat(64 * 1024));
    s.xml.set_xml(acc, "vcard", "", &big).await.unwrap();
    assert_eq!(s.xml.get_xml(acc, "vcard", "").await.unwrap().as_deref(), Some(big.as_str()));

    // Delete removes exactly one blob.
    s.xml.delete_xml(acc, "private", "storage:bookmarks").await.unwrap();
    assert_eq!(s.xml.get_xml(acc, "private", "storage:bookmarks").await.unwrap(), None);
    assert_eq!(s.xml.get_xml(acc, "private", "storage:rosternotes").await.unwrap().as_deref(), Some(""));
    assert_eq!(s.xml.get_xml(acc, "vcard", "").await.unwrap().as_deref(), Some(big.as_str()));
    s.xml.delete_xml(acc, "private", "storage:bookmarks").await.unwrap();

    // Another account may store under the same keys independently.
    s.xml.set_xml(other, "vcard", "", vcard).await.unwrap();
    assert_eq!(s.xml.get_xml(other, "vcard", "").await.unwrap().as_deref(), Some(vcard));
    assert_eq!(s.xml.get_xml(acc, "vcard", "").await.unwrap().as_deref(), Some(big.as_str()));
    s.xml.delete_xml(other, "vcard", "").await.unwrap();
    assert_eq!(s.xml.get_xml(acc, "vcard", "").await.unwrap().as_deref(), Some(big.as_str()));

    assert!(s.auth.delete_user(acc).await.unwrap());
}

async fn blocking(s: &Stores, domain: &str) {
    let acc = Account::new("blake", domain);
    let other = Account::new("bella", domain);
    s.auth.create_user(acc, &creds("x")).await.unwrap();

    assert!(s.blocking.blocklist(acc).await.unwrap().is_empty());
    s.blocking.unblock(acc, &[]).await.unwrap(); // nothing to remove: fine
    s.blocking.block(acc, &[]).await.unwrap();
    assert!(s.blocking.blocklist(acc).await.unwrap().is_empty());

    s.blocking
        .block(acc, &strings(&["romeo@example.net", "iago@example.com", "example.org", "romeo@example.net"]))
        .await
        .unwrap();
    assert_eq!(
        s.blocking.blocklist(acc).await.unwrap(),
        sorted(&["example.org", "iago@example.com", "romeo@example.net"]),
        "sorted, duplicates within one call ignored"
    );
    s.blocking.block(acc, &strings(&["iago@example.com", "Zed@example.com", "a@example.com/res"])).await.unwrap();
    let all = ["example.org", "iago@example.com", "romeo@example.net", "Zed@example.com", "a@example.com/res"];
    assert_eq!(s.blocking.blocklist(acc).await.unwrap(), sorted(&all), "already-blocked JIDs are ignored");
    assert!(s.blocking.blocklist(other).await.unwrap().is_empty(), "scoped to the account");
    s.blocking.block(other, &strings(&["iago@example.com"])).await.unwrap();

    s.blocking.unblock(acc, &strings(&["iago@example.com", "never@blocked.example", "example.org"])).await.unwrap();
    assert_eq!(
        s.blocking.blocklist(acc).await.unwrap(),
        sorted(&["romeo@example.net", "Zed@example.com", "a@example.com/res"])
    );
    assert_eq!(s.blocking.blocklist(other).await.unwrap(), strings(&["iago@example.com"]));

    s.blocking.unblock(acc, &[]).await.unwrap();
    assert!(s.blocking.blocklist(acc).await.unwrap().is_empty(), "empty unblock removes all");
    assert_eq!(s.blocking.blocklist(other).await.unwrap(), strings(&["iago@example.com"]), "other list untouched");

    s.blocking.block(acc, &strings(&["again@example.com"])).await.unwrap();
    assert_eq!(s.blocking.blocklist(acc).await.unwrap(), strings(&["again@example.com"]));
    s.blocking.unblock(other, &[]).await.unwrap();
    assert!(s.auth.delete_user(acc).await.unwrap());
}

async fn last(s: &Stores, domain: &str) {
    let acc = Account::new("lars", domain);
    let other = Account::new("lena", domain);
    s.auth.create_user(acc, &creds("x")).await.unwrap();

    assert_eq!(s.last.get_last(acc).await.unwrap(), None);
    let l1 = LastActivity { at_secs: 1_700_000_000, status: "Gone fishing".into() };
    s.last.set_last(acc, &l1).await.unwrap();
    assert_eq!(s.last.get_last(acc).await.unwrap(), Some(l1));
    let l2 = LastActivity { at_secs: 1_800_000_000, status: String::new() };
    s.last.set_last(acc, &l2).await.unwrap();
    assert_eq!(s.last.get_last(acc).await.unwrap(), Some(l2.clone()), "replaced, empty status kept");
    assert_eq!(s.last.get_last(other).await.unwrap(), None, "scoped to the account");
    let l3 = LastActivity { at_secs: 0, status: "zero".into() };
    s.last.set_last(other, &l3).await.unwrap();
    assert_eq!(s.last.get_last(other).await.unwrap(), Some(l3));
    assert_eq!(s.last.get_last(acc).await.unwrap(), Some(l2));
    assert!(!s.auth.delete_user(other).await.unwrap(), "lena never had an account");
    assert_eq!(s.last.get_last(other).await.unwrap(), None, "delete_user purges data even without an account");
    assert!(s.auth.delete_user(acc).await.unwrap());
}

/// Puts one piece of data into every store for `acc`.
async fn populate(s: &Stores, acc: Account<'_>, label: &str) {
    s.auth.create_user(acc, &creds(label)).await.unwrap();
    for j in ["a@example.org", "b@example.org"] {
        let it = RosterItem { name: Some(label.into()), groups: strings(&[label]), ..item(j) };
        s.roster.put_item(acc, &it).await.unwrap();
    }
    for i in 0..3 {
        assert!(s.offline.push(acc, i, &format!("<message>{label} {i}</message>"), 100).await.unwrap());
    }
    s.xml.set_xml(acc, "vcard", "", &format!("<vCard><FN>{label}</FN></vCard>")).await.unwrap();
    s.xml.set_xml(acc, "private", "storage:bookmarks", "<storage/>").await.unwrap();
    s.blocking.block(acc, &strings(&["spam@example.org", "troll@example.org"])).await.unwrap();
    s.last.set_last(acc, &LastActivity { at_secs: 42, status: label.into() }).await.unwrap();
}

/// Asserts `acc` still holds what [`populate`] put there.
async fn assert_populated(s: &Stores, acc: Account<'_>, label: &str) {
    assert!(s.auth.user_exists(acc).await.unwrap());
    assert!(s.auth.get_credentials(acc).await.unwrap().expect("creds").verify_password(label));
    let r = s.roster.get_roster(acc).await.unwrap();
    assert_eq!(r.version, 2);
    assert_eq!(r.items.len(), 2);
    assert!(r.items.iter().all(|i| i.name.as_deref() == Some(label) && i.groups == vec![label.to_owned()]));
    assert_eq!(s.offline.count(acc).await.unwrap(), 3);
    assert_eq!(s.xml.get_xml(acc, "vcard", "").await.unwrap(), Some(format!("<vCard><FN>{label}</FN></vCard>")));
    assert_eq!(s.xml.get_xml(acc, "private", "storage:bookmarks").await.unwrap().as_deref(), Some("<storage/>"));
    assert_eq!(s.blocking.blocklist(acc).await.unwrap(), strings(&["spam@example.org", "troll@example.org"]));
    assert_eq!(s.last.get_last(acc).await.unwrap(), Some(LastActivity { at_secs: 42, status: label.into() }));
}

async fn delete_user_cascades(s: &Stores, domain: &str) {
    let victim = Account::new("victim", domain);
    let bystander = Account::new("bystander", domain);
    let other_domain = format!("twin.{domain}");
    let twin = Account::new("victim", &other_domain);
    populate(s, victim, "victim").await;
    populate(s, bystander, "bystander").await;
    populate(s, twin, "twin").await;

    assert!(s.auth.delete_user(victim).await.unwrap());

    assert!(!s.auth.user_exists(victim).await.unwrap());
    assert_eq!(s.auth.get_credentials(victim).await.unwrap(), None);
    assert!(!s.auth.list_users(domain).await.unwrap().contains(&"victim".to_owned()));
    let r = s.roster.get_roster(victim).await.unwrap();
    assert_eq!(r.version, 0, "roster version gone with the account");
    assert!(r.items.is_empty());
    assert_eq!(s.roster.get_item(victim, "a@example.org").await.unwrap(), None);
    assert_eq!(s.offline.count(victim).await.unwrap(), 0);
    assert!(s.offline.fetch(victim, 10).await.unwrap().is_empty());
    assert_eq!(s.xml.get_xml(victim, "vcard", "").await.unwrap(), None);
    assert_eq!(s.xml.get_xml(victim, "private", "storage:bookmarks").await.unwrap(), None);
    assert!(s.blocking.blocklist(victim).await.unwrap().is_empty());
    assert_eq!(s.last.get_last(victim).await.unwrap(), None);

    assert_populated(s, bystander, "bystander").await;
    assert_populated(s, twin, "twin").await;

    assert!(!s.auth.delete_user(victim).await.unwrap());
    // Recreated account starts from scratch.
    s.auth.create_user(victim, &creds("new")).await.unwrap();
    assert_eq!(s.roster.get_roster(victim).await.unwrap(), crate::Roster::default());
    assert_eq!(s.roster.put_item(victim, &item("a@example.org")).await.unwrap(), 1);

    for acc in [victim, bystander, twin] {
        assert!(s.auth.delete_user(acc).await.unwrap());
    }
}

async fn hostile_strings(s: &Stores, domain: &str) {
    let evil = "o'brien\"; DROP TABLE users;--";
    let acc = Account::new(evil, domain);
    let quote_domain = format!("{domain}'--");
    let acc2 = Account::new("💥 ünï\\cødé", &quote_domain);
    let c = creds("o'brien");
    s.auth.create_user(acc, &c).await.unwrap();
    s.auth.create_user(acc2, &c).await.unwrap();
    assert!(s.auth.user_exists(acc).await.unwrap());
    assert_eq!(s.auth.get_credentials(acc).await.unwrap(), Some(c.clone()));
    assert_eq!(s.auth.list_users(&quote_domain).await.unwrap(), strings(&["💥 ünï\\cødé"]));
    assert!(s.auth.list_users(domain).await.unwrap().contains(&evil.to_owned()));

    let weird_groups = strings(&[
        "quote \" inside",
        "single ' inside",
        "back\\slash",
        "line\nbreak",
        "[\"json\", \"like\"]",
        "comma, separated",
        "tab\there",
        "\\n not a newline",
        "日本語のグループ",
        "emoji 🐈‍⬛",
        " ",
        "%_*?",
    ]);
    let it = RosterItem {
        jid: "x'); DELETE FROM roster_items; --@example.org".into(),
        name: Some("Robert'); DROP TABLE roster_items;-- \"Bobby\" ☃".into()),
        subscription: Subscription::Both,
        ask_out: true,
        pending_in: true,
        pending_in_stanza: Some("<presence type='subscribe'><status>'\"&amp;\\</status></presence>".into()),
        approved: true,
        visible: true,
        groups: weird_groups,
    };
    for a in [acc, acc2] {
        assert_eq!(s.roster.put_item(a, &it).await.unwrap(), 1);
        assert_eq!(s.roster.get_item(a, &it.jid).await.unwrap(), Some(it.clone()));
        assert_eq!(s.roster.get_roster(a).await.unwrap().items, vec![it.clone()]);

        let stanza = "<message><body>'; DELETE FROM offline_messages; -- \" \\ 🙂 \u{1F600} ünï</body></message>";
        assert!(s.offline.push(a, 1, stanza, 10).await.unwrap());
        assert_eq!(s.offline.fetch(a, 10).await.unwrap()[0].stanza, stanza);

        let kind = "k'ind\"";
        let key = "storage:'); --";
        let xml = "<x xmlns='\"'>'; DROP TABLE xml_blobs; -- ☃</x>";
        s.xml.set_xml(a, kind, key, xml).await.unwrap();
        assert_eq!(s.xml.get_xml(a, kind, key).await.unwrap().as_deref(), Some(xml));
        assert_eq!(s.xml.get_xml(a, "k_ind\"", key).await.unwrap(), None, "no wildcard matching");

        let jids = strings(&["%@example.org", "_@example.org", "'quoted'@example.org", "ünï@example.org"]);
        s.blocking.block(a, &jids).await.unwrap();
        let mut want = jids.clone();
        want.sort();
        assert_eq!(s.blocking.blocklist(a).await.unwrap(), want);
        s.blocking.unblock(a, &strings(&["%@example.org"])).await.unwrap();
        assert_eq!(s.blocking.blocklist(a).await.unwrap().len(), 3, "'%' is not a wildcard");

        let last = LastActivity { at_secs: -1, status: "bye'); DROP TABLE last_activity;-- ✌".into() };
        s.last.set_last(a, &last).await.unwrap();
        assert_eq!(s.last.get_last(a).await.unwrap(), Some(last));
    }

    // The tables are all still there and the accounts are independent.
    assert!(s.auth.delete_user(acc).await.unwrap());
    assert!(s.auth.user_exists(acc2).await.unwrap());
    assert_eq!(s.roster.get_roster(acc2).await.unwrap().items.len(), 1);
    assert_eq!(s.roster.get_roster(acc).await.unwrap().items.len(), 0);
    assert!(s.auth.delete_user(acc2).await.unwrap());
    assert!(s.auth.list_users(&quote_domain).await.unwrap().is_empty());
}
