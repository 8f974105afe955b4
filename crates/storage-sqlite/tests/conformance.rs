//! Runs the shared storage conformance suite against the SQLite backend: a file
//! database in a temporary directory (several concurrent runs, then a reopen) and an
//! in-memory database.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_file_database() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A nested path: open() creates the missing parent directories.
    let path = dir.path().join("nested").join("dir").join("meerkat.db");
    let stores = meerkat_storage_sqlite::open(&path).await.expect("open");
    assert_eq!(stores.backend, "sqlite");
    meerkat_storage::conformance::run(&stores).await;

    // Two more runs at once on the same database.
    let (a, b) = (stores.clone(), stores.clone());
    let h1 = tokio::spawn(async move { meerkat_storage::conformance::run(&a).await });
    let h2 = tokio::spawn(async move { meerkat_storage::conformance::run(&b).await });
    h1.await.expect("concurrent run 1");
    h2.await.expect("concurrent run 2");
    drop(stores);

    // And once more after reopening the same file.
    let stores = meerkat_storage_sqlite::open(&path).await.expect("reopen");
    meerkat_storage::conformance::run(&stores).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_in_memory() {
    let stores = meerkat_storage_sqlite::open_memory().await.expect("open_memory");
    meerkat_storage::conformance::run(&stores).await;
}

#[tokio::test(flavor = "current_thread")]
async fn works_on_a_current_thread_runtime() {
    // Nothing blocks the (only) runtime thread: the connection threads do the work.
    let dir = tempfile::tempdir().expect("temp dir");
    let stores = meerkat_storage_sqlite::open(&dir.path().join("m.db")).await.expect("open");
    meerkat_storage::conformance::run(&stores).await;
}

/// The suite again with archive rows indexed after every row, after every third
/// row of an owner, and after every third row in all, so that reads meet both
/// indexed rows and rows still waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_with_the_archive_indexed_in_small_batches() {
    for (owner, batch) in [(1, 1_000_000), (3, 1_000_000), (1_000_000, 3)] {
        let dir = tempfile::tempdir().expect("temp dir");
        let opts = meerkat_storage_sqlite::Options { archive_index_owner: owner, archive_index_batch: batch };
        let stores = meerkat_storage_sqlite::open_with(&dir.path().join("m.db"), opts).await.expect("open");
        meerkat_storage::conformance::run(&stores).await;
    }
}
