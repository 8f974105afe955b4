//! The storage traits implemented on SQLite.
//!
//! Each method copies its arguments into owned values, then runs one closure on a
//! connection thread (see the crate docs): reads on a reader connection, changes on
//! the writer. Every statement goes through rusqlite's prepared-statement cache.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use meerkat_storage::{
    Account, AuthStore, BlockingStore, Error, LastActivity, LastStore, OfflineMessage, OfflineStore, Result, Roster,
    RosterItem, RosterStore, StoredCredentials, Subscription, XmlStore,
};
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use crate::archive::{delete_archive, Unindexed};
use crate::{db_err, groups, Options, Pool, Target};

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Owned `(domain, user)` of an account, to move into a connection closure.
fn owned(acc: Account<'_>) -> (String, String) {
    (acc.domain.to_owned(), acc.user.to_owned())
}

/// A count or limit as an SQLite integer.
fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The SQLite backend; implements every storage trait.
pub(crate) struct SqliteStore {
    pub(crate) pool: Pool,
    /// Archive rows appended by this process and not yet indexed.
    pub(crate) unindexed: Arc<Unindexed>,
}

impl SqliteStore {
    pub(crate) fn new(pool: Pool, opts: &Options) -> Self {
        let unindexed = Unindexed::new(opts.archive_index_owner, opts.archive_index_batch, pool.archive_indexed);
        SqliteStore { pool, unindexed: Arc::new(unindexed) }
    }

    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        self.pool.run(Target::Reader, f).await
    }

    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        self.pool.run(Target::Writer, f).await
    }
}

/// Starts a write transaction that takes the database write lock immediately.
pub(crate) fn write_tx<'c>(conn: &'c mut Connection, what: &'static str) -> Result<rusqlite::Transaction<'c>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db_err(what))
}

#[async_trait::async_trait]
impl AuthStore for SqliteStore {
    async fn create_user(&self, acc: Account<'_>, creds: &StoredCredentials) -> Result<()> {
        let (d, u) = owned(acc);
        let c = creds.to_storage_string();
        self.write(move |conn| {
            let n = conn
                .prepare_cached(
                    "INSERT INTO users (domain, username, credentials, created_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (domain, username) DO NOTHING",
                )
                .and_then(|mut st| st.execute(params![d, u, c, now_secs()]))
                .map_err(db_err("create_user"))?;
            if n == 0 {
                Err(Error::AlreadyExists)
            } else {
                Ok(())
            }
        })
        .await
    }

    async fn set_credentials(&self, acc: Account<'_>, creds: &StoredCredentials) -> Result<()> {
        let (d, u) = owned(acc);
        let c = creds.to_storage_string();
        self.write(move |conn| {
            let n = conn
                .prepare_cached("UPDATE users SET credentials = ?3 WHERE domain = ?1 AND username = ?2")
                .and_then(|mut st| st.execute(params![d, u, c]))
                .map_err(db_err("set_credentials"))?;
            if n == 0 {
                Err(Error::NotFound)
            } else {
                Ok(())
            }
        })
        .await
    }

    async fn get_credentials(&self, acc: Account<'_>) -> Result<Option<StoredCredentials>> {
        let (d, u) = owned(acc);
        self.read(move |conn| {
            let s: Option<String> = conn
                .prepare_cached("SELECT credentials FROM users WHERE domain = ?1 AND username = ?2")
                .and_then(|mut st| st.query_row(params![d, u], |r| r.get(0)).optional())
                .map_err(db_err("get_credentials"))?;
            s.map(|s| {
                StoredCredentials::from_storage_string(&s)
                    .map_err(|e| Error::Backend(format!("sqlite: stored credentials of {u}@{d} are unreadable: {e}")))
            })
            .transpose()
        })
        .await
    }

    async fn delete_user(&self, acc: Account<'_>) -> Result<bool> {
        let (d, u) = owned(acc);
        let unindexed = self.unindexed.clone();
        self.write(move |conn| {
            let err = db_err("delete_user");
            unindexed.without(&d, &u, |archive_waiting| {
                let tx = write_tx(conn, "delete_user")?;
                for sql in [
                    "DELETE FROM roster_items WHERE domain = ?1 AND username = ?2",
                    "DELETE FROM roster_versions WHERE domain = ?1 AND username = ?2",
                    "DELETE FROM offline_messages WHERE domain = ?1 AND username = ?2",
                    "DELETE FROM xml_blobs WHERE domain = ?1 AND username = ?2",
                    "DELETE FROM blocklist WHERE domain = ?1 AND username = ?2",
                    "DELETE FROM last_activity WHERE domain = ?1 AND username = ?2",
                    "DELETE FROM mam_prefs WHERE domain = ?1 AND username = ?2",
                    "DELETE FROM mam_prefs_jids WHERE domain = ?1 AND username = ?2",
                ] {
                    tx.prepare_cached(sql).and_then(|mut st| st.execute(params![d, u])).map_err(&err)?;
                }
                delete_archive(&tx, &d, &u, archive_waiting).map_err(&err)?;
                let n = tx
                    .prepare_cached("DELETE FROM users WHERE domain = ?1 AND username = ?2")
                    .and_then(|mut st| st.execute(params![d, u]))
                    .map_err(&err)?;
                tx.commit().map_err(&err)?;
                Ok(n > 0)
            })
        })
        .await
    }

    async fn list_users(&self, domain: &str) -> Result<Vec<String>> {
        let d = domain.to_owned();
        self.read(move |conn| {
            let mut st = conn
                .prepare_cached("SELECT username FROM users WHERE domain = ?1 ORDER BY username")
                .map_err(db_err("list_users"))?;
            let rows = st.query_map(params![d], |r| r.get(0)).map_err(db_err("list_users"))?;
            rows.collect::<rusqlite::Result<Vec<String>>>().map_err(db_err("list_users"))
        })
        .await
    }

    async fn user_exists(&self, acc: Account<'_>) -> Result<bool> {
        let (d, u) = owned(acc);
        self.read(move |conn| {
            conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM users WHERE domain = ?1 AND username = ?2)")
                .and_then(|mut st| st.query_row(params![d, u], |r| r.get(0)))
                .map_err(db_err("user_exists"))
        })
        .await
    }
}

/// Columns of `roster_items` in the order [`read_item`] expects.
const ITEM_COLUMNS: &str =
    "jid, name, subscription, ask_out, pending_in, pending_in_stanza, approved, visible, groups_json";

/// A roster row as stored, before the checks that can fail.
struct RawItem {
    jid: String,
    name: Option<String>,
    subscription: String,
    ask_out: bool,
    pending_in: bool,
    pending_in_stanza: Option<String>,
    approved: bool,
    visible: bool,
    groups: String,
}

fn read_item(r: &Row<'_>) -> rusqlite::Result<RawItem> {
    Ok(RawItem {
        jid: r.get(0)?,
        name: r.get(1)?,
        subscription: r.get(2)?,
        ask_out: r.get(3)?,
        pending_in: r.get(4)?,
        pending_in_stanza: r.get(5)?,
        approved: r.get(6)?,
        visible: r.get(7)?,
        groups: r.get(8)?,
    })
}

impl RawItem {
    fn into_item(self) -> Result<RosterItem> {
        let subscription = Subscription::parse(&self.subscription).ok_or_else(|| {
            Error::Backend(format!(
                "sqlite: roster item {} has an unknown subscription {:?}",
                self.jid, self.subscription
            ))
        })?;
        let groups = groups::decode(&self.groups)
            .map_err(|e| Error::Backend(format!("sqlite: roster item {} has unreadable groups: {e}", self.jid)))?;
        Ok(RosterItem {
            jid: self.jid,
            name: self.name,
            subscription,
            ask_out: self.ask_out,
            pending_in: self.pending_in,
            pending_in_stanza: self.pending_in_stanza,
            approved: self.approved,
            visible: self.visible,
            groups,
        })
    }
}

/// Bumps the account's roster version inside `tx` and returns the new version.
fn bump_version(tx: &rusqlite::Transaction<'_>, d: &str, u: &str) -> Result<u64> {
    let v: i64 = tx
        .prepare_cached(
            "INSERT INTO roster_versions (domain, username, version) VALUES (?1, ?2, 1)
             ON CONFLICT (domain, username) DO UPDATE SET version = version + 1
             RETURNING version",
        )
        .and_then(|mut st| st.query_row(params![d, u], |r| r.get(0)))
        .map_err(db_err("roster version bump"))?;
    u64::try_from(v).map_err(|_| Error::Backend(format!("sqlite: roster version {v} of {u}@{d} is negative")))
}

#[async_trait::async_trait]
impl RosterStore for SqliteStore {
    async fn get_roster(&self, acc: Account<'_>) -> Result<Roster> {
        let (d, u) = owned(acc);
        self.read(move |conn| {
            let err = db_err("get_roster");
            // One read transaction: the version and the items come from the same snapshot.
            let tx = conn.transaction().map_err(&err)?;
            let version: Option<i64> = tx
                .prepare_cached("SELECT version FROM roster_versions WHERE domain = ?1 AND username = ?2")
                .and_then(|mut st| st.query_row(params![d, u], |r| r.get(0)).optional())
                .map_err(&err)?;
            let version = u64::try_from(version.unwrap_or(0))
                .map_err(|_| Error::Backend(format!("sqlite: roster version of {u}@{d} is negative")))?;
            let raw = {
                let mut st = tx
                    .prepare_cached(&format!(
                        "SELECT {ITEM_COLUMNS} FROM roster_items WHERE domain = ?1 AND username = ?2 ORDER BY jid"
                    ))
                    .map_err(&err)?;
                let rows = st.query_map(params![d, u], read_item).map_err(&err)?;
                rows.collect::<rusqlite::Result<Vec<RawItem>>>().map_err(&err)?
            };
            tx.finish().map_err(&err)?;
            let items = raw.into_iter().map(RawItem::into_item).collect::<Result<Vec<_>>>()?;
            Ok(Roster { version, items })
        })
        .await
    }

    async fn get_item(&self, acc: Account<'_>, jid: &str) -> Result<Option<RosterItem>> {
        let (d, u) = owned(acc);
        let jid = jid.to_owned();
        self.read(move |conn| {
            let raw = conn
                .prepare_cached(&format!(
                    "SELECT {ITEM_COLUMNS} FROM roster_items WHERE domain = ?1 AND username = ?2 AND jid = ?3"
                ))
                .and_then(|mut st| st.query_row(params![d, u, jid], read_item).optional())
                .map_err(db_err("get_item"))?;
            raw.map(RawItem::into_item).transpose()
        })
        .await
    }

    async fn put_item(&self, acc: Account<'_>, item: &RosterItem) -> Result<u64> {
        let (d, u) = owned(acc);
        let it = item.clone();
        let groups = groups::encode(&item.groups);
        self.write(move |conn| {
            let err = db_err("put_item");
            let tx = write_tx(conn, "put_item")?;
            tx.prepare_cached(
                "INSERT INTO roster_items
                     (domain, username, jid, name, subscription, ask_out, pending_in, pending_in_stanza,
                      approved, visible, groups_json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (domain, username, jid) DO UPDATE SET
                     name = excluded.name,
                     subscription = excluded.subscription,
                     ask_out = excluded.ask_out,
                     pending_in = excluded.pending_in,
                     pending_in_stanza = excluded.pending_in_stanza,
                     approved = excluded.approved,
                     visible = excluded.visible,
                     groups_json = excluded.groups_json",
            )
            .and_then(|mut st| {
                st.execute(params![
                    d,
                    u,
                    it.jid,
                    it.name,
                    it.subscription.as_str(),
                    it.ask_out,
                    it.pending_in,
                    it.pending_in_stanza,
                    it.approved,
                    it.visible,
                    groups
                ])
            })
            .map_err(&err)?;
            let v = bump_version(&tx, &d, &u)?;
            tx.commit().map_err(&err)?;
            Ok(v)
        })
        .await
    }

    async fn delete_item(&self, acc: Account<'_>, jid: &str) -> Result<Option<u64>> {
        let (d, u) = owned(acc);
        let jid = jid.to_owned();
        self.write(move |conn| {
            let err = db_err("delete_item");
            let tx = write_tx(conn, "delete_item")?;
            let n = tx
                .prepare_cached("DELETE FROM roster_items WHERE domain = ?1 AND username = ?2 AND jid = ?3")
                .and_then(|mut st| st.execute(params![d, u, jid]))
                .map_err(&err)?;
            if n == 0 {
                return Ok(None); // the transaction rolls back on drop; nothing changed
            }
            let v = bump_version(&tx, &d, &u)?;
            tx.commit().map_err(&err)?;
            Ok(Some(v))
        })
        .await
    }
}

#[async_trait::async_trait]
impl OfflineStore for SqliteStore {
    async fn push(&self, acc: Account<'_>, stored_at_ms: i64, stanza: &str, limit: usize) -> Result<bool> {
        let (d, u) = owned(acc);
        let stanza = stanza.to_owned();
        self.write(move |conn| {
            let err = db_err("offline push");
            let tx = write_tx(conn, "offline push")?;
            let n: i64 = tx
                .prepare_cached("SELECT COUNT(*) FROM offline_messages WHERE domain = ?1 AND username = ?2")
                .and_then(|mut st| st.query_row(params![d, u], |r| r.get(0)))
                .map_err(&err)?;
            if n >= to_i64(limit) {
                return Ok(false);
            }
            tx.prepare_cached(
                "INSERT INTO offline_messages (domain, username, stored_at_ms, stanza) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut st| st.execute(params![d, u, stored_at_ms, stanza]))
            .map_err(&err)?;
            tx.commit().map_err(&err)?;
            Ok(true)
        })
        .await
    }

    async fn fetch(&self, acc: Account<'_>, max: usize) -> Result<Vec<OfflineMessage>> {
        let (d, u) = owned(acc);
        self.read(move |conn| {
            let err = db_err("offline fetch");
            let mut st = conn
                .prepare_cached(
                    "SELECT id, stored_at_ms, stanza FROM offline_messages
                     WHERE domain = ?1 AND username = ?2 ORDER BY id LIMIT ?3",
                )
                .map_err(&err)?;
            let rows = st
                .query_map(params![d, u, to_i64(max)], |r| {
                    Ok(OfflineMessage { id: r.get(0)?, stored_at_ms: r.get(1)?, stanza: r.get(2)? })
                })
                .map_err(&err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(&err)
        })
        .await
    }

    async fn remove_up_to(&self, acc: Account<'_>, up_to_id: i64) -> Result<()> {
        let (d, u) = owned(acc);
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM offline_messages WHERE domain = ?1 AND username = ?2 AND id <= ?3")
                .and_then(|mut st| st.execute(params![d, u, up_to_id]))
                .map_err(db_err("offline remove_up_to"))?;
            Ok(())
        })
        .await
    }

    async fn count(&self, acc: Account<'_>) -> Result<usize> {
        let (d, u) = owned(acc);
        self.read(move |conn| {
            let n: i64 = conn
                .prepare_cached("SELECT COUNT(*) FROM offline_messages WHERE domain = ?1 AND username = ?2")
                .and_then(|mut st| st.query_row(params![d, u], |r| r.get(0)))
                .map_err(db_err("offline count"))?;
            usize::try_from(n).map_err(|_| Error::Backend(format!("sqlite: offline count {n} out of range")))
        })
        .await
    }
}

#[async_trait::async_trait]
impl XmlStore for SqliteStore {
    async fn get_xml(&self, acc: Account<'_>, kind: &str, key: &str) -> Result<Option<String>> {
        let (d, u) = owned(acc);
        let (kind, key) = (kind.to_owned(), key.to_owned());
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT xml FROM xml_blobs WHERE domain = ?1 AND username = ?2 AND kind = ?3 AND key = ?4",
            )
            .and_then(|mut st| st.query_row(params![d, u, kind, key], |r| r.get(0)).optional())
            .map_err(db_err("get_xml"))
        })
        .await
    }

    async fn set_xml(&self, acc: Account<'_>, kind: &str, key: &str, xml: &str) -> Result<()> {
        let (d, u) = owned(acc);
        let (kind, key, xml) = (kind.to_owned(), key.to_owned(), xml.to_owned());
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO xml_blobs (domain, username, kind, key, xml) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (domain, username, kind, key) DO UPDATE SET xml = excluded.xml",
            )
            .and_then(|mut st| st.execute(params![d, u, kind, key, xml]))
            .map_err(db_err("set_xml"))?;
            Ok(())
        })
        .await
    }

    async fn delete_xml(&self, acc: Account<'_>, kind: &str, key: &str) -> Result<()> {
        let (d, u) = owned(acc);
        let (kind, key) = (kind.to_owned(), key.to_owned());
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM xml_blobs WHERE domain = ?1 AND username = ?2 AND kind = ?3 AND key = ?4")
                .and_then(|mut st| st.execute(params![d, u, kind, key]))
                .map_err(db_err("delete_xml"))?;
            Ok(())
        })
        .await
    }
}

#[async_trait::async_trait]
impl BlockingStore for SqliteStore {
    async fn blocklist(&self, acc: Account<'_>) -> Result<Vec<String>> {
        let (d, u) = owned(acc);
        self.read(move |conn| {
            let err = db_err("blocklist");
            let mut st = conn
                .prepare_cached("SELECT jid FROM blocklist WHERE domain = ?1 AND username = ?2 ORDER BY jid")
                .map_err(&err)?;
            let rows = st.query_map(params![d, u], |r| r.get(0)).map_err(&err)?;
            rows.collect::<rusqlite::Result<Vec<String>>>().map_err(&err)
        })
        .await
    }

    async fn block(&self, acc: Account<'_>, jids: &[String]) -> Result<()> {
        if jids.is_empty() {
            return Ok(());
        }
        let (d, u) = owned(acc);
        let jids = jids.to_vec();
        self.write(move |conn| {
            let err = db_err("block");
            let tx = write_tx(conn, "block")?;
            {
                let mut st = tx
                    .prepare_cached(
                        "INSERT INTO blocklist (domain, username, jid) VALUES (?1, ?2, ?3)
                         ON CONFLICT (domain, username, jid) DO NOTHING",
                    )
                    .map_err(&err)?;
                for j in &jids {
                    st.execute(params![d, u, j]).map_err(&err)?;
                }
            }
            tx.commit().map_err(&err)
        })
        .await
    }

    async fn unblock(&self, acc: Account<'_>, jids: &[String]) -> Result<()> {
        let (d, u) = owned(acc);
        let jids = jids.to_vec();
        self.write(move |conn| {
            let err = db_err("unblock");
            if jids.is_empty() {
                conn.prepare_cached("DELETE FROM blocklist WHERE domain = ?1 AND username = ?2")
                    .and_then(|mut st| st.execute(params![d, u]))
                    .map_err(&err)?;
                return Ok(());
            }
            let tx = write_tx(conn, "unblock")?;
            {
                let mut st = tx
                    .prepare_cached("DELETE FROM blocklist WHERE domain = ?1 AND username = ?2 AND jid = ?3")
                    .map_err(&err)?;
                for j in &jids {
                    st.execute(params![d, u, j]).map_err(&err)?;
                }
            }
            tx.commit().map_err(&err)
        })
        .await
    }
}

#[async_trait::async_trait]
impl LastStore for SqliteStore {
    async fn set_last(&self, acc: Account<'_>, last: &LastActivity) -> Result<()> {
        let (d, u) = owned(acc);
        let (at, status) = (last.at_secs, last.status.clone());
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO last_activity (domain, username, at_secs, status) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (domain, username) DO UPDATE SET at_secs = excluded.at_secs, status = excluded.status",
            )
            .and_then(|mut st| st.execute(params![d, u, at, status]))
            .map_err(db_err("set_last"))?;
            Ok(())
        })
        .await
    }

    async fn get_last(&self, acc: Account<'_>) -> Result<Option<LastActivity>> {
        let (d, u) = owned(acc);
        self.read(move |conn| {
            conn.prepare_cached("SELECT at_secs, status FROM last_activity WHERE domain = ?1 AND username = ?2")
                .and_then(|mut st| {
                    st.query_row(params![d, u], |r| Ok(LastActivity { at_secs: r.get(0)?, status: r.get(1)? }))
                        .optional()
                })
                .map_err(db_err("get_last"))
        })
        .await
    }
}

#[async_trait::async_trait]
impl meerkat_storage::SingletonStore for SqliteStore {
    async fn singleton_owner(&self, key: &str) -> Result<Option<(String, i64)>> {
        let key = key.to_string();
        self.read(move |conn| {
            conn.prepare_cached("SELECT owner, revision FROM cluster_singletons WHERE key = ?1")
                .and_then(|mut st| st.query_row(params![key], |r| Ok((r.get(0)?, r.get(1)?))).optional())
                .map_err(db_err("singleton_owner"))
        })
        .await
    }

    async fn create_singleton(&self, key: &str, owner: &str) -> Result<bool> {
        let (key, owner) = (key.to_string(), owner.to_string());
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO cluster_singletons (key, owner, revision) VALUES (?1, ?2, 1) ON CONFLICT (key) DO NOTHING",
            )
            .and_then(|mut st| st.execute(params![key, owner]))
            .map(|n| n == 1)
            .map_err(db_err("create_singleton"))
        })
        .await
    }

    async fn replace_singleton(&self, key: &str, owner: &str, revision: i64) -> Result<bool> {
        let (key, owner) = (key.to_string(), owner.to_string());
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE cluster_singletons SET owner = ?2, revision = revision + 1 WHERE key = ?1 AND revision = ?3",
            )
            .and_then(|mut st| st.execute(params![key, owner, revision]))
            .map(|n| n == 1)
            .map_err(db_err("replace_singleton"))
        })
        .await
    }

    async fn delete_singleton(&self, key: &str, owner: &str) -> Result<()> {
        let (key, owner) = (key.to_string(), owner.to_string());
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM cluster_singletons WHERE key = ?1 AND owner = ?2")
                .and_then(|mut st| st.execute(params![key, owner]))
                .map(|_| ())
                .map_err(db_err("delete_singleton"))
        })
        .await
    }
}

/// Inserts or removes affiliation rows (`none` removes) inside a transaction.
fn write_affiliations(
    tx: &rusqlite::Transaction<'_>,
    service: &str,
    room: &str,
    changes: &[meerkat_storage::RoomAffiliation],
    what: &'static str,
) -> Result<()> {
    for c in changes {
        if c.affiliation == "none" {
            tx.prepare_cached("DELETE FROM muc_affiliations WHERE service = ?1 AND room = ?2 AND jid = ?3")
                .and_then(|mut st| st.execute(params![service, room, c.jid]))
                .map_err(db_err(what))?;
        } else {
            tx.prepare_cached(
                "INSERT INTO muc_affiliations (service, room, jid, affiliation, reason, nick) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (service, room, jid) DO UPDATE
                 SET affiliation = excluded.affiliation, reason = excluded.reason, nick = excluded.nick",
            )
            .and_then(|mut st| st.execute(params![service, room, c.jid, c.affiliation, c.reason, c.nick]))
            .map_err(db_err(what))?;
        }
    }
    Ok(())
}

/// Whether a room row exists (inside a transaction).
fn room_exists(conn: &Connection, service: &str, room: &str, what: &'static str) -> Result<bool> {
    conn.prepare_cached("SELECT 1 FROM muc_rooms WHERE service = ?1 AND room = ?2")
        .and_then(|mut st| st.exists(params![service, room]))
        .map_err(db_err(what))
}

#[async_trait::async_trait]
impl meerkat_storage::MucStore for SqliteStore {
    async fn create_room(
        &self,
        service: &str,
        room: &str,
        config: &str,
        affs: &[meerkat_storage::RoomAffiliation],
    ) -> Result<()> {
        let (service, room, config, affs) = (service.to_owned(), room.to_owned(), config.to_owned(), affs.to_vec());
        self.write(move |conn| {
            let tx = write_tx(conn, "create_room")?;
            let n = tx
                .prepare_cached(
                    "INSERT INTO muc_rooms (service, room, config) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                )
                .and_then(|mut st| st.execute(params![service, room, config]))
                .map_err(db_err("create_room"))?;
            if n == 0 {
                return Err(Error::AlreadyExists);
            }
            write_affiliations(&tx, &service, &room, &affs, "create_room")?;
            tx.commit().map_err(db_err("create_room"))
        })
        .await
    }

    async fn update_room(&self, service: &str, room: &str, config: &str) -> Result<()> {
        let (service, room, config) = (service.to_owned(), room.to_owned(), config.to_owned());
        self.write(move |conn| {
            let n = conn
                .prepare_cached("UPDATE muc_rooms SET config = ?3 WHERE service = ?1 AND room = ?2")
                .and_then(|mut st| st.execute(params![service, room, config]))
                .map_err(db_err("update_room"))?;
            if n == 0 {
                Err(Error::NotFound)
            } else {
                Ok(())
            }
        })
        .await
    }

    async fn set_affiliations(
        &self,
        service: &str,
        room: &str,
        changes: &[meerkat_storage::RoomAffiliation],
    ) -> Result<()> {
        let (service, room, changes) = (service.to_owned(), room.to_owned(), changes.to_vec());
        self.write(move |conn| {
            let tx = write_tx(conn, "set_affiliations")?;
            if !room_exists(&tx, &service, &room, "set_affiliations")? {
                return Err(Error::NotFound);
            }
            write_affiliations(&tx, &service, &room, &changes, "set_affiliations")?;
            tx.commit().map_err(db_err("set_affiliations"))
        })
        .await
    }

    async fn load_room(&self, service: &str, room: &str) -> Result<Option<meerkat_storage::StoredRoom>> {
        let (service, room) = (service.to_owned(), room.to_owned());
        self.read(move |conn| {
            let err = db_err("load_room");
            let config: Option<String> = conn
                .prepare_cached("SELECT config FROM muc_rooms WHERE service = ?1 AND room = ?2")
                .and_then(|mut st| st.query_row(params![service, room], |r| r.get(0)).optional())
                .map_err(&err)?;
            let Some(config) = config else { return Ok(None) };
            let mut st = conn
                .prepare_cached(
                    "SELECT jid, affiliation, reason, nick FROM muc_affiliations WHERE service = ?1 AND room = ?2 ORDER BY jid",
                )
                .map_err(&err)?;
            let affiliations = st
                .query_map(params![service, room], |r| {
                    Ok(meerkat_storage::RoomAffiliation {
                        jid: r.get(0)?,
                        affiliation: r.get(1)?,
                        reason: r.get(2)?,
                        nick: r.get(3)?,
                    })
                })
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(&err)?;
            Ok(Some(meerkat_storage::StoredRoom { config, affiliations }))
        })
        .await
    }

    async fn delete_room(&self, service: &str, room: &str) -> Result<bool> {
        let (service, room) = (service.to_owned(), room.to_owned());
        let unindexed = self.unindexed.clone();
        self.write(move |conn| {
            let err = db_err("delete_room");
            // A room's archive has the service as its domain and the room as its user.
            unindexed.without(&service, &room, |archive_waiting| {
                let tx = write_tx(conn, "delete_room")?;
                let n = tx
                    .prepare_cached("DELETE FROM muc_rooms WHERE service = ?1 AND room = ?2")
                    .and_then(|mut st| st.execute(params![service, room]))
                    .map_err(&err)?;
                tx.prepare_cached("DELETE FROM muc_affiliations WHERE service = ?1 AND room = ?2")
                    .and_then(|mut st| st.execute(params![service, room]))
                    .map_err(&err)?;
                delete_archive(&tx, &service, &room, archive_waiting).map_err(&err)?;
                tx.commit().map_err(&err)?;
                Ok(n > 0)
            })
        })
        .await
    }

    async fn list_rooms(&self, service: &str) -> Result<Vec<(String, String)>> {
        let service = service.to_owned();
        self.read(move |conn| {
            conn.prepare_cached("SELECT room, config FROM muc_rooms WHERE service = ?1 ORDER BY room")
                .and_then(|mut st| {
                    st.query_map(params![service], |r| Ok((r.get(0)?, r.get(1)?)))
                        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                })
                .map_err(db_err("list_rooms"))
        })
        .await
    }

    async fn rooms_of(&self, service: &str, jid: &str) -> Result<Vec<(String, String)>> {
        let (service, jid) = (service.to_owned(), jid.to_owned());
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT room, affiliation FROM muc_affiliations WHERE service = ?1 AND jid = ?2 ORDER BY room",
            )
            .and_then(|mut st| {
                st.query_map(params![service, jid], |r| Ok((r.get(0)?, r.get(1)?)))
                    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            })
            .map_err(db_err("rooms_of"))
        })
        .await
    }
}
