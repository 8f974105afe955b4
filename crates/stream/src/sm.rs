//! Stream management (XEP-0198 v1.6): acknowledgements both ways, the unacked
//! buffer, resumption of a dropped session on a new connection (the old owner
//! hands the whole session over), and what happens to unacknowledged stanzas when
//! a detached session times out (they are routed again: another resource or
//! offline storage — never silently dropped).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use meerkat_config::SmCfg;
use meerkat_core::resumption::{Found, Lookup, MovedSession, SessionMover, Takeover};
use meerkat_stanza::{ns, BareJid, Jid, Stanza, StreamError};
use meerkat_xml::Element;
use tokio::sync::mpsc;

use crate::c2s::{C2s, Output, Stage, State};

/// Per-session stream-management state.
pub(crate) struct Sm {
    /// Resumption id (`None` = acks only).
    pub id: Option<String>,
    /// Stanzas received from the client (its `h`, mod 2^32).
    pub inbound: u32,
    /// Stanzas sent to the client (mod 2^32).
    pub outbound: u32,
    /// Sent and not yet acknowledged, oldest first.
    pub unacked: VecDeque<Element>,
    /// Unacked count when the last `<r/>` was sent.
    pub requested_at: usize,
    /// An `<r/>` is out and not answered yet: no other is sent until it is
    /// (a burst of N stanzas costs one round trip of acks, not N).
    pub r_pending: bool,
    /// Since when more than `buffer_max` stanzas are unacknowledged with no
    /// acknowledgement arriving (reset by each one that makes progress).
    pub behind_since: Option<Instant>,
}

fn failed(cond: &str, h: Option<u32>) -> Element {
    let mut f = Element::new("failed", ns::SM);
    if let Some(h) = h {
        f.set_attr("h", h.to_string());
    }
    f.append_child(Element::new(cond, ns::STANZAS));
    f
}

/// Whether an outgoing element is a stanza that SM counts.
fn is_stanza(el: &Element) -> bool {
    el.ns() == ns::CLIENT && matches!(el.name(), "message" | "presence" | "iq")
}

impl C2s {
    fn sm_cfg(&self) -> Option<SmCfg> {
        self.ctx.config.modules.mod_stream_management.clone()
    }

    /// Queues an element for the client, counting stanzas for SM.
    pub(crate) fn emit(&mut self, el: Element) {
        if let Some(sm) = &mut self.sm {
            if is_stanza(&el) {
                sm.outbound = sm.outbound.wrapping_add(1);
                sm.unacked.push_back(el.clone());
                let ack_freq = self.ctx.config.modules.mod_stream_management.as_ref().map_or(1, |c| c.ack_freq);
                if !sm.r_pending && sm.unacked.len() >= sm.requested_at + ack_freq {
                    sm.requested_at = sm.unacked.len();
                    sm.r_pending = true;
                    self.out.push(Output::Element(el));
                    self.out.push(Output::Element(Element::new("r", ns::SM)));
                    return;
                }
            }
        }
        self.out.push(Output::Element(el));
    }

    /// Counts a stanza received from the client.
    pub(crate) fn sm_inbound(&mut self) {
        if let Some(sm) = &mut self.sm {
            sm.inbound = sm.inbound.wrapping_add(1);
        }
    }

    /// The buffer limit: a client that stopped acknowledging is disconnected.
    /// A burst may pass `buffer_max` while the client acknowledges (it has
    /// `ack_timeout` from the last acknowledgement that made progress), up to
    /// a hard 100 × `buffer_max`.
    pub(crate) async fn sm_check_buffer(&mut self) {
        let Some(cfg) = self.ctx.config.modules.mod_stream_management.as_ref() else { return };
        let Some(sm) = &mut self.sm else { return };
        let n = sm.unacked.len();
        if n <= cfg.buffer_max {
            sm.behind_since = None;
            return;
        }
        let since = *sm.behind_since.get_or_insert_with(Instant::now);
        if n > cfg.buffer_max.saturating_mul(100) || since.elapsed() >= Duration::from_secs(cfg.ack_timeout) {
            self.stream_error(StreamError::ResourceConstraint, Some("too many unacknowledged stanzas")).await;
        }
    }

    /// `<enable/>`, `<r/>`, `<a/>` from a bound client. Returns whether it was SM.
    pub(crate) async fn sm_nonza(&mut self, el: &Element) -> bool {
        if el.ns() != ns::SM {
            return false;
        }
        let Some(cfg) = self.sm_cfg() else { return false };
        match el.name() {
            "enable" => {
                if self.sm.is_some() {
                    self.out.push(Output::Element(failed("unexpected-request", None)));
                    return true;
                }
                let resume = matches!(el.attr("resume"), Some("true" | "1"));
                let mut enabled = Element::new("enabled", ns::SM);
                let mut id = None;
                if resume {
                    let State::Bound(s) = &self.state else { return true };
                    let rid = meerkat_core::util::random_id(24);
                    let (tx, rx) = mpsc::channel(1);
                    self.ctx.resumptions.register(&rid, &s.bare, tx);
                    self.takeover = Some(rx);
                    enabled.set_attr("id", rid.clone());
                    enabled.set_attr("resume", "true");
                    enabled.set_attr("max", cfg.resume_timeout.to_string());
                    id = Some(rid);
                }
                self.sm = Some(Sm {
                    id,
                    inbound: 0,
                    outbound: 0,
                    unacked: VecDeque::new(),
                    requested_at: 0,
                    r_pending: false,
                    behind_since: None,
                });
                self.out.push(Output::Element(enabled));
            }
            "r" => {
                if let Some(sm) = &self.sm {
                    let a = Element::builder("a", ns::SM).attr("h", sm.inbound.to_string()).build();
                    self.out.push(Output::Element(a));
                }
            }
            "a" => {
                let Some(h) = el.attr("h").and_then(|h| h.parse::<u32>().ok()) else {
                    self.stream_error(StreamError::UndefinedCondition, Some("<a/> without a valid h")).await;
                    return true;
                };
                if !self.sm_ack(h) {
                    self.stream_error(StreamError::UndefinedCondition, Some("h is larger than the stanzas sent")).await;
                    return true;
                }
                // The answer to our request: ask again for what was sent since.
                if let Some(sm) = &mut self.sm {
                    sm.r_pending = false;
                    if sm.unacked.len() >= sm.requested_at + cfg.ack_freq {
                        sm.requested_at = sm.unacked.len();
                        sm.r_pending = true;
                        self.out.push(Output::Element(Element::new("r", ns::SM)));
                    }
                }
            }
            _ => self.stream_error(StreamError::UnsupportedStanzaType, None).await,
        }
        true
    }

    /// Drops what the client acknowledged; `false` when `h` acknowledges more than
    /// was sent (XEP-0198 §4).
    fn sm_ack(&mut self, h: u32) -> bool {
        let Some(sm) = &mut self.sm else { return true };
        let acked_before = sm.outbound.wrapping_sub(sm.unacked.len() as u32);
        let newly = h.wrapping_sub(acked_before) as usize;
        if newly > sm.unacked.len() {
            return false;
        }
        sm.unacked.drain(..newly);
        sm.requested_at = sm.requested_at.saturating_sub(newly);
        if newly > 0 && sm.behind_since.is_some() {
            sm.behind_since = Some(Instant::now());
        }
        true
    }

    /// Whether the session waits, detached, for a resumption.
    pub fn is_detached(&self) -> bool {
        self.detached_until.is_some()
    }

    /// The connection dropped: a resumable session detaches instead of ending.
    /// Returns whether it did.
    pub(crate) fn sm_detach(&mut self) -> bool {
        let resumable = matches!(&self.state, State::Bound(_)) && self.sm.as_ref().is_some_and(|s| s.id.is_some());
        if !resumable || self.detached_until.is_some() {
            return false;
        }
        let timeout = self.sm_cfg().map_or(0, |c| c.resume_timeout);
        self.detached_until = Some(Instant::now() + Duration::from_secs(timeout));
        self.pinger = None;
        true
    }

    /// The session ends: forget its resumption id (remembering `h`), and route the
    /// stanzas the client never acknowledged again.
    pub(crate) async fn sm_finish(&mut self, bare: &BareJid, full: &meerkat_stanza::FullJid) {
        let Some(sm) = self.sm.take() else { return };
        if let Some(id) = &sm.id {
            let stale = self.sm_cfg().map(|c| (sm.inbound, Duration::from_secs(c.stale_h_timeout)));
            self.ctx.resumptions.remove(id, stale);
        }
        for el in sm.unacked {
            let st = Stanza::from_trusted(el);
            crate::bound::reroute_unacked(&self.ctx, bare, full, st).await;
        }
    }

    /// `<resume previd h/>` after authentication (XEP-0198 §5).
    pub(crate) async fn resume(&mut self, bare: BareJid, el: Element) {
        let stage = Stage::Authenticated(bare.clone());
        let (Some(previd), Some(h)) = (el.attr("previd"), el.attr("h").and_then(|h| h.parse::<u32>().ok())) else {
            self.out.push(Output::Element(failed("bad-request", None)));
            self.state = State::Open(stage);
            return;
        };
        if self.sm_cfg().is_none() {
            self.out.push(Output::Element(failed("feature-not-implemented", None)));
            self.state = State::Open(stage);
            return;
        }
        let tx = match self.ctx.resumptions.lookup(previd, &bare) {
            Lookup::Live(tx) => tx,
            Lookup::Stale(h) => {
                self.out.push(Output::Element(failed("item-not-found", Some(h))));
                self.state = State::Open(stage);
                return;
            }
            Lookup::Unknown => {
                // In a cluster the session may be on another node: it moves here.
                let found = match self.ctx.resumptions.remote() {
                    Some(remote) => remote.find(previd, &bare).await,
                    None => Found::Unknown,
                };
                match found {
                    Found::Moved(m) => return self.adopt_moved(*m, previd.to_string(), bare, h).await,
                    Found::Stale(h) => self.out.push(Output::Element(failed("item-not-found", Some(h)))),
                    Found::Unknown => self.out.push(Output::Element(failed("item-not-found", None))),
                }
                self.state = State::Open(stage);
                return;
            }
        };
        let (reply, rx) = tokio::sync::oneshot::channel();
        let taken = match tx.send(Takeover { reply }).await {
            Ok(()) => tokio::time::timeout(Duration::from_secs(5), rx).await.ok().and_then(Result::ok),
            Err(_) => None,
        };
        let Some(old) = taken.and_then(|b| b.downcast::<C2s>().ok()) else {
            self.out.push(Output::Element(failed("item-not-found", None)));
            self.state = State::Open(stage);
            return;
        };
        self.adopt(*old, previd.to_string(), bare, h).await;
    }

    /// Takes over a session handed over by its previous connection.
    async fn adopt(&mut self, mut old: C2s, previd: String, bare: BareJid, h: u32) {
        self.state = std::mem::replace(&mut old.state, State::Closed);
        self.sm = old.sm.take();
        self.mailbox = old.mailbox.take();
        self.pinger = old.pinger.take();
        if let Some(p) = &mut self.pinger {
            p.pending = None;
        }
        self.last_status = std::mem::take(&mut old.last_status);
        self.deadline = None;
        self.detached_until = None;
        if self.finish_resume(previd, bare, h).await {
            if let State::Bound(s) = &self.state {
                tracing::debug!(jid = %s.jid, "session resumed");
            }
        }
    }

    /// The end of a resumption (local or from another node): the client's `h`
    /// is checked, the id registered here, `<resumed/>` sent, then everything not
    /// acknowledged, in order (§5). `false`: the `h` was wrong and the stream ends.
    async fn finish_resume(&mut self, previd: String, bare: BareJid, h: u32) -> bool {
        if !self.sm_ack(h) {
            let inbound = self.sm.as_ref().map_or(0, |s| s.inbound);
            self.out.push(Output::Element(failed("undefined-condition", Some(inbound))));
            self.terminate().await;
            self.out.push(Output::Close);
            return false;
        }
        let (tx, rx) = mpsc::channel(1);
        self.ctx.resumptions.register(&previd, &bare, tx);
        self.takeover = Some(rx);
        let Some(sm) = &mut self.sm else { return false };
        let resumed =
            Element::builder("resumed", ns::SM).attr("previd", previd).attr("h", sm.inbound.to_string()).build();
        self.out.push(Output::Element(resumed));
        let again: Vec<Element> = sm.unacked.iter().cloned().collect();
        for el in again {
            self.out.push(Output::Element(el));
        }
        // What was sent again is asked for at once.
        sm.r_pending = !sm.unacked.is_empty();
        sm.requested_at = sm.unacked.len();
        if sm.r_pending {
            self.out.push(Output::Element(Element::new("r", ns::SM)));
        }
        true
    }
}

/// This node's [`SessionMover`]: hands a resumable session over to another
/// node whose client resumes there.
pub struct Mover;

#[async_trait::async_trait]
impl SessionMover for Mover {
    async fn take(&self, ctx: &meerkat_core::ServerContext, id: &str, user: &BareJid) -> Found {
        let tx = match ctx.resumptions.lookup(id, user) {
            Lookup::Live(tx) => tx,
            Lookup::Stale(h) => return Found::Stale(h),
            Lookup::Unknown => return Found::Unknown,
        };
        let (reply, rx) = tokio::sync::oneshot::channel();
        let taken = match tx.send(Takeover { reply }).await {
            Ok(()) => tokio::time::timeout(Duration::from_secs(5), rx).await.ok().and_then(Result::ok),
            Err(_) => None,
        };
        match taken.and_then(|b| b.downcast::<C2s>().ok()) {
            Some(old) => old.export().map_or(Found::Unknown, |m| Found::Moved(Box::new(m))),
            None => Found::Unknown,
        }
    }
}

impl C2s {
    /// Ends this (detached or connected) session here to move it to another
    /// node: no unavailable presence, no closing hooks (the user stays online
    /// there); stanzas in its mailbox go with it.
    fn export(mut self: Box<Self>) -> Option<MovedSession> {
        let State::Bound(s) = std::mem::replace(&mut self.state, State::Closed) else { return None };
        let sm = self.sm.take()?;
        let mut pending = Vec::new();
        if let Some(crate::c2s::Inbox { mut rx, .. }) = self.mailbox.take() {
            rx.close();
            while let Ok(msg) = rx.try_recv() {
                match msg {
                    meerkat_core::SessionMsg::Stanza(st) => pending.push(st.el),
                    meerkat_core::SessionMsg::Batch(sts) => pending.extend(sts.into_iter().map(|st| st.el)),
                    _ => {}
                }
            }
        }
        self.ctx.router.unregister(&s.jid, s.id);
        if let Some(id) = &sm.id {
            self.ctx.resumptions.remove(id, None);
        }
        self.takeover = None;
        self.pinger = None;
        self.deadline = None;
        self.detached_until = None;
        tracing::debug!(jid = %s.jid, "session moved to another node");
        Some(MovedSession {
            jid: s.jid.clone(),
            inbound: sm.inbound,
            outbound: sm.outbound,
            unacked: sm.unacked.into_iter().collect(),
            pending,
            presence: s.presence.as_deref().cloned(),
            priority: s.priority,
            directed: s.directed.iter().map(|j| j.as_str().to_owned()).collect(),
            state: self.ctx.hooks.session.iter().filter_map(|h| h.export_state(&s)).collect(),
        })
    }

    /// Binds the full JID of a session another node handed over, and resumes
    /// it (XEP-0198 §5): `<resumed/>`, then what the client did not acknowledge,
    /// then what had not been sent yet.
    async fn adopt_moved(&mut self, m: MovedSession, previd: String, bare: BareJid, h: u32) {
        if m.jid.to_bare() != bare {
            self.out.push(Output::Element(failed("item-not-found", None)));
            self.state = State::Open(Stage::Authenticated(bare));
            return;
        }
        let Ok(mut s) = self.bind_session(m.jid.clone()).await else {
            self.out.push(Output::Element(failed("internal-server-error", Some(m.inbound))));
            self.state = State::Open(Stage::Authenticated(bare));
            return;
        };
        s.roster_requested = true;
        for el in &m.state {
            if !self.ctx.hooks.session.iter().any(|h| h.import_state(&mut s, el)) {
                tracing::warn!(state = %el.name(), "a moved session's state that no module here takes");
            }
        }
        s.directed = m.directed.iter().filter_map(|j| Jid::new(j).ok()).collect();
        if let Some(p) = m.presence {
            let p = std::sync::Arc::new(p);
            s.presence = Some(p.clone());
            s.priority = m.priority;
            self.ctx.router.set_presence(&s.jid, s.id, m.priority, Some(p));
        }
        self.state = State::Bound(s);
        self.sm = Some(Sm {
            id: Some(previd.clone()),
            inbound: m.inbound,
            outbound: m.outbound,
            unacked: m.unacked.into(),
            requested_at: 0,
            r_pending: false,
            behind_since: None,
        });
        if !self.finish_resume(previd, bare, h).await {
            return;
        }
        for el in m.pending {
            self.emit(el);
        }
        tracing::debug!(jid = %m.jid, "session resumed from another node");
    }
}
