//! The `[[listen.http]]` listeners (hyper with axum routing; HTTP or HTTPS), and
//! XMPP over WebSocket (RFC 7395) on them. BOSH handlers live in `bosh.rs`.
//!
//! Each WebSocket text message carries one complete element (§3.3.3): the framing
//! elements `<open/>` and `<close/>` (namespace `urn:ietf:params:xml:ns:xmpp-framing`)
//! or a stanza/nonza with its namespace declared. The same [`C2s`] state machine
//! as TCP runs the session; only the framing differs. The handshake must offer the
//! `xmpp` subprotocol (§3.2), else the upgrade is refused with 400.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meerkat_config::{HttpListener, TlsMode};
use meerkat_core::ServerContext;
use meerkat_sasl::ChannelBinding;
use meerkat_stanza::ns;
use meerkat_stream::{C2s, Listener, Output, TlsState, TransportInfo};
use meerkat_xml::{Decoder, Framing, Limits};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::tls::TlsMaterial;
use crate::waits::{Deadline, Shutdown};

/// Initial read buffer of a WebSocket connection (it grows for larger frames).
const WS_READ_BUFFER: usize = 4096;

/// What an HTTP listener's connections share.
pub struct HttpRuntime {
    /// The server.
    pub ctx: Arc<ServerContext>,
    /// The listener's configuration.
    pub cfg: HttpListener,
    /// TLS material for HTTPS (`None` = plain HTTP).
    pub tls: Option<TlsMaterial>,
    /// Connection slots shared by all listeners.
    pub slots: Arc<Semaphore>,
    /// Open BOSH sessions.
    pub bosh: crate::bosh::BoshSessions,
}

#[derive(Clone)]
struct Conn {
    rt: Arc<HttpRuntime>,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
}

/// Accepts HTTP(S) connections until `shutdown` turns true.
pub async fn serve_http(rt: Arc<HttpRuntime>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Ok(permit) = rt.slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached: refusing");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let conn = Conn { rt: rt.clone(), peer, shutdown: shutdown.clone() };
        tokio::spawn(async move {
            let mut app = Router::new();
            for h in &conn.rt.cfg.handlers.mod_websockets {
                app = app.route(h.path.get_ref(), get(upgrade));
            }
            for h in &conn.rt.cfg.handlers.mod_bosh {
                let handler = h.clone();
                app = app.route(
                    h.path.get_ref(),
                    axum::routing::post(move |State(c): State<Conn>, headers: HeaderMap, body: axum::body::Bytes| {
                        crate::bosh::post(c.rt, handler, c.peer, c.shutdown, headers, body)
                    })
                    .options(|| async { crate::bosh::options() }),
                );
            }
            let app = app.with_state(conn.clone());
            let service = hyper_util::service::TowerToHyperService::new(app);
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let result = match &conn.rt.tls {
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.starttls.clone());
                    match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => builder.serve_connection_with_upgrades(TokioIo::new(s), service).await,
                        _ => Ok(()),
                    }
                }
                None => builder.serve_connection_with_upgrades(TokioIo::new(tcp), service).await,
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
}

/// The WebSocket handshake (RFC 7395 §3.2 / RFC 6455).
async fn upgrade(State(conn): State<Conn>, headers: HeaderMap, ws: WebSocketUpgrade) -> Response {
    let host_ok = conn.rt.cfg.handlers.mod_websockets.iter().any(|h| {
        h.host == "_"
            || headers
                .get("host")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(':').next() == Some(h.host.as_str()))
    });
    if !host_ok {
        return StatusCode::NOT_FOUND.into_response();
    }
    let offers_xmpp = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == "xmpp");
    if !offers_xmpp {
        return (StatusCode::BAD_REQUEST, "the 'xmpp' WebSocket subprotocol is required (RFC 7395 §3.2)")
            .into_response();
    }
    let max = conn.rt.cfg.max_stanza_size;
    // tungstenite's defaults (128 KiB read and write buffers) would cost every idle
    // WebSocket session more than the rest of its state ten times over; one stanza
    // per frame is written and flushed at once anyway.
    ws.protocols(["xmpp"])
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(max + 1024)
        .max_frame_size(max + 1024)
        .on_upgrade(move |socket| session(conn, socket))
}

/// One XMPP session over one WebSocket.
async fn session(conn: Conn, mut ws: WebSocket) {
    let rt = &conn.rt;
    let secure = rt.tls.is_some();
    let listener = Listener {
        // No STARTTLS over WebSocket; PLAIN only on HTTPS.
        tls_mode: TlsMode::Starttls,
        starttls_available: false,
        state_timeout: std::time::Duration::from_secs(rt.cfg.state_timeout),
        max_stanza_rate: rt.cfg.max_stanza_rate,
    };
    let info = TransportInfo {
        peer: conn.peer,
        tls: if secure { TlsState::Secure } else { TlsState::Plain },
        channel_binding: ChannelBinding::Unsupported,
    };
    let mut c2s = C2s::new(rt.ctx.clone(), listener, info);
    let limits = Limits { max_stanza_bytes: rt.cfg.max_stanza_size, ..Limits::default() };
    let mut dec = Decoder::new(Framing::Fragments, limits);
    let mut timer = Deadline::new();
    let mut shutdown = Shutdown::new(conn.shutdown.clone());
    let mut handover = None;
    loop {
        timer.set(c2s.next_deadline());
        tokio::select! {
            m = ws.recv() => match m {
                Some(Ok(Message::Text(t))) => {
                    c2s.touch();
                    dec.feed(t.as_bytes());
                    loop {
                        match dec.next_event() {
                            Ok(Some(ev)) => {
                                c2s.on_event(ev, ns::FRAMING).await;
                                if !flush(&mut c2s, &mut ws, &mut dec).await || c2s.is_closed() {
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
                    if let Some(d) = c2s.throttle() {
                        tokio::time::sleep(d).await;
                    }
                    if dec.buffered() == 0 {
                        dec.shrink();
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    // RFC 7395 §3.3: XMPP is carried in text frames only.
                    c2s.on_xml_error(&meerkat_xml::Error::NotWellFormed("binary WebSocket frame".into())).await;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => c2s.touch(),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => c2s.on_disconnect().await,
            },
            m = c2s.recv() => match m {
                meerkat_stream::Mailbox::Takeover(tx) => handover = Some(tx),
                m => c2s.on_mailbox(m).await,
            },
            () = timer.fired() => c2s.on_timer().await,
            () = shutdown.signalled() => c2s.on_shutdown().await,
        }
        if let Some(tx) = handover.take() {
            let _ = ws.send(Message::Close(Some(CloseFrame { code: 1000, reason: "".into() }))).await;
            let _ = tx.send(Box::new(c2s));
            return;
        }
        if !flush(&mut c2s, &mut ws, &mut dec).await || c2s.is_closed() || c2s.is_detached() {
            break;
        }
    }
    c2s.on_disconnect().await;
    let _ = ws.send(Message::Close(Some(CloseFrame { code: 1000, reason: "".into() }))).await;
    if c2s.is_detached() {
        meerkat_stream::park(c2s).await;
    }
}

/// Writes the session's outputs, one element per message. `false` = end.
async fn flush(c2s: &mut C2s, ws: &mut WebSocket, dec: &mut Decoder) -> bool {
    let mut keep = true;
    for o in c2s.take_output() {
        let text = match o {
            Output::Header { id, from } => {
                let mut s = String::from("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' id='");
                meerkat_xml::escape_attr(&id, &mut s);
                s.push_str("' from='");
                meerkat_xml::escape_attr(&from, &mut s);
                s.push_str("' version='1.0' xml:lang='en'/>");
                s
            }
            // Each element declares its namespace (RFC 7395 §3.3.3).
            Output::Element(el) => el.to_string_with_ns(),
            Output::ResetDecoder => {
                dec.reset();
                continue;
            }
            Output::StartTls => return false, // never offered over WebSocket
            Output::Close => {
                keep = false;
                "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>".to_string()
            }
        };
        if ws.send(Message::Text(text.into())).await.is_err() {
            return false;
        }
    }
    keep
}
