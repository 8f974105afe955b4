//! One client connection: a TCP socket, optionally upgraded to TLS (rustls driven by
//! hand) or carrying WebSocket frames (RFC 7395, `ws`), the XML decoder and a small
//! write buffer.
//!
//! Reads are readiness-driven: a connection waits for its socket to become readable and
//! then reads into one buffer per thread, so an idle simulated user holds no read
//! buffer of its own. Every `.await` here waits only for socket readiness and keeps no
//! state of its own, so a read wait can be dropped at any time (in a `select!`).

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use meerkat_xml::{Decoder, Framing, Limits, StreamEvent};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::frame::{self, BenchMsg, Frame};
use crate::ws::{WsCodec, WsUrl, NS_FRAMING};

/// Bytes read per `read` call into the per-thread buffer.
const READ_CHUNK: usize = 16 * 1024;
/// Reads per readiness event before yielding to other connections.
const READS_PER_WAKE: usize = 16;

thread_local! {
    static READ_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; READ_CHUNK].into_boxed_slice());
}

/// Why a read or login step failed; `Display` is the short reason counted in reports.
#[derive(Debug)]
pub enum ConnError {
    /// A socket or TLS error.
    Io(io::Error),
    /// The server sent something that is not well-formed XML.
    Xml(meerkat_xml::Error),
    /// The server closed the connection.
    Closed,
    /// The deadline passed.
    Timeout,
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnError::Io(e) => write!(f, "{}", io_reason(e)),
            ConnError::Xml(e) => write!(f, "bad XML: {e}"),
            ConnError::Closed => f.write_str("connection closed by server"),
            ConnError::Timeout => f.write_str("timeout"),
        }
    }
}

impl From<io::Error> for ConnError {
    fn from(e: io::Error) -> Self {
        ConnError::Io(e)
    }
}

/// An I/O error as a reason without per-connection details (OS error numbers stay).
fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        io::ErrorKind::UnexpectedEof => "connection closed by server".into(),
        io::ErrorKind::AddrNotAvailable | io::ErrorKind::AddrInUse => format!("no local address: {e}"),
        _ => e.to_string(),
    }
}

/// Accepts any server certificate: meerkat-bench targets loopback test servers with
/// self-signed certificates. Handshake signatures are not checked either (less client
/// CPU; nothing is authenticated anyway).
#[derive(Debug)]
struct AcceptAny(Vec<SignatureScheme>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.clone()
    }
}

/// The TLS client configuration: ring, TLS 1.2/1.3, no certificate verification, no
/// session resumption (every simulated user does a full handshake, like a new device).
pub fn tls_config() -> anyhow::Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let schemes = provider.signature_verification_algorithms.supported_schemes();
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(schemes)))
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// Generous decoder limits: rosters and offline messages may be large.
fn limits() -> Limits {
    Limits { max_stanza_bytes: 1 << 20, max_depth: 64, max_attrs: 128, max_header_bytes: 16 * 1024 }
}

/// Reads what `tcp` has now, like `try_read`, but polled: tokio takes a read
/// shorter than the buffer as draining the socket, so the next read is
/// `WouldBlock` without a system call. `try_read` makes one more `recvfrom` per
/// wake-up only to be told EAGAIN: with every member of a room reading each room
/// message, that was half the generator's system calls (muc-light, one room of
/// 1,000 at 150,000 deliveries/s: 86,048 `recvfrom` in 3 s, 42,992 of them
/// EAGAIN).
fn poll_read(tcp: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    use tokio::io::AsyncRead;
    let mut rb = tokio::io::ReadBuf::new(buf);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::Pin::new(tcp).poll_read(&mut cx, &mut rb) {
        std::task::Poll::Ready(Ok(())) => Ok(rb.filled().len()),
        std::task::Poll::Ready(Err(e)) => Err(e),
        std::task::Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

struct TcpIo<'a>(&'a TcpStream);

impl Read for TcpIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for TcpIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn tls_err(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}"))
}

/// A client connection.
pub struct Conn {
    tcp: TcpStream,
    tls: Option<Box<ClientConnection>>,
    /// WebSocket framing (`--transport websocket`); the decoder then uses
    /// `Framing::Fragments`.
    ws: Option<Box<WsCodec>>,
    /// The stream decoder (reset on every stream restart).
    pub dec: Decoder,
    /// Bytes to send; [`flush`](Self::flush) writes and clears them.
    pub out: Vec<u8>,
    eof: bool,
    /// Received bytes for the light framer ([`crate::frame`]) while it reads the
    /// stream (`Some` from the first read after [`fast_messages`](Self::fast_messages)
    /// that finds the decoder empty), and how much of them is consumed.
    raw: Option<Vec<u8>>,
    raw_pos: usize,
    want_fast: bool,
}

/// An element from [`Conn::next_incoming`].
pub enum Incoming {
    /// A bench-stamped message, read by the framer.
    Bench(BenchMsg),
    /// Any other element, parsed by the strict decoder.
    Element(meerkat_xml::Element),
}

impl Conn {
    /// Opens a TCP connection, from `source` (port chosen by the kernel) when given.
    pub async fn connect(server: SocketAddr, source: Option<IpAddr>) -> io::Result<Conn> {
        let tcp = match source {
            None => TcpStream::connect(server).await?,
            Some(ip) => {
                let sock = if server.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
                sock.bind(SocketAddr::new(ip, 0))?;
                sock.connect(server).await?
            }
        };
        tcp.set_nodelay(true)?;
        Ok(Conn {
            tcp,
            tls: None,
            ws: None,
            dec: Decoder::new(Framing::Stream, limits()),
            out: Vec::new(),
            eof: false,
            raw: None,
            raw_pos: 0,
            want_fast: false,
        })
    }

    /// Opens a WebSocket connection to `url` (TCP to `server`), runs the HTTP upgrade
    /// with the `xmpp` subprotocol and switches the decoder to RFC 7395 fragments.
    pub async fn connect_ws(
        server: SocketAddr,
        source: Option<IpAddr>,
        url: &WsUrl,
        seed: u64,
        deadline: Instant,
    ) -> Result<Conn, ConnError> {
        let mut c = match tokio::time::timeout_at(deadline, Conn::connect(server, source)).await {
            Err(_) => return Err(ConnError::Timeout),
            Ok(r) => r?,
        };
        let (codec, request) = WsCodec::new(url, seed);
        c.ws = Some(Box::new(codec));
        c.dec = Decoder::new(Framing::Fragments, limits());
        c.write_raw(&request).await?;
        while !c.ws.as_ref().is_some_and(|w| w.is_open()) {
            if c.eof {
                return Err(ConnError::Closed);
            }
            match tokio::time::timeout_at(deadline, c.tcp.readable()).await {
                Err(_) => return Err(ConnError::Timeout),
                Ok(r) => r?,
            }
            c.read_ready().await?;
        }
        Ok(c)
    }

    /// Writes bytes as they are (no TLS, no framing): the HTTP upgrade request.
    async fn write_raw(&mut self, data: &[u8]) -> io::Result<()> {
        write_all(&self.tcp, data).await
    }

    /// Drops the connection abruptly: no `</stream:stream>`, no TLS close_notify, and a
    /// TCP reset instead of a FIN (SO_LINGER 0), like a phone losing its network.
    pub fn abort(self) {
        // With a zero timeout, SO_LINGER makes close() send a reset at once; it never
        // blocks, which is what the deprecation warns about.
        #[allow(deprecated)]
        let _ = self.tcp.set_linger(Some(std::time::Duration::ZERO));
        drop(self);
    }

    /// From now on (once the decoder holds nothing), bench-stamped messages are
    /// read by the light framer ([`crate::frame`]) and returned by
    /// [`next_incoming`](Self::next_incoming) without a tree; the other methods
    /// that read give the stream back to the strict decoder.
    pub fn fast_messages(&mut self) {
        self.want_fast = true;
    }

    /// The next element: a bench-stamped message read by the framer, or any
    /// other element from the decoder; `Ok(None)` when more bytes are needed.
    pub fn next_incoming(&mut self) -> Result<Option<Incoming>, String> {
        loop {
            if self.raw.is_none() || self.dec.buffered() > 0 {
                match self.decoded_element()? {
                    Some(el) => return Ok(Some(Incoming::Element(el))),
                    None if self.raw.is_none() => return Ok(None),
                    None => {}
                }
            }
            let (Some(raw), dec) = (&mut self.raw, &mut self.dec) else { continue };
            match frame::next(&raw[self.raw_pos..]) {
                Frame::Incomplete => {
                    raw.drain(..self.raw_pos);
                    self.raw_pos = 0;
                    return Ok(None);
                }
                Frame::Bench { len, msg } => {
                    self.raw_pos += len;
                    return Ok(Some(Incoming::Bench(msg)));
                }
                Frame::Element { skip, len } => {
                    dec.feed(&raw[self.raw_pos + skip..self.raw_pos + len]);
                    self.raw_pos += len;
                }
                Frame::Unhandled => self.end_fast(),
            }
        }
    }

    /// Hands what the framer holds to the decoder; the decoder reads from now on.
    fn end_fast(&mut self) {
        self.want_fast = false;
        if let Some(raw) = self.raw.take() {
            self.dec.feed(&raw[self.raw_pos..]);
            self.raw_pos = 0;
        }
    }

    /// The next complete top-level element, skipping stream headers; `Ok(None)`
    /// when more bytes are needed; `Err` names why the stream is over.
    pub fn next_element(&mut self) -> Result<Option<meerkat_xml::Element>, String> {
        self.end_fast();
        self.decoded_element()
    }

    fn decoded_element(&mut self) -> Result<Option<meerkat_xml::Element>, String> {
        loop {
            return match self.decoded() {
                Ok(None) => Ok(None),
                Ok(Some(StreamEvent::Element(el))) => Ok(Some(el)),
                Ok(Some(StreamEvent::Header(_))) => continue,
                Ok(Some(StreamEvent::Close)) => Err("stream closed by server".into()),
                Err(e) => Err(ConnError::Xml(e).to_string()),
            };
        }
    }

    /// The next decoded event without reading. On WebSocket, the RFC 7395 framing
    /// elements become what they stand for: `<open/>` a header, `<close/>` the close.
    pub fn next_decoded(&mut self) -> Result<Option<StreamEvent>, meerkat_xml::Error> {
        self.end_fast();
        self.decoded()
    }

    fn decoded(&mut self) -> Result<Option<StreamEvent>, meerkat_xml::Error> {
        let ev = self.dec.next_event()?;
        if self.ws.is_some() {
            if let Some(StreamEvent::Element(el)) = &ev {
                if el.ns() == NS_FRAMING {
                    match el.name() {
                        "open" => {
                            return Ok(ev.map(|e| {
                                if let StreamEvent::Element(el) = e {
                                    StreamEvent::Header(el)
                                } else {
                                    e
                                }
                            }))
                        }
                        "close" => return Ok(Some(StreamEvent::Close)),
                        _ => {}
                    }
                }
            }
        }
        Ok(ev)
    }

    /// Runs the TLS handshake (after `<proceed/>`) and resets the decoder.
    pub async fn start_tls(&mut self, cfg: Arc<ClientConfig>, name: ServerName<'static>) -> io::Result<()> {
        let mut tls = Box::new(ClientConnection::new(cfg, name).map_err(tls_err)?);
        tls.set_buffer_limit(None);
        self.dec.reset();
        loop {
            flush_tls(&self.tcp, &mut tls).await?;
            if !tls.is_handshaking() {
                break;
            }
            self.tcp.readable().await?;
            match tls.read_tls(&mut TcpIo(&self.tcp)) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed during TLS handshake")),
                Ok(_) => {
                    tls.process_new_packets().map_err(tls_err)?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        self.tls = Some(tls);
        self.drain_plaintext()?;
        Ok(())
    }

    /// True once the server closed the connection.
    pub fn is_eof(&self) -> bool {
        self.eof
    }

    /// Waits until the socket has something to read (cancel-safe).
    pub async fn readable(&self) -> io::Result<()> {
        if self.eof {
            return std::future::pending().await;
        }
        self.tcp.readable().await
    }

    /// Reads what the socket has into the decoder (and answers TLS housekeeping).
    pub async fn read_ready(&mut self) -> io::Result<()> {
        self.read_available()?;
        if self.tls.as_ref().is_some_and(|t| t.wants_write()) || self.ws.as_ref().is_some_and(|w| !w.wire.is_empty()) {
            self.flush().await?;
        }
        if self.ws.as_ref().is_some_and(|w| w.closed) {
            self.eof = true;
        }
        Ok(())
    }

    fn read_available(&mut self) -> io::Result<()> {
        if self.want_fast && self.raw.is_none() && self.dec.buffered() == 0 {
            self.raw = Some(Vec::new());
        }
        for _ in 0..READS_PER_WAKE {
            let n = match &mut self.tls {
                None => READ_BUF.with_borrow_mut(|buf| match poll_read(&mut self.tcp, buf) {
                    Ok(n) => feed(&mut self.dec, &mut self.raw, &mut self.ws, &buf[..n]).map(|()| n),
                    Err(e) => Err(e),
                }),
                Some(tls) => tls.read_tls(&mut TcpIo(&self.tcp)),
            };
            match n {
                Ok(0) => {
                    self.eof = true;
                    if let Some(tls) = &mut self.tls {
                        let _ = tls.process_new_packets();
                    }
                    // The connection is over: undecryptable leftovers do not matter.
                    let _ = self.drain_plaintext();
                    return Ok(());
                }
                Ok(_) => {
                    if let Some(tls) = &mut self.tls {
                        tls.process_new_packets().map_err(tls_err)?;
                        self.drain_plaintext()?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Moves decrypted bytes from rustls into the decoder.
    fn drain_plaintext(&mut self) -> io::Result<()> {
        let Some(tls) = &mut self.tls else { return Ok(()) };
        READ_BUF.with_borrow_mut(|buf| loop {
            match tls.reader().read(buf) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => feed(&mut self.dec, &mut self.raw, &mut self.ws, &buf[..n])?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    self.eof = true;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        })
    }

    /// Writes and clears [`out`](Self::out).
    pub async fn flush(&mut self) -> io::Result<()> {
        if let Some(ws) = &mut self.ws {
            if !self.out.is_empty() {
                ws.frame(&self.out);
            }
            let r = write_all(&self.tcp, &ws.wire).await;
            ws.wire.clear();
            self.out.clear();
            return r;
        }
        match &mut self.tls {
            None => write_all(&self.tcp, &self.out).await?,
            Some(tls) => {
                if !self.out.is_empty() {
                    tls.writer().write_all(&self.out)?;
                }
                flush_tls(&self.tcp, tls).await?;
            }
        }
        self.out.clear();
        Ok(())
    }

    /// Appends `data` to the output and flushes.
    pub async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.extend_from_slice(data);
        self.flush().await
    }

    /// The next decoded event, reading as needed until `deadline`.
    pub async fn next_event(&mut self, deadline: Instant) -> Result<StreamEvent, ConnError> {
        loop {
            if let Some(ev) = self.next_decoded().map_err(ConnError::Xml)? {
                return Ok(ev);
            }
            if self.eof {
                return Err(ConnError::Closed);
            }
            match tokio::time::timeout_at(deadline, self.tcp.readable()).await {
                Err(_) => return Err(ConnError::Timeout),
                Ok(r) => r?,
            }
            self.read_ready().await?;
        }
    }

    /// Releases the decoder's spare buffers and the write buffer (for idle sessions).
    pub fn shrink(&mut self) {
        self.dec.shrink();
        self.out = Vec::new();
        if let Some(ws) = &mut self.ws {
            ws.wire = Vec::new();
        }
    }

    /// Sends `</stream:stream>` (WebSocket: `<close/>`) and waits (until `deadline`)
    /// for the server to close.
    pub async fn close(&mut self, deadline: Instant) {
        let close: &[u8] = if self.ws.is_some() {
            b"<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>"
        } else {
            b"</stream:stream>"
        };
        if self.send(close).await.is_err() {
            return;
        }
        loop {
            match self.next_event(deadline).await {
                Ok(StreamEvent::Close) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if let Some(ws) = &mut self.ws {
            if !ws.closed {
                ws.close_frame();
                let _ = self.flush().await;
            }
        }
        if let Some(tls) = &mut self.tls {
            tls.send_close_notify();
            let _ = tokio::time::timeout_at(deadline, flush_tls(&self.tcp, tls)).await;
        }
    }
}

/// Feeds bytes read from the server to the decoder (or to the framer's buffer
/// while it reads), through the WebSocket deframer when there is one.
fn feed(dec: &mut Decoder, raw: &mut Option<Vec<u8>>, ws: &mut Option<Box<WsCodec>>, data: &[u8]) -> io::Result<()> {
    let mut sink = |b: &[u8]| match raw {
        Some(raw) => raw.extend_from_slice(b),
        None => dec.feed(b),
    };
    match ws {
        None => {
            sink(data);
            Ok(())
        }
        Some(ws) => ws.input(data, &mut sink),
    }
}

/// Writes all of `data` to the socket.
async fn write_all(tcp: &TcpStream, data: &[u8]) -> io::Result<()> {
    let mut pos = 0;
    while pos < data.len() {
        match tcp.try_write(&data[pos..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => tcp.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn flush_tls(tcp: &TcpStream, tls: &mut ClientConnection) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(&mut TcpIo(tcp)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => tcp.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
