//! [`ArchiveStore`] on PostgreSQL: a batch is one `INSERT … SELECT FROM UNNEST`
//! statement (`ON CONFLICT DO NOTHING`, so a retried batch is harmless); queries are keyset
//! range scans over the `(owner, id)` primary key or the `(owner, with_jid, id)`
//! index, fetching one row more than the page to learn whether it is complete.

use std::sync::Arc;

use meerkat_storage::{
    Account, ArchiveEntry, ArchiveMode, ArchivePage, ArchivePrefs, ArchiveQuery, ArchiveStore, ArchivedMessage,
    Direction, Error, PageFrom, Result,
};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

/// [`meerkat_storage::RETRACT_WINDOW`] as an SQL parameter.
const RETRACT_WINDOW: i64 = meerkat_storage::RETRACT_WINDOW as i64;

use crate::store::{col, PgStore};

const COLUMNS: &str = "id, with_jid, with_resource, direction, sender, origin_id, stanza";

fn message(row: &Row, what: &'static str) -> Result<ArchivedMessage> {
    let id: i64 = col(row, 0, what)?;
    let d: &str = col(row, 3, what)?;
    Ok(ArchivedMessage {
        id,
        with_jid: col::<&str>(row, 1, what)?.into(),
        with_resource: col::<&str>(row, 2, what)?.into(),
        direction: Direction::parse(d)
            .ok_or_else(|| Error::Backend(format!("postgres: archive row {id} has direction {d:?}")))?,
        sender: col::<&str>(row, 4, what)?.into(),
        origin_id: col::<Option<&str>>(row, 5, what)?.map(Into::into),
        stanza: col::<&str>(row, 6, what)?.into(),
    })
}

#[async_trait::async_trait]
impl ArchiveStore for PgStore {
    async fn append(&self, rows: Arc<Vec<ArchiveEntry>>) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        // One statement per batch (arrays unnested server-side): a row costs no
        // round trip and no statement of its own.
        let n = rows.len();
        let (mut domain, mut user, mut id) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut with, mut resource, mut direction) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut sender, mut origin, mut stanza) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        for r in rows.iter() {
            let m = &r.msg;
            domain.push(r.domain.as_str());
            user.push(r.user.as_str());
            id.push(m.id);
            with.push(m.with_jid.as_str());
            resource.push(m.with_resource.as_str());
            direction.push(m.direction.as_str());
            sender.push(m.sender.as_str());
            origin.push(m.origin_id.as_deref());
            stanza.push(&*m.stanza);
        }
        let c = self.conn("archive append").await?;
        let err = self.err("archive append");
        let st = c
            .prepare_cached(
                "INSERT INTO mam_messages (domain, username, id, with_jid, with_resource, direction, sender,
                 origin_id, stanza)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[],
                                      $7::text[], $8::text[], $9::text[])
                 ON CONFLICT (domain, username, id) DO NOTHING",
            )
            .await
            .map_err(&err)?;
        c.execute(&st, &[&domain, &user, &id, &with, &resource, &direction, &sender, &origin, &stanza])
            .await
            .map_err(&err)?;
        Ok(())
    }

    async fn query(&self, acc: Account<'_>, q: &ArchiveQuery) -> Result<ArchivePage> {
        if q.min_id > q.max_id || q.limit == 0 {
            return Ok(ArchivePage { rows: Vec::new(), complete: q.min_id > q.max_id });
        }
        let backwards = q.from == PageFrom::End;
        let fetch = i64::try_from(q.limit.saturating_add(1)).unwrap_or(i64::MAX);
        let mut sql =
            format!("SELECT {COLUMNS} FROM mam_messages WHERE domain = $1 AND username = $2 AND id >= $3 AND id <= $4");
        let mut args: Vec<&(dyn ToSql + Sync)> = vec![&acc.domain, &acc.user, &q.min_id, &q.max_id];
        if let Some(w) = &q.with_jid {
            args.push(w);
            sql.push_str(&format!(" AND with_jid = ${}", args.len()));
            if let Some(r) = &q.with_resource {
                args.push(r);
                sql.push_str(&format!(" AND with_resource = ${}", args.len()));
            }
        }
        args.push(&fetch);
        sql.push_str(&format!(" ORDER BY id {} LIMIT ${}", if backwards { "DESC" } else { "ASC" }, args.len()));
        let c = self.conn("archive query").await?;
        let err = self.err("archive query");
        let st = c.prepare_cached(&sql).await.map_err(&err)?;
        let raw = c.query(&st, &args).await.map_err(&err)?;
        let mut rows = raw.iter().map(|r| message(r, "archive query")).collect::<Result<Vec<_>>>()?;
        let complete = rows.len() <= q.limit;
        rows.truncate(q.limit);
        if backwards {
            rows.reverse();
        }
        Ok(ArchivePage { rows, complete })
    }

    async fn fetch_ids(&self, acc: Account<'_>, ids: &[i64]) -> Result<Vec<ArchivedMessage>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let c = self.conn("archive fetch_ids").await?;
        let err = self.err("archive fetch_ids");
        let st = c
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM mam_messages WHERE domain = $1 AND username = $2 AND id = ANY($3) ORDER BY id"
            ))
            .await
            .map_err(&err)?;
        let ids = ids.to_vec();
        let raw = c.query(&st, &[&acc.domain, &acc.user, &ids]).await.map_err(&err)?;
        raw.iter().map(|r| message(r, "archive fetch_ids")).collect()
    }

    async fn retract(
        &self,
        acc: Account<'_>,
        with_jid: &str,
        direction: Direction,
        origin_id: &str,
        tombstone: &str,
    ) -> Result<Option<i64>> {
        let c = self.conn("archive retract").await?;
        let err = self.err("archive retract");
        // One statement: the newest match among the conversation's last 1,000
        // rows (walked backwards through the with_jid index; there is no index
        // on origin ids) is picked and replaced atomically.
        let st = c
            .prepare_cached(
                "UPDATE mam_messages SET stanza = $6 WHERE domain = $1 AND username = $2 AND id = (
                     SELECT id FROM (
                         SELECT id, origin_id, direction FROM mam_messages
                         WHERE domain = $1 AND username = $2 AND with_jid = $3 ORDER BY id DESC LIMIT $7
                     ) recent
                     WHERE origin_id = $4 AND direction = $5 ORDER BY id DESC LIMIT 1)
                 RETURNING id",
            )
            .await
            .map_err(&err)?;
        let row = c
            .query_opt(
                &st,
                &[&acc.domain, &acc.user, &with_jid, &origin_id, &direction.as_str(), &tombstone, &RETRACT_WINDOW],
            )
            .await
            .map_err(&err)?;
        row.map(|r| col(&r, 0, "archive retract")).transpose()
    }

    async fn get_prefs(&self, acc: Account<'_>) -> Result<Option<ArchivePrefs>> {
        let c = self.conn("archive get_prefs").await?;
        let err = self.err("archive get_prefs");
        let st = c
            .prepare_cached("SELECT default_mode FROM mam_prefs WHERE domain = $1 AND username = $2")
            .await
            .map_err(&err)?;
        let Some(row) = c.query_opt(&st, &[&acc.domain, &acc.user]).await.map_err(&err)? else {
            return Ok(None);
        };
        let mode: &str = col(&row, 0, "archive get_prefs")?;
        let default_mode = ArchiveMode::parse(mode)
            .ok_or_else(|| Error::Backend(format!("postgres: archive mode {mode:?} of {}@{}", acc.user, acc.domain)))?;
        let st = c
            .prepare_cached(
                "SELECT jid, always FROM mam_prefs_jids WHERE domain = $1 AND username = $2
                 ORDER BY always, jid COLLATE \"C\"",
            )
            .await
            .map_err(&err)?;
        let mut prefs = ArchivePrefs { default_mode, always: Vec::new(), never: Vec::new() };
        for row in c.query(&st, &[&acc.domain, &acc.user]).await.map_err(&err)? {
            let jid: String = col(&row, 0, "archive get_prefs")?;
            if col::<bool>(&row, 1, "archive get_prefs")? {
                prefs.always.push(jid);
            } else {
                prefs.never.push(jid);
            }
        }
        Ok(Some(prefs))
    }

    async fn set_prefs(&self, acc: Account<'_>, prefs: &ArchivePrefs) -> Result<()> {
        let mut c = self.conn("archive set_prefs").await?;
        let err = self.err("archive set_prefs");
        let tx = c.transaction().await.map_err(&err)?;
        let st = tx
            .prepare_cached(
                "INSERT INTO mam_prefs (domain, username, default_mode) VALUES ($1, $2, $3)
                 ON CONFLICT (domain, username) DO UPDATE SET default_mode = excluded.default_mode",
            )
            .await
            .map_err(&err)?;
        tx.execute(&st, &[&acc.domain, &acc.user, &prefs.default_mode.as_str()]).await.map_err(&err)?;
        let st =
            tx.prepare_cached("DELETE FROM mam_prefs_jids WHERE domain = $1 AND username = $2").await.map_err(&err)?;
        tx.execute(&st, &[&acc.domain, &acc.user]).await.map_err(&err)?;
        let st = tx
            .prepare_cached(
                "INSERT INTO mam_prefs_jids (domain, username, jid, always) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING",
            )
            .await
            .map_err(&err)?;
        for (list, always) in [(&prefs.always, true), (&prefs.never, false)] {
            for j in list {
                tx.execute(&st, &[&acc.domain, &acc.user, j, &always]).await.map_err(&err)?;
            }
        }
        tx.commit().await.map_err(&err)
    }

    async fn remove_archive(&self, acc: Account<'_>) -> Result<()> {
        let mut c = self.conn("archive remove").await?;
        let err = self.err("archive remove");
        let tx = c.transaction().await.map_err(&err)?;
        for sql in [
            "DELETE FROM mam_messages WHERE domain = $1 AND username = $2",
            "DELETE FROM mam_prefs WHERE domain = $1 AND username = $2",
            "DELETE FROM mam_prefs_jids WHERE domain = $1 AND username = $2",
        ] {
            let st = tx.prepare_cached(sql).await.map_err(&err)?;
            tx.execute(&st, &[&acc.domain, &acc.user]).await.map_err(&err)?;
        }
        tx.commit().await.map_err(&err)
    }
}
