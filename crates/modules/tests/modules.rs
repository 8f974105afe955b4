//! Integration tests of the feature modules: a real in-process server (memory
//! storage, the local router, every module started from a configuration) with fake
//! client sessions that follow the session task's rules (crates/stream/src/bound.rs):
//! IQs to the own account or the server are dispatched with the session, other
//! stanzas pass the send hooks and the router, and whatever reaches a session's
//! mailbox passes the receive hooks (stanzas) or the event hooks (module events).

use std::net::SocketAddr;
use std::sync::Arc;

use meerkat_config::Config;
use meerkat_core::hooks::{Flow, IqScope};
use meerkat_core::{HookRegistry, ServerContext, SessionHandle, SessionMsg, SessionState};
use meerkat_stanza::{ns, FullJid, IqType, Jid, Stanza, StanzaKind, StreamError};
use meerkat_storage::{Account, LastActivity, RosterItem, StoredCredentials, Subscription};
use meerkat_xml::{Element, Limits};
use tokio::sync::mpsc;

// ---------------------------------------------------------------- harness

const CONFIG: &str = r#"
[general]
hosts = ["localhost", "example.org"]

[modules.mod_roster]
[modules.mod_disco]
server_info = [{ name = "abuse-addresses", urls = ["mailto:abuse@localhost", "xmpp:abuse@localhost"] }]
[modules.mod_ping]
[modules.mod_version]
[modules.mod_time]
[modules.mod_last]
[modules.mod_vcard]
max_size = 2048
[modules.mod_private]
max_size = 1024
[modules.mod_blocking]
[modules.mod_offline]
max_messages = 3
[modules.mod_stanza_id]
[modules.mod_register]
min_password_length = 8
registration_interval = 60
"#;

fn config() -> Config {
    let mut c = Config::parse(CONFIG, "test.toml").expect("test configuration is valid");
    // Cheap key derivation for tests (the configuration floor is for production).
    c.auth.scram_iterations = 64;
    c
}

fn server() -> Server {
    server_with(config())
}

fn server_with(c: Config) -> Server {
    let mut reg = HookRegistry::default();
    meerkat_modules::start(&c, &mut reg);
    let ctx = ServerContext::new(
        Arc::new(c),
        meerkat_storage::memory::stores(),
        reg.freeze(),
        Arc::new(meerkat_router::LocalRouter::new()),
    );
    Server { ctx }
}

fn xml(s: &str) -> Element {
    meerkat_xml::parse_element(s, &Limits::default()).expect("test XML parses")
}

fn acc(bare: &str) -> (String, String) {
    let (u, d) = bare.split_once('@').expect("user@domain");
    (u.to_string(), d.to_string())
}

fn peer(n: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, n], 5222))
}

struct Server {
    ctx: Arc<ServerContext>,
}

impl Server {
    async fn user(&self, bare: &str) {
        let (u, d) = acc(bare);
        self.ctx
            .stores
            .auth
            .create_user(Account::new(&u, &d), &StoredCredentials::from_password("password", 64))
            .await
            .expect("user created");
    }

    async fn exists(&self, bare: &str) -> bool {
        let (u, d) = acc(bare);
        self.ctx.stores.auth.user_exists(Account::new(&u, &d)).await.expect("storage works")
    }

    /// Puts `contact` in `user`'s roster with `sub`.
    async fn roster(&self, user: &str, contact: &str, sub: Subscription) {
        let (u, d) = acc(user);
        let item = RosterItem { jid: contact.to_string(), subscription: sub, visible: true, ..RosterItem::default() };
        self.ctx.stores.roster.put_item(Account::new(&u, &d), &item).await.expect("roster item stored");
    }

    async fn offline_count(&self, user: &str) -> usize {
        let (u, d) = acc(user);
        self.ctx.stores.offline.count(Account::new(&u, &d)).await.expect("storage works")
    }

    async fn connect(&self, full: &str) -> Client {
        self.connect_from(full, peer(1)).await
    }

    async fn connect_from(&self, full: &str, addr: SocketAddr) -> Client {
        let ctx = self.ctx.clone();
        let jid = FullJid::new(full).expect("valid full JID");
        let mut s = SessionState::new(ctx.next_session_id(), jid.clone(), addr);
        for h in &ctx.hooks.session {
            h.on_bound(&ctx, &mut s).await.expect("session hooks accept the bind");
        }
        let (tx, rx) = mpsc::channel(256);
        let old = ctx.router.register(SessionHandle { id: s.id, jid, mailbox: tx, overflow: Arc::default() });
        assert!(old.is_none());
        let mut c = Client { ctx, s, rx, out: Vec::new(), kicked: None };
        c.flush();
        c
    }

    /// A pre-authentication IQ from a connection at `addr`.
    async fn preauth(&self, addr: SocketAddr, ty: &str, payload: &str) -> Element {
        let el = xml(&format!("<iq xmlns='jabber:client' type='{ty}' id='pre'>{payload}</iq>"));
        let st = Stanza::parse(el).expect("valid stanza");
        let domain = Jid::new("localhost").expect("valid domain");
        self.ctx
            .dispatch_iq(IqScope::PreAuth, &st, &domain, &domain, None, Some(addr))
            .await
            .expect("a get or set is answered")
    }
}

/// A fake bound session.
struct Client {
    ctx: Arc<ServerContext>,
    s: SessionState,
    rx: mpsc::Receiver<SessionMsg>,
    /// What was written to the client and not yet taken.
    out: Vec<Element>,
    kicked: Option<(StreamError, Option<String>)>,
}

impl Client {
    fn flush(&mut self) {
        self.out.append(&mut self.s.outbox);
    }

    /// Sends a stanza as the client.
    async fn send(&mut self, el: Element) {
        let ctx = self.ctx.clone();
        let mut st = Stanza::parse(el).expect("valid stanza");
        st.set_from(Jid::from(self.s.jid.clone()));
        let s = &mut self.s;
        match st.kind {
            StanzaKind::Iq => {
                let to_self = st.to.as_ref().is_none_or(|t| t.to_bare() == s.bare && t.resource().is_none());
                let to_server = st.to.as_ref().is_some_and(|t| {
                    t.node().is_none() && t.resource().is_none() && ctx.is_local_domain(t.domain().as_str())
                });
                if to_self || to_server {
                    if !matches!(st.iq_type(), Some(IqType::Get | IqType::Set)) {
                        return;
                    }
                    let (scope, to) = if to_server {
                        (IqScope::Server, st.to.clone().expect("server IQs have a 'to'"))
                    } else {
                        (IqScope::Account, Jid::from(s.bare.clone()))
                    };
                    let from = Jid::from(s.jid.clone());
                    let addr = s.peer;
                    if let Some(mut reply) = ctx.dispatch_iq(scope, &st, &from, &to, Some(s), Some(addr)).await {
                        if st.to.is_none() {
                            reply.remove_attr("from");
                        }
                        s.send(reply);
                    }
                } else if ctx.run_send_hooks(s, &mut st).await {
                    ctx.route(st).await;
                }
            }
            StanzaKind::Message => {
                if st.to.is_none() {
                    st.set_to(Jid::from(s.bare.clone()));
                }
                if ctx.run_send_hooks(s, &mut st).await {
                    ctx.route(st).await;
                }
            }
            StanzaKind::Presence => {
                assert!(st.to.is_some(), "use available() for broadcast presence");
                if ctx.run_send_hooks(s, &mut st).await {
                    ctx.route(st).await;
                }
            }
        }
        self.flush();
    }

    /// Initial or updated available presence (without the broadcast, which is the
    /// session's job, not the modules').
    async fn available(&mut self, priority: i8) {
        let ctx = self.ctx.clone();
        let el = xml(&format!(
            "<presence xmlns='jabber:client' from='{}'><priority>{priority}</priority></presence>",
            self.s.jid
        ));
        let initial = self.s.presence.is_none();
        let el = Arc::new(el);
        self.s.presence = Some(el.clone());
        self.s.priority = priority;
        ctx.router.set_presence(&self.s.jid, self.s.id, priority, Some(el));
        for h in &ctx.hooks.session {
            h.on_available(&ctx, &mut self.s, initial).await;
        }
        self.flush();
    }

    /// One stanza from the mailbox, after the receive hooks, like the session task.
    async fn deliver(&mut self, ctx: &ServerContext, mut st: Stanza) {
        for h in &ctx.hooks.session {
            match h.on_user_receive(ctx, &mut self.s, &mut st) {
                Flow::Continue => {}
                Flow::Drop => return,
                Flow::Bounce(e) => {
                    if let Some(reply) = st.error_reply(&e) {
                        ctx.route(reply).await;
                    }
                    return;
                }
            }
        }
        self.out.push(st.el);
    }

    /// Processes the mailbox like the session task.
    async fn pump(&mut self) {
        let ctx = self.ctx.clone();
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                SessionMsg::Stanza(st) => self.deliver(&ctx, *st).await,
                SessionMsg::Batch(sts) => {
                    for st in sts {
                        self.deliver(&ctx, st).await;
                    }
                }
                SessionMsg::Event(ev) => {
                    for h in &ctx.hooks.session {
                        h.on_event(&ctx, &mut self.s, &ev).await;
                    }
                }
                SessionMsg::Kick(cond, text) => self.kicked = Some((cond, text)),
                SessionMsg::Replaced => panic!("unexpected replacement"),
            }
            self.flush();
        }
    }

    /// Everything written to the client so far.
    async fn take(&mut self) -> Vec<Element> {
        self.pump().await;
        std::mem::take(&mut self.out)
    }

    /// Sends an IQ and returns the answer to it.
    async fn iq(&mut self, ty: &str, to: Option<&str>, payload: &str) -> Element {
        let id = format!("q{}", meerkat_core::util::random_id(8));
        let to_attr = to.map(|t| format!(" to='{t}'")).unwrap_or_default();
        self.send(xml(&format!("<iq xmlns='jabber:client' type='{ty}' id='{id}'{to_attr}>{payload}</iq>"))).await;
        self.pump().await;
        let i = self
            .out
            .iter()
            .position(|e| e.name() == "iq" && e.attr("id") == Some(id.as_str()))
            .unwrap_or_else(|| panic!("no answer to {payload}: {:?}", self.out));
        self.out.remove(i)
    }

    async fn message(&mut self, to: &str, inner: &str) {
        self.send(xml(&format!("<message xmlns='jabber:client' to='{to}' type='chat' id='m1'>{inner}</message>")))
            .await;
    }

    /// Ends the session (after its unavailable presence, as the session task does).
    async fn close(mut self, status: &str) {
        let ctx = self.ctx.clone();
        self.s.presence = None;
        ctx.router.set_presence(&self.s.jid, self.s.id, 0, None);
        for h in &ctx.hooks.session {
            h.on_closed(&ctx, &mut self.s, status).await;
        }
        ctx.router.unregister(&self.s.jid, self.s.id);
    }
}

/// The defined condition of an error stanza.
fn condition(el: &Element) -> Option<String> {
    let e = el.get_child("error", ns::CLIENT)?;
    e.children().find(|c| c.ns() == ns::STANZAS && c.name() != "text").map(|c| c.name().to_string())
}

fn error_type(el: &Element) -> Option<&str> {
    el.get_child("error", ns::CLIENT)?.attr("type")
}

fn error_text(el: &Element) -> Option<String> {
    el.get_child("error", ns::CLIENT)?.child_text("text", ns::STANZAS)
}

#[track_caller]
fn assert_error(el: &Element, cond: &str) {
    assert_eq!(el.attr("type"), Some("error"), "{el:?}");
    assert_eq!(condition(el).as_deref(), Some(cond), "{el:?}");
}

#[track_caller]
fn result_payload(el: &Element) -> &Element {
    assert_eq!(el.attr("type"), Some("result"), "{el:?}");
    el.children().next().unwrap_or_else(|| panic!("result without payload: {el:?}"))
}

#[track_caller]
fn assert_empty_result(el: &Element) {
    assert_eq!(el.attr("type"), Some("result"), "{el:?}");
    assert_eq!(el.children().count(), 0, "{el:?}");
}

fn features(q: &Element) -> Vec<String> {
    q.children().filter(|c| c.is("feature", ns::DISCO_INFO)).filter_map(|c| c.attr("var")).map(String::from).collect()
}

fn messages(out: &[Element]) -> Vec<&Element> {
    out.iter().filter(|e| e.name() == "message").collect()
}

fn body(el: &Element) -> Option<String> {
    el.child_text("body", ns::CLIENT)
}

// ---------------------------------------------------------------- start

#[tokio::test]
async fn example_configuration_starts_every_module() {
    let c = Config::parse(meerkat_config::EXAMPLE, "meerkat.example.toml").expect("example parses");
    let mut reg = HookRegistry::default();
    meerkat_modules::start(&c, &mut reg);
    let hooks = reg.freeze();
    for m in [
        "mod_roster",
        "mod_disco",
        "mod_ping",
        "mod_version",
        "mod_time",
        "mod_last",
        "mod_vcard",
        "mod_private",
        "mod_blocking",
        "mod_offline",
        "mod_register",
        "mod_stanza_id",
    ] {
        assert!(hooks.has_module(m), "{m} is not running");
    }
    let register = hooks.stream_features_preauth.iter().filter(|e| e.is("register", ns::REGISTER_FEATURE)).count();
    assert_eq!(register, 1);
    assert!(hooks.iq_handler(IqScope::PreAuth, ns::REGISTER).is_some());
}

// ---------------------------------------------------------------- disco

#[tokio::test]
async fn disco_server_info_lists_identity_features_and_forms() {
    let srv = server();
    srv.user("alice@localhost").await;
    let mut a = srv.connect("alice@localhost/home").await;
    let r = a.iq("get", Some("localhost"), "<query xmlns='http://jabber.org/protocol/disco#info'/>").await;
    assert_eq!(r.attr("from"), Some("localhost"));
    let q = result_payload(&r);
    let id = q.get_child("identity", ns::DISCO_INFO).expect("identity");
    assert_eq!((id.attr("category"), id.attr("type"), id.attr("name")), (Some("server"), Some("im"), Some("Meerkat")));
    let f = features(q);
    for var in [
        ns::DISCO_INFO,
        ns::DISCO_ITEMS,
        ns::PING,
        ns::VERSION,
        ns::TIME,
        ns::LAST,
        ns::VCARD,
        ns::REGISTER,
        ns::MSGOFFLINE,
    ] {
        assert!(f.iter().any(|x| x == var), "server feature {var} missing from {f:?}");
    }
    // Account features are not the server's.
    assert!(!f.iter().any(|x| x == ns::BLOCKING));
    // XEP-0157 form.
    let forms: Vec<&Element> = q.children().filter(|c| c.is("x", ns::DATA_FORMS)).collect();
    assert_eq!(forms.len(), 1);
    let form = forms[0];
    assert_eq!(form.attr("type"), Some("result"));
    let field = |var: &str| form.children().find(|c| c.attr("var") == Some(var)).cloned();
    let ft = field("FORM_TYPE").expect("FORM_TYPE");
    assert_eq!(ft.attr("type"), Some("hidden"));
    assert_eq!(ft.child_text("value", ns::DATA_FORMS).as_deref(), Some("http://jabber.org/network/serverinfo"));
    let abuse = field("abuse-addresses").expect("abuse-addresses");
    assert_eq!(abuse.attr("type"), Some("list-multi"));
    let values: Vec<String> = abuse.children().map(Element::text).collect();
    assert_eq!(values, ["mailto:abuse@localhost", "xmpp:abuse@localhost"]);
}

#[tokio::test]
async fn disco_server_items_nodes_and_sets() {
    let srv = server();
    srv.user("alice@localhost").await;
    let mut a = srv.connect("alice@localhost/home").await;
    let r = a.iq("get", Some("localhost"), "<query xmlns='http://jabber.org/protocol/disco#items'/>").await;
    let q = result_payload(&r);
    assert!(q.is("query", ns::DISCO_ITEMS));
    assert_eq!(q.children().count(), 0);
    let r = a.iq("get", Some("localhost"), "<query xmlns='http://jabber.org/protocol/disco#info' node='x'/>").await;
    assert_error(&r, "item-not-found");
    let r = a.iq("get", Some("localhost"), "<query xmlns='http://jabber.org/protocol/disco#items' node='x'/>").await;
    assert_error(&r, "item-not-found");
    let r = a.iq("set", Some("localhost"), "<query xmlns='http://jabber.org/protocol/disco#info'/>").await;
    assert_error(&r, "not-allowed");
}

#[tokio::test]
async fn disco_account_info_and_items() {
    let srv = server();
    srv.user("alice@localhost").await;
    srv.user("bob@localhost").await;
    let mut a1 = srv.connect("alice@localhost/home").await;
    let _a2 = srv.connect("alice@localhost/work").await;
    let mut b = srv.connect("bob@localhost/phone").await;

    let r = b.iq("get", Some("alice@localhost"), "<query xmlns='http://jabber.org/protocol/disco#info'/>").await;
    assert_eq!(r.attr("from"), Some("alice@localhost"));
    let q = result_payload(&r);
    let id = q.get_child("identity", ns::DISCO_INFO).expect("identity");
    assert_eq!((id.attr("category"), id.attr("type")), (Some("account"), Some("registered")));
    let f = features(q);
    for var in [ns::DISCO_INFO, ns::DISCO_ITEMS, ns::BLOCKING, ns::SID, ns::PING, ns::LAST, ns::VCARD] {
        assert!(f.iter().any(|x| x == var), "account feature {var} missing from {f:?}");
    }
    assert!(!f.iter().any(|x| x == ns::MSGOFFLINE));

    let r = b.iq("get", Some("nobody@localhost"), "<query xmlns='http://jabber.org/protocol/disco#info'/>").await;
    assert_error(&r, "service-unavailable");

    // Resources are listed for the owner only.
    let r = b.iq("get", Some("alice@localhost"), "<query xmlns='http://jabber.org/protocol/disco#items'/>").await;
    assert_eq!(result_payload(&r).children().count(), 0);
    let r = a1.iq("get", None, "<query xmlns='http://jabber.org/protocol/disco#items'/>").await;
    let items: Vec<&str> = result_payload(&r).children().filter_map(|i| i.attr("jid")).collect();
    assert_eq!(items, ["alice@localhost/home", "alice@localhost/work"]);
    let r = a1.iq("get", None, "<query xmlns='http://jabber.org/protocol/disco#info'/>").await;
    assert!(result_payload(&r).has_child("identity", ns::DISCO_INFO));
}

// ---------------------------------------------------------------- ping, version, time

#[tokio::test]
async fn ping_server_and_accounts() {
    let srv = server();
    srv.user("alice@localhost").await;
    srv.user("bob@localhost").await;
    let mut a = srv.connect("alice@localhost/home").await;
    assert_empty_result(&a.iq("get", Some("localhost"), "<ping xmlns='urn:xmpp:ping'/>").await);
    assert_empty_result(&a.iq("get", None, "<ping xmlns='urn:xmpp:ping'/>").await);
    assert_empty_result(&a.iq("get", Some("bob@localhost"), "<ping xmlns='urn:xmpp:ping'/>").await);
    assert_error(&a.iq("get", Some("nobody@localhost"), "<ping xmlns='urn:xmpp:ping'/>").await, "service-unavailable");
    assert_error(&a.iq("set", Some("localhost"), "<ping xmlns='urn:xmpp:ping'/>").await, "not-allowed");
    assert_error(&a.iq("get", Some("localhost"), "<pong xmlns='urn:xmpp:ping'/>").await, "bad-request");
}

#[tokio::test]
async fn version_answers_name_and_version_without_os_by_default() {
    let srv = server();
    srv.user("alice@localhost").await;
    let mut a = srv.connect("alice@localhost/home").await;
    let r = a.iq("get", Some("localhost"), "<query xmlns='jabber:iq:version'/>").await;
    let q = result_payload(&r);
    assert_eq!(q.child_text("name", ns::VERSION).as_deref(), Some("Meerkat"));
    assert_eq!(q.child_text("version", ns::VERSION).as_deref(), Some(env!("CARGO_PKG_VERSION")));
    assert!(!q.has_child("os", ns::VERSION));
    assert_error(&a.iq("set", Some("localhost"), "<query xmlns='jabber:iq:version'/>").await, "not-allowed");
    // Not an account service.
    assert_error(&a.iq("get", None, "<query xmlns='jabber:iq:version'/>").await, "service-unavailable");

    let mut c = config();
    c.modules.mod_version = Some(meerkat_config::VersionCfg { os_info: true });
    let srv = server_with(c);
    srv.user("alice@localhost").await;
    let mut a = srv.connect("alice@localhost/home").await;
    let r = a.iq("get", Some("localhost"), "<query xmlns='jabber:iq:version'/>").await;
    assert_eq!(result_payload(&r).child_text("os", ns::VERSION).as_deref(), Some(std::env::consts::OS));
}

#[tokio::test]
async fn time_is_utc() {
    let srv = server();
    srv.user("alice@localhost").await;
    let mut a = srv.connect("alice@localhost/home").await;
    let r = a.iq("get", Some("localhost"), "<time xmlns='urn:xmpp:time'/>").await;
    let t = result_payload(&r);
    assert_eq!(t.child_text("tzo", ns::TIME).as_deref(), Some("+00:00"));
    let utc = t.child_text("utc", ns::TIME).expect("utc");
    let b = utc.as_bytes();
    assert!(utc.ends_with('Z') && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':', "{utc}");
    let year: i32 = utc[..4].parse().expect("year");
    assert!(year >= 2024, "{utc}");
    assert_error(&a.iq("set", Some("localhost"), "<time xmlns='urn:xmpp:time'/>").await, "not-allowed");
}

// ---------------------------------------------------------------- last activity

#[tokio::test]
async fn last_activity_of_the_server_is_its_uptime() {
    let srv = server();
    srv.user("alice@localhost").await;
    let mut a = srv.connect("alice@localhost/home").await;
    let r = a.iq("get", Some("localhost"), "<query xmlns='jabber:iq:last'/>").await;
    let secs: u64 = result_payload(&r).attr("seconds").expect("seconds").parse().expect("a number");
    assert!(secs < 60);
}

#[tokio::test]
async fn last_activity_of_a_user_needs_a_subscription() {
    let srv = server();
    srv.user("alice@localhost").await;
    srv.user("bob@localhost").await;
    let mut b = srv.connect("bob@localhost/phone").await;
    let q = "<query xmlns='jabber:iq:last'/>";

    // No subscription: forbidden.
    assert_error(&b.iq("get", Some("alice@localhost"), q).await, "forbidden");
    srv.roster("alice@localhost", "bob@localhost", Subscription::To).await;
    assert_error(&b.iq("get", Some("alice@localhost"), q).await, "forbidden");
    srv.roster("alice@localhost", "bob@localhost", Subscription::Both).await;
    // Never logged out.
    assert_error(&b.iq("get", Some("alice@localhost"), q).await, "item-not-found");
    assert_error(&b.iq("get", Some("nobody@localhost"), q).await, "service-unavailable");

    // Online and available: zero.
    let mut a = srv.connect("alice@localhost/home").await;
    // Bound but not available counts as offline.
    assert_error(&b.iq("get", Some("alice@localhost"), q).await, "item-not-found");
    a.available(0).await;
    let r = b.iq("get", Some("alice@localhost"), q).await;
    assert_eq!(result_payload(&r).attr("seconds"), Some("0"));

    // Logout recorded with its status.
    a.close("gone fishing").await;
    let r = b.iq("get", Some("alice@localhost"), q).await;
    let p = result_payload(&r);
    let secs: u64 = p.attr("seconds").expect("seconds").parse().expect("a number");
    assert!(secs < 5);
    assert_eq!(p.text(), "gone fishing");

    // Stored long ago.
    let at = meerkat_core::util::now_secs() - 100;
    srv.ctx
        .stores
        .last
        .set_last(Account::new("alice", "localhost"), &LastActivity { at_secs: at, status: String::new() })
        .await
        .expect("stored");
    let r = b.iq("get", Some("alice@localhost"), q).await;
    let secs: u64 = result_payload(&r).attr("seconds").expect("seconds").parse().expect("a number");
    assert!((100..110).contains(&secs), "{secs}");

    // The owner may always ask.
    let mut a = srv.connect("alice@localhost/other").await;
    assert_eq!(a.iq("get", None, q).await.attr("type"), Some("result"));
    assert_error(&a.iq("set", None, q).await, "not-allowed");
}

// ---------------------------------------------------------------- vCard

#[tokio::test]
async fn vcard_set_by_owner_read_by_anyone() {
    let srv = server();
    srv.user("alice@localhost").await;
    srv.user("bob@localhost").await;
    srv.user("carol@localhost").await;
    let mut a = srv.connect("alice@localhost/home").await;
    let mut b = srv.connect("bob@localhost/phone").await;

    // No vCard yet: the owner gets an empty one.
    let r = a.iq("get", None, "<vCard xmlns='vcard-temp'/>").await;
    let v = result_payload(&r);
    assert!(v.is("vCard", ns::VCARD) && v.children().count() == 0);

    assert_empty_result(
        &a.iq("set", None, "<vCard xmlns='vcard-temp'><FN>Alice</FN><NICKNAME>al</NICKNAME></vCard>").await,
    );
    let r = a.iq("get", None, "<vCard xmlns='vcard-temp'/>").await;
    assert_eq!(result_payload(&r).child_text("FN", ns::VCARD).as_deref(), Some("Alice"));
    let r = b.iq("get", Some("alice@localhost"), "<vCard xmlns='vcard-temp'/>").await;
    assert_eq!(r.attr("from"), Some("alice@localhost"));
    assert_eq!(result_payload(&r).child_text("NICKNAME", ns::VCARD).as_deref(), Some("al"));

    // Only the owner sets it.
    assert_error(
        &b.iq("set", Some("alice@localhost"), "<vCard xmlns='vcard-temp'><FN>Mallory</FN></vCard>").await,
        "forbidden",
    );
    let r = a.iq("get", None, "<vCard xmlns='vcard-temp'/>").await;
    assert_eq!(result_payload(&r).child_text("FN", ns::VCARD).as_deref(), Some("Alice"));

    // No vCard and no account answer alike (no harvesting).
    assert_error(&b.iq("get", Some("carol@localhost"), "<vCard xmlns='vcard-temp'/>").await, "service-unavailable");
    assert_error(&b.iq("get", Some("nobody@localhost"), "<vCard xmlns='vcard-temp'/>").await, "service-unavailable");

    // Size limit (2048 bytes in the test configuration).
    let big = format!("<vCard xmlns='vcard-temp'><DESC>{}</DESC></vCard>", "x".repeat(3000));
    let r = a.iq("set", None, &big).await;
    assert_error(&r, "not-acceptable");
    assert!(error_text(&r).is_some_and(|t| t.contains("2048")));
    assert_error(&a.iq("set", None, "<card xmlns='vcard-temp'/>").await, "bad-request");

    // The server's own vCard.
    let r = a.iq("get", Some("localhost"), "<vCard xmlns='vcard-temp'/>").await;
    assert_eq!(result_payload(&r).child_text("FN", ns::VCARD).as_deref(), Some("Meerkat"));
    assert_error(&a.iq("set", Some("localhost"), "<vCard xmlns='vcard-temp'/>").await, "not-allowed");
}

// ---------------------------------------------------------------- private XML

#[tokio::test]
async fn private_storage_round_trip_and_errors() {
    let srv = server();
    srv.user("alice@localhost").await;
    srv.user("bob@localhost").await;
    let mut a = srv.connect("alice@localhost/home").await;
    let mut b = srv.connect("bob@localhost/phone").await;

    // Never stored: the request echoed back.
    let r = a.iq("get", None, "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query>").await;
    let q = result_payload(&r);
    let st = q.get_child("storage", "storage:bookmarks").expect("echoed");
    assert_eq!(st.children().count(), 0);

    let set = "<query xmlns='jabber:iq:private'>\
        <storage xmlns='storage:bookmarks'><conference jid='room@muc.localhost' autojoin='true'/></storage>\
        <prefs xmlns='urn:example:prefs'><color>red</color></prefs></query>";
    assert_empty_result(&a.iq("set", None, set).await);
    let r = a.iq("get", None, "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query>").await;
    let st = result_payload(&r).get_child("storage", "storage:bookmarks").expect("stored");
    assert_eq!(st.get_child("conference", "storage:bookmarks").and_then(|c| c.attr("jid")), Some("room@muc.localhost"));
    let r = a.iq("get", None, "<query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'/></query>").await;
    let p = result_payload(&r).get_child("prefs", "urn:example:prefs").expect("stored");
    assert_eq!(p.child_text("color", "urn:example:prefs").as_deref(), Some("red"));

    // Another user's storage.
    let r = b
        .iq(
            "get",
            Some("alice@localhost"),
            "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query>",
        )
        .await;
    assert_error(&r, "forbidden");
    let r = b
        .iq(
            "set",
            Some("alice@localhost"),
            "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query>",
        )
        .await;
    assert_error(&r, "forbidden");

    // Malformed requests.
    assert_error(&a.iq("set", None, "<query xmlns='jabber:iq:private'/>").await, "not-acceptable");
    assert_error(&a.iq("get", None, "<query xmlns='jabber:iq:private'/>").await, "bad-request");
    assert_error(
        &a.iq("get", None, "<query xmlns='jabber:iq:private'><a xmlns='urn:a'/><b xmlns='urn:b'/></query>").await,
        "bad-request",
    );
    for reserved in ["jabber:iq:roster", "vcard-temp", "jabber:iq:private"] {
        let r = a.iq("set", None, &format!("<query xmlns='jabber:iq:private'><x xmlns='{reserved}'/></query>")).await;
        assert_error(&r, "not-acceptable");
    }
    assert_error(
        &a.iq("set", None, "<query xmlns='jabber:iq:private'><a xmlns='urn:a'/><b xmlns='urn:a'/></query>").await,
        "not-acceptable",
    );
    let big = format!("<query xmlns='jabber:iq:private'><n xmlns='urn:big'>{}</n></query>", "x".repeat(2000));
    assert_error(&a.iq("set", None, &big).await, "not-acceptable");
    // A failed set changed nothing.
    let r = a.iq("get", None, "<query xmlns='jabber:iq:private'><n xmlns='urn:big'/></query>").await;
    assert_eq!(result_payload(&r).get_child("n", "urn:big").map(|n| n.children().count()), Some(0));
    assert_eq!(result_payload(&r).get_child("n", "urn:big").map(Element::text).as_deref(), Some(""));
}

// ---------------------------------------------------------------- blocking

const BLOCKLIST: &str = "<blocklist xmlns='urn:xmpp:blocking'/>";

fn blocked_jids(r: &Element) -> Vec<String> {
    let l = result_payload(r);
    assert!(l.is("blocklist", ns::BLOCKING));
    l.children().filter_map(|i| i.attr("jid")).map(String::from).collect()
}

fn pushes<'a>(out: &'a [Element], name: &str) -> Vec<&'a Element> {
    out.iter()
        .filter(|e| e.name() == "iq" && e.attr("type") == Some("set"))
        .filter_map(|e| e.get_child(name, ns::BLOCKING))
        .collect()
}

#[tokio::test]
async fn blocking_commands_and_pushes() {
    let srv = server();
    srv.user("alice@localhost").await;
    srv.user("bob@localhost").await;
    let mut a1 = srv.connect("alice@localhost/home").await;
    let mut a2 = srv.connect("alice@localhost/work").await;
    let mut b = srv.connect("bob@localhost/phone").await;

    assert!(blocked_jids(&a1.iq("get", None, BLOCKLIST).await).is_empty());
    // Errors.
    assert_error(&a1.iq("set", None, "<block xmlns='urn:xmpp:blocking'/>").await, "bad-request");
    assert_error(
        &a1.iq("set", None, "<block xmlns='urn:xmpp:blocking'><item jid='@@'/></block>").await,
        "jid-malformed",
    );
    assert_error(&a1.iq("set", None, "<block xmlns='urn:xmpp:blocking'><item/></block>").await, "jid-malformed");
    assert_error(&a1.iq("get", None, "<block xmlns='urn:xmpp:blocking'/>").await, "bad-request");
    assert_error(&a1.iq("set", None, BLOCKLIST).await, "bad-request");
    assert_error(&b.iq("get", Some("alice@localhost"), BLOCKLIST).await, "forbidden");
    assert!(a1.take().await.is_empty(), "failed commands push nothing");

    // Block: pushed to the resource that requested the list, not to the other.
    let r = a1
        .iq(
            "set",
            None,
            "<block xmlns='urn:xmpp:blocking'><item jid='Bob@LocalHost'/><item jid='example.org'/></block>",
        )
        .await;
    assert_empty_result(&r);
    let out = a1.take().await;
    let p = pushes(&out, "block");
    assert_eq!(p.len(), 1, "{out:?}");
    let items: Vec<&str> = p[0].children().filter_map(|i| i.attr("jid")).collect();
    assert_eq!(items, ["bob@localhost", "example.org"]);
    assert!(pushes(&a2.take().await, "block").is_empty());
    assert_eq!(blocked_jids(&a1.iq("get", None, BLOCKLIST).await), ["bob@localhost", "example.org"]);

    // Unblock one, then all.
    assert_empty_result(
        &a1.iq("set", None, "<unblock xmlns='urn:xmpp:blocking'><item jid='example.org'/></unblock>").await,
    );
    let out = a1.take().await;
    let p = pushes(&out, "unblock");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].children().filter_map(|i| i.attr("jid")).collect::<Vec<_>>(), ["example.org"]);
    assert!(a2.take().await.is_empty(), "a2 did not request the blocklist");
    assert_eq!(blocked_jids(&a2.iq("get", None, BLOCKLIST).await), ["bob@localhost"]);
    assert_empty_result(&a2.iq("set", None, "<unblock xmlns='urn:xmpp:blocking'/>").await);
    for c in [&mut a1, &mut a2] {
        let out = c.take().await;
        let p = pushes(&out, "unblock");
        assert_eq!(p.len(), 1, "{out:?}");
        assert_eq!(p[0].children().count(), 0, "unblock-all push is empty");
    }
    assert!(blocked_jids(&a1.iq("get", None, BLOCKLIST).await).is_empty());
}

#[tokio::test]
async fn blocking_filters_stanzas_both_ways() {
    let srv = server();
    srv.user("alice@localhost").await;
    srv.user("bob@localhost").await;
    srv.user("carol@localhost").await;
    let mut a = srv.connect("alice@localhost/home").await;
    let mut a2 = srv.connect("alice@localhost/work").await;
    let mut b = srv.connect("bob@localhost/phone").await;
    let mut c = srv.connect("carol@localhost/pc").await;
    a.available(0).await;
    b.available(0).await;

    assert_empty_result(
        &a.iq("set", None, "<block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></block>").await,
    );
    a.take().await;
    a2.take().await;

    // Outbound: not-acceptable with <blocked/>.
    a.message("bob@localhost", "<body>hi</body>").await;
    let out = a.take().await;
    assert_eq!(out.len(), 1, "{out:?}");
    assert_error(&out[0], "not-acceptable");
    assert!(out[0].get_child("error", ns::CLIENT).is_some_and(|e| e.has_child("blocked", ns::BLOCKING_ERRORS)));
    assert!(messages(&b.take().await).is_empty());
    // The other session of alice learnt the block from the event.
    a2.message("bob@localhost/phone", "<body>hi</body>").await;
    assert_error(&a2.take().await[0], "not-acceptable");
    // Outbound presence is dropped silently.
    a.send(xml("<presence xmlns='jabber:client' to='bob@localhost/phone'/>")).await;
    assert!(a.take().await.is_empty());
    assert!(b.take().await.is_empty());

    // Inbound: messages and IQs bounced with service-unavailable, presence dropped.
    b.message("alice@localhost/home", "<body>hello?</body>").await;
    assert!(messages(&a.take().await).is_empty());
    let out = b.take().await;
    assert_eq!(out.len(), 1, "{out:?}");
    assert_error(&out[0], "service-unavailable");
    assert_eq!(out[0].attr("from"), Some("alice@localhost/home"));
    b.send(xml(
        "<iq xmlns='jabber:client' type='get' id='p1' to='alice@localhost/home'><ping xmlns='urn:xmpp:ping'/></iq>",
    ))
    .await;
    assert!(a.take().await.is_empty());
    let out = b.take().await;
    assert_eq!(out.len(), 1, "{out:?}");
    assert_error(&out[0], "service-unavailable");
    b.send(xml("<presence xmlns='jabber:client' to='alice@localhost/home'/>")).await;
    assert!(a.take().await.is_empty());
    assert!(b.take().await.is_empty());
    // Services answered on alice's behalf treat bob as blocked too.
    srv.roster("alice@localhost", "bob@localhost", Subscription::Both).await;
    assert_error(&b.iq("get", Some("alice@localhost"), "<vCard xmlns='vcard-temp'/>").await, "service-unavailable");
    assert_error(&b.iq("get", Some("alice@localhost"), "<query xmlns='jabber:iq:last'/>").await, "service-unavailable");
    assert_error(&b.iq("get", Some("alice@localhost"), "<ping xmlns='urn:xmpp:ping'/>").await, "service-unavailable");

    // Others are unaffected.
    c.message("alice@localhost/home", "<body>from carol</body>").await;
    let got = a.take().await;
    assert_eq!(messages(&got).len(), 1);
    assert_eq!(body(messages(&got)[0]).as_deref(), Some("from carol"));
    a.message("carol@localhost", "<body>to carol</body>").await;
    assert!(a.take().await.is_empty());

    // Unblocked: traffic flows again.
    assert_empty_result(
        &a.iq("set", None, "<unblock xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></unblock>").await,
    );
    a.take().await;
    b.message("alice@localhost/home", "<body>again</body>").await;
    assert_eq!(messages(&a.take().await).len(), 1);
    assert!(b.take().await.is_empty());
}

#[tokio::test]
async fn blocking_applies_offline_and_to_domains() {
    let srv = server();
    srv.user("alice@localhost").await;
    srv.user("bob@localhost").await;
    srv.user("mallory@example.org").await;
    srv.user("trent@example.org").await;
    let mut a = srv.connect("alice@localhost/home").await;
    assert_empty_result(&a.iq("set", None, "<block xmlns='urn:xmpp:blocking'><item jid='example.org'/></block>").await);
    a.close("").await;

    // Alice is offline: the stored list is checked before offline storage.
    let mut m = srv.connect("mallory@example.org/x").await;
    m.message("alice@localhost", "<body>spam</body>").await;
    let out = m.take().await;
    assert_eq!(out.len(), 1, "{out:?}");
    assert_error(&out[0], "service-unavailable");
    let mut t = srv.connect("trent@example.org/y").await;
    t.message("alice@localhost", "<body>spam 2</body>").await;
    assert_error(&t.take().await[0], "service-unavailable");
    assert_eq!(srv.offline_count("alice@localhost").await, 0);
    let mut b = srv.connect("bob@localhost/phone").await;
    b.message("alice@localhost", "<body>legit</body>").await;
    assert!(b.take().await.is_empty());
    assert_eq!(srv.offline_count("alice@localhost").await, 1);

    // Subscription requests from a blocked JID never reach the roster.
    m.send(xml("<presence xmlns='jabber:client' to='alice@localhost' type='subscribe'/>")).await;
    let item = srv.ctx.stores.roster.get_item(Account::new("alice", "localhost"), "mallory@example.org").await;
    assert_eq!(item.expect("storage works"), None);
    b.send(xml("<presence xmlns='jabber:client' to='alice@localhost' type='subscribe'/>")).await;
    let item = srv.ctx.stores.roster.get_item(Account::new("alice", "localhost"), "bob@localhost").await;
    assert!(item.expect("storage works").is_some_and(|i| i.pending_in));

    // A new session loads the list at bind time.
    let mut a = srv.connect("alice@localhost/again").await;
    a.available(-1).await;
    a.message("trent@example.org", "<body>hi</body>").await;
    let out = a.take().await;
    // (Bob's pending subscription request is redelivered at login.)
    assert!(out.iter().any(|e| e.name() == "presence" && e.attr("from") == Some("bob@localhost")));
    let msgs = messages(&out);
    assert_eq!(msgs.len(), 1, "{out:?}");
    assert_error(msgs[0], "not-acceptable");
}

#[tokio::test]
async fn blocking_sends_unavailable_then_presence_to_subscribers() {
    let srv = server();
    srv.user("alice@localhost").await;
    srv.user("bob@localhost").await;
    srv.roster("alice@localhost", "bob@localhost", Subscription::Both).await;
    srv.roster("bob@localhost", "alice@localhost", Subscription::Both).await;
    let mut a = srv.connect("alice@localhost/home").await;
    let mut b = srv.connect("bob@localhost/phone").await;
    a.available(5).await;
    b.available(0).await;

    assert_empty_result(
        &a.iq("set", None, "<block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></block>").await,
    );
    a.take().await;
    let out = b.take().await;
    let pres: Vec<&Element> = out.iter().filter(|e| e.name() == "presence").collect();
    assert_eq!(pres.len(), 1, "{out:?}");
    assert_eq!(pres[0].attr("type"), Some("unavailable"));
    assert_eq!(pres[0].attr("from"), Some("alice@localhost/home"));

    assert_empty_result(
        &a.iq("set", None, "<unblock xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></unblock>").await,
    );
    a.take().await;
    let out = b.take().await;
    let pres: Vec<&Element> = out.iter().filter(|e| e.name() == "presence").collect();
    assert_eq!(pres.len(), 1, "{out:?}");
    assert_eq!(pres[0].attr("type"), None);
    assert_eq!(pres[0].attr("from"), Some("alice@localhost/home"));
    assert_eq!(pres[0].child_text("priority", ns::CLIENT).as_deref(), Some("5"));
}

// ---------------------------------------------------------------- offline messages

#[tokio::test]
async fn offline_messages_are_stored_and_delivered_with_delay() {
    let srv = server();
    srv.user("alice@localhost").await;
    srv.user("bob@localhost").await;
    let mut b = srv.connect("bob@localhost/phone").await;
    for i in 1..=3 {
        b.message("alice@localhost", &format!("<body>m{i}</body>")).await;
    }
    assert!(b.take().await.is_empty());
    assert_eq!(srv.offline_count("alice@localhost").await, 3);

    // Queue full (3 in the test configuration).
    b.message("alice@localhost", "<body>m4</body>").await;
    let out = b.take().await;
    assert_eq!(out.len(), 1, "{out:?}");
    assert_error(&out[0], "service-unavailable");
    assert_eq!(error_text(&out[0]).as_deref(), Some("offline queue full"));

    // A bound session that is not available does not take them.
    let mut a = srv.connect("alice@localhost/home").await;
    assert!(a.take().await.is_empty());
    a.available(0).await;
    let got = a.take().await;
    let msgs = messages(&got);
    assert_eq!(msgs.iter().map(|m| body(m).unwrap_or_default()).collect::<Vec<_>>(), ["m1", "m2", "m3"]);
    for m in &msgs {
        let d = m.get_child("delay", ns::DELAY).expect("delay stamp");
        assert_eq!(d.attr("from"), Some("localhost"));
        assert_eq!(d.text(), "Offline Storage");
        let stamp = d.attr("stamp").expect("stamp");
        assert!(stamp.ends_with('Z') && stamp.len() >= 20, "{stamp}");
        assert_eq!(m.attr("from"), Some("bob@localhost/phone"));
        assert_eq!(m.attr("to"), Some("alice@localhost"));
    }
    assert_eq!(srv.offline_count("alice@localhost").await, 0);
    // A presence update does not deliver again.
    a.available(1).await;
    assert!(a.take().await.is_empty());
}

#[tokio::test]
async fn offline_storage_rules() {
    let srv = server();
    srv.user("alice@localhost").await;
    srv.user("bob@localhost").await;
    let mut b = srv.connect("bob@localhost/phone").await;

    // <no-store/>: not stored, the sender is told.
    b.message("alice@localhost", "<body>secret</body><no-store xmlns='urn:xmpp:hints'/>").await;
    assert_error(&b.take().await[0], "service-unavailable");
    // Chat states alone: dropped silently.
    b.message("alice@localhost", "<composing xmlns='http://jabber.org/protocol/chatstates'/>").await;
    assert!(b.take().await.is_empty());
    // Headlines are never stored (RFC 6121 §8.5.2.2.1: silently ignored).
    b.send(xml("<message xmlns='jabber:client' to='alice@localhost' type='headline'><body>news</body></message>"))
        .await;
    assert!(b.take().await.is_empty());
    assert_eq!(srv.offline_count("alice@localhost").await, 0);
    // A payload without body is stored.
    b.message("alice@localhost", "<x xmlns='jabber:x:oob'><url>https://example.org/f</url></x>").await;
    assert!(b.take().await.is_empty());
    assert_eq!(srv.offline_count("alice@localhost").await, 1);
    // No such user: bounced.
    b.message("nobody@localhost", "<body>hi</body>").await;
    assert_error(&b.take().await[0], "service-unavailable");

    // Negative priority: stays stored until the priority becomes non-negative.
    let mut a = srv.connect("alice@localhost/home").await;
    a.available(-1).await;
    assert!(a.take().await.is_empty());
    assert_eq!(srv.offline_count("alice@localhost").await, 1);
    a.available(2).await;
    let got = a.take().await;
    assert_eq!(messages(&got).len(), 1);
    assert!(messages(&got)[0].has_child("x", "jabber:x:oob"));
    assert_eq!(srv.offline_count("alice@localhost").await, 0);
}

#[tokio::test]
async fn offline_messages_from_senders_blocked_since_are_dropped() {
    let srv = server();
    srv.user("alice@localhost").await;
    srv.user("bob@localhost").await;
    srv.user("carol@localhost").await;
    let mut b = srv.connect("bob@localhost/phone").await;
    let mut c = srv.connect("carol@localhost/pc").await;
    b.message("alice@localhost", "<body>from bob</body>").await;
    c.message("alice@localhost", "<body>from carol</body>").await;
    assert_eq!(srv.offline_count("alice@localhost").await, 2);

    let mut a = srv.connect("alice@localhost/home").await;
    assert_empty_result(
        &a.iq("set", None, "<block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></block>").await,
    );
    a.take().await;
    a.available(0).await;
    let got = a.take().await;
    let bodies: Vec<String> = messages(&got).iter().filter_map(|m| body(m)).collect();
    assert_eq!(bodies, ["from carol"]);
    assert_eq!(srv.offline_count("alice@localhost").await, 0);
}

// ---------------------------------------------------------------- stanza ids

fn stanza_ids(m: &Element) -> Vec<(String, String)> {
    m.children()
        .filter(|c| c.is("stanza-id", ns::SID))
        .map(|c| (c.attr("by").unwrap_or_default().to_string(), c.attr("id").unwrap_or_default().to_string()))
        .collect()
}

#[tokio::test]
async fn stanza_ids_are_stamped_and_not_spoofable() {
    let srv = server();
    srv.user("alice@localhost").await;
    srv.user("bob@localhost").await;
    let mut a = srv.connect("alice@localhost/home").await;
    let mut b = srv.connect("bob@localhost/phone").await;
    a.available(0).await;

    // A client cannot set stanza ids; its origin-id is kept.
    b.message(
        "alice@localhost",
        "<body>one</body><origin-id xmlns='urn:xmpp:sid:0' id='o1'/>\
         <stanza-id xmlns='urn:xmpp:sid:0' by='alice@localhost' id='fake'/>\
         <stanza-id xmlns='urn:xmpp:sid:0' by='bob@localhost' id='fake2'/>",
    )
    .await;
    b.message("alice@localhost", "<body>two</body>").await;
    let got = a.take().await;
    let msgs = messages(&got);
    assert_eq!(msgs.len(), 2);
    // The sender's archive stamps its own id (by bob, as ejabberd does); the
    // client's spoofed ones are gone.
    for m in &msgs {
        assert!(stanza_ids(m).iter().all(|(_, id)| id != "fake" && id != "fake2"), "{m}");
    }
    let ids: Vec<Vec<(String, String)>> =
        msgs.iter().map(|m| stanza_ids(m).into_iter().filter(|(by, _)| by == "alice@localhost").collect()).collect();
    for one in &ids {
        assert_eq!(one.len(), 1, "{ids:?}");
        assert_eq!(one[0].0, "alice@localhost");
        assert!(one[0].1.len() == 13 && one[0].1 != "fake");
    }
    assert_ne!(ids[0][0].1, ids[1][0].1);
    assert_eq!(msgs[0].get_child("origin-id", ns::SID).and_then(|o| o.attr("id")), Some("o1"));

    // From elsewhere (a remote server): a stanza-id by the recipient is replaced,
    // others' ids are kept.
    let routed = xml("<message xmlns='jabber:client' from='someone@example.org/r' to='alice@localhost' type='chat'>\
         <body>three</body><stanza-id xmlns='urn:xmpp:sid:0' by='alice@localhost' id='fake'/>\
         <stanza-id xmlns='urn:xmpp:sid:0' by='room@muc.example.org' id='keep'/></message>");
    srv.ctx.route(Stanza::parse(routed).expect("valid")).await;
    let got = a.take().await;
    let ids = stanza_ids(messages(&got)[0]);
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&("room@muc.example.org".to_string(), "keep".to_string())));
    assert!(ids.iter().any(|(by, id)| by == "alice@localhost" && id != "fake"));

    // No body, or a headline: no id.
    b.message("alice@localhost", "<active xmlns='http://jabber.org/protocol/chatstates'/>").await;
    b.send(xml("<message xmlns='jabber:client' to='alice@localhost' type='headline'><body>news</body></message>"))
        .await;
    let got = a.take().await;
    assert_eq!(messages(&got).len(), 2);
    assert!(messages(&got).iter().all(|m| stanza_ids(m).is_empty()));
}

#[tokio::test]
async fn stanza_ids_survive_offline_storage() {
    let srv = server();
    srv.user("alice@localhost").await;
    srv.user("bob@localhost").await;
    let mut b = srv.connect("bob@localhost/phone").await;
    b.message("alice@localhost", "<body>later</body>").await;
    let mut a = srv.connect("alice@localhost/home").await;
    a.available(0).await;
    let got = a.take().await;
    let ids = stanza_ids(messages(&got)[0]);
    assert_eq!(ids.len(), 1);
    assert_eq!(ids[0].0, "alice@localhost");
}

// ---------------------------------------------------------------- registration

const REG: &str = "jabber:iq:register";

fn reg_set(user: &str, password: &str) -> String {
    format!("<query xmlns='{REG}'><username>{user}</username><password>{password}</password></query>")
}

async fn verify(srv: &Server, bare: &str, password: &str) -> bool {
    let (u, d) = acc(bare);
    let creds = srv.ctx.stores.auth.get_credentials(Account::new(&u, &d)).await.expect("storage works");
    creds.is_some_and(|c| c.verify_password(password))
}

#[tokio::test]
async fn registration_before_authentication() {
    let srv = server();
    let r = srv.preauth(peer(1), "get", &format!("<query xmlns='{REG}'/>")).await;
    let q = result_payload(&r);
    for f in ["instructions", "username", "password"] {
        assert!(q.has_child(f, REG), "{f} missing");
    }

    // Errors do not count against the address's limit.
    assert_error(&srv.preauth(peer(1), "set", &reg_set("Carol", "short")).await, "not-acceptable");
    assert_error(&srv.preauth(peer(1), "set", &reg_set("a@b", "long enough pw")).await, "jid-malformed");
    assert_error(&srv.preauth(peer(1), "set", &reg_set("a b", "long enough pw")).await, "jid-malformed");
    assert_error(
        &srv.preauth(peer(1), "set", &format!("<query xmlns='{REG}'><username>x</username></query>")).await,
        "not-acceptable",
    );
    assert_error(&srv.preauth(peer(1), "set", &reg_set("", "long enough pw")).await, "not-acceptable");
    assert_error(
        &srv.preauth(peer(1), "set", &format!("<query xmlns='{REG}'><remove/></query>")).await,
        "not-authorized",
    );

    let r = srv.preauth(peer(1), "set", &reg_set("Carol", "correct horse")).await;
    assert_empty_result(&r);
    assert!(verify(&srv, "carol@localhost", "correct horse").await, "nodeprep'ed account with the password");
    assert!(!verify(&srv, "carol@localhost", "wrong").await);

    // Same address again: throttled, type wait.
    let r = srv.preauth(peer(1), "set", &reg_set("dave", "correct horse")).await;
    assert_error(&r, "resource-constraint");
    assert_eq!(error_type(&r), Some("wait"));
    assert!(!srv.exists("dave@localhost").await);

    // Another address; the name is taken.
    assert_error(&srv.preauth(peer(2), "set", &reg_set("carol", "another one")).await, "conflict");
    assert!(verify(&srv, "carol@localhost", "correct horse").await);
    assert_empty_result(&srv.preauth(peer(2), "set", &reg_set("dave", "another one")).await);
    assert!(srv.exists("dave@localhost").await);
}

#[tokio::test]
async fn registration_management_when_authenticated() {
    let srv = server();
    srv.user("alice@localhost").await;
    srv.user("bob@localhost").await;
    let mut a1 = srv.connect("alice@localhost/home").await;
    let mut a2 = srv.connect("alice@localhost/work").await;
    let mut b = srv.connect("bob@localhost/phone").await;

    let r = a1.iq("get", None, &format!("<query xmlns='{REG}'/>")).await;
    let q = result_payload(&r);
    assert!(q.has_child("registered", REG));
    assert_eq!(q.child_text("username", REG).as_deref(), Some("alice"));

    // Password change (to the server, as in XEP-0077 §3.3, or to the account).
    assert_empty_result(&a1.iq("set", Some("localhost"), &reg_set("alice", "new password 1")).await);
    assert!(verify(&srv, "alice@localhost", "new password 1").await);
    assert_empty_result(&a1.iq("set", None, &reg_set("alice", "new password 2")).await);
    assert!(verify(&srv, "alice@localhost", "new password 2").await);
    assert_error(&a1.iq("set", None, &reg_set("alice", "short")).await, "not-acceptable");
    assert_error(&a1.iq("set", None, &reg_set("bob", "bobs new password")).await, "not-allowed");
    assert!(verify(&srv, "bob@localhost", "password").await);
    assert_error(&b.iq("set", Some("alice@localhost"), &reg_set("alice", "hijacked pw")).await, "forbidden");
    assert_error(
        &b.iq("set", Some("alice@localhost"), &format!("<query xmlns='{REG}'><remove/></query>")).await,
        "forbidden",
    );
    assert!(verify(&srv, "alice@localhost", "new password 2").await);

    // Removal: the account goes, every session is closed after the reply.
    assert_empty_result(&a1.iq("set", None, &format!("<query xmlns='{REG}'><remove/></query>")).await);
    assert!(!srv.exists("alice@localhost").await);
    a2.pump().await;
    for c in [&a1, &a2] {
        let (cond, text) = c.kicked.clone().expect("session closed");
        assert_eq!(cond, StreamError::NotAuthorized);
        assert_eq!(text.as_deref(), Some("account removed"));
    }
    b.pump().await;
    assert!(b.kicked.is_none());
}

#[tokio::test]
async fn registration_management_can_be_disabled() {
    let mut c = config();
    c.modules.mod_register = Some(meerkat_config::RegisterCfg {
        allow_password_change: false,
        allow_unregister: false,
        ..meerkat_config::RegisterCfg::default()
    });
    let srv = server_with(c);
    srv.user("alice@localhost").await;
    let mut a = srv.connect("alice@localhost/home").await;
    assert_error(&a.iq("set", None, &reg_set("alice", "new password 1")).await, "not-allowed");
    assert_error(&a.iq("set", None, &format!("<query xmlns='{REG}'><remove/></query>")).await, "not-allowed");
    assert!(srv.exists("alice@localhost").await);
    assert!(verify(&srv, "alice@localhost", "password").await);
    assert!(a.kicked.is_none());
}

#[tokio::test]
async fn disabled_modules_answer_nothing() {
    let mut c = config();
    c.modules.mod_register = None;
    c.modules.mod_blocking = None;
    let srv = server_with(c);
    assert!(srv.ctx.hooks.iq_handler(IqScope::PreAuth, REG).is_none());
    assert!(srv.ctx.hooks.stream_features_preauth.is_empty());
    srv.user("alice@localhost").await;
    let mut a = srv.connect("alice@localhost/home").await;
    assert_error(&a.iq("get", None, BLOCKLIST).await, "service-unavailable");
    let r = a.iq("get", Some("localhost"), "<query xmlns='http://jabber.org/protocol/disco#info'/>").await;
    let f = features(result_payload(&r));
    assert!(!f.iter().any(|x| x == REG));
    // The vCard module does not consult a blocklist that does not exist.
    assert_empty_result(&a.iq("set", None, "<vCard xmlns='vcard-temp'><FN>A</FN></vCard>").await);
}

/// An archive store that fails every write while `down` is set.
struct DownArchive {
    inner: Arc<dyn meerkat_storage::ArchiveStore>,
    down: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl meerkat_storage::ArchiveStore for DownArchive {
    async fn append(&self, rows: Arc<Vec<meerkat_storage::ArchiveEntry>>) -> meerkat_storage::Result<()> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) && !rows.is_empty() {
            return Err(meerkat_storage::Error::Backend("storage is down".into()));
        }
        self.inner.append(rows).await
    }
    async fn query(
        &self,
        acc: Account<'_>,
        q: &meerkat_storage::ArchiveQuery,
    ) -> meerkat_storage::Result<meerkat_storage::ArchivePage> {
        self.inner.query(acc, q).await
    }
    async fn fetch_ids(
        &self,
        acc: Account<'_>,
        ids: &[i64],
    ) -> meerkat_storage::Result<Vec<meerkat_storage::ArchivedMessage>> {
        self.inner.fetch_ids(acc, ids).await
    }
    async fn retract(
        &self,
        acc: Account<'_>,
        with: &str,
        d: meerkat_storage::Direction,
        origin: &str,
        tomb: &str,
    ) -> meerkat_storage::Result<Option<i64>> {
        self.inner.retract(acc, with, d, origin, tomb).await
    }
    async fn get_prefs(&self, acc: Account<'_>) -> meerkat_storage::Result<Option<meerkat_storage::ArchivePrefs>> {
        self.inner.get_prefs(acc).await
    }
    async fn set_prefs(&self, acc: Account<'_>, p: &meerkat_storage::ArchivePrefs) -> meerkat_storage::Result<()> {
        self.inner.set_prefs(acc, p).await
    }
    async fn remove_archive(&self, acc: Account<'_>) -> meerkat_storage::Result<()> {
        self.inner.remove_archive(acc).await
    }
}

/// A server on memory storage whose archive is down (until `archive.down` is cleared).
fn with_archive_down(c: Config) -> (Server, Arc<DownArchive>) {
    let mut stores = meerkat_storage::memory::stores();
    let archive = Arc::new(DownArchive { inner: stores.archive.clone(), down: true.into() });
    stores.archive = archive.clone();
    let mut reg = HookRegistry::default();
    meerkat_modules::start(&c, &mut reg);
    let ctx = ServerContext::new(Arc::new(c), stores, reg.freeze(), Arc::new(meerkat_router::LocalRouter::new()));
    (Server { ctx }, archive)
}

/// With storage down, the archive writer's queue fills to `max_queue`; then a chat
/// message is refused at the sender with `resource-constraint` (type wait) instead
/// of being delivered and lost from the archive; the recipient's rows of messages
/// already accepted are still queued; once storage is back, every accepted message
/// is in both archives and sending works again.
#[tokio::test]
async fn a_full_archive_queue_refuses_messages_and_loses_none() {
    let mut c = config();
    c.modules.mod_mam = Some(meerkat_config::MamCfg {
        async_writer: meerkat_config::MamWriterCfg { batch_size: 4, flush_interval: 60_000, max_queue: 4 },
        ..meerkat_config::MamCfg::default()
    });
    let (srv, archive) = with_archive_down(c);
    srv.user("alice@localhost").await;
    srv.user("bob@localhost").await;
    let mut a = srv.connect("alice@localhost/home").await;
    let mut b = srv.connect("bob@localhost/phone").await;
    b.available(0).await;
    let send = |n: u32| {
        xml(&format!(
            "<message xmlns='jabber:client' to='bob@localhost' type='chat' id='m{n}'><body>{n}</body></message>"
        ))
    };
    // Four rows fill a batch: the writer takes it and keeps retrying it (storage down).
    for n in 1..=4 {
        a.send(send(n)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    // Four more fill the queue to max_queue; the ninth is refused at the sender.
    for n in 5..=9 {
        a.send(send(n)).await;
    }
    let errors: Vec<Element> = a.take().await.into_iter().filter(|e| e.name() == "message").collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].attr("id"), Some("m9"));
    assert_eq!(errors[0].attr("type"), Some("error"));
    assert_eq!(condition(&errors[0]).as_deref(), Some("resource-constraint"));
    assert_eq!(error_type(&errors[0]), Some("wait"));
    // Bob got the eight accepted messages; their rows on his side are queued past the bound.
    let got: Vec<String> = messages(&b.take().await).iter().filter_map(|m| body(m)).collect();
    assert_eq!(got, (1..=8).map(|n| n.to_string()).collect::<Vec<_>>());
    // Storage is back: a query waits for the owner's rows (read-your-writes), so
    // everything accepted is in both archives.
    archive.down.store(false, std::sync::atomic::Ordering::SeqCst);
    for (cl, owner) in [(&mut a, "alice"), (&mut b, "bob")] {
        let r = cl.iq("set", None, "<query xmlns='urn:xmpp:mam:2'/>").await;
        assert_eq!(r.attr("type"), Some("result"), "{owner}: {r:?}");
        let (u, d) = acc(&format!("{owner}@localhost"));
        let q = meerkat_storage::ArchiveQuery { limit: 100, ..Default::default() };
        let rows = srv.ctx.stores.archive.query(Account::new(&u, &d), &q).await.expect("storage works").rows;
        assert_eq!(rows.len(), 8, "{owner}'s archive");
    }
    // And new messages are accepted again.
    a.take().await;
    b.take().await;
    a.send(send(10)).await;
    assert!(a.take().await.iter().all(|e| e.attr("type") != Some("error")));
    assert_eq!(messages(&b.take().await).iter().filter_map(|m| body(m)).collect::<Vec<_>>(), ["10"]);
}

/// A room's messages are refused, not lost, when the archive writer's queue is
/// full: with storage down the queue fills, the next group chat message gets
/// `resource-constraint` (wait) and reaches nobody; once storage is back the
/// room's archive holds everything the room accepted, and messages flow again.
#[tokio::test]
async fn a_full_archive_queue_makes_rooms_refuse_messages_and_lose_none() {
    let mut c = config();
    c.modules.mod_mam = Some(meerkat_config::MamCfg {
        async_writer: meerkat_config::MamWriterCfg { batch_size: 4, flush_interval: 60_000, max_queue: 4 },
        ..meerkat_config::MamCfg::default()
    });
    c.modules.mod_muc_light = Some(meerkat_config::MucLightCfg::default());
    let (srv, archive) = with_archive_down(c);
    srv.user("alice@localhost").await;
    srv.user("bob@localhost").await;
    let mut a = srv.connect("alice@localhost/home").await;
    let mut b = srv.connect("bob@localhost/phone").await;
    a.available(0).await;
    b.available(0).await;
    let room = "den@muclight.localhost";
    let settle = || tokio::time::sleep(std::time::Duration::from_millis(60));
    a.send(xml(&format!(
        "<iq xmlns='jabber:client' type='set' id='c' to='{room}'><query xmlns='urn:xmpp:muclight:0#create'>\
           <occupants><user affiliation='member'>bob@localhost</user></occupants></query></iq>"
    )))
    .await;
    settle().await;
    let created = a.take().await;
    assert!(created.iter().any(|e| e.attr("id") == Some("c") && e.attr("type") == Some("result")), "{created:?}");
    b.take().await;
    // The creation event and seven messages: a batch of four taken (and retried)
    // by the writer, four more queued; the eighth message is refused.
    for n in 1..=8 {
        a.send(xml(&format!(
            "<message xmlns='jabber:client' to='{room}' type='groupchat' id='g{n}'><body>{n}</body></message>"
        )))
        .await;
        settle().await;
    }
    let out = a.take().await;
    let errors: Vec<&Element> = out.iter().filter(|e| e.attr("type") == Some("error")).collect();
    assert_eq!(errors.len(), 1, "{out:?}");
    assert_eq!(errors[0].attr("id"), Some("g8"));
    assert_eq!(condition(errors[0]).as_deref(), Some("resource-constraint"));
    assert_eq!(error_type(errors[0]), Some("wait"));
    // (A room's copies carry their children serialised once: read them as a client would.)
    let as_client =
        |els: Vec<Element>| -> Vec<String> { els.iter().filter_map(|m| body(&xml(&m.to_string()))).collect() };
    let got = as_client(b.take().await);
    assert_eq!(got, (1..=7).map(|n| n.to_string()).collect::<Vec<_>>(), "the refused message reached nobody");
    // Storage is back: everything the room accepted is in its archive.
    archive.down.store(false, std::sync::atomic::Ordering::SeqCst);
    a.send(xml(&format!(
        "<iq xmlns='jabber:client' type='set' id='q' to='{room}'><query xmlns='urn:xmpp:mam:2'/></iq>"
    )))
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let out = a.take().await;
    assert!(out.iter().any(|e| e.attr("id") == Some("q") && e.attr("type") == Some("result")), "{out:?}");
    let q = meerkat_storage::ArchiveQuery { limit: 100, ..Default::default() };
    let rows = srv.ctx.stores.archive.query(Account::new("den", "muclight.localhost"), &q).await.unwrap().rows;
    assert_eq!(rows.len(), 8, "the creation event and seven messages");
    // And the room takes messages again.
    a.send(xml(&format!(
        "<message xmlns='jabber:client' to='{room}' type='groupchat' id='g9'><body>9</body></message>"
    )))
    .await;
    settle().await;
    assert!(a.take().await.iter().all(|e| e.attr("type") != Some("error")));
    assert_eq!(as_client(b.take().await), ["9"]);
}
