//! The c2s state machine: stream header and negotiation (RFC 6120 §4–§7), then the
//! bound session (see `bound.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meerkat_config::{C2sListener, TlsMode};
use meerkat_core::router::Overflow;
use meerkat_core::{ServerContext, SessionMsg, SessionState};
use meerkat_sasl::ChannelBinding;
use meerkat_stanza::{ns, BareJid, StreamError};
use meerkat_xml::{Element, StreamEvent};
use tokio::sync::mpsc;

use crate::sasl::SaslExchange;

/// What the session asks its transport to do, in order.
#[derive(Debug)]
pub enum Output {
    /// Write the opening stream header (`<stream:stream>` or RFC 7395 `<open/>`).
    Header {
        /// Stream id.
        id: String,
        /// The server's domain.
        from: String,
    },
    /// Write one top-level element.
    Element(Element),
    /// Start TLS now (after `<proceed/>` was written); then call [`C2s::tls_established`].
    StartTls,
    /// Reset the XML decoder: the client restarts the stream (after SASL success).
    ResetDecoder,
    /// Close the stream: write the closing tag and end the connection.
    Close,
}

/// What [`C2s::recv`] got.
#[derive(Debug)]
pub enum Mailbox {
    /// A message for the session.
    Msg(SessionMsg),
    /// The mailbox overflowed: the client is not reading fast enough.
    Overflow,
    /// A new connection resumes this session (XEP-0198): the transport hands the
    /// whole `C2s` over (as `Box<C2s>`) and ends.
    Takeover(tokio::sync::oneshot::Sender<Box<dyn std::any::Any + Send>>),
}

/// A bound session's mailbox: the router's messages, and its overflow signal.
pub(crate) struct Inbox {
    pub(crate) rx: mpsc::Receiver<SessionMsg>,
    overflow: Arc<Overflow>,
}

impl Inbox {
    pub(crate) fn new(rx: mpsc::Receiver<SessionMsg>, overflow: Arc<Overflow>) -> Self {
        Inbox { rx, overflow }
    }

    /// The next message, or `Overflow`. The overflow signal goes first: a session
    /// told to close does not first write a full mailbox to a client that is not
    /// reading.
    async fn recv(&mut self) -> Mailbox {
        if self.overflow.take() {
            return Mailbox::Overflow;
        }
        match self.rx.recv().await {
            Some(m) => Mailbox::Msg(m),
            None => Mailbox::Overflow,
        }
    }
}

/// Where a listener stands on TLS for this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsState {
    /// Not encrypted; STARTTLS may be offered.
    Plain,
    /// Encrypted (direct TLS, or after STARTTLS).
    Secure,
}

/// Facts about the connection, from the transport.
#[derive(Debug, Clone)]
pub struct TransportInfo {
    /// Remote address.
    pub peer: SocketAddr,
    /// TLS state.
    pub tls: TlsState,
    /// Channel binding data for SCRAM-PLUS.
    pub channel_binding: ChannelBinding,
}

/// The listener's settings this session needs.
#[derive(Debug, Clone)]
pub struct Listener {
    /// TLS mode.
    pub tls_mode: TlsMode,
    /// Whether STARTTLS can be offered (a certificate is loaded).
    pub starttls_available: bool,
    /// Seconds to authenticate and bind.
    pub state_timeout: Duration,
    /// Stanzas per second before throttling.
    pub max_stanza_rate: u32,
}

impl Listener {
    /// From the configuration.
    pub fn from_config(l: &C2sListener) -> Self {
        Listener {
            tls_mode: l.tls.mode,
            starttls_available: l.tls.mode != TlsMode::None,
            state_timeout: Duration::from_secs(l.state_timeout),
            max_stanza_rate: l.max_stanza_rate,
        }
    }
}

/// Negotiation stage: who the peer is so far.
#[derive(Debug, Clone)]
pub(crate) enum Stage {
    /// Not authenticated.
    Anonymous,
    /// Authenticated as this account, not yet bound.
    Authenticated(BareJid),
}

/// The states of a c2s stream.
pub(crate) enum State {
    /// Waiting for the (re)started stream header.
    WaitHeader(Stage),
    /// Header answered and features sent; negotiating.
    Open(Stage),
    /// In a SASL exchange.
    Sasl(Box<SaslExchange>),
    /// Resource bound: a live session.
    Bound(Box<SessionState>),
    /// Closed; nothing more is accepted.
    Closed,
}

/// Server pings (XEP-0199 §4.2) for a bound session.
pub(crate) struct Pinger {
    pub interval: Duration,
    pub timeout: Duration,
    pub kill: bool,
    pub pending: Option<(String, Instant)>,
}

/// One client stream.
pub struct C2s {
    pub(crate) ctx: Arc<ServerContext>,
    pub(crate) state: State,
    pub(crate) info: TransportInfo,
    pub(crate) listener: Listener,
    pub(crate) out: Vec<Output>,
    pub(crate) domain: String,
    pub(crate) header_sent: bool,
    pub(crate) sasl_failures: u8,
    pub(crate) deadline: Option<Instant>,
    pub(crate) last_recv: Instant,
    pub(crate) pinger: Option<Pinger>,
    pub(crate) mailbox: Option<Inbox>,
    /// Text of the last unavailable presence (XEP-0012 status).
    pub(crate) last_status: String,
    /// Token bucket for `max_stanza_rate`.
    pub(crate) tokens: f64,
    pub(crate) tokens_at: Instant,
    /// Stream management (XEP-0198), once enabled.
    pub(crate) sm: Option<crate::sm::Sm>,
    /// Where a resuming connection asks for this session.
    pub(crate) takeover: Option<mpsc::Receiver<meerkat_core::resumption::Takeover>>,
    /// Detached (connection lost, resumable) until this instant.
    pub(crate) detached_until: Option<Instant>,
}

/// Most failed SASL attempts before the stream is closed (RFC 6120 §6.4.5).
const MAX_SASL_FAILURES: u8 = 3;

impl C2s {
    /// A new stream on an accepted connection.
    pub fn new(ctx: Arc<ServerContext>, listener: Listener, info: TransportInfo) -> Self {
        let now = Instant::now();
        let domain = ctx.config.hosts().first().cloned().unwrap_or_default();
        C2s {
            deadline: Some(now + listener.state_timeout),
            tokens: listener.max_stanza_rate as f64,
            tokens_at: now,
            ctx,
            state: State::WaitHeader(Stage::Anonymous),
            info,
            listener,
            out: Vec::new(),
            domain,
            header_sent: false,
            sasl_failures: 0,
            last_recv: now,
            pinger: None,
            mailbox: None,
            last_status: String::new(),
            sm: None,
            takeover: None,
            detached_until: None,
        }
    }

    /// Takes the queued outputs.
    pub fn take_output(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    /// Whether the stream is closed.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// The bound full JID, if any.
    pub fn jid(&self) -> Option<&meerkat_stanza::FullJid> {
        match &self.state {
            State::Bound(s) => Some(&s.jid),
            _ => None,
        }
    }

    /// Handles up to `max` mailbox messages that are already waiting, without
    /// waiting for more: the transport calls it after [`C2s::on_mailbox`] so a
    /// backlog (a busy room, a burst of presence) goes out in one write rather
    /// than one write per stanza. Costs nothing when the mailbox is empty.
    pub async fn drain_mailbox(&mut self, max: usize) {
        if let Some(Inbox { rx, .. }) = &self.mailbox {
            // Room for the backlog's output at once, rather than growing the
            // queue through every power of two (+1: a request for an ack).
            let waiting = rx.len().min(max);
            if waiting > 0 {
                self.out.reserve(waiting + 1);
            }
        }
        for _ in 0..max {
            if self.is_closed() || self.is_detached() {
                return;
            }
            let Some(Inbox { rx, .. }) = &mut self.mailbox else { return };
            let Ok(m) = rx.try_recv() else { return };
            self.on_mailbox(Mailbox::Msg(m)).await;
        }
    }

    /// Waits for the next mailbox message (pending forever before binding). The
    /// transport polls this alongside the socket and hands the result to
    /// [`C2s::on_mailbox`].
    pub async fn recv(&mut self) -> Mailbox {
        let takeover = async {
            match &mut self.takeover {
                Some(rx) => match rx.recv().await {
                    Some(t) => t.reply,
                    None => std::future::pending().await,
                },
                None => std::future::pending().await,
            }
        };
        let mailbox = async {
            match &mut self.mailbox {
                Some(inbox) => inbox.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            reply = takeover => Mailbox::Takeover(reply),
            m = mailbox => m,
        }
    }

    /// Data arrived from the peer (any bytes, including whitespace keep-alives).
    pub fn touch(&mut self) {
        self.last_recv = Instant::now();
        if let Some(p) = &mut self.pinger {
            p.pending = None;
        }
    }

    /// When [`C2s::on_timer`] should run next.
    pub fn next_deadline(&self) -> Option<Instant> {
        let ping = self.pinger.as_ref().map(|p| match &p.pending {
            Some((_, sent)) => *sent + p.timeout,
            None => self.last_recv + p.interval,
        });
        [self.deadline, ping, self.detached_until].into_iter().flatten().min()
    }

    /// How long the transport should pause reading to respect `max_stanza_rate`
    /// (one token per stanza; the bucket holds one second's worth).
    pub fn throttle(&mut self) -> Option<Duration> {
        let rate = self.listener.max_stanza_rate as f64;
        if rate <= 0.0 {
            return None;
        }
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.tokens_at).as_secs_f64() * rate).min(rate);
        self.tokens_at = now;
        if self.tokens >= 0.0 {
            None
        } else {
            Some(Duration::from_secs_f64(-self.tokens / rate))
        }
    }

    /// Timers: the negotiation deadline (`state_timeout`) and server pings.
    pub async fn on_timer(&mut self) {
        let now = Instant::now();
        if self.detached_until.is_some_and(|d| d <= now) {
            // XEP-0198 §5: nobody resumed in time; the session ends.
            self.detached_until = None;
            self.terminate().await;
            return;
        }
        if self.deadline.is_some_and(|d| d <= now) {
            return self.stream_error(StreamError::ConnectionTimeout, Some("authentication took too long")).await;
        }
        let Some(p) = &mut self.pinger else { return };
        match &p.pending {
            Some((_, sent)) if *sent + p.timeout <= now => {
                if p.kill {
                    tracing::info!(jid = ?self.jid().map(|j| j.to_string()), "no answer to a server ping: closing");
                    return self.stream_error(StreamError::ConnectionTimeout, Some("no answer to ping")).await;
                }
                p.pending = None;
                self.last_recv = now;
            }
            None if self.last_recv + p.interval <= now => {
                let id = format!("ping-{}", meerkat_core::util::random_id(8));
                p.pending = Some((id.clone(), now));
                if let State::Bound(s) = &self.state {
                    let ping = Element::builder("iq", ns::CLIENT)
                        .attr("type", "get")
                        .attr("id", id)
                        .attr("from", self.domain.clone())
                        .attr("to", s.jid.as_str())
                        .append(Element::new("ping", ns::PING))
                        .build();
                    self.emit(ping);
                }
            }
            _ => {}
        }
    }

    /// A decoded event from the transport.
    pub async fn on_event(&mut self, ev: StreamEvent, default_ns: &str) {
        match ev {
            StreamEvent::Header(h) => self.on_header(h, default_ns).await,
            StreamEvent::Element(el) => self.on_element(el).await,
            StreamEvent::Close => self.close_gracefully().await,
        }
    }

    /// The decoder failed: RFC 6120 §4.9 stream error, then close.
    pub async fn on_xml_error(&mut self, e: &meerkat_xml::Error) {
        let cond = StreamError::from(e);
        tracing::debug!(peer = %self.info.peer, error = %e, "closing stream on bad XML");
        let text = match e {
            meerkat_xml::Error::StanzaTooBig => Some("stanza too big"),
            meerkat_xml::Error::TooDeep => Some("elements nested too deep"),
            meerkat_xml::Error::TooManyAttrs => Some("too many attributes"),
            _ => None,
        };
        self.stream_error(cond, text).await
    }

    /// The connection is gone (read error or EOF without `</stream:stream>`). A
    /// resumable session (XEP-0198) detaches instead of ending: the transport then
    /// hands it to [`crate::park`].
    pub async fn on_disconnect(&mut self) {
        if self.detached_until.is_some() || self.sm_detach() {
            return;
        }
        self.terminate().await;
    }

    /// The server is shutting down.
    pub async fn on_shutdown(&mut self) {
        self.stream_error(StreamError::SystemShutdown, None).await
    }

    /// The transport finished the TLS handshake after `<proceed/>`.
    pub fn tls_established(&mut self, cb: ChannelBinding) {
        self.info.tls = TlsState::Secure;
        self.info.channel_binding = cb;
    }

    /// RFC 6120 §4.7: the (re)started stream header.
    async fn on_header(&mut self, h: Element, default_ns: &str) {
        let stage = match &self.state {
            State::WaitHeader(stage) => stage.clone(),
            _ => return self.stream_error(StreamError::NotWellFormed, Some("unexpected stream header")).await,
        };
        if let Some(to) = h.attr("to") {
            let to = to.to_lowercase();
            if self.ctx.is_local_domain(&to) {
                self.domain = to;
            } else {
                return self.stream_error(StreamError::HostUnknown, None).await;
            }
        } else if !matches!(stage, Stage::Authenticated(_)) {
            // RFC 6120 §4.7.2: 'to' SHOULD be there; without it we cannot pick a domain
            // when several are served.
            if self.ctx.config.hosts().len() > 1 {
                return self.stream_error(StreamError::HostUnknown, Some("the stream header needs 'to'")).await;
            }
        }
        if default_ns != ns::CLIENT && default_ns != ns::FRAMING {
            return self.stream_error(StreamError::InvalidNamespace, None).await;
        }
        match h.attr("version") {
            Some(v) if v.split('.').next().and_then(|m| m.parse::<u32>().ok()).is_some_and(|m| m >= 1) => {}
            _ => return self.stream_error(StreamError::UnsupportedVersion, Some("version 1.0 is required")).await,
        }
        self.send_header();
        let features = crate::features::features(self, &stage);
        self.out.push(Output::Element(features));
        self.state = State::Open(stage);
    }

    pub(crate) fn send_header(&mut self) {
        if !self.header_sent {
            self.header_sent = true;
            self.out.push(Output::Header { id: meerkat_core::util::random_id(16), from: self.domain.clone() });
        }
    }

    /// A top-level element.
    async fn on_element(&mut self, el: Element) {
        // RFC 7395 §3.3: over WebSocket the stream is framed by <open/> and <close/>.
        if el.ns() == ns::FRAMING {
            return match el.name() {
                "open" => self.on_header(el, ns::FRAMING).await,
                "close" => self.close_gracefully().await,
                _ => self.stream_error(StreamError::UnsupportedStanzaType, None).await,
            };
        }
        match std::mem::replace(&mut self.state, State::Closed) {
            State::WaitHeader(stage) => {
                self.state = State::WaitHeader(stage);
                self.stream_error(StreamError::NotWellFormed, Some("expected a stream header")).await
            }
            State::Open(stage) => self.negotiate(stage, el).await,
            State::Sasl(ex) => self.sasl_step(ex, el).await,
            State::Bound(s) => {
                self.state = State::Bound(s);
                self.bound_element(el).await
            }
            State::Closed => {}
        }
    }

    /// Elements during negotiation (RFC 6120 §5–§7).
    async fn negotiate(&mut self, stage: Stage, el: Element) {
        let secure = self.info.tls == TlsState::Secure;
        match (&stage, el.name(), el.ns()) {
            (Stage::Anonymous, "starttls", ns::TLS) => {
                if secure || !self.listener.starttls_available {
                    // RFC 6120 §5.4.2.2: failure, then close.
                    self.out.push(Output::Element(Element::new("failure", ns::TLS)));
                    return self.close_now();
                }
                self.out.push(Output::Element(Element::new("proceed", ns::TLS)));
                self.out.push(Output::StartTls);
                self.header_sent = false;
                self.state = State::WaitHeader(Stage::Anonymous);
            }
            (Stage::Anonymous, "auth", ns::SASL) => {
                if !secure && self.listener.tls_mode == TlsMode::StarttlsRequired {
                    self.sasl_failure(meerkat_sasl::Failure::EncryptionRequired);
                    self.state = State::Open(stage);
                    return;
                }
                self.sasl_start(el).await
            }
            (Stage::Anonymous, "iq", ns::CLIENT) if self.confidential() => {
                self.state = State::Open(stage);
                self.preauth_iq(el).await
            }
            (Stage::Authenticated(bare), "resume", ns::SM) => {
                let bare = bare.clone();
                self.resume(bare, el).await
            }
            (Stage::Authenticated(bare), "iq", ns::CLIENT) => {
                let bare = bare.clone();
                self.bind(bare, el).await
            }
            (_, "message" | "presence" | "iq", ns::CLIENT) => {
                // RFC 6120 §4.9.3.12: stanzas before authentication and binding.
                self.stream_error(StreamError::NotAuthorized, None).await
            }
            _ => self.stream_error(StreamError::UnsupportedStanzaType, None).await,
        }
    }

    /// Whether secrets may be sent on this connection before authentication (a
    /// password in XEP-0077 registration, like SASL PLAIN): over TLS, or on a
    /// listener explicitly without TLS (loopback tests).
    pub(crate) fn confidential(&self) -> bool {
        self.info.tls == TlsState::Secure || self.listener.tls_mode == TlsMode::None
    }

    /// Whether TLS policy allows negotiation beyond STARTTLS.
    pub(crate) fn tls_satisfied(&self) -> bool {
        self.info.tls == TlsState::Secure || self.listener.tls_mode != TlsMode::StarttlsRequired
    }

    /// IQs before authentication: only those a module registered for (XEP-0077).
    async fn preauth_iq(&mut self, el: Element) {
        use meerkat_core::hooks::IqScope;
        let st = match meerkat_stanza::Stanza::parse(el) {
            Ok(st) => st,
            Err(_) => return self.stream_error(StreamError::NotAuthorized, None).await,
        };
        let ns = st.el.children().next().map(|c| c.ns().to_string()).unwrap_or_default();
        if self.ctx.hooks.iq_handler(IqScope::PreAuth, &ns).is_none() {
            return self.stream_error(StreamError::NotAuthorized, None).await;
        }
        let domain = meerkat_stanza::Jid::new(&self.domain).expect("configured hosts are valid domains");
        if let Some(mut reply) =
            self.ctx.dispatch_iq(IqScope::PreAuth, &st, &domain, &domain, None, Some(self.info.peer)).await
        {
            // Before binding the client has no address: the reply carries none.
            reply.remove_attr("to");
            self.out.push(Output::Element(reply));
        }
    }

    /// Counts a SASL failure and answers `<failure/>` (closing after too many).
    pub(crate) fn sasl_failure(&mut self, f: meerkat_sasl::Failure) {
        let mut fe = Element::new("failure", ns::SASL);
        fe.append_child(Element::new(f.condition(), ns::SASL));
        self.out.push(Output::Element(fe));
        if !matches!(f, meerkat_sasl::Failure::Aborted) {
            self.sasl_failures += 1;
        }
    }

    /// After a failure: back to negotiation, or close when retries are exhausted.
    pub(crate) async fn after_sasl_failure(&mut self) {
        if self.sasl_failures >= MAX_SASL_FAILURES {
            self.stream_error(StreamError::PolicyViolation, Some("too many failed authentication attempts")).await
        } else {
            self.state = State::Open(Stage::Anonymous);
        }
    }

    /// Sends a stream error (with a header first if none was sent, RFC 6120
    /// §4.9.1.2) and closes.
    pub(crate) async fn stream_error(&mut self, cond: StreamError, text: Option<&str>) {
        self.send_header();
        self.out.push(Output::Element(cond.to_element(text)));
        self.terminate().await;
        self.out.push(Output::Close);
    }

    /// `</stream:stream>` from the client (RFC 6120 §4.4): end the session, answer
    /// with our closing tag.
    async fn close_gracefully(&mut self) {
        self.terminate().await;
        self.out.push(Output::Close);
    }

    fn close_now(&mut self) {
        self.state = State::Closed;
        self.out.push(Output::Close);
    }

    /// Ends the session if bound: unavailable presence, hooks, session table.
    pub(crate) async fn terminate(&mut self) {
        self.detached_until = None;
        self.takeover = None;
        if let State::Bound(mut s) = std::mem::replace(&mut self.state, State::Closed) {
            crate::presence::go_unavailable(&self.ctx, &mut s, None).await;
            let status = std::mem::take(&mut self.last_status);
            for h in &self.ctx.hooks.session {
                h.on_closed(&self.ctx, &mut s, &status).await;
            }
            self.ctx.router.unregister(&s.jid, s.id);
            // XEP-0198: what the client never acknowledged is routed again.
            self.sm_finish(&s.bare, &s.jid).await;
            // Anything modules queued for the client while closing is dropped with
            // the connection; stanzas still in the mailbox go back through the router.
            if let Some(Inbox { mut rx, .. }) = self.mailbox.take() {
                rx.close();
                while let Ok(msg) = rx.try_recv() {
                    match msg {
                        SessionMsg::Stanza(st) => crate::bound::reroute_undelivered(&self.ctx, &s, *st).await,
                        SessionMsg::Batch(sts) => {
                            for st in sts {
                                crate::bound::reroute_undelivered(&self.ctx, &s, st).await;
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        self.deadline = None;
        self.pinger = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_overflow_is_seen_before_waiting_messages_and_once() {
        let (tx, rx) = mpsc::channel(2);
        let overflow = Arc::new(Overflow::default());
        let mut inbox = Inbox::new(rx, overflow.clone());
        tx.try_send(SessionMsg::Replaced).unwrap();
        tx.try_send(SessionMsg::Replaced).unwrap();
        // What the router does when the mailbox is full.
        assert!(tx.try_send(SessionMsg::Replaced).is_err());
        overflow.raise();
        assert!(matches!(inbox.recv().await, Mailbox::Overflow));
        assert!(matches!(inbox.recv().await, Mailbox::Msg(SessionMsg::Replaced)));
        assert!(matches!(inbox.recv().await, Mailbox::Msg(SessionMsg::Replaced)));
        drop(tx);
        // A closed mailbox ends the session like an overflow.
        assert!(matches!(inbox.recv().await, Mailbox::Overflow));
    }
}
