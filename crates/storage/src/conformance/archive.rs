//! Conformance cases of [`crate::ArchiveStore`]: batched appends, keyset paging in
//! both directions, filters, fetch by id, retraction tombstones, preferences, removal.

use std::sync::Arc;

use crate::{
    Account, ArchiveEntry, ArchiveMode, ArchivePrefs, ArchiveQuery, ArchivedMessage, Direction, PageFrom, Stores,
};

fn msg(id: i64, with: &str, resource: &str, direction: Direction, origin: Option<&str>) -> ArchivedMessage {
    ArchivedMessage {
        id,
        with_jid: with.into(),
        with_resource: resource.into(),
        direction,
        sender: format!("{with}/{resource}").into(),
        origin_id: origin.map(Into::into),
        stanza: format!("<message id='{id}'><body>b\"'\\\n{id} ü</body></message>").into(),
    }
}

fn entry(acc: Account<'_>, m: ArchivedMessage) -> ArchiveEntry {
    ArchiveEntry { user: acc.user.into(), domain: acc.domain.into(), msg: m }
}

/// Pages through the whole range in `from` direction with page size `limit`.
async fn page_all(s: &Stores, acc: Account<'_>, base: &ArchiveQuery, limit: usize, from: PageFrom) -> Vec<i64> {
    let mut out: Vec<i64> = Vec::new();
    let mut q = ArchiveQuery { limit, from, ..base.clone() };
    loop {
        let page = s.archive.query(acc, &q).await.unwrap();
        assert!(page.rows.len() <= limit);
        assert!(page.rows.windows(2).all(|w| w[0].id < w[1].id), "a page is oldest first");
        let ids: Vec<i64> = page.rows.iter().map(|m| m.id).collect();
        match from {
            PageFrom::Start => {
                if let Some(l) = ids.last() {
                    q.min_id = l + 1;
                }
                out.extend(ids);
            }
            PageFrom::End => {
                if let Some(f) = ids.first() {
                    q.max_id = f - 1;
                }
                let mut v = ids;
                v.extend(out);
                out = v;
            }
        }
        if page.complete {
            return out;
        }
        assert_eq!(page.rows.len(), limit, "an incomplete page is full");
    }
}

pub(super) async fn archive(s: &Stores, domain: &str) {
    let alice = Account::new("alice-mam", domain);
    let bob = Account::new("bob-mam", domain);
    let bob_jid = format!("bob-mam@{domain}");
    let carol_jid = format!("carol@{domain}");

    // Empty archive.
    let page = s.archive.query(alice, &ArchiveQuery::default()).await.unwrap();
    assert!(page.rows.is_empty() && page.complete);
    assert_eq!(s.archive.get_prefs(alice).await.unwrap(), None);

    // 130 rows for alice (ids 1000, 1010, …) alternating two contacts and resources,
    // in three batches, one mixing owners; then the first batch again (skipped).
    let mut all = Vec::new();
    for i in 0..130i64 {
        let with = if i % 3 == 0 { &carol_jid } else { &bob_jid };
        let res = if i % 2 == 0 { "phone" } else { "" };
        let dir = if i % 4 == 0 { Direction::Outgoing } else { Direction::Incoming };
        all.push(msg(1000 + i * 10, with, res, dir, Some(&format!("o{i}"))));
    }
    let first: Vec<ArchiveEntry> = all[..50].iter().map(|m| entry(alice, m.clone())).collect();
    s.archive.append(Arc::new(first.clone())).await.unwrap();
    let mut second: Vec<ArchiveEntry> = all[50..].iter().map(|m| entry(alice, m.clone())).collect();
    second.push(entry(bob, msg(5, &format!("alice-mam@{domain}"), "x", Direction::Incoming, None)));
    s.archive.append(Arc::new(second)).await.unwrap();
    // Again, with a row twice in the same batch (two sessions of one user took
    // the same message): each id is stored once.
    let mut again = first.clone();
    again.push(first[0].clone());
    s.archive.append(Arc::new(again)).await.unwrap();
    s.archive.append(Arc::default()).await.unwrap();

    let everything = ArchiveQuery { limit: 1000, ..ArchiveQuery::default() };
    let page = s.archive.query(alice, &everything).await.unwrap();
    assert!(page.complete);
    assert_eq!(page.rows, all, "rows are stored verbatim, oldest first, duplicates skipped");
    let page = s.archive.query(bob, &everything).await.unwrap();
    assert_eq!(page.rows.len(), 1, "owners are separate");

    // Paging forwards and backwards returns every row exactly once, in order.
    let ids: Vec<i64> = all.iter().map(|m| m.id).collect();
    for limit in [1, 7, 50, 130, 200] {
        assert_eq!(page_all(s, alice, &everything, limit, PageFrom::Start).await, ids, "forward {limit}");
        assert_eq!(page_all(s, alice, &everything, limit, PageFrom::End).await, ids, "backward {limit}");
    }
    // The last page.
    let q = ArchiveQuery { limit: 3, from: PageFrom::End, ..ArchiveQuery::default() };
    let page = s.archive.query(alice, &q).await.unwrap();
    assert_eq!(page.rows.iter().map(|m| m.id).collect::<Vec<_>>(), vec![2270, 2280, 2290]);
    assert!(!page.complete);

    // Filters: with (bare), with + resource, id bounds, and all together.
    let with_bob: Vec<i64> = all.iter().filter(|m| m.with_jid == bob_jid).map(|m| m.id).collect();
    let q = ArchiveQuery { with_jid: Some(bob_jid.clone()), ..everything.clone() };
    assert_eq!(page_all(s, alice, &q, 9, PageFrom::Start).await, with_bob);
    assert_eq!(page_all(s, alice, &q, 9, PageFrom::End).await, with_bob);
    let expect: Vec<i64> = all
        .iter()
        .filter(|m| m.with_jid == bob_jid && m.with_resource == "phone" && (1200..=2000).contains(&m.id))
        .map(|m| m.id)
        .collect();
    assert!(!expect.is_empty());
    let q = ArchiveQuery {
        with_jid: Some(bob_jid.clone()),
        with_resource: Some("phone".into()),
        min_id: 1200,
        max_id: 2000,
        ..everything.clone()
    };
    assert_eq!(page_all(s, alice, &q, 4, PageFrom::Start).await, expect);
    assert_eq!(page_all(s, alice, &q, 4, PageFrom::End).await, expect);
    let q = ArchiveQuery { min_id: 1500, max_id: 1400, ..everything.clone() };
    let page = s.archive.query(alice, &q).await.unwrap();
    assert!(page.rows.is_empty() && page.complete, "an empty range");
    let q = ArchiveQuery { with_jid: Some("nobody@example.org".into()), ..everything.clone() };
    assert!(s.archive.query(alice, &q).await.unwrap().rows.is_empty());

    // Fetch by ids: existing ones only, oldest first, no duplicates.
    let got = s.archive.fetch_ids(alice, &[1500, 1010, 7, 1500]).await.unwrap();
    assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), vec![1010, 1500]);
    assert_eq!(got[0], all[1]);
    assert!(s.archive.fetch_ids(bob, &[1010]).await.unwrap().is_empty(), "another owner's id");
    assert!(s.archive.fetch_ids(alice, &[]).await.unwrap().is_empty());

    // Retraction: the newest matching row of that direction and contact only.
    s.archive
        .append(Arc::new(vec![
            entry(alice, msg(3000, &bob_jid, "", Direction::Incoming, Some("o1"))),
            entry(alice, {
                let mut m = msg(3010, &carol_jid, "", Direction::Incoming, Some("o1"));
                m.stanza = "<keep/>".into();
                m
            }),
        ]))
        .await
        .unwrap();
    let tomb = "<message><retracted xmlns='urn:xmpp:message-retract:1' id='r'/></message>";
    assert_eq!(s.archive.retract(alice, &bob_jid, Direction::Incoming, "o1", tomb).await.unwrap(), Some(3000));
    assert_eq!(s.archive.retract(alice, &bob_jid, Direction::Outgoing, "o1", tomb).await.unwrap(), None);
    assert_eq!(s.archive.retract(alice, &bob_jid, Direction::Incoming, "nope", tomb).await.unwrap(), None);
    let got = s.archive.fetch_ids(alice, &[1010, 3000, 3010]).await.unwrap();
    assert_eq!(got[0].stanza, all[1].stanza, "an older row with the same origin id is untouched");
    assert_eq!(&*got[1].stanza, tomb);
    assert_eq!(got[1].origin_id.as_deref(), Some("o1"));
    assert_eq!(&*got[2].stanza, "<keep/>");

    // A retraction searches the conversation's RETRACT_WINDOW newest rows only.
    let dave_jid = "dave@example.org".to_owned();
    let mut rows = vec![entry(alice, msg(5000, &dave_jid, "", Direction::Incoming, Some("old")))];
    rows.extend(
        (1..=crate::archive::RETRACT_WINDOW as i64)
            .map(|i| entry(alice, msg(5000 + i, &dave_jid, "", Direction::Outgoing, Some(&format!("n{i}"))))),
    );
    s.archive.append(Arc::new(rows)).await.unwrap();
    assert_eq!(s.archive.retract(alice, &dave_jid, Direction::Incoming, "old", tomb).await.unwrap(), None);
    assert_eq!(
        s.archive.retract(alice, &dave_jid, Direction::Outgoing, "n1", tomb).await.unwrap(),
        Some(5001),
        "the oldest row within the window"
    );

    // Preferences: stored sorted and deduplicated, replaced as a whole.
    let prefs = ArchivePrefs {
        default_mode: ArchiveMode::Roster,
        always: vec!["z@example.org".into(), "a@example.org".into(), "a@example.org".into()],
        never: vec!["n@example.org".into()],
    };
    s.archive.set_prefs(alice, &prefs).await.unwrap();
    let got = s.archive.get_prefs(alice).await.unwrap().unwrap();
    assert_eq!(got.default_mode, ArchiveMode::Roster);
    assert_eq!(got.always, vec!["a@example.org".to_owned(), "z@example.org".to_owned()]);
    assert_eq!(got.never, vec!["n@example.org".to_owned()]);
    let prefs = ArchivePrefs { default_mode: ArchiveMode::Never, always: vec![], never: vec![] };
    s.archive.set_prefs(alice, &prefs).await.unwrap();
    assert_eq!(s.archive.get_prefs(alice).await.unwrap(), Some(prefs));
    assert_eq!(s.archive.get_prefs(bob).await.unwrap(), None);

    // Removal takes messages and preferences, and nothing of other owners.
    s.archive.remove_archive(alice).await.unwrap();
    assert!(s.archive.query(alice, &everything).await.unwrap().rows.is_empty());
    assert_eq!(s.archive.get_prefs(alice).await.unwrap(), None);
    assert_eq!(s.archive.query(bob, &everything).await.unwrap().rows.len(), 1);
    s.archive.remove_archive(bob).await.unwrap();
}

/// `delete_user` removes the archive and the preferences.
pub(super) async fn delete_user_removes_archive(s: &Stores, domain: &str) {
    let dave = Account::new("dave-mam", domain);
    s.auth.create_user(dave, &crate::StoredCredentials::from_password("p", 2)).await.unwrap();
    s.archive
        .append(Arc::new(vec![entry(dave, msg(1, "x@example.org", "", Direction::Incoming, None))]))
        .await
        .unwrap();
    s.archive.set_prefs(dave, &ArchivePrefs::default()).await.unwrap();
    assert!(s.auth.delete_user(dave).await.unwrap());
    assert!(s.archive.query(dave, &ArchiveQuery::default()).await.unwrap().rows.is_empty());
    assert_eq!(s.archive.get_prefs(dave).await.unwrap(), None);
}
