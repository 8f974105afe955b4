//! The archive's background writer: the delivery hot path never awaits the database.
//!
//! Hooks push operations (rows to append, retractions) into an in-memory queue and
//! wake the writer task when `batch_size` rows wait; the task also wakes every
//! `flush_interval`. A write takes every operation waiting (group commit), and
//! writes consecutive appends in one transaction: when storage is slower than
//! the message rate for a while, the writes grow with the backlog instead of the
//! backlog growing (a fixed cap per write, each write waiting its turn on a busy
//! runtime, refused messages at 56,000 msgs/s: docs/benchmarks.md, session 15).
//! Before writing, it settles what the hot path could not decide without a
//! database round trip: preferences not yet cached, and the `roster` mode's
//! roster lookup.
//!
//! Every operation gets a sequence number. A query first calls [`Writer::flush_user`],
//! which waits until the user's last queued operation is written (read-your-writes),
//! and returns at once when none is waiting. The queue keeps the rows in the
//! vector the storage takes, and reuses the last batch's buffers: queuing a row
//! neither allocates nor compares keys, and a batch goes to storage without a copy.
//! A failed batch is logged and retried with back-off, never dropped; at shutdown
//! [`Writer::shutdown`] writes what is left.
//!
//! The queue is bounded (`max_queue`) without dropping anything: once it holds
//! `max_queue` operations, [`Writer::has_room`] is false and the sender's hook
//! refuses new archivable messages (`resource-constraint`, type `wait`) before they
//! are routed, so no message is accepted whose rows could not be kept. Rows of
//! messages already accepted — the recipient's side, on this node or arriving from
//! another, and retractions — are always queued: refusing them would lose a message
//! the sender was told was sent, or leave it in one archive only. They can take the
//! queue past the bound only by what was in flight when it filled (routing and the
//! bounded session mailboxes), plus one row per session racing the check; the
//! operations being written (at most what the queue held) are outside it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meerkat_storage::{Account, ArchiveEntry, ArchiveMode, ArchivePrefs, Direction, Stores};
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};

use super::PrefsCache;

/// What must still be checked before a row is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// Nothing: archive it.
    None,
    /// The owner's preferences were not cached: load and apply them.
    Prefs,
    /// The owner's mode is `roster`: archive if the other party is in the roster.
    Roster,
    /// Settled: the owner's preferences keep it out of the archive.
    Skip,
}

/// One queued operation.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// Append a row (after the check).
    Append(ArchiveEntry, Check),
    /// Replace a row by a tombstone (XEP-0424).
    Retract(Retraction),
}

impl Op {
    /// Whether the operation changes `owner`'s archive (a bare JID).
    fn is_for(&self, owner: &str) -> bool {
        match self {
            Op::Append(e, _) => owns(owner, &e.user, &e.domain),
            Op::Retract(r) => owns(owner, &r.user, &r.domain),
        }
    }
}

/// The replacement of the row of `user@domain`'s archive whose `id` attribute is
/// `origin_id` (in the conversation with `with`, in `direction`) by `tombstone`.
#[derive(Debug, Clone)]
pub(crate) struct Retraction {
    pub(crate) user: String,
    pub(crate) domain: String,
    pub(crate) with: String,
    pub(crate) direction: Direction,
    pub(crate) origin_id: String,
    pub(crate) tombstone: String,
}

/// Queued operations: the rows in one vector, as the storage takes them (a
/// batch without retractions or skipped rows goes to storage without a copy),
/// with their checks beside them, and the retractions by position.
#[derive(Debug, Default)]
struct Batch {
    rows: Vec<ArchiveEntry>,
    checks: Vec<Check>,
    /// Each retraction comes after the first `.0` rows.
    retractions: Vec<(usize, Retraction)>,
}

impl Batch {
    fn len(&self) -> usize {
        self.rows.len() + self.retractions.len()
    }

    fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.retractions.is_empty()
    }

    /// Drops `owner`'s operations, keeping the others' in order.
    fn forget(&mut self, owner: &str) {
        let rows = std::mem::take(&mut self.rows);
        let checks = std::mem::take(&mut self.checks);
        let mut retractions = std::mem::take(&mut self.retractions).into_iter().peekable();
        for (i, (e, c)) in rows.into_iter().zip(checks).enumerate() {
            while let Some((_, r)) = retractions.next_if(|(at, _)| *at <= i) {
                self.keep_retraction(owner, r);
            }
            if !owns(owner, &e.user, &e.domain) {
                self.rows.push(e);
                self.checks.push(c);
            }
        }
        for (_, r) in retractions {
            self.keep_retraction(owner, r);
        }
    }

    fn keep_retraction(&mut self, owner: &str, r: Retraction) {
        if !owns(owner, &r.user, &r.domain) {
            self.retractions.push((self.rows.len(), r));
        }
    }
}

/// Whether `owner` is the bare JID `user@domain` (without building it).
fn owns(owner: &str, user: &str, domain: &str) -> bool {
    owner.len() == user.len() + 1 + domain.len()
        && owner.starts_with(user)
        && owner.ends_with(domain)
        && owner.as_bytes()[user.len()] == b'@'
}

/// Slots of [`Queue::pending`].
const PENDING_SLOTS: usize = 4096;

/// The slot of `owner` (a bare JID) in [`Queue::pending`].
fn pending_slot(owner: &str) -> usize {
    use std::hash::BuildHasher;
    (foldhash::fast::FixedState::default().hash_one(owner) as usize) % PENDING_SLOTS
}

struct Queue {
    batch: Batch,
    /// The buffers of the last batch written, emptied: the next queue fills
    /// them instead of growing new ones.
    spare: Batch,
    next_seq: u64,
    /// By [`pending_slot`] of the owner: the sequence number of the last
    /// operation queued for an owner of that slot. [`Writer::flush_user`] waits
    /// for it: owners that share a slot may wait for each other's rows, which
    /// are written in the same write anyway (a write takes the whole queue).
    /// No allocation, no key comparison per row.
    pending: Box<[u64]>,
    /// The queue reached `max_queue` and has not drained below half of it since
    /// (for logging the transitions once).
    full: bool,
}

impl Queue {
    /// Publishes the length for [`Writer::has_room`] and logs when the queue fills
    /// or has drained again.
    fn update(&mut self, shared: &Shared) {
        let len = self.batch.len();
        shared.queued.store(len, Ordering::Relaxed);
        if !self.full && len >= shared.max_queue {
            self.full = true;
            tracing::warn!(
                rows = len,
                "archive: the write queue is full (max_queue); archivable messages are refused until storage catches up"
            );
        } else if self.full && len <= shared.max_queue / 2 {
            self.full = false;
            tracing::info!(rows = len, "archive: the write queue has drained; archivable messages are accepted again");
        }
    }

    /// Takes the queued operations (the sequence number of the last of them),
    /// leaving the spare buffers in their place.
    fn take(&mut self, shared: &Shared) -> (Batch, u64) {
        let spare = std::mem::take(&mut self.spare);
        let batch = std::mem::replace(&mut self.batch, spare);
        self.update(shared);
        (batch, self.next_seq - 1)
    }
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Notify,
    /// Sequence number up to which everything is written.
    written: watch::Sender<u64>,
    batch_size: usize,
    flush_interval: Duration,
    /// Operations queued at which new archivable messages are refused.
    max_queue: usize,
    /// The queue's length, readable without the lock (the send hook's check).
    queued: AtomicUsize,
    prefs: Arc<PrefsCache>,
    default_mode: ArchiveMode,
}

/// The writer's settings (`[modules.mod_mam.async_writer]`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Rows waiting that start a write before `flush_interval`.
    pub(crate) batch_size: usize,
    /// How long a row waits for its batch to fill.
    pub(crate) flush_interval: Duration,
    /// Queue length at which new archivable messages are refused.
    pub(crate) max_queue: usize,
}

/// The writer handle held by the module.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    started: std::sync::OnceLock<()>,
}

impl Writer {
    pub(crate) fn new(limits: Limits, prefs: Arc<PrefsCache>, mode: ArchiveMode) -> Self {
        let (written, _) = watch::channel(0);
        let shared = Shared {
            queue: Mutex::new(Queue {
                batch: Batch::default(),
                spare: Batch::default(),
                next_seq: 1,
                pending: vec![0; PENDING_SLOTS].into_boxed_slice(),
                full: false,
            }),
            wake: Notify::new(),
            written,
            batch_size: limits.batch_size,
            flush_interval: limits.flush_interval,
            max_queue: limits.max_queue,
            queued: AtomicUsize::new(0),
            prefs,
            default_mode: mode,
        };
        Writer { shared: Arc::new(shared), started: std::sync::OnceLock::new() }
    }

    /// Whether new archivable messages may be accepted: false while the queue
    /// holds `max_queue` operations (storage down or slower than the message rate).
    pub(crate) fn has_room(&self) -> bool {
        self.shared.queued.load(Ordering::Relaxed) < self.shared.max_queue
    }

    /// Queues an operation (no await, no database), whatever the queue's length:
    /// admission is decided before, by [`has_room`](Self::has_room). The writer task
    /// starts with the first operation, on the stores of the server that queued it.
    /// `owner` is the bare JID whose archive `op` changes.
    pub(crate) fn push(&self, stores: &Stores, owner: &str, op: Op) {
        debug_assert!(op.is_for(owner));
        self.started.get_or_init(|| {
            tokio::spawn(run(self.shared.clone(), stores.clone()));
        });
        let slot = pending_slot(owner);
        let full = {
            let mut q = self.shared.queue.lock();
            let seq = q.next_seq;
            q.next_seq += 1;
            match op {
                Op::Append(e, check) => {
                    q.batch.rows.push(e);
                    q.batch.checks.push(check);
                }
                Op::Retract(r) => {
                    let at = q.batch.rows.len();
                    q.batch.retractions.push((at, r));
                }
            }
            q.pending[slot] = seq;
            q.update(&self.shared);
            q.batch.len() >= self.shared.batch_size
        };
        if full {
            self.shared.wake.notify_one();
        }
    }

    /// Waits until every operation queued so far for `owner` is written. Returns
    /// `false` when that did not happen within `limit` (storage failing).
    pub(crate) async fn flush_user(&self, owner: &str, limit: Duration) -> bool {
        let target = self.shared.queue.lock().pending[pending_slot(owner)];
        let mut rx = self.shared.written.subscribe();
        if *rx.borrow() >= target {
            return true;
        }
        self.shared.wake.notify_one();
        tokio::time::timeout(limit, rx.wait_for(|w| *w >= target)).await.is_ok_and(|r| r.is_ok())
    }

    /// Drops `owner`'s queued operations and waits (up to `limit`) until a batch
    /// being written when called is done, so nothing of `owner`'s is written after
    /// this returns (account removal).
    pub(crate) async fn forget_user(&self, owner: &str, limit: Duration) {
        let last = {
            let mut q = self.shared.queue.lock();
            q.batch.forget(owner);
            q.update(&self.shared);
            q.next_seq - 1
        };
        self.shared.wake.notify_one();
        let mut rx = self.shared.written.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|w| *w >= last)).await;
    }

    /// Writes everything still queued (server shutdown).
    pub(crate) async fn shutdown(&self, stores: &Stores) {
        let (batch, _) = self.shared.queue.lock().take(&self.shared);
        if batch.is_empty() {
            return;
        }
        let n = batch.len();
        if write_batch(&self.shared, stores, batch, Some(5)).await.is_some() {
            tracing::info!(rows = n, "archive: pending rows written at shutdown");
        } else {
            tracing::error!(rows = n, "archive: pending rows could not be written before shutdown and are lost");
        }
    }
}

/// The writer task: waits for a full batch, a flush request or the interval, then
/// writes everything queued, and again while more was queued meanwhile; retries a
/// failing write with back-off.
async fn run(shared: Arc<Shared>, stores: Stores) {
    loop {
        let _ = tokio::time::timeout(shared.flush_interval, shared.wake.notified()).await;
        loop {
            // The whole queue, taken without moving a row; the next queue fills
            // the buffers of the last batch written (no regrowth under load).
            let (batch, last) = shared.queue.lock().take(&shared);
            if batch.is_empty() {
                // Every operation up to `last` was written by the writes before
                // this one, or forgotten (`forget_user`): nobody waits for them.
                shared.written.send_if_modified(|w| std::mem::replace(w, last.max(*w)) < last);
                break;
            }
            if let Some(emptied) = write_batch(&shared, &stores, batch, None).await {
                shared.queue.lock().spare = emptied;
            }
            shared.written.send_replace(last);
        }
        if Arc::strong_count(&shared) == 1 {
            return; // the module is gone (its server stopped)
        }
    }
}

/// Retries of a failed storage call: back-off from 100 ms doubling to 5 s, for
/// ever or `attempts` times.
struct Retry {
    delay: Duration,
    attempts: Option<u32>,
}

impl Retry {
    fn new(attempts: Option<u32>) -> Self {
        Retry { delay: Duration::from_millis(100), attempts }
    }

    /// After a failure: logs it, waits, and says whether to try again.
    async fn again(&mut self, what: &str, rows: usize, e: &meerkat_storage::Error) -> bool {
        if let Some(n) = &mut self.attempts {
            *n = n.saturating_sub(1);
            if *n == 0 {
                tracing::error!(rows, error = %e, "archive: {what} failed; giving up");
                return false;
            }
        }
        tracing::error!(rows, error = %e, "archive: {what} failed; retrying");
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Duration::from_secs(5));
        true
    }
}

/// Writes a batch in order: the rows between two retractions in one append.
/// Deferred checks are settled first, in place, so a retry does not repeat them;
/// the rows then go to storage without a copy (only rows skipped or a
/// retraction make it move them). Every storage call is retried until it
/// succeeds (or, with `attempts`, that many times: `None` when the batch could
/// not be written). Returns the batch's buffers, emptied, for the next queue.
async fn write_batch(shared: &Shared, stores: &Stores, batch: Batch, attempts: Option<u32>) -> Option<Batch> {
    let Batch { mut rows, mut checks, retractions } = batch;
    let mut retry = Retry::new(attempts);
    for (e, check) in rows.iter().zip(checks.iter_mut()) {
        while !matches!(check, Check::None | Check::Skip) {
            match admitted(shared, stores, e, *check).await {
                Ok(true) => *check = Check::None,
                Ok(false) => *check = Check::Skip,
                Err(err) => {
                    if !retry.again("checking whether to archive a row", 1, &err).await {
                        return None;
                    }
                }
            }
        }
    }
    if retractions.is_empty() {
        if checks.contains(&Check::Skip) {
            let mut keep = checks.iter();
            rows.retain(|_| keep.next() == Some(&Check::None));
        }
        checks.clear();
        let rows = append(stores, rows, &mut retry).await?;
        return Some(Batch { rows, checks, retractions });
    }
    // The rows between two retractions, those to archive.
    let kept = |rows: &mut dyn Iterator<Item = (ArchiveEntry, Check)>| -> Vec<ArchiveEntry> {
        rows.filter(|(_, c)| *c == Check::None).map(|(e, _)| e).collect()
    };
    let mut rows = rows.into_iter().zip(checks);
    let mut done = 0;
    for (at, r) in retractions {
        let before = kept(&mut rows.by_ref().take(at - done));
        done = at;
        append(stores, before, &mut retry).await?;
        let acc = Account::new(&r.user, &r.domain);
        while let Err(e) = stores.archive.retract(acc, &r.with, r.direction, &r.origin_id, &r.tombstone).await {
            if !retry.again("a retraction", 1, &e).await {
                return None;
            }
        }
    }
    append(stores, kept(&mut rows), &mut retry).await?;
    Some(Batch::default())
}

/// Appends rows in one transaction, retrying as `retry` allows. Returns their
/// vector, emptied, once written.
async fn append(stores: &Stores, rows: Vec<ArchiveEntry>, retry: &mut Retry) -> Option<Vec<ArchiveEntry>> {
    if rows.is_empty() {
        return Some(rows);
    }
    let rows = Arc::new(rows);
    while let Err(e) = stores.archive.append(rows.clone()).await {
        if !retry.again("a batch write", rows.len(), &e).await {
            return None;
        }
    }
    // Storage keeps no reference once the append is done.
    let mut rows = Arc::try_unwrap(rows).unwrap_or_default();
    rows.clear();
    Some(rows)
}

/// Settles a row's deferred check.
async fn admitted(shared: &Shared, stores: &Stores, e: &ArchiveEntry, check: Check) -> meerkat_storage::Result<bool> {
    let acc = Account::new(&e.user, &e.domain);
    let check = match check {
        Check::None => return Ok(true),
        Check::Skip => return Ok(false),
        Check::Roster => Check::Roster,
        Check::Prefs => {
            let owner = format!("{}@{}", e.user, e.domain);
            let prefs = match shared.prefs.get(&owner) {
                Some(p) => p,
                None => {
                    let p = Arc::new(stores.archive.get_prefs(acc).await?.unwrap_or_else(|| ArchivePrefs {
                        default_mode: shared.default_mode,
                        ..ArchivePrefs::default()
                    }));
                    shared.prefs.insert(&owner, p.clone());
                    p
                }
            };
            match super::decide(&prefs, &e.msg.with_jid) {
                Some(true) => return Ok(true),
                Some(false) => return Ok(false),
                None => Check::Roster,
            }
        }
    };
    debug_assert_eq!(check, Check::Roster);
    Ok(stores.roster.get_item(acc, &e.msg.with_jid).await?.is_some_and(|i| i.visible))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use meerkat_storage::{ArchivePage, ArchiveQuery, ArchiveStore, ArchivedMessage, Error, Result as StoreResult};

    use super::*;

    /// An archive whose first `fails` appends fail; it records the rows of each
    /// append that succeeds.
    struct Flaky {
        inner: Arc<dyn ArchiveStore>,
        fails: AtomicUsize,
        appended: Mutex<Vec<usize>>,
    }

    impl Flaky {
        fn new(inner: Arc<dyn ArchiveStore>, fails: usize) -> Arc<Self> {
            Arc::new(Flaky { inner, fails: AtomicUsize::new(fails), appended: Mutex::default() })
        }
    }

    #[async_trait::async_trait]
    impl ArchiveStore for Flaky {
        async fn append(&self, rows: Arc<Vec<ArchiveEntry>>) -> StoreResult<()> {
            if !rows.is_empty()
                && self.fails.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
            {
                return Err(Error::Backend("injected failure".into()));
            }
            let n = rows.len();
            self.inner.append(rows).await?;
            self.appended.lock().push(n);
            Ok(())
        }
        async fn query(&self, acc: Account<'_>, q: &ArchiveQuery) -> StoreResult<ArchivePage> {
            self.inner.query(acc, q).await
        }
        async fn fetch_ids(&self, acc: Account<'_>, ids: &[i64]) -> StoreResult<Vec<ArchivedMessage>> {
            self.inner.fetch_ids(acc, ids).await
        }
        async fn retract(
            &self,
            acc: Account<'_>,
            with: &str,
            d: Direction,
            origin: &str,
            tomb: &str,
        ) -> StoreResult<Option<i64>> {
            self.inner.retract(acc, with, d, origin, tomb).await
        }
        async fn get_prefs(&self, acc: Account<'_>) -> StoreResult<Option<ArchivePrefs>> {
            self.inner.get_prefs(acc).await
        }
        async fn set_prefs(&self, acc: Account<'_>, prefs: &ArchivePrefs) -> StoreResult<()> {
            self.inner.set_prefs(acc, prefs).await
        }
        async fn remove_archive(&self, acc: Account<'_>) -> StoreResult<()> {
            self.inner.remove_archive(acc).await
        }
    }

    /// A writer that flushes only when a batch is full or a user's rows are asked for.
    fn writer(batch_size: usize, max_queue: usize) -> Writer {
        let limits = Limits { batch_size, flush_interval: Duration::from_secs(60), max_queue };
        Writer::new(limits, Arc::new(PrefsCache::default()), ArchiveMode::Always)
    }

    fn entry(id: i64) -> ArchiveEntry {
        ArchiveEntry {
            user: "alice".into(),
            domain: "localhost".into(),
            msg: ArchivedMessage {
                id,
                with_jid: "bob@localhost".into(),
                with_resource: Default::default(),
                direction: Direction::Incoming,
                sender: "bob@localhost/r".into(),
                origin_id: None,
                stanza: format!("<message id='{id}'/>").into(),
            },
        }
    }

    #[tokio::test]
    async fn failed_batches_are_retried_not_dropped_and_flush_waits_per_user() {
        let mut stores = meerkat_storage::memory::stores();
        stores.archive = Flaky::new(stores.archive.clone(), 2);
        let w = writer(2, 100);
        for id in 1..=5 {
            w.push(&stores, "alice@localhost", Op::Append(entry(id), Check::None));
        }
        // Nothing queued for bob: no wait at all.
        assert!(w.flush_user("bob@localhost", Duration::from_millis(1)).await);
        // Alice's rows: written despite two failed attempts (100 ms + 200 ms back-off).
        assert!(w.flush_user("alice@localhost", Duration::from_secs(5)).await);
        let acc = Account::new("alice", "localhost");
        let page = stores.archive.query(acc, &ArchiveQuery::default()).await.unwrap();
        assert_eq!(page.rows.iter().map(|m| m.id).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
        // Preferences not cached are loaded by the writer: "never" keeps rows out.
        let prefs = ArchivePrefs { default_mode: ArchiveMode::Never, ..ArchivePrefs::default() };
        stores.archive.set_prefs(acc, &prefs).await.unwrap();
        w.push(&stores, "alice@localhost", Op::Append(entry(6), Check::Prefs));
        assert!(w.flush_user("alice@localhost", Duration::from_secs(5)).await);
        assert_eq!(stores.archive.query(acc, &ArchiveQuery::default()).await.unwrap().rows.len(), 5);
    }

    /// Group commit: a write takes every row waiting, however many batches they
    /// fill, so a writer that fell behind catches up in one round trip.
    #[tokio::test]
    async fn a_write_takes_every_row_waiting() {
        let mut stores = meerkat_storage::memory::stores();
        let flaky = Flaky::new(stores.archive.clone(), 0);
        stores.archive = flaky.clone();
        let w = writer(2, 100);
        // Queued before the writer task runs (this runtime has one thread).
        for id in 1..=9 {
            w.push(&stores, "alice@localhost", Op::Append(entry(id), Check::None));
        }
        assert!(w.flush_user("alice@localhost", Duration::from_secs(5)).await);
        assert_eq!(*flaky.appended.lock(), [9], "one append of the nine rows");
        w.push(&stores, "alice@localhost", Op::Append(entry(10), Check::None));
        assert!(w.flush_user("alice@localhost", Duration::from_secs(5)).await);
        assert_eq!(*flaky.appended.lock(), [9, 1]);
    }

    /// The next queue fills the buffers of the batch written before it.
    #[tokio::test]
    async fn the_queue_reuses_the_buffers_of_the_last_batch_written() {
        let stores = meerkat_storage::memory::stores();
        let w = writer(100, 1000);
        for id in 1..=50 {
            w.push(&stores, "alice@localhost", Op::Append(entry(id), Check::None));
        }
        assert!(w.flush_user("alice@localhost", Duration::from_secs(5)).await);
        let q = w.shared.queue.lock();
        assert!(q.batch.rows.is_empty() && q.spare.rows.is_empty());
        // Written and emptied, its buffer is the spare (or the queue, if a take
        // happened since): room for the 50 rows either way, without growing.
        assert!(q.spare.rows.capacity().max(q.batch.rows.capacity()) >= 50);
    }

    /// Rows forgotten (account removal) leave nothing to wait for: neither the
    /// removal nor a later query of that owner (or of one sharing its slot)
    /// waits for a write that will not come.
    #[tokio::test]
    async fn forgetting_a_user_waits_for_nothing_and_leaves_no_wait_behind() {
        let stores = meerkat_storage::memory::stores();
        let w = writer(100, 1000);
        for id in 1..=3 {
            w.push(&stores, "alice@localhost", Op::Append(entry(id), Check::None));
        }
        let started = std::time::Instant::now();
        w.forget_user("alice@localhost", Duration::from_secs(5)).await;
        assert!(started.elapsed() < Duration::from_secs(1), "forget_user waited {:?}", started.elapsed());
        assert!(w.flush_user("alice@localhost", Duration::from_millis(500)).await);
        let acc = Account::new("alice", "localhost");
        assert!(stores.archive.query(acc, &ArchiveQuery::default()).await.unwrap().rows.is_empty());
    }

    #[test]
    fn forgetting_an_owner_keeps_the_others_operations_in_order() {
        let row = |user: &str, id| {
            let mut e = entry(id);
            e.user = user.into();
            e
        };
        let retraction = |user: &str, origin: &str| Retraction {
            user: user.into(),
            domain: "localhost".into(),
            with: "bob@localhost".into(),
            direction: Direction::Outgoing,
            origin_id: origin.into(),
            tombstone: String::new(),
        };
        let mut b = Batch::default();
        for (user, id) in [("alice", 1), ("carol", 2), ("alice", 3), ("carol", 4)] {
            b.rows.push(row(user, id));
            b.checks.push(if id == 4 { Check::Prefs } else { Check::None });
        }
        // carol's retraction after rows 1-2, alice's after 1-3, carol's at the end.
        b.retractions =
            vec![(2, retraction("carol", "a")), (3, retraction("alice", "b")), (4, retraction("carol", "c"))];
        b.forget("alice@localhost");
        assert_eq!(b.rows.iter().map(|e| e.msg.id).collect::<Vec<_>>(), [2, 4]);
        assert_eq!(b.checks, [Check::None, Check::Prefs]);
        let kept: Vec<(usize, &str)> = b.retractions.iter().map(|(at, r)| (*at, r.origin_id.as_str())).collect();
        assert_eq!(kept, [(1, "a"), (2, "c")], "each still after the same rows of carol's");
        assert!(owns("alice@localhost", "alice", "localhost"));
        assert!(!owns("alice@localhost", "alic", "elocalhost") && !owns("alice@localhost", "alice", "localhos"));
    }

    #[tokio::test]
    async fn a_retraction_applies_to_rows_of_its_own_batch_in_order_despite_failures() {
        let mut stores = meerkat_storage::memory::stores();
        // The first two appends fail: the rows before the retraction, then again.
        stores.archive = Flaky::new(stores.archive.clone(), 2);
        let w = writer(10, 100);
        let with_origin = |id: i64| {
            let mut e = entry(id);
            e.msg.origin_id = Some(format!("o{id}").into());
            e
        };
        w.push(&stores, "alice@localhost", Op::Append(with_origin(1), Check::None));
        w.push(&stores, "alice@localhost", Op::Append(with_origin(2), Check::None));
        let retract = Op::Retract(Retraction {
            user: "alice".into(),
            domain: "localhost".into(),
            with: "bob@localhost".into(),
            direction: Direction::Incoming,
            origin_id: "o1".into(),
            tombstone: "<retracted/>".into(),
        });
        w.push(&stores, "alice@localhost", retract);
        w.push(&stores, "alice@localhost", Op::Append(with_origin(3), Check::None));
        assert!(w.flush_user("alice@localhost", Duration::from_secs(5)).await);
        let acc = Account::new("alice", "localhost");
        let rows = stores.archive.query(acc, &ArchiveQuery::default()).await.unwrap().rows;
        let got: Vec<(i64, &str)> = rows.iter().map(|m| (m.id, &*m.stanza)).collect();
        // The retraction found row 1, written before it in the same batch; row 3
        // came after it and is untouched.
        assert_eq!(got, vec![(1, "<retracted/>"), (2, "<message id='2'/>"), (3, "<message id='3'/>")]);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_new_messages_until_storage_recovers_and_loses_nothing() {
        let mut stores = meerkat_storage::memory::stores();
        // Storage is down until told otherwise.
        let flaky = Flaky::new(stores.archive.clone(), usize::MAX);
        stores.archive = flaky.clone();
        let w = writer(2, 6);
        // Admission as the send hook decides it: a message is accepted (its row
        // queued) only while the queue has room, else refused.
        let (mut accepted, mut refused) = (Vec::new(), 0);
        for id in 1..=20 {
            if w.has_room() {
                w.push(&stores, "alice@localhost", Op::Append(entry(id), Check::None));
                accepted.push(id);
            } else {
                refused += 1;
            }
            // The writer task takes its first (failing) batch as soon as it is full.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // One batch of 2 being retried, 6 rows queued: the rest was refused.
        assert_eq!(accepted, (1..=8).collect::<Vec<_>>());
        assert_eq!(refused, 12);
        assert!(!w.has_room());
        // A message already accepted elsewhere (the recipient's row) is queued past
        // the bound, not dropped.
        w.push(&stores, "alice@localhost", Op::Append(entry(100), Check::None));
        accepted.push(100);
        let acc = Account::new("alice", "localhost");
        assert!(stores.archive.query(acc, &ArchiveQuery::default()).await.unwrap().rows.is_empty());
        // Storage recovers: every accepted row is written, and messages are admitted again.
        flaky.fails.store(0, Ordering::SeqCst);
        assert!(w.flush_user("alice@localhost", Duration::from_secs(10)).await);
        assert!(w.has_room());
        let q = ArchiveQuery { limit: 100, ..ArchiveQuery::default() };
        let page = stores.archive.query(acc, &q).await.unwrap();
        assert_eq!(page.rows.iter().map(|m| m.id).collect::<Vec<_>>(), accepted);
    }
}
