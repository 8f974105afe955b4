//! The mam scenario: lookups in message archives (XEP-0313, `urn:xmpp:mam:2`, paged
//! with XEP-0059 result set management) that the run fills first, over the server's
//! XMPP interface only.
//!
//! 1. **Marker.** Right after login each user asks for the last message of its
//!    archive (`<set><max>1</max><before/></set>`): whatever earlier runs left there.
//!    This run's part of the archive is everything after it.
//! 2. **Fill** (measured like one-to-one). Users talk in pairs (1–2, 3–4, …); each
//!    sends exactly half of `--archive-size` messages to the other on the open-loop
//!    schedule at `--rate`, so every archive gains `--archive-size` messages: the
//!    user's own and its partner's. Time to delivery, lost and duplicated messages are
//!    counted as in one-to-one.
//! 3. **Pass** (not measured; from the end of the drain for `--setup-seconds`). Each
//!    user pages forward through this run's part of its archive, `<max>` page-size
//!    `<after>` the last id of the page before (the marker for the first page), up to
//!    `complete='true'`, and checks it: every result is a message of this run between
//!    the pair, none twice, ids ascending, and at the end exactly the messages the user
//!    sent and received are there. A MAM query waits for the querying user's own
//!    pending archive writes (read-your-writes, as Meerkat's batched writer does), so
//!    the pass needs no wait for the writer. On the way it keeps page `--page`: the id
//!    before it and the page's ids.
//! 4. **Lookups** (measured, `--lookup-seconds`). Each user queries page `--page` of
//!    its archive on an open-loop schedule (`--lookup-rate` across all users):
//!    `<max>` page-size `<after>` the last id of the page before, i.e. forward paging
//!    with the cursor learned in the pass, as a client scrolling back to where it was.
//!    Latency runs from the scheduled send time to the `<fin/>` (open loop, so a
//!    server that falls behind shows in it). A lookup is correct when exactly the
//!    page's ids arrived, in order, before the `<fin/>`, and its `<last/>` is the
//!    page's last id.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use meerkat_xml::{Element, STREAM_NS};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::conn::{Conn, ConnError};
use crate::frame::BenchMsg;
use crate::report::WorkerReport;
use crate::schedule::Bucket;
use crate::session::{answer_iq, lock, notified, on_message, send_due, Seen, NS_BENCH};
use crate::worker::{unix_us, Ctx};

/// XEP-0313 version 2.
const NS_MAM: &str = "urn:xmpp:mam:2";
/// XEP-0059.
const NS_RSM: &str = "http://jabber.org/protocol/rsm";
/// XEP-0297.
const NS_FORWARD: &str = "urn:xmpp:forward:0";

/// What a query in flight is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The last message before this run.
    Marker,
    /// A page of the pass.
    Pass,
    /// A measured lookup.
    Lookup,
}

/// A query in flight (its IQ id is its `queryid`).
struct Query {
    kind: Kind,
    /// Pass: the `<after/>` it was sent with.
    after: Option<String>,
    /// Lookup: the scheduled send time, Unix µs.
    scheduled_us: u64,
    /// The `<result/>` ids received so far.
    ids: Vec<String>,
    /// Pass: the run, sender and sequence number of each result's message.
    items: Vec<Option<(u64, u32, u64)>>,
}

/// A user's archive as the scenario learns it.
struct Archive {
    k: u32,
    partner: u32,
    /// `None` until the marker query answered; `Some(None)`: the archive was empty.
    marker: Option<Option<String>>,
    /// The pass should run (its time has come).
    pass_due: bool,
    /// Pages of the pass answered.
    pages: u64,
    /// The pass reached the end of the archive (Unix µs).
    done_at: Option<u64>,
    /// The pass stopped on an error.
    failed: bool,
    /// The last id seen in the pass.
    last_id: Option<String>,
    /// (sender, sequence) of this run's messages seen in the pass.
    found: HashSet<(u32, u64)>,
    /// The `<after/>` of page `--page` and its ids, once the pass got there.
    target: Option<(Option<String>, Vec<String>)>,
    /// Messages from the partner delivered during the fill.
    from_partner: u64,
    queries: HashMap<String, Query>,
    next_id: u64,
}

/// Archive ids are fixed-length strings whose order is the ids' order (Meerkat);
/// ordering by (length, text) also covers servers with decimal ids.
fn id_less(a: &str, b: &str) -> bool {
    (a.len(), a) < (b.len(), b)
}

impl Archive {
    fn new(k: u32) -> Archive {
        let bucket = Bucket::of(k, k + 1, 2);
        let partner = if bucket.first == k { k + 1 } else { k - 1 };
        Archive {
            k,
            partner,
            marker: None,
            pass_due: false,
            pages: 0,
            done_at: None,
            failed: false,
            last_id: None,
            found: HashSet::new(),
            target: None,
            from_partner: 0,
            queries: HashMap::new(),
            next_id: 0,
        }
    }

    /// Writes a query with RSM `<max>max</max>` and `<before/>` (from the end) or
    /// `<after>after</after>`; returns its id.
    fn query(&mut self, out: &mut Vec<u8>, kind: Kind, max: u64, after: Option<String>, scheduled_us: u64) -> String {
        self.next_id += 1;
        let tag = match kind {
            Kind::Marker => 'm',
            Kind::Pass => 'p',
            Kind::Lookup => 'l',
        };
        let id = format!("{tag}{}", self.next_id);
        let mut set = format!("<max>{max}</max>");
        match (&after, kind) {
            (_, Kind::Marker) => set.push_str("<before/>"),
            (Some(a), _) => {
                set.push_str("<after>");
                meerkat_xml::escape_text(a, &mut set);
                set.push_str("</after>");
            }
            (None, _) => {}
        }
        // Writing into a Vec cannot fail.
        let _ = write!(
            out,
            "<iq type='set' id='{id}'><query xmlns='{NS_MAM}' queryid='{id}'><set xmlns='{NS_RSM}'>{set}</set>\
             </query></iq>"
        );
        let q = Query { kind, after, scheduled_us, ids: Vec::new(), items: Vec::new() };
        self.queries.insert(id.clone(), q);
        id
    }

    /// Sends the pass's next page, once the marker is known.
    fn next_page(&mut self, ctx: &Ctx, out: &mut Vec<u8>) {
        let Some(marker) = &self.marker else { return };
        let after = if self.pages == 0 { marker.clone() } else { self.last_id.clone() };
        self.query(out, Kind::Pass, ctx.page_size, after, 0);
    }

    /// A `<result/>` message: its id (and, in the pass, its message's bench stamp).
    fn on_result(&mut self, res: &Element) {
        let (Some(qid), Some(id)) = (res.attr("queryid"), res.attr("id")) else { return };
        let Some(q) = self.queries.get_mut(qid) else { return };
        q.ids.push(id.to_owned());
        if q.kind == Kind::Pass {
            let bench = res
                .get_child("forwarded", NS_FORWARD)
                .and_then(|f| f.children().find(|c| c.name() == "message"))
                .and_then(|m| m.get_child("bench", NS_BENCH));
            let num = |a: &str| bench.and_then(|b| b.attr(a)).and_then(|v| v.parse::<u64>().ok());
            let item = match (num("r"), num("s").and_then(|s| u32::try_from(s).ok()), num("n")) {
                (Some(r), Some(s), Some(n)) => Some((r, s, n)),
                _ => None,
            };
            q.items.push(item);
        }
    }

    /// The answer to one of our queries.
    fn on_answer(&mut self, ctx: &Ctx, iq: &Element, q: Query, sent_by_me: u64, out: &mut Vec<u8>, now: u64) {
        let fin = iq.get_child("fin", NS_MAM).filter(|_| iq.attr("type") == Some("result"));
        let mut st = lock(ctx);
        let Some(fin) = fin else {
            let why = format!("iq error {}", iq_condition(iq));
            match q.kind {
                Kind::Lookup => *st.extra.lookup_failures.entry(why).or_default() += 1,
                _ => {
                    self.failed = true;
                    *st.extra.lookup_failures.entry(format!("pass: {why}")).or_default() += 1;
                }
            }
            return;
        };
        let complete = fin.attr("complete") == Some("true");
        let last = fin.get_child("set", NS_RSM).and_then(|s| s.get_child("last", NS_RSM)).map(|l| l.text());
        match q.kind {
            Kind::Marker => {
                self.marker = Some(q.ids.last().cloned());
                if self.pass_due {
                    drop(st);
                    self.next_page(ctx, out);
                }
            }
            Kind::Pass => {
                self.pages += 1;
                st.extra.archive_queries += 1;
                for (id, item) in q.ids.iter().zip(&q.items) {
                    let ordered = self.last_id.as_deref().is_none_or(|l| id_less(l, id));
                    let ours =
                        matches!(item, Some((r, s, _)) if *r == ctx.run_id && (*s == self.k || *s == self.partner));
                    if ordered && ours && item.is_some_and(|(_, s, n)| self.found.insert((s, n))) {
                        st.extra.archive_checked += 1;
                    } else {
                        st.extra.archive_foreign += 1;
                    }
                    self.last_id = Some(id.clone());
                }
                if self.pages == ctx.page && q.ids.len() as u64 == ctx.page_size {
                    self.target = Some((q.after.clone(), q.ids.clone()));
                }
                if complete || q.ids.is_empty() {
                    self.done_at = Some(now);
                    if self.target.is_none() {
                        st.extra.archive_short += 1;
                    }
                    let expected = sent_by_me + self.from_partner;
                    st.extra.archive_expected += expected;
                    st.extra.archive_missing += expected.saturating_sub(self.found.len() as u64);
                } else {
                    drop(st);
                    self.next_page(ctx, out);
                }
            }
            Kind::Lookup => {
                st.extra.lookup_results += q.ids.len() as u64;
                let want = self.target.as_ref().map(|t| t.1.as_slice()).unwrap_or_default();
                match check_page(want, &q.ids, last.as_deref()) {
                    Ok(()) => {
                        st.extra.lookups_ok += 1;
                        st.extra.lookup.record(now.saturating_sub(q.scheduled_us).max(1));
                    }
                    Err(why) => *st.extra.lookup_failures.entry(why.into()).or_default() += 1,
                }
            }
        }
    }

    /// Sends every lookup whose time has come (skips those before the pass found the page).
    fn lookups_due(&mut self, ctx: &Ctx, k: u32, out: &mut Vec<u8>, lseq: &mut u64, total: u64) {
        while *lseq < total {
            let rel = ctx.lookups.time(k, *lseq);
            let scheduled = ctx.tl.instant(rel);
            let now = Instant::now();
            if scheduled > now {
                break;
            }
            *lseq += 1;
            let mut st = lock(ctx);
            st.late.record((now - scheduled).as_micros() as u64);
            let Some((after, _)) = &self.target else {
                st.extra.lookups_skipped += 1;
                continue;
            };
            let after = after.clone();
            st.extra.lookups_sent += 1;
            drop(st);
            self.query(out, Kind::Lookup, ctx.page_size, after, ctx.tl.unix_us(rel));
        }
    }

    /// Nothing in flight but the marker or the pass.
    fn no_lookups_pending(&self) -> bool {
        !self.queries.values().any(|q| q.kind == Kind::Lookup)
    }

    /// At the end of the session: what never finished.
    fn finish(&self, ctx: &Ctx, st: &mut WorkerReport) {
        let unanswered = self.queries.values().filter(|q| q.kind == Kind::Lookup).count() as u64;
        if unanswered > 0 {
            *st.extra.lookup_failures.entry("no answer".into()).or_default() += unanswered;
        }
        if self.failed || self.done_at.is_none_or(|t| t > ctx.tl.unix_us(ctx.tl.lookup_start_us)) {
            st.extra.archive_unchecked += 1;
        }
    }
}

/// Whether a lookup brought exactly the page's ids `want`, in order, and a `<fin/>`
/// whose `<last/>` is the page's last id.
fn check_page(want: &[String], got: &[String], last: Option<&str>) -> Result<(), &'static str> {
    if want.is_empty() || got.len() != want.len() {
        return Err("wrong number of results");
    }
    if got != want {
        return Err("wrong ids");
    }
    if last != want.last().map(String::as_str) {
        return Err("wrong <last/> in <fin/>");
    }
    Ok(())
}

/// The defined condition of an IQ error.
fn iq_condition(iq: &Element) -> String {
    iq.children()
        .find(|c| c.name() == "error")
        .and_then(|e| e.children().find(|c| c.name() != "text").map(|c| c.name().to_owned()))
        .unwrap_or_else(|| "?".into())
}

/// Runs user `k`'s session: marker, fill, pass and lookups, then closes.
pub async fn online(ctx: &Ctx, k: u32, mut conn: Conn, notify: Option<Arc<Notify>>, lookup: Option<Arc<Notify>>) {
    let bucket = Bucket::of(k, ctx.users, 2);
    let mut seen = Seen::new(bucket);
    let total = if notify.is_some() { ctx.plan.count(k) } else { 0 };
    let ltotal = if lookup.is_some() { ctx.lookups.count(k) } else { 0 };
    let (mut seq, mut lseq) = (0u64, 0u64);
    let mut a = Archive::new(k);
    let pass = tokio::time::sleep_until(ctx.tl.instant(ctx.tl.close_us));
    let lookups_over = tokio::time::sleep_until(ctx.tl.instant(ctx.tl.lookup_end_us));
    let quit = tokio::time::sleep_until(ctx.tl.instant(ctx.tl.lookup_end_us + ctx.drain_us));
    tokio::pin!(pass, lookups_over, quit);
    let mut over = false;
    a.query(&mut conn.out, Kind::Marker, 1, None, 0);
    let ended: Option<String> = 'session: {
        if let Err(e) = conn.flush().await {
            break 'session Some(format!("send: {}", ConnError::Io(e)));
        }
        if let Err(reason) = process(ctx, &mut conn, &mut seen, &mut a, seq) {
            break 'session Some(reason);
        }
        loop {
            tokio::select! {
                biased;
                _ = notified(notify.as_deref()), if seq < total => {
                    if let Err(e) = send_due(ctx, k, bucket, &mut conn, &mut seq, total).await {
                        break Some(format!("send: {}", ConnError::Io(e)));
                    }
                }
                _ = notified(lookup.as_deref()), if lseq < ltotal => {
                    a.lookups_due(ctx, k, &mut conn.out, &mut lseq, ltotal);
                }
                r = conn.readable() => {
                    if let Err(e) = r {
                        break Some(ConnError::Io(e).to_string());
                    }
                    if let Err(e) = conn.read_ready().await {
                        break Some(ConnError::Io(e).to_string());
                    }
                    if let Err(reason) = process(ctx, &mut conn, &mut seen, &mut a, seq) {
                        break Some(reason);
                    }
                    if conn.is_eof() {
                        break Some(ConnError::Closed.to_string());
                    }
                }
                _ = &mut pass, if !a.pass_due => {
                    a.pass_due = true;
                    a.next_page(ctx, &mut conn.out);
                }
                _ = &mut lookups_over, if !over => over = true,
                _ = &mut quit => break None,
            }
            if !conn.out.is_empty() {
                if let Err(e) = conn.flush().await {
                    break Some(format!("send: {}", ConnError::Io(e)));
                }
            }
            // Done early: every lookup sent and answered, the pass over.
            if over && lseq == ltotal && a.no_lookups_pending() && (a.done_at.is_some() || a.failed) {
                break None;
            }
        }
    };
    {
        let mut st = lock(ctx);
        a.finish(ctx, &mut st);
        if let Some(reason) = &ended {
            st.disconnected(reason.clone());
        }
    }
    if ended.is_none() {
        conn.close(Instant::now() + Duration::from_secs(5)).await;
    }
}

/// Handles every complete element the decoder holds; queues replies in `conn.out`.
/// `Err` is the reason the session is over.
fn process(ctx: &Ctx, conn: &mut Conn, seen: &mut Seen, a: &mut Archive, sent: u64) -> Result<(), String> {
    let now = unix_us();
    loop {
        let Some(el) = conn.next_element()? else { return Ok(()) };
        match el.name() {
            "message" => {
                if let Some(b) = el.get_child("bench", NS_BENCH) {
                    let from_partner = b.attr("s").and_then(|s| s.parse::<u32>().ok()) == Some(a.partner);
                    if on_message(ctx, &BenchMsg::from_element(&el, b), now, seen, &mut lock(ctx)) && from_partner {
                        a.from_partner += 1;
                    }
                } else if let Some(res) = el.get_child("result", NS_MAM) {
                    a.on_result(res);
                }
            }
            "iq" => {
                let ours = matches!(el.attr("type"), Some("result" | "error"))
                    .then(|| el.attr("id").and_then(|id| a.queries.remove(id)))
                    .flatten();
                match ours {
                    Some(q) => a.on_answer(ctx, &el, q, sent, &mut conn.out, now),
                    None => {
                        answer_iq(&el, &mut conn.out);
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_and_id_order() {
        assert_eq!((Archive::new(1).partner, Archive::new(2).partner), (2, 1));
        assert_eq!((Archive::new(7).partner, Archive::new(8).partner), (8, 7));
        assert!(id_less("AAAB", "AAAC") && !id_less("AAAC", "AAAB") && id_less("99", "100"));
    }

    #[test]
    fn lookups_must_bring_the_page_in_order() {
        let page: Vec<String> = ["A", "B", "C"].map(String::from).to_vec();
        assert_eq!(check_page(&page, &page, Some("C")), Ok(()));
        assert_eq!(check_page(&page, &page[..2], Some("B")), Err("wrong number of results"));
        let swapped: Vec<String> = ["A", "C", "B"].map(String::from).to_vec();
        assert_eq!(check_page(&page, &swapped, Some("C")), Err("wrong ids"));
        assert_eq!(check_page(&page, &page, None), Err("wrong <last/> in <fin/>"));
        assert_eq!(check_page(&[], &[], None), Err("wrong number of results"));
    }

    #[test]
    fn queries_page_forward_from_the_marker() {
        let mut a = Archive::new(1);
        let mut out = Vec::new();
        let id = a.query(&mut out, Kind::Marker, 1, None, 0);
        assert_eq!(
            String::from_utf8(std::mem::take(&mut out)).unwrap(),
            format!(
                "<iq type='set' id='{id}'><query xmlns='{NS_MAM}' queryid='{id}'><set xmlns='{NS_RSM}'>\
                 <max>1</max><before/></set></query></iq>"
            )
        );
        let id = a.query(&mut out, Kind::Lookup, 50, Some("X&Y".into()), 7);
        assert!(String::from_utf8(out).unwrap().contains("<max>50</max><after>X&amp;Y</after></set>"));
        assert_eq!(a.queries[&id].scheduled_us, 7);
    }
}
