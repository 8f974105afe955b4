//! The presence scenario (RFC 6121 only, so that it runs on any server).
//!
//! Rosters: the users form a ring; user k's contacts are the K/2 users on each side
//! (`--contacts K`), every pair with a mutual `both` subscription.
//!
//! Setup phase (after the login ramp, not measured, `--setup-seconds`): each user
//! reads its roster at login and sends `<presence type='subscribe'/>` to the contacts
//! ahead of it in the ring that it is not yet subscribed to; it approves
//! (`subscribed`) every request from a contact, and asks that contact back once the
//! roster push shows the approval. Each pair thus subscribes one direction after the
//! other, as people do, never both at once, and never a request racing the approval
//! before it. (Both happen to lose a direction on Meerkat: its outbound subscription
//! path reads the session roster cache, which learns of the previous change only when
//! the roster push is generated.) The roster
//! pushes tell a user when all its contacts are at `both`; the time until then is
//! reported (`setup_p50_us`, `setup_max_us`). Subscriptions still missing are
//! requested again once the server has been quiet (no roster push, no subscription
//! presence) for 3 s: on Meerkat some requests stayed pending forever under load
//! (`ask='subscribe'` while the contact's roster already said `both`), and a new
//! request gets the answer. A second run on the same accounts finds complete rosters and sends
//! nothing. Benchmark users in the roster that are not contacts (left by a run with
//! other --users or --contacts) are removed from it at setup. Users still incomplete
//! when the measured phase starts are counted (`setup_incomplete`) and make the run
//! invalid.
//!
//! Measured phase: every user sends presence updates on the open-loop schedule
//! (`--interval-ms` or `--rate`), each a `<show/>` and `<status/>` change stamped with
//! `<bench r t s n c/>`: run, scheduled time (Unix µs), sender, schedule index, and
//! `c`, the sender's count of updates actually sent (1, 2, 3…). The server broadcasts
//! each update to the K contacts, who measure time to delivery. With `--churn-per-s`,
//! users log out cleanly on a fixed schedule and log in again at once (contacts
//! receive unavailable, then available presence); updates that come due while a user
//! is logged out are skipped, not sent late.
//!
//! Loss accounting: within one receiver session, the updates of each contact must
//! arrive with consecutive `c`; a gap is a loss, a repeated or older `c` a duplicate.
//! In a receiver's first session (online before the measured phase) the first update
//! must be `c = 1`. After a churn login, the server's answers to the receiver's probes
//! (each contact's current presence, stamped before the login) give the starting
//! point; they are counted as `replayed`, outside TTD, and so is the second copy of an
//! update sent while the receiver was logging in (once as a broadcast, once as the
//! probe answer). When the measured phase ends,
//! every user sends a final stamp `<bench s c f='1'/>` with its total, which reveals
//! losses at the tail; a final stamp that never arrives is counted (`finals_missing`)
//! and makes the run invalid. Updates lost while a receiver was logging out or in cannot be
//! known and are not counted.

use std::sync::Arc;
use std::time::Duration;

use meerkat_xml::{Element, StreamEvent, STREAM_NS};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::conn::{Conn, ConnError};
use crate::login::{self, Session, Want};
use crate::report::WorkerReport;
use crate::sasl::NonceGen;
use crate::session::{answer_iq, lock, notified, NS_BENCH};
use crate::worker::{source_of, unix_us, Ctx};

const NS_ROSTER: &str = "jabber:iq:roster";
/// Subscription bits: we see the contact's presence / the contact sees ours.
const TO: u8 = 1;
const FROM: u8 = 2;
/// Roster item bit: our subscription request is pending (`ask='subscribe'`).
const ASK: u8 = 4;
/// A contact whose update count is unknown in this session (no baseline yet).
const UNKNOWN: u32 = u32::MAX;
/// Setup: how often incomplete rosters are looked at.
const SETUP_RETRY: Duration = Duration::from_secs(1);
/// Setup: a missing subscription is requested again only after the server has been
/// quiet (no roster push, no subscription presence) this long, so that a server still
/// working through the requests is not flooded.
const SETUP_QUIET: Duration = Duration::from_secs(3);
/// `<show/>` values the updates cycle through.
const SHOWS: [&str; 4] = ["away", "chat", "dnd", "xa"];

/// User k's contacts in the ring of `users`: K/2 on each side.
#[derive(Debug, Clone, Copy)]
pub struct Ring {
    /// The user.
    pub k: u32,
    /// Users in the ring.
    pub users: u32,
    /// K/2.
    pub half: u32,
}

impl Ring {
    /// Contact `slot` (0..K): slots 0..K/2 follow k, slots K/2..K precede it.
    pub fn contact(&self, slot: u32) -> u32 {
        let n = self.users;
        let (k0, d) = (self.k - 1, slot % self.half + 1);
        let u = if slot < self.half { (k0 + d) % n } else { (k0 + n - d) % n };
        u + 1
    }

    /// The slot of user `u`, `None` if `u` is not a contact.
    pub fn slot(&self, u: u32) -> Option<u32> {
        if u == 0 || u > self.users || u == self.k {
            return None;
        }
        let n = self.users;
        let ahead = (u + n - self.k) % n;
        if ahead <= self.half {
            return Some(ahead - 1);
        }
        let behind = n - ahead;
        (behind <= self.half).then(|| self.half + behind - 1)
    }
}

/// The user number in a JID `PREFIXn@DOMAIN[/resource]`, if it is one of ours.
fn user_of(ctx: &Ctx, jid: &str) -> Option<u32> {
    let bare = jid.split('/').next()?;
    let (node, domain) = bare.split_once('@')?;
    if !domain.eq_ignore_ascii_case(&ctx.domain) {
        return None;
    }
    let digits = node.get(ctx.setup.prefix.len()..)?;
    if !node[..ctx.setup.prefix.len()].eq_ignore_ascii_case(&ctx.setup.prefix) {
        return None;
    }
    digits.parse().ok()
}

/// What a receiver knows in its current session.
struct Recv {
    /// Per contact slot: the last update count received ([`UNKNOWN`] before a baseline).
    last: Vec<u32>,
    /// Unix µs at which this session was ready: updates stamped earlier are replays.
    ready_unix: u64,
    /// Per contact slot: its final stamp arrived.
    finals: Vec<bool>,
    /// Per contact slot, after a churn login: the answer to our probe may still come
    /// (it is the contact's current presence, which may also reach us as a broadcast).
    probe: Vec<bool>,
}

/// How long after a churn login a second copy of a contact's current presence counts
/// as the probe answer rather than as a duplicate.
const PROBE_WINDOW_US: u64 = 5_000_000;

impl Recv {
    fn new(contacts: u32, first: bool) -> Recv {
        let n = contacts as usize;
        Recv {
            last: vec![if first { 0 } else { UNKNOWN }; n],
            ready_unix: unix_us(),
            finals: vec![false; n],
            probe: vec![!first; n],
        }
    }
}

/// The sender's side.
struct Send {
    /// Next schedule index.
    seq: u64,
    /// Updates scheduled in total.
    total: u64,
    /// Updates actually sent.
    count: u32,
    /// The final stamp was sent.
    final_sent: bool,
}

/// Runs user `k` until the end of the run: setup, updates, churn (logouts at the
/// times in `churn`), final stamp, clean close.
pub async fn online(
    ctx: &Ctx,
    k: u32,
    sess: Session,
    notify: Option<Arc<Notify>>,
    churn: Vec<u64>,
    mut nonces: NonceGen,
) {
    let ring = Ring { k, users: ctx.users, half: ctx.contacts / 2 };
    let mut subs = vec![0u8; ctx.contacts as usize];
    // Benchmark users in the roster that are not contacts (an earlier run with another
    // --contacts or --users): removed at setup, or they would receive updates too.
    let mut stray: Vec<u32> = Vec::new();
    if let Some(query) = sess.roster.as_ref().and_then(|r| r.get_child("query", NS_ROSTER)) {
        for item in query.children().filter(|c| c.name() == "item") {
            roster_item(ctx, &ring, item, &mut subs);
            match item.attr("jid").and_then(|j| user_of(ctx, j)) {
                Some(u) if u != k && ring.slot(u).is_none() => stray.push(u),
                _ => {}
            }
        }
    }
    let mut conn = sess.conn;
    let mut recv = Recv::new(ctx.contacts, true);
    let mut send =
        Send { seq: 0, total: if notify.is_some() { ctx.plan.count(k) } else { 0 }, count: 0, final_sent: false };
    let (mut setup_done, mut start_checked, mut complete) = (false, false, false);
    let mut retry: Option<Instant> = None;
    let mut activity = Instant::now();
    let mut churn = churn.into_iter().peekable();
    let timer = |us: u64| tokio::time::sleep_until(ctx.tl.instant(us));
    let (setup, start, end, close) =
        (timer(ctx.tl.setup_us), timer(ctx.tl.start_us), timer(ctx.tl.end_us), timer(ctx.tl.close_us));
    tokio::pin!(setup, start, end, close);
    loop {
        let next_churn = churn.peek().map(|&t| ctx.tl.instant(t));
        let r: Result<(), String> = tokio::select! {
            biased;
            _ = notified(notify.as_deref()), if send.seq < send.total => {
                send_due(ctx, k, &mut conn, &mut send, &recv).await.map_err(|e| format!("send: {}", ConnError::Io(e)))
            }
            _ = &mut setup, if !setup_done => {
                setup_done = true;
                retry = Some(Instant::now() + SETUP_RETRY);
                remove_stray(ctx, &mut conn, std::mem::take(&mut stray));
                subscribe_missing(ctx, &ring, &mut conn, &mut subs, true).await
            }
            _ = tokio::time::sleep_until(retry.unwrap_or_else(Instant::now)), if retry.is_some() => {
                retry = None;
                if !start_checked && subs.iter().any(|&s| s & TO == 0) {
                    retry = Some(Instant::now() + SETUP_RETRY);
                    if activity.elapsed() >= SETUP_QUIET {
                        activity = Instant::now();
                        subscribe_missing(ctx, &ring, &mut conn, &mut subs, false).await
                    } else {
                        Ok(())
                    }
                } else {
                    Ok(())
                }
            }
            _ = &mut start, if !start_checked => {
                start_checked = true;
                retry = None;
                if subs.iter().any(|&s| s & (TO | FROM) != TO | FROM) {
                    lock(ctx).extra.setup_incomplete += 1;
                }
                Ok(())
            }
            _ = tokio::time::sleep_until(next_churn.unwrap_or_else(Instant::now)), if next_churn.is_some() => {
                churn.next();
                conn.close(Instant::now() + Duration::from_secs(5)).await;
                lock(ctx).extra.churn_logouts += 1;
                let name = format!("{}{k}", ctx.setup.prefix);
                let t0 = Instant::now();
                let r = Box::pin(login::login_with(&ctx.setup, &name, source_of(ctx, k), nonces.next(), Want::default())).await;
                match r {
                    Ok(s) => {
                        {
                            let mut st = lock(ctx);
                            st.extra.churn_logins += 1;
                            st.extra.churn_login.record((t0.elapsed().as_micros() as u64).max(1));
                        }
                        conn = s.conn;
                        recv = Recv::new(ctx.contacts, false);
                        // What arrived with the login's last answer (probe answers).
                        received(ctx, &ring, &mut conn, &mut recv, &mut subs, &mut activity, false).await
                    }
                    Err(e) => {
                        let mut st = lock(ctx);
                        st.login_failed(&e);
                        st.disconnected(format!("login after churn: {e}"));
                        return;
                    }
                }
            }
            _ = &mut end, if !send.final_sent => {
                send.final_sent = true;
                // Updates not sent by now never will be.
                let skipped = send.total - send.seq;
                send.seq = send.total;
                lock(ctx).extra.presence_skipped += skipped;
                let _ = std::io::Write::write_fmt(&mut conn.out, format_args!(
                    "<presence><bench xmlns='{NS_BENCH}' r='{}' s='{k}' c='{}' f='1'/></presence>",
                    ctx.run_id, send.count,
                ));
                conn.flush().await.map_err(|e| format!("send: {}", ConnError::Io(e)))
            }
            r = conn.readable() => {
                match r {
                    Err(e) => Err(ConnError::Io(e).to_string()),
                    Ok(()) => received(ctx, &ring, &mut conn, &mut recv, &mut subs, &mut activity, true).await,
                }
            }
            _ = &mut close => {
                // A receiver online since before the end must have every contact's
                // final stamp: a missing one hides an unknown number of lost updates.
                if recv.ready_unix <= ctx.tl.unix_us(ctx.tl.end_us) {
                    lock(ctx).extra.finals_missing += recv.finals.iter().filter(|&&f| !f).count() as u64;
                }
                conn.close(Instant::now() + Duration::from_secs(5)).await;
                return;
            }
        };
        if let Err(reason) = r {
            lock(ctx).disconnected(reason);
            return;
        }
        if setup_done && !complete && subs.iter().all(|&s| s & (TO | FROM) == TO | FROM) {
            complete = true;
            let took = Instant::now().saturating_duration_since(ctx.tl.instant(ctx.tl.setup_us));
            lock(ctx).extra.setup.record((took.as_micros() as u64).max(1));
        }
    }
}

/// A contact that is subscribed to us while we are not to it, nor asking: ask it.
/// Done on the roster push that shows the contact's subscription, not when approving
/// it: a server may still be saving the approval (Meerkat's outbound subscription
/// path read its session roster cache before the push updated it, and a request
/// right after an approval undid the approval).
fn ask_back(ctx: &Ctx, ring: &Ring, slot: u32, subs: &mut [u8], out: &mut Vec<u8>) {
    let s = &mut subs[slot as usize];
    if *s & FROM != 0 && *s & (TO | ASK) == 0 {
        subscribe(ctx, ring.contact(slot), out);
        *s |= ASK;
        lock(ctx).extra.subscribe_sent += 1;
    }
}

/// Applies a roster item (login result or push) to the subscription bits; returns
/// the contact's slot.
fn roster_item(ctx: &Ctx, ring: &Ring, item: &Element, subs: &mut [u8]) -> Option<u32> {
    let slot = item.attr("jid").and_then(|j| user_of(ctx, j)).and_then(|u| ring.slot(u))?;
    let ask = if item.attr("ask") == Some("subscribe") { ASK } else { 0 };
    subs[slot as usize] = ask
        | match item.attr("subscription") {
            Some("both") => TO | FROM,
            Some("to") => TO,
            Some("from") => FROM,
            _ => 0,
        };
    Some(slot)
}

/// Setup: removes benchmark users that are not contacts from the roster (RFC 6121
/// §2.5, which also cancels the subscriptions both ways).
fn remove_stray(ctx: &Ctx, conn: &mut Conn, stray: Vec<u32>) {
    for u in &stray {
        let _ = std::io::Write::write_fmt(
            &mut conn.out,
            format_args!(
                "<iq type='set' id='rm{u}'><query xmlns='{NS_ROSTER}'><item jid='{}{u}{}' subscription='remove'/>\
                 </query></iq>",
                ctx.to_prefix, ctx.to_suffix
            ),
        );
    }
    lock(ctx).extra.roster_removed += stray.len() as u64;
}

/// Setup: asks contacts we are not subscribed to for a subscription: at first only
/// those ahead of us in the ring or already subscribed to us, and not already asked
/// (the others will ask us, and we ask them back after approving); on a retry every
/// one, pending or not (a server that lost our request's answer answers again).
async fn subscribe_missing(
    ctx: &Ctx,
    ring: &Ring,
    conn: &mut Conn,
    subs: &mut [u8],
    first: bool,
) -> Result<(), String> {
    let mut n = 0;
    for (slot, s) in subs.iter_mut().enumerate() {
        let wanted = if first { *s & ASK == 0 && ((slot as u32) < ring.half || *s & FROM != 0) } else { true };
        if *s & TO == 0 && wanted {
            subscribe(ctx, ring.contact(slot as u32), &mut conn.out);
            *s |= ASK;
            n += 1;
        }
    }
    lock(ctx).extra.subscribe_sent += n;
    conn.flush().await.map_err(|e| format!("send: {}", ConnError::Io(e)))
}

/// Writes a subscription request to user `c`.
fn subscribe(ctx: &Ctx, c: u32, out: &mut Vec<u8>) {
    let _ = std::io::Write::write_fmt(
        out,
        format_args!("<presence to='{}{c}{}' type='subscribe'/>", ctx.to_prefix, ctx.to_suffix),
    );
}

/// Sends every update of user `k` whose scheduled time has come; those that came due
/// before the current session was ready (logged out by churn) are skipped.
async fn send_due(ctx: &Ctx, k: u32, conn: &mut Conn, send: &mut Send, recv: &Recv) -> std::io::Result<()> {
    let mut wrote = false;
    while send.seq < send.total {
        let rel = ctx.plan.time(k, send.seq);
        let scheduled = ctx.tl.instant(rel);
        let now = Instant::now();
        if scheduled > now {
            break;
        }
        let (n, t) = (send.seq, ctx.tl.unix_us(rel));
        send.seq += 1;
        if t < recv.ready_unix {
            lock(ctx).extra.presence_skipped += 1;
            continue;
        }
        send.count += 1;
        std::io::Write::write_fmt(
            &mut conn.out,
            format_args!(
                "<presence><show>{}</show><status>update {n}</status>\
                 <bench xmlns='{NS_BENCH}' r='{}' t='{t}' s='{k}' n='{n}' c='{}'/></presence>",
                SHOWS[(n % 4) as usize],
                ctx.run_id,
                send.count,
            ),
        )?;
        wrote = true;
        let mut st = lock(ctx);
        st.sent += 1;
        st.late.record((now - scheduled).as_micros() as u64);
    }
    if wrote {
        conn.flush().await?;
    }
    Ok(())
}

/// Reads what is there and handles it; `Err` is the reason the session is over.
async fn received(
    ctx: &Ctx,
    ring: &Ring,
    conn: &mut Conn,
    recv: &mut Recv,
    subs: &mut [u8],
    activity: &mut Instant,
    read: bool,
) -> Result<(), String> {
    if read {
        conn.read_ready().await.map_err(|e| ConnError::Io(e).to_string())?;
    }
    let now = unix_us();
    loop {
        let el = match conn.next_decoded() {
            Ok(None) => break,
            Ok(Some(StreamEvent::Element(el))) => el,
            Ok(Some(StreamEvent::Header(_))) => continue,
            Ok(Some(StreamEvent::Close)) => return Err("stream closed by server".into()),
            Err(e) => return Err(ConnError::Xml(e).to_string()),
        };
        match el.name() {
            "presence" => {
                let about_subscription = on_presence(ctx, ring, &el, now, recv, &mut conn.out);
                if about_subscription {
                    *activity = Instant::now();
                }
            }
            "iq" => {
                if el.attr("type") == Some("set") {
                    if let Some(q) = el.get_child("query", NS_ROSTER) {
                        *activity = Instant::now();
                        for item in q.children().filter(|c| c.name() == "item") {
                            if let Some(slot) = roster_item(ctx, ring, item, subs) {
                                ask_back(ctx, ring, slot, subs, &mut conn.out);
                            }
                        }
                    }
                }
                answer_iq(&el, &mut conn.out);
            }
            "error" if el.ns() == STREAM_NS => {
                let cond = el.children().next().map(|c| c.name().to_owned()).unwrap_or_default();
                return Err(format!("stream error {cond}"));
            }
            _ => {}
        }
    }
    if !conn.out.is_empty() {
        conn.flush().await.map_err(|e| ConnError::Io(e).to_string())?;
    }
    if conn.is_eof() {
        return Err(ConnError::Closed.to_string());
    }
    Ok(())
}

/// One presence stanza: a subscription request to approve, a contact going away or
/// coming back, or a stamped update (see the module documentation for the counts).
/// Returns whether it was about a subscription (setup activity).
fn on_presence(ctx: &Ctx, ring: &Ring, el: &Element, now: u64, recv: &mut Recv, out: &mut Vec<u8>) -> bool {
    let from = el.attr("from").and_then(|f| user_of(ctx, f));
    let contact = from.and_then(|u| ring.slot(u)).is_some();
    if let (Some("subscribe"), Some(u)) = (el.attr("type"), from.filter(|_| contact)) {
        // Approve; the roster push that follows (`from`) makes us ask back.
        let _ = std::io::Write::write_fmt(
            &mut *out,
            format_args!("<presence to='{}{u}{}' type='subscribed'/>", ctx.to_prefix, ctx.to_suffix),
        );
        return true;
    }
    match el.attr("type") {
        Some("unavailable") if contact => lock(ctx).extra.unavailable_rx += 1,
        Some(ty) => return matches!(ty, "subscribed" | "unsubscribe" | "unsubscribed"),
        None => match el.get_child("bench", NS_BENCH) {
            Some(b) => on_update(ctx.run_id, ring, b, now, recv, &mut lock(ctx)),
            None if contact => lock(ctx).extra.available_rx += 1,
            None => {}
        },
    }
    false
}

/// A stamped update (or final stamp) from a contact.
fn on_update(run_id: u64, ring: &Ring, b: &Element, now: u64, recv: &mut Recv, st: &mut WorkerReport) {
    let num = |a: &str| b.attr(a).and_then(|v| v.parse::<u64>().ok());
    let (Some(run), Some(s), Some(c)) = (num("r"), num("s"), num("c")) else {
        st.stale += 1;
        return;
    };
    if run != run_id {
        st.stale += 1;
        return;
    }
    if s == u64::from(ring.k) {
        // Our own presence, reflected to our resource.
        return;
    }
    let (Some(slot), Ok(c)) = (u32::try_from(s).ok().and_then(|s| ring.slot(s)), u32::try_from(c)) else {
        st.stale += 1;
        return;
    };
    let last = &mut recv.last[slot as usize];
    if b.attr("f") == Some("1") {
        recv.finals[slot as usize] = true;
        if *last != UNKNOWN && c > *last {
            st.extra.presence_lost += u64::from(c - *last);
        }
        *last = c;
        return;
    }
    let Some(t) = num("t") else {
        st.stale += 1;
        return;
    };
    let probe = &mut recv.probe[slot as usize];
    if t < recv.ready_unix {
        st.extra.presence_replayed += 1;
        *probe = false;
        if *last == UNKNOWN || c > *last {
            *last = c;
        }
        return;
    }
    if *probe && *last != UNKNOWN && c <= *last && now < recv.ready_unix + PROBE_WINDOW_US {
        // The contact's update reached us both as a broadcast and as the answer to our
        // probe (it was sent while we were logging in): legitimate, not a duplicate.
        st.extra.presence_replayed += 1;
        *probe = false;
        return;
    }
    if *last != UNKNOWN {
        if c <= *last {
            st.duplicated += 1;
            return;
        }
        st.extra.presence_lost += u64::from(c - *last - 1);
    }
    *last = c;
    st.delivered += 1;
    st.ttd.record(now.saturating_sub(t).max(1));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(s: u32, t: u64, c: u32) -> Element {
        let xml = format!("<bench xmlns='{NS_BENCH}' r='7' t='{t}' s='{s}' n='0' c='{c}'/>");
        meerkat_xml::parse_element(&xml, &Default::default()).unwrap()
    }

    fn final_stamp(s: u32, c: u32) -> Element {
        let xml = format!("<bench xmlns='{NS_BENCH}' r='7' s='{s}' c='{c}' f='1'/>");
        meerkat_xml::parse_element(&xml, &Default::default()).unwrap()
    }

    #[test]
    fn gaps_duplicates_replays_and_final_stamps() {
        let ring = Ring { k: 5, users: 10, half: 1 }; // contacts 6 (slot 0) and 4 (slot 1)
        let mut st = WorkerReport::new();
        let mut recv = Recv { last: vec![0, 0], ready_unix: 1_000, finals: vec![false; 2], probe: vec![false; 2] };
        for (s, c) in [(6, 1), (6, 2), (6, 4), (6, 4), (4, 2), (5, 9)] {
            on_update(7, &ring, &stamp(s, 2_000, c), 2_500, &mut recv, &mut st);
        }
        // 6: 3 lost, then a duplicate; 4: its first update (c=1) lost; 5 is us.
        assert_eq!((st.delivered, st.duplicated, st.extra.presence_lost), (4, 1, 2));
        assert_eq!(st.ttd.len(), 4);
        on_update(7, &ring, &final_stamp(6, 6), 3_000, &mut recv, &mut st);
        assert_eq!(st.extra.presence_lost, 4, "5 and 6 never arrived");
        assert_eq!(recv.finals, [true, false]);
        // A later session: probe answers (stamped before it was ready) set the start.
        let mut recv =
            Recv { last: vec![UNKNOWN, UNKNOWN], ready_unix: 10_000, finals: vec![false; 2], probe: vec![true; 2] };
        on_update(7, &ring, &stamp(4, 9_000, 8), 10_100, &mut recv, &mut st);
        on_update(7, &ring, &stamp(4, 10_050, 9), 10_200, &mut recv, &mut st);
        on_update(7, &ring, &stamp(6, 10_060, 20), 10_200, &mut recv, &mut st);
        assert_eq!(st.extra.presence_replayed, 1);
        assert_eq!((st.delivered, st.extra.presence_lost), (6, 4), "no loss judged before a start point");
        // 6's update 20 again: the probe answer, not a duplicate; a third copy is one.
        on_update(7, &ring, &stamp(6, 10_060, 20), 10_300, &mut recv, &mut st);
        assert_eq!((st.extra.presence_replayed, st.duplicated), (2, 1));
        on_update(7, &ring, &stamp(6, 10_060, 20), 10_400, &mut recv, &mut st);
        assert_eq!(st.duplicated, 2);
        on_update(8, &ring, &stamp(4, 10_070, 10), 10_300, &mut recv, &mut st);
        assert_eq!(st.stale, 1, "another run");
    }

    #[test]
    fn ring_contacts_are_symmetric() {
        let users = 7;
        for k in 1..=users {
            let r = Ring { k, users, half: 2 };
            let contacts: Vec<u32> = (0..4).map(|s| r.contact(s)).collect();
            for (slot, &c) in contacts.iter().enumerate() {
                assert_ne!(c, k);
                assert_eq!(r.slot(c), Some(slot as u32), "k={k} c={c}");
                // Mutual: k is a contact of c.
                assert!(Ring { k: c, users, half: 2 }.slot(k).is_some());
            }
            let mut sorted = contacts.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), 4);
        }
        let r = Ring { k: 1, users: 7, half: 2 };
        assert_eq!((0..4).map(|s| r.contact(s)).collect::<Vec<_>>(), [2, 3, 7, 6]);
        assert_eq!((r.slot(4), r.slot(1), r.slot(0), r.slot(8)), (None, None, None, None));
    }
}
