//! The storage traits implemented on PostgreSQL.
//!
//! Every method takes a pooled connection, prepares its statements through the
//! connection's statement cache and maps every failure onto [`Error::Backend`] with a
//! message naming the operation, the server (`host:port/db`) and the cause.

use deadpool_postgres::{Object, Pool};
use meerkat_storage::{
    Account, AuthStore, BlockingStore, Error, LastActivity, LastStore, OfflineMessage, OfflineStore, Result, Roster,
    RosterItem, RosterLock, RosterStore, StoredCredentials, Subscription, XmlStore,
};
use tokio_postgres::Row;

use std::sync::Arc;

use crate::{describe, OFFLINE_LOCK_CLASS, ROSTER_LOCK_CLASS};

/// The PostgreSQL backend; implements every storage trait.
pub(crate) struct PgStore {
    pool: Pool,
    /// `host:port/db`, for error messages.
    pub(crate) target: String,
    /// Roster locks each hold a connection while the change itself needs
    /// others: at most half the pool holds locks, so changes cannot starve.
    lock_slots: Arc<tokio::sync::Semaphore>,
}

/// A session-level advisory lock on a pooled connection; released (or, if that
/// fails, the connection discarded, which releases it) when dropped.
struct PgRosterLock {
    conn: Option<Object>,
    key: (String, String),
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for PgRosterLock {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        let (domain, user) = std::mem::take(&mut self.key);
        tokio::spawn(async move {
            let unlock = "SELECT pg_advisory_unlock($1, hashtext($2::TEXT || '/' || $3::TEXT))";
            if conn.execute(unlock, &[&ROSTER_LOCK_CLASS, &domain, &user]).await.is_err() {
                // A session that ends releases its locks.
                drop(Object::take(conn));
            }
        });
    }
}

/// A count or limit as a PostgreSQL BIGINT.
fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl PgStore {
    pub(crate) fn new(pool: Pool, target: String, pool_size: usize) -> Self {
        PgStore { pool, target, lock_slots: Arc::new(tokio::sync::Semaphore::new((pool_size / 2).max(1))) }
    }

    /// A pooled connection.
    pub(crate) async fn conn(&self, what: &'static str) -> Result<Object> {
        self.pool
            .get()
            .await
            .map_err(|e| Error::Backend(format!("postgres {what}: no connection to {}: {}", self.target, describe(&e))))
    }

    /// Maps a query error onto [`Error::Backend`].
    pub(crate) fn err(&self, what: &'static str) -> impl Fn(tokio_postgres::Error) -> Error + '_ {
        move |e| Error::Backend(format!("postgres {what} on {}: {}", self.target, describe(&e)))
    }
}

/// Reads column `idx` of `row`, mapping a type mismatch onto [`Error::Backend`].
pub(crate) fn col<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    idx: usize,
    what: &'static str,
) -> Result<T> {
    row.try_get(idx).map_err(|e| Error::Backend(format!("postgres {what}: unexpected column {idx}: {}", describe(&e))))
}

/// A version column as the trait's `u64`.
fn version(v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::Backend(format!("postgres: roster version {v} is negative")))
}

#[async_trait::async_trait]
impl AuthStore for PgStore {
    async fn create_user(&self, acc: Account<'_>, creds: &StoredCredentials) -> Result<()> {
        let c = self.conn("create_user").await?;
        let err = self.err("create_user");
        let st = c
            .prepare_cached(
                "INSERT INTO users (domain, username, credentials) VALUES ($1, $2, $3)
                 ON CONFLICT (domain, username) DO NOTHING",
            )
            .await
            .map_err(&err)?;
        let n = c.execute(&st, &[&acc.domain, &acc.user, &creds.to_storage_string()]).await.map_err(&err)?;
        if n == 0 {
            Err(Error::AlreadyExists)
        } else {
            Ok(())
        }
    }

    async fn set_credentials(&self, acc: Account<'_>, creds: &StoredCredentials) -> Result<()> {
        let c = self.conn("set_credentials").await?;
        let err = self.err("set_credentials");
        let st = c
            .prepare_cached("UPDATE users SET credentials = $3 WHERE domain = $1 AND username = $2")
            .await
            .map_err(&err)?;
        let n = c.execute(&st, &[&acc.domain, &acc.user, &creds.to_storage_string()]).await.map_err(&err)?;
        if n == 0 {
            Err(Error::NotFound)
        } else {
            Ok(())
        }
    }

    async fn get_credentials(&self, acc: Account<'_>) -> Result<Option<StoredCredentials>> {
        let c = self.conn("get_credentials").await?;
        let err = self.err("get_credentials");
        let st = c
            .prepare_cached("SELECT credentials FROM users WHERE domain = $1 AND username = $2")
            .await
            .map_err(&err)?;
        let Some(row) = c.query_opt(&st, &[&acc.domain, &acc.user]).await.map_err(&err)? else {
            return Ok(None);
        };
        let s: &str = col(&row, 0, "get_credentials")?;
        StoredCredentials::from_storage_string(s).map(Some).map_err(|e| {
            Error::Backend(format!("postgres: stored credentials of {}@{} are unreadable: {e}", acc.user, acc.domain))
        })
    }

    async fn delete_user(&self, acc: Account<'_>) -> Result<bool> {
        let mut c = self.conn("delete_user").await?;
        let err = self.err("delete_user");
        let tx = c.transaction().await.map_err(&err)?;
        for sql in [
            "DELETE FROM roster_items WHERE domain = $1 AND username = $2",
            "DELETE FROM roster_versions WHERE domain = $1 AND username = $2",
            "DELETE FROM offline_messages WHERE domain = $1 AND username = $2",
            "DELETE FROM xml_blobs WHERE domain = $1 AND username = $2",
            "DELETE FROM blocklist WHERE domain = $1 AND username = $2",
            "DELETE FROM last_activity WHERE domain = $1 AND username = $2",
            "DELETE FROM mam_messages WHERE domain = $1 AND username = $2",
            "DELETE FROM mam_prefs WHERE domain = $1 AND username = $2",
            "DELETE FROM mam_prefs_jids WHERE domain = $1 AND username = $2",
        ] {
            let st = tx.prepare_cached(sql).await.map_err(&err)?;
            tx.execute(&st, &[&acc.domain, &acc.user]).await.map_err(&err)?;
        }
        let st = tx.prepare_cached("DELETE FROM users WHERE domain = $1 AND username = $2").await.map_err(&err)?;
        let n = tx.execute(&st, &[&acc.domain, &acc.user]).await.map_err(&err)?;
        tx.commit().await.map_err(&err)?;
        Ok(n > 0)
    }

    async fn list_users(&self, domain: &str) -> Result<Vec<String>> {
        let c = self.conn("list_users").await?;
        let err = self.err("list_users");
        let st =
            c.prepare_cached("SELECT username FROM users WHERE domain = $1 ORDER BY username").await.map_err(&err)?;
        let rows = c.query(&st, &[&domain]).await.map_err(&err)?;
        rows.iter().map(|r| col(r, 0, "list_users")).collect()
    }

    async fn user_exists(&self, acc: Account<'_>) -> Result<bool> {
        let c = self.conn("user_exists").await?;
        let err = self.err("user_exists");
        let st = c
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM users WHERE domain = $1 AND username = $2)")
            .await
            .map_err(&err)?;
        let row = c.query_one(&st, &[&acc.domain, &acc.user]).await.map_err(&err)?;
        col(&row, 0, "user_exists")
    }
}

/// Columns of `roster_items` in the order [`item_from_row`] expects.
const ITEM_COLUMNS: &str =
    "i.jid, i.name, i.subscription, i.ask_out, i.pending_in, i.pending_in_stanza, i.approved, i.visible, i.group_names";

/// Reads a roster item from `row`, starting at column `base`.
fn item_from_row(row: &Row, base: usize, what: &'static str) -> Result<RosterItem> {
    let jid: String = col(row, base, what)?;
    let sub: &str = col(row, base + 2, what)?;
    let subscription = Subscription::parse(sub)
        .ok_or_else(|| Error::Backend(format!("postgres: roster item {jid} has an unknown subscription {sub:?}")))?;
    Ok(RosterItem {
        name: col(row, base + 1, what)?,
        subscription,
        ask_out: col(row, base + 3, what)?,
        pending_in: col(row, base + 4, what)?,
        pending_in_stanza: col(row, base + 5, what)?,
        approved: col(row, base + 6, what)?,
        visible: col(row, base + 7, what)?,
        groups: col(row, base + 8, what)?,
        jid,
    })
}

/// Bumps the roster version inside `tx`; returns the new version.
async fn bump_version(
    tx: &deadpool_postgres::Transaction<'_>,
    acc: Account<'_>,
    err: impl Fn(tokio_postgres::Error) -> Error,
) -> Result<u64> {
    let st = tx
        .prepare_cached(
            "INSERT INTO roster_versions (domain, username, version) VALUES ($1, $2, 1)
             ON CONFLICT (domain, username) DO UPDATE SET version = roster_versions.version + 1
             RETURNING version",
        )
        .await
        .map_err(&err)?;
    let row = tx.query_one(&st, &[&acc.domain, &acc.user]).await.map_err(&err)?;
    version(col(&row, 0, "roster version bump")?)
}

#[async_trait::async_trait]
impl RosterStore for PgStore {
    async fn lock_roster(&self, acc: Account<'_>) -> Result<Option<RosterLock>> {
        let slot = self.lock_slots.clone().acquire_owned().await.expect("the semaphore is never closed");
        let c = self.conn("roster lock").await?;
        let err = self.err("roster lock");
        let st = c
            .prepare_cached("SELECT pg_advisory_lock($1, hashtext($2::TEXT || '/' || $3::TEXT))")
            .await
            .map_err(&err)?;
        c.execute(&st, &[&ROSTER_LOCK_CLASS, &acc.domain, &acc.user]).await.map_err(&err)?;
        let key = (acc.domain.to_string(), acc.user.to_string());
        Ok(Some(Box::new(PgRosterLock { conn: Some(c), key, _slot: slot })))
    }

    async fn get_roster(&self, acc: Account<'_>) -> Result<Roster> {
        let c = self.conn("get_roster").await?;
        let err = self.err("get_roster");
        // One statement, hence one snapshot: the version and the items always match.
        // The single-row `v` side keeps a row (with NULL item columns) for empty rosters.
        let st = c
            .prepare_cached(&format!(
                "SELECT v.version, {ITEM_COLUMNS}
                 FROM (SELECT COALESCE(MAX(version), 0)::BIGINT AS version FROM roster_versions
                       WHERE domain = $1 AND username = $2) AS v
                 LEFT JOIN roster_items AS i ON i.domain = $1 AND i.username = $2
                 ORDER BY i.jid"
            ))
            .await
            .map_err(&err)?;
        let rows = c.query(&st, &[&acc.domain, &acc.user]).await.map_err(&err)?;
        let mut roster = Roster::default();
        for row in &rows {
            roster.version = version(col(row, 0, "get_roster")?)?;
            if col::<Option<&str>>(row, 1, "get_roster")?.is_some() {
                roster.items.push(item_from_row(row, 1, "get_roster")?);
            }
        }
        Ok(roster)
    }

    async fn get_item(&self, acc: Account<'_>, jid: &str) -> Result<Option<RosterItem>> {
        let c = self.conn("get_item").await?;
        let err = self.err("get_item");
        let st = c
            .prepare_cached(&format!(
                "SELECT {ITEM_COLUMNS} FROM roster_items AS i WHERE i.domain = $1 AND i.username = $2 AND i.jid = $3"
            ))
            .await
            .map_err(&err)?;
        let row = c.query_opt(&st, &[&acc.domain, &acc.user, &jid]).await.map_err(&err)?;
        row.map(|r| item_from_row(&r, 0, "get_item")).transpose()
    }

    async fn put_item(&self, acc: Account<'_>, item: &RosterItem) -> Result<u64> {
        let mut c = self.conn("put_item").await?;
        let err = self.err("put_item");
        let tx = c.transaction().await.map_err(&err)?;
        let st = tx
            .prepare_cached(
                "INSERT INTO roster_items
                     (domain, username, jid, name, subscription, ask_out, pending_in, pending_in_stanza,
                      approved, visible, group_names)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 ON CONFLICT (domain, username, jid) DO UPDATE SET
                     name = EXCLUDED.name,
                     subscription = EXCLUDED.subscription,
                     ask_out = EXCLUDED.ask_out,
                     pending_in = EXCLUDED.pending_in,
                     pending_in_stanza = EXCLUDED.pending_in_stanza,
                     approved = EXCLUDED.approved,
                     visible = EXCLUDED.visible,
                     group_names = EXCLUDED.group_names",
            )
            .await
            .map_err(&err)?;
        tx.execute(
            &st,
            &[
                &acc.domain,
                &acc.user,
                &item.jid,
                &item.name,
                &item.subscription.as_str(),
                &item.ask_out,
                &item.pending_in,
                &item.pending_in_stanza,
                &item.approved,
                &item.visible,
                &item.groups,
            ],
        )
        .await
        .map_err(&err)?;
        let v = bump_version(&tx, acc, &err).await?;
        tx.commit().await.map_err(&err)?;
        Ok(v)
    }

    async fn delete_item(&self, acc: Account<'_>, jid: &str) -> Result<Option<u64>> {
        let mut c = self.conn("delete_item").await?;
        let err = self.err("delete_item");
        let tx = c.transaction().await.map_err(&err)?;
        let st = tx
            .prepare_cached("DELETE FROM roster_items WHERE domain = $1 AND username = $2 AND jid = $3")
            .await
            .map_err(&err)?;
        if tx.execute(&st, &[&acc.domain, &acc.user, &jid]).await.map_err(&err)? == 0 {
            tx.rollback().await.map_err(&err)?;
            return Ok(None);
        }
        let v = bump_version(&tx, acc, &err).await?;
        tx.commit().await.map_err(&err)?;
        Ok(Some(v))
    }
}

#[async_trait::async_trait]
impl OfflineStore for PgStore {
    async fn push(&self, acc: Account<'_>, stored_at_ms: i64, stanza: &str, limit: usize) -> Result<bool> {
        let mut c = self.conn("offline push").await?;
        let err = self.err("offline push");
        let tx = c.transaction().await.map_err(&err)?;
        // Serialises pushes per account (until commit), so the count below cannot go
        // stale before the insert and ids are handed out in commit order.
        let lock = tx
            .prepare_cached("SELECT pg_advisory_xact_lock($1, hashtext($2::TEXT || '/' || $3::TEXT))")
            .await
            .map_err(&err)?;
        tx.execute(&lock, &[&OFFLINE_LOCK_CLASS, &acc.domain, &acc.user]).await.map_err(&err)?;
        let count = tx
            .prepare_cached("SELECT COUNT(*) FROM offline_messages WHERE domain = $1 AND username = $2")
            .await
            .map_err(&err)?;
        let n: i64 = col(&tx.query_one(&count, &[&acc.domain, &acc.user]).await.map_err(&err)?, 0, "offline push")?;
        if n >= to_i64(limit) {
            tx.rollback().await.map_err(&err)?;
            return Ok(false);
        }
        let ins = tx
            .prepare_cached(
                "INSERT INTO offline_messages (domain, username, stored_at_ms, stanza) VALUES ($1, $2, $3, $4)",
            )
            .await
            .map_err(&err)?;
        tx.execute(&ins, &[&acc.domain, &acc.user, &stored_at_ms, &stanza]).await.map_err(&err)?;
        tx.commit().await.map_err(&err)?;
        Ok(true)
    }

    async fn fetch(&self, acc: Account<'_>, max: usize) -> Result<Vec<OfflineMessage>> {
        let c = self.conn("offline fetch").await?;
        let err = self.err("offline fetch");
        let st = c
            .prepare_cached(
                "SELECT id, stored_at_ms, stanza FROM offline_messages
                 WHERE domain = $1 AND username = $2 ORDER BY id LIMIT $3",
            )
            .await
            .map_err(&err)?;
        let rows = c.query(&st, &[&acc.domain, &acc.user, &to_i64(max)]).await.map_err(&err)?;
        rows.iter()
            .map(|r| {
                Ok(OfflineMessage {
                    id: col(r, 0, "offline fetch")?,
                    stored_at_ms: col(r, 1, "offline fetch")?,
                    stanza: col(r, 2, "offline fetch")?,
                })
            })
            .collect()
    }

    async fn remove_up_to(&self, acc: Account<'_>, up_to_id: i64) -> Result<()> {
        let c = self.conn("offline remove_up_to").await?;
        let err = self.err("offline remove_up_to");
        let st = c
            .prepare_cached("DELETE FROM offline_messages WHERE domain = $1 AND username = $2 AND id <= $3")
            .await
            .map_err(&err)?;
        c.execute(&st, &[&acc.domain, &acc.user, &up_to_id]).await.map_err(&err)?;
        Ok(())
    }

    async fn count(&self, acc: Account<'_>) -> Result<usize> {
        let c = self.conn("offline count").await?;
        let err = self.err("offline count");
        let st = c
            .prepare_cached("SELECT COUNT(*) FROM offline_messages WHERE domain = $1 AND username = $2")
            .await
            .map_err(&err)?;
        let n: i64 = col(&c.query_one(&st, &[&acc.domain, &acc.user]).await.map_err(&err)?, 0, "offline count")?;
        usize::try_from(n).map_err(|_| Error::Backend(format!("postgres: offline count {n} out of range")))
    }
}

#[async_trait::async_trait]
impl XmlStore for PgStore {
    async fn get_xml(&self, acc: Account<'_>, kind: &str, key: &str) -> Result<Option<String>> {
        let c = self.conn("get_xml").await?;
        let err = self.err("get_xml");
        let st = c
            .prepare_cached("SELECT xml FROM xml_blobs WHERE domain = $1 AND username = $2 AND kind = $3 AND key = $4")
            .await
            .map_err(&err)?;
        let row = c.query_opt(&st, &[&acc.domain, &acc.user, &kind, &key]).await.map_err(&err)?;
        row.map(|r| col(&r, 0, "get_xml")).transpose()
    }

    async fn set_xml(&self, acc: Account<'_>, kind: &str, key: &str, xml: &str) -> Result<()> {
        let c = self.conn("set_xml").await?;
        let err = self.err("set_xml");
        let st = c
            .prepare_cached(
                "INSERT INTO xml_blobs (domain, username, kind, key, xml) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (domain, username, kind, key) DO UPDATE SET xml = EXCLUDED.xml",
            )
            .await
            .map_err(&err)?;
        c.execute(&st, &[&acc.domain, &acc.user, &kind, &key, &xml]).await.map_err(&err)?;
        Ok(())
    }

    async fn delete_xml(&self, acc: Account<'_>, kind: &str, key: &str) -> Result<()> {
        let c = self.conn("delete_xml").await?;
        let err = self.err("delete_xml");
        let st = c
            .prepare_cached("DELETE FROM xml_blobs WHERE domain = $1 AND username = $2 AND kind = $3 AND key = $4")
            .await
            .map_err(&err)?;
        c.execute(&st, &[&acc.domain, &acc.user, &kind, &key]).await.map_err(&err)?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl BlockingStore for PgStore {
    async fn blocklist(&self, acc: Account<'_>) -> Result<Vec<String>> {
        let c = self.conn("blocklist").await?;
        let err = self.err("blocklist");
        let st = c
            .prepare_cached("SELECT jid FROM blocklist WHERE domain = $1 AND username = $2 ORDER BY jid")
            .await
            .map_err(&err)?;
        let rows = c.query(&st, &[&acc.domain, &acc.user]).await.map_err(&err)?;
        rows.iter().map(|r| col(r, 0, "blocklist")).collect()
    }

    async fn block(&self, acc: Account<'_>, jids: &[String]) -> Result<()> {
        if jids.is_empty() {
            return Ok(());
        }
        let c = self.conn("block").await?;
        let err = self.err("block");
        // One statement for the whole list; DO NOTHING also absorbs duplicates within it.
        let st = c
            .prepare_cached(
                "INSERT INTO blocklist (domain, username, jid)
                 SELECT $1::TEXT, $2::TEXT, j FROM unnest($3::TEXT[]) AS j
                 ON CONFLICT (domain, username, jid) DO NOTHING",
            )
            .await
            .map_err(&err)?;
        c.execute(&st, &[&acc.domain, &acc.user, &jids]).await.map_err(&err)?;
        Ok(())
    }

    async fn unblock(&self, acc: Account<'_>, jids: &[String]) -> Result<()> {
        let c = self.conn("unblock").await?;
        let err = self.err("unblock");
        if jids.is_empty() {
            let st =
                c.prepare_cached("DELETE FROM blocklist WHERE domain = $1 AND username = $2").await.map_err(&err)?;
            c.execute(&st, &[&acc.domain, &acc.user]).await.map_err(&err)?;
        } else {
            let st = c
                .prepare_cached("DELETE FROM blocklist WHERE domain = $1 AND username = $2 AND jid = ANY($3::TEXT[])")
                .await
                .map_err(&err)?;
            c.execute(&st, &[&acc.domain, &acc.user, &jids]).await.map_err(&err)?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl LastStore for PgStore {
    async fn set_last(&self, acc: Account<'_>, last: &LastActivity) -> Result<()> {
        let c = self.conn("set_last").await?;
        let err = self.err("set_last");
        let st = c
            .prepare_cached(
                "INSERT INTO last_activity (domain, username, at_secs, status) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (domain, username) DO UPDATE SET at_secs = EXCLUDED.at_secs, status = EXCLUDED.status",
            )
            .await
            .map_err(&err)?;
        c.execute(&st, &[&acc.domain, &acc.user, &last.at_secs, &last.status]).await.map_err(&err)?;
        Ok(())
    }

    async fn get_last(&self, acc: Account<'_>) -> Result<Option<LastActivity>> {
        let c = self.conn("get_last").await?;
        let err = self.err("get_last");
        let st = c
            .prepare_cached("SELECT at_secs, status FROM last_activity WHERE domain = $1 AND username = $2")
            .await
            .map_err(&err)?;
        let row = c.query_opt(&st, &[&acc.domain, &acc.user]).await.map_err(&err)?;
        row.map(|r| Ok(LastActivity { at_secs: col(&r, 0, "get_last")?, status: col(&r, 1, "get_last")? })).transpose()
    }
}

#[async_trait::async_trait]
impl meerkat_storage::SingletonStore for PgStore {
    async fn singleton_owner(&self, key: &str) -> Result<Option<(String, i64)>> {
        let c = self.conn("singleton_owner").await?;
        let err = self.err("singleton_owner");
        let st =
            c.prepare_cached("SELECT owner, revision FROM cluster_singletons WHERE key = $1").await.map_err(&err)?;
        let row = c.query_opt(&st, &[&key]).await.map_err(&err)?;
        row.map(|r| Ok((col(&r, 0, "singleton_owner")?, col(&r, 1, "singleton_owner")?))).transpose()
    }

    async fn create_singleton(&self, key: &str, owner: &str) -> Result<bool> {
        let c = self.conn("create_singleton").await?;
        let err = self.err("create_singleton");
        let st = c
            .prepare_cached(
                "INSERT INTO cluster_singletons (key, owner, revision) VALUES ($1, $2, 1) ON CONFLICT (key) DO NOTHING",
            )
            .await
            .map_err(&err)?;
        Ok(c.execute(&st, &[&key, &owner]).await.map_err(&err)? == 1)
    }

    async fn replace_singleton(&self, key: &str, owner: &str, revision: i64) -> Result<bool> {
        let c = self.conn("replace_singleton").await?;
        let err = self.err("replace_singleton");
        let st = c
            .prepare_cached(
                "UPDATE cluster_singletons SET owner = $2, revision = revision + 1 WHERE key = $1 AND revision = $3",
            )
            .await
            .map_err(&err)?;
        Ok(c.execute(&st, &[&key, &owner, &revision]).await.map_err(&err)? == 1)
    }

    async fn delete_singleton(&self, key: &str, owner: &str) -> Result<()> {
        let c = self.conn("delete_singleton").await?;
        let err = self.err("delete_singleton");
        let st =
            c.prepare_cached("DELETE FROM cluster_singletons WHERE key = $1 AND owner = $2").await.map_err(&err)?;
        c.execute(&st, &[&key, &owner]).await.map_err(&err)?;
        Ok(())
    }
}

/// Inserts or removes affiliation rows (`none` removes) inside a transaction.
async fn write_affiliations(
    tx: &deadpool_postgres::Transaction<'_>,
    service: &str,
    room: &str,
    changes: &[meerkat_storage::RoomAffiliation],
    err: &impl Fn(tokio_postgres::Error) -> Error,
) -> Result<()> {
    for c in changes {
        if c.affiliation == "none" {
            let st = tx
                .prepare_cached("DELETE FROM muc_affiliations WHERE service = $1 AND room = $2 AND jid = $3")
                .await
                .map_err(err)?;
            tx.execute(&st, &[&service, &room, &c.jid]).await.map_err(err)?;
        } else {
            let st = tx
                .prepare_cached(
                    "INSERT INTO muc_affiliations (service, room, jid, affiliation, reason, nick) VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (service, room, jid) DO UPDATE
                     SET affiliation = excluded.affiliation, reason = excluded.reason, nick = excluded.nick",
                )
                .await
                .map_err(err)?;
            tx.execute(&st, &[&service, &room, &c.jid, &c.affiliation, &c.reason, &c.nick]).await.map_err(err)?;
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl meerkat_storage::MucStore for PgStore {
    async fn create_room(
        &self,
        service: &str,
        room: &str,
        config: &str,
        affs: &[meerkat_storage::RoomAffiliation],
    ) -> Result<()> {
        let mut c = self.conn("create_room").await?;
        let err = self.err("create_room");
        let tx = c.transaction().await.map_err(&err)?;
        let st = tx
            .prepare_cached("INSERT INTO muc_rooms (service, room, config) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .await
            .map_err(&err)?;
        if tx.execute(&st, &[&service, &room, &config]).await.map_err(&err)? == 0 {
            return Err(Error::AlreadyExists);
        }
        write_affiliations(&tx, service, room, affs, &err).await?;
        tx.commit().await.map_err(&err)
    }

    async fn update_room(&self, service: &str, room: &str, config: &str) -> Result<()> {
        let c = self.conn("update_room").await?;
        let err = self.err("update_room");
        let st = c
            .prepare_cached("UPDATE muc_rooms SET config = $3 WHERE service = $1 AND room = $2")
            .await
            .map_err(&err)?;
        match c.execute(&st, &[&service, &room, &config]).await.map_err(&err)? {
            0 => Err(Error::NotFound),
            _ => Ok(()),
        }
    }

    async fn set_affiliations(
        &self,
        service: &str,
        room: &str,
        changes: &[meerkat_storage::RoomAffiliation],
    ) -> Result<()> {
        let mut c = self.conn("set_affiliations").await?;
        let err = self.err("set_affiliations");
        let tx = c.transaction().await.map_err(&err)?;
        // The room row is locked, so a concurrent delete cannot leave orphan rows.
        let st = tx
            .prepare_cached("SELECT 1 FROM muc_rooms WHERE service = $1 AND room = $2 FOR UPDATE")
            .await
            .map_err(&err)?;
        if tx.query_opt(&st, &[&service, &room]).await.map_err(&err)?.is_none() {
            return Err(Error::NotFound);
        }
        write_affiliations(&tx, service, room, changes, &err).await?;
        tx.commit().await.map_err(&err)
    }

    async fn load_room(&self, service: &str, room: &str) -> Result<Option<meerkat_storage::StoredRoom>> {
        let c = self.conn("load_room").await?;
        let err = self.err("load_room");
        let st =
            c.prepare_cached("SELECT config FROM muc_rooms WHERE service = $1 AND room = $2").await.map_err(&err)?;
        let Some(row) = c.query_opt(&st, &[&service, &room]).await.map_err(&err)? else { return Ok(None) };
        let config: String = col(&row, 0, "load_room")?;
        let st = c
            .prepare_cached(
                "SELECT jid, affiliation, reason, nick FROM muc_affiliations WHERE service = $1 AND room = $2 ORDER BY jid",
            )
            .await
            .map_err(&err)?;
        let affiliations = c
            .query(&st, &[&service, &room])
            .await
            .map_err(&err)?
            .iter()
            .map(|r| {
                Ok(meerkat_storage::RoomAffiliation {
                    jid: col(r, 0, "load_room")?,
                    affiliation: col(r, 1, "load_room")?,
                    reason: col(r, 2, "load_room")?,
                    nick: col(r, 3, "load_room")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(meerkat_storage::StoredRoom { config, affiliations }))
    }

    async fn delete_room(&self, service: &str, room: &str) -> Result<bool> {
        let mut c = self.conn("delete_room").await?;
        let err = self.err("delete_room");
        let tx = c.transaction().await.map_err(&err)?;
        let st = tx.prepare_cached("DELETE FROM muc_rooms WHERE service = $1 AND room = $2").await.map_err(&err)?;
        let n = tx.execute(&st, &[&service, &room]).await.map_err(&err)?;
        for sql in [
            "DELETE FROM muc_affiliations WHERE service = $1 AND room = $2",
            "DELETE FROM mam_messages WHERE domain = $1 AND username = $2",
        ] {
            let st = tx.prepare_cached(sql).await.map_err(&err)?;
            tx.execute(&st, &[&service, &room]).await.map_err(&err)?;
        }
        tx.commit().await.map_err(&err)?;
        Ok(n > 0)
    }

    async fn list_rooms(&self, service: &str) -> Result<Vec<(String, String)>> {
        let c = self.conn("list_rooms").await?;
        let err = self.err("list_rooms");
        let st = c
            .prepare_cached("SELECT room, config FROM muc_rooms WHERE service = $1 ORDER BY room")
            .await
            .map_err(&err)?;
        c.query(&st, &[&service])
            .await
            .map_err(&err)?
            .iter()
            .map(|r| Ok((col(r, 0, "list_rooms")?, col(r, 1, "list_rooms")?)))
            .collect()
    }

    async fn rooms_of(&self, service: &str, jid: &str) -> Result<Vec<(String, String)>> {
        let c = self.conn("rooms_of").await?;
        let err = self.err("rooms_of");
        let st = c
            .prepare_cached(
                "SELECT room, affiliation FROM muc_affiliations WHERE service = $1 AND jid = $2 ORDER BY room",
            )
            .await
            .map_err(&err)?;
        c.query(&st, &[&service, &jid])
            .await
            .map_err(&err)?
            .iter()
            .map(|r| Ok((col(r, 0, "rooms_of")?, col(r, 1, "rooms_of")?)))
            .collect()
    }
}
