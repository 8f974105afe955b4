//! A logged-in simulated user: sends its scheduled messages (one-to-one), receives and
//! checks everyone's, answers the server's pings and roster pushes, and closes the
//! stream cleanly at the end of the run.
//!
//! A benchmark message:
//! `<message to='user7@localhost' type='chat' id='s3-12'><body>…</body>
//! <bench xmlns='urn:meerkat:bench' r='RUN' t='SCHEDULED_UNIX_US' s='3' n='12'/></message>`

use std::io::Write as _;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use meerkat_xml::{Element, STREAM_NS};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::conn::{Conn, ConnError, Incoming};
use crate::frame::BenchMsg;
use crate::report::WorkerReport;
use crate::schedule::Bucket;
use crate::worker::{unix_us, Ctx};

/// The namespace of the `<bench/>` element.
pub const NS_BENCH: &str = "urn:meerkat:bench";
/// Sequence numbers above this are not tracked for duplicates (bounds memory).
const MAX_TRACKED_SEQ: u64 = 1 << 24;

/// Which messages a user has received, per sender of its bucket (bit per seq).
pub(crate) struct Seen {
    bucket: Bucket,
    bits: Vec<Vec<u64>>,
}

impl Seen {
    /// Nothing seen yet from the members of `bucket`.
    pub(crate) fn new(bucket: Bucket) -> Seen {
        Seen { bucket, bits: Vec::new() }
    }

    /// `Some(true)` the first time (sender, seq) is seen, `Some(false)` for a copy,
    /// `None` for a sender outside the bucket or an untrackable seq.
    pub(crate) fn mark(&mut self, sender: u32, seq: u64) -> Option<bool> {
        if !self.bucket.contains(sender) || seq > MAX_TRACKED_SEQ {
            return None;
        }
        let slot = (sender - self.bucket.first) as usize;
        if self.bits.len() <= slot {
            self.bits.resize_with(slot + 1, Vec::new);
        }
        let words = &mut self.bits[slot];
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if words.len() <= w {
            words.resize(w + 1, 0);
        }
        let new = words[w] & (1 << b) == 0;
        words[w] |= 1 << b;
        Some(new)
    }
}

pub(crate) fn lock(ctx: &Ctx) -> MutexGuard<'_, WorkerReport> {
    ctx.stats.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) async fn notified(n: Option<&Notify>) {
    match n {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

/// Runs user `k`'s session until the end of the run (or until the server drops it).
pub async fn online(ctx: &Ctx, k: u32, mut conn: Conn, notify: Option<Arc<Notify>>) {
    let bucket = Bucket::of(k, ctx.users, ctx.bucket_size);
    let mut seen = Seen::new(bucket);
    let total = if notify.is_some() { ctx.plan.count(k) } else { 0 };
    let mut seq = 0u64;
    let close = tokio::time::sleep_until(ctx.tl.instant(ctx.tl.close_us));
    tokio::pin!(close);
    conn.fast_messages();
    // What arrived with the login's last answer is handled now, not at the next read.
    if let Err(reason) = process(ctx, &mut conn, &mut seen) {
        lock(ctx).disconnected(reason);
        return;
    }
    let ended: Option<String> = loop {
        tokio::select! {
            biased;
            _ = notified(notify.as_deref()), if seq < total => {
                if let Err(e) = send_due(ctx, k, bucket, &mut conn, &mut seq, total).await {
                    break Some(format!("send: {}", ConnError::Io(e)));
                }
            }
            r = conn.readable() => {
                if let Err(e) = r {
                    break Some(ConnError::Io(e).to_string());
                }
                if let Err(e) = conn.read_ready().await {
                    break Some(ConnError::Io(e).to_string());
                }
                if let Err(reason) = process(ctx, &mut conn, &mut seen) {
                    break Some(reason);
                }
                if !conn.out.is_empty() {
                    if let Err(e) = conn.flush().await {
                        break Some(ConnError::Io(e).to_string());
                    }
                }
                if conn.is_eof() {
                    break Some(ConnError::Closed.to_string());
                }
            }
            _ = &mut close => break None,
        }
    };
    match ended {
        Some(reason) => lock(ctx).disconnected(reason),
        None => conn.close(Instant::now() + Duration::from_secs(5)).await,
    }
}

/// Sends every message of user `k` whose scheduled time has come.
pub(crate) async fn send_due(
    ctx: &Ctx,
    k: u32,
    bucket: Bucket,
    conn: &mut Conn,
    seq: &mut u64,
    total: u64,
) -> std::io::Result<()> {
    while *seq < total {
        let rel = ctx.plan.time(k, *seq);
        let scheduled = ctx.tl.instant(rel);
        let now = Instant::now();
        if scheduled > now {
            break;
        }
        let Some(to) = bucket.target(k, *seq) else { break };
        write_message(ctx, &mut conn.out, k, to, *seq, ctx.tl.unix_us(rel))?;
        conn.flush().await?;
        *seq += 1;
        let mut st = lock(ctx);
        st.sent += 1;
        st.late.record((now - scheduled).as_micros() as u64);
    }
    Ok(())
}

/// Writes message `n` of user `k` to user `to`, stamped with its scheduled time
/// `t_unix` (Unix µs); formatted straight into the output buffer.
pub(crate) fn write_message(ctx: &Ctx, out: &mut Vec<u8>, k: u32, to: u32, n: u64, t_unix: u64) -> std::io::Result<()> {
    write!(
        out,
        "<message to='{}{to}{}' type='chat' id='s{k}-{n}'><body>{}</body>\
         <bench xmlns='{NS_BENCH}' r='{}' t='{t_unix}' s='{k}' n='{n}'/></message>",
        ctx.to_prefix, ctx.to_suffix, ctx.body, ctx.run_id,
    )
}

/// Handles every complete element the decoder holds; queues replies in `conn.out`.
/// `Err` is the reason the session is over.
fn process(ctx: &Ctx, conn: &mut Conn, seen: &mut Seen) -> Result<(), String> {
    let now = unix_us();
    let mut stats: Option<MutexGuard<'_, WorkerReport>> = None;
    loop {
        let el = match conn.next_incoming()? {
            None => return Ok(()),
            Some(Incoming::Bench(m)) => {
                on_message(ctx, &m, now, seen, stats.get_or_insert_with(|| lock(ctx)));
                continue;
            }
            Some(Incoming::Element(el)) => el,
        };
        match el.name() {
            "message" => {
                if let Some(b) = el.get_child("bench", NS_BENCH) {
                    let st = stats.get_or_insert_with(|| lock(ctx));
                    on_message(ctx, &BenchMsg::from_element(&el, b), now, seen, st);
                }
            }
            "iq" => {
                answer_iq(&el, &mut conn.out);
            }
            "error" if el.ns() == STREAM_NS => {
                let cond = el.children().next().map(|c| c.name().to_owned()).unwrap_or_default();
                return Err(format!("stream error {cond}"));
            }
            _ => {}
        }
    }
}

/// Counts a received bench message; returns whether it was a first delivery.
pub(crate) fn on_message(ctx: &Ctx, m: &BenchMsg, now: u64, seen: &mut Seen, st: &mut WorkerReport) -> bool {
    let (Some(run), Some(t), Some(s), Some(n)) = (m.r, m.t, m.s, m.n) else {
        st.stale += 1;
        return false;
    };
    if m.error {
        st.errors += 1;
        return false;
    }
    if run != ctx.run_id {
        st.stale += 1;
        return false;
    }
    let Ok(sender) = u32::try_from(s) else {
        st.stale += 1;
        return false;
    };
    match seen.mark(sender, n) {
        Some(true) => {
            st.delivered += 1;
            st.ttd.record(now.saturating_sub(t).max(1));
            true
        }
        Some(false) => {
            st.duplicated += 1;
            false
        }
        None => {
            st.stale += 1;
            false
        }
    }
}

/// Answers pings and roster pushes with a result, other requests with
/// `<service-unavailable/>`; ignores responses. Returns whether it wrote an answer
/// (a stanza, for stream management's count).
pub(crate) fn answer_iq(iq: &Element, out: &mut Vec<u8>) -> bool {
    let ty = iq.attr("type").unwrap_or("");
    if ty != "get" && ty != "set" {
        return false;
    }
    let mut head = String::from("<iq type='");
    let ok = iq.has_child("ping", "urn:xmpp:ping") || (ty == "set" && iq.has_child("query", "jabber:iq:roster"));
    head.push_str(if ok { "result" } else { "error" });
    head.push('\'');
    if let Some(id) = iq.attr("id") {
        head.push_str(" id='");
        meerkat_xml::escape_attr(id, &mut head);
        head.push('\'');
    }
    if let Some(from) = iq.attr("from") {
        head.push_str(" to='");
        meerkat_xml::escape_attr(from, &mut head);
        head.push('\'');
    }
    if ok {
        head.push_str("/>");
    } else {
        head.push_str(
            "><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
        );
    }
    out.extend_from_slice(head.as_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_detected_per_sender() {
        let mut s = Seen { bucket: Bucket { first: 11, len: 10 }, bits: Vec::new() };
        assert_eq!(s.mark(12, 0), Some(true));
        assert_eq!(s.mark(13, 0), Some(true));
        assert_eq!(s.mark(12, 0), Some(false));
        assert_eq!(s.mark(12, 200), Some(true));
        assert_eq!(s.mark(12, 200), Some(false));
        assert_eq!(s.mark(21, 0), None);
        assert_eq!(s.mark(12, u64::MAX), None);
    }

    #[test]
    fn pings_get_results_and_unknown_requests_errors() {
        let ping = meerkat_xml::parse_element(
            "<iq xmlns='jabber:client' type='get' id='p&amp;1' from='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
            &Default::default(),
        )
        .unwrap();
        let mut out = Vec::new();
        answer_iq(&ping, &mut out);
        assert_eq!(out, b"<iq type='result' id='p&amp;1' to='localhost'/>");
        let other = meerkat_xml::parse_element(
            "<iq xmlns='jabber:client' type='get' id='v'><query xmlns='jabber:iq:version'/></iq>",
            &Default::default(),
        )
        .unwrap();
        out.clear();
        answer_iq(&other, &mut out);
        assert!(out.starts_with(b"<iq type='error' id='v'><error type='cancel'><service-unavailable"));
        let result =
            meerkat_xml::parse_element("<iq xmlns='jabber:client' type='result' id='x'/>", &Default::default())
                .unwrap();
        out.clear();
        answer_iq(&result, &mut out);
        assert!(out.is_empty());
    }
}
