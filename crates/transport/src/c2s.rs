//! One TCP listener and its connection tasks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meerkat_config::{C2sListener, TlsMode};
use meerkat_core::ServerContext;
use meerkat_sasl::ChannelBinding;
use meerkat_stanza::ns;
use meerkat_stream::{C2s, Listener, Output, TlsState, TransportInfo};
use meerkat_xml::{Decoder, Framing, Limits};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::tls::{channel_binding, TlsMaterial};
use crate::waits::{Deadline, Shutdown};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const READ_CHUNK: usize = 4096;
/// Most mailbox messages handled before one write: what is already waiting goes
/// out together (one syscall for a backlog), bounded so the socket is read too.
const MAILBOX_BATCH: usize = 64;

/// Initial capacity of the write buffer for one flush: a typical burst, and
/// under glibc's large-chunk threshold (1,024 bytes with its header), whose
/// allocations first consolidate the allocator's fast bins.
const WRITE_RESERVE: usize = 1000;

/// What a listener's connections share.
pub struct ListenerRuntime {
    /// The server.
    pub ctx: Arc<ServerContext>,
    /// The listener's configuration.
    pub cfg: C2sListener,
    /// TLS material (`None` only for `tls.mode = "none"`).
    pub tls: Option<TlsMaterial>,
    /// Inbound bytes per second per connection (`None` = unlimited).
    pub shaper_rate: Option<u32>,
    /// Connection slots shared by all listeners.
    pub slots: Arc<Semaphore>,
}

/// Accepts connections until `shutdown` turns true.
pub async fn serve_c2s(rt: Arc<ListenerRuntime>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Ok(permit) = rt.slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached: refusing");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let rt = rt.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            connection(rt, tcp, peer, shutdown).await;
            drop(permit);
        });
    }
}

/// A client connection, plain or encrypted.
enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Transient state while upgrading.
    Gone,
}

/// What one [`Conn::read_now`] got.
struct Got {
    bytes: usize,
    eof: bool,
    /// More may be ready at once (the per-wake budget ran out).
    more: bool,
}

/// Most bytes taken from one connection per wake-up, for fairness.
const READ_BUDGET: usize = 64 * 1024;

thread_local! {
    /// One read buffer per runtime thread instead of one per connection: an idle
    /// session holds no read buffer at all (memory per session is a target).
    static READ_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; READ_CHUNK]);
}

impl Conn {
    /// Waits until the socket has something to read (or `more` says data is
    /// already waiting).
    async fn ready(&self, more: bool) -> std::io::Result<()> {
        if more {
            return Ok(());
        }
        match self {
            Conn::Plain(s) => s.readable().await,
            Conn::Tls(s) => s.get_ref().0.readable().await,
            Conn::Gone => std::future::pending().await,
        }
    }

    /// Reads what is available now, without waiting, into the decoder.
    fn read_now(&mut self, dec: &mut Decoder) -> std::io::Result<Got> {
        READ_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            let mut got = Got { bytes: 0, eof: false, more: false };
            // Poll once per read, whichever the stream: rustls hands out buffered
            // plaintext first, and tokio treats a read shorter than the buffer as
            // draining the socket, so the next poll is Pending without a system
            // call (`try_read` would make one more `recvfrom` per wake-up, only to
            // be told EAGAIN). Pending means drained; `ready` awaits new data.
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            while got.bytes < READ_BUDGET {
                let mut rb = tokio::io::ReadBuf::new(&mut buf);
                let polled = match self {
                    Conn::Plain(s) => std::pin::Pin::new(s).poll_read(&mut cx, &mut rb),
                    Conn::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(&mut cx, &mut rb),
                    Conn::Gone => std::task::Poll::Ready(Ok(())),
                };
                let n = match polled {
                    std::task::Poll::Ready(Ok(())) => rb.filled().len(),
                    std::task::Poll::Ready(Err(e)) => return Err(e),
                    std::task::Poll::Pending => return Ok(got),
                };
                if n == 0 {
                    got.eof = true;
                    return Ok(got);
                }
                dec.feed(&buf[..n]);
                got.bytes += n;
            }
            got.more = true;
            Ok(got)
        })
    }
    async fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        async fn w<S: AsyncWrite + AsyncRead + Unpin>(s: &mut S, buf: &[u8]) -> std::io::Result<()> {
            s.write_all(buf).await?;
            s.flush().await
        }
        match self {
            Conn::Plain(s) => w(s, buf).await,
            Conn::Tls(s) => w(s.as_mut(), buf).await,
            Conn::Gone => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }
    async fn shutdown(&mut self) {
        let _ = match self {
            Conn::Plain(s) => s.shutdown().await,
            Conn::Tls(s) => s.shutdown().await,
            Conn::Gone => Ok(()),
        };
    }
}

async fn accept_tls(cfg: Arc<rustls::ServerConfig>, tcp: TcpStream) -> Option<(Conn, ChannelBinding)> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(cfg).accept(tcp)).await {
        Ok(Ok(s)) => {
            let cb = channel_binding(s.get_ref().1);
            Some((Conn::Tls(Box::new(s)), cb))
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => None,
    }
}

/// A token bucket on inbound bytes (`[shaper.NAME] max_rate`).
struct Shaper {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Shaper {
    fn consume(&mut self, n: usize) -> Option<Duration> {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.rate);
        self.at = now;
        self.tokens -= n as f64;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.rate))
    }
}

fn write_header(out: &mut Vec<u8>, id: &str, from: &str) {
    out.extend_from_slice(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='");
    let mut s = String::new();
    meerkat_xml::escape_attr(id, &mut s);
    s.push_str("' from='");
    meerkat_xml::escape_attr(from, &mut s);
    s.push_str("' version='1.0' xml:lang='en'>");
    out.extend_from_slice(s.as_bytes());
}

async fn connection(rt: Arc<ListenerRuntime>, tcp: TcpStream, peer: SocketAddr, shutdown: watch::Receiver<bool>) {
    let mode = rt.cfg.tls.mode;
    let (mut conn, tls_state, cb) = if mode == TlsMode::Tls {
        let Some(tls) = &rt.tls else { return };
        match accept_tls(tls.direct.clone(), tcp).await {
            Some((c, cb)) => (c, TlsState::Secure, cb),
            None => return,
        }
    } else {
        (Conn::Plain(tcp), TlsState::Plain, ChannelBinding::None)
    };
    let mut listener = Listener::from_config(&rt.cfg);
    listener.starttls_available = mode != TlsMode::Tls && rt.tls.is_some() && mode != TlsMode::None;
    let info = TransportInfo { peer, tls: tls_state, channel_binding: cb };
    let mut c2s = C2s::new(rt.ctx.clone(), listener, info);
    let limits = Limits { max_stanza_bytes: rt.cfg.max_stanza_size, ..Limits::default() };
    let mut dec = Decoder::new(Framing::Stream, limits);
    let mut shaper = rt.shaper_rate.map(|r| Shaper { rate: r as f64, tokens: r as f64, at: Instant::now() });
    let mut wbuf: Vec<u8> = Vec::new();
    let mut timer = Deadline::new();
    let mut shutdown = Shutdown::new(shutdown);
    // Read at once: a TLS handshake may already have decrypted the client's first
    // bytes, which no socket readiness will announce.
    let mut more = true;
    let mut handover = None;
    loop {
        timer.set(c2s.next_deadline());
        tokio::select! {
            r = conn.ready(more) => match r.and_then(|()| conn.read_now(&mut dec)) {
                Err(_) => c2s.on_disconnect().await,
                Ok(got) => {
                    more = got.more;
                    if got.bytes > 0 {
                        c2s.touch();
                    }
                    loop {
                        match dec.next_event() {
                            Ok(Some(ev)) => {
                                c2s.on_event(ev, dec.default_ns()).await;
                                // STARTTLS and SASL success restart the stream: act on
                                // them before decoding anything further.
                                if !flush(&mut c2s, &mut conn, &mut dec, &rt, &mut wbuf, &mut more).await || c2s.is_closed() {
                                    break;
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                c2s.on_xml_error(&e).await;
                                break;
                            }
                        }
                    }
                    if got.eof && !c2s.is_closed() {
                        c2s.on_disconnect().await;
                    }
                    if let Some(d) = shaper.as_mut().and_then(|s| s.consume(got.bytes)) {
                        tokio::time::sleep(d).await;
                    }
                    if let Some(d) = c2s.throttle() {
                        tokio::time::sleep(d).await;
                    }
                    if dec.buffered() == 0 {
                        dec.shrink();
                    }
                }
            },
            m = c2s.recv() => match m {
                meerkat_stream::Mailbox::Takeover(tx) => handover = Some(tx),
                m => {
                    c2s.on_mailbox(m).await;
                    c2s.drain_mailbox(MAILBOX_BATCH).await;
                }
            },
            () = timer.fired() => c2s.on_timer().await,
            () = shutdown.signalled() => c2s.on_shutdown().await,
        }
        if let Some(tx) = handover.take() {
            // XEP-0198: a new connection resumed this session; this one just ends.
            conn.shutdown().await;
            let _ = tx.send(Box::new(c2s));
            return;
        }
        if !flush(&mut c2s, &mut conn, &mut dec, &rt, &mut wbuf, &mut more).await
            || c2s.is_closed()
            || c2s.is_detached()
        {
            break;
        }
    }
    // Make sure a session that ended on a write error is torn down too; a
    // resumable one waits, detached, for its client (XEP-0198).
    c2s.on_disconnect().await;
    conn.shutdown().await;
    if c2s.is_detached() {
        meerkat_stream::park(c2s).await;
    }
}

/// Writes what the session queued; performs STARTTLS and decoder resets in order.
/// Returns `false` when the connection must end.
async fn flush(
    c2s: &mut C2s,
    conn: &mut Conn,
    dec: &mut Decoder,
    rt: &ListenerRuntime,
    wbuf: &mut Vec<u8>,
    more: &mut bool,
) -> bool {
    let outputs = c2s.take_output();
    if outputs.is_empty() {
        return true;
    }
    // One allocation that holds a typical burst, instead of growing from zero
    // through every power of two while serialising (freed after the write).
    wbuf.reserve(WRITE_RESERVE);
    let mut keep = true;
    for o in outputs {
        match o {
            Output::Header { id, from } => write_header(wbuf, &id, &from),
            Output::Element(el) => el.write_to(wbuf, ns::CLIENT),
            Output::ResetDecoder => dec.reset(),
            Output::StartTls => {
                if !write(conn, wbuf).await {
                    return false;
                }
                let Some(tls) = &rt.tls else { return false };
                let Conn::Plain(tcp) = std::mem::replace(conn, Conn::Gone) else { return false };
                match accept_tls(tls.starttls.clone(), tcp).await {
                    Some((c, cb)) => {
                        *conn = c;
                        c2s.tls_established(cb);
                        dec.reset();
                        *more = true;
                    }
                    None => return false,
                }
            }
            Output::Close => {
                wbuf.extend_from_slice(b"</stream:stream>");
                keep = false;
            }
        }
    }
    if !wbuf.is_empty() && !write(conn, wbuf).await {
        return false;
    }
    keep
}

async fn write(conn: &mut Conn, wbuf: &mut Vec<u8>) -> bool {
    let ok = matches!(tokio::time::timeout(WRITE_TIMEOUT, conn.write_all(wbuf)).await, Ok(Ok(())));
    // Keep nothing between writes: an idle session holds no write buffer.
    *wbuf = Vec::new();
    ok
}
