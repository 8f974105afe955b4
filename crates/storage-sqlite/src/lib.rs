//! SQLite storage backend for Meerkat.
//!
//! [`open`] returns a [`Stores`] bundle backed by one SQLite file in WAL mode
//! (`synchronous=NORMAL`, `foreign_keys=ON`, `busy_timeout=5000`).
//!
//! rusqlite is blocking, so no SQLite call ever runs on a tokio runtime thread.
//! Connections live on dedicated OS threads fed by channels: one writer thread owning
//! the only read-write connection, and [`READERS`] reader threads (each with its own
//! `query_only` connection) that take jobs from one shared queue. A job is a closure
//! run against the thread's connection; its result comes back through a oneshot
//! channel. This was chosen over `spawn_blocking` + a mutex-guarded connection pool
//! because: a connection (and its prepared-statement cache) never migrates between
//! threads; waiting requests are queued jobs rather than blocked runtime threads (a
//! burst of writes does not park hundreds of `spawn_blocking` threads on one
//! mutex); and writes are serialised in-process, which matches SQLite's single-writer
//! model and avoids `SQLITE_BUSY` between our own connections. WAL lets the reader
//! threads run in parallel with the writer; every read that starts after a write
//! returned sees that write. The threads stop when the last handle to the store is
//! dropped (their channel closes).
//!
//! Multi-statement changes (roster item + version bump, offline limit check + insert,
//! `delete_user` over every table) run in one `BEGIN IMMEDIATE` transaction, so they
//! stay atomic even when another process opens the same file.
//!
//! The schema is created and upgraded by the numbered files in `migrations/`,
//! embedded in the binary and tracked in `schema_migrations`.

#![warn(missing_docs)]

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use meerkat_storage::{Error, Result, Stores};
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};

mod archive;
mod groups;
mod store;

/// Number of reader connections (and threads) of a file database.
pub const READERS: usize = 3;

/// The embedded migrations, in order: `(version, SQL)`.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_init.sql")),
    (2, include_str!("../migrations/0002_archive.sql")),
    (3, include_str!("../migrations/0003_singletons.sql")),
    (4, include_str!("../migrations/0004_muc.sql")),
    (5, include_str!("../migrations/0005_archive_owner.sql")),
    (6, include_str!("../migrations/0006_muc_nick.sql")),
    (7, include_str!("../migrations/0007_archive_log.sql")),
    (8, include_str!("../migrations/0008_archive_shared_text.sql")),
];

/// The schema version this build creates and understands.
pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Tuning of a store; [`Options::default`] is what the server uses.
#[derive(Debug, Clone)]
pub struct Options {
    /// An archive owner's rows are indexed, in the append that brings them
    /// there, once this many of them wait (see the `archive` module): then an
    /// index page takes many of the owner's entries in one write. Default 128.
    pub archive_index_owner: usize,
    /// Waiting archive rows are indexed a quarter of this many at a time, the
    /// fullest owners' first, while this many wait in all (rows of owners that
    /// write slowly), and the oldest owners' first while more than twice this
    /// many rows were appended after the oldest waiting one (a restart re-indexes
    /// them). Each waiting row holds about 50 bytes of memory. Default 250,000.
    pub archive_index_batch: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { archive_index_owner: 128, archive_index_batch: 250_000 }
    }
}

/// Opens (creating it and its parent directories if needed) the SQLite database at
/// `path`, applies pending migrations, indexes archive rows a previous process left
/// unindexed, and starts the connection threads.
///
/// Fails with [`Error::Backend`] when the file cannot be opened or its schema is newer
/// than [`SCHEMA_VERSION`].
pub async fn open(path: &Path) -> Result<Stores> {
    open_with(path, Options::default()).await
}

/// [`open`] with other [`Options`].
pub async fn open_with(path: &Path, opts: Options) -> Result<Stores> {
    let path = path.to_owned();
    let pool = off_runtime("open", move || Pool::open_file(&path)).await?;
    Ok(Stores::from_backend("sqlite", Arc::new(store::SqliteStore::new(pool, &opts))))
}

/// Opens a private in-memory database (for tests and throw-away servers): one
/// connection on one thread serves reads and writes; everything is lost when the
/// returned [`Stores`] is dropped.
pub async fn open_memory() -> Result<Stores> {
    let pool = off_runtime("open", Pool::open_memory).await?;
    Ok(Stores::from_backend("sqlite", Arc::new(store::SqliteStore::new(pool, &Options::default()))))
}

/// Runs `f` on a fresh OS thread and awaits its result without blocking the runtime.
async fn off_runtime<T: Send + 'static>(what: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("meerkat-sqlite-open".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| Error::Backend(format!("sqlite {what}: cannot start a thread: {e}")))?;
    rx.await.map_err(|_| Error::Backend(format!("sqlite {what}: the thread panicked")))?
}

/// Maps a rusqlite error onto [`Error::Backend`], naming the operation.
pub(crate) fn db_err(what: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |e| Error::Backend(format!("sqlite {what}: {e}"))
}

/// A unit of work for a connection thread.
type Job = Box<dyn FnOnce(&mut Connection) + Send + 'static>;

/// Where a job runs.
#[derive(Clone, Copy)]
pub(crate) enum Target {
    /// The read-write connection.
    Writer,
    /// Any reader connection (the writer when there are no readers).
    Reader,
}

/// The job queues of the connection threads.
pub(crate) struct Pool {
    writer: mpsc::Sender<Job>,
    /// `None` for in-memory databases (one connection serves everything).
    readers: Option<mpsc::Sender<Job>>,
    /// The archive's `indexed_seq` when the file was opened (after recovery):
    /// every row up to it is indexed.
    pub(crate) archive_indexed: i64,
}

impl Pool {
    fn open_file(path: &Path) -> Result<Pool> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::Backend(format!("cannot create the directory {} for the SQLite database: {e}", dir.display()))
            })?;
        }
        let open_err =
            |e: rusqlite::Error| Error::Backend(format!("cannot open SQLite database {}: {e}", path.display()));
        let mut writer = Connection::open(path).map_err(open_err)?;
        configure(&mut writer, true).map_err(open_err)?;
        migrate(&mut writer)?;
        let archive_indexed = archive::recover(&mut writer)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let flags =
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
            let mut r = Connection::open_with_flags(path, flags).map_err(open_err)?;
            configure(&mut r, false).map_err(open_err)?;
            readers.push(r);
        }
        Ok(Pool {
            archive_indexed,
            writer: spawn_workers("meerkat-sqlite-w", vec![writer])?,
            readers: Some(spawn_workers("meerkat-sqlite-r", readers)?),
        })
    }

    fn open_memory() -> Result<Pool> {
        let open_err = |e: rusqlite::Error| Error::Backend(format!("cannot open an in-memory SQLite database: {e}"));
        let mut conn = Connection::open_in_memory().map_err(open_err)?;
        configure(&mut conn, true).map_err(open_err)?;
        migrate(&mut conn)?;
        Ok(Pool { writer: spawn_workers("meerkat-sqlite-mem", vec![conn])?, readers: None, archive_indexed: 0 })
    }

    /// Runs `f` on a connection thread and returns its result.
    pub(crate) async fn run<T, F>(&self, target: Target, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = tx.send(f(conn));
        });
        let queue = match (target, &self.readers) {
            (Target::Reader, Some(r)) => r,
            _ => &self.writer,
        };
        queue.send(job).map_err(|_| Error::Backend("sqlite: the connection threads have stopped".into()))?;
        rx.await
            .map_err(|_| Error::Backend("sqlite: the connection thread panicked while running the request".into()))?
    }
}

/// Applies the connection settings. `writer` also switches the file to WAL mode.
fn configure(conn: &mut Connection, writer: bool) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_millis(5000))?;
    conn.set_prepared_statement_cache_capacity(64);
    if writer {
        // Returns the resulting mode: "wal" for files, "memory" for in-memory databases.
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    }
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")?;
    if writer {
        // The writer checkpoints every 32,768 WAL pages (128 MiB) instead of
        // 1,000: a page written by many transactions (an archive index page,
        // rewritten by every index batch) goes back to the database file once
        // per checkpoint, and checkpoints (with their fsyncs) are rarer. Its page
        // cache (32 MiB instead of 2) keeps the indexes that every batch touches
        // in memory.
        conn.execute_batch("PRAGMA wal_autocheckpoint = 32768; PRAGMA cache_size = -32768;")?;
    } else {
        conn.execute_batch("PRAGMA query_only = ON;")?;
    }
    Ok(())
}

/// Starts one thread per connection, all taking jobs from one queue.
fn spawn_workers(name: &str, conns: Vec<Connection>) -> Result<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    for (i, conn) in conns.into_iter().enumerate() {
        let rx = rx.clone();
        std::thread::Builder::new()
            .name(format!("{name}{i}"))
            .spawn(move || worker(conn, &rx))
            .map_err(|e| Error::Backend(format!("sqlite: cannot start a connection thread: {e}")))?;
    }
    Ok(tx)
}

/// A connection thread: runs jobs until every sender is gone.
fn worker(mut conn: Connection, rx: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        // The lock is held only while waiting for the next job, never while running it.
        let job = match rx.lock().recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        // A panicking job drops its reply sender (the caller gets an error) and rolls
        // back its transaction while unwinding; the thread keeps serving.
        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut conn)));
    }
}

/// Brings the schema up to [`SCHEMA_VERSION`] in one transaction.
fn migrate(conn: &mut Connection) -> Result<()> {
    let err = db_err("migration");
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(&err)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER PRIMARY KEY,
             applied_at INTEGER NOT NULL
         )",
    )
    .map_err(&err)?;
    let current: i64 =
        tx.query_row("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", [], |r| r.get(0)).map_err(&err)?;
    if current > SCHEMA_VERSION {
        return Err(Error::Backend(format!(
            "database schema version {current} is newer than this Meerkat supports ({SCHEMA_VERSION})"
        )));
    }
    for &(version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.execute_batch(sql).map_err(|e| Error::Backend(format!("sqlite migration {version}: {e}")))?;
        tx.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)", (version, store::now_secs()))
            .map_err(&err)?;
    }
    tx.commit().map_err(&err)
}
