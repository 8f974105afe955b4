//! Schema migration behaviour of the SQLite backend: fresh databases get every
//! migration, reopening applies nothing, and a database from a newer Meerkat is refused.

use meerkat_storage::{Account, Error, StoredCredentials};
use meerkat_storage_sqlite::SCHEMA_VERSION;

/// `(version, applied_at)` rows of `schema_migrations`, read with a plain connection.
fn applied(path: &std::path::Path) -> Vec<(i64, i64)> {
    let conn = rusqlite::Connection::open(path).expect("open with rusqlite");
    let mut st = conn.prepare("SELECT version, applied_at FROM schema_migrations ORDER BY version").expect("prepare");
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).expect("query");
    rows.collect::<Result<Vec<_>, _>>().expect("rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_database_gets_every_migration_and_reopen_is_a_no_op() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("m.db");
    let stores = meerkat_storage_sqlite::open(&path).await.expect("open");
    let acc = Account::new("keeper", "example.org");
    let creds = StoredCredentials::from_password("pw", 2);
    stores.auth.create_user(acc, &creds).await.expect("create");
    drop(stores);

    let first = applied(&path);
    assert_eq!(first.iter().map(|r| r.0).collect::<Vec<_>>(), (1..=SCHEMA_VERSION).collect::<Vec<_>>());

    std::thread::sleep(std::time::Duration::from_millis(1100)); // applied_at has second resolution
    let stores = meerkat_storage_sqlite::open(&path).await.expect("reopen");
    assert_eq!(applied(&path), first, "reopening an up-to-date database applies nothing");
    assert_eq!(stores.auth.get_credentials(acc).await.expect("get"), Some(creds), "data survives reopening");

    // The database is in WAL mode.
    let conn = rusqlite::Connection::open(&path).expect("open with rusqlite");
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).expect("pragma");
    assert_eq!(mode, "wal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("m.db");
    drop(meerkat_storage_sqlite::open(&path).await.expect("open"));
    let newer = SCHEMA_VERSION + 7;
    {
        let conn = rusqlite::Connection::open(&path).expect("open with rusqlite");
        conn.busy_timeout(std::time::Duration::from_secs(5)).expect("busy timeout");
        conn.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?1, 0)", [newer]).expect("insert");
    }
    match meerkat_storage_sqlite::open(&path).await {
        Err(Error::Backend(msg)) => assert_eq!(
            msg,
            format!("database schema version {newer} is newer than this Meerkat supports ({SCHEMA_VERSION})")
        ),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("a newer schema must be refused"),
    }
}

#[tokio::test]
async fn unopenable_path_is_a_backend_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A directory cannot be opened as a database file.
    match meerkat_storage_sqlite::open(dir.path()).await {
        Err(Error::Backend(msg)) => assert!(msg.contains(&dir.path().display().to_string()), "{msg}"),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("opening a directory must fail"),
    }
}

#[tokio::test]
async fn corrupt_rows_are_backend_errors_not_panics() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("m.db");
    let stores = meerkat_storage_sqlite::open(&path).await.expect("open");
    {
        let conn = rusqlite::Connection::open(&path).expect("open with rusqlite");
        conn.busy_timeout(std::time::Duration::from_secs(5)).expect("busy timeout");
        conn.execute_batch(
            "INSERT INTO users VALUES ('example.org', 'bad', 'plain:secret', 0);
             INSERT INTO roster_items VALUES ('example.org', 'bad', 'x@y', NULL, 'none', 0, 0, NULL, 0, 1, '[oops');",
        )
        .expect("insert corrupt rows");
    }
    let acc = Account::new("bad", "example.org");
    assert!(matches!(stores.auth.get_credentials(acc).await, Err(Error::Backend(_))));
    assert!(matches!(stores.roster.get_roster(acc).await, Err(Error::Backend(_))));
    assert!(matches!(stores.roster.get_item(acc, "x@y").await, Err(Error::Backend(_))));
}

/// An archive written under schema version 4 (owners as domain and user name in
/// every row) reads the same after migration 5 (integer owner keys): every row
/// with its id, both owners kept apart, retraction and removal working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_from_schema_4_survives_the_owner_key_migration() {
    use meerkat_storage::{ArchiveQuery, Direction};
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("m.db");
    {
        let conn = rusqlite::Connection::open(&path).expect("open with rusqlite");
        conn.execute_batch("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)")
            .expect("migrations table");
        for (v, sql) in [
            (1, include_str!("../migrations/0001_init.sql")),
            (2, include_str!("../migrations/0002_archive.sql")),
            (3, include_str!("../migrations/0003_singletons.sql")),
            (4, include_str!("../migrations/0004_muc.sql")),
        ] {
            conn.execute_batch(sql).expect("old migration");
            conn.execute("INSERT INTO schema_migrations VALUES (?1, 0)", [v]).expect("record");
        }
        let mut st = conn
            .prepare(
                "INSERT INTO mam_messages (domain, username, id, with_jid, with_resource, direction, sender,
                 origin_id, stanza) VALUES ('example.org', ?1, ?2, ?3, 'r', ?4, ?3, ?5, ?6)",
            )
            .expect("prepare");
        for i in 1..=30i64 {
            let (user, with) = if i % 3 == 0 { ("bob", "alice@example.org") } else { ("alice", "bob@example.org") };
            let dir = if i % 2 == 0 { "in" } else { "out" };
            st.execute(rusqlite::params![user, i * 10, with, dir, format!("o{i}"), format!("<message n='{i}'/>")])
                .expect("old row");
        }
    }
    let stores = meerkat_storage_sqlite::open(&path).await.expect("migrate");
    assert_eq!(applied(&path).last().map(|r| r.0), Some(SCHEMA_VERSION));
    let all = ArchiveQuery { limit: 100, max_id: i64::MAX, ..ArchiveQuery::default() };
    let alice = Account::new("alice", "example.org");
    let page = stores.archive.query(alice, &all).await.expect("query");
    let ids: Vec<i64> = page.rows.iter().map(|r| r.id).collect();
    assert_eq!(ids, (1..=30).filter(|i| i % 3 != 0).map(|i| i * 10).collect::<Vec<_>>(), "alice's rows, ids kept");
    assert!(page.complete);
    assert_eq!(&*page.rows[0].stanza, "<message n='1'/>");
    assert_eq!(page.rows[0].direction, Direction::Outgoing);
    let bob = Account::new("bob", "example.org");
    let with_alice = ArchiveQuery { with_jid: Some("alice@example.org".into()), ..all.clone() };
    assert_eq!(stores.archive.query(bob, &with_alice).await.expect("bob").rows.len(), 10);
    let tomb = "<message><retracted/></message>";
    assert_eq!(
        stores.archive.retract(alice, "bob@example.org", Direction::Incoming, "o2", tomb).await.expect("retract"),
        Some(20)
    );
    assert_eq!(&*stores.archive.fetch_ids(alice, &[20]).await.expect("fetch")[0].stanza, tomb);
    // New rows go on after the migrated ones, under the same owner.
    let msg = meerkat_storage::ArchivedMessage {
        id: 400,
        with_jid: "bob@example.org".into(),
        with_resource: "r".into(),
        direction: Direction::Incoming,
        sender: "bob@example.org/r".into(),
        origin_id: None,
        stanza: "<message n='new'/>".into(),
    };
    let entry = meerkat_storage::ArchiveEntry { user: "alice".into(), domain: "example.org".into(), msg };
    stores.archive.append(std::sync::Arc::new(vec![entry])).await.expect("append");
    let page = stores.archive.query(alice, &all).await.expect("query");
    assert_eq!(page.rows.len(), 21);
    assert_eq!(page.rows.last().map(|r| &*r.stanza), Some("<message n='new'/>"));
    stores.archive.remove_archive(alice).await.expect("remove");
    assert!(stores.archive.query(alice, &all).await.expect("query").rows.is_empty());
    assert_eq!(stores.archive.query(bob, &all).await.expect("bob").rows.len(), 10, "bob's archive stays");
}
