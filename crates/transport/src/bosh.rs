//! XMPP over BOSH (XEP-0124 v1.11, XEP-0206 v1.4) on `[[listen.http]]` listeners.
//!
//! Each BOSH session is one task that owns a [`C2s`] (the same state machine as
//! TCP and WebSocket) and the HTTP requests the client keeps open. Requests reach
//! the task through a channel and are processed strictly in `rid` order
//! (§14.3: early ones wait for the gap to fill, a repeated one gets the cached
//! response, one outside the window ends the session). Up to `hold` requests are
//! held; output goes out on the oldest; a held request is answered empty after
//! `wait` seconds; a session with no request for `inactivity` seconds (or the
//! client's `pause`, up to `maxpause`) ends as a disconnect. Responses carry CORS
//! headers so browser clients on other origins can use the endpoint.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use meerkat_config::{BoshHandler, TlsMode};
use meerkat_sasl::ChannelBinding;
use meerkat_stanza::ns;
use meerkat_stream::{C2s, Listener, Output, TlsState, TransportInfo};
use meerkat_xml::{Element, Limits, Node, StreamEvent};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

use crate::waits::{Deadline, Shutdown};
use crate::websocket::HttpRuntime;

/// XEP-0124 namespace.
const HTTPBIND: &str = "http://jabber.org/protocol/httpbind";
/// XEP-0206 namespace.
const XBOSH: &str = "urn:xmpp:xbosh";

/// Open BOSH sessions by `sid`.
#[derive(Default)]
pub struct BoshSessions {
    map: Mutex<HashMap<String, mpsc::Sender<Request>>>,
}

/// One HTTP request handed to its session.
pub(crate) struct Request {
    rid: u64,
    body: Element,
    reply: oneshot::Sender<Reply>,
}

/// What the HTTP handler sends back.
struct Reply {
    status: StatusCode,
    body: String,
}

fn terminate(condition: &str) -> String {
    format!("<body xmlns='{HTTPBIND}' type='terminate' condition='{condition}'/>")
}

fn respond(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/xml; charset=utf-8"));
    cors(h);
    r
}

fn cors(h: &mut HeaderMap) {
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST, OPTIONS"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("Content-Type"));
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
}

/// CORS preflight.
pub(crate) fn options() -> Response {
    let mut r = StatusCode::OK.into_response();
    cors(r.headers_mut());
    r
}

/// A POST to the BOSH endpoint.
pub(crate) async fn post(
    rt: Arc<HttpRuntime>,
    handler: BoshHandler,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let bad = |why: &str| {
        tracing::debug!(%peer, "bad BOSH request: {why}");
        respond(StatusCode::BAD_REQUEST, terminate("bad-request"))
    };
    let ctype = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ctype.split(';').next().unwrap_or("").trim();
    if !matches!(mime, "text/xml" | "application/xml" | "text/plain" | "") {
        return bad("wrong content type");
    }
    let limits = Limits { max_stanza_bytes: rt.cfg.max_stanza_size * 4, ..Limits::default() };
    if body.len() > limits.max_stanza_bytes {
        return respond(StatusCode::PAYLOAD_TOO_LARGE, terminate("policy-violation"));
    }
    let Ok(text) = std::str::from_utf8(&body) else { return bad("not UTF-8") };
    let el = match meerkat_xml::parse_element(text, &limits) {
        Ok(el) if el.is("body", HTTPBIND) => el,
        Ok(_) => return bad("not a <body/> in the httpbind namespace"),
        Err(meerkat_xml::Error::StanzaTooBig) => {
            return respond(StatusCode::PAYLOAD_TOO_LARGE, terminate("policy-violation"))
        }
        Err(_) => return bad("malformed XML"),
    };
    let Some(rid) = el.attr("rid").and_then(|r| r.parse::<u64>().ok()) else { return bad("missing or bad rid") };
    let tx = match el.attr("sid") {
        Some(sid) => match rt.bosh.map.lock().get(sid).cloned() {
            Some(tx) => tx,
            None => return respond(StatusCode::NOT_FOUND, terminate("item-not-found")),
        },
        None => match Session::start(rt.clone(), handler, peer, shutdown, &el, rid) {
            Ok(tx) => tx,
            Err(condition) => return respond(StatusCode::OK, terminate(condition)),
        },
    };
    let (reply, rx) = oneshot::channel();
    if tx.send(Request { rid, body: el, reply }).await.is_err() {
        return respond(StatusCode::NOT_FOUND, terminate("item-not-found"));
    }
    match rx.await {
        Ok(r) => respond(r.status, r.body),
        // The session ended without answering this request.
        Err(_) => respond(StatusCode::OK, terminate("remote-connection-failed")),
    }
}

/// A request the session holds open.
struct Held {
    rid: u64,
    reply: oneshot::Sender<Reply>,
    until: Instant,
}

struct Session {
    rt: Arc<HttpRuntime>,
    sid: String,
    c2s: C2s,
    wait: Duration,
    hold: usize,
    window: u64,
    inactivity: Duration,
    max_pause: Duration,
    next_rid: u64,
    early: BTreeMap<u64, Request>,
    held: VecDeque<Held>,
    out: Vec<Element>,
    /// Answers already sent, for retransmitted rids (§14.3).
    answered: VecDeque<(u64, String)>,
    idle_since: Instant,
    created: bool,
    ending: Option<&'static str>,
    to: String,
}

impl Session {
    /// Validates a session creation request (§7.1) and starts the session task.
    fn start(
        rt: Arc<HttpRuntime>,
        handler: BoshHandler,
        peer: SocketAddr,
        shutdown: watch::Receiver<bool>,
        el: &Element,
        rid: u64,
    ) -> Result<mpsc::Sender<Request>, &'static str> {
        let to = el.attr("to").unwrap_or("").to_lowercase();
        if !rt.ctx.is_local_domain(&to) {
            return Err("host-unknown");
        }
        let wait =
            el.attr("wait").and_then(|w| w.parse::<u64>().ok()).unwrap_or(handler.max_wait).clamp(1, handler.max_wait);
        let hold = el.attr("hold").and_then(|h| h.parse::<u64>().ok()).unwrap_or(1).min(handler.max_hold) as usize;
        let sid = meerkat_core::util::random_id(20);
        let listener = Listener {
            tls_mode: TlsMode::Starttls,
            starttls_available: false,
            state_timeout: Duration::from_secs(rt.cfg.state_timeout),
            max_stanza_rate: rt.cfg.max_stanza_rate,
        };
        let info = TransportInfo {
            peer,
            tls: if rt.tls.is_some() { TlsState::Secure } else { TlsState::Plain },
            channel_binding: ChannelBinding::Unsupported,
        };
        let c2s = C2s::new(rt.ctx.clone(), listener, info);
        let (tx, rx) = mpsc::channel(8);
        rt.bosh.map.lock().insert(sid.clone(), tx.clone());
        let s = Session {
            sid,
            c2s,
            wait: Duration::from_secs(wait),
            hold,
            window: (hold as u64 + 1).max(2),
            inactivity: Duration::from_secs(handler.inactivity),
            max_pause: Duration::from_secs(handler.max_pause),
            next_rid: rid,
            early: BTreeMap::new(),
            held: VecDeque::new(),
            out: Vec::new(),
            answered: VecDeque::new(),
            idle_since: Instant::now(),
            created: false,
            ending: None,
            to,
            rt,
        };
        tokio::spawn(s.run(rx, shutdown));
        Ok(tx)
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Request>, shutdown: watch::Receiver<bool>) {
        let mut timer = Deadline::new();
        let mut shutdown = Shutdown::new(shutdown);
        loop {
            timer.set(self.next_deadline());
            tokio::select! {
                r = rx.recv() => match r {
                    Some(req) => self.on_request(req).await,
                    None => break,
                },
                m = self.c2s.recv() => match m {
                    // A BOSH session resumed elsewhere: hand it over and stop.
                    meerkat_stream::Mailbox::Takeover(tx) => {
                        self.rt.bosh.map.lock().remove(&self.sid);
                        for h in self.held.drain(..) {
                            let _ = h.reply.send(Reply { status: StatusCode::OK, body: terminate("other-request") });
                        }
                        let _ = tx.send(Box::new(self.c2s));
                        return;
                    }
                    m => self.c2s.on_mailbox(m).await,
                },
                () = timer.fired() => self.on_timer().await,
                () = shutdown.signalled() => self.c2s.on_shutdown().await,
            }
            self.collect();
            self.deliver();
            if self.ending.is_some() && self.held.is_empty() {
                break;
            }
        }
        self.rt.bosh.map.lock().remove(&self.sid);
        self.c2s.on_disconnect().await;
        for req in std::mem::take(&mut self.early).into_values() {
            let _ = req.reply.send(Reply { status: StatusCode::OK, body: terminate("item-not-found") });
        }
        rx.close();
        while let Ok(req) = rx.try_recv() {
            let _ = req.reply.send(Reply { status: StatusCode::NOT_FOUND, body: terminate("item-not-found") });
        }
        if self.c2s.is_detached() {
            meerkat_stream::park(self.c2s).await;
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let held = self.held.iter().map(|h| h.until).min();
        let idle = self.held.is_empty().then(|| self.idle_since + self.inactivity);
        [held, idle, self.c2s.next_deadline()].into_iter().flatten().min()
    }

    async fn on_timer(&mut self) {
        let now = Instant::now();
        // §7.4: a held request is answered, empty, after 'wait' seconds.
        while self.held.front().is_some_and(|h| h.until <= now) {
            self.answer_front(Vec::new());
        }
        if self.held.is_empty() && self.idle_since + self.inactivity <= now {
            tracing::debug!(sid = %self.sid, "BOSH session inactive: ending it");
            self.c2s.on_disconnect().await;
            self.ending = Some("remote-connection-failed");
            return;
        }
        if self.c2s.next_deadline().is_some_and(|d| d <= now) {
            self.c2s.on_timer().await;
        }
    }

    /// §14.3: requests are processed in rid order.
    async fn on_request(&mut self, req: Request) {
        if req.rid < self.next_rid {
            // A retransmission: the same answer again, or take over a held slot.
            if let Some((_, body)) = self.answered.iter().find(|(r, _)| *r == req.rid) {
                let _ = req.reply.send(Reply { status: StatusCode::OK, body: body.clone() });
            } else if let Some(h) = self.held.iter_mut().find(|h| h.rid == req.rid) {
                h.reply = req.reply;
            } else {
                let _ = req.reply.send(Reply { status: StatusCode::OK, body: terminate("item-not-found") });
            }
            return;
        }
        if req.rid >= self.next_rid + self.window {
            let _ = req.reply.send(Reply { status: StatusCode::OK, body: terminate("item-not-found") });
            self.c2s.on_disconnect().await;
            self.ending = Some("item-not-found");
            return;
        }
        self.early.insert(req.rid, req);
        while let Some(req) = self.early.remove(&self.next_rid) {
            self.next_rid += 1;
            self.process(req).await;
        }
    }

    async fn process(&mut self, req: Request) {
        self.idle_since = Instant::now();
        let body = req.body;
        if let Some(p) = body.attr("pause").and_then(|p| p.parse::<u64>().ok()) {
            // §10: answer everything held; inactivity becomes the pause.
            self.inactivity = Duration::from_secs(p).min(self.max_pause);
            while !self.held.is_empty() {
                self.answer_front(Vec::new());
            }
        }
        self.c2s.touch();
        if !self.created {
            // §7.1 / XEP-0206 §4: the creation request opens the XMPP stream.
            let header =
                Element::builder("stream", ns::STREAM).attr("to", self.to.clone()).attr("version", "1.0").build();
            self.c2s.on_event(StreamEvent::Header(header), ns::CLIENT).await;
        } else if body.attr_ns("restart", XBOSH) == Some("true") || body.attr("xmpp:restart") == Some("true") {
            // XEP-0206 §5: stream restart after SASL.
            let header =
                Element::builder("stream", ns::STREAM).attr("to", self.to.clone()).attr("version", "1.0").build();
            self.c2s.on_event(StreamEvent::Header(header), ns::CLIENT).await;
        }
        for child in body.children() {
            if self.c2s.is_closed() {
                break;
            }
            let mut child = child.clone();
            requalify(&mut child);
            self.c2s.on_event(StreamEvent::Element(child), ns::CLIENT).await;
        }
        if body.attr("type") == Some("terminate") && !self.c2s.is_closed() {
            self.c2s.on_event(StreamEvent::Close, ns::CLIENT).await;
        }
        self.held.push_back(Held { rid: req.rid, reply: req.reply, until: Instant::now() + self.wait });
    }

    /// Moves the session's outputs into the queue.
    fn collect(&mut self) {
        for o in self.c2s.take_output() {
            match o {
                Output::Element(el) => self.out.push(el),
                Output::Close => {
                    let err = self.out.iter().any(|e| e.is("error", ns::STREAM));
                    self.ending = Some(if err { "remote-stream-error" } else { "" });
                }
                Output::Header { .. } | Output::ResetDecoder => {}
                Output::StartTls => self.ending = Some("internal-server-error"), // never offered
            }
        }
    }

    /// Sends queued output on the oldest held request; keeps at most `hold` held.
    fn deliver(&mut self) {
        if self.ending.is_some() {
            if !self.held.is_empty() {
                self.deliver_terminate();
            }
            return;
        }
        if !self.out.is_empty() && !self.held.is_empty() {
            let out = std::mem::take(&mut self.out);
            self.answer_front(out);
        }
        // The creation response goes out at once (it carries the session attributes).
        if !self.created && !self.held.is_empty() {
            self.answer_front(Vec::new());
        }
        while self.held.len() > self.hold {
            self.answer_front(Vec::new());
        }
    }

    fn deliver_terminate(&mut self) {
        let condition = self.ending.unwrap_or("");
        let out = std::mem::take(&mut self.out);
        let Some(h) = self.held.pop_front() else { return };
        let mut s = format!("<body xmlns='{HTTPBIND}' type='terminate'");
        if !condition.is_empty() {
            s.push_str(&format!(" condition='{condition}'"));
        }
        s.push('>');
        let mut buf = Vec::new();
        for el in &out {
            el.write_to(&mut buf, HTTPBIND);
        }
        s.push_str(&String::from_utf8_lossy(&buf));
        s.push_str("</body>");
        let _ = h.reply.send(Reply { status: StatusCode::OK, body: s });
        for h in self.held.drain(..) {
            let _ = h.reply.send(Reply { status: StatusCode::OK, body: terminate("remote-connection-failed") });
        }
    }

    fn answer_front(&mut self, els: Vec<Element>) {
        let Some(h) = self.held.pop_front() else { return };
        let mut s = format!("<body xmlns='{HTTPBIND}'");
        if !self.created {
            self.created = true;
            s.push_str(&format!(
                " sid='{}' wait='{}' requests='{}' hold='{}' inactivity='{}' polling='2' maxpause='{}' ver='1.11' from='{}' secure='{}' xmpp:version='1.0' xmlns:xmpp='{XBOSH}' xmlns:stream='{}'",
                self.sid,
                self.wait.as_secs(),
                self.window,
                self.hold,
                self.inactivity.as_secs(),
                self.max_pause.as_secs(),
                self.to,
                self.rt.tls.is_some(),
                ns::STREAM,
            ));
        }
        if els.is_empty() {
            s.push_str("/>");
        } else {
            s.push('>');
            let mut buf = Vec::new();
            for el in &els {
                el.write_to(&mut buf, HTTPBIND);
            }
            s.push_str(&String::from_utf8_lossy(&buf));
            s.push_str("</body>");
        }
        self.answered.push_back((h.rid, s.clone()));
        while self.answered.len() as u64 > self.window {
            self.answered.pop_front();
        }
        self.idle_since = Instant::now();
        let _ = h.reply.send(Reply { status: StatusCode::OK, body: s });
    }
}

/// XEP-0206 §6: stanzas in a `<body/>` may inherit its namespace; they are
/// `jabber:client` stanzas.
fn requalify(el: &mut Element) {
    if el.ns() == HTTPBIND {
        el.set_ns(ns::CLIENT);
        for n in el.nodes_mut() {
            if let Node::Element(c) = n {
                requalify(c);
            }
        }
    }
}
