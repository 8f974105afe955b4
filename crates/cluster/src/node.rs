//! The cluster task: one per node, owning the directory of its own sessions, what
//! it knows of every other node, and the numbered streams of forwarded traffic.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use meerkat_config::Cluster as ClusterConfig;
use meerkat_core::cluster::{Forward, MsgTarget, NodeName};
use meerkat_core::{ServerContext, SessionId, SessionMsg};
use meerkat_router::LocalRouter;
use meerkat_stanza::{BareJid, FullJid, Stanza, StreamError};
use meerkat_storage::Subscription;
use meerkat_xml::{Element, Limits};
use tokio::sync::{mpsc, oneshot, watch};

use crate::link::Work;
use crate::singletons::{owner_value, Alive, Held};
use crate::wire::{Envelope, Msg, Payload, SessionMsgWire, SnapEntry, Target};

/// How often a starting node checks whether it knows every other node yet.
const STARTUP_TICK: Duration = Duration::from_millis(10);
/// Traffic received is acknowledged on its own after this long when no
/// traffic back to its sender carried the acknowledgement first.
const ACK_DELAY: Duration = Duration::from_millis(50);
/// Unacknowledged traffic is sent again after this long without progress.
const RETRANSMIT_AFTER: Duration = Duration::from_millis(1000);
/// Sessions per snapshot message (keeps messages well under NATS's 1 MB).
const SNAPSHOT_CHUNK: usize = 500;
/// A sync request unanswered for this long is sent again.
const SYNC_RETRY: Duration = Duration::from_secs(2);
/// Most work taken from the router per turn before what it produced is sent
/// (and other events get their turn).
const WORK_BURST: usize = 4096;
/// Most bytes per batch (NATS refuses messages over 1 MB by default).
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// One of this node's sessions, as the directory publishes it.
struct Mine {
    id: u64,
    since: u64,
    priority: i8,
    presence: Option<String>,
}

/// What this node knows about another.
struct Peer {
    inc: u64,
    last_seen: Instant,
    /// Its directory: applied up to `applied`, once a snapshot arrived.
    synced: bool,
    applied: u64,
    /// Directory updates that arrived while a snapshot was awaited.
    pending: Vec<Msg>,
    /// The sync request in progress (number, sent at) and the snapshot so far.
    sync: Option<(u64, Instant)>,
    snapshot: Vec<SnapEntry>,
    /// Traffic from it: its epoch and the next number expected.
    in_epoch: u64,
    in_next: u64,
    /// Since when traffic from it waits for an acknowledgement.
    ack_due: Option<Instant>,
    /// Traffic to it: our epoch, the next number, and what is unacknowledged.
    out_epoch: u64,
    out_next: u64,
    inflight: VecDeque<(u64, Bytes)>,
    progress_at: Instant,
    /// Numbered this turn, not yet published (also in `inflight`).
    unsent: Vec<Bytes>,
    /// Its subject (`<cluster>.node.<name>`).
    subject: async_nats::Subject,
}

impl Peer {
    fn new(inc: u64, subject: async_nats::Subject) -> Self {
        let now = Instant::now();
        Peer {
            inc,
            last_seen: now,
            synced: false,
            applied: 0,
            pending: Vec::new(),
            sync: None,
            snapshot: Vec::new(),
            in_epoch: 0,
            in_next: 1,
            ack_due: None,
            out_epoch: random_u64(),
            out_next: 1,
            inflight: VecDeque::new(),
            progress_at: now,
            unsent: Vec::new(),
            subject,
        }
    }

    /// What this node acknowledges of the traffic from it: `(epoch, last
    /// number received in order)`.
    fn ack_point(&self) -> (u64, u64) {
        (self.in_epoch, self.in_next - 1)
    }

    /// Everything up to `seq` of `epoch` that this node sent it arrived.
    fn acked(&mut self, epoch: u64, seq: u64) {
        if epoch != self.out_epoch {
            return;
        }
        let before = self.inflight.len();
        while self.inflight.front().is_some_and(|(s, _)| *s <= seq) {
            self.inflight.pop_front();
        }
        if self.inflight.len() != before {
            self.progress_at = Instant::now();
        }
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS random source is available");
    u64::from_le_bytes(b)
}

/// Limits for stanzas and events from other nodes (trusted, but bounded).
fn peer_limits() -> Limits {
    Limits { max_stanza_bytes: 4 << 20, max_depth: 64, ..Limits::default() }
}

pub(crate) struct Node {
    ctx: Arc<ServerContext>,
    router: Arc<LocalRouter>,
    client: async_nats::Client,
    me: NodeName,
    inc: u64,
    dir_subject: async_nats::Subject,
    /// Directory updates of this turn, not yet published.
    dir_unsent: Vec<Bytes>,
    node_prefix: String,
    dir_sub: async_nats::Subscriber,
    my_sub: async_nats::Subscriber,
    heartbeat: Duration,
    timeout: Duration,
    work: mpsc::UnboundedReceiver<Work>,
    dir_seq: u64,
    mine: HashMap<String, Mine>,
    peers: HashMap<NodeName, Peer>,
    next_req: u64,
    /// Live members (this node included), for singleton ownership.
    alive: Alive,
    /// Singletons this node owns.
    held: Held,
    /// Stanzas for this node's services (MUC rooms), handed over in order.
    services: mpsc::UnboundedSender<(Stanza, u8)>,
}

impl Node {
    pub(crate) async fn new(
        ctx: Arc<ServerContext>,
        router: Arc<LocalRouter>,
        client: async_nats::Client,
        cfg: &ClusterConfig,
        me: NodeName,
        work: mpsc::UnboundedReceiver<Work>,
    ) -> anyhow::Result<Self> {
        let name = cfg.name.get_ref();
        let dir_subject: async_nats::Subject = format!("{name}.dir").into();
        let node_prefix = format!("{name}.node.");
        let dir_sub = client.subscribe(dir_subject.clone()).await?;
        let my_sub = client.subscribe(format!("{node_prefix}{me}")).await?;
        let inc = random_u64();
        let alive: Alive = Default::default();
        alive.write().insert(me.clone(), inc);
        let (services, inbox) = mpsc::unbounded_channel();
        tokio::spawn(serve_services(ctx.clone(), inbox));
        Ok(Node {
            ctx,
            router,
            client,
            me,
            inc,
            dir_subject,
            dir_unsent: Vec::new(),
            node_prefix,
            dir_sub,
            my_sub,
            heartbeat: Duration::from_millis(cfg.heartbeat_interval_ms),
            timeout: Duration::from_millis(cfg.node_timeout_ms),
            work,
            dir_seq: 0,
            mine: HashMap::new(),
            peers: HashMap::new(),
            next_req: 1,
            alive,
            held: Default::default(),
            services,
        })
    }

    /// This node's incarnation.
    pub(crate) fn incarnation(&self) -> u64 {
        self.inc
    }

    /// The live-member map the cluster task keeps current.
    pub(crate) fn alive(&self) -> Alive {
        self.alive.clone()
    }

    /// The singletons this node owns (their leases hear of takeovers here).
    pub(crate) fn held(&self) -> Held {
        self.held.clone()
    }

    pub(crate) async fn run(mut self, mut stop: watch::Receiver<bool>, ready: oneshot::Sender<()>) {
        let mut ready = Some(ready);
        let started = Instant::now();
        let mut last_heartbeat = Instant::now() - self.heartbeat;
        // The timers (acknowledgements due, stalled streams, silent nodes, the
        // next heartbeat) wake the task when the first of them is due, not on a
        // fixed tick: a quiet node stays asleep.
        let timer = tokio::time::sleep_until(Instant::now().into());
        tokio::pin!(timer);
        tracing::info!(node = %self.me, inc = self.inc, "joined the cluster");
        loop {
            tokio::select! {
                w = self.work.recv() => match w {
                    Some(w) => self.on_work_burst(w).await,
                    None => break,
                },
                m = self.dir_sub.next() => match m {
                    Some(m) => self.on_message(&m.payload).await,
                    None => break,
                },
                m = self.my_sub.next() => match m {
                    Some(m) => self.on_message(&m.payload).await,
                    None => break,
                },
                _ = &mut timer => {
                    if last_heartbeat.elapsed() >= self.heartbeat {
                        last_heartbeat = Instant::now();
                        let hb = Msg::Heartbeat { seq: self.dir_seq };
                        self.publish_dir(hb).await;
                    }
                    self.on_timers().await;
                    // Ready once a heartbeat interval passed (peers announced
                    // themselves) and every peer heard of sent its snapshot.
                    if ready.is_some()
                        && started.elapsed() > self.heartbeat + self.heartbeat / 2
                        && self.peers.values().all(|p| p.synced)
                    {
                        let _ = ready.take().map(|r| r.send(()));
                    }
                }
                _ = stop.changed() => break,
            }
            let now = Instant::now();
            let mut next = self.next_deadline(last_heartbeat);
            if ready.is_some() {
                next = next.min(now + STARTUP_TICK);
            }
            // Whatever is due was handled above; never spin on a past deadline.
            let next = next.max(now + Duration::from_millis(1));
            if next != timer.deadline().into_std() {
                timer.as_mut().reset(next.into());
            }
        }
        // Orderly stop: what the sessions did while closing goes out first, then
        // the others forget this node's sessions at once rather than after the
        // timeout.
        while let Ok(w) = self.work.try_recv() {
            self.on_work(w).await;
        }
        self.flush().await;
        self.publish_dir(Msg::Bye).await;
        let _ = self.client.flush().await;
        tracing::info!(node = %self.me, "left the cluster");
    }

    fn envelope(&self, msg: Msg) -> Bytes {
        Envelope { from: self.me.to_string(), inc: self.inc, msg }.encode()
    }

    async fn publish_dir(&self, msg: Msg) {
        let b = self.envelope(msg);
        if let Err(e) = self.client.publish(self.dir_subject.clone(), b).await {
            tracing::warn!(error = %e, "cannot publish to the cluster directory");
        }
    }

    fn subject_of(&self, node: &str) -> async_nats::Subject {
        format!("{}{node}", self.node_prefix).into()
    }

    async fn publish_to(&self, node: &str, msg: Msg) {
        let b = self.envelope(msg);
        let subject = match self.peers.get(node) {
            Some(p) => p.subject.clone(),
            None => self.subject_of(node),
        };
        publish(&self.client, subject, b).await;
    }

    /// Publishes what this turn's work queued: directory updates first, then
    /// each node's forwarded traffic. The queues keep their capacity for the
    /// next turn.
    async fn flush(&mut self) {
        let (client, me, inc) = (&self.client, &*self.me, self.inc);
        if !self.dir_unsent.is_empty() {
            publish_all(client, me, inc, &self.dir_subject, &self.dir_unsent).await;
            self.dir_unsent.clear();
        }
        for p in self.peers.values_mut() {
            if !p.unsent.is_empty() {
                publish_all(client, me, inc, &p.subject, &p.unsent).await;
                p.unsent.clear();
            }
        }
    }

    /// A turn of work from the router: this item, what else is queued, and what
    /// the sessions that can run now add to it; then everything goes out, one
    /// NATS message per destination. Between turns nothing is left unsent, so
    /// heartbeats and acknowledgements never overtake what they describe.
    async fn on_work_burst(&mut self, first: Work) {
        self.on_work(first).await;
        let mut taken = 1;
        self.take_queued(&mut taken).await;
        if taken < WORK_BURST {
            // Let the tasks that are ready run first (a session reading its
            // client's stanzas queues more here), then take what they queued.
            tokio::task::yield_now().await;
            self.take_queued(&mut taken).await;
        }
        self.flush().await;
    }

    /// Handles the work queued now, up to the turn's `WORK_BURST`.
    async fn take_queued(&mut self, taken: &mut usize) {
        while *taken < WORK_BURST {
            let Ok(w) = self.work.try_recv() else { break };
            self.on_work(w).await;
            *taken += 1;
        }
    }

    /// Work from the router. Nothing is published here: see [`Node::flush`].
    async fn on_work(&mut self, w: Work) {
        match w {
            Work::Added { jid, id, since } => {
                self.dir_seq += 1;
                self.mine.insert(jid.to_string(), Mine { id: id.0, since, priority: 0, presence: None });
                let m = Msg::Added { seq: self.dir_seq, jid: jid.to_string(), id: id.0, since };
                self.dir_unsent.push(self.envelope(m));
            }
            Work::Removed { jid, id } => {
                if self.mine.get(jid.as_str()).is_some_and(|m| m.id == id.0) {
                    self.mine.remove(jid.as_str());
                }
                self.dir_seq += 1;
                let m = Msg::Removed { seq: self.dir_seq, jid: jid.to_string(), id: id.0 };
                self.dir_unsent.push(self.envelope(m));
            }
            Work::Presence { jid, id, priority, presence } => {
                let xml = presence.map(|p| p.to_string_with_ns());
                if let Some(m) = self.mine.get_mut(jid.as_str()).filter(|m| m.id == id.0) {
                    m.priority = priority;
                    m.presence = xml.clone();
                }
                self.dir_seq += 1;
                let m = Msg::Presence { seq: self.dir_seq, jid: jid.to_string(), id: id.0, priority, presence: xml };
                self.dir_unsent.push(self.envelope(m));
            }
            Work::Forward { node, what } => self.forward(node, what).await,
        }
    }

    /// Numbers a forward for `node`, keeps it until acknowledged, and queues it
    /// for this turn's [`Node::flush`]. The message is encoded once: a
    /// retransmission sends the same bytes.
    async fn forward(&mut self, node: NodeName, what: Forward) {
        let Some(peer) = self.peers.get_mut(&node) else {
            // The node was lost between the routing decision and now.
            match what {
                Forward::Stanza { to, stanza, hops, fallback: true } => {
                    let (ctx, router) = (self.ctx.clone(), self.router.clone());
                    tokio::spawn(async move { router.route_fallback(&ctx, to, stanza, hops).await });
                }
                // The room's node is gone: the service here claims it again.
                Forward::Service { stanza, hops } => {
                    let _ = self.services.send((stanza, hops));
                }
                _ => {}
            }
            return;
        };
        let seq = peer.out_next;
        let (from, inc, to_inc, epoch) = (&*self.me, self.inc, peer.inc, peer.out_epoch);
        // What arrived from that node rides along (the timer then has no
        // acknowledgement of its own to send it).
        let ack = peer.ack_due.take().map(|_| peer.ack_point());
        let bytes = match what {
            Forward::Stanza { to, stanza, fallback, hops } => {
                Envelope::encode_stanza(from, inc, to_inc, epoch, seq, ack, to.as_str(), &stanza.el, fallback, hops)
            }
            other => {
                let Some(payload) = encode_forward(other) else { return };
                Envelope { from: from.to_string(), inc, msg: Msg::Data { to_inc, epoch, seq, ack, payload } }.encode()
            }
        };
        peer.out_next += 1;
        if peer.inflight.is_empty() {
            peer.progress_at = Instant::now();
        }
        peer.inflight.push_back((seq, bytes.clone()));
        if peer.inflight.len() % 10_000 == 0 {
            tracing::warn!(%node, unacked = peer.inflight.len(), "a cluster node is slow to acknowledge");
        }
        peer.unsent.push(bytes);
    }

    /// A NATS message from another node (or this node's own directory
    /// messages): one envelope or a batch of them.
    async fn on_message(&mut self, b: &[u8]) {
        match crate::wire::split_batch(b) {
            Some(items) => {
                for item in items {
                    self.on_envelope(item).await;
                }
            }
            None => self.on_envelope(b).await,
        }
    }

    async fn on_envelope(&mut self, b: &[u8]) {
        let Some(env) = Envelope::decode(b) else {
            tracing::warn!(bytes = b.len(), "ignoring a malformed cluster message");
            return;
        };
        if *env.from == *self.me {
            if env.inc != self.inc {
                tracing::error!(node = %self.me, "another node runs with this node's name: node names must be unique");
            }
            return;
        }
        let name: NodeName = env.from.as_str().into();
        if let Msg::Took { key, from } = &env.msg {
            if *from == owner_value(&self.me, self.inc) {
                if let Some(tx) = self.held.lock().remove(key) {
                    tracing::warn!(%key, by = %name, "another cluster node took over a singleton of this node");
                    let _ = tx.send(true);
                }
            }
            return;
        }
        if matches!(env.msg, Msg::Bye) {
            if self.peers.get(&name).is_some_and(|p| p.inc == env.inc) {
                tracing::info!(node = %name, "cluster node left");
                self.lost(&name, false).await;
            }
            return;
        }
        match self.peers.get(&name) {
            Some(p) if p.inc == env.inc => {}
            Some(_) => {
                tracing::info!(node = %name, "cluster node restarted");
                self.lost(&name, true).await;
                self.peers.insert(name.clone(), Peer::new(env.inc, self.subject_of(&name)));
                self.alive.write().insert(name.clone(), env.inc);
                self.request_sync(&name).await;
            }
            None => {
                tracing::info!(node = %name, "cluster node joined");
                self.peers.insert(name.clone(), Peer::new(env.inc, self.subject_of(&name)));
                self.alive.write().insert(name.clone(), env.inc);
                self.request_sync(&name).await;
            }
        }
        let peer = self.peers.get_mut(&name).expect("inserted above");
        peer.last_seen = Instant::now();
        match env.msg {
            Msg::Heartbeat { seq } => {
                let resync = (peer.synced && seq > peer.applied)
                    || (!peer.synced && peer.sync.is_none_or(|(_, at)| at.elapsed() > SYNC_RETRY));
                if resync {
                    if peer.synced {
                        tracing::warn!(node = %name, "missed cluster directory updates: resynchronising");
                    }
                    self.request_sync(&name).await;
                }
            }
            m @ (Msg::Added { .. } | Msg::Removed { .. } | Msg::Presence { .. }) => {
                if !peer.synced {
                    peer.pending.push(m);
                    return;
                }
                if !self.apply_update(&name, m) {
                    self.request_sync(&name).await;
                }
            }
            Msg::SyncRequest { req } => self.send_snapshot(&name, req).await,
            Msg::Snapshot { req, seq, last, entries } => {
                if peer.sync.is_none_or(|(r, _)| r != req) {
                    return; // an answer to an older request
                }
                peer.snapshot.extend(entries);
                if last {
                    self.install_snapshot(&name, seq);
                }
            }
            Msg::Data { to_inc, epoch, seq, ack, payload } => {
                if to_inc != self.inc {
                    return; // for this node's former incarnation
                }
                if let Some((ack_epoch, ack_seq)) = ack {
                    peer.acked(ack_epoch, ack_seq);
                }
                if epoch != peer.in_epoch {
                    peer.in_epoch = epoch;
                    peer.in_next = 1;
                }
                peer.ack_due.get_or_insert_with(Instant::now);
                if seq != peer.in_next {
                    return; // a duplicate, or after a gap: the sender sends again
                }
                peer.in_next += 1;
                self.deliver(payload);
            }
            Msg::Ack { to_inc, epoch, seq } => {
                if to_inc == self.inc {
                    peer.acked(epoch, seq);
                }
            }
            Msg::Bye | Msg::Took { .. } => unreachable!("handled above"),
        }
    }

    /// Applies one numbered directory update of a synced peer; `false` on a gap.
    fn apply_update(&mut self, name: &NodeName, m: Msg) -> bool {
        let peer = self.peers.get_mut(name).expect("caller checked");
        let seq = match &m {
            Msg::Added { seq, .. } | Msg::Removed { seq, .. } | Msg::Presence { seq, .. } => *seq,
            _ => return true,
        };
        if seq <= peer.applied {
            return true;
        }
        if seq != peer.applied + 1 {
            peer.synced = false;
            return false;
        }
        peer.applied = seq;
        match m {
            Msg::Added { jid, id, since, .. } => {
                if let Ok(jid) = FullJid::new(&jid) {
                    self.router.remote_added(name.clone(), jid, SessionId(id), since);
                }
            }
            Msg::Removed { jid, id, .. } => {
                if let Ok(jid) = FullJid::new(&jid) {
                    self.router.remote_removed(&jid, SessionId(id));
                }
            }
            Msg::Presence { jid, id, priority, presence, .. } => {
                if let Ok(jid) = FullJid::new(&jid) {
                    let p = presence.and_then(|x| meerkat_xml::parse_element(&x, &peer_limits()).ok()).map(Arc::new);
                    self.router.remote_presence(&jid, SessionId(id), priority, p);
                }
            }
            _ => {}
        }
        true
    }

    async fn request_sync(&mut self, name: &NodeName) {
        let req = self.next_req;
        self.next_req += 1;
        if let Some(p) = self.peers.get_mut(name) {
            p.synced = false;
            p.sync = Some((req, Instant::now()));
            p.snapshot.clear();
        }
        self.publish_to(name, Msg::SyncRequest { req }).await;
    }

    async fn send_snapshot(&self, to: &str, req: u64) {
        let entries: Vec<SnapEntry> = self
            .mine
            .iter()
            .map(|(jid, m)| SnapEntry {
                jid: jid.clone(),
                id: m.id,
                since: m.since,
                priority: m.priority,
                presence: m.presence.clone(),
            })
            .collect();
        let mut chunks: Vec<Vec<SnapEntry>> = entries.chunks(SNAPSHOT_CHUNK).map(<[SnapEntry]>::to_vec).collect();
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        let n = chunks.len();
        for (i, entries) in chunks.into_iter().enumerate() {
            let m = Msg::Snapshot { req, seq: self.dir_seq, last: i + 1 == n, entries };
            self.publish_to(to, m).await;
        }
    }

    /// Makes the table hold exactly the peer's snapshot, then applies the updates
    /// that came after it.
    fn install_snapshot(&mut self, name: &NodeName, seq: u64) {
        let peer = self.peers.get_mut(name).expect("caller checked");
        let snapshot = std::mem::take(&mut peer.snapshot);
        let pending = std::mem::take(&mut peer.pending);
        peer.sync = None;
        peer.synced = true;
        peer.applied = seq;
        let keep: HashMap<&str, u64> = snapshot.iter().map(|e| (e.jid.as_str(), e.id)).collect();
        for (jid, id) in self.router.table().node_sessions(name) {
            if keep.get(jid.as_str()) != Some(&id.0) {
                self.router.remote_removed(&jid, id);
            }
        }
        for e in &snapshot {
            let Ok(jid) = FullJid::new(&e.jid) else { continue };
            self.router.remote_added(name.clone(), jid.clone(), SessionId(e.id), e.since);
            let p =
                e.presence.as_deref().and_then(|x| meerkat_xml::parse_element(x, &peer_limits()).ok()).map(Arc::new);
            self.router.remote_presence(&jid, SessionId(e.id), e.priority, p);
        }
        tracing::info!(node = %name, sessions = snapshot.len(), "cluster node's sessions known");
        for m in pending {
            if !self.apply_update(name, m) {
                break; // a gap: the next heartbeat asks again
            }
        }
    }

    /// Delivers forwarded traffic here.
    fn deliver(&self, payload: Payload) {
        let Some(what) = decode_forward(&self.ctx, payload) else { return };
        if let Forward::Service { stanza, hops } = what {
            let _ = self.services.send((stanza, hops));
            return;
        }
        if let Some((to, st, hops)) = self.router.deliver_forwarded(what) {
            let (ctx, router) = (self.ctx.clone(), self.router.clone());
            tokio::spawn(async move { router.route_fallback(&ctx, to, st, hops).await });
        }
    }

    /// Routes again what could not reach a lost node (its sessions are gone from
    /// the table by now: offline storage, another resource, or an error).
    async fn reroute(&self, data: Bytes) {
        let Some(Envelope { msg: Msg::Data { payload, .. }, .. }) = Envelope::decode(&data) else { return };
        if let Payload::Service { xml, hops } = payload {
            // A room of the lost node: its service here claims the room again.
            if let Ok(el) = meerkat_xml::parse_element(&xml, &peer_limits()) {
                let _ = self.services.send((Stanza::from_trusted(el), hops));
            }
            return;
        }
        // A copy without fallback was one of several whose others were taken.
        let Payload::Stanza { to, xml, hops, fallback: true } = payload else { return };
        let (Ok(to), Ok(el)) = (FullJid::new(&to), meerkat_xml::parse_element(&xml, &peer_limits())) else { return };
        let (ctx, router) = (self.ctx.clone(), self.router.clone());
        tokio::spawn(async move { router.route_fallback(&ctx, to, Stanza::from_trusted(el), hops).await });
    }

    /// When the first timer is due: the next heartbeat, an acknowledgement
    /// waiting `ACK_DELAY`, a stream without progress for `RETRANSMIT_AFTER`,
    /// a node silent for the timeout.
    fn next_deadline(&self, last_heartbeat: Instant) -> Instant {
        let mut next = last_heartbeat + self.heartbeat;
        for p in self.peers.values() {
            next = next.min(p.last_seen + self.timeout);
            if let Some(since) = p.ack_due {
                next = next.min(since + ACK_DELAY);
            }
            if !p.inflight.is_empty() {
                next = next.min(p.progress_at + RETRANSMIT_AFTER);
            }
        }
        next
    }

    /// What is due (see [`Node::next_deadline`]): acknowledgements sent on their
    /// own, stalled streams sent again, silent nodes declared lost. Running early
    /// does nothing.
    async fn on_timers(&mut self) {
        let now = Instant::now();
        let mut acks = Vec::new();
        let mut resend: Vec<(async_nats::Subject, Vec<Bytes>)> = Vec::new();
        let mut lost = Vec::new();
        for (name, p) in &mut self.peers {
            if now.duration_since(p.last_seen) >= self.timeout {
                lost.push(name.clone());
                continue;
            }
            if p.ack_due.is_some_and(|since| now.duration_since(since) >= ACK_DELAY) {
                p.ack_due = None;
                let (epoch, seq) = p.ack_point();
                acks.push((name.clone(), Msg::Ack { to_inc: p.inc, epoch, seq }));
            }
            if !p.inflight.is_empty() && now.duration_since(p.progress_at) >= RETRANSMIT_AFTER {
                p.progress_at = now;
                tracing::debug!(node = %name, unacked = p.inflight.len(), "sending unacknowledged cluster traffic again");
                resend.push((p.subject.clone(), p.inflight.iter().map(|(_, b)| b.clone()).collect()));
            }
        }
        for (name, m) in acks {
            self.publish_to(&name, m).await;
        }
        for (subject, items) in resend {
            publish_all(&self.client, &self.me, self.inc, &subject, &items).await;
        }
        for name in lost {
            tracing::warn!(node = %name, timeout_ms = self.timeout.as_millis() as u64, "cluster node lost");
            self.lost(&name, true).await;
        }
    }

    /// A node is gone (lost, restarted, or left): forget its sessions, route
    /// again what it did not acknowledge, and — for a lost node, whose sessions
    /// could not say goodbye — tell their contacts they went offline.
    async fn lost(&mut self, name: &NodeName, crashed: bool) {
        let Some(peer) = self.peers.remove(name) else { return };
        self.alive.write().remove(name);
        let gone = self.router.remove_node(name);
        for (_, data) in peer.inflight {
            self.reroute(data).await;
        }
        if !crashed || gone.is_empty() {
            return;
        }
        // One node does it: the surviving node whose name sorts first.
        if self.peers.keys().any(|n| **n < *self.me) {
            return;
        }
        let offline: Vec<FullJid> =
            gone.into_iter().filter(|e| e.presence.is_some()).map(|e| e.jid().clone()).collect();
        tracing::info!(node = %name, sessions = offline.len(), "telling a lost node's users' contacts they are offline");
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            for jid in offline {
                broadcast_unavailable(&ctx, &jid).await;
            }
        });
    }
}

async fn publish(client: &async_nats::Client, subject: async_nats::Subject, b: Bytes) {
    if let Err(e) = client.publish(subject, b).await {
        tracing::warn!(error = %e, "cannot publish to a cluster node");
    }
}

/// Publishes encoded envelopes of node `from` (incarnation `inc`) in order, in
/// as few NATS messages as the batch size allows; one envelope goes alone, as
/// it is.
async fn publish_all(
    client: &async_nats::Client,
    from: &str,
    inc: u64,
    subject: &async_nats::Subject,
    items: &[Bytes],
) {
    let mut rest = items;
    while !rest.is_empty() {
        let n = run_len(rest);
        let b = match &rest[..n] {
            [one] => one.clone(),
            run => crate::wire::encode_batch(from, inc, run),
        };
        publish(client, subject.clone(), b).await;
        rest = &rest[n..];
    }
}

/// How many of `items` go in the next NATS message: the longest run within
/// `MAX_BATCH_BYTES`, and at least one envelope (a larger one goes alone).
fn run_len(items: &[Bytes]) -> usize {
    let mut size = 0;
    items
        .iter()
        .position(|b| {
            size += b.len() + 4;
            size > MAX_BATCH_BYTES
        })
        .unwrap_or(items.len())
        .max(1)
}

/// RFC 6121 §4.5.2 on behalf of a session that cannot: unavailable presence
/// from `jid` to the user's presence subscribers and the user's other resources.
async fn broadcast_unavailable(ctx: &ServerContext, jid: &FullJid) {
    let bare = jid.to_bare();
    let Some(acc) = meerkat_core::account(&bare) else { return };
    let roster = match ctx.stores.roster.get_roster(acc).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(user = %bare, error = %e, "storage failure loading a lost session's roster");
            return;
        }
    };
    let to = roster
        .items
        .iter()
        .filter(|i| matches!(i.subscription, Subscription::From | Subscription::Both))
        .map(|i| i.jid.as_str())
        .chain(std::iter::once(bare.as_str()));
    for contact in to {
        let el = Element::builder("presence", meerkat_stanza::ns::CLIENT)
            .attr("from", jid.as_str())
            .attr("to", contact)
            .attr("type", "unavailable")
            .build();
        ctx.route(Stanza::from_trusted(el)).await;
    }
}

/// Hands stanzas forwarded to this node's services (MUC rooms) to the service
/// of their domain, one at a time, so a room sees them in the order sent.
async fn serve_services(ctx: Arc<ServerContext>, mut inbox: mpsc::UnboundedReceiver<(Stanza, u8)>) {
    while let Some((st, hops)) = inbox.recv().await {
        let Some(domain) = st.to.as_ref().map(|t| t.domain().as_str().to_owned()) else { continue };
        match ctx.hooks.service(&domain) {
            Some(svc) => svc.route(&ctx, st, hops).await,
            None => tracing::warn!(%domain, "a stanza forwarded for a service this node does not run"),
        }
    }
}

/// A forward in its wire form; `None` for a session event that stays on its node.
fn encode_forward(what: Forward) -> Option<Payload> {
    Some(match what {
        Forward::Stanza { to, stanza, fallback, hops } => {
            Payload::Stanza { to: to.to_string(), xml: stanza.el.to_string_with_ns(), fallback, hops }
        }
        Forward::Service { stanza, hops } => Payload::Service { xml: stanza.el.to_string_with_ns(), hops },
        Forward::Msg { to, msg } => {
            let to = match to {
                MsgTarget::Session(jid, id) => Target::Session { jid: jid.to_string(), id: id.0 },
                MsgTarget::User(bare) => Target::User { bare: bare.to_string() },
            };
            let msg = match msg {
                SessionMsg::Event(ev) => SessionMsgWire::Event(ev.to_element()?.to_string_with_ns()),
                SessionMsg::Replaced => SessionMsgWire::Replaced,
                SessionMsg::Kick(cond, text) => SessionMsgWire::Kick(cond.as_str().to_string(), text),
                SessionMsg::Batch(sts) => {
                    SessionMsgWire::Stanzas(sts.iter().map(|st| st.el.to_string_with_ns()).collect())
                }
                SessionMsg::Stanza(st) => {
                    // Stanzas travel as Forward::Stanza; one sent as a session
                    // message keeps the session's own delivery path.
                    let Target::Session { jid, .. } = &to else { return None };
                    return Some(Payload::Stanza {
                        to: jid.clone(),
                        xml: st.el.to_string_with_ns(),
                        fallback: false,
                        hops: 1,
                    });
                }
            };
            Payload::Msg { to, msg }
        }
    })
}

/// The router's form of forwarded traffic; `None` (logged) if it is malformed.
fn decode_forward(ctx: &ServerContext, p: Payload) -> Option<Forward> {
    let bad = |what: &str| {
        tracing::warn!(what, "ignoring malformed forwarded cluster traffic");
        None
    };
    Some(match p {
        Payload::Stanza { to, xml, fallback, hops } => {
            let Ok(to) = FullJid::new(&to) else { return bad("stanza address") };
            let Ok(el) = meerkat_xml::parse_element(&xml, &peer_limits()) else { return bad("stanza") };
            Forward::Stanza { to, stanza: Stanza::from_trusted(el), fallback, hops }
        }
        Payload::Service { xml, hops } => {
            let Ok(el) = meerkat_xml::parse_element(&xml, &peer_limits()) else { return bad("service stanza") };
            let st = Stanza::from_trusted(el);
            if st.to.is_none() || st.from.is_none() {
                return bad("service stanza address");
            }
            Forward::Service { stanza: st, hops }
        }
        Payload::Msg { to, msg } => {
            let to = match to {
                Target::Session { jid, id } => match FullJid::new(&jid) {
                    Ok(j) => MsgTarget::Session(j, SessionId(id)),
                    Err(_) => return bad("session address"),
                },
                Target::User { bare } => match BareJid::new(&bare) {
                    Ok(b) => MsgTarget::User(b),
                    Err(_) => return bad("user address"),
                },
            };
            let msg = match msg {
                SessionMsgWire::Event(xml) => {
                    let Ok(el) = meerkat_xml::parse_element(&xml, &peer_limits()) else { return bad("event") };
                    match ctx.hooks.decode_event(&el) {
                        Some(ev) => SessionMsg::Event(ev),
                        None => return bad("event of no running module"),
                    }
                }
                SessionMsgWire::Replaced => SessionMsg::Replaced,
                SessionMsgWire::Kick(cond, text) => {
                    SessionMsg::Kick(StreamError::parse(&cond).unwrap_or(StreamError::UndefinedCondition), text)
                }
                SessionMsgWire::Stanzas(xmls) => {
                    let mut sts = Vec::with_capacity(xmls.len());
                    for xml in xmls {
                        let Ok(el) = meerkat_xml::parse_element(&xml, &peer_limits()) else { return bad("stanza") };
                        sts.push(Stanza::from_trusted(el));
                    }
                    SessionMsg::Batch(sts)
                }
            };
            Forward::Msg { to, msg }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_stay_within_their_size() {
        let kib = |n: usize| Bytes::from(vec![0u8; n * 1024]);
        let items = vec![kib(100), kib(100), kib(100), kib(100), kib(100)];
        assert_eq!(run_len(&items), 2);
        assert_eq!(run_len(&items[4..]), 1);
        let big = vec![kib(300), kib(1)];
        assert_eq!(run_len(&big), 1, "an envelope over the batch size goes alone");
        assert_eq!(run_len(&big[1..]), 1);
        let small: Vec<Bytes> = (0..1000).map(|_| kib(1)).collect();
        assert_eq!(run_len(&small), MAX_BATCH_BYTES / (1024 + 4), "255 of 1 KiB and their lengths");
    }
}
