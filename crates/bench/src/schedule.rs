//! Who talks to whom and when, in the one-to-one scenario.
//!
//! Buckets: user k (1-based) is in bucket (k-1)/size; the last bucket is smaller when
//! the user count is not a multiple of the size. Each user sends to the other members
//! of its bucket in turn.
//!
//! Open-loop send times: user k's i-th message is scheduled at
//! `start + offset(k) + i * interval`, with `offset(k)` spreading the users evenly over
//! one interval, until `end`. The times are fixed in advance, whatever the server does.
//!
//! Send times are rounded down to a tick (`--tick-us`, default 1 ms) so that the sends
//! due at one time share one wake-up.
//!
//! Timing: tokio's timer wheel has 1 ms resolution (deadlines are rounded up to the
//! next millisecond and the runtime parks in whole milliseconds), which alone would make
//! senders 0–2 ms late. So one scheduler thread per worker sleeps with the OS's
//! microsecond timer until each send time and then wakes the sending user's task
//! through its `Notify`; the task sends everything that is due and records how late it
//! actually was.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// A user's conversation bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Its first user (1-based).
    pub first: u32,
    /// Its number of users (1 for a lone user, who sends nothing).
    pub len: u32,
}

impl Bucket {
    /// The bucket of user `k` among `users` with buckets of `size`.
    pub fn of(k: u32, users: u32, size: u32) -> Bucket {
        let first = (k - 1) / size * size + 1;
        Bucket { first, len: size.min(users - first + 1) }
    }

    /// True if user `u` is a member.
    pub fn contains(&self, u: u32) -> bool {
        u >= self.first && u - self.first < self.len
    }

    /// The recipient of message `seq` of member `k`: the other members round robin,
    /// starting with the one after `k`. `None` for a lone user.
    pub fn target(&self, k: u32, seq: u64) -> Option<u32> {
        if self.len < 2 {
            return None;
        }
        let pos = (k - self.first) as u64;
        let len = self.len as u64;
        let t = (pos + 1 + seq % (len - 1)) % len;
        Some(self.first + t as u32)
    }
}

/// The send schedule, in µs relative to a worker's base instant.
#[derive(Debug, Clone, Copy)]
pub struct SendPlan {
    /// First possible send time.
    pub start_us: u64,
    /// No message is scheduled at or after this time.
    pub end_us: u64,
    /// Time between two messages of one user.
    pub interval_us: u64,
    /// Total users (the offsets spread all of them over one interval).
    pub users: u32,
    /// Send times are rounded down to multiples of this (after `start_us`), so that
    /// the sends of one tick share one wake-up of the scheduler and of the runtime.
    pub tick_us: u64,
    /// Most sends per user (mam: exactly half an archive), `u64::MAX` for no cap.
    pub max_count: u64,
}

impl SendPlan {
    /// User k's fixed offset within the interval (before rounding to the tick).
    pub fn offset(&self, k: u32) -> u64 {
        ((k as u128 - 1) * self.interval_us as u128 / self.users as u128) as u64
    }

    /// When user k's message `seq` is scheduled.
    pub fn time(&self, k: u32, seq: u64) -> u64 {
        let t = self.offset(k) + seq * self.interval_us;
        self.start_us + t / self.tick_us.max(1) * self.tick_us.max(1)
    }

    /// How many messages user k sends (those scheduled before `end_us`).
    pub fn count(&self, k: u32) -> u64 {
        let first = self.start_us + self.offset(k);
        let mut n = if first >= self.end_us { 0 } else { (self.end_us - first).div_ceil(self.interval_us) };
        // Rounding down to the tick can only move times earlier.
        while self.time(k, n) < self.end_us {
            n += 1;
        }
        n.min(self.max_count)
    }
}

/// Disruptions (presence churn, sm-resume cuts) at `rate` per second across all users
/// from `start_us` to `end_us`: event j at `start + (j + 1/2) / rate`, on user
/// `1 + j * stride mod users` with `stride` coprime to `users` (near the golden ratio
/// of it), so that every user is hit once before any is hit twice and consecutive
/// events hit users far apart (in other buckets, not neighbours in the ring). Fixed in
/// advance like the send times: every worker computes the same list.
pub fn events(rate: f64, start_us: u64, end_us: u64, users: u32) -> impl Iterator<Item = (u32, u64)> {
    let span = end_us.saturating_sub(start_us) as f64;
    let n = if rate > 0.0 { (span * rate / 1e6).floor() as u64 } else { 0 };
    let users64 = u64::from(users.max(1));
    let mut stride = ((users64 as f64 * 0.618) as u64).max(1);
    while gcd(stride, users64) != 1 {
        stride += 1;
    }
    (0..n).map(move |j| {
        let t = start_us + ((j as f64 + 0.5) * 1e6 / rate) as u64;
        (1 + (j * stride % users64) as u32, t)
    })
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Starts the scheduler thread: wakes user k's `notify` at every send time of k
/// (relative to `base`); users due at the same time are woken together. The thread
/// ends after the last send time.
pub fn spawn_scheduler(plan: SendPlan, base: Instant, senders: Vec<(u32, Arc<Notify>)>) -> std::io::Result<()> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    std::thread::Builder::new().name("scheduler".into()).spawn(move || {
        let counts: Vec<u64> = senders.iter().map(|(k, _)| plan.count(*k)).collect();
        // (time, sender index, seq), earliest first.
        let mut heap: BinaryHeap<Reverse<(u64, usize, u64)>> = senders
            .iter()
            .enumerate()
            .filter(|(i, _)| counts[*i] > 0)
            .map(|(i, (k, _))| Reverse((plan.time(*k, 0), i, 0)))
            .collect();
        while let Some(Reverse((t, _, _))) = heap.peek().copied() {
            sleep_until(base + Duration::from_micros(t));
            while let Some(&Reverse((t2, i, seq))) = heap.peek() {
                if t2 > t {
                    break;
                }
                heap.pop();
                let (k, notify) = &senders[i];
                notify.notify_one();
                if seq + 1 < counts[i] {
                    heap.push(Reverse((plan.time(*k, seq + 1), i, seq + 1)));
                }
            }
        }
    })?;
    Ok(())
}

/// Sleeps until `t` with the OS timer (typically 50–100 µs late, never early).
fn sleep_until(t: Instant) {
    loop {
        let now = Instant::now();
        if now >= t {
            return;
        }
        std::thread::sleep(t - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_of_ten_with_a_short_last_one() {
        assert_eq!(Bucket::of(1, 25, 10), Bucket { first: 1, len: 10 });
        assert_eq!(Bucket::of(10, 25, 10), Bucket { first: 1, len: 10 });
        assert_eq!(Bucket::of(11, 25, 10), Bucket { first: 11, len: 10 });
        assert_eq!(Bucket::of(21, 25, 10), Bucket { first: 21, len: 5 });
        assert_eq!(Bucket::of(25, 25, 10), Bucket { first: 21, len: 5 });
        assert_eq!(Bucket::of(21, 21, 10), Bucket { first: 21, len: 1 });
        assert!(Bucket::of(21, 25, 10).contains(25) && !Bucket::of(21, 25, 10).contains(20));
    }

    #[test]
    fn round_robin_over_the_other_members() {
        let b = Bucket::of(3, 25, 10);
        let targets: Vec<u32> = (0..9).map(|s| b.target(3, s).unwrap()).collect();
        assert_eq!(targets, [4, 5, 6, 7, 8, 9, 10, 1, 2]);
        assert_eq!(b.target(3, 9), Some(4));
        let short = Bucket::of(24, 25, 10);
        let t: Vec<u32> = (0..5).map(|s| short.target(24, s).unwrap()).collect();
        assert_eq!(t, [25, 21, 22, 23, 25]);
        assert_eq!(Bucket::of(21, 21, 10).target(21, 0), None);
    }

    #[test]
    fn open_loop_times() {
        let p = SendPlan {
            start_us: 1_000,
            end_us: 1_000 + 3_000_000,
            interval_us: 1_000_000,
            users: 4,
            tick_us: 1,
            max_count: u64::MAX,
        };
        assert_eq!(p.offset(1), 0);
        assert_eq!(p.offset(3), 500_000);
        assert_eq!(p.time(3, 2), 1_000 + 500_000 + 2_000_000);
        assert_eq!(p.count(1), 3);
        assert_eq!(p.count(4), 3);
        let short = SendPlan { end_us: 1_000 + 2_600_000, ..p };
        assert_eq!((short.count(1), short.count(4)), (3, 2));
        // The sum over users is the offered rate times the duration.
        let q = SendPlan {
            start_us: 0,
            end_us: 10_000_000,
            interval_us: 200_000,
            users: 50,
            tick_us: 1_000,
            max_count: u64::MAX,
        };
        assert_eq!((1..=50).map(|k| q.count(k)).sum::<u64>(), 50 * 10_000_000 / 200_000);
        // A cap (mam): every user sends exactly that many when the window fits them.
        let m = SendPlan { end_us: 7 * 200_000, max_count: 7, ..q };
        assert!((1..=50).all(|k| m.count(k) == 7));
    }

    #[test]
    fn disruption_events_cover_every_user_before_repeating() {
        let ev: Vec<(u32, u64)> = events(10.0, 1_000, 1_000 + 2_000_000, 12).collect();
        assert_eq!(ev.len(), 20);
        assert_eq!(ev[0].1, 1_000 + 50_000);
        assert!(ev.windows(2).all(|w| w[1].1 - w[0].1 == 100_000));
        let mut first: Vec<u32> = ev[..12].iter().map(|e| e.0).collect();
        first.sort_unstable();
        assert_eq!(first, (1..=12).collect::<Vec<_>>());
        assert_eq!(events(0.0, 0, 1_000_000, 5).count(), 0);
        assert_eq!(events(5.0, 0, 1_000_000, 1).map(|e| e.0).collect::<Vec<_>>(), [1; 5]);
    }

    #[test]
    fn times_are_rounded_to_the_tick() {
        // 3 users, 1 s interval: offsets 0, 333_333, 666_666 µs.
        let p = SendPlan {
            start_us: 7,
            end_us: 7 + 2_000_000,
            interval_us: 1_000_000,
            users: 3,
            tick_us: 1_000,
            max_count: u64::MAX,
        };
        assert_eq!(p.time(2, 0), 7 + 333_000);
        assert_eq!(p.time(3, 1), 7 + 1_666_000);
        assert!((1..=3).all(|k| p.count(k) == 2));
        // An interval that is not a multiple of the tick: the average rate is kept.
        let q = SendPlan {
            start_us: 0,
            end_us: 1_000_000,
            interval_us: 333_333,
            users: 1,
            tick_us: 1_000,
            max_count: u64::MAX,
        };
        let times: Vec<u64> = (0..q.count(1)).map(|s| q.time(1, s)).collect();
        assert_eq!(times, [0, 333_000, 666_000, 999_000]);
        assert!(times.iter().all(|t| t % 1_000 == 0));
    }
}
