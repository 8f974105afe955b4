//! The MUC Light scenario (MongooseIM's `urn:xmpp:muclight:0`, served by Meerkat
//! and MongooseIM): the users of each bucket (`--bucket-size`) are the members
//! of one room. During the setup phase (not measured) the bucket's first user
//! creates the room with the others as members, in one IQ. In the measured
//! phase every member sends group chat messages to its room on the open-loop
//! schedule (`--rate` is the total of room messages per second); the room
//! delivers each to every member, the sender included, and every member
//! measures time to delivery. Expected deliveries are counted at the sender
//! (the room's size per message), so `lost` is what the room did not deliver.
//! `--bucket-size 1000 --users 1000` is one room of 1,000 members.

use std::io::Write as _;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use meerkat_xml::{StreamEvent, STREAM_NS};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::conn::{Conn, ConnError};
use crate::report::WorkerReport;
use crate::schedule::Bucket;
use crate::session::{answer_iq, lock, notified, on_message, Seen, NS_BENCH};
use crate::worker::{unix_us, Ctx};

/// The room of `bucket` in this run.
fn room(ctx: &Ctx, bucket: Bucket) -> String {
    let mut domain = String::new();
    meerkat_xml::escape_attr(&ctx.domain, &mut domain);
    format!("{}room{}-{}@muclight.{domain}", ctx.to_prefix, bucket.first, ctx.run_id)
}

/// Runs user `k`'s session: creates its bucket's room if it is the first
/// member, sends to the room on schedule, checks what arrives.
pub async fn online(ctx: &Ctx, k: u32, mut conn: Conn, notify: Option<Arc<Notify>>) {
    let bucket = Bucket::of(k, ctx.users, ctx.bucket_size);
    let room = room(ctx, bucket);
    let mut seen = Seen::new(bucket);
    let total = if notify.is_some() { ctx.plan.count(k) } else { 0 };
    let mut seq = 0u64;
    let close = tokio::time::sleep_until(ctx.tl.instant(ctx.tl.close_us));
    tokio::pin!(close);
    let creating = bucket.first == k && bucket.len > 1;
    if creating {
        let mut iq =
            format!("<iq type='set' id='create' to='{room}'><query xmlns='urn:xmpp:muclight:0#create'><occupants>");
        for u in bucket.first + 1..bucket.first + bucket.len {
            iq += &format!("<user affiliation='member'>{}{u}{}</user>", ctx.to_prefix, ctx.to_suffix);
        }
        iq += "</occupants></query></iq>";
        conn.out.extend_from_slice(iq.as_bytes());
        if let Err(e) = conn.flush().await {
            lock(ctx).disconnected(format!("send: {}", ConnError::Io(e)));
            return;
        }
    }
    let mut created = !creating;
    if let Err(reason) = process(ctx, &mut conn, &mut seen, &mut created) {
        lock(ctx).disconnected(reason);
        return;
    }
    let ended: Option<String> = loop {
        tokio::select! {
            biased;
            _ = notified(notify.as_deref()), if seq < total => {
                if let Err(e) = send_due(ctx, k, bucket, &room, &mut conn, &mut seq, total).await {
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
                if let Err(reason) = process(ctx, &mut conn, &mut seen, &mut created) {
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
    if !created {
        lock(ctx).extra.rooms_failed += 1;
    }
    match ended {
        Some(reason) => lock(ctx).disconnected(reason),
        None => conn.close(Instant::now() + Duration::from_secs(5)).await,
    }
}

/// Sends every room message of user `k` whose scheduled time has come.
async fn send_due(
    ctx: &Ctx,
    k: u32,
    bucket: Bucket,
    room: &str,
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
        write!(
            conn.out,
            "<message to='{room}' type='groupchat' id='s{k}-{n}'><body>{}</body>\
             <bench xmlns='{NS_BENCH}' r='{}' t='{}' s='{k}' n='{n}'/></message>",
            ctx.body,
            ctx.run_id,
            ctx.tl.unix_us(rel),
            n = *seq,
        )?;
        conn.flush().await?;
        *seq += 1;
        let mut st = lock(ctx);
        st.sent += 1;
        st.extra.expected_deliveries += u64::from(bucket.len);
        st.late.record((now - scheduled).as_micros() as u64);
    }
    Ok(())
}

/// Handles every complete element the decoder holds; queues replies in `conn.out`.
fn process(ctx: &Ctx, conn: &mut Conn, seen: &mut Seen, created: &mut bool) -> Result<(), String> {
    let now = unix_us();
    let mut stats: Option<MutexGuard<'_, WorkerReport>> = None;
    loop {
        let el = match conn.next_decoded() {
            Ok(None) => return Ok(()),
            Ok(Some(StreamEvent::Element(el))) => el,
            Ok(Some(StreamEvent::Header(_))) => continue,
            Ok(Some(StreamEvent::Close)) => return Err("stream closed by server".into()),
            Err(e) => return Err(ConnError::Xml(e).to_string()),
        };
        match el.name() {
            "message" => {
                if let Some(b) = el.get_child("bench", NS_BENCH) {
                    let st = stats.get_or_insert_with(|| lock(ctx));
                    on_message(ctx, &el, b, now, seen, st);
                }
            }
            "iq" if el.attr("id") == Some("create") => match el.attr("type") {
                Some("result") => *created = true,
                _ => return Err(format!("room creation failed: {el}")),
            },
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
