//! Runs the shared storage conformance suite, and the migration checks, against a real
//! PostgreSQL server: `MEERKAT_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). Every test works in a fresh schema that
//! it drops at the end, so runs can repeat and overlap on one database. An unreachable
//! server fails the tests; they never skip.

use std::future::Future;

use meerkat_storage::conformance::unique_tag;
use meerkat_storage::{Account, Error, StoredCredentials};
use meerkat_storage_postgres::{open, open_with_schema, SCHEMA_VERSION};

fn pg_url() -> String {
    std::env::var("MEERKAT_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A direct connection for test set-up and inspection; panics with a clear message when
/// PostgreSQL is unreachable.
async fn admin() -> tokio_postgres::Client {
    let url = pg_url();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap_or_else(|e| {
        panic!("PostgreSQL is unreachable at {url} (set MEERKAT_TEST_PG_URL to a reachable test database): {e:?}")
    });
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Runs `body` with a fresh schema name, then drops the schema whether `body` passed
/// or panicked (the panic is re-raised afterwards).
async fn with_schema<F, Fut>(body: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let admin = admin().await;
    let schema = format!("meerkat_test_{}", unique_tag());
    let outcome = tokio::spawn(body(schema.clone())).await;
    admin.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await.expect("drop the test schema");
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn open_schema(schema: &str) -> meerkat_storage::Stores {
    let url = pg_url();
    open_with_schema(&url, schema)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is unreachable at {url} (set MEERKAT_TEST_PG_URL): {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    with_schema(|schema| async move {
        let stores = open_schema(&schema).await;
        assert_eq!(stores.backend, "postgres");
        meerkat_storage::conformance::run(&stores).await;
        // Two overlapping runs on the same schema.
        let (a, b) = (stores.clone(), stores.clone());
        let h1 = tokio::spawn(async move { meerkat_storage::conformance::run(&a).await });
        let h2 = tokio::spawn(async move { meerkat_storage::conformance::run(&b).await });
        h1.await.expect("concurrent run 1");
        h2.await.expect("concurrent run 2");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_with_a_tiny_pool() {
    with_schema(|schema| async move {
        // Concurrent tasks outnumber the two connections: they must queue, not fail.
        let url = format!("{}?pool_size=2", pg_url().split('?').next().unwrap_or_default());
        let stores = open_with_schema(&url, &schema).await.expect("open with pool_size=2");
        meerkat_storage::conformance::run(&stores).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_and_newer_schemas_are_refused() {
    with_schema(|schema| async move {
        // Two nodes starting together on an empty schema: the advisory lock serialises them.
        let (s1, s2) = tokio::join!(open_schema(&schema), open_schema(&schema));
        let acc = Account::new("keeper", "example.org");
        let creds = StoredCredentials::from_password("pw", 2);
        s1.auth.create_user(acc, &creds).await.expect("create");
        assert_eq!(s2.auth.get_credentials(acc).await.expect("get"), Some(creds.clone()));
        drop((s1, s2));

        let admin = admin().await;
        let applied = |rows: Vec<tokio_postgres::Row>| -> Vec<(i64, String)> {
            rows.iter().map(|r| (r.get(0), r.get(1))).collect()
        };
        let q = format!("SELECT version, applied_at::TEXT FROM {schema}.schema_migrations ORDER BY version");
        let first = applied(admin.query(&q, &[]).await.expect("schema_migrations"));
        assert_eq!(first.iter().map(|r| r.0).collect::<Vec<_>>(), (1..=SCHEMA_VERSION).collect::<Vec<_>>());

        let again = open_schema(&schema).await;
        assert_eq!(applied(admin.query(&q, &[]).await.expect("schema_migrations")), first, "reopen applies nothing");
        assert_eq!(again.auth.get_credentials(acc).await.expect("get"), Some(creds), "data survives reopening");
        drop(again);

        let newer = SCHEMA_VERSION + 7;
        admin
            .execute(&format!("INSERT INTO {schema}.schema_migrations (version) VALUES ($1)"), &[&newer])
            .await
            .expect("insert a newer version");
        match open_with_schema(&pg_url(), &schema).await {
            Err(Error::Backend(msg)) => assert_eq!(
                msg,
                format!("database schema version {newer} is newer than this Meerkat supports ({SCHEMA_VERSION})")
            ),
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("a newer schema must be refused"),
        }
    })
    .await;
}

#[tokio::test]
async fn unreachable_database_names_the_host_but_not_the_password() {
    // Port 1 on localhost: connection refused, quickly.
    match open("postgres://meerkat:hunter2secret@127.0.0.1:1/meerkat?pool_size=2").await {
        Err(Error::Backend(msg)) => {
            assert!(msg.contains("127.0.0.1:1/meerkat"), "{msg}");
            assert!(!msg.contains("hunter2secret"), "{msg}");
            assert!(msg.to_lowercase().contains("refused") || msg.contains("connect"), "{msg}");
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("nothing listens on port 1"),
    }
    match open("postgres://meerkat:hunter2secret@127.0.0.1:5432/db?nonsense=1").await {
        Err(Error::Backend(msg)) => assert!(!msg.contains("hunter2secret"), "{msg}"),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("an unknown URL option must be refused"),
    }
}

#[tokio::test]
async fn invalid_schema_names_are_refused() {
    assert!(matches!(open_with_schema(&pg_url(), "x; DROP TABLE users").await, Err(Error::Backend(_))));
}

/// The roster lock serialises one account's changes across processes sharing the
/// database (two separately opened stores stand for two cluster nodes), and does
/// not hold up other accounts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roster_lock_is_shared_by_every_store_on_the_database() {
    use std::time::Duration;
    with_schema(|schema| async move {
        let node1 = open_schema(&schema).await;
        let node2 = open_schema(&schema).await;
        let alice = Account::new("alice", "localhost");
        let held = node1.roster.lock_roster(alice).await.unwrap();
        assert!(held.is_some(), "PostgreSQL locks across processes");
        let n2 = node2.clone();
        let waiter = tokio::spawn(async move {
            let g = n2.roster.lock_roster(Account::new("alice", "localhost")).await.unwrap();
            drop(g);
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiter.is_finished(), "a second holder of alice's lock must wait");
        // Another account is not held up.
        let bob =
            tokio::time::timeout(Duration::from_secs(5), node2.roster.lock_roster(Account::new("bob", "localhost")))
                .await
                .expect("bob's lock is free")
                .unwrap();
        drop(bob);
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("released on drop").unwrap();
        // Released locks leave the pool usable: lock and release many times.
        for _ in 0..40 {
            drop(node1.roster.lock_roster(alice).await.unwrap());
        }
        let again = tokio::time::timeout(Duration::from_secs(5), node2.roster.lock_roster(alice)).await;
        assert!(again.expect("not leaked").unwrap().is_some());
    })
    .await;
}
