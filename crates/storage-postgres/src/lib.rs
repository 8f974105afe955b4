//! PostgreSQL storage backend for Meerkat.
//!
//! [`open`] returns a [`Stores`] bundle backed by a `deadpool-postgres` pool of
//! `tokio-postgres` connections (plain TCP or Unix sockets, no TLS). The pool size comes
//! from a `pool_size=N` query parameter of the URL (default [`DEFAULT_POOL_SIZE`]),
//! which is removed before the URL reaches tokio-postgres. Every statement is prepared
//! once per connection (`prepare_cached`).
//!
//! Concurrency: a roster change and its version bump (`INSERT … ON CONFLICT … DO
//! UPDATE SET version = roster_versions.version + 1 RETURNING version`) share one
//! transaction, so versions are unique and follow commit order. An offline push takes a
//! per-account transaction-scoped advisory lock before counting and inserting, so the
//! limit holds across connections and nodes, and message ids grow in commit order per
//! account.
//!
//! The schema is created and upgraded by the numbered files in `migrations/`,
//! embedded in the binary, tracked in `schema_migrations` and applied in one
//! transaction under an advisory lock, so nodes starting together do not race.
//! [`open_with_schema`] confines everything to one PostgreSQL schema (tests use a fresh
//! one per run).
//!
//! Errors never contain the password: connection failures name the host, port and
//! database taken from the parsed URL.

#![warn(missing_docs)]

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use meerkat_storage::{Error, Result, Stores};
use tokio_postgres::config::Host;
use tokio_postgres::NoTls;

mod archive;
mod store;

/// Pool size when the URL has no `pool_size` parameter.
pub const DEFAULT_POOL_SIZE: usize = 16;

/// The embedded migrations, in order: `(version, SQL)`.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_init.sql")),
    (2, include_str!("../migrations/0002_archive.sql")),
    (3, include_str!("../migrations/0003_singletons.sql")),
    (4, include_str!("../migrations/0004_muc.sql")),
    (5, include_str!("../migrations/0005_archive_origin.sql")),
    (6, include_str!("../migrations/0006_muc_nick.sql")),
];

/// The schema version this build creates and understands.
pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Advisory lock class of the migration lock (`pg_advisory_xact_lock(class, 0)`).
const MIGRATION_LOCK_CLASS: i32 = 0x4d4b_0001;
/// Advisory lock class of the per-account offline push locks.
pub(crate) const OFFLINE_LOCK_CLASS: i32 = 0x4d4b_0002;
/// The advisory-lock class of per-user roster locks (held across statements).
pub(crate) const ROSTER_LOCK_CLASS: i32 = 0x4d4b_0003;

/// Connects to the database at `url` (e.g.
/// `postgres://meerkat:secret@db.example/meerkat?pool_size=32`), applies pending
/// migrations and returns the stores.
///
/// Fails with [`Error::Backend`] when the URL is invalid, the database is unreachable
/// (the message names host, port and database, never the password) or its schema is
/// newer than [`SCHEMA_VERSION`].
pub async fn open(url: &str) -> Result<Stores> {
    open_inner(url, None).await
}

/// Like [`open`], but keeps every table in the PostgreSQL schema `schema` (created if
/// missing; `search_path` is set on every pooled connection). `schema` must be a plain
/// lowercase identifier: ASCII letters, digits and `_`, not starting with a digit, at
/// most 63 bytes.
pub async fn open_with_schema(url: &str, schema: &str) -> Result<Stores> {
    open_inner(url, Some(schema)).await
}

/// Drops the PostgreSQL schema `schema` and everything in it (test clean-up).
pub async fn drop_schema(url: &str, schema: &str) -> Result<()> {
    check_schema_name(schema)?;
    let (url, _) = split_pool_size(url)?;
    let (client, conn) = tokio_postgres::connect(&url, NoTls)
        .await
        .map_err(|e| Error::Backend(format!("cannot connect to PostgreSQL: {}", describe(&e))))?;
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .map_err(|e| Error::Backend(format!("dropping schema {schema}: {}", describe(&e))))
}

async fn open_inner(url: &str, schema: Option<&str>) -> Result<Stores> {
    if let Some(s) = schema {
        check_schema_name(s)?;
    }
    let (url, pool_size) = split_pool_size(url)?;
    let mut config = tokio_postgres::Config::from_str(&url)
        .map_err(|e| Error::Backend(format!("invalid PostgreSQL URL: {}", describe(&e))))?;
    let target = target_of(&config);
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    if let Some(s) = schema {
        let options = match config.get_options() {
            Some(o) if !o.trim().is_empty() => format!("{o} -c search_path={s}"),
            _ => format!("-c search_path={s}"),
        };
        config.options(options);
    }
    let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    let pool = Pool::builder(manager)
        .max_size(pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(30)))
        .create_timeout(Some(Duration::from_secs(15)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| Error::Backend(format!("cannot build the PostgreSQL pool for {target}: {e}")))?;

    let mut client = pool
        .get()
        .await
        .map_err(|e| Error::Backend(format!("cannot connect to PostgreSQL at {target}: {}", describe(&e))))?;
    migrate(&mut client, schema, &target).await?;
    drop(client);
    Ok(Stores::from_backend("postgres", Arc::new(store::PgStore::new(pool, target, pool_size))))
}

/// Removes the `pool_size=N` query parameter from a `postgres://` / `postgresql://`
/// URL; returns the remaining URL and the pool size.
fn split_pool_size(url: &str) -> Result<(String, usize)> {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    // Like tokio-postgres: credentials end at the first '@', the query starts at the
    // first '?' after them (a '?' inside a password is not a query).
    let after_creds = url.find('@').map_or(0, |i| i + 1);
    let query_start = if is_url { url[after_creds..].find('?').map(|i| after_creds + i) } else { None };
    let Some(q) = query_start else {
        return Ok((url.to_owned(), DEFAULT_POOL_SIZE));
    };
    let mut pool_size = DEFAULT_POOL_SIZE;
    let mut kept = Vec::new();
    for param in url[q + 1..].split('&') {
        match param.strip_prefix("pool_size=") {
            Some(v) => {
                pool_size = v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    Error::Backend(format!(
                        "invalid pool_size {v:?} in the PostgreSQL URL: expected a positive integer"
                    ))
                })?;
            }
            None => kept.push(param),
        }
    }
    let mut out = url[..q].to_owned();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    Ok((out, pool_size))
}

/// `host:port/dbname` of a configuration, for error messages (never the password).
fn target_of(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                Host::Tcp(h) => h.clone(),
                #[cfg(unix)]
                Host::Unix(p) => p.display().to_string(),
            };
            match ports.get(i).or_else(|| ports.first()) {
                Some(p) => format!("{host}:{p}"),
                None => format!("{host}:5432"),
            }
        })
        .collect();
    let hosts = if hosts.is_empty() { "localhost:5432".to_owned() } else { hosts.join(",") };
    match config.get_dbname() {
        Some(db) => format!("{hosts}/{db}"),
        None => hosts,
    }
}

/// Accepts only plain lowercase identifiers, so the name needs no quoting anywhere.
fn check_schema_name(s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(Error::Backend(format!(
            "invalid PostgreSQL schema name {s:?}: use lowercase ASCII letters, digits and '_'"
        )))
    }
}

/// An error and all its causes, joined with ": ".
pub(crate) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let part = c.to_string();
        if !s.contains(&part) {
            s.push_str(": ");
            s.push_str(&part);
        }
        cur = c.source();
    }
    s.trim_end().to_owned()
}

/// Brings the schema up to [`SCHEMA_VERSION`] in one transaction under an advisory lock.
async fn migrate(client: &mut deadpool_postgres::Object, schema: Option<&str>, target: &str) -> Result<()> {
    let err = |e: tokio_postgres::Error| Error::Backend(format!("postgres migration on {target}: {}", describe(&e)));
    let tx = client.transaction().await.map_err(err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&MIGRATION_LOCK_CLASS]).await.map_err(err)?;
    if let Some(s) = schema {
        // `s` passed check_schema_name: a plain identifier, safe to splice in.
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {s}")).await.map_err(err)?;
    }
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    BIGINT PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(err)?;
    let current: i64 = tx
        .query_one("SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations", &[])
        .await
        .map_err(err)?
        .try_get(0)
        .map_err(err)?;
    if current > SCHEMA_VERSION {
        return Err(Error::Backend(format!(
            "database schema version {current} is newer than this Meerkat supports ({SCHEMA_VERSION})"
        )));
    }
    for &(version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(sql)
            .await
            .map_err(|e| Error::Backend(format!("postgres migration {version} on {target}: {}", describe(&e))))?;
        tx.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[&version]).await.map_err(err)?;
    }
    tx.commit().await.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_size_is_stripped() {
        let (u, n) = split_pool_size("postgres://u:p@h:5/db?pool_size=4").unwrap();
        assert_eq!((u.as_str(), n), ("postgres://u:p@h:5/db", 4));
        let (u, n) = split_pool_size("postgres://h/db?application_name=x&pool_size=7&connect_timeout=3").unwrap();
        assert_eq!((u.as_str(), n), ("postgres://h/db?application_name=x&connect_timeout=3", 7));
        let (u, n) = split_pool_size("postgresql://h/db?sslmode=disable").unwrap();
        assert_eq!((u.as_str(), n), ("postgresql://h/db?sslmode=disable", DEFAULT_POOL_SIZE));
        let (u, n) = split_pool_size("postgres://u:pa?ss@h/db").unwrap();
        assert_eq!((u.as_str(), n), ("postgres://u:pa?ss@h/db", DEFAULT_POOL_SIZE));
        let (u, n) = split_pool_size("host=/run/postgresql dbname=meerkat").unwrap();
        assert_eq!((u.as_str(), n), ("host=/run/postgresql dbname=meerkat", DEFAULT_POOL_SIZE));
    }

    #[test]
    fn bad_pool_size_is_refused_without_echoing_the_url() {
        for url in ["postgres://u:secret@h/db?pool_size=0", "postgres://u:secret@h/db?pool_size=x"] {
            match split_pool_size(url) {
                Err(Error::Backend(m)) => assert!(m.contains("pool_size") && !m.contains("secret"), "{m}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn target_names_host_port_and_database_only() {
        let c = tokio_postgres::Config::from_str("postgres://meerkat:secret@db.example:6543/xmpp").unwrap();
        assert_eq!(target_of(&c), "db.example:6543/xmpp");
        let c = tokio_postgres::Config::from_str("postgres://h1,h2:7/x").unwrap();
        assert_eq!(target_of(&c), "h1:5432,h2:7/x");
    }

    #[test]
    fn schema_names() {
        for ok in ["meerkat", "_x", "meerkat_test_t1a2b3"] {
            assert!(check_schema_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1abc", "Abc", "a-b", "a b", "a\"b", "a;drop", &"x".repeat(64)] {
            assert!(check_schema_name(bad).is_err(), "{bad}");
        }
    }
}
