//! The group chat scenarios, shaped like amoc's (MongooseIM's load tool): `muc-light`
//! (MongooseIM's MUC Light, `urn:xmpp:muclight:0`, on `muclight.DOMAIN`) and `muc`
//! (XEP-0045 multi-user chat, on `conference.DOMAIN`).
//!
//! **Rooms.** With U users, rooms of N occupants (`--room-size`) and K rooms per user
//! (`--rooms-per-user`) there are R = U·K/N rooms (a whole number, checked). Room r
//! (0-based) holds the N occupants at positions r·N … r·N+N-1 of K rounds through the
//! users: position q is round l = q / U, index j = q mod U. When N divides U no room
//! straddles two rounds, and round l takes user `(j · a_l mod U) + 1` with a_l the
//! l-th multiplier coprime to U (1, then the next ones: 3, 7, 9… for U = 20), so the
//! rounds mix users differently instead of repeating the first round's rooms. When N
//! does not divide U, each round is already shifted against the previous one and
//! round l takes user `j + 1`. Either way every user is in exactly K rooms and a
//! room's N occupants are distinct (N ≤ U). Position 0 of a room is its creator.
//! Room r's JID is `PREFIX-U-K-N-r@SERVICE` (the prefix in lower case), so a run with
//! the same shape on the same accounts finds the same rooms with the same occupants.
//!
//! **Setup** (after the login ramp, not measured, `--setup-seconds`). muc-light: each
//! room's creator sends one `#create` IQ naming its N-1 other occupants as members
//! (for rooms above `--create-chunk` occupants, the creation names the first chunk and
//! the creator adds the rest a chunk at a time with `#affiliations` sets, so that no
//! IQ exceeds the server's stanza size limit); a `conflict` answer means the room is
//! left from an earlier run (same name, so same occupants) and counts as existing. The occupants' affiliation notifications are
//! ignored. muc: each creator joins its rooms (`<x xmlns='…muc'><history
//! maxstanzas='0'/></x>`) at once; a new room is locked (status 201) until the creator
//! submits the instant configuration (`muc#owner`, an empty `submit` form). The other
//! occupants join from 0.5 s into the setup, paced at --login-rate users per second,
//! and try again every 200 ms while the room answers `item-not-found` (not yet
//! configured), and every second while it answers an error of type `wait` (a room
//! queue full of joins, in rooms of thousands). A join is complete when the joiner
//! has its own presence (status 110) and then the room's subject. The setup time of each room (creation) or join is
//! reported; a room not ready or a join not complete when the measured phase starts
//! makes the run invalid (`setup_incomplete`, `room_failures`).
//!
//! **Messages** (measured). Each room gets --room-rate messages per second on a fixed
//! open-loop schedule: with I = 1/rate, room r's message m is due at
//! `start + r·I/R + m·I` (the rooms spread evenly over one interval) and is sent by
//! the occupant at position m mod N (round robin). Scheduling unit is the
//! (room, position) slot: slot `pos·R + r + 1` of a [`SendPlan`] with R·N slots and an
//! interval of N·I has exactly these times. A message is
//! `<message to='ROOM@SERVICE' type='groupchat'><body>…</body><bench r t s n g/></message>`
//! (run, scheduled Unix µs, sender, message number m within the room, room r); it
//! must reach every occupant, the sender included, exactly once. Each receiver keeps
//! one bit per (room, m): time to delivery runs from the scheduled send time to the
//! receipt, a second copy is a duplicate, and lost = sent · N − first copies.

use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use meerkat_xml::{Element, STREAM_NS};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::cli::{Args, Scenario};
use crate::conn::{Conn, ConnError, Incoming};
use crate::frame::BenchMsg;
use crate::report::WorkerReport;
use crate::schedule::SendPlan;
use crate::session::{answer_iq, lock, notified, NS_BENCH};
use crate::worker::{unix_us, Ctx};

const NS_MUCLIGHT_CREATE: &str = "urn:xmpp:muclight:0#create";
const NS_MUCLIGHT_AFFS: &str = "urn:xmpp:muclight:0#affiliations";
const NS_MUC: &str = "http://jabber.org/protocol/muc";
const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
const NS_MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
/// muc: when the occupants other than the creators start joining, after the setup start.
const JOIN_DELAY: Duration = Duration::from_millis(500);
/// muc: the wait before joining again a room that is still locked (`item-not-found`).
const JOIN_RETRY: Duration = Duration::from_millis(200);
/// muc: the wait before joining again after a `wait` error (the room is busy).
const BUSY_RETRY: Duration = Duration::from_secs(1);
/// Message numbers above this are not tracked for duplicates (bounds memory).
const MAX_TRACKED_SEQ: u64 = 1 << 24;

/// Who is in which room (see the module documentation), and the message schedule.
#[derive(Debug, Clone)]
pub struct Layout {
    /// U.
    pub users: u32,
    /// N.
    pub size: u32,
    /// K.
    pub per_user: u32,
    /// R = U·K/N.
    pub rooms: u32,
    /// Per round: the multiplier (all 1 when N does not divide U).
    mult: Vec<u64>,
}

impl Layout {
    /// The layout of U users, rooms of N, K rooms per user (U·K a multiple of N, N ≤ U).
    pub fn new(users: u32, size: u32, per_user: u32) -> Layout {
        let rooms = (u64::from(users) * u64::from(per_user) / u64::from(size)) as u32;
        let u = u64::from(users);
        let mult = if users.is_multiple_of(size) {
            let mut v = Vec::with_capacity(per_user as usize);
            let mut a = 1u64;
            for _ in 0..per_user {
                // The next multiplier coprime to U (cycling when there are no more).
                let mut tries = 0;
                while gcd(a % u.max(1), u) != 1 && tries < u {
                    a += 1;
                    tries += 1;
                }
                if a >= u.max(2) {
                    a = 1;
                }
                v.push(a);
                a += 1;
            }
            v
        } else {
            vec![1; per_user as usize]
        };
        Layout { users, size, per_user, rooms, mult }
    }

    /// The user (1-based) at position `pos` of room `r`.
    pub fn member(&self, r: u32, pos: u32) -> u32 {
        let u = u64::from(self.users);
        let q = u64::from(r) * u64::from(self.size) + u64::from(pos);
        let (round, j) = ((q / u) as usize, q % u);
        (j * self.mult[round.min(self.mult.len() - 1)] % u) as u32 + 1
    }

    /// Every (room, position) of user `k`, by room (the slow way, to check
    /// [`all_rooms`](Self::all_rooms)).
    #[cfg(test)]
    pub fn rooms_of(&self, k: u32) -> Vec<(u32, u32)> {
        let mut v: Vec<(u32, u32)> = (0..self.rooms)
            .flat_map(|r| (0..self.size).map(move |p| (r, p)))
            .filter(|&(r, p)| self.member(r, p) == k)
            .collect();
        v.sort_unstable();
        v
    }

    /// Every user's (room, position) list, index k-1 (one pass over the rooms).
    pub fn all_rooms(&self) -> Vec<Vec<(u32, u32)>> {
        let mut v = vec![Vec::with_capacity(self.per_user as usize); self.users as usize];
        for r in 0..self.rooms {
            for p in 0..self.size {
                v[self.member(r, p) as usize - 1].push((r, p));
            }
        }
        v
    }

    /// The send plan slot (1-based) of position `pos` of room `r`.
    pub fn slot(&self, r: u32, pos: u32) -> u32 {
        pos * self.rooms + r + 1
    }

    /// The send plan from `start_us` to `end_us` at `rate` messages per second per room.
    pub fn plan(&self, start_us: u64, end_us: u64, rate: f64, tick_us: u64) -> SendPlan {
        let per_room_us = 1e6 / rate;
        SendPlan {
            start_us,
            end_us,
            interval_us: ((per_room_us * f64::from(self.size)).round() as u64).max(1),
            users: self.rooms * self.size,
            tick_us,
            max_count: u64::MAX,
        }
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// What the group chat users of a worker share.
pub struct Rooms {
    /// Who is where.
    pub layout: Layout,
    /// Per user (index k-1): its (room, position) list, by room.
    pub of_user: Vec<Vec<(u32, u32)>>,
    /// MUC (else MUC Light).
    pub muc: bool,
    /// muc-light: most occupants named in one IQ (creation, then additions).
    pub chunk: u32,
    /// The room JIDs' node before the room number (escaped for attributes).
    pub tag: String,
    /// `@SERVICE` (escaped).
    pub service: String,
    /// The same tag, lower case and unescaped, to recognise room JIDs.
    tag_plain: String,
    /// The service, lower case and unescaped.
    service_plain: String,
}

impl Rooms {
    /// From the command line.
    pub fn from_args(args: &Args) -> Rooms {
        let layout = Layout::new(args.users, args.room_size, args.rooms_per_user);
        let tag_plain =
            format!("{}-{}-{}-{}-", args.user_prefix.to_lowercase(), args.users, args.rooms_per_user, args.room_size);
        let service_plain = args.room_service().to_lowercase();
        let mut tag = String::new();
        meerkat_xml::escape_attr(&tag_plain, &mut tag);
        let mut service = String::from("@");
        meerkat_xml::escape_attr(&service_plain, &mut service);
        Rooms {
            of_user: layout.all_rooms(),
            layout,
            muc: args.scenario == Scenario::Muc,
            chunk: args.create_chunk,
            tag,
            service,
            tag_plain,
            service_plain,
        }
    }

    /// The room number of a JID `TAGr@SERVICE[/…]`, if it is one of ours.
    fn room_of(&self, jid: &str) -> Option<u32> {
        let bare = jid.split('/').next()?;
        let (node, domain) = bare.split_once('@')?;
        if !domain.eq_ignore_ascii_case(&self.service_plain) {
            return None;
        }
        let head = node.get(..self.tag_plain.len())?;
        if !head.eq_ignore_ascii_case(&self.tag_plain) {
            return None;
        }
        node[self.tag_plain.len()..].parse().ok().filter(|&r| r < self.layout.rooms)
    }
}

/// Messages the schedule offers in total.
pub fn offered(args: &Args) -> u64 {
    let layout = Layout::new(args.users, args.room_size, args.rooms_per_user);
    let plan = layout.plan(0, (args.duration * 1e6) as u64, args.room_rate, args.tick_us);
    (1..=plan.users).map(|s| plan.count(s)).sum()
}

/// Where a user stands with one of its rooms in the setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Join {
    /// Nothing sent yet.
    Idle,
    /// muc-light: the creation IQ is out; muc: the join presence is out.
    Pending,
    /// muc: our own presence (110) arrived; the subject is next.
    SelfSeen,
    /// muc: joined (muc-light: the room is there).
    Done,
    /// Refused for good.
    Failed,
}

/// One of the user's rooms.
struct Membership {
    room: u32,
    pos: u32,
    /// Its send plan slot.
    slot: u32,
    /// Next message of the slot to send, and how many there are.
    seq: u64,
    total: u64,
    state: Join,
    /// muc, creator: the room is locked until our configuration is accepted.
    configuring: bool,
    /// Counted as ready (creator) / joined already.
    counted: bool,
    /// muc-light, creator: the next position to name (creation, then additions).
    next_pos: u32,
    /// One bit per message number received.
    seen: Vec<u64>,
}

impl Membership {
    /// `Some(true)` the first time message `m` is seen, `Some(false)` for a copy.
    fn mark(&mut self, m: u64) -> Option<bool> {
        if m > MAX_TRACKED_SEQ {
            return None;
        }
        let (w, b) = ((m / 64) as usize, m % 64);
        if self.seen.len() <= w {
            self.seen.resize(w + 1, 0);
        }
        let new = self.seen[w] & (1 << b) == 0;
        self.seen[w] |= 1 << b;
        Some(new)
    }
}

/// A user's side of the scenario.
struct User<'a> {
    ctx: &'a Ctx,
    rooms: &'a Rooms,
    k: u32,
    ms: Vec<Membership>,
    /// muc: rooms to join again (still locked) when the retry timer fires.
    retry: Vec<usize>,
    retry_at: Option<Instant>,
}

impl<'a> User<'a> {
    fn new(ctx: &'a Ctx, rooms: &'a Rooms, k: u32, sends: bool) -> User<'a> {
        let ms = rooms.of_user[k as usize - 1]
            .iter()
            .map(|&(room, pos)| {
                let slot = rooms.layout.slot(room, pos);
                Membership {
                    room,
                    pos,
                    slot,
                    seq: 0,
                    total: if sends { ctx.plan.count(slot) } else { 0 },
                    state: Join::Idle,
                    configuring: false,
                    counted: false,
                    next_pos: 1,
                    seen: Vec::new(),
                }
            })
            .collect();
        User { ctx, rooms, k, ms, retry: Vec::new(), retry_at: None }
    }

    fn index(&self, room: u32) -> Option<usize> {
        self.ms.binary_search_by_key(&room, |m| m.room).ok()
    }

    /// Writes the room's JID (`TAGr@SERVICE`).
    fn room_jid(&self, out: &mut Vec<u8>, room: u32) {
        let _ = std::io::Write::write_fmt(out, format_args!("{}{room}{}", self.rooms.tag, self.rooms.service));
    }

    /// Setup start: creators create (muc-light) or join (muc) their rooms; in
    /// muc-light the other occupants have nothing to do.
    fn on_setup(&mut self, out: &mut Vec<u8>) {
        for i in 0..self.ms.len() {
            if self.ms[i].pos != 0 {
                if !self.rooms.muc {
                    self.ms[i].state = Join::Done;
                }
                continue;
            }
            if self.rooms.muc {
                self.join(i, out);
            } else {
                self.create(i, out);
            }
        }
    }

    /// muc: the other occupants join.
    fn on_join_time(&mut self, out: &mut Vec<u8>) {
        for i in 0..self.ms.len() {
            if self.ms[i].pos != 0 && self.ms[i].state == Join::Idle {
                self.join(i, out);
            }
        }
    }

    fn on_retry(&mut self, out: &mut Vec<u8>) {
        self.retry_at = None;
        for i in std::mem::take(&mut self.retry) {
            if self.ms[i].state == Join::Pending {
                self.join(i, out);
            }
        }
    }

    /// muc-light: the creation IQ with the room's other occupants as members (the
    /// first chunk of them; [`add_members`](Self::add_members) names the rest).
    fn create(&mut self, i: usize, out: &mut Vec<u8>) {
        let room = self.ms[i].room;
        let _ = std::io::Write::write_fmt(out, format_args!("<iq type='set' id='c{room}' to='"));
        self.room_jid(out, room);
        let _ = std::io::Write::write_fmt(
            out,
            format_args!(
                "'><query xmlns='{NS_MUCLIGHT_CREATE}'><configuration><roomname>bench {room}</roomname>\
                 </configuration><occupants>"
            ),
        );
        self.members(i, self.rooms.chunk - 1, out);
        out.extend_from_slice(b"</occupants></query></iq>");
        self.ms[i].state = Join::Pending;
    }

    /// muc-light: writes the next `max` occupants as `<user affiliation='member'/>`.
    fn members(&mut self, i: usize, max: u32, out: &mut Vec<u8>) {
        let (room, from) = (self.ms[i].room, self.ms[i].next_pos);
        let to = self.rooms.layout.size.min(from.saturating_add(max));
        for p in from..to {
            let u = self.rooms.layout.member(room, p);
            let _ = std::io::Write::write_fmt(
                out,
                format_args!("<user affiliation='member'>{}{u}{}</user>", self.ctx.to_prefix, self.ctx.to_suffix),
            );
        }
        self.ms[i].next_pos = to;
    }

    /// muc-light, creator: adds the next chunk of occupants (MUC Light §5.4); `false`
    /// when every occupant is named already.
    fn add_members(&mut self, i: usize, out: &mut Vec<u8>) -> bool {
        if self.ms[i].next_pos >= self.rooms.layout.size {
            return false;
        }
        let room = self.ms[i].room;
        let _ = std::io::Write::write_fmt(out, format_args!("<iq type='set' id='a{room}' to='"));
        self.room_jid(out, room);
        let _ = std::io::Write::write_fmt(out, format_args!("'><query xmlns='{NS_MUCLIGHT_AFFS}'>"));
        self.members(i, self.rooms.chunk, out);
        out.extend_from_slice(b"</query></iq>");
        true
    }

    /// muc: the join presence, nickname = our user name, no history.
    fn join(&mut self, i: usize, out: &mut Vec<u8>) {
        let room = self.ms[i].room;
        out.extend_from_slice(b"<presence to='");
        self.room_jid(out, room);
        let _ = std::io::Write::write_fmt(
            out,
            format_args!(
                "/{}{}'><x xmlns='{NS_MUC}'><history maxstanzas='0'/></x></presence>",
                self.ctx.to_prefix, self.k
            ),
        );
        self.ms[i].state = Join::Pending;
    }

    /// Counts a room ready (creator) or a join complete, once, with its setup time.
    fn settle(&mut self, i: usize, st: &mut WorkerReport) {
        let m = &mut self.ms[i];
        if m.counted || m.state != Join::Done || m.configuring {
            return;
        }
        m.counted = true;
        let took = unix_us().saturating_sub(self.ctx.tl.unix_us(self.ctx.tl.setup_us)).max(1);
        if self.rooms.muc {
            st.extra.joins_ok += 1;
            st.extra.setup.record(took);
        }
        if m.pos == 0 {
            st.extra.rooms_ready += 1;
            if !self.rooms.muc {
                st.extra.setup.record(took);
            }
        }
    }

    /// Measured phase start: memberships not in place count against the setup.
    fn check_setup(&self, st: &mut WorkerReport) {
        let incomplete = self.ms.iter().any(|m| m.state != Join::Done || m.configuring);
        if incomplete {
            st.extra.setup_incomplete += 1;
        }
    }

    /// Sends every message of our slots whose time has come.
    fn send_due(&mut self, out: &mut Vec<u8>) -> bool {
        let ctx = self.ctx;
        let n = u64::from(self.rooms.layout.size);
        let mut wrote = false;
        let mut st: Option<MutexGuard<'_, WorkerReport>> = None;
        for i in 0..self.ms.len() {
            loop {
                let m = &self.ms[i];
                if m.seq >= m.total {
                    break;
                }
                let rel = ctx.plan.time(m.slot, m.seq);
                let scheduled = ctx.tl.instant(rel);
                let now = Instant::now();
                if scheduled > now {
                    break;
                }
                let (room, num) = (m.room, m.seq * n + u64::from(m.pos));
                out.extend_from_slice(b"<message to='");
                self.room_jid(out, room);
                let _ = std::io::Write::write_fmt(
                    out,
                    format_args!(
                        "' type='groupchat' id='g{room}-{num}'><body>{}</body>\
                         <bench xmlns='{NS_BENCH}' r='{}' t='{}' s='{}' n='{num}' g='{room}'/></message>",
                        ctx.body,
                        ctx.run_id,
                        ctx.tl.unix_us(rel),
                        self.k,
                    ),
                );
                self.ms[i].seq += 1;
                wrote = true;
                let st = st.get_or_insert_with(|| lock(ctx));
                st.sent += 1;
                st.late.record((now - scheduled).as_micros() as u64);
            }
        }
        wrote
    }

    /// Handles every complete element the decoder holds; queues replies in `conn.out`.
    fn process(&mut self, conn: &mut Conn) -> Result<(), String> {
        let now = unix_us();
        let ctx = self.ctx;
        let mut st: Option<MutexGuard<'_, WorkerReport>> = None;
        loop {
            let el = match conn.next_incoming()? {
                None => return Ok(()),
                Some(Incoming::Bench(m)) => {
                    self.on_message(&m, now, st.get_or_insert_with(|| lock(ctx)));
                    continue;
                }
                Some(Incoming::Element(el)) => el,
            };
            match el.name() {
                "message" => {
                    if let Some(b) = el.get_child("bench", NS_BENCH) {
                        let st = st.get_or_insert_with(|| lock(ctx));
                        self.on_message(&BenchMsg::from_element(&el, b), now, st);
                    } else if el.has_child("subject", "jabber:client") && !el.has_child("body", "jabber:client") {
                        // muc: the subject ends a join.
                        let room = el.attr("from").and_then(|f| self.rooms.room_of(f));
                        if let Some(i) = room.and_then(|r| self.index(r)) {
                            if self.ms[i].state == Join::SelfSeen {
                                self.ms[i].state = Join::Done;
                                self.settle(i, st.get_or_insert_with(|| lock(ctx)));
                            }
                        }
                    }
                }
                "presence" if self.rooms.muc => {
                    let st = st.get_or_insert_with(|| lock(ctx));
                    self.on_presence(&el, &mut conn.out, st);
                }
                "iq" => {
                    let ours = matches!(el.attr("type"), Some("result" | "error"))
                        .then(|| el.attr("id"))
                        .flatten()
                        .filter(|id| id.starts_with(['c', 'a', 'o']));
                    match ours {
                        Some(id) => {
                            let st = st.get_or_insert_with(|| lock(ctx));
                            self.on_iq(id, &el, &mut conn.out, st);
                        }
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

    /// A stamped room message.
    fn on_message(&mut self, m: &BenchMsg, now: u64, st: &mut WorkerReport) {
        if m.error {
            st.errors += 1;
            return;
        }
        let (Some(run), Some(t), Some(n), Some(g)) = (m.r, m.t, m.n, m.g) else {
            st.stale += 1;
            return;
        };
        let i = u32::try_from(g).ok().and_then(|g| self.index(g));
        let (true, Some(i)) = (run == self.ctx.run_id, i) else {
            st.stale += 1;
            return;
        };
        match self.ms[i].mark(n) {
            Some(true) => {
                st.delivered += 1;
                st.ttd.record(now.saturating_sub(t).max(1));
            }
            Some(false) => st.duplicated += 1,
            None => st.stale += 1,
        }
    }

    /// muc: a presence from one of our rooms: our own (a join), someone else's, or a
    /// refusal.
    fn on_presence(&mut self, el: &Element, out: &mut Vec<u8>, st: &mut WorkerReport) {
        let Some(i) = el.attr("from").and_then(|f| self.rooms.room_of(f)).and_then(|r| self.index(r)) else {
            return;
        };
        if el.attr("type") == Some("error") {
            let cond = condition(el);
            let wait = el.children().any(|e| e.name() == "error" && e.attr("type") == Some("wait"));
            if (cond == "item-not-found" || wait) && self.ms[i].state == Join::Pending {
                // Locked (its creator has not configured it yet), or busy (RFC 6120
                // §8.3.2 `wait`: a full room queue, as joins to a room of thousands
                // cost the room thousands of presences each): try again.
                st.extra.join_retries += 1;
                self.retry.push(i);
                let after = if wait { BUSY_RETRY } else { JOIN_RETRY };
                self.retry_at.get_or_insert_with(|| Instant::now() + after);
            } else if self.ms[i].state != Join::Done {
                self.ms[i].state = Join::Failed;
                *st.extra.room_failures.entry(format!("join: {cond}")).or_default() += 1;
            }
            return;
        }
        let codes: Vec<&str> = el
            .get_child("x", NS_MUC_USER)
            .map(|x| x.children().filter(|c| c.name() == "status").filter_map(|c| c.attr("code")).collect())
            .unwrap_or_default();
        if !codes.contains(&"110") {
            // Joins only: the departures at the end of the run (the others closing
            // first) are not announcements of the setup.
            if el.attr("type").is_none() {
                st.extra.room_presence_rx += 1;
            }
            return;
        }
        let m = &mut self.ms[i];
        if m.state != Join::Pending {
            return;
        }
        m.state = Join::SelfSeen;
        if codes.contains(&"201") && m.pos == 0 {
            // XEP-0045 §10.1.2: an instant room, the owner accepts the defaults.
            m.configuring = true;
            let room = m.room;
            let _ = std::io::Write::write_fmt(out, format_args!("<iq type='set' id='o{room}' to='"));
            self.room_jid(out, room);
            let _ = std::io::Write::write_fmt(
                out,
                format_args!("'><query xmlns='{NS_MUC_OWNER}'><x xmlns='jabber:x:data' type='submit'/></query></iq>"),
            );
        }
    }

    /// The answer to a creation (`c…`) or an addition (`a…`, muc-light), or to a
    /// configuration (`o…`, muc).
    fn on_iq(&mut self, id: &str, iq: &Element, out: &mut Vec<u8>, st: &mut WorkerReport) {
        let Some(i) = id[1..].parse::<u32>().ok().and_then(|r| self.index(r)) else { return };
        let ok = iq.attr("type") == Some("result");
        if id.starts_with(['c', 'a']) {
            if self.ms[i].state != Join::Pending {
                return;
            }
            let cond = if ok { String::new() } else { condition(iq) };
            let what = if id.starts_with('c') { "create" } else { "add" };
            if ok && self.add_members(i, out) {
                return;
            }
            if ok || (what == "create" && cond == "conflict") {
                // A conflict: the room of an earlier run with this shape, with the
                // same name and hence the same occupants.
                if cond == "conflict" {
                    st.extra.rooms_existed += 1;
                } else {
                    st.extra.rooms_created += 1;
                }
                self.ms[i].state = Join::Done;
                self.settle(i, st);
            } else {
                self.ms[i].state = Join::Failed;
                *st.extra.room_failures.entry(format!("{what}: {cond}")).or_default() += 1;
            }
        } else if self.ms[i].configuring {
            if ok {
                self.ms[i].configuring = false;
                st.extra.rooms_created += 1;
                self.settle(i, st);
            } else {
                self.ms[i].state = Join::Failed;
                *st.extra.room_failures.entry(format!("configure: {}", condition(iq))).or_default() += 1;
            }
        }
    }
}

/// The defined condition of a stanza error.
fn condition(el: &Element) -> String {
    el.children()
        .find(|c| c.name() == "error")
        .and_then(|e| e.children().find(|c| c.ns() == NS_STANZAS && c.name() != "text").map(|c| c.name().to_owned()))
        .unwrap_or_else(|| "?".into())
}

/// Runs user `k` until the end of the run: setup, messages, clean close.
pub async fn online(ctx: &Ctx, k: u32, mut conn: Conn, notify: Option<Arc<Notify>>) {
    let Some(rooms) = ctx.rooms.as_ref() else { return };
    let mut u = User::new(ctx, rooms, k, notify.is_some());
    let sending = |u: &User<'_>| u.ms.iter().any(|m| m.seq < m.total);
    let join_us =
        ctx.tl.setup_us + JOIN_DELAY.as_micros() as u64 + ((f64::from(k) - 1.0) * 1e6 / ctx.login_rate) as u64;
    let timer = |us: u64| tokio::time::sleep_until(ctx.tl.instant(us));
    let (setup, join, start, close) =
        (timer(ctx.tl.setup_us), timer(join_us.min(ctx.tl.start_us)), timer(ctx.tl.start_us), timer(ctx.tl.close_us));
    tokio::pin!(setup, join, start, close);
    let (mut setup_done, mut joined, mut start_checked) = (false, !rooms.muc, false);
    conn.fast_messages();
    // What arrived with the login's last answer is handled now, not at the next read.
    if let Err(reason) = u.process(&mut conn) {
        lock(ctx).disconnected(reason);
        return;
    }
    let ended: Option<String> = loop {
        tokio::select! {
            biased;
            _ = notified(notify.as_deref()), if sending(&u) => {
                u.send_due(&mut conn.out);
            }
            _ = &mut setup, if !setup_done => {
                setup_done = true;
                u.on_setup(&mut conn.out);
            }
            _ = &mut join, if setup_done && !joined => {
                joined = true;
                u.on_join_time(&mut conn.out);
            }
            _ = tokio::time::sleep_until(u.retry_at.unwrap_or_else(Instant::now)), if u.retry_at.is_some() => {
                u.on_retry(&mut conn.out);
            }
            _ = &mut start, if !start_checked => {
                start_checked = true;
                u.retry_at = None;
                u.check_setup(&mut lock(ctx));
            }
            r = conn.readable() => {
                if let Err(e) = r {
                    break Some(ConnError::Io(e).to_string());
                }
                if let Err(e) = conn.read_ready().await {
                    break Some(ConnError::Io(e).to_string());
                }
                if let Err(reason) = u.process(&mut conn) {
                    break Some(reason);
                }
                if conn.is_eof() {
                    break Some(ConnError::Closed.to_string());
                }
            }
            _ = &mut close => break None,
        }
        if !conn.out.is_empty() {
            if let Err(e) = conn.flush().await {
                break Some(format!("send: {}", ConnError::Io(e)));
            }
        }
    };
    match ended {
        Some(reason) => lock(ctx).disconnected(reason),
        None => conn.close(Instant::now() + Duration::from_secs(5)).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(users: u32, size: u32, per_user: u32) -> Layout {
        let l = Layout::new(users, size, per_user);
        assert_eq!(u64::from(l.rooms) * u64::from(size), u64::from(users) * u64::from(per_user));
        for r in 0..l.rooms {
            let mut m: Vec<u32> = (0..size).map(|p| l.member(r, p)).collect();
            assert!(m.iter().all(|&u| (1..=users).contains(&u)));
            m.sort_unstable();
            m.dedup();
            assert_eq!(m.len(), size as usize, "room {r} of {users}/{size}/{per_user} has a user twice");
        }
        let all = l.all_rooms();
        for k in 1..=users {
            assert_eq!(all[k as usize - 1].len(), per_user as usize, "user {k} of {users}/{size}/{per_user}");
            assert_eq!(all[k as usize - 1], l.rooms_of(k));
        }
        l
    }

    #[test]
    fn every_user_in_k_rooms_of_n_distinct_occupants() {
        for (u, n, k) in [(20, 5, 4), (20, 5, 10), (12, 8, 2), (10, 4, 2), (7, 7, 1), (1000, 1000, 1), (30, 6, 3)] {
            check(u, n, k);
        }
        let l = check(20, 5, 4);
        // Round 0: users 1-5, 6-10…; round 1 (multiplier 3): 1, 4, 7, 10, 13.
        assert_eq!((0..5).map(|p| l.member(0, p)).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        assert_eq!((0..5).map(|p| l.member(4, p)).collect::<Vec<_>>(), [1, 4, 7, 10, 13]);
        // N not dividing U: plain wrap, shifted rounds.
        let w = check(12, 8, 2);
        assert_eq!((0..8).map(|p| w.member(1, p)).collect::<Vec<_>>(), [9, 10, 11, 12, 1, 2, 3, 4]);
    }

    #[test]
    fn room_messages_spread_and_round_robin() {
        // 2 rooms of 4, one message per second per room, for 4 s.
        let l = Layout::new(4, 4, 2);
        let p = l.plan(0, 4_000_000, 1.0, 1);
        assert_eq!(p.interval_us, 4_000_000);
        // Room 0's message m is sent by position m mod 4 at m s; room 1's at m + 0.5 s.
        for m in 0..4u32 {
            assert_eq!(p.time(l.slot(0, m), 0), u64::from(m) * 1_000_000);
            assert_eq!(p.time(l.slot(1, m), 0), u64::from(m) * 1_000_000 + 500_000);
        }
        assert_eq!((1..=p.users).map(|s| p.count(s)).sum::<u64>(), 8);
    }

    #[test]
    fn duplicates_per_room_message() {
        let mut m = Membership {
            room: 3,
            pos: 1,
            slot: 1,
            seq: 0,
            total: 0,
            state: Join::Done,
            configuring: false,
            counted: false,
            next_pos: 1,
            seen: Vec::new(),
        };
        assert_eq!(
            (m.mark(0), m.mark(130), m.mark(0), m.mark(130)),
            (Some(true), Some(true), Some(false), Some(false))
        );
        assert_eq!(m.mark(u64::MAX), None);
    }
}
