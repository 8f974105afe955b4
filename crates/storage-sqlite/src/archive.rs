//! [`ArchiveStore`] on SQLite: a log of rows plus two indexes written in sorted batches.
//!
//! A row is appended to `mam_messages` under an increasing `seq` (the rowid, so an
//! append fills the table's last page). Its entries in `mam_by_owner` `(owner, id)`
//! and `mam_by_with` `(owner, with_jid, id)` are written later, by [`Unindexed`],
//! many of an owner's at once, so that an index page takes them in one write
//! instead of one write per row (each dirty page is a 4 KiB WAL frame; see
//! migration 7):
//!
//! - an owner's rows are indexed in the append that brings
//!   [`Options::archive_index_owner`](crate::Options) of them to wait (an append
//!   indexes about twice its own rows at most);
//! - outside appends, a quarter of [`Options::archive_index_batch`](crate::Options)
//!   rows at a time are indexed: the fullest owners' while that many rows wait in
//!   all (owners that write slowly), the oldest owners' while more than twice that
//!   many rows were appended after `indexed_seq` (an owner that writes rarely
//!   holds it back);
//! - before anything reads or changes an owner's archive, that owner's waiting rows
//!   are indexed, so readers never miss a row.
//!
//! `mam_index_state.indexed_seq` says up to which `seq` every row is indexed (the
//! oldest waiting row's, minus one); rows a crash left unindexed after it are
//! indexed by [`recover`] when the database is opened.
//!
//! Two rows of an append that carry the same text (one allocation: a message's
//! row in its sender's archive and in its recipient's) for two owners store it
//! once: the second row's `stanza` is empty and its `shared` names the holder,
//! whose `shared` names it back; the text goes over to the second row before the
//! holder is deleted or its text replaced ([`hand_over_texts`]; migration 8).
//!
//! Reads are keyset range scans over one index, joined to the log by `seq`, fetching
//! one row more than the page to learn whether it is complete. A row appended twice
//! for the same `(owner, id)` (two sessions of a user each taking a copy) is kept
//! once: the second is deleted when it is indexed.

use std::collections::hash_map::Entry as MapEntry;
use std::sync::Arc;

use compact_str::CompactString;
use foldhash::HashMap;
use meerkat_storage::{
    Account, ArchiveEntry, ArchiveMode, ArchivePage, ArchivePrefs, ArchiveQuery, ArchiveStore, ArchivedMessage,
    Direction, Error, PageFrom, Result,
};
use parking_lot::Mutex;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row, ToSql, Transaction};

use crate::db_err;
use crate::store::{write_tx, SqliteStore};

/// A row's columns; its text from the holder when it shares one.
const COLUMNS: &str = "m.id, m.with_jid, m.with_resource, m.direction, m.sender, m.origin_id, \
     CASE m.stanza WHEN '' THEN (SELECT h.stanza FROM mam_messages h WHERE h.seq = m.shared) ELSE m.stanza END";

/// The archive owner's key for the account in parameters 1 and 2 (`NULL`, which
/// matches no row, when it never had an archive).
macro_rules! owner {
    () => {
        "(SELECT owner FROM mam_owners WHERE domain = ?1 AND username = ?2)"
    };
}

/// Rows per multi-row `INSERT` (of the log and of the two indexes): one statement
/// run per chunk instead of per row; a last partial chunk goes row by row.
const CHUNK: usize = 32;

/// The tables rows are inserted into.
#[derive(Clone, Copy)]
enum Insert {
    /// `mam_messages`.
    Log,
    /// `mam_by_owner` (ignoring an entry that exists: see [`index_entries`]).
    ByOwner,
    /// `mam_by_with` (likewise).
    ByWith,
}

impl Insert {
    /// The statement's head and its columns per row.
    const fn head(self) -> (&'static str, usize) {
        match self {
            Insert::Log => (
                "INSERT INTO mam_messages (owner, id, with_jid, with_resource, direction, sender, origin_id, stanza, \
                 shared)",
                9,
            ),
            Insert::ByOwner => ("INSERT OR IGNORE INTO mam_by_owner (owner, id, seq)", 3),
            Insert::ByWith => ("INSERT OR IGNORE INTO mam_by_with (owner, with_jid, id, seq)", 4),
        }
    }
}

/// The `INSERT` of one row (`chunk` false) or of [`CHUNK`] rows into `table`
/// (built once: the statement cache keeps them).
fn insert_sql(table: Insert, chunk: bool) -> &'static str {
    static SQL: std::sync::OnceLock<[[String; 2]; 3]> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        let build = |head: &str, cols: usize, n: usize| {
            let values: Vec<String> = (0..n)
                .map(|r| {
                    let row: Vec<String> = (1..=cols).map(|c| format!("?{}", r * cols + c)).collect();
                    format!("({})", row.join(", "))
                })
                .collect();
            format!("{head} VALUES {}", values.join(", "))
        };
        [Insert::Log, Insert::ByOwner, Insert::ByWith].map(|t| {
            let (head, cols) = t.head();
            [build(head, cols, 1), build(head, cols, CHUNK)]
        })
    });
    &all[table as usize][usize::from(chunk)]
}

/// Runs the `INSERT`s of `rows` into `table` ([`CHUNK`] rows per statement),
/// calling `after` with each chunk's rows and the number of rows inserted.
fn insert_rows<R>(
    tx: &Transaction<'_>,
    table: Insert,
    rows: &mut [R],
    bind: impl for<'r> Fn(&'r R, &mut Vec<&'r dyn ToSql>),
    mut after: impl FnMut(&mut [R], usize) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    let mut chunk_st = tx.prepare_cached(insert_sql(table, true))?;
    let mut one_st = tx.prepare_cached(insert_sql(table, false))?;
    let cols = table.head().1;
    for chunk in rows.chunks_mut(CHUNK) {
        let mut inserted = 0;
        if chunk.len() == CHUNK {
            let mut args: Vec<&dyn ToSql> = Vec::with_capacity(cols * CHUNK);
            for r in chunk.iter() {
                bind(r, &mut args);
            }
            inserted = chunk_st.execute(&*args)?;
        } else {
            for r in chunk.iter() {
                let mut args: Vec<&dyn ToSql> = Vec::with_capacity(cols);
                bind(r, &mut args);
                inserted += one_st.execute(&*args)?;
            }
        }
        after(chunk, inserted)?;
    }
    Ok(())
}

/// [`meerkat_storage::RETRACT_WINDOW`] as an SQL parameter.
const RETRACT_WINDOW: i64 = meerkat_storage::RETRACT_WINDOW as i64;

/// A row to log, with its owner's key, its group in the append, and its short
/// fields as `&str` (what the statement binds).
struct Keyed<'a> {
    key: i64,
    group: usize,
    row: &'a ArchiveEntry,
    /// `with_jid`, `with_resource`, `sender`.
    text: [&'a str; 3],
    origin_id: Option<&'a str>,
    /// Where its text is stored (see [`pair_texts`]).
    stored: Stored,
}

/// Where a row's text is stored; binds as the row's `shared` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    /// In the row, for it alone (`shared` NULL).
    Own,
    /// In the row, and the row with this `seq` reads it.
    Holds(i64),
    /// In the row with this `seq`: this row's `stanza` is empty.
    Reads(i64),
}

impl ToSql for Stored {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(match *self {
            Stored::Own => rusqlite::types::Null.into(),
            Stored::Holds(seq) | Stored::Reads(seq) => seq.into(),
        })
    }
}

impl<'a> Keyed<'a> {
    fn new(key: i64, group: usize, row: &'a ArchiveEntry) -> Self {
        let m = &row.msg;
        let text = [m.with_jid.as_str(), m.with_resource.as_str(), m.sender.as_str()];
        Keyed { key, group, row, text, origin_id: m.origin_id.as_deref(), stored: Stored::Own }
    }
}

/// Pairs the rows of an append that carry one text (the same allocation, as the
/// archive module gives a message's sender's row and its recipient's) for two
/// owners: the first holds the text, the second reads it. `first_seq` is the
/// `seq` the first row gets (rows get consecutive ones). A text pairs once, and
/// never within one owner, whose repeated rows ([`index_entries`]) are deleted.
fn pair_texts(keyed: &mut [Keyed<'_>], first_seq: i64) {
    let mut holders: HashMap<*const u8, usize> = HashMap::default();
    for i in 0..keyed.len() {
        let text = &keyed[i].row.msg.stanza;
        if Arc::strong_count(text) < 2 || text.is_empty() {
            continue;
        }
        match holders.entry(Arc::as_ptr(text).cast::<u8>()) {
            MapEntry::Occupied(h) if keyed[*h.get()].key != keyed[i].key => {
                let h = h.remove();
                keyed[h].stored = Stored::Holds(first_seq + i as i64);
                keyed[i].stored = Stored::Reads(first_seq + h as i64);
            }
            MapEntry::Occupied(_) => {}
            MapEntry::Vacant(v) => {
                v.insert(i);
            }
        }
    }
}

/// Before rows are deleted or their texts replaced: the rows that read a text
/// one of them holds get it. The rows are chosen by the condition on `h.seq`
/// that follows.
macro_rules! hand_over {
    ($rows:expr) => {
        concat!(
            "UPDATE mam_messages AS r SET stanza = h.stanza, shared = NULL FROM mam_messages AS h
             WHERE r.seq = h.shared AND r.shared = h.seq AND r.stanza = '' AND h.stanza <> '' AND h.seq ",
            $rows
        )
    };
}

/// Hands over the text row `seq` holds, if another row reads it.
fn hand_over_text(tx: &Transaction<'_>, seq: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(hand_over!("= ?1"))?.execute([seq])?;
    Ok(())
}

/// Hands over the texts the indexed rows of `domain`/`user`'s archive hold.
fn hand_over_texts(tx: &Transaction<'_>, domain: &str, user: &str) -> rusqlite::Result<()> {
    tx.prepare_cached(concat!(hand_over!("IN (SELECT seq FROM mam_by_owner WHERE owner = "), owner!(), ")"))?
        .execute(params![domain, user])?;
    Ok(())
}

/// A logged row's index entries, waiting to be written.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The owner's key when the row was appended (the same for all of an owner's
    /// rows, unless another process removed the archive meanwhile).
    owner: i64,
    id: i64,
    seq: i64,
    /// Inline up to 24 bytes (most bare JIDs): no allocation per row.
    with_jid: CompactString,
}

/// One owner's rows that are in the log but not yet indexed.
#[derive(Debug, Default)]
pub(crate) struct OwnerRows {
    rows: Vec<Entry>,
}

#[derive(Default)]
struct Waiting {
    /// By domain, then user (looked up with borrowed names).
    owners: HashMap<String, HashMap<String, OwnerRows>>,
    rows: usize,
    /// The newest `seq` this process appended.
    last_seq: i64,
    /// The `indexed_seq` this process last wrote: every row up to it is indexed.
    indexed: i64,
    /// Rows taken out of `owners` are being indexed and not yet committed: a
    /// reader must queue behind that work (see [`Unindexed::read_waits`]).
    busy: bool,
}

impl Waiting {
    /// Takes `domain`/`user`'s waiting rows out.
    fn remove(&mut self, domain: &str, user: &str) -> Option<OwnerRows> {
        let users = self.owners.get_mut(domain)?;
        let taken = users.remove(user)?;
        if users.is_empty() {
            self.owners.remove(domain);
        }
        self.rows -= taken.rows.len();
        Some(taken)
    }

    /// The `seq` up to which every row is indexed once the rows taken out are:
    /// the oldest row still waiting (here, or among `more`, rows about to wait),
    /// minus one; `last_seq` when none is.
    fn indexed_up_to<'a>(&self, more: impl Iterator<Item = &'a Entry>, last_seq: i64) -> i64 {
        // Each owner's rows are in append order: its first is its oldest.
        let waiting = self.owners.values().flat_map(|users| users.values()).filter_map(|o| o.rows.first());
        waiting.map(|e| e.seq).chain(more.map(|e| e.seq)).min().map_or(last_seq, |s| s - 1)
    }
}

/// Owners' keys (`mam_owners`) by domain, then user, that appends looked up or
/// created, so that a batch finds most of its owners without a query. Touched
/// on the writer thread only. A key goes stale only when its owner is removed:
/// by this process (dropped by [`Unindexed::without`], which every removal goes
/// through), or by another one (the CLI): then `PRAGMA data_version` has changed
/// and the next append starts over.
#[derive(Default)]
struct Keys {
    /// `PRAGMA data_version` when the keys were last known to be current.
    version: i64,
    names: HashMap<String, HashMap<String, i64>>,
    len: usize,
}

/// Owners' keys kept at most; beyond it the cache starts over.
const KEYS_MAX: usize = 100_000;

impl Keys {
    fn get(&self, domain: &str, user: &str) -> Option<i64> {
        self.names.get(domain)?.get(user).copied()
    }

    fn insert(&mut self, domain: &str, user: &str, key: i64) {
        if self.len >= KEYS_MAX {
            self.names.clear();
            self.len = 0;
        }
        let users = match self.names.get_mut(domain) {
            Some(u) => u,
            None => self.names.entry(domain.to_owned()).or_default(),
        };
        if users.insert(user.to_owned(), key).is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, domain: &str, user: &str) {
        if self.names.get_mut(domain).and_then(|u| u.remove(user)).is_some() {
            self.len -= 1;
        }
    }
}

/// An append's rows of one owner.
struct Group<'a> {
    domain: &'a str,
    user: &'a str,
    key: i64,
    /// The key was not in [`Keys`].
    fresh: bool,
    /// The owner's rows, waiting and new, are indexed in this append.
    ripe: bool,
    rows: Vec<Entry>,
}

/// The rows this process appended and has not indexed yet, and the owners' keys
/// it knows.
pub(crate) struct Unindexed {
    waiting: Mutex<Waiting>,
    keys: Mutex<Keys>,
    /// Index an owner's rows when this many of them wait.
    owner_rows: usize,
    /// Index every row when this many wait.
    batch: usize,
}

impl Unindexed {
    /// Rows wait for `owner_rows` of an owner's, or `batch` in all; `indexed` is the
    /// database's `indexed_seq` when it was opened (where this process starts).
    pub(crate) fn new(owner_rows: usize, batch: usize, indexed: i64) -> Self {
        Unindexed {
            waiting: Mutex::new(Waiting { last_seq: indexed, indexed, ..Waiting::default() }),
            keys: Mutex::new(Keys::default()),
            owner_rows: owner_rows.max(1),
            batch: batch.max(1),
        }
    }

    /// Whether a read of `domain`/`user`'s archive must first go through the writer:
    /// the owner has rows waiting, or rows (perhaps its own) are being indexed in a
    /// transaction not yet committed, which a job queued behind it will have seen.
    fn read_waits(&self, domain: &str, user: &str) -> bool {
        let w = self.waiting.lock();
        w.busy || w.owners.get(domain).is_some_and(|m| m.contains_key(user))
    }

    fn take(&self, domain: &str, user: &str) -> Option<OwnerRows> {
        let mut w = self.waiting.lock();
        w.busy = true;
        w.remove(domain, user)
    }

    fn put_back(w: &mut Waiting, domain: String, user: String, o: OwnerRows) {
        w.rows += o.rows.len();
        w.owners.entry(domain).or_default().entry(user).or_default().rows.extend(o.rows);
    }

    /// Runs `f` (in a transaction it commits) with the rows of `domain`/`user` taken
    /// out; they are put back if it fails, to be indexed later. Every change to an
    /// owner's archive other than an append goes through here (on the writer
    /// thread), which also forgets the owner's key: `f` may remove the owner.
    pub(crate) fn without<T>(
        &self,
        domain: &str,
        user: &str,
        f: impl FnOnce(Option<&OwnerRows>) -> Result<T>,
    ) -> Result<T> {
        self.keys.lock().remove(domain, user);
        let taken = self.take(domain, user);
        let r = f(taken.as_ref());
        let mut w = self.waiting.lock();
        if let (Err(_), Some(o)) = (&r, taken) {
            Self::put_back(&mut w, domain.to_owned(), user.to_owned(), o);
        }
        w.busy = false;
        r
    }

    /// Takes out the waiting rows of the owners in `groups` whose rows, waiting
    /// and new, reach `owner_rows`, and marks those groups ripe: their rows are
    /// indexed in the append's transaction, which reads queue behind until
    /// [`record`](Self::record) (or [`put_back_ripe`](Self::put_back_ripe)).
    /// An append indexes about twice its own rows at most: owners that write at
    /// one pace ripen together, and the others wait for a later append of theirs
    /// (with more rows per index page), so the writer never stops for long.
    /// Returns the rows taken by group, and the `seq` up to which every row is
    /// indexed once the append commits: the oldest row left waiting (in it or
    /// before it), minus one; `last_seq` (the append's newest) when none is left.
    fn take_ripe(&self, groups: &mut [Group<'_>], last_seq: i64) -> (Vec<(usize, OwnerRows)>, i64) {
        let mut w = self.waiting.lock();
        let mut taken = Vec::new();
        let mut budget = (2 * groups.iter().map(|g| g.rows.len()).sum::<usize>()).max(self.owner_rows);
        for (i, g) in groups.iter_mut().enumerate() {
            let waiting = w.owners.get(g.domain).and_then(|u| u.get(g.user)).map_or(0, |o| o.rows.len());
            let rows = waiting + g.rows.len();
            if rows < self.owner_rows || budget == 0 {
                continue;
            }
            budget = budget.saturating_sub(rows);
            g.ripe = true;
            taken.push((i, w.remove(g.domain, g.user).unwrap_or_default()));
        }
        if taken.is_empty() {
            return (taken, w.indexed);
        }
        w.busy = true;
        let indexed = w.indexed_up_to(groups.iter().filter(|g| !g.ripe).filter_map(|g| g.rows.first()), last_seq);
        (taken, indexed)
    }

    /// Puts back what [`take_ripe`](Self::take_ripe) took, the append having failed.
    fn put_back_ripe(&self, groups: &[Group<'_>], taken: Vec<(usize, OwnerRows)>) {
        let mut w = self.waiting.lock();
        let busy = !taken.is_empty();
        for (g, o) in taken {
            Self::put_back(&mut w, groups[g].domain.to_owned(), groups[g].user.to_owned(), o);
        }
        if busy {
            w.busy = false;
        }
    }

    /// Records the rows of a committed append, grouped by owner, except those of
    /// ripe groups (indexed in it); `last_seq` is the newest of them, `indexed`
    /// what the append wrote as `indexed_seq`.
    fn record(&self, groups: Vec<Group<'_>>, last_seq: i64, indexed: i64) {
        let mut w = self.waiting.lock();
        w.last_seq = w.last_seq.max(last_seq);
        if groups.iter().any(|g| g.ripe) {
            w.busy = false;
            w.indexed = w.indexed.max(indexed);
        }
        for g in groups.into_iter().filter(|g| !g.ripe) {
            w.rows += g.rows.len();
            let users = match w.owners.get_mut(g.domain) {
                Some(u) => u,
                None => w.owners.entry(g.domain.to_owned()).or_default(),
            };
            // An owner with rows waiting costs no allocation.
            match users.get_mut(g.user) {
                Some(o) => o.rows.extend(g.rows),
                None => {
                    users.insert(g.user.to_owned(), OwnerRows { rows: g.rows });
                }
            }
        }
    }

    /// Which owners' rows to index outside an append, if any: the fullest while
    /// `batch` rows wait in all, else the oldest while more than twice `batch`
    /// rows were appended after `indexed_seq`.
    fn due(&self) -> Option<Pick> {
        let w = self.waiting.lock();
        if w.rows >= self.batch {
            Some(Pick::Fullest)
        } else if w.rows > 0 && w.last_seq - w.indexed > 2 * self.batch as i64 {
            Some(Pick::Oldest)
        } else {
            None
        }
    }

    /// Indexes the rows of the owners `pick` orders first, up to about a quarter
    /// of `batch` rows (so the writer never stops for long), in owner order in
    /// one transaction, and moves `indexed_seq` to the oldest row left waiting
    /// (minus one). On failure the rows wait for the next attempt.
    fn index_some(&self, conn: &mut Connection, pick: Pick) -> Result<()> {
        let budget = (self.batch / 4).max(1);
        let (taken, indexed) = {
            let mut w = self.waiting.lock();
            // (rows waiting, oldest seq, domain, user) of every owner.
            let mut owners: Vec<(usize, i64, &str, &str)> = w
                .owners
                .iter()
                .flat_map(|(d, users)| users.iter().map(move |(u, o)| (d, u, o)))
                .filter_map(|(d, u, o)| Some((o.rows.len(), o.rows.first()?.seq, d.as_str(), u.as_str())))
                .collect();
            match pick {
                Pick::Fullest => owners.sort_unstable_by_key(|o| std::cmp::Reverse(o.0)),
                Pick::Oldest => owners.sort_unstable_by_key(|o| o.1),
            }
            let mut rows = 0;
            let chosen: Vec<(String, String)> = owners
                .into_iter()
                .take_while(|o| {
                    let more = rows < budget;
                    rows += o.0;
                    more
                })
                .map(|(_, _, d, u)| (d.to_owned(), u.to_owned()))
                .collect();
            let taken: Vec<(String, String, OwnerRows)> = chosen
                .into_iter()
                .filter_map(|(d, u)| {
                    let o = w.remove(&d, &u)?;
                    Some((d, u, o))
                })
                .collect();
            w.busy = true;
            let indexed = w.indexed_up_to(std::iter::empty(), w.last_seq);
            (taken, indexed)
        };
        let entries: Vec<&Entry> = taken.iter().flat_map(|(_, _, o)| &o.rows).collect();
        let started = std::time::Instant::now();
        let err = db_err("archive index");
        let r = write_tx(conn, "archive index").and_then(|tx| {
            index_entries(&tx, &entries).map_err(&err)?;
            advance(&tx, indexed).map_err(&err)?;
            tx.commit().map_err(&err)
        });
        tracing::debug!(
            rows = entries.len(),
            owners = taken.len(),
            ms = started.elapsed().as_millis() as u64,
            "archive: indexed a batch"
        );
        drop(entries);
        let mut w = self.waiting.lock();
        if r.is_err() {
            for (d, u, o) in taken {
                Self::put_back(&mut w, d, u, o);
            }
        } else {
            w.indexed = w.indexed.max(indexed);
        }
        w.busy = false;
        r
    }
}

/// Whose rows [`Unindexed::index_some`] indexes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pick {
    /// The owners with the most rows waiting (the most entries per index page).
    Fullest,
    /// The owners whose rows have waited longest (they hold `indexed_seq` back).
    Oldest,
}

/// Writes the index entries of `entries` in index order, so that consecutive
/// writes fall on the same pages, [`CHUNK`] per statement. A row whose
/// `(owner, id)` another row already holds is a duplicate and is deleted; an
/// entry that exists for the row itself (indexed before a crash) is left alone.
fn index_entries(tx: &Transaction<'_>, entries: &[&Entry]) -> rusqlite::Result<()> {
    // (owner, id, seq, with_jid): sorted copies, the entries stay as they are
    // in case they must wait again.
    let mut rows: Vec<(i64, i64, i64, &str)> =
        entries.iter().map(|e| (e.owner, e.id, e.seq, e.with_jid.as_str())).collect();
    // Of rows with one (owner, id), the first appended is kept.
    rows.sort_unstable_by_key(|r| (r.0, r.1, r.2));
    let mut holder = tx.prepare_cached("SELECT seq FROM mam_by_owner WHERE owner = ?1 AND id = ?2")?;
    let mut delete = tx.prepare_cached("DELETE FROM mam_messages WHERE seq = ?1")?;
    let mut dups = false;
    insert_rows(
        tx,
        Insert::ByOwner,
        &mut rows,
        |r, args| args.extend([&r.0 as &dyn ToSql, &r.1, &r.2]),
        |chunk, inserted| {
            if inserted < chunk.len() {
                for r in chunk.iter_mut() {
                    let seq: i64 = holder.query_row(params![r.0, r.1], |row| row.get(0))?;
                    if seq != r.2 {
                        hand_over_text(tx, r.2)?;
                        delete.execute([r.2])?;
                        r.2 = 0; // seqs start at 1
                        dups = true;
                    }
                }
            }
            Ok(())
        },
    )?;
    if dups {
        rows.retain(|r| r.2 != 0);
    }
    rows.sort_unstable_by(|a, b| (a.0, a.3, a.1).cmp(&(b.0, b.3, b.1)));
    insert_rows(
        tx,
        Insert::ByWith,
        &mut rows,
        |r, args| args.extend([&r.0 as &dyn ToSql, &r.3, &r.1, &r.2]),
        |_, _| Ok(()),
    )
}

/// Moves `indexed_seq` to `seq` if that is further.
fn advance(tx: &Transaction<'_>, seq: i64) -> rusqlite::Result<()> {
    tx.prepare_cached("UPDATE mam_index_state SET indexed_seq = MAX(indexed_seq, ?1) WHERE one = 1")?.execute([seq])?;
    Ok(())
}

/// Indexes the rows `mam_messages` holds after `indexed_seq`: those a process that
/// stopped without indexing them left behind. Runs when the database is opened.
/// Returns the resulting `indexed_seq`.
pub(crate) fn recover(conn: &mut Connection) -> Result<i64> {
    let err = db_err("archive index recovery");
    let tx = write_tx(conn, "archive index recovery")?;
    let from: i64 =
        tx.query_row("SELECT indexed_seq FROM mam_index_state WHERE one = 1", [], |r| r.get(0)).map_err(&err)?;
    let rows: Vec<Entry> = tx
        .prepare("SELECT owner, id, seq, with_jid FROM mam_messages WHERE seq > ?1 ORDER BY owner")
        .and_then(|mut st| {
            st.query_map([from], |r| {
                let with_jid = r.get_ref(3)?.as_str()?.into();
                Ok(Entry { owner: r.get(0)?, id: r.get(1)?, seq: r.get(2)?, with_jid })
            })?
            .collect()
        })
        .map_err(&err)?;
    let last = rows.iter().map(|e| e.seq).max().unwrap_or(from);
    index_entries(&tx, &rows.iter().collect::<Vec<_>>()).map_err(&err)?;
    advance(&tx, last).map_err(&err)?;
    tx.commit().map_err(&err)?;
    Ok(last)
}

/// In the transaction of a removal: deletes the archive of `domain`/`user` (a
/// user's, or a room's with `domain` the service), given its rows that were
/// waiting to be indexed.
pub(crate) fn delete_archive(
    tx: &Transaction<'_>,
    domain: &str,
    user: &str,
    waiting: Option<&OwnerRows>,
) -> rusqlite::Result<()> {
    if let Some(o) = waiting {
        let mut st = tx.prepare_cached("DELETE FROM mam_messages WHERE seq = ?1")?;
        for e in &o.rows {
            hand_over_text(tx, e.seq)?;
            st.execute([e.seq])?;
        }
    }
    hand_over_texts(tx, domain, user)?;
    for sql in [
        concat!("DELETE FROM mam_messages WHERE seq IN (SELECT seq FROM mam_by_owner WHERE owner = ", owner!(), ")"),
        concat!("DELETE FROM mam_by_owner WHERE owner = ", owner!()),
        concat!("DELETE FROM mam_by_with WHERE owner = ", owner!()),
        "DELETE FROM mam_owners WHERE domain = ?1 AND username = ?2",
    ] {
        tx.prepare_cached(sql)?.execute(params![domain, user])?;
    }
    Ok(())
}

/// In a transaction: indexes the waiting rows of one owner.
fn index_waiting(tx: &Transaction<'_>, waiting: &OwnerRows) -> rusqlite::Result<()> {
    index_entries(tx, &waiting.rows.iter().collect::<Vec<_>>())
}

fn read_row(r: &Row<'_>) -> rusqlite::Result<(ArchivedMessage, String)> {
    let direction: String = r.get(3)?;
    let text = |i| r.get_ref(i)?.as_str().map(CompactString::from).map_err(rusqlite::Error::from);
    Ok((
        ArchivedMessage {
            id: r.get(0)?,
            with_jid: text(1)?,
            with_resource: text(2)?,
            direction: Direction::Incoming,
            sender: text(4)?,
            origin_id: r.get_ref(5)?.as_str_or_null()?.map(CompactString::from),
            stanza: r.get_ref(6)?.as_str()?.into(),
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

impl SqliteStore {
    /// Indexes the rows of `acc`'s archive that wait, so that a read sees them.
    async fn index_owner(&self, acc: Account<'_>) -> Result<()> {
        if !self.unindexed.read_waits(acc.domain, acc.user) {
            return Ok(());
        }
        let (d, u) = (acc.domain.to_owned(), acc.user.to_owned());
        let unindexed = self.unindexed.clone();
        self.write(move |conn| {
            let err = db_err("archive index");
            unindexed.without(&d, &u, |waiting| {
                // Nothing left: the work this job queued behind indexed it.
                let Some(waiting) = waiting else { return Ok(()) };
                let tx = write_tx(conn, "archive index")?;
                index_waiting(&tx, waiting).map_err(&err)?;
                tx.commit().map_err(&err)
            })
        })
        .await
    }
}

#[async_trait::async_trait]
impl ArchiveStore for SqliteStore {
    async fn append(&self, rows: Arc<Vec<ArchiveEntry>>) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let unindexed = self.unindexed.clone();
        self.write(move |conn| {
            let err = db_err("archive append");
            let tx = write_tx(conn, "archive append")?;
            // The cached keys are current unless another process committed since
            // the last append (it may have removed an owner).
            let version: i64 = tx.query_row("PRAGMA data_version", [], |r| r.get(0)).map_err(&err)?;
            let mut keys = unindexed.keys.lock();
            if keys.version != version {
                *keys = Keys { version, ..Keys::default() };
            }
            // The rows by owner; each owner's key from the cache, or looked up (or
            // created) once per batch inside the transaction.
            let mut groups: Vec<Group<'_>> = Vec::new();
            let mut keyed: Vec<Keyed<'_>> = Vec::with_capacity(rows.len());
            {
                let mut group_of: HashMap<(&str, &str), usize> = HashMap::default();
                let mut find = tx.prepare_cached(concat!("SELECT ", owner!())).map_err(&err)?;
                let mut add =
                    tx.prepare_cached("INSERT INTO mam_owners (domain, username) VALUES (?1, ?2)").map_err(&err)?;
                for r in rows.iter() {
                    let (domain, user) = (r.domain.as_str(), r.user.as_str());
                    let g = match group_of.get(&(domain, user)) {
                        Some(&g) => g,
                        None => {
                            let (key, fresh) = match keys.get(domain, user) {
                                Some(k) => (k, false),
                                None => {
                                    let found: Option<i64> =
                                        find.query_row(params![domain, user], |row| row.get(0)).map_err(&err)?;
                                    let k = match found {
                                        Some(k) => k,
                                        None => add.insert(params![domain, user]).map_err(&err)?,
                                    };
                                    (k, true)
                                }
                            };
                            groups.push(Group { domain, user, key, fresh, ripe: false, rows: Vec::new() });
                            group_of.insert((domain, user), groups.len() - 1);
                            groups.len() - 1
                        }
                    };
                    keyed.push(Keyed::new(groups[g].key, g, r));
                }
            }
            // A rowid table gives each new row the largest rowid plus one: the
            // rows get consecutive seqs from here (checked below).
            let first_seq: i64 =
                tx.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM mam_messages", [], |r| r.get(0)).map_err(&err)?;
            pair_texts(&mut keyed, first_seq);
            // The stored directions and the text of a row that reads another's,
            // borrowed by the parameters below.
            static DIRECTIONS: [&str; 2] = [Direction::Incoming.as_str(), Direction::Outgoing.as_str()];
            static NO_TEXT: &str = "";
            let mut last_seq = first_seq - 1;
            insert_rows(
                &tx,
                Insert::Log,
                &mut keyed,
                |k, args| {
                    let m = &k.row.msg;
                    let [with_jid, with_resource, sender] = &k.text;
                    args.extend([
                        &k.key as &dyn ToSql,
                        &m.id,
                        with_jid,
                        with_resource,
                        &DIRECTIONS[usize::from(m.direction == Direction::Outgoing)],
                        sender,
                        &k.origin_id,
                        if matches!(k.stored, Stored::Reads(_)) { &NO_TEXT } else { &m.stanza },
                        &k.stored,
                    ]);
                },
                |chunk, _| {
                    let first = last_seq + 1;
                    last_seq += chunk.len() as i64;
                    if tx.last_insert_rowid() != last_seq {
                        return Err(rusqlite::Error::SqliteFailure(
                            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_INTERNAL),
                            Some(format!("archive rows got seq {}, not {last_seq}", tx.last_insert_rowid())),
                        ));
                    }
                    for (i, k) in chunk.iter().enumerate() {
                        let (m, seq) = (&k.row.msg, first + i as i64);
                        groups[k.group].rows.push(Entry { owner: k.key, id: m.id, seq, with_jid: m.with_jid.clone() });
                    }
                    Ok(())
                },
            )
            .map_err(&err)?;
            // Owners with enough rows waiting have them indexed in this transaction.
            let (ripe, indexed) = unindexed.take_ripe(&mut groups, last_seq);
            let r = if ripe.is_empty() {
                tx.commit()
            } else {
                let entries: Vec<&Entry> =
                    ripe.iter().flat_map(|(g, waiting)| waiting.rows.iter().chain(&groups[*g].rows)).collect();
                index_entries(&tx, &entries).and_then(|()| advance(&tx, indexed)).and_then(|()| tx.commit())
            };
            if let Err(e) = r {
                unindexed.put_back_ripe(&groups, ripe);
                return Err(err(e));
            }
            drop(ripe);
            for g in groups.iter().filter(|g| g.fresh) {
                keys.insert(g.domain, g.user, g.key);
            }
            drop(keys);
            unindexed.record(groups, last_seq, indexed);
            if let Some(pick) = unindexed.due() {
                // The rows are stored; if indexing fails they wait for the next
                // attempt (and a read indexes its owner's rows itself).
                if let Err(e) = unindexed.index_some(conn, pick) {
                    tracing::warn!(error = %e, "indexing the message archive; will try again");
                }
            }
            Ok(())
        })
        .await
    }

    async fn query(&self, acc: Account<'_>, q: &ArchiveQuery) -> Result<ArchivePage> {
        if q.min_id > q.max_id || q.limit == 0 {
            return Ok(ArchivePage { rows: Vec::new(), complete: q.min_id > q.max_id });
        }
        self.index_owner(acc).await?;
        let index = if q.with_jid.is_some() { "mam_by_with" } else { "mam_by_owner" };
        let mut sql = format!(
            concat!(
                "SELECT {} FROM {} i CROSS JOIN mam_messages m ON m.seq = i.seq WHERE i.owner = ",
                owner!(),
                " AND i.id >= ?3 AND i.id <= ?4"
            ),
            COLUMNS, index
        );
        let mut args: Vec<rusqlite::types::Value> =
            vec![acc.domain.to_owned().into(), acc.user.to_owned().into(), q.min_id.into(), q.max_id.into()];
        if let Some(w) = &q.with_jid {
            args.push(w.clone().into());
            sql.push_str(&format!(" AND i.with_jid = ?{}", args.len()));
            if let Some(r) = &q.with_resource {
                args.push(r.clone().into());
                sql.push_str(&format!(" AND m.with_resource = ?{}", args.len()));
            }
        }
        let backwards = q.from == PageFrom::End;
        args.push(i64::try_from(q.limit.saturating_add(1)).unwrap_or(i64::MAX).into());
        sql.push_str(&format!(" ORDER BY i.id {} LIMIT ?{}", if backwards { "DESC" } else { "ASC" }, args.len()));
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
        self.index_owner(acc).await?;
        let (d, u) = (acc.domain.to_owned(), acc.user.to_owned());
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        self.read(move |conn| {
            let err = db_err("archive fetch_ids");
            let mut st = conn
                .prepare_cached(&format!(
                    concat!(
                        "SELECT {} FROM mam_by_owner i CROSS JOIN mam_messages m ON m.seq = i.seq WHERE i.owner = ",
                        owner!(),
                        " AND i.id = ?3"
                    ),
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
        let unindexed = self.unindexed.clone();
        self.write(move |conn| {
            let err = db_err("archive retract");
            unindexed.without(&d, &u, |waiting| {
                let tx = write_tx(conn, "archive retract")?;
                if let Some(w) = waiting {
                    index_waiting(&tx, w).map_err(&err)?;
                }
                let found: Option<(i64, i64)> = tx
                    .prepare_cached(concat!(
                        "SELECT m.id, m.seq FROM (SELECT seq FROM mam_by_with WHERE owner = ",
                        owner!(),
                        " AND with_jid = ?3 ORDER BY id DESC LIMIT ?6) i CROSS JOIN mam_messages m ON m.seq = i.seq
                         WHERE m.origin_id = ?4 AND m.direction = ?5 ORDER BY m.id DESC LIMIT 1"
                    ))
                    .and_then(|mut st| {
                        st.query_row(params![d, u, w, o, direction.as_str(), RETRACT_WINDOW], |r| {
                            Ok((r.get(0)?, r.get(1)?))
                        })
                        .optional()
                    })
                    .map_err(&err)?;
                if let Some((_, seq)) = found {
                    hand_over_text(&tx, seq)
                        .and_then(|()| {
                            tx.prepare_cached("UPDATE mam_messages SET stanza = ?2, shared = NULL WHERE seq = ?1")
                        })
                        .and_then(|mut st| st.execute(params![seq, t]))
                        .map_err(&err)?;
                }
                tx.commit().map_err(&err)?;
                Ok(found.map(|f| f.0))
            })
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
        let unindexed = self.unindexed.clone();
        self.write(move |conn| {
            let err = db_err("archive remove");
            unindexed.without(&d, &u, |waiting| {
                let tx = write_tx(conn, "archive remove")?;
                delete_archive(&tx, &d, &u, waiting).map_err(&err)?;
                for sql in [
                    "DELETE FROM mam_prefs WHERE domain = ?1 AND username = ?2",
                    "DELETE FROM mam_prefs_jids WHERE domain = ?1 AND username = ?2",
                ] {
                    tx.prepare_cached(sql).and_then(|mut st| st.execute(params![d, u])).map_err(&err)?;
                }
                tx.commit().map_err(&err)
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group<'a>(user: &'a str, seqs: std::ops::RangeInclusive<i64>) -> Group<'a> {
        let rows = seqs.map(|seq| Entry { owner: 1, id: seq, seq, with_jid: "p@x".into() }).collect();
        Group { domain: "x", user, key: 1, fresh: false, ripe: false, rows }
    }

    /// Between taking an append's ripe owners and recording the append (after its
    /// commit), every read queues behind the writer: the ripe owners' rows are in
    /// neither the waiting set nor the committed indexes then.
    #[test]
    fn reads_queue_behind_an_append_indexing_ripe_owners() {
        let u = Unindexed::new(3, 1_000, 0);
        u.record(vec![group("alice", 1..=2), group("bob", 3..=3)], 3, 0);
        assert!(!u.read_waits("x", "carol"));
        let mut groups = vec![group("alice", 4..=4), group("bob", 5..=5)];
        let (taken, indexed) = u.take_ripe(&mut groups, 5);
        assert_eq!(taken.len(), 1, "alice's 2 + 1 rows reach 3; bob's 1 + 1 do not");
        assert!(groups[0].ripe && !groups[1].ripe);
        assert_eq!(indexed, 2, "bob's seq 3 is the oldest row left waiting");
        assert!(u.read_waits("x", "alice") && u.read_waits("x", "carol"), "reads wait for the commit");
        u.record(groups, 5, indexed);
        assert!(!u.read_waits("x", "alice"), "alice's rows are indexed");
        assert!(u.read_waits("x", "bob"), "bob's rows wait");
        let w = u.waiting.lock();
        assert_eq!((w.rows, w.indexed), (2, 2));
    }

    /// A process starts at the `indexed_seq` the database holds: its first appends
    /// after a million indexed rows are not mistaken for rows left waiting since
    /// seq 0 (which made one needless index step of the oldest owners).
    #[test]
    fn a_new_process_starts_where_the_index_is() {
        let rows = || vec![group("a", 1_000_001..=1_000_002)];
        let u = Unindexed::new(3, 1_000, 1_000_000);
        u.record(rows(), 1_000_002, 0);
        assert_eq!(u.due(), None);
        let from_zero = Unindexed::new(3, 1_000, 0);
        from_zero.record(rows(), 1_000_002, 0);
        assert_eq!(from_zero.due(), Some(Pick::Oldest));
    }

    /// An append indexes about twice its own rows at most: of three ripe owners,
    /// the later ones wait for a later append.
    #[test]
    fn an_append_indexes_about_twice_its_rows() {
        let u = Unindexed::new(3, 1_000, 0);
        u.record(vec![group("a", 1..=4), group("b", 5..=8), group("c", 9..=12)], 12, 0);
        let mut groups = vec![group("a", 13..=13), group("b", 14..=14), group("c", 15..=15)];
        let (taken, _) = u.take_ripe(&mut groups, 15);
        // A budget of 6 rows: a's 5 rows, then b's 5 (begun within the budget).
        assert_eq!(taken.len(), 2);
        assert_eq!(groups.iter().map(|g| g.ripe).collect::<Vec<_>>(), [true, true, false]);
        u.put_back_ripe(&groups, taken);
        assert!(!u.waiting.lock().busy);
        assert_eq!(u.waiting.lock().rows, 12, "a failed append puts the rows back");
    }
}
