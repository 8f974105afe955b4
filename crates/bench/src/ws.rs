//! XMPP over WebSocket (RFC 7395) for `--transport websocket`: the HTTP upgrade and the
//! RFC 6455 client framing, run inside [`Conn`](crate::conn::Conn) over its
//! readiness-driven socket.
//!
//! Why not `tokio_tungstenite::WebSocketStream`: it owns a read buffer (and a write
//! buffer) per connection and wants to be polled as a `Stream`, while a simulated user
//! here holds no read buffer at all (reads go through one buffer per thread). So only
//! tungstenite's codec pieces are used — `FrameHeader` parsing and formatting, the
//! handshake key and its accept value — and the payload of each text frame is fed
//! straight into the XML decoder (`Framing::Fragments`) as it arrives, unbuffered. The
//! state per connection is a 14-byte header buffer, a frame's remaining length and the
//! write buffer of framed output (released with the others when the user is idle).
//!
//! Output: the session code writes XML into `Conn::out` as for TCP, possibly several
//! elements at once; [`WsCodec::frame`] cuts it at top-level element boundaries so that
//! each element travels in its own text frame (RFC 7395 §3.3.3).

use std::io::{self, Cursor};

use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

/// The RFC 7395 framing namespace (`<open/>`, `<close/>`).
pub const NS_FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
/// Largest HTTP upgrade response accepted.
const MAX_RESPONSE: usize = 8 * 1024;
/// Largest control frame payload (RFC 6455 §5.5).
const MAX_CONTROL: u64 = 125;

/// A parsed `ws://host:port/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    /// `host:port` as given (for the `Host` header and for connecting).
    pub authority: String,
    /// The request path (`/` when absent).
    pub path: String,
}

impl WsUrl {
    /// Parses `ws://host[:port][/path]` (port 80 by default). `wss://` is refused:
    /// meerkat-bench speaks WebSocket over plain TCP only.
    pub fn parse(url: &str) -> anyhow::Result<WsUrl> {
        let Some(rest) = url.strip_prefix("ws://") else {
            anyhow::bail!("--ws-url {url}: only ws:// URLs are supported (no TLS over WebSocket)");
        };
        let (auth, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if auth.is_empty() {
            anyhow::bail!("--ws-url {url}: no host");
        }
        let authority = if auth.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
            auth.to_owned()
        } else {
            format!("{auth}:80")
        };
        Ok(WsUrl { authority, path: path.to_owned() })
    }
}

/// What the frame parser is in the middle of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// Waiting for (the rest of) a frame header.
    Header,
    /// Inside the payload of a text (or continuation) frame: bytes go to the decoder.
    Text,
    /// Inside the payload of a control frame: bytes go to `ctrl`.
    Control(Control),
    /// Inside the payload of a frame that is ignored (binary).
    Skip,
}

/// The client side of one WebSocket connection.
#[derive(Debug)]
pub struct WsCodec {
    /// `Some` until the HTTP upgrade response has been read: its bytes so far.
    handshake: Option<Vec<u8>>,
    key: String,
    hdr: [u8; 14],
    hdr_len: usize,
    state: Frame,
    remaining: u64,
    ctrl: Vec<u8>,
    /// Framed bytes to write (frames of output elements, pongs, the close frame).
    pub wire: Vec<u8>,
    /// The server sent a close frame.
    pub closed: bool,
    rng: u64,
}

impl WsCodec {
    /// A codec for a new connection, and the upgrade request to send first.
    pub fn new(url: &WsUrl, seed: u64) -> (WsCodec, Vec<u8>) {
        let key = generate_key();
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: xmpp\r\n\r\n",
            url.path, url.authority
        );
        let codec = WsCodec {
            handshake: Some(Vec::new()),
            key,
            hdr: [0; 14],
            hdr_len: 0,
            state: Frame::Header,
            remaining: 0,
            ctrl: Vec::new(),
            wire: Vec::new(),
            closed: false,
            // xorshift64 needs a non-zero state.
            rng: seed | 1,
        };
        (codec, req.into_bytes())
    }

    /// True once the server accepted the upgrade.
    pub fn is_open(&self) -> bool {
        self.handshake.is_none()
    }

    /// Takes bytes from the server: the upgrade response first, then frames whose
    /// text payload goes to `feed`.
    pub fn input(&mut self, mut data: &[u8], feed: &mut impl FnMut(&[u8])) -> io::Result<()> {
        if let Some(buf) = &mut self.handshake {
            buf.extend_from_slice(data);
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                if buf.len() > MAX_RESPONSE {
                    return Err(bad("WebSocket upgrade response too large"));
                }
                return Ok(());
            };
            let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad("WebSocket upgrade response not UTF-8"))?;
            check_upgrade(head, &self.key)?;
            let rest = buf[end + 4..].to_vec();
            self.handshake = None;
            return self.input(&rest, feed);
        }
        while !data.is_empty() {
            match self.state {
                Frame::Header => {
                    let old = self.hdr_len;
                    let n = data.len().min(self.hdr.len() - old);
                    self.hdr[old..old + n].copy_from_slice(&data[..n]);
                    self.hdr_len += n;
                    let mut cur = Cursor::new(&self.hdr[..self.hdr_len]);
                    match FrameHeader::parse(&mut cur).map_err(|e| bad(&format!("WebSocket frame: {e}")))? {
                        None => {
                            data = &data[n..];
                        }
                        Some((h, len)) => {
                            let used = cur.position() as usize - old;
                            data = &data[used..];
                            self.hdr_len = 0;
                            self.begin(h, len)?;
                        }
                    }
                }
                state => {
                    let n = (self.remaining.min(data.len() as u64)) as usize;
                    match state {
                        Frame::Text => feed(&data[..n]),
                        Frame::Control(_) => self.ctrl.extend_from_slice(&data[..n]),
                        _ => {}
                    }
                    data = &data[n..];
                    self.remaining -= n as u64;
                    if self.remaining == 0 {
                        self.end()?;
                    }
                }
            }
        }
        Ok(())
    }

    fn begin(&mut self, h: FrameHeader, len: u64) -> io::Result<()> {
        if h.mask.is_some() {
            return Err(bad("masked WebSocket frame from the server"));
        }
        self.state = match h.opcode {
            OpCode::Data(Data::Text | Data::Continue) => Frame::Text,
            OpCode::Data(_) => Frame::Skip,
            OpCode::Control(c) if len <= MAX_CONTROL => Frame::Control(c),
            OpCode::Control(_) => return Err(bad("WebSocket control frame too long")),
        };
        self.remaining = len;
        if len == 0 {
            self.end()?;
        }
        Ok(())
    }

    fn end(&mut self) -> io::Result<()> {
        if let Frame::Control(c) = self.state {
            match c {
                Control::Ping => {
                    let payload = std::mem::take(&mut self.ctrl);
                    self.push_frame(OpCode::Control(Control::Pong), &payload);
                }
                Control::Close if !self.closed => {
                    self.closed = true;
                    self.push_frame(OpCode::Control(Control::Close), &[]);
                }
                _ => {}
            }
            self.ctrl.clear();
        }
        self.state = Frame::Header;
        Ok(())
    }

    /// Appends one masked frame (RFC 6455 §5.3: clients mask every frame). The mask
    /// comes from a xorshift generator: it only has to vary, not to be secret, for a
    /// benchmark client.
    fn push_frame(&mut self, op: OpCode, payload: &[u8]) {
        self.push_frame_parts(op, &[payload]);
    }

    /// [`push_frame`](Self::push_frame) with the payload in pieces (no copy to join them).
    fn push_frame_parts(&mut self, op: OpCode, parts: &[&[u8]]) {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let mask = (self.rng as u32).to_be_bytes();
        let h = FrameHeader { opcode: op, mask: Some(mask), ..FrameHeader::default() };
        let len: usize = parts.iter().map(|p| p.len()).sum();
        // Writing into a Vec cannot fail.
        let _ = h.format(len as u64, &mut self.wire);
        let start = self.wire.len();
        for p in parts {
            self.wire.extend_from_slice(p);
        }
        for (i, b) in self.wire[start..].iter_mut().enumerate() {
            *b ^= mask[i & 3];
        }
    }

    /// Frames `xml` (one or more complete elements, as written by the session code):
    /// one text frame per top-level element. Over TCP, stanzas take their namespace
    /// from the stream header; here each frame stands alone (RFC 7395 §3.3.3), so
    /// `xmlns='jabber:client'` is added to elements that declare no namespace.
    pub fn frame(&mut self, xml: &[u8]) {
        const CLIENT: &[u8] = b" xmlns='jabber:client'";
        let mut start = 0;
        while start < xml.len() {
            let end = element_end(&xml[start..]).map_or(xml.len(), |e| start + e);
            let el = &xml[start..end];
            let tag_end = el.iter().position(|&c| c == b'>').unwrap_or(el.len());
            let has_ns = el[..tag_end].windows(6).any(|w| w == b"xmlns=");
            let name_end = el.iter().position(|&c| matches!(c, b' ' | b'/' | b'>')).unwrap_or(el.len());
            if has_ns || el.first() != Some(&b'<') {
                self.push_frame(OpCode::Data(Data::Text), el);
            } else {
                self.push_frame_parts(OpCode::Data(Data::Text), &[&el[..name_end], CLIENT, &el[name_end..]]);
            }
            start = end;
        }
    }

    /// Queues the close frame that ends the WebSocket connection.
    pub fn close_frame(&mut self) {
        self.push_frame(OpCode::Control(Control::Close), &[]);
    }
}

/// The length of the first top-level element of `xml` (our own output: well-formed,
/// no comments, CDATA or processing instructions), `None` if it is not complete.
fn element_end(xml: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < xml.len() {
        if xml[i] != b'<' {
            i += 1;
            continue;
        }
        let closing = xml.get(i + 1) == Some(&b'/');
        // The end of the tag, skipping quoted attribute values.
        let mut quote = 0u8;
        let mut j = i + 1;
        while j < xml.len() {
            let c = xml[j];
            if quote != 0 {
                if c == quote {
                    quote = 0;
                }
            } else if c == b'\'' || c == b'"' {
                quote = c;
            } else if c == b'>' {
                break;
            }
            j += 1;
        }
        if j >= xml.len() {
            return None;
        }
        let self_closing = xml[j - 1] == b'/';
        if closing {
            depth = depth.saturating_sub(1);
        } else if !self_closing {
            depth += 1;
        }
        i = j + 1;
        if depth == 0 {
            return Some(i);
        }
    }
    None
}

/// Checks the `101 Switching Protocols` response, its accept key and subprotocol.
fn check_upgrade(head: &str, key: &str) -> io::Result<()> {
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("101") {
        return Err(bad(&format!("WebSocket upgrade refused: {status}")));
    }
    let (mut accept, mut proto) = (None, None);
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let v = v.trim();
            if k.trim().eq_ignore_ascii_case("sec-websocket-accept") {
                accept = Some(v);
            } else if k.trim().eq_ignore_ascii_case("sec-websocket-protocol") {
                proto = Some(v);
            }
        }
    }
    if accept != Some(derive_accept_key(key.as_bytes()).as_str()) {
        return Err(bad("WebSocket upgrade: wrong Sec-WebSocket-Accept"));
    }
    if proto != Some("xmpp") {
        return Err(bad("WebSocket upgrade: the server did not select the xmpp subprotocol"));
    }
    Ok(())
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = WsUrl::parse("ws://127.0.0.1:5280/ws-xmpp").unwrap();
        assert_eq!((u.authority.as_str(), u.path.as_str()), ("127.0.0.1:5280", "/ws-xmpp"));
        assert_eq!(WsUrl::parse("ws://localhost").unwrap().authority, "localhost:80");
        assert!(WsUrl::parse("wss://localhost/x").is_err());
    }

    #[test]
    fn output_is_one_frame_per_element() {
        let xml = b"<iq type='get' id='a'><query xmlns='jabber:iq:roster'/></iq><presence/>\
                    <message to='a&apos;b' id='x>'><body>1 &lt; 2</body></message>";
        assert_eq!(element_end(xml), Some(60));
        assert_eq!(element_end(&xml[60..]), Some(11));
        assert_eq!(element_end(b"<a><b/>"), None);
        let url = WsUrl::parse("ws://h:1/p").unwrap();
        let (mut c, _) = WsCodec::new(&url, 7);
        c.frame(xml);
        // Decode the frames back (unmasking) and check the payloads.
        let mut payloads = Vec::new();
        let mut cur = Cursor::new(c.wire.clone());
        while (cur.position() as usize) < c.wire.len() {
            let (h, len) = FrameHeader::parse(&mut cur).unwrap().unwrap();
            let p = cur.position() as usize;
            let mut body = c.wire[p..p + len as usize].to_vec();
            let m = h.mask.unwrap();
            body.iter_mut().enumerate().for_each(|(i, b)| *b ^= m[i & 3]);
            payloads.push(String::from_utf8(body).unwrap());
            cur.set_position((p + len as usize) as u64);
        }
        assert_eq!(payloads.len(), 3);
        assert_eq!(payloads[1], "<presence xmlns='jabber:client'/>");
        assert!(
            payloads[0].starts_with("<iq xmlns='jabber:client' type='get' id='a'><query xmlns='jabber:iq:roster'/>")
        );
        assert!(payloads[2].ends_with("</message>"));
    }

    #[test]
    fn frames_split_anywhere_reach_the_decoder_whole() {
        let url = WsUrl::parse("ws://h:1/p").unwrap();
        let (mut c, req) = WsCodec::new(&url, 1);
        let req = String::from_utf8(req).unwrap();
        let key = req.lines().find_map(|l| l.strip_prefix("Sec-WebSocket-Key: ")).unwrap().trim().to_owned();
        let mut wire = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\nsec-websocket-protocol: xmpp\r\n\r\n",
            derive_accept_key(key.as_bytes())
        )
        .into_bytes();
        let text = "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>".repeat(5);
        for (op, payload) in [(OpCode::Data(Data::Text), text.as_bytes()), (OpCode::Control(Control::Ping), b"hi")] {
            let h = FrameHeader { opcode: op, ..FrameHeader::default() };
            h.format(payload.len() as u64, &mut wire).unwrap();
            wire.extend_from_slice(payload);
        }
        let mut got = Vec::new();
        for chunk in wire.chunks(3) {
            c.input(chunk, &mut |b| got.extend_from_slice(b)).unwrap();
        }
        assert!(c.is_open());
        assert_eq!(got, text.as_bytes());
        assert!(!c.wire.is_empty(), "the ping is answered");
        let (mut bad_key, _) = WsCodec::new(&url, 1);
        let refused = bad_key.input(b"HTTP/1.1 400 Bad Request\r\n\r\n", &mut |_| {});
        assert!(refused.is_err());
    }
}
