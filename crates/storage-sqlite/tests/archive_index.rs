//! The SQLite archive's deferred indexes (see the crate's `archive` module): rows a
//! process appended but never indexed are found after a restart, a row appended
//! twice is kept once, removing an archive removes its waiting rows too, and rows
//! are indexed by owner, in all, and when the oldest waiting row is too old.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use meerkat_storage::{Account, ArchiveEntry, ArchiveQuery, ArchivedMessage, Direction, Stores};
use meerkat_storage_sqlite::Options;

/// A database file in a fresh temporary directory (removed with the guard).
fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("m.db");
    (dir, path)
}

/// The ids of one page of `user`'s archive.
async fn ids(stores: &Stores, user: &str, q: &ArchiveQuery) -> Vec<i64> {
    let page = stores.archive.query(Account::new(user, "example.org"), q).await.expect("query");
    page.rows.iter().map(|r| r.id).collect()
}

/// A store that indexes rows when `owner` of an owner's or `batch` in all wait.
async fn open_indexing(path: &Path, owner: usize, batch: usize) -> Stores {
    let opts = Options { archive_index_owner: owner, archive_index_batch: batch };
    meerkat_storage_sqlite::open_with(path, opts).await.expect("open")
}

/// A store that indexes only when a million rows wait: in these tests, never on its own.
async fn open_lazy(path: &Path) -> Stores {
    open_indexing(path, 1_000_000, 1_000_000).await
}

fn entry(user: &str, id: i64, with: &str) -> ArchiveEntry {
    ArchiveEntry {
        user: user.into(),
        domain: "example.org".into(),
        msg: ArchivedMessage {
            id,
            with_jid: with.into(),
            with_resource: "r".into(),
            direction: Direction::Incoming,
            sender: format!("{with}/r").into(),
            origin_id: Some(format!("o{id}").into()),
            stanza: format!("<message n='{id}'/>").into(),
        },
    }
}

/// Rows with ids `ids` (plus one), dealt round robin to owners `u0..u{owners-1}`.
fn spread(ids: std::ops::Range<i64>, owners: i64) -> Vec<ArchiveEntry> {
    ids.map(|i| entry(&format!("u{}", i % owners), i + 1, "p@example.org")).collect()
}

/// `SELECT COUNT(*)` (or another single integer) with a plain connection.
fn count(path: &Path, sql: &str) -> i64 {
    rusqlite::Connection::open(path).expect("open").query_row(sql, [], |r| r.get(0)).expect(sql)
}

fn all() -> ArchiveQuery {
    ArchiveQuery { limit: 1000, max_id: i64::MAX, ..ArchiveQuery::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_left_unindexed_by_a_stopped_process_are_indexed_when_the_file_is_opened() {
    let (_dir, path) = temp_db();
    let stores = open_lazy(&path).await;
    // Two batches, interleaving two owners; the second repeats alice's row 20
    // (two sessions of hers each took a copy of one message).
    let first: Vec<ArchiveEntry> =
        (1..=20).map(|i| entry(if i % 2 == 0 { "alice" } else { "bob" }, i * 10, "carol@example.org")).collect();
    stores.archive.append(Arc::new(first)).await.expect("append");
    let second = vec![entry("alice", 20, "carol@example.org"), entry("alice", 300, "dave@example.org")];
    stores.archive.append(Arc::new(second)).await.expect("append");
    drop(stores);
    // The process "stopped" with every row in the log and none indexed.
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_messages"), 22);
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_by_owner"), 0);
    assert_eq!(count(&path, "SELECT indexed_seq FROM mam_index_state"), 0);

    let stores = open_lazy(&path).await;
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_messages"), 21, "the repeated row is deleted");
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_by_owner"), 21);
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_by_with"), 21);
    assert_eq!(count(&path, "SELECT indexed_seq FROM mam_index_state"), 22);
    let got = ids(&stores, "alice", &all()).await;
    let mut want: Vec<i64> = (1..=20).filter(|i| i % 2 == 0).map(|i| i * 10).collect();
    want.push(300);
    assert_eq!(got, want);
    let with_dave = ArchiveQuery { with_jid: Some("dave@example.org".into()), ..all() };
    assert_eq!(ids(&stores, "alice", &with_dave).await, [300]);
    assert_eq!(ids(&stores, "bob", &all()).await.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_see_waiting_rows_and_a_full_batch_is_indexed_in_one_go() {
    let (_dir, path) = temp_db();
    let stores = open_indexing(&path, 1_000_000, 10).await;
    let alice = Account::new("alice", "example.org");
    stores.archive.append(Arc::new((1..=6).map(|i| entry("alice", i, "bob@example.org")).collect())).await.unwrap();
    stores.archive.append(Arc::new((1..=3).map(|i| entry("bob", i, "alice@example.org")).collect())).await.unwrap();
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_by_owner"), 0, "9 rows wait");
    // A read indexes its owner's rows first, and only those.
    assert_eq!(stores.archive.query(alice, &all()).await.unwrap().rows.len(), 6);
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_by_owner"), 6);
    assert_eq!(count(&path, "SELECT indexed_seq FROM mam_index_state"), 0, "bob's rows still wait");
    // The retraction of a waiting row finds it.
    stores.archive.append(Arc::new(vec![entry("bob", 4, "alice@example.org")])).await.unwrap();
    let bob = Account::new("bob", "example.org");
    let tomb = "<message><retracted/></message>";
    let r = stores.archive.retract(bob, "alice@example.org", Direction::Incoming, "o4", tomb).await.unwrap();
    assert_eq!(r, Some(4));
    // Ten rows waiting: the append that makes them ten indexes them all.
    stores.archive.append(Arc::new((7..=16).map(|i| entry("alice", i, "bob@example.org")).collect())).await.unwrap();
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_by_owner"), 20);
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_by_with"), 20);
    assert_eq!(count(&path, "SELECT indexed_seq FROM mam_index_state"), 20);
    assert_eq!(&*stores.archive.fetch_ids(bob, &[4]).await.unwrap()[0].stanza, tomb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_archive_removes_its_waiting_rows() {
    let (_dir, path) = temp_db();
    let stores = open_lazy(&path).await;
    let alice = Account::new("alice", "example.org");
    let bob = Account::new("bob", "example.org");
    stores.archive.append(Arc::new((1..=5).map(|i| entry("alice", i, "bob@example.org")).collect())).await.unwrap();
    // Some of alice's rows indexed (by a read), some still waiting.
    assert_eq!(stores.archive.query(alice, &all()).await.unwrap().rows.len(), 5);
    stores.archive.append(Arc::new((6..=8).map(|i| entry("alice", i, "bob@example.org")).collect())).await.unwrap();
    stores.archive.append(Arc::new((1..=2).map(|i| entry("bob", i, "alice@example.org")).collect())).await.unwrap();
    stores.archive.remove_archive(alice).await.unwrap();
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_messages"), 2, "only bob's rows are left");
    assert!(stores.archive.query(alice, &all()).await.unwrap().rows.is_empty());
    // A removed account's archive goes with it, waiting rows included.
    stores.auth.create_user(bob, &meerkat_storage::StoredCredentials::from_password("pw", 2)).await.unwrap();
    assert!(stores.auth.delete_user(bob).await.unwrap());
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_messages"), 0);
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_owners"), 0);
    // A new archive for alice starts empty, under a key never used before.
    stores.archive.append(Arc::new(vec![entry("alice", 9, "bob@example.org")])).await.unwrap();
    assert_eq!(ids(&stores, "alice", &all()).await, [9]);
    assert_eq!(count(&path, "SELECT owner FROM mam_owners"), 3);
}

/// Another process (the CLI) removes an archive while this one has rows of it
/// waiting: those rows never reappear, and the archive started afterwards gets
/// the rows appended afterwards, under its new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_removed_by_another_process_while_rows_wait() {
    let (_dir, path) = temp_db();
    let server = open_lazy(&path).await;
    let alice = Account::new("alice", "example.org");
    server.archive.append(Arc::new((1..=3).map(|i| entry("alice", i, "bob@example.org")).collect())).await.unwrap();
    let cli = open_lazy(&path).await;
    cli.archive.remove_archive(alice).await.unwrap();
    drop(cli);
    server.archive.append(Arc::new(vec![entry("alice", 4, "bob@example.org")])).await.unwrap();
    assert_eq!(ids(&server, "alice", &all()).await, [4]);
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_owners"), 1);
}

/// An append of many rows (several multi-row statements and a remainder) indexes
/// each row under its own seq: every id comes back with its own stanza, for both
/// owners, before and after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_append_indexes_every_row_as_its_own() {
    let (_dir, path) = temp_db();
    let stores = open_lazy(&path).await;
    let rows: Vec<ArchiveEntry> =
        (1..=100).map(|i| entry(if i % 3 == 0 { "bob" } else { "alice" }, i, "carol@example.org")).collect();
    stores.archive.append(Arc::new(rows)).await.unwrap();
    // Twice: the first read indexes the rows, the second reads them indexed.
    for _ in 0..2 {
        // Every third row is bob's.
        for (user, bobs) in [("alice", false), ("bob", true)] {
            let page = stores.archive.query(Account::new(user, "example.org"), &all()).await.unwrap();
            let want: Vec<i64> = (1..=100).filter(|i| (i % 3 == 0) == bobs).collect();
            assert_eq!(page.rows.iter().map(|r| r.id).collect::<Vec<_>>(), want, "{user}");
            for r in &page.rows {
                assert_eq!(*r.stanza, format!("<message n='{}'/>", r.id));
                assert_eq!(r.origin_id.as_deref(), Some(format!("o{}", r.id).as_str()));
            }
        }
    }
    drop(stores);
    let stores = open_lazy(&path).await;
    let page = stores.archive.query(Account::new("bob", "example.org"), &all()).await.unwrap();
    assert_eq!(page.rows.len(), 33);
}

/// Reads that arrive while a full batch is being indexed (its transaction not yet
/// committed) wait for it instead of reading indexes that lack the batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_during_a_batch_being_indexed_see_every_row() {
    let (_dir, path) = temp_db();
    let stores = open_indexing(&path, 1_000_000, 20_000).await;
    // 19,999 rows waiting: 40 for each of u0..u498, 39 for u499.
    stores.archive.append(Arc::new(spread(0..19_999, 500))).await.unwrap();
    // The 20,000th row starts the batch; the reads run while it is indexed.
    let writer = {
        let stores = stores.clone();
        tokio::spawn(async move { stores.archive.append(Arc::new(vec![entry("u499", 20_000, "p@example.org")])).await })
    };
    // The append reaches the writer first; the batch takes longer than this.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    // (Without the wait, a read that came while the batch was being written
    // found none of its owner's rows: three runs in three failed.)
    for u in 0..499 {
        assert_eq!(ids(&stores, &format!("u{u}"), &all()).await.len(), 40, "u{u}");
    }
    writer.await.unwrap().unwrap();
    assert_eq!(ids(&stores, "u499", &all()).await.len(), 40);
}

/// Duplicates inside full multi-row index statements: a repeated `(owner, id)` is
/// deleted wherever it falls in a chunk, a row indexed before (by a read) is
/// kept, and every other row keeps its own stanza.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_rows_inside_full_index_chunks_are_deleted_once() {
    let (_dir, path) = temp_db();
    let stores = open_lazy(&path).await;
    // 70 rows of alice (two full chunks and a remainder), then 70 more of which
    // ids 1, 33 and 64 repeat rows of the first batch.
    let first: Vec<ArchiveEntry> = (1..=70).map(|i| entry("alice", i, "bob@example.org")).collect();
    stores.archive.append(Arc::new(first)).await.unwrap();
    let mut second: Vec<ArchiveEntry> = (71..=137).map(|i| entry("alice", i, "bob@example.org")).collect();
    for id in [1, 33, 64] {
        let mut again = entry("alice", id, "bob@example.org");
        again.msg.stanza = format!("<message n='{id}' again=''/>").into();
        second.push(again);
    }
    stores.archive.append(Arc::new(second)).await.unwrap();
    // A read indexes them all (the repeated rows come after their originals).
    let page = stores.archive.query(Account::new("alice", "example.org"), &all()).await.unwrap();
    assert_eq!(page.rows.iter().map(|r| r.id).collect::<Vec<_>>(), (1..=137).collect::<Vec<_>>());
    assert!(page.rows.iter().all(|r| *r.stanza == format!("<message n='{}'/>", r.id)));
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_messages"), 137);
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_by_with"), 137);
    // Recovery after a stop re-indexes rows a read indexed: nothing is deleted.
    drop(stores);
    let stores = open_lazy(&path).await;
    assert_eq!(ids(&stores, "alice", &all()).await.len(), 137);
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_messages"), 137);
}

/// An owner's rows are indexed in the append that brings five of them to wait,
/// and `indexed_seq` stops short of the oldest row still waiting, so that a
/// restart re-indexes from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_with_enough_rows_waiting_is_indexed_in_the_append() {
    let (_dir, path) = temp_db();
    let stores = open_indexing(&path, 5, 1_000_000).await;
    let append = |rows: Vec<ArchiveEntry>| stores.archive.append(Arc::new(rows));
    // seqs 1-3 alice, 4-5 bob: nothing indexed.
    append((1..=3).map(|i| entry("alice", i, "bob@example.org")).collect()).await.unwrap();
    append((1..=2).map(|i| entry("bob", i, "alice@example.org")).collect()).await.unwrap();
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_by_owner"), 0);
    // seqs 6-7 alice: her five are indexed; bob's seq 4 is the oldest waiting.
    append((4..=5).map(|i| entry("alice", i, "bob@example.org")).collect()).await.unwrap();
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_by_owner"), 5);
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_by_with"), 5);
    assert_eq!(count(&path, "SELECT indexed_seq FROM mam_index_state"), 3);
    // One append with rows of both: alice's (6) wait, bob's (2 + 3) are indexed.
    let mut rows: Vec<ArchiveEntry> = (3..=5).map(|i| entry("bob", i, "alice@example.org")).collect();
    rows.push(entry("alice", 6, "bob@example.org"));
    append(rows).await.unwrap();
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_by_owner"), 10);
    assert_eq!(count(&path, "SELECT indexed_seq FROM mam_index_state"), 10, "alice's row 6 (seq 11) waits");
    assert_eq!(ids(&stores, "bob", &all()).await, [1, 2, 3, 4, 5]);
    drop(stores);
    // Nothing indexed twice after a restart, and alice's waiting row is found.
    let stores = open_lazy(&path).await;
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_by_owner"), 11);
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_messages"), 11);
    assert_eq!(ids(&stores, "alice", &all()).await, [1, 2, 3, 4, 5, 6]);
}

/// An owner that writes rarely does not hold `indexed_seq` back for ever: once
/// more than twice `batch` rows were appended after it, the owners whose rows
/// waited longest are indexed, up to a quarter of `batch` rows (here 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_waiting_too_long_are_indexed_oldest_first() {
    let (_dir, path) = temp_db();
    let stores = open_indexing(&path, 5, 10).await;
    stores.archive.append(Arc::new(vec![entry("slow", 1, "bob@example.org")])).await.unwrap();
    // Each append of five of alice's rows indexes them at once; slow's row waits.
    for round in 0..3 {
        let rows = (1..=5).map(|i| entry("alice", round * 5 + i, "bob@example.org")).collect();
        stores.archive.append(Arc::new(rows)).await.unwrap();
    }
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_by_owner"), 15);
    assert_eq!(count(&path, "SELECT indexed_seq FROM mam_index_state"), 0, "slow's row (seq 1) waits");
    // seqs 17-19 alice, 20 carol: twenty rows after indexed_seq, five waiting.
    stores.archive.append(Arc::new((16..=18).map(|i| entry("alice", i, "bob@example.org")).collect())).await.unwrap();
    stores.archive.append(Arc::new(vec![entry("carol", 1, "bob@example.org")])).await.unwrap();
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_by_owner"), 15);
    // seq 21 is one more than twice the batch: slow's row, then alice's three
    // (the budget of two reached), are indexed; carol's rows wait.
    stores.archive.append(Arc::new(vec![entry("carol", 2, "bob@example.org")])).await.unwrap();
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_by_owner"), 19);
    assert_eq!(count(&path, "SELECT indexed_seq FROM mam_index_state"), 19, "carol's seq 20 waits");
    assert_eq!(ids(&stores, "slow", &all()).await, [1]);
    assert_eq!(ids(&stores, "carol", &all()).await, [1, 2]);
}

/// When `batch` rows wait in all, the owners with the most rows waiting are
/// indexed first, up to a quarter of `batch` rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_indexes_its_fullest_owners_first() {
    let (_dir, path) = temp_db();
    let stores = open_indexing(&path, 1_000, 20).await;
    // Waiting: carol 2, bob 7, alice 10 (seqs 1-2, 3-9, 10-19).
    stores.archive.append(Arc::new((1..=2).map(|i| entry("carol", i, "x@example.org")).collect())).await.unwrap();
    stores.archive.append(Arc::new((1..=7).map(|i| entry("bob", i, "x@example.org")).collect())).await.unwrap();
    stores.archive.append(Arc::new((1..=10).map(|i| entry("alice", i, "x@example.org")).collect())).await.unwrap();
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_by_owner"), 0);
    // The 20th row: alice's 11 rows reach the budget of 5 alone.
    stores.archive.append(Arc::new(vec![entry("alice", 11, "x@example.org")])).await.unwrap();
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_by_owner"), 11);
    assert_eq!(count(&path, "SELECT indexed_seq FROM mam_index_state"), 0, "carol's seq 1 waits");
    for (user, n) in [("alice", 11), ("bob", 7), ("carol", 2)] {
        assert_eq!(ids(&stores, user, &all()).await.len(), n, "{user}");
    }
}

/// Reads that come while an append logs rows and indexes its ripe owners see every
/// row (the crate's unit tests check the mark that makes reads queue behind it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_during_an_append_that_indexes_its_owners_see_every_row() {
    let (_dir, path) = temp_db();
    let stores = open_indexing(&path, 40, 1_000_000).await;
    // 39 rows waiting for each of u0..u999.
    stores.archive.append(Arc::new(spread(0..39_000, 1000))).await.unwrap();
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_by_owner"), 0);
    // 40 more rows each make every owner ripe (79 rows, within the append's
    // budget of twice its own rows): all are indexed in it, and the reads run
    // while it logs and indexes them.
    let writer = {
        let stores = stores.clone();
        // Built before the task starts, so that the append reaches the writer first.
        let rows = Arc::new(spread(39_000..79_000, 1000));
        tokio::spawn(async move { stores.archive.append(rows).await })
    };
    // The append reaches the writer first.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    for u in (0..1000).rev() {
        assert_eq!(ids(&stores, &format!("u{u}"), &all()).await.len(), 79, "u{u}");
    }
    writer.await.unwrap().unwrap();
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_by_owner"), 79_000);
    assert_eq!(count(&path, "SELECT indexed_seq FROM mam_index_state"), 79_000, "no row left waiting");
}

/// A reopened store starts at the `indexed_seq` the file holds: a few rows appended
/// after 100 indexed ones wait for their owners, instead of being taken for rows
/// waiting since seq 0 and indexed at once as the oldest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_store_starts_at_the_stored_indexed_seq() {
    let (_dir, path) = temp_db();
    let stores = open_lazy(&path).await;
    stores.archive.append(Arc::new(spread(0..100, 4))).await.unwrap();
    drop(stores);
    // Opening indexes what the first process left (seq 1..=100).
    let stores = open_indexing(&path, 1_000_000, 10).await;
    assert_eq!(count(&path, "SELECT indexed_seq FROM mam_index_state"), 100);
    stores.archive.append(Arc::new(spread(100..102, 4))).await.unwrap();
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_by_owner"), 100, "the 2 new rows wait");
    assert_eq!(count(&path, "SELECT indexed_seq FROM mam_index_state"), 100);
    assert_eq!(ids(&stores, "u0", &all()).await.len(), 26, "and reads still see them");
}

/// A message's row in its sender's archive and in its recipient's: the same text
/// (one allocation, as the archive module makes them) for two owners.
fn pair(id: i64, text: &Arc<str>) -> [ArchiveEntry; 2] {
    let mut out = entry("alice", id, "bob@example.org");
    out.msg.direction = Direction::Outgoing;
    out.msg.stanza = text.clone();
    let mut inc = entry("bob", id, "alice@example.org");
    inc.msg.stanza = text.clone();
    [out, inc]
}

/// The text of `user`'s row `id`, as a read returns it.
async fn text_of(stores: &Stores, user: &str, id: i64) -> String {
    let rows = stores.archive.fetch_ids(Account::new(user, "example.org"), &[id]).await.expect("fetch");
    assert_eq!(rows.len(), 1, "{user}'s row {id}");
    rows[0].stanza.to_string()
}

/// The two rows of a message share one stored text, and each keeps it whatever
/// happens to the other: a retraction's tombstone, a repeated row deleted, the
/// other archive removed with its rows waiting or indexed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_text_is_stored_once_for_both_archives_and_outlives_either_row() {
    let (_dir, path) = temp_db();
    let stores = open_lazy(&path).await;
    let texts: Vec<Arc<str>> = (1..=4).map(|i| Arc::from(format!("<message n='{i}'>text {i}</message>"))).collect();
    // Message 3's recipient took two copies (two sessions): the second keeps its
    // own text (only one row reads a holder's), and is deleted as a repeat.
    let mut rows: Vec<ArchiveEntry> = texts.iter().zip(1..).flat_map(|(t, i)| pair(i, t)).collect();
    rows.push(pair(3, &texts[2])[1].clone());
    // Texts not shared: an owner's own rows, and another allocation of one text.
    let mut own = entry("carol", 9, "dave@example.org");
    own.msg.stanza = texts[0].to_string().into();
    rows.push(own);
    stores.archive.append(Arc::new(rows)).await.unwrap();
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_messages"), 10);
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_messages WHERE stanza = ''"), 4, "one per message");
    for (i, t) in (1..=4).zip(&texts) {
        assert_eq!(text_of(&stores, "alice", i).await, **t);
        assert_eq!(text_of(&stores, "bob", i).await, **t);
    }
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_messages"), 9, "bob's repeated row 3 is deleted");

    // A tombstone on either side leaves the other side's text.
    let tomb = "<message><retracted/></message>";
    let alice = Account::new("alice", "example.org");
    let bob = Account::new("bob", "example.org");
    assert_eq!(
        stores.archive.retract(alice, "bob@example.org", Direction::Outgoing, "o1", tomb).await.unwrap(),
        Some(1)
    );
    assert_eq!(
        stores.archive.retract(bob, "alice@example.org", Direction::Incoming, "o2", tomb).await.unwrap(),
        Some(2)
    );
    assert_eq!(
        (text_of(&stores, "alice", 1).await, text_of(&stores, "bob", 1).await),
        (tomb.into(), texts[0].to_string())
    );
    assert_eq!(
        (text_of(&stores, "alice", 2).await, text_of(&stores, "bob", 2).await),
        (texts[1].to_string(), tomb.into())
    );

    // Removing alice's archive: bob keeps every text, indexed rows' (3, 4) and
    // waiting rows' (5) alike.
    stores.archive.append(Arc::new(pair(5, &Arc::from("<message n='5'/>")).to_vec())).await.unwrap();
    stores.archive.remove_archive(alice).await.unwrap();
    let got: Vec<String> =
        stores.archive.query(bob, &all()).await.unwrap().rows.iter().map(|r| r.stanza.to_string()).collect();
    let want = [&*texts[0], tomb, &*texts[2], &*texts[3], "<message n='5'/>"];
    assert_eq!(got, want);
    assert_eq!(count(&path, "SELECT COUNT(*) FROM mam_messages WHERE stanza = ''"), 0);
}
