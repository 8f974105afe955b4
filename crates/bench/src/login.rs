//! Session establishment as a plain XMPP client does it, timed per phase: TCP connect,
//! STARTTLS + TLS handshake (with --tls), SASL, stream restart + resource binding (and
//! the legacy session IQ when a server requires it), roster get + initial presence,
//! then stream management (XEP-0198) with resumption when asked. Also resumption of
//! a dropped session (`<resume/>` instead of binding), and in-band registration
//! (XEP-0077) for the `register` scenario. Over WebSocket (RFC 7395) the same steps
//! run after the HTTP upgrade, with `<open/>` instead of the stream header.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use meerkat_sasl::HashAlg;
use meerkat_xml::{Element, StreamEvent, STREAM_NS};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::time::Instant;

use crate::cli::Mechanism;
use crate::conn::{Conn, ConnError};
use crate::sasl::{plain_initial, KeyCache, Scram};
use crate::ws::{WsUrl, NS_FRAMING};

const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
const NS_SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
const NS_STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
/// Stream management (XEP-0198).
pub const NS_SM: &str = "urn:xmpp:sm:3";

/// What every login of a worker shares.
pub struct Setup {
    /// The server's address (a cluster: its nodes').
    pub servers: Vec<SocketAddr>,
    /// Account name prefix.
    pub prefix: String,
    /// The shared password.
    pub password: String,
    /// SASL mechanism.
    pub mechanism: Mechanism,
    /// TLS configuration and server name when STARTTLS is used.
    pub tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    /// Resource to bind.
    pub resource: String,
    /// Time allowed for one login.
    pub timeout: Duration,
    /// Derived SCRAM keys.
    pub keys: KeyCache,
    /// The stream header (WebSocket: the `<open/>` element), ready to send.
    pub header: Vec<u8>,
    /// `Some` for XMPP over WebSocket (`server` is then the HTTP listener).
    pub ws: Option<WsUrl>,
}

/// The node user `PREFIX<n>` connects to: node (n-1) mod count (a name
/// without a number: the first).
pub fn node_for(servers: &[SocketAddr], user: &str) -> SocketAddr {
    let digits = user.len() - user.bytes().rev().take_while(u8::is_ascii_digit).count();
    let n: usize = user[digits..].parse().unwrap_or(1);
    servers[n.saturating_sub(1) % servers.len()]
}

impl Setup {
    /// The node user `PREFIX<n>` connects to (see [`node_for`]).
    pub fn server_for(&self, user: &str) -> SocketAddr {
        node_for(&self.servers, user)
    }

    /// Builds the stream header from the domain: `<stream:stream>` over TCP, the
    /// RFC 7395 `<open/>` element over WebSocket.
    pub fn header_for(domain: &str, ws: bool) -> Vec<u8> {
        let mut d = String::new();
        meerkat_xml::escape_attr(domain, &mut d);
        if ws {
            return format!("<open xmlns='{NS_FRAMING}' to='{d}' version='1.0'/>").into_bytes();
        }
        format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' to='{d}' version='1.0'>"
        )
        .into_bytes()
    }
}

/// What a login does besides binding, per scenario.
#[derive(Debug, Clone, Copy, Default)]
pub struct Want {
    /// Keep the roster result (presence: which subscriptions exist already).
    pub roster: bool,
    /// Enable stream management with resumption after the initial presence.
    pub sm: bool,
}

/// A logged-in session.
pub struct Session {
    /// The bound connection.
    pub conn: Conn,
    /// Phase durations.
    pub times: PhaseTimes,
    /// The roster result (with [`Want::roster`]).
    pub roster: Option<Element>,
    /// The resumption id (with [`Want::sm`]).
    pub sm_id: Option<String>,
}

/// How a resumption attempt ended (the connection and authentication worked).
pub enum Resumed {
    /// `<resumed h/>`: the session continues on `conn`; `h` counts the stanzas the
    /// server had received from the client.
    Ok {
        /// The connection carrying the resumed session.
        conn: Box<Conn>,
        /// The server's count of stanzas it received.
        h: u32,
    },
    /// `<failed/>` with its condition: the session is gone.
    Failed(String),
}

/// The login phases, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// TCP connect.
    Connect,
    /// STARTTLS request to the features of the encrypted stream.
    Tls,
    /// SASL exchange.
    Auth,
    /// Stream restart, resource binding (and session).
    Bind,
    /// Roster get and initial presence, until the roster result.
    Roster,
}

impl Phase {
    /// Lower-case name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Tls => "tls",
            Phase::Auth => "auth",
            Phase::Bind => "bind",
            Phase::Roster => "roster",
        }
    }
}

/// Duration of each phase in µs (tls is 0 without TLS), and the total.
#[derive(Debug, Default, Clone, Copy)]
pub struct PhaseTimes {
    /// Per phase, indexed like [`Phase`].
    pub phases: [u64; 5],
    /// From the start of the TCP connect to the roster result.
    pub total: u64,
}

/// A failed login: where and why.
#[derive(Debug)]
pub struct LoginError {
    /// The phase that failed.
    pub phase: Phase,
    /// A short reason (no per-user details), counted in the report.
    pub reason: String,
}

impl std::fmt::Display for LoginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.phase.name(), self.reason)
    }
}

struct Login<'a> {
    s: &'a Setup,
    conn: Option<Conn>,
    phase: Phase,
    deadline: Instant,
}

impl Login<'_> {
    fn fail(&self, reason: impl Into<String>) -> LoginError {
        LoginError { phase: self.phase, reason: reason.into() }
    }

    fn conn(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("connected before any stream step")
    }

    async fn send(&mut self, data: &[u8]) -> Result<(), LoginError> {
        let r = self.conn().send(data).await;
        r.map_err(|e| self.fail(ConnError::Io(e).to_string()))
    }

    /// The next top-level element; stream errors and closes are failures.
    async fn element(&mut self) -> Result<Element, LoginError> {
        let deadline = self.deadline;
        loop {
            let ev = self.conn().next_event(deadline).await;
            match ev {
                Ok(StreamEvent::Header(_)) => {}
                Ok(StreamEvent::Element(el)) if el.is("error", STREAM_NS) => {
                    return Err(self.fail(format!("stream error {}", condition(&el, NS_STREAMS))));
                }
                Ok(StreamEvent::Element(el)) => return Ok(el),
                Ok(StreamEvent::Close) => return Err(self.fail("stream closed by server")),
                Err(e) => return Err(self.fail(e.to_string())),
            }
        }
    }

    /// Waits for the element `pred` accepts, skipping others (presence, pushes).
    async fn expect(&mut self, pred: impl Fn(&Element) -> bool) -> Result<Element, LoginError> {
        loop {
            let el = self.element().await?;
            if pred(&el) {
                return Ok(el);
            }
        }
    }

    /// Sends a stream header and returns the features.
    async fn open(&mut self) -> Result<Element, LoginError> {
        self.conn().dec.reset();
        let s = self.s;
        self.send(&s.header).await?;
        self.expect(|e| e.is("features", STREAM_NS)).await
    }

    /// An IQ request with `id`; its result, or a failure naming the error condition.
    async fn iq(&mut self, xml: &[u8], id: &str) -> Result<Element, LoginError> {
        self.send(xml).await?;
        let el = self.expect(|e| e.name() == "iq" && e.attr("id") == Some(id)).await?;
        match el.attr("type") {
            Some("result") => Ok(el),
            _ => Err(self.fail(format!("iq error {}", iq_condition(&el)))),
        }
    }

    async fn starttls(&mut self, features: &Element) -> Result<Element, LoginError> {
        let (cfg, name) = self.s.tls.clone().expect("called with TLS configured");
        if !features.has_child("starttls", NS_TLS) {
            return Err(self.fail("server does not offer STARTTLS"));
        }
        self.send(format!("<starttls xmlns='{NS_TLS}'/>").as_bytes()).await?;
        let el = self.expect(|e| e.ns() == NS_TLS).await?;
        if el.name() != "proceed" {
            return Err(self.fail("STARTTLS refused"));
        }
        let deadline = self.deadline;
        let r = tokio::time::timeout_at(deadline, self.conn().start_tls(cfg, name)).await;
        match r {
            Err(_) => return Err(self.fail("timeout")),
            Ok(Err(e)) => return Err(self.fail(ConnError::Io(e).to_string())),
            Ok(Ok(())) => {}
        }
        self.open().await
    }

    async fn authenticate(&mut self, features: &Element, user: &str, nonce: String) -> Result<(), LoginError> {
        let mech = self.s.mechanism.name();
        let offered: Vec<String> = features
            .get_child("mechanisms", NS_SASL)
            .map(|m| m.children().filter(|c| c.name() == "mechanism").map(|c| c.text()).collect())
            .unwrap_or_default();
        if !offered.iter().any(|m| m == mech) {
            return Err(self.fail(format!("{mech} not offered (offered: {})", offered.join(" "))));
        }
        let alg = match self.s.mechanism {
            Mechanism::ScramSha1 => Some(HashAlg::Sha1),
            Mechanism::ScramSha256 => Some(HashAlg::Sha256),
            Mechanism::ScramSha512 => Some(HashAlg::Sha512),
            Mechanism::Plain => None,
        };
        let mut scram = alg.map(|a| Scram::new(a, user, nonce));
        let initial = match &scram {
            Some(s) => s.client_first(),
            None => plain_initial(user, &self.s.password),
        };
        self.send(format!("<auth xmlns='{NS_SASL}' mechanism='{mech}'>{initial}</auth>").as_bytes()).await?;
        loop {
            let el = self.expect(|e| e.ns() == NS_SASL).await?;
            match (el.name(), scram.as_mut()) {
                ("challenge", Some(sc)) => {
                    let reply =
                        sc.client_final(&el.text(), &self.s.password, &self.s.keys).map_err(|e| self.fail(e))?;
                    self.send(format!("<response xmlns='{NS_SASL}'>{reply}</response>").as_bytes()).await?;
                }
                ("success", sc) => {
                    if let Some(sc) = sc {
                        sc.verify(&el.text()).map_err(|e| self.fail(e))?;
                    }
                    return Ok(());
                }
                ("failure", _) => return Err(self.fail(format!("SASL failure {}", condition(&el, NS_SASL)))),
                (other, _) => return Err(self.fail(format!("unexpected SASL element {other}"))),
            }
        }
    }
}

impl Login<'_> {
    /// Opens the TCP (or WebSocket) connection.
    async fn connect(&mut self, server: SocketAddr, source: Option<IpAddr>, seed: u64) -> Result<(), LoginError> {
        let s = self.s;
        let conn = match &s.ws {
            Some(url) => Conn::connect_ws(server, source, url, seed, self.deadline).await,
            None => match tokio::time::timeout_at(self.deadline, Conn::connect(server, source)).await {
                Err(_) => Err(ConnError::Timeout),
                Ok(r) => r.map_err(ConnError::Io),
            },
        };
        self.conn = Some(conn.map_err(|e| self.fail(e.to_string()))?);
        Ok(())
    }

    /// From the connection to the features of the authenticated stream.
    async fn connect_auth(
        &mut self,
        user: &str,
        source: Option<IpAddr>,
        nonce: String,
        times: &mut PhaseTimes,
    ) -> Result<Element, LoginError> {
        let s = self.s;
        let mut mark = Instant::now();
        let mut lap = |times: &mut PhaseTimes, p: Phase| {
            let now = Instant::now();
            times.phases[p as usize] = (now - mark).as_micros() as u64;
            mark = now;
        };
        self.connect(s.server_for(user), source, nonce_seed(&nonce)).await?;
        lap(times, Phase::Connect);

        self.phase = if s.tls.is_some() { Phase::Tls } else { Phase::Auth };
        let mut features = self.open().await?;
        if s.tls.is_some() {
            features = self.starttls(&features).await?;
            lap(times, Phase::Tls);
            self.phase = Phase::Auth;
        } else if features.get_child("starttls", NS_TLS).is_some_and(|t| t.has_child("required", NS_TLS)) {
            return Err(self.fail("server requires TLS (use --tls)"));
        }
        self.authenticate(&features, user, nonce).await?;
        lap(times, Phase::Auth);
        self.phase = Phase::Bind;
        self.open().await
    }
}

/// A per-connection seed (WebSocket masks) from the SCRAM nonce.
fn nonce_seed(nonce: &str) -> u64 {
    nonce.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// Logs `user` in (with the extras of `want`); returns the bound connection, the
/// phase durations and the extras.
pub async fn login_with(
    s: &Setup,
    user: &str,
    source: Option<IpAddr>,
    nonce: String,
    want: Want,
) -> Result<Session, LoginError> {
    let t0 = Instant::now();
    let mut l = Login { s, conn: None, phase: Phase::Connect, deadline: t0 + s.timeout };
    let mut times = PhaseTimes::default();
    let features = l.connect_auth(user, source, nonce, &mut times).await?;
    let mut mark = Instant::now();

    if !features.has_child("bind", NS_BIND) {
        return Err(l.fail("server does not offer resource binding"));
    }
    if want.sm && !features.has_child("sm", NS_SM) {
        return Err(l.fail("server does not offer stream management (XEP-0198)"));
    }
    let mut res = String::new();
    meerkat_xml::escape_text(&s.resource, &mut res);
    let bind = format!("<iq type='set' id='bind'><bind xmlns='{NS_BIND}'><resource>{res}</resource></bind></iq>");
    l.iq(bind.as_bytes(), "bind").await?;
    let session_required =
        features.get_child("session", NS_SESSION).is_some_and(|s| !s.has_child("optional", NS_SESSION));
    if session_required {
        l.iq(format!("<iq type='set' id='sess'><session xmlns='{NS_SESSION}'/></iq>").as_bytes(), "sess").await?;
    }
    let now = Instant::now();
    times.phases[Phase::Bind as usize] = (now - mark).as_micros() as u64;
    mark = now;

    l.phase = Phase::Roster;
    let roster =
        l.iq(b"<iq type='get' id='roster'><query xmlns='jabber:iq:roster'/></iq><presence/>", "roster").await?;
    let mut sm_id = None;
    if want.sm {
        l.send(format!("<enable xmlns='{NS_SM}' resume='true'/>").as_bytes()).await?;
        let el = l.expect(|e| e.ns() == NS_SM && matches!(e.name(), "enabled" | "failed")).await?;
        match (el.name(), el.attr("id")) {
            ("enabled", Some(id)) if matches!(el.attr("resume"), Some("true" | "1")) => sm_id = Some(id.to_owned()),
            ("enabled", _) => return Err(l.fail("stream management enabled without resumption")),
            _ => return Err(l.fail(format!("stream management failed: {}", condition(&el, NS_STANZAS)))),
        }
    }
    times.phases[Phase::Roster as usize] = (Instant::now() - mark).as_micros() as u64;
    times.total = (Instant::now() - t0).as_micros() as u64;
    let mut conn = l.conn.take().expect("connected");
    conn.shrink();
    Ok(Session { conn, times, roster: want.roster.then_some(roster), sm_id })
}

/// Resumes the dropped session `previd` of `user` (XEP-0198 §5): connects and
/// authenticates like a login, then sends `<resume previd h/>` instead of binding.
/// `Err` when the connection or authentication failed, or the server offers no SM.
pub async fn resume(
    s: &Setup,
    user: &str,
    source: Option<IpAddr>,
    nonce: String,
    previd: &str,
    h: u32,
) -> Result<Resumed, LoginError> {
    let t0 = Instant::now();
    let mut l = Login { s, conn: None, phase: Phase::Connect, deadline: t0 + s.timeout };
    let mut times = PhaseTimes::default();
    let features = l.connect_auth(user, source, nonce, &mut times).await?;
    if !features.has_child("sm", NS_SM) {
        return Err(l.fail("server does not offer stream management (XEP-0198)"));
    }
    let mut id = String::new();
    meerkat_xml::escape_attr(previd, &mut id);
    l.send(format!("<resume xmlns='{NS_SM}' previd='{id}' h='{h}'/>").as_bytes()).await?;
    let el = l.expect(|e| e.ns() == NS_SM && matches!(e.name(), "resumed" | "failed")).await?;
    if el.name() == "failed" {
        return Ok(Resumed::Failed(condition(&el, NS_STANZAS)));
    }
    let Some(h) = el.attr("h").and_then(|h| h.parse::<u32>().ok()) else {
        return Err(l.fail("<resumed/> without a valid h"));
    };
    let conn = l.conn.take().expect("connected");
    Ok(Resumed::Ok { conn: Box::new(conn), h })
}

/// How a registration ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// The account was created.
    Created,
    /// The account already existed (`<conflict/>`).
    Existed,
}

/// Creates `user` by in-band registration (XEP-0077), then closes the stream.
pub async fn register(s: &Setup, user: &str, source: Option<IpAddr>) -> Result<Registered, LoginError> {
    let t0 = Instant::now();
    let mut l = Login { s, conn: None, phase: Phase::Connect, deadline: t0 + s.timeout };
    l.connect(s.server_for(user), source, u64::from(t0.elapsed().subsec_nanos()) ^ user.len() as u64).await?;
    l.phase = if s.tls.is_some() { Phase::Tls } else { Phase::Auth };
    let features = l.open().await?;
    if s.tls.is_some() {
        l.starttls(&features).await?;
    }
    l.phase = Phase::Auth;
    let (mut u, mut p) = (String::new(), String::new());
    meerkat_xml::escape_text(user, &mut u);
    meerkat_xml::escape_text(&s.password, &mut p);
    let iq = format!(
        "<iq type='set' id='reg'><query xmlns='jabber:iq:register'><username>{u}</username>\
         <password>{p}</password></query></iq>"
    );
    let result = match l.iq(iq.as_bytes(), "reg").await {
        Ok(_) => Registered::Created,
        Err(e) if e.reason == "iq error conflict" => Registered::Existed,
        Err(e) => return Err(e),
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    l.conn().close(deadline).await;
    Ok(result)
}

/// The name of the first child of `el` in `ns` (a stream or SASL condition).
fn condition(el: &Element, ns: &str) -> String {
    el.children()
        .find(|c| c.ns() == ns && c.name() != "text")
        .map(|c| c.name().to_owned())
        .unwrap_or_else(|| "?".into())
}

/// The defined condition of an IQ error.
fn iq_condition(iq: &Element) -> String {
    iq.children()
        .find(|c| c.name() == "error")
        .map(|e| condition(e, NS_STANZAS))
        .unwrap_or_else(|| format!("type={}", iq.attr("type").unwrap_or("?")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_spread_over_the_nodes_in_order() {
        let servers: Vec<SocketAddr> = (0..3).map(|i| SocketAddr::from(([127, 0, 0, 1], 5222 + i))).collect();
        let on = |u: &str| servers.iter().position(|a| *a == node_for(&servers, u)).unwrap();
        assert_eq!([on("user1"), on("user2"), on("user3"), on("user4"), on("user30")], [0, 1, 2, 0, 2]);
        assert_eq!(on("nodigits"), 0);
    }
}
