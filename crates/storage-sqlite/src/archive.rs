//! [`ArchiveStore`] on SQLite: batched appends in one `BEGIN IMMEDIATE` transaction,
//! keyset range scans over the `(owner, id)` primary key or the `(owner, with_jid,
//! id)` index, fetching one row more than the page to learn whether it is complete.

use std::collections::HashMap;
use std::sync::Arc;

use meerkat_storage::{
    Account, ArchiveEntry, ArchiveMode, ArchivePage, ArchivePrefs, ArchiveQuery, ArchiveStore, ArchivedMessage,
    Direction, Error, PageFrom, Result,
};
use rusqlite::{params, params_from_iter, OptionalExtension, Row};

use crate::db_err;
use crate::store::{write_tx, SqliteStore};

const COLUMNS: &str = "id, with_jid, with_resource, direction, sender, origin_id, stanza";

/// The archive owner's key for the account in parameters 1 and 2 (`NULL`, which
/// matches no row, when it never had an archive).
macro_rules! owner {
    () => {
        "(SELECT owner FROM mam_owners WHERE domain = ?1 AND username = ?2)"
    };
}

/// [`meerkat_storage::RETRACT_WINDOW`] as an SQL parameter.
const RETRACT_WINDOW: i64 = meerkat_storage::RETRACT_WINDOW as i64;

fn read_row(r: &Row<'_>) -> rusqlite::Result<(ArchivedMessage, String)> {
    let direction: String = r.get(3)?;
    Ok((
        ArchivedMessage {
            id: r.get(0)?,
            with_jid: r.get(1)?,
            with_resource: r.get(2)?,
            direction: Direction::Incoming,
            sender: r.get(4)?,
            origin_id: r.get(5)?,
            stanza: r.get(6)?,
        },
        direction,
    ))
}

fn finish(raw: (ArchivedMessage, String)) -> Result<ArchivedMessage> {
    let (mut m, d) = raw;
    m.direction = Direction::parse(&d)
        .ok_or_else(|| Error::Backend(format!("sqlite: archive row {} has direction {d:?}", m.id)))?;
    Ok(m)
}

#[async_trait::async_trait]
impl ArchiveStore for SqliteStore {
    async fn append(&self, rows: Arc<Vec<ArchiveEntry>>) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        self.write(move |conn| {
            let err = db_err("archive append");
            let tx = write_tx(conn, "archive append")?;
            {
                let mut find = tx.prepare_cached(concat!("SELECT ", owner!())).map_err(&err)?;
                let mut add =
                    tx.prepare_cached("INSERT INTO mam_owners (domain, username) VALUES (?1, ?2)").map_err(&err)?;
                let mut st = tx
                    .prepare_cached(
                        "INSERT INTO mam_messages (owner, id, with_jid, with_resource, direction, sender,
                         origin_id, stanza) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (owner, id) DO NOTHING",
                    )
                    .map_err(&err)?;
                // Each owner's key is looked up (or created) once per batch, inside
                // the transaction, so it cannot be stale.
                let mut owners: HashMap<(&str, &str), i64> = HashMap::new();
                for r in rows.iter() {
                    let m = &r.msg;
                    let owner = match owners.get(&(r.domain.as_str(), r.user.as_str())) {
                        Some(&o) => o,
                        None => {
                            let found: Option<i64> =
                                find.query_row(params![r.domain, r.user], |row| row.get(0)).map_err(&err)?;
                            let o = match found {
                                Some(o) => o,
                                None => add.insert(params![r.domain, r.user]).map_err(&err)?,
                            };
                            owners.insert((r.domain.as_str(), r.user.as_str()), o);
                            o
                        }
                    };
                    st.execute(params![
                        owner,
                        m.id,
                        m.with_jid,
                        m.with_resource,
                        m.direction.as_str(),
                        m.sender,
                        m.origin_id,
                        m.stanza
                    ])
                    .map_err(&err)?;
                }
            }
            tx.commit().map_err(&err)
        })
        .await
    }

    async fn query(&self, acc: Account<'_>, q: &ArchiveQuery) -> Result<ArchivePage> {
        if q.min_id > q.max_id || q.limit == 0 {
            return Ok(ArchivePage { rows: Vec::new(), complete: q.min_id > q.max_id });
        }
        let mut sql = format!(
            concat!("SELECT {} FROM mam_messages WHERE owner = ", owner!(), " AND id >= ?3 AND id <= ?4"),
            COLUMNS
        );
        let mut args: Vec<rusqlite::types::Value> =
            vec![acc.domain.to_owned().into(), acc.user.to_owned().into(), q.min_id.into(), q.max_id.into()];
        if let Some(w) = &q.with_jid {
            args.push(w.clone().into());
            sql.push_str(&format!(" AND with_jid = ?{}", args.len()));
            if let Some(r) = &q.with_resource {
                args.push(r.clone().into());
                sql.push_str(&format!(" AND with_resource = ?{}", args.len()));
            }
        }
        let backwards = q.from == PageFrom::End;
        args.push(i64::try_from(q.limit.saturating_add(1)).unwrap_or(i64::MAX).into());
        sql.push_str(&format!(" ORDER BY id {} LIMIT ?{}", if backwards { "DESC" } else { "ASC" }, args.len()));
        let limit = q.limit;
        self.read(move |conn| {
            let err = db_err("archive query");
            let mut st = conn.prepare_cached(&sql).map_err(&err)?;
            let raw = st.query_map(params_from_iter(args), read_row).map_err(&err)?;
            let mut rows = raw.map(|r| r.map_err(&err).and_then(finish)).collect::<Result<Vec<_>>>()?;
            let complete = rows.len() <= limit;
            rows.truncate(limit);
            if backwards {
                rows.reverse();
            }
            Ok(ArchivePage { rows, complete })
        })
        .await
    }

    async fn fetch_ids(&self, acc: Account<'_>, ids: &[i64]) -> Result<Vec<ArchivedMessage>> {
        let (d, u) = (acc.domain.to_owned(), acc.user.to_owned());
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        self.read(move |conn| {
            let err = db_err("archive fetch_ids");
            let mut st = conn
                .prepare_cached(&format!(
                    concat!("SELECT {} FROM mam_messages WHERE owner = ", owner!(), " AND id = ?3"),
                    COLUMNS
                ))
                .map_err(&err)?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(raw) = st.query_row(params![d, u, id], read_row).optional().map_err(&err)? {
                    out.push(finish(raw)?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn retract(
        &self,
        acc: Account<'_>,
        with_jid: &str,
        direction: Direction,
        origin_id: &str,
        tombstone: &str,
    ) -> Result<Option<i64>> {
        let (d, u) = (acc.domain.to_owned(), acc.user.to_owned());
        let (w, o, t) = (with_jid.to_owned(), origin_id.to_owned(), tombstone.to_owned());
        self.write(move |conn| {
            let err = db_err("archive retract");
            let tx = write_tx(conn, "archive retract")?;
            let id: Option<i64> = tx
                .prepare_cached(concat!(
                    "SELECT id FROM (SELECT id, origin_id, direction FROM mam_messages WHERE owner = ",
                    owner!(),
                    " AND with_jid = ?3 ORDER BY id DESC LIMIT ?6)
                     WHERE origin_id = ?4 AND direction = ?5 ORDER BY id DESC LIMIT 1"
                ))
                .and_then(|mut st| {
                    st.query_row(params![d, u, w, o, direction.as_str(), RETRACT_WINDOW], |r| r.get(0)).optional()
                })
                .map_err(&err)?;
            if let Some(id) = id {
                tx.prepare_cached(concat!(
                    "UPDATE mam_messages SET stanza = ?4 WHERE owner = ",
                    owner!(),
                    " AND id = ?3"
                ))
                .and_then(|mut st| st.execute(params![d, u, id, t]))
                .map_err(&err)?;
            }
            tx.commit().map_err(&err)?;
            Ok(id)
        })
        .await
    }

    async fn get_prefs(&self, acc: Account<'_>) -> Result<Option<ArchivePrefs>> {
        let (d, u) = (acc.domain.to_owned(), acc.user.to_owned());
        self.read(move |conn| {
            let err = db_err("archive get_prefs");
            let mode: Option<String> = conn
                .prepare_cached("SELECT default_mode FROM mam_prefs WHERE domain = ?1 AND username = ?2")
                .and_then(|mut st| st.query_row(params![d, u], |r| r.get(0)).optional())
                .map_err(&err)?;
            let Some(mode) = mode else { return Ok(None) };
            let default_mode = ArchiveMode::parse(&mode)
                .ok_or_else(|| Error::Backend(format!("sqlite: archive mode {mode:?} of {u}@{d}")))?;
            let mut prefs = ArchivePrefs { default_mode, always: Vec::new(), never: Vec::new() };
            let mut st = conn
                .prepare_cached(
                    "SELECT jid, always FROM mam_prefs_jids WHERE domain = ?1 AND username = ?2 ORDER BY always, jid",
                )
                .map_err(&err)?;
            let rows =
                st.query_map(params![d, u], |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?))).map_err(&err)?;
            for row in rows {
                let (jid, always) = row.map_err(&err)?;
                if always {
                    prefs.always.push(jid)
                } else {
                    prefs.never.push(jid)
                }
            }
            Ok(Some(prefs))
        })
        .await
    }

    async fn set_prefs(&self, acc: Account<'_>, prefs: &ArchivePrefs) -> Result<()> {
        let (d, u) = (acc.domain.to_owned(), acc.user.to_owned());
        let prefs = prefs.clone();
        self.write(move |conn| {
            let err = db_err("archive set_prefs");
            let tx = write_tx(conn, "archive set_prefs")?;
            tx.prepare_cached(
                "INSERT INTO mam_prefs (domain, username, default_mode) VALUES (?1, ?2, ?3)
                 ON CONFLICT (domain, username) DO UPDATE SET default_mode = excluded.default_mode",
            )
            .and_then(|mut st| st.execute(params![d, u, prefs.default_mode.as_str()]))
            .map_err(&err)?;
            tx.prepare_cached("DELETE FROM mam_prefs_jids WHERE domain = ?1 AND username = ?2")
                .and_then(|mut st| st.execute(params![d, u]))
                .map_err(&err)?;
            {
                let mut st = tx
                    .prepare_cached(
                        "INSERT INTO mam_prefs_jids (domain, username, jid, always) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT DO NOTHING",
                    )
                    .map_err(&err)?;
                for (list, always) in [(&prefs.always, true), (&prefs.never, false)] {
                    for j in list {
                        st.execute(params![d, u, j, always]).map_err(&err)?;
                    }
                }
            }
            tx.commit().map_err(&err)
        })
        .await
    }

    async fn remove_archive(&self, acc: Account<'_>) -> Result<()> {
        let (d, u) = (acc.domain.to_owned(), acc.user.to_owned());
        self.write(move |conn| {
            let err = db_err("archive remove");
            let tx = write_tx(conn, "archive remove")?;
            for sql in [
                concat!("DELETE FROM mam_messages WHERE owner = ", owner!()),
                "DELETE FROM mam_owners WHERE domain = ?1 AND username = ?2",
                "DELETE FROM mam_prefs WHERE domain = ?1 AND username = ?2",
                "DELETE FROM mam_prefs_jids WHERE domain = ?1 AND username = ?2",
            ] {
                tx.prepare_cached(sql).and_then(|mut st| st.execute(params![d, u])).map_err(&err)?;
            }
            tx.commit().map_err(&err)
        })
        .await
    }
}
