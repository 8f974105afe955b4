//! Meerkat's storage interface.
//!
//! Every piece of persistent state sits behind a narrow domain trait (`AuthStore`,
//! `RosterStore`, `OfflineStore`, `ArchiveStore`, …). Backends (`meerkat-storage-sqlite`,
//! `meerkat-storage-postgres`, and [`memory`] here) implement all of them and are
//! bundled into one [`Stores`] value that the server passes around. SQL never leaves
//! the backend crates.
//!
//! Every backend runs the same [`conformance::run`] suite in its tests.
//!
//! Accounts are addressed by [`Account`]: the (already nodeprep'ed) localpart and the
//! domain. Stanzas are stored as serialised XML text; the storage layer never parses XML.
#![warn(missing_docs)]

use std::sync::Arc;

pub mod archive;
pub mod conformance;
pub mod memory;

pub use archive::{
    ArchiveEntry, ArchiveMode, ArchivePage, ArchivePrefs, ArchiveQuery, ArchiveStore, ArchivedMessage, CompactString,
    Direction, PageFrom, RETRACT_WINDOW,
};

pub use meerkat_sasl::StoredCredentials;

/// A local account: the localpart and the domain of a bare JID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Account<'a> {
    /// Localpart (node), already normalised.
    pub user: &'a str,
    /// Domain, already normalised.
    pub domain: &'a str,
}

impl<'a> Account<'a> {
    /// Builds an account key.
    pub fn new(user: &'a str, domain: &'a str) -> Self {
        Account { user, domain }
    }
}

/// Errors every backend maps its failures onto.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object to create exists already (e.g. a user on `create_user`).
    #[error("already exists")]
    AlreadyExists,
    /// The object to change does not exist (e.g. `set_credentials` for an unknown user).
    #[error("not found")]
    NotFound,
    /// The backend cannot be reached or failed; the string names the cause.
    #[error("storage backend error: {0}")]
    Backend(String),
}

/// Result type of every storage call.
pub type Result<T> = std::result::Result<T, Error>;

/// Account credentials (SCRAM keys only; never plaintext passwords).
#[async_trait::async_trait]
pub trait AuthStore: Send + Sync {
    /// Creates an account; `Error::AlreadyExists` when it exists.
    async fn create_user(&self, acc: Account<'_>, creds: &StoredCredentials) -> Result<()>;
    /// Replaces the credentials; `Error::NotFound` when the account does not exist.
    async fn set_credentials(&self, acc: Account<'_>, creds: &StoredCredentials) -> Result<()>;
    /// The stored credentials, or `None` for an unknown account.
    async fn get_credentials(&self, acc: Account<'_>) -> Result<Option<StoredCredentials>>;
    /// Deletes the account and every piece of data it owns in every store
    /// (roster, offline, vCard, private, blocking, last activity, message archive).
    /// Returns `false` when the account did not exist.
    async fn delete_user(&self, acc: Account<'_>) -> Result<bool>;
    /// All localparts of `domain`, sorted.
    async fn list_users(&self, domain: &str) -> Result<Vec<String>>;
    /// Whether the account exists.
    async fn user_exists(&self, acc: Account<'_>) -> Result<bool>;
}

/// RFC 6121 §2.1.2.5 subscription states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Subscription {
    /// Neither side is subscribed.
    #[default]
    None,
    /// The user receives the contact's presence.
    To,
    /// The contact receives the user's presence.
    From,
    /// Both.
    Both,
}

impl Subscription {
    /// The wire value (`none`, `to`, `from`, `both`).
    pub fn as_str(self) -> &'static str {
        match self {
            Subscription::None => "none",
            Subscription::To => "to",
            Subscription::From => "from",
            Subscription::Both => "both",
        }
    }
    /// Parses a wire value.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Subscription::None,
            "to" => Subscription::To,
            "from" => Subscription::From,
            "both" => Subscription::Both,
            _ => return None,
        })
    }
}

/// One roster entry of a user.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RosterItem {
    /// The contact's bare JID, normalised.
    pub jid: String,
    /// Handle chosen by the user.
    pub name: Option<String>,
    /// Subscription state.
    pub subscription: Subscription,
    /// The user has sent a subscription request not yet answered ("pending out").
    pub ask_out: bool,
    /// The contact has sent a subscription request not yet answered ("pending in").
    pub pending_in: bool,
    /// The stored inbound subscription request (serialised presence stanza) to
    /// redeliver when the user comes online (RFC 6121 §3.1.3).
    pub pending_in_stanza: Option<String>,
    /// Pre-approved inbound subscription (RFC 6121 §3.4).
    pub approved: bool,
    /// Whether the user put the item in their roster (roster set or outbound
    /// subscription). Items created only to remember pending-in requests are hidden
    /// from roster gets.
    pub visible: bool,
    /// Groups, in the order the user gave them.
    pub groups: Vec<String>,
}

/// A user's roster and its version (XEP-0237).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Roster {
    /// Monotonic version; 0 for a user that never had a roster change.
    pub version: u64,
    /// All items, hidden ones included, sorted by jid.
    pub items: Vec<RosterItem>,
}

/// Rosters (RFC 6121 §2) with versioning (XEP-0237).
#[async_trait::async_trait]
pub trait RosterStore: Send + Sync {
    /// The whole roster (all items including hidden ones) and its version.
    async fn get_roster(&self, acc: Account<'_>) -> Result<Roster>;
    /// One item.
    async fn get_item(&self, acc: Account<'_>, jid: &str) -> Result<Option<RosterItem>>;
    /// Inserts or replaces the item for `item.jid`; bumps and returns the roster version.
    async fn put_item(&self, acc: Account<'_>, item: &RosterItem) -> Result<u64>;
    /// Removes the item; bumps and returns the roster version (`None` if there was no item).
    async fn delete_item(&self, acc: Account<'_>, jid: &str) -> Result<Option<u64>>;
    /// Serialises read-modify-write changes of one user's roster across every
    /// server process sharing this storage (a cluster's nodes), until the
    /// returned guard is dropped. `None`: the storage belongs to one process,
    /// whose own per-user lock is enough (the in-memory and SQLite backends).
    async fn lock_roster(&self, _acc: Account<'_>) -> Result<Option<RosterLock>> {
        Ok(None)
    }
}

/// Holds a storage-level roster lock; dropping it releases the lock.
pub type RosterLock = Box<dyn std::any::Any + Send + Sync>;

/// A message kept for an offline user (XEP-0160).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineMessage {
    /// Backend-assigned, increasing per account.
    pub id: i64,
    /// When it was stored, in milliseconds since the Unix epoch.
    pub stored_at_ms: i64,
    /// The message stanza, serialised.
    pub stanza: String,
}

/// Offline message storage (XEP-0160).
#[async_trait::async_trait]
pub trait OfflineStore: Send + Sync {
    /// Appends a message unless the account already holds `limit` messages.
    /// Returns `false` (and stores nothing) when the limit is reached.
    async fn push(&self, acc: Account<'_>, stored_at_ms: i64, stanza: &str, limit: usize) -> Result<bool>;
    /// Up to `max` oldest messages, oldest first, without removing them.
    async fn fetch(&self, acc: Account<'_>, max: usize) -> Result<Vec<OfflineMessage>>;
    /// Removes every message with `id <= up_to_id` (called once they were delivered).
    async fn remove_up_to(&self, acc: Account<'_>, up_to_id: i64) -> Result<()>;
    /// Number of stored messages.
    async fn count(&self, acc: Account<'_>) -> Result<usize>;
}

/// vCard-temp (XEP-0054), private XML (XEP-0049) and other per-user XML blobs.
#[async_trait::async_trait]
pub trait XmlStore: Send + Sync {
    /// The blob stored under `(kind, key)`, e.g. `("vcard", "")` or `("private", "storage:bookmarks")`.
    async fn get_xml(&self, acc: Account<'_>, kind: &str, key: &str) -> Result<Option<String>>;
    /// Stores (replaces) the blob; an empty `xml` is stored as is.
    async fn set_xml(&self, acc: Account<'_>, kind: &str, key: &str, xml: &str) -> Result<()>;
    /// Deletes the blob; no error when absent.
    async fn delete_xml(&self, acc: Account<'_>, kind: &str, key: &str) -> Result<()>;
}

/// Blocking command lists (XEP-0191).
#[async_trait::async_trait]
pub trait BlockingStore: Send + Sync {
    /// The blocked JIDs, sorted.
    async fn blocklist(&self, acc: Account<'_>) -> Result<Vec<String>>;
    /// Adds JIDs (duplicates ignored).
    async fn block(&self, acc: Account<'_>, jids: &[String]) -> Result<()>;
    /// Removes JIDs; an empty slice removes all.
    async fn unblock(&self, acc: Account<'_>, jids: &[String]) -> Result<()>;
}

/// Last activity (XEP-0012): when the user's last session ended and its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastActivity {
    /// Seconds since the Unix epoch.
    pub at_secs: i64,
    /// Status text of the last unavailable presence.
    pub status: String,
}

/// Last activity storage (XEP-0012).
#[async_trait::async_trait]
pub trait LastStore: Send + Sync {
    /// Records the logout time and status.
    async fn set_last(&self, acc: Account<'_>, last: &LastActivity) -> Result<()>;
    /// The last logout, if any.
    async fn get_last(&self, acc: Account<'_>) -> Result<Option<LastActivity>>;
}

/// Ownership of cluster-wide singletons (MUC rooms): key → owner, with a
/// revision for compare-and-set, so two nodes racing for one key cannot both win.
#[async_trait::async_trait]
pub trait SingletonStore: Send + Sync {
    /// The owner of `key` and the row's revision.
    async fn singleton_owner(&self, key: &str) -> Result<Option<(String, i64)>>;
    /// Makes `owner` the owner of a free `key`; `false` if it has one.
    async fn create_singleton(&self, key: &str, owner: &str) -> Result<bool>;
    /// Makes `owner` the owner of `key` if the row is still at `revision`.
    async fn replace_singleton(&self, key: &str, owner: &str, revision: i64) -> Result<bool>;
    /// Frees `key` if `owner` owns it.
    async fn delete_singleton(&self, key: &str, owner: &str) -> Result<()>;
}

/// A room's affiliation of one user (XEP-0045 §5.2, MUC Light): the user's bare
/// JID and the affiliation as the module names it (`owner`, `admin`, `member`,
/// `outcast`), with a reason and the nickname the user reserved in the room
/// (XEP-0045 §7.10). Storage never interprets them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoomAffiliation {
    /// The user's bare JID.
    pub jid: String,
    /// The affiliation; `none` removes the row in [`MucStore::set_affiliations`].
    pub affiliation: String,
    /// Why it was given (may be empty).
    pub reason: String,
    /// The nickname reserved by registering with the room (empty: none).
    pub nick: String,
}

/// A stored room: its configuration (opaque text the module writes and reads)
/// and its affiliations.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredRoom {
    /// The configuration, as the module serialised it.
    pub config: String,
    /// Every affiliation other than `none`, sorted by JID.
    pub affiliations: Vec<RoomAffiliation>,
}

/// Group chat rooms (XEP-0045 persistent rooms, MUC Light rooms), keyed by the
/// service's domain and the room's localpart. A room's message history lives in
/// the [`ArchiveStore`] with the room as owner.
#[async_trait::async_trait]
pub trait MucStore: Send + Sync {
    /// Creates a room with its first affiliations, in one transaction;
    /// [`Error::AlreadyExists`] when the room exists.
    async fn create_room(&self, service: &str, room: &str, config: &str, affs: &[RoomAffiliation]) -> Result<()>;
    /// Replaces a room's configuration; [`Error::NotFound`] when it does not exist.
    async fn update_room(&self, service: &str, room: &str, config: &str) -> Result<()>;
    /// Applies affiliation changes in one transaction (`none` removes a row);
    /// [`Error::NotFound`] when the room does not exist.
    async fn set_affiliations(&self, service: &str, room: &str, changes: &[RoomAffiliation]) -> Result<()>;
    /// A room, or `None`.
    async fn load_room(&self, service: &str, room: &str) -> Result<Option<StoredRoom>>;
    /// Deletes a room, its affiliations and its message archive; `false` when it
    /// did not exist.
    async fn delete_room(&self, service: &str, room: &str) -> Result<bool>;
    /// Every room of a service with its configuration, sorted by name.
    async fn list_rooms(&self, service: &str) -> Result<Vec<(String, String)>>;
    /// The rooms of a service where `jid` has an affiliation, with it, sorted by name.
    async fn rooms_of(&self, service: &str, jid: &str) -> Result<Vec<(String, String)>>;
}

/// Every store of one backend, shared by the whole server.
#[derive(Clone)]
pub struct Stores {
    /// Backend name for logs (`sqlite`, `postgres`, `memory`).
    pub backend: &'static str,
    /// Accounts.
    pub auth: Arc<dyn AuthStore>,
    /// Rosters.
    pub roster: Arc<dyn RosterStore>,
    /// Offline messages.
    pub offline: Arc<dyn OfflineStore>,
    /// vCards, private XML.
    pub xml: Arc<dyn XmlStore>,
    /// Blocking lists.
    pub blocking: Arc<dyn BlockingStore>,
    /// Last activity.
    pub last: Arc<dyn LastStore>,
    /// Message archive.
    pub archive: Arc<dyn ArchiveStore>,
    /// Cluster-wide singleton ownership.
    pub singletons: Arc<dyn SingletonStore>,
    /// Group chat rooms.
    pub muc: Arc<dyn MucStore>,
}

impl Stores {
    /// Bundles one backend object that implements every trait.
    pub fn from_backend<B>(backend: &'static str, b: Arc<B>) -> Self
    where
        B: AuthStore
            + RosterStore
            + OfflineStore
            + XmlStore
            + BlockingStore
            + LastStore
            + ArchiveStore
            + SingletonStore
            + MucStore
            + 'static,
    {
        Stores {
            backend,
            auth: b.clone(),
            roster: b.clone(),
            offline: b.clone(),
            xml: b.clone(),
            blocking: b.clone(),
            last: b.clone(),
            archive: b.clone(),
            singletons: b.clone(),
            muc: b,
        }
    }
}
