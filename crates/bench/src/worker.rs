//! A worker process: runs users I+1, I+1+W, I+1+2W… (one tokio task each) on a small
//! runtime, following the timeline the parent fixed (login start, start of the
//! measured phase, as Unix ms), and prints its [`WorkerReport`] as one JSON line.

use std::io::Write as _;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use rustls::pki_types::ServerName;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::cli::{Args, Scenario, Transport};
use crate::login::{self, Registered, Setup, Want};
use crate::report::WorkerReport;
use crate::sasl::{KeyCache, NonceGen};
use crate::schedule::events;
use crate::schedule::{spawn_scheduler, Bucket, SendPlan};
use crate::ws::WsUrl;
use crate::{mam, muc, presence, session, smresume};

/// Now, in Unix µs.
pub fn unix_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// The run's fixed times, in µs after the worker's base instant.
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    /// The monotonic instant all offsets count from.
    pub base: std::time::Instant,
    /// `base` as Unix µs.
    pub base_unix_us: u64,
    /// First login.
    pub login_us: u64,
    /// presence: start of the subscription setup (end of the login ramp).
    pub setup_us: u64,
    /// Start of the measured phase.
    pub start_us: u64,
    /// End of the measured phase.
    pub end_us: u64,
    /// When sessions close (after the drain in the sending scenarios); mam: end of
    /// the fill's drain (the sessions stay for the pass and the lookups).
    pub close_us: u64,
    /// mam: start of the lookups (else `close_us`).
    pub lookup_start_us: u64,
    /// mam: end of the lookups (else `close_us`).
    pub lookup_end_us: u64,
}

impl Timeline {
    /// The tokio instant of offset `us`.
    pub fn instant(&self, us: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.base + Duration::from_micros(us))
    }

    /// Offset `us` as Unix µs.
    pub fn unix_us(&self, us: u64) -> u64 {
        self.base_unix_us + us
    }
}

/// What every task of the worker shares.
pub struct Ctx {
    /// Login settings.
    pub setup: Setup,
    /// The scenario.
    pub scenario: Scenario,
    /// Total users of the run.
    pub users: u32,
    /// one-to-one bucket size.
    pub bucket_size: u32,
    /// presence: contacts per user.
    pub contacts: u32,
    /// The XMPP domain (unescaped).
    pub domain: String,
    /// Tags this run's messages.
    pub run_id: u64,
    /// Fixed times.
    pub tl: Timeline,
    /// one-to-one send schedule.
    pub plan: SendPlan,
    /// mam: the lookup schedule.
    pub lookups: SendPlan,
    /// mam: the page looked up and its size.
    pub page: u64,
    /// mam: messages per page.
    pub page_size: u64,
    /// µs to wait for answers in flight after the last send (--drain-seconds).
    pub drain_us: u64,
    /// Logins per second across all workers.
    pub login_rate: f64,
    /// Source addresses, round robin by user number.
    pub sources: Vec<IpAddr>,
    /// The message body (already XML text).
    pub body: String,
    /// `to` before the user number: the escaped prefix.
    pub to_prefix: String,
    /// `to` after the user number: `@` and the escaped domain.
    pub to_suffix: String,
    /// muc-light, muc: the rooms.
    pub rooms: Option<muc::Rooms>,
    /// The counters.
    pub stats: Mutex<WorkerReport>,
}

/// Runs worker `idx` of `count` and prints its report on stdout.
pub fn run(args: &Args, idx: u32, count: u32) -> anyhow::Result<()> {
    let mut b = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(args.threads);
        b
    };
    let rt = b.enable_all().build().context("building the tokio runtime")?;
    let report = rt.block_on(work(args, idx, count))?;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, &report).context("writing the worker report")?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

async fn work(args: &Args, idx: u32, count: u32) -> anyhow::Result<WorkerReport> {
    let base = std::time::Instant::now();
    let base_unix_us = unix_us();
    let rel = |unix_ms: u64| (unix_ms * 1000).saturating_sub(base_unix_us);
    let login_ms = args.plan_login_ms.unwrap_or(base_unix_us / 1000 + 100);
    let start_ms =
        args.plan_start_ms.unwrap_or(login_ms + ((args.ramp_seconds() + args.setup_seconds()) * 1000.0) as u64);
    let start_us = rel(start_ms);
    let setup_us = start_us.saturating_sub((args.setup_seconds() * 1e6) as u64);
    let end_us = start_us + (args.send_seconds() * 1e6) as u64;
    let close_us = match args.scenario.sends() {
        true => end_us + (args.drain_seconds * 1e6) as u64,
        false => end_us,
    };
    let (lookup_start_us, lookup_end_us) = match args.scenario {
        Scenario::Mam => {
            let start = close_us + (args.learn_seconds() * 1e6) as u64;
            (start, start + (args.lookup_seconds * 1e6) as u64)
        }
        _ => (close_us, close_us),
    };
    let tl = Timeline {
        base,
        base_unix_us,
        login_us: rel(login_ms),
        setup_us,
        start_us,
        end_us,
        close_us,
        lookup_start_us,
        lookup_end_us,
    };
    let tls = match args.tls {
        false => None,
        true => {
            let name = ServerName::try_from(args.domain.clone()).context("--domain is not a valid TLS server name")?;
            Some((crate::conn::tls_config()?, name))
        }
    };
    let setup = Setup {
        servers: args.server_addrs()?,
        prefix: args.user_prefix.clone(),
        password: args.password.clone(),
        mechanism: args.mechanism,
        tls,
        resource: args.resource.clone(),
        timeout: Duration::from_secs_f64(args.login_timeout),
        keys: KeyCache::default(),
        header: Setup::header_for(&args.domain, args.transport == Transport::Websocket),
        ws: match args.transport {
            Transport::Tcp => None,
            Transport::Websocket => Some(WsUrl::parse(&args.ws_url())?),
        },
    };
    let mut to_prefix = String::new();
    meerkat_xml::escape_attr(&args.user_prefix, &mut to_prefix);
    let mut to_suffix = String::from("@");
    meerkat_xml::escape_attr(&args.domain, &mut to_suffix);
    let rooms = args.scenario.rooms().then(|| muc::Rooms::from_args(args));
    let plan = match &rooms {
        // Slots (room, position) instead of users: see `muc`.
        Some(r) => r.layout.plan(start_us, end_us, args.room_rate, args.tick_us),
        None => SendPlan {
            start_us,
            end_us,
            interval_us: args.interval_us(),
            users: args.users,
            tick_us: args.tick_us,
            max_count: args.max_per_user(),
        },
    };
    let lookups = SendPlan {
        start_us: lookup_start_us,
        end_us: lookup_end_us,
        interval_us: ((f64::from(args.users) * 1e6 / args.lookup_rate).round() as u64).max(1),
        users: args.users,
        tick_us: args.tick_us,
        max_count: u64::MAX,
    };
    let ctx = Arc::new(Ctx {
        setup,
        scenario: args.scenario,
        users: args.users,
        bucket_size: args.bucket(),
        contacts: args.contacts,
        domain: args.domain.clone(),
        run_id: args.run_id.unwrap_or(base_unix_us),
        tl,
        plan,
        lookups,
        page: args.page,
        page_size: args.page_size,
        drain_us: (args.drain_seconds * 1e6) as u64,
        login_rate: args.login_rate,
        sources: args.source_addrs()?,
        body: filler(args.body_size),
        to_prefix,
        to_suffix,
        rooms,
        stats: Mutex::new(WorkerReport::new()),
    });

    let mine: Vec<u32> = (idx + 1..=args.users).step_by(count as usize).collect();
    // Churn (presence) or cuts (sm-resume) of this worker's users, per user in time order.
    let rate = match args.scenario {
        Scenario::Presence => args.churn_per_s,
        Scenario::SmResume => args.disconnect_per_s,
        _ => 0.0,
    };
    let mut disruptions: Vec<Vec<u64>> = vec![Vec::new(); mine.len()];
    for (k, t) in events(rate, start_us, end_us, args.users) {
        if (k - 1) % count == idx {
            disruptions[((k - 1) / count) as usize].push(t);
        }
    }
    let mut senders = Vec::new();
    let mut lookers = Vec::new();
    let mut set = JoinSet::new();
    for (&k, disrupt) in mine.iter().zip(disruptions) {
        let sends = match args.scenario {
            Scenario::OneToOne | Scenario::SmResume | Scenario::Mam => Bucket::of(k, args.users, args.bucket()).len > 1,
            Scenario::Presence => true,
            _ => false,
        } && plan.count(k) > 0;
        // muc-light, muc: the scheduler wakes the user for each of its rooms' slots.
        let slots: Vec<u32> = match &ctx.rooms {
            Some(r) => r.of_user[k as usize - 1]
                .iter()
                .map(|&(room, pos)| r.layout.slot(room, pos))
                .filter(|&s| plan.count(s) > 0)
                .collect(),
            None => Vec::new(),
        };
        let notify = (sends || !slots.is_empty()).then(|| Arc::new(Notify::new()));
        if let Some(n) = &notify {
            if ctx.rooms.is_some() {
                senders.extend(slots.iter().map(|&s| (s, n.clone())));
            } else {
                senders.push((k, n.clone()));
            }
        }
        let looks = args.scenario == Scenario::Mam && lookups.count(k) > 0;
        let lookup = looks.then(|| Arc::new(Notify::new()));
        if let Some(n) = &lookup {
            lookers.push((k, n.clone()));
        }
        set.spawn(user(ctx.clone(), k, Wake { send: notify, lookup }, disrupt));
    }
    spawn_scheduler(plan, base, senders).context("starting the scheduler thread")?;
    if !lookers.is_empty() {
        spawn_scheduler(lookups, base, lookers).context("starting the lookup scheduler thread")?;
    }
    while let Some(r) = set.join_next().await {
        if let Err(e) = r {
            ctx.stats.lock().unwrap_or_else(|e| e.into_inner()).disconnected(format!("task failed: {e}"));
        }
    }
    let mut report = ctx.stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
    report.users = mine.len() as u64;
    report.scram_derivations = ctx.setup.keys.derivations.load(std::sync::atomic::Ordering::Relaxed);
    (report.generator_cpu_ms, report.generator_rss_kib) = crate::procfs::own_usage();
    Ok(report)
}

/// `n` bytes of message body.
fn filler(n: usize) -> String {
    const TEXT: &str = "The quick brown fox jumps over the lazy dog. ";
    TEXT.chars().cycle().take(n).collect()
}

/// The source address of user `k`.
pub fn source_of(ctx: &Ctx, k: u32) -> Option<IpAddr> {
    match ctx.sources.len() {
        0 => None,
        n => Some(ctx.sources[(k as usize - 1) % n]),
    }
}

/// What wakes a user's task on schedule (`None`: it has nothing scheduled).
struct Wake {
    /// Its next message (or presence update) is due.
    send: Option<Arc<Notify>>,
    /// mam: its next lookup is due.
    lookup: Option<Arc<Notify>>,
}

/// One simulated user: waits for its login slot, logs in, then runs its scenario;
/// `disrupt`: the times of its churn logouts (presence) or connection cuts
/// (sm-resume).
async fn user(ctx: Arc<Ctx>, k: u32, wake: Wake, disrupt: Vec<u64>) {
    let notify = wake.send;
    let at = ctx.tl.login_us + ((k - 1) as f64 * 1e6 / ctx.login_rate) as u64;
    tokio::time::sleep_until(ctx.tl.instant(at)).await;
    let source = source_of(&ctx, k);
    let name = format!("{}{k}", ctx.setup.prefix);
    let started = unix_us();
    ctx.stats.lock().unwrap_or_else(|e| e.into_inner()).login_started(started);
    if ctx.scenario == Scenario::Register {
        let r = Box::pin(login::register(&ctx.setup, &name, source)).await;
        let mut st = ctx.stats.lock().unwrap_or_else(|e| e.into_inner());
        match r {
            Ok(Registered::Created) => st.registered += 1,
            Ok(Registered::Existed) => st.existed += 1,
            Err(e) => st.login_failed(&e),
        }
        return;
    }
    let mut nonces = NonceGen::new(u64::from(k));
    let want = Want { roster: ctx.scenario == Scenario::Presence, sm: ctx.scenario == Scenario::SmResume };
    let r = Box::pin(login::login_with(&ctx.setup, &name, source, nonces.next(), want)).await;
    let sess = {
        let mut st = ctx.stats.lock().unwrap_or_else(|e| e.into_inner());
        match r {
            Err(e) => {
                st.login_failed(&e);
                return;
            }
            Ok(sess) => {
                st.login_ok(started, &sess.times);
                // presence, muc-light, muc: the setup phase needs every user online.
                let due = match ctx.scenario {
                    Scenario::Presence | Scenario::MucLight | Scenario::Muc => ctx.tl.setup_us,
                    _ => ctx.tl.start_us,
                };
                if tokio::time::Instant::now() > ctx.tl.instant(due) {
                    st.late_logins += 1;
                }
                sess
            }
        }
    };
    match ctx.scenario {
        Scenario::Presence => Box::pin(presence::online(&ctx, k, sess, notify, disrupt, nonces)).await,
        Scenario::SmResume => Box::pin(smresume::online(&ctx, k, sess, notify, disrupt, nonces)).await,
        Scenario::Mam => Box::pin(mam::online(&ctx, k, sess.conn, notify, wake.lookup)).await,
        Scenario::MucLight | Scenario::Muc => Box::pin(muc::online(&ctx, k, sess.conn, notify)).await,
        _ => session::online(&ctx, k, sess.conn, notify).await,
    }
}
