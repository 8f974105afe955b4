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
