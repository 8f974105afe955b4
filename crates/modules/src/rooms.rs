//! The machinery group chat services share (XEP-0045 MUC, MUC Light): one task
//! per active room, a bounded queue per room, cluster placement of rooms.
//!
//! The service puts stanzas for a room into the room's queue without waiting
//! (a full queue answers `resource-constraint`, type wait), so a busy room never
//! slows its senders; a room delivers into occupants' session mailboxes, which
//! are bounded on their own, so a slow occupant never slows its room. A room
//! with nobody active stops after the service's hibernation time and starts
//! again from storage with its next stanza.
//!
//! In a cluster a room runs on one node at a time: its task claims the room as
//! a cluster-wide singleton ([`ServerContext::singletons`]) before loading it.
//! On the other nodes the room's task forwards its stanzas, in order, to the
//! owner ([`meerkat_core::Router::forward_to_node`]), asking again every second
//! who owns the room, so the rooms of a lost node are taken over by the next
//! node that gets traffic for them.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use meerkat_core::cluster::{Lease, NodeName, Owner};
use meerkat_core::hooks::Service;
use meerkat_core::ServerContext;
use meerkat_stanza::{
    make_error_reply, make_iq_result, BareJid, ErrorType, IqType, Jid, Stanza, StanzaError, StanzaErrorCondition,
    StanzaKind,
};
use meerkat_xml::Element;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

/// A stanza for a room is forwarded between nodes at most this often, so two
/// nodes that briefly disagree on a room's owner cannot bounce it forever.
const MAX_HOPS: u8 = 2;

/// How often a node that forwards a room's stanzas to its owner asks again who
/// owns it (a lost owner's rooms are taken over by the next claim).
const OWNER_RECHECK: Duration = Duration::from_secs(1);

/// Delivers one copy of `el` to each of `targets` (occupant sessions, member
/// bare JIDs): its children are serialised once and shared by all copies
/// ([`Element::freeze_children`]), so a copy costs its envelope only, and its
/// addresses are parsed once.
pub(crate) async fn fan_out(ctx: &ServerContext, el: &Element, targets: impl IntoIterator<Item = Jid>) {
    let mut shared = el.clone();
    shared.freeze_children();
    // Each copy's `to` replaces this one in place: a copy's attributes are
    // cloned once, never grown.
    shared.set_attr("to", "");
    let from = shared.attr("from").and_then(|f| Jid::new(f).ok());
    let kind = match shared.name() {
        "message" => StanzaKind::Message,
        "presence" => StanzaKind::Presence,
        _ => StanzaKind::Iq,
    };
    for to in targets {
        let mut el = shared.clone();
        el.set_attr("to", to.as_str());
        ctx.route(Stanza { kind, from: from.clone(), to: Some(to), el, archive_text: None }).await;
    }
}

/// What a service knows of a running room without asking its task (for
/// disco#items).
#[derive(Debug, Default, Clone)]
pub(crate) struct Summary {
    pub exists: bool,
    pub public: bool,
    pub name: String,
}

/// One kind of room (MUC, MUC Light): how rooms load, answer stanzas and end.
#[async_trait::async_trait]
pub(crate) trait RoomKind: Send + Sync + 'static {
    /// The room state a room task owns.
    type Room: Send;
    /// Stanzas that may wait for one room.
    fn queue(&self) -> usize;
    /// How long a room with nobody active stays in memory.
    fn hibernate(&self) -> Duration;
    /// The room stored under `jid`, or `None`.
    async fn load(&self, ctx: &ServerContext, jid: &BareJid) -> Result<Option<Self::Room>, StanzaError>;
    /// Answers one stanza for the room (`room` is `None` when it does not exist;
    /// the handler may create it).
    async fn handle(&self, ctx: &ServerContext, room: &mut Option<Self::Room>, st: Stanza);
    /// Whether the room stays (else it is dropped from memory: destroyed, or a
    /// temporary room that emptied).
    fn keep(&self, room: &Self::Room) -> bool;
    /// Whether nobody is active in the room (it may hibernate).
    fn idle(&self, room: &Self::Room) -> bool;
    /// What disco#items of the service shows of the room.
    fn summary(&self, room: &Self::Room) -> Summary;
    /// IQs to the service's own domain: the reply's payload or error, or `None`
    /// when the IQ was handed on (to a room, which answers it).
    async fn service_iq(
        &self,
        host: &RoomHost<Self>,
        ctx: &ServerContext,
        st: &Stanza,
    ) -> Option<Result<Option<Element>, StanzaError>>
    where
        Self: Sized;
}

struct Slot {
    tx: mpsc::Sender<(Stanza, u8)>,
    summary: Arc<Mutex<Summary>>,
}

/// A group chat service: its rooms' tasks and the logic of its kind of room.
pub(crate) struct RoomHost<K: RoomKind> {
    pub kind: K,
    rooms: Mutex<HashMap<BareJid, Slot>>,
    me: Weak<RoomHost<K>>,
}

impl<K: RoomKind> RoomHost<K> {
    pub(crate) fn new(kind: K) -> Arc<Self> {
        Arc::new_cyclic(|me| RoomHost { kind, rooms: Mutex::new(HashMap::new()), me: me.clone() })
    }

    /// The running rooms of `domain` and what they show.
    pub(crate) fn running(&self, domain: &str) -> Vec<(BareJid, Summary)> {
        self.rooms
            .lock()
            .iter()
            .filter(|(j, _)| j.domain().as_str() == domain)
            .map(|(j, s)| (j.clone(), s.summary.lock().clone()))
            .collect()
    }

    /// Queues a stanza for its room, starting the room's task if needed.
    #[allow(clippy::result_large_err)] // the error gives the stanza back, by design
    fn dispatch(&self, ctx: &ServerContext, room: BareJid, st: Stanza, hops: u8) -> Result<(), Stanza> {
        let mut rooms = self.rooms.lock();
        let slot = rooms.entry(room.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(self.kind.queue());
            let summary = Arc::new(Mutex::new(Summary::default()));
            let host = self.me.upgrade().expect("the service outlives its rooms' dispatch");
            tokio::spawn(run_room(host, ctx.arc(), room.clone(), rx, summary.clone()));
            Slot { tx, summary }
        });
        match slot.tx.try_send((st, hops)) {
            Ok(()) => Ok(()),
            // A full queue; or a task that ended, which happens only after it
            // removed its slot under this lock (so never).
            Err(TrySendError::Full((st, _)) | TrySendError::Closed((st, _))) => Err(st),
        }
    }

    /// Removes a room's slot if nothing waits in its queue (then no stanza can
    /// reach the task any more); `false` if the task must go on.
    fn retire(&self, room: &BareJid, rx: &mpsc::Receiver<(Stanza, u8)>) -> bool {
        let mut rooms = self.rooms.lock();
        if !rx.is_empty() {
            return false;
        }
        rooms.remove(room);
        true
    }
}

#[async_trait::async_trait]
impl<K: RoomKind> Service for RoomHost<K> {
    async fn route(&self, ctx: &ServerContext, st: Stanza, hops: u8) {
        let Some(to) = st.to.clone() else { return };
        if to.node().is_none() {
            if st.kind == StanzaKind::Iq && matches!(st.iq_type(), Some(IqType::Get | IqType::Set)) {
                let mut reply = match self.kind.service_iq(self, ctx, &st).await {
                    None => return,
                    Some(Ok(p)) => make_iq_result(&st.el, p),
                    Some(Err(e)) => make_error_reply(&st.el, &e),
                };
                reply.set_attr("from", to.as_str());
                if let Some(f) = &st.from {
                    reply.set_attr("to", f.as_str());
                }
                ctx.route(Stanza::from_trusted(reply)).await;
            }
            return;
        }
        if let Err(st) = self.dispatch(ctx, to.to_bare(), st, hops) {
            let busy = StanzaError::new(StanzaErrorCondition::ResourceConstraint)
                .with_type(ErrorType::Wait)
                .with_text("the room is busy");
            if let Some(e) = st.error_reply(&busy) {
                if e.to.is_some() {
                    Box::pin(ctx.route(e)).await;
                }
            }
        }
    }
}

/// The task of one room: claims it in the cluster; runs it if this node owns
/// it, else forwards its stanzas to the owner.
async fn run_room<K: RoomKind>(
    host: Arc<RoomHost<K>>,
    ctx: Arc<ServerContext>,
    jid: BareJid,
    mut rx: mpsc::Receiver<(Stanza, u8)>,
    summary: Arc<Mutex<Summary>>,
) {
    let key = format!("room:{jid}");
    // A stanza that came back from the node this one forwarded to (that node
    // left or was lost meanwhile): it goes to whoever owns the room now.
    let mut back: Option<(Stanza, u8, NodeName)> = None;
    loop {
        match ctx.singletons().claim(&key).await {
            Ok(Owner::Me(lease)) => {
                let first = back.take().map(|(st, _, _)| st);
                run_owned(&host, &ctx, &jid, &mut rx, &summary, lease, first).await;
                ctx.singletons().release(&key).await;
                return;
            }
            Ok(Owner::Node(node)) => {
                if let Some((st, hops, from)) = back.take() {
                    if from == node {
                        // Still the node it came back from: give up on it.
                        refuse_moving(&ctx, &jid, &node, st).await;
                    } else {
                        forward(&ctx, &node, st, hops).await;
                    }
                }
                match forward_to_owner(&host, &ctx, &jid, &mut rx, &node).await {
                    Forwarding::End => return,
                    Forwarding::Reclaim(b) => back = b.map(|(st, hops)| (st, hops, node)),
                }
            }
            Err(e) => {
                tracing::error!(room = %jid, error = %e, "claiming a room in the cluster");
                fail_all(&host, &ctx, &jid, &mut rx, StanzaError::internal().with_type(ErrorType::Wait)).await;
                return;
            }
        }
    }
}

/// What a forwarding room task does next.
enum Forwarding {
    /// The task may end (no traffic for a while).
    End,
    /// Claim the room again; with the stanza that came back, if one did.
    Reclaim(Option<(Stanza, u8)>),
}

/// Hands a room's stanza to the node that runs the room.
async fn forward(ctx: &ServerContext, node: &NodeName, st: Stanza, hops: u8) {
    if let Err(st) = ctx.router.forward_to_node(node, st, hops) {
        if let Some(e) = st.error_reply(&StanzaError::internal()) {
            ctx.route(e).await;
        }
    }
}

/// Answers a stanza that went round between nodes without finding the room.
async fn refuse_moving(ctx: &ServerContext, jid: &BareJid, node: &NodeName, st: Stanza) {
    tracing::warn!(room = %jid, %node, "not forwarding a room's stanza again");
    let e = StanzaError::service_unavailable().with_type(ErrorType::Wait).with_text("the room is moving between nodes");
    if let Some(e) = st.error_reply(&e) {
        ctx.route(e).await;
    }
}

/// Forwards the room's stanzas to the node that runs it, until there is no
/// traffic for a while, the ownership check is due, or a stanza comes back
/// (the owner left or was lost: the room is claimed again at once).
async fn forward_to_owner<K: RoomKind>(
    host: &RoomHost<K>,
    ctx: &ServerContext,
    jid: &BareJid,
    rx: &mut mpsc::Receiver<(Stanza, u8)>,
    node: &NodeName,
) -> Forwarding {
    let recheck = tokio::time::sleep(OWNER_RECHECK);
    tokio::pin!(recheck);
    let mut forwarded = false;
    loop {
        tokio::select! {
            m = rx.recv() => {
                let Some((st, hops)) = m else { return Forwarding::End };
                forwarded = true;
                if hops >= MAX_HOPS {
                    return Forwarding::Reclaim(Some((st, hops)));
                }
                forward(ctx, node, st, hops + 1).await;
            }
            () = &mut recheck => {
                return if !forwarded && host.retire(jid, rx) { Forwarding::End } else { Forwarding::Reclaim(None) };
            }
        }
    }
}

/// Runs a room this node owns until it stops or another node takes it over.
async fn run_owned<K: RoomKind>(
    host: &RoomHost<K>,
    ctx: &ServerContext,
    jid: &BareJid,
    rx: &mut mpsc::Receiver<(Stanza, u8)>,
    summary: &Mutex<Summary>,
    mut lease: Lease,
    first: Option<Stanza>,
) {
    let kind = &host.kind;
    let mut room = match kind.load(ctx, jid).await {
        Ok(r) => r,
        Err(e) => {
            if let Some(er) = first.and_then(|st| st.error_reply(&e)) {
                ctx.route(er).await;
            }
            return fail_all(host, ctx, jid, rx, e).await;
        }
    };
    if let Some(st) = first {
        kind.handle(ctx, &mut room, st).await;
    }
    let hibernate = kind.hibernate();
    loop {
        let idle = room.as_ref().is_none_or(|r| kind.idle(r));
        tokio::select! {
            m = rx.recv() => {
                let Some((st, _hops)) = m else { return };
                kind.handle(ctx, &mut room, st).await;
            }
            () = tokio::time::sleep(hibernate), if idle => {
                if host.retire(jid, rx) {
                    return;
                }
            }
            () = lease.lost() => {
                // Another node took the room over (this node was taken for lost,
                // e.g. cut off by a partition): it runs there now, from storage.
                tracing::warn!(room = %jid, "room taken over by another node; stopping here");
                let e = StanzaError::service_unavailable().with_type(ErrorType::Wait).with_text("the room moved to another node");
                return fail_all(host, ctx, jid, rx, e).await;
            }
        }
        if room.as_ref().is_some_and(|r| !kind.keep(r)) {
            room = None;
        }
        *summary.lock() = room.as_ref().map(|r| kind.summary(r)).unwrap_or_default();
        if room.is_none() && host.retire(jid, rx) {
            return;
        }
    }
}

/// Answers every queued stanza with `err` and stops the room's task.
async fn fail_all<K: RoomKind>(
    host: &RoomHost<K>,
    ctx: &ServerContext,
    jid: &BareJid,
    rx: &mut mpsc::Receiver<(Stanza, u8)>,
    err: StanzaError,
) {
    loop {
        while let Ok((st, _)) = rx.try_recv() {
            if let Some(e) = st.error_reply(&err) {
                ctx.route(e).await;
            }
        }
        if host.retire(jid, rx) {
            return;
        }
    }
}
