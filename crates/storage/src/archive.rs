//! The message archive (XEP-0313) as storage sees it: rows keyed by `(owner, id)`.
//!
//! Ids are assigned by the server before a row reaches storage (they are the XEP-0359
//! stanza ids clients see) and grow with time, so every query is a keyset range scan
//! over `(owner, id)` or `(owner, with, id)`: no `OFFSET`, no `COUNT(*)`. The time
//! filters of a query arrive already translated into id bounds by the caller.
//!
//! The owner is any bare JID with a localpart: a user today, a room later (the
//! `sender` field then holds the occupant's nick or JID).

use std::sync::Arc;

pub use compact_str::CompactString;

use crate::{Account, Result};

/// Which way an archived message went, seen from the archive's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The owner received it.
    Incoming,
    /// The owner sent it.
    Outgoing,
}

impl Direction {
    /// The stored value (`in`, `out`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Incoming => "in",
            Direction::Outgoing => "out",
        }
    }
    /// Parses a stored value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "in" => Some(Direction::Incoming),
            "out" => Some(Direction::Outgoing),
            _ => None,
        }
    }
}

/// One archived message.
///
/// The short fields are [`CompactString`]s (a JID or an id of up to 24 bytes costs
/// no allocation) and the stanza is shared: the sender's row and the recipient's
/// row of one message, queued on the hot path of every chat message, hold one copy
/// of its text between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedMessage {
    /// Server-assigned, unique per owner, increasing with time (positive).
    pub id: i64,
    /// The other party's bare JID.
    pub with_jid: CompactString,
    /// The other party's resource (empty when none).
    pub with_resource: CompactString,
    /// Direction seen from the owner.
    pub direction: Direction,
    /// Who wrote it (a full JID; for room archives the occupant).
    pub sender: CompactString,
    /// The message's own `id` attribute, which XEP-0424 retractions refer to.
    pub origin_id: Option<CompactString>,
    /// The message stanza, serialised.
    pub stanza: Arc<str>,
}

/// A row to append: the owner and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveEntry {
    /// The owner's localpart.
    pub user: CompactString,
    /// The owner's domain.
    pub domain: CompactString,
    /// The message.
    pub msg: ArchivedMessage,
}

/// Which end of the matching range a page is taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageFrom {
    /// The oldest matching rows (paging forwards).
    Start,
    /// The newest matching rows (paging backwards, the "last page").
    End,
}

/// A range query over one archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveQuery {
    /// Only rows with this bare JID as the other party.
    pub with_jid: Option<String>,
    /// And this resource (only together with `with_jid`).
    pub with_resource: Option<String>,
    /// Smallest id included.
    pub min_id: i64,
    /// Largest id included.
    pub max_id: i64,
    /// Most rows returned.
    pub limit: usize,
    /// Which end of the range the page comes from.
    pub from: PageFrom,
}

impl Default for ArchiveQuery {
    fn default() -> Self {
        ArchiveQuery {
            with_jid: None,
            with_resource: None,
            min_id: 0,
            max_id: i64::MAX,
            limit: 50,
            from: PageFrom::Start,
        }
    }
}

/// A page of results.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ArchivePage {
    /// The rows, oldest first.
    pub rows: Vec<ArchivedMessage>,
    /// No more matching rows lie beyond this page in the paging direction.
    pub complete: bool,
}

/// XEP-0441 default archiving mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArchiveMode {
    /// Archive everything.
    #[default]
    Always,
    /// Archive messages with contacts in the roster.
    Roster,
    /// Archive nothing (unless the JID is in the `always` list).
    Never,
}

impl ArchiveMode {
    /// The wire and stored value.
    pub fn as_str(self) -> &'static str {
        match self {
            ArchiveMode::Always => "always",
            ArchiveMode::Roster => "roster",
            ArchiveMode::Never => "never",
        }
    }
    /// Parses a wire or stored value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "always" => Some(ArchiveMode::Always),
            "roster" => Some(ArchiveMode::Roster),
            "never" => Some(ArchiveMode::Never),
            _ => None,
        }
    }
}

/// A user's archiving preferences (XEP-0441).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ArchivePrefs {
    /// The default mode.
    pub default_mode: ArchiveMode,
    /// Bare JIDs always archived, sorted.
    pub always: Vec<String>,
    /// Bare JIDs never archived, sorted.
    pub never: Vec<String>,
}

/// How many of a conversation's newest rows a retraction (XEP-0424) searches
/// for the message it names: backends find it through the `(owner, with_jid,
/// id)` index instead of keeping an index of origin ids, which would cost every
/// archived row one more index insert.
pub const RETRACT_WINDOW: usize = 1000;

/// Message archive storage (XEP-0313, XEP-0441, XEP-0424 tombstones).
#[async_trait::async_trait]
pub trait ArchiveStore: Send + Sync {
    /// Appends rows (of any owners) in one transaction; a row whose `(owner, id)`
    /// exists already is skipped, so a batch can be retried after an ambiguous failure.
    /// The rows are shared: a backend that writes on another thread keeps them
    /// without a copy, and a retry passes the same batch again.
    async fn append(&self, rows: Arc<Vec<ArchiveEntry>>) -> Result<()>;
    /// One page of `acc`'s archive.
    async fn query(&self, acc: Account<'_>, q: &ArchiveQuery) -> Result<ArchivePage>;
    /// The rows with these ids that exist, oldest first.
    async fn fetch_ids(&self, acc: Account<'_>, ids: &[i64]) -> Result<Vec<ArchivedMessage>>;
    /// Replaces the stanza of the newest row with `with_jid`, `direction` and
    /// `origin_id` by `tombstone`, among the [`RETRACT_WINDOW`] newest rows with
    /// `with_jid`; returns its id (`None` when there is none).
    async fn retract(
        &self,
        acc: Account<'_>,
        with_jid: &str,
        direction: Direction,
        origin_id: &str,
        tombstone: &str,
    ) -> Result<Option<i64>>;
    /// The stored preferences, `None` when the user never set any.
    async fn get_prefs(&self, acc: Account<'_>) -> Result<Option<ArchivePrefs>>;
    /// Stores (replaces) the preferences.
    async fn set_prefs(&self, acc: Account<'_>, prefs: &ArchivePrefs) -> Result<()>;
    /// Removes the whole archive and the preferences.
    async fn remove_archive(&self, acc: Account<'_>) -> Result<()>;
}
