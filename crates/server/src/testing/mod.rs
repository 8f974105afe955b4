//! Test support: an in-process server on `127.0.0.1:0` and a transcript client for
//! protocol-level tests (send raw XML, expect elements), in the style of Stalwart's
//! `assert_read`. Used by this crate's integration tests and by other crates' tests.

pub mod cluster;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meerkat_config::{Config, TlsMode};
use meerkat_core::ServerContext;
use meerkat_xml::{Decoder, Element, Framing, Limits, StreamEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// A running test server.
pub struct TestServer {
    /// The context (for creating users, inspecting sessions).
    pub ctx: Arc<ServerContext>,
    /// c2s listener addresses in configuration order.
    pub addrs: Vec<SocketAddr>,
    /// HTTP listener addresses in configuration order.
    pub http_addrs: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
}

/// A test configuration: domain `localhost`, listeners on ephemeral ports
/// (STARTTLS first, direct TLS second, no TLS third), every module,
/// SQLite in a temporary directory.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut cfg = Config::parse(meerkat_config::EXAMPLE, "example").expect("the example config is valid");
    cfg.general.data_dir = dir.display().to_string();
    for l in &mut cfg.listen.c2s {
        *l.ip_address.get_mut() = "127.0.0.1".into();
        *l.port.get_mut() = 0;
        l.shaper = None;
    }
    for l in &mut cfg.listen.http {
        *l.ip_address.get_mut() = "127.0.0.1".into();
        *l.port.get_mut() = 0;
    }
    // A third, unencrypted listener for transcript tests on loopback.
    let mut plain = cfg.listen.c2s[0].clone();
    plain.tls.mode = TlsMode::None;
    cfg.listen.c2s.push(plain);
    cfg.storage.url = toml::Spanned::new(0..0, format!("sqlite://{}/meerkat.db", dir.display()));
    cfg
}

impl TestServer {
    /// Starts a server with `cfg` (ports 0 are fine).
    pub async fn start_with(cfg: Config, dir: Option<tempfile::TempDir>) -> anyhow::Result<TestServer> {
        let stores = crate::open_storage(&cfg).await?;
        Self::start_with_stores(cfg, stores, dir).await
    }

    /// Starts a server with `cfg` on already opened storage.
    pub async fn start_with_stores(
        cfg: Config,
        stores: meerkat_storage::Stores,
        dir: Option<tempfile::TempDir>,
    ) -> anyhow::Result<TestServer> {
        let cfg = Arc::new(cfg);
        let server = crate::build(cfg.clone(), stores);
        let ctx = server.ctx.clone();
        let listeners = crate::bind(&cfg).await?;
        let addrs = listeners.c2s.iter().map(|l| l.local_addr()).collect::<Result<Vec<_>, _>>()?;
        let http_addrs = listeners.http.iter().map(|l| l.local_addr()).collect::<Result<Vec<_>, _>>()?;
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(crate::run(server, listeners, rx));
        Ok(TestServer { ctx, addrs, http_addrs, shutdown: tx, task: Some(task), _dir: dir })
    }

    /// Starts the default test server (see [`test_config`]).
    pub async fn start() -> anyhow::Result<TestServer> {
        let dir = tempfile::tempdir()?;
        let cfg = test_config(dir.path());
        Self::start_with(cfg, Some(dir)).await
    }

    /// Creates an account.
    pub async fn add_user(&self, jid: &str, password: &str) {
        crate::accounts::add(&self.ctx.config, &self.ctx.stores, jid, password).await.expect("create test user");
    }

    /// The address of the first listener whose TLS mode is `mode`.
    pub fn addr(&self, mode: TlsMode) -> SocketAddr {
        let i = self.ctx.config.listen.c2s.iter().position(|l| l.tls.mode == mode).expect("a listener with that mode");
        self.addrs[i]
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

/// A raw XML client over plain TCP (for protocol-edge tests on a listener that
/// allows it).
pub struct RawClient {
    stream: TcpStream,
    dec: Decoder,
    /// The stream header received, if any.
    pub header: Option<Element>,
    /// Whether the server closed its stream.
    pub closed: bool,
}

impl RawClient {
    /// Connects.
    pub async fn connect(addr: SocketAddr) -> std::io::Result<RawClient> {
        let stream = TcpStream::connect(addr).await?;
        let limits = Limits { max_stanza_bytes: 1 << 20, ..Limits::default() };
        Ok(RawClient { stream, dec: Decoder::new(Framing::Stream, limits), header: None, closed: false })
    }

    /// Sends raw bytes.
    pub async fn send(&mut self, xml: &str) {
        self.stream.write_all(xml.as_bytes()).await.expect("write to the test server");
    }

    /// Sends an opening stream header for `localhost`.
    pub async fn open(&mut self) {
        // A (re)started stream: the server answers with a fresh header.
        self.dec.reset();
        self.send("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>").await;
    }

    /// The next top-level element (the header is stored in `self.header`);
    /// `None` when the server closed the stream or the connection, or after `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Element> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.dec.next_event() {
                Ok(Some(StreamEvent::Header(h))) => {
                    self.header = Some(h);
                    continue;
                }
                Ok(Some(StreamEvent::Element(e))) => return Some(e),
                Ok(Some(StreamEvent::Close)) => {
                    self.closed = true;
                    return None;
                }
                Ok(None) => {}
                Err(e) => panic!("server sent bad XML: {e}"),
            }
            let mut buf = [0u8; 8192];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    self.closed = true;
                    return None;
                }
                Ok(Ok(n)) => self.dec.feed(&buf[..n]),
                Err(_) => return None,
            }
        }
    }

    /// The next element, which must exist (panics after 5 s).
    pub async fn expect(&mut self) -> Element {
        self.next(Duration::from_secs(5)).await.expect("an element from the server")
    }

    /// Reads until an element matching `pred` arrives (panics after 5 s).
    pub async fn expect_where(&mut self, pred: impl Fn(&Element) -> bool) -> Element {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let e = self.next(left).await.expect("a matching element from the server");
            if pred(&e) {
                return e;
            }
        }
    }

    /// Waits for the server to close the stream and returns the stream error
    /// condition it sent first, if any.
    pub async fn expect_stream_error(&mut self) -> Option<String> {
        let mut cond = None;
        while let Some(e) = self.next(Duration::from_secs(5)).await {
            if e.name() == "error" && e.ns() == meerkat_stanza::ns::STREAM {
                cond = e.children().next().map(|c| c.name().to_string());
            }
        }
        cond
    }

    /// Whether the peer closed the TCP connection (reads EOF within `wait`).
    pub async fn is_disconnected(&mut self, wait: Duration) -> bool {
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout(wait, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    /// Opens the stream and authenticates with SASL PLAIN (on a `tls.mode =
    /// "none"` listener); returns the features of the restarted stream (the
    /// client is at the bind stage, where it may also resume, XEP-0198).
    pub async fn authenticate_plain(&mut self, user: &str, password: &str) -> Element {
        use base64::Engine as _;
        self.open().await;
        let f = self.expect().await;
        assert_eq!(f.name(), "features");
        let data = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        self.send(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{data}</auth>")).await;
        let r = self.expect().await;
        assert_eq!(r.name(), "success", "SASL PLAIN for {user}: {r}");
        self.open().await;
        self.expect().await
    }

    /// Opens the stream, authenticates with SASL PLAIN (on a `tls.mode = "none"`
    /// listener) and binds `resource`; returns the bound full JID.
    pub async fn login_plain(&mut self, user: &str, password: &str, resource: &str) -> String {
        let f = self.authenticate_plain(user, password).await;
        assert!(f.has_child("bind", meerkat_stanza::ns::BIND));
        self.send(&format!("<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>")).await;
        let r = self.expect().await;
        assert_eq!(r.attr("type"), Some("result"), "bind: {r}");
        r.get_child("bind", meerkat_stanza::ns::BIND)
            .and_then(|b| b.child_text("jid", meerkat_stanza::ns::BIND))
            .expect("bound jid")
    }
}
