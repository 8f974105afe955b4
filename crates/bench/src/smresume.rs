//! The sm-resume scenario: one-to-one messaging over sessions with stream management
//! (XEP-0198) and resumption, whose connections are cut abruptly on a fixed schedule
//! (`--disconnect-per-s`) and resumed at once with `<resume previd h/>`.
//!
//! The client side follows the XEP exactly, so that "exactly once" can be checked
//! honestly: every stanza received after `<enabled/>` counts in `h`, every `<r/>` gets
//! `<a h/>` at once, and the stanzas sent are kept until the server acknowledges them
//! (`<r/>` after each batch of sends). A user that sends is cut right after its first
//! send at or after its scheduled cut time (so that cuts catch messages in flight, not
//! acknowledged yet); one that does not send is cut on time. A cut drops the socket
//! with a TCP reset and no `</stream:stream>`; the resume reports the stanzas the
//! server had received (`<resumed h/>`) and the client sends the rest again. Messages are deduplicated by
//! (sender, sequence), so a server that delivers a message twice across a resume shows
//! `duplicated > 0`, and one that drops some shows `lost > 0`.
//!
//! Unacknowledged messages are kept as their sequence numbers only: a message is a
//! function of (sender, sequence) (target, stamp, id), so it is written again from
//! those when it must be re-sent.

use std::collections::VecDeque;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use meerkat_xml::STREAM_NS;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::conn::{Conn, ConnError};
use crate::frame::BenchMsg;
use crate::login::{self, Resumed, Session, Want, NS_SM};
use crate::sasl::NonceGen;
use crate::schedule::Bucket;
use crate::session::{answer_iq, lock, notified, on_message, write_message, Seen, NS_BENCH};
use crate::worker::{source_of, unix_us, Ctx};

/// An unacknowledged stanza that is not a message (an IQ answer): never sent again.
const OTHER: u64 = u64::MAX;

/// The client's stream management counters.
struct Sm {
    /// Resumption id.
    id: String,
    /// Stanzas received since `<enabled/>` (the client's `h`, mod 2^32).
    h_in: u32,
    /// The server's last acknowledged count of stanzas received from the client.
    acked: u32,
    /// Sent and not yet acknowledged, oldest first: message sequence numbers, or
    /// [`OTHER`].
    unacked: VecDeque<u64>,
}

impl Sm {
    fn new(id: String) -> Sm {
        Sm { id, h_in: 0, acked: 0, unacked: VecDeque::new() }
    }

    /// Takes `<a h/>` (or `<resumed h/>`): forgets what the server has; `false` when
    /// `h` acknowledges more than was sent.
    fn ack(&mut self, h: u32) -> bool {
        let n = h.wrapping_sub(self.acked) as usize;
        if n > self.unacked.len() {
            return false;
        }
        self.unacked.drain(..n);
        self.acked = h;
        true
    }
}

/// Runs user `k`'s session until the end of the run, cutting and resuming its
/// connection at the times in `cuts`.
pub async fn online(
    ctx: &Ctx,
    k: u32,
    sess: Session,
    notify: Option<Arc<Notify>>,
    cuts: Vec<u64>,
    mut nonces: NonceGen,
) {
    let bucket = Bucket::of(k, ctx.users, ctx.bucket_size);
    let mut seen = Seen::new(bucket);
    let total = if notify.is_some() { ctx.plan.count(k) } else { 0 };
    let mut seq = 0u64;
    let mut conn = sess.conn;
    let mut sm = Sm::new(sess.sm_id.expect("logged in with stream management"));
    let mut cuts = cuts.into_iter().peekable();
    let close = tokio::time::sleep_until(ctx.tl.instant(ctx.tl.close_us));
    tokio::pin!(close);
    if let Err(reason) = received(ctx, &mut conn, &mut seen, &mut sm, false).await {
        lock(ctx).disconnected(reason);
        return;
    }
    loop {
        let next_cut = cuts.peek().map(|&t| ctx.tl.instant(t));
        // A user that sends is cut right after a send at or after its cut time, so that
        // some cuts catch messages the server has not acknowledged yet; one that does
        // not send is cut on time.
        let mut cut_now = false;
        let ended: Option<String> = tokio::select! {
            biased;
            _ = notified(notify.as_deref()), if seq < total => {
                let r = send_due(ctx, k, bucket, &mut conn, &mut sm, &mut seq, total).await;
                cut_now = next_cut.is_some_and(|t| t <= Instant::now());
                r.err().map(|e| format!("send: {}", ConnError::Io(e)))
            }
            _ = tokio::time::sleep_until(next_cut.unwrap_or_else(Instant::now)), if next_cut.is_some() && seq >= total => {
                cut_now = true;
                None
            }
            r = conn.readable() => {
                match r {
                    Err(e) => Some(ConnError::Io(e).to_string()),
                    Ok(()) => received(ctx, &mut conn, &mut seen, &mut sm, true).await.err(),
                }
            }
            _ = &mut close => {
                // Acknowledge everything first: the server would otherwise store the
                // unacknowledged stanzas offline when the session ends.
                let _ = write!(conn.out, "<a xmlns='{NS_SM}' h='{}'/>", sm.h_in);
                conn.close(Instant::now() + Duration::from_secs(5)).await;
                return;
            }
        };
        if let Some(reason) = ended {
            lock(ctx).disconnected(reason);
            return;
        }
        if cut_now {
            cuts.next();
            match cut_and_resume(ctx, k, bucket, conn, &mut sm, &mut nonces).await {
                Ok(c) => conn = c,
                Err(reason) => {
                    lock(ctx).disconnected(reason);
                    return;
                }
            }
            // The stanzas the server sent again right after `<resumed/>` may already be
            // decoded-ready: handle them now, not at the next socket read.
            if let Err(reason) = received(ctx, &mut conn, &mut seen, &mut sm, false).await {
                lock(ctx).disconnected(reason);
                return;
            }
        }
    }
}

/// Reads what is there (with `read`; without, only what the decoder already holds:
/// a new connection's first stanzas arrive with `<resumed/>`) and handles it; `Err`
/// is the reason the session is over.
async fn received(ctx: &Ctx, conn: &mut Conn, seen: &mut Seen, sm: &mut Sm, read: bool) -> Result<(), String> {
    if read {
        conn.read_ready().await.map_err(|e| ConnError::Io(e).to_string())?;
    }
    process(ctx, conn, seen, sm)?;
    if !conn.out.is_empty() {
        conn.flush().await.map_err(|e| ConnError::Io(e).to_string())?;
    }
    if conn.is_eof() {
        return Err(ConnError::Closed.to_string());
    }
    Ok(())
}

/// Sends every message of user `k` whose scheduled time has come, then asks for an
/// acknowledgement.
async fn send_due(
    ctx: &Ctx,
    k: u32,
    bucket: Bucket,
    conn: &mut Conn,
    sm: &mut Sm,
    seq: &mut u64,
    total: u64,
) -> std::io::Result<()> {
    let mut wrote = false;
    while *seq < total {
        let rel = ctx.plan.time(k, *seq);
        let scheduled = ctx.tl.instant(rel);
        let now = Instant::now();
        if scheduled > now {
            break;
        }
        let Some(to) = bucket.target(k, *seq) else { break };
        write_message(ctx, &mut conn.out, k, to, *seq, ctx.tl.unix_us(rel))?;
        sm.unacked.push_back(*seq);
        *seq += 1;
        wrote = true;
        let mut st = lock(ctx);
        st.sent += 1;
        st.late.record((now - scheduled).as_micros() as u64);
    }
    if wrote {
        write!(conn.out, "<r xmlns='{NS_SM}'/>")?;
        conn.flush().await?;
    }
    Ok(())
}

/// Handles every complete element the decoder holds, counting stanzas for `h`.
fn process(ctx: &Ctx, conn: &mut Conn, seen: &mut Seen, sm: &mut Sm) -> Result<(), String> {
    let now = unix_us();
    loop {
        let Some(el) = conn.next_element()? else { return Ok(()) };
        if el.ns() == NS_SM {
            match el.name() {
                "r" => {
                    let _ = write!(conn.out, "<a xmlns='{NS_SM}' h='{}'/>", sm.h_in);
                }
                "a" => {
                    let ok = el.attr("h").and_then(|h| h.parse::<u32>().ok()).is_some_and(|h| sm.ack(h));
                    if !ok {
                        lock(ctx).extra.bad_acks += 1;
                    }
                }
                _ => {}
            }
            continue;
        }
        match el.name() {
            "message" => {
                sm.h_in = sm.h_in.wrapping_add(1);
                if let Some(b) = el.get_child("bench", NS_BENCH) {
                    on_message(ctx, &BenchMsg::from_element(&el, b), now, seen, &mut lock(ctx));
                }
            }
            "presence" => sm.h_in = sm.h_in.wrapping_add(1),
            "iq" => {
                sm.h_in = sm.h_in.wrapping_add(1);
                if answer_iq(&el, &mut conn.out) {
                    sm.unacked.push_back(OTHER);
                }
            }
            "error" if el.ns() == STREAM_NS => {
                let cond = el.children().next().map(|c| c.name().to_owned()).unwrap_or_default();
                return Err(format!("stream error {cond}"));
            }
            _ => {}
        }
    }
}

/// Cuts the connection abruptly and resumes the session on a new one; when the
/// resumption fails, logs in afresh. Either way the messages the server did not
/// acknowledge are sent again. `Err`: the user could not get back online.
async fn cut_and_resume(
    ctx: &Ctx,
    k: u32,
    bucket: Bucket,
    conn: Conn,
    sm: &mut Sm,
    nonces: &mut NonceGen,
) -> Result<Conn, String> {
    conn.abort();
    let t0 = Instant::now();
    lock(ctx).extra.cuts += 1;
    let name = format!("{}{k}", ctx.setup.prefix);
    let source = source_of(ctx, k);
    let r = Box::pin(login::resume(&ctx.setup, &name, source, nonces.next(), &sm.id, sm.h_in)).await;
    let failure = match r {
        Ok(Resumed::Ok { conn, h }) => {
            let mut conn = *conn;
            let elapsed = t0.elapsed().as_micros() as u64;
            let good = sm.ack(h);
            let resent = resend(ctx, k, bucket, &mut conn, sm).map_err(|e| ConnError::Io(e).to_string())?;
            conn.flush().await.map_err(|e| format!("send: {}", ConnError::Io(e)))?;
            let mut st = lock(ctx);
            st.extra.resumes_ok += 1;
            st.extra.resume.record(elapsed.max(1));
            st.extra.resent += resent;
            if !good {
                st.extra.bad_acks += 1;
            }
            return Ok(conn);
        }
        Ok(Resumed::Failed(cond)) => format!("failed: {cond}"),
        Err(e) => e.to_string(),
    };
    *lock(ctx).extra.resume_failures.entry(failure).or_default() += 1;
    // The session is gone: a new one, where the unacknowledged messages are sent again
    // (as a client would; the receivers count any copy as a duplicate).
    let want = Want { roster: false, sm: true };
    let r = Box::pin(login::login_with(&ctx.setup, &name, source, nonces.next(), want)).await;
    let sess = r.map_err(|e| format!("login after a failed resume: {e}"))?;
    let mut conn = sess.conn;
    let old = std::mem::replace(sm, Sm::new(sess.sm_id.expect("logged in with stream management")));
    sm.unacked = old.unacked;
    resend(ctx, k, bucket, &mut conn, sm).map_err(|e| ConnError::Io(e).to_string())?;
    conn.flush().await.map_err(|e| format!("send: {}", ConnError::Io(e)))?;
    Ok(conn)
}

/// Writes again the messages in `sm.unacked` (dropping IQ answers, which are not
/// repeated) and asks for an acknowledgement; returns how many.
fn resend(ctx: &Ctx, k: u32, bucket: Bucket, conn: &mut Conn, sm: &mut Sm) -> std::io::Result<u64> {
    sm.unacked.retain(|&s| s != OTHER);
    for &seq in &sm.unacked {
        if let Some(to) = bucket.target(k, seq) {
            write_message(ctx, &mut conn.out, k, to, seq, ctx.tl.unix_us(ctx.plan.time(k, seq)))?;
        }
    }
    let n = sm.unacked.len() as u64;
    if n > 0 {
        write!(conn.out, "<r xmlns='{NS_SM}'/>")?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_drop_what_the_server_has() {
        let mut sm = Sm::new("id".into());
        sm.unacked.extend([0, OTHER, 1, 2]);
        assert!(sm.ack(2));
        assert_eq!(sm.unacked, [1, 2]);
        assert!(sm.ack(2), "the same h again is harmless");
        assert!(!sm.ack(5), "more than was sent");
        assert!(sm.ack(4));
        assert!(sm.unacked.is_empty());
        // Counters wrap at 2^32 (XEP-0198 §4).
        let mut w = Sm::new("w".into());
        w.acked = u32::MAX;
        w.unacked.extend([7, 8]);
        assert!(w.ack(0));
        assert_eq!(w.unacked, [8]);
    }
}
