//! The command line: every option, its defaults, and the values derived from them
//! (worker count, ramp, message interval, source addresses). The parent re-runs the
//! same binary for each worker with the same arguments plus the hidden `--worker`,
//! `--plan-login-ms`, `--plan-start-ms` and `--run-id` flags.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use serde::Serialize;

/// Users handled by one worker process by default (each worker stays under the
/// machine's 20,000 open files per process).
pub const USERS_PER_WORKER: u32 = 15_000;

/// What the simulated users do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Log in at an open-loop arrival rate, stay online, disconnect cleanly.
    Connect,
    /// Log in, then in buckets of 10 send chat messages to each other at a fixed
    /// (open-loop) rate; measures time to delivery.
    OneToOne,
    /// Create the accounts by in-band registration (XEP-0077); existing ones count as done.
    Register,
    /// Rosters of --contacts mutual (`both`) subscriptions, set up over XMPP first
    /// (not measured); then presence updates at a fixed (open-loop) rate plus
    /// logout/login churn; measures presence time to delivery.
    Presence,
    /// one-to-one with stream management (XEP-0198): connections are cut abruptly on a
    /// schedule and the sessions resumed; measures resume time and exactly-once delivery.
    SmResume,
    /// Message archive (XEP-0313): pairs of users fill their archives with
    /// --archive-size messages at --rate (open loop, time to delivery measured), every
    /// archive is then paged through and checked, and page --page is looked up at
    /// --lookup-rate (open loop); measures lookup latency.
    Mam,
    /// MUC Light group chat (MongooseIM's `urn:xmpp:muclight:0`, amoc's shape):
    /// users*K/N rooms of --room-size N on `muclight.DOMAIN`, each user in
    /// --rooms-per-user K of them, created in the setup phase (not measured); then
    /// every room gets --room-rate messages per second (open loop, senders round
    /// robin over its occupants), each delivered to all N occupants; measures time
    /// to delivery, lost and duplicated deliveries.
    MucLight,
    /// Multi-user chat (XEP-0045) with the same shape on `conference.DOMAIN`: the
    /// rooms are created and joined in the setup phase (not measured), then
    /// messages as in muc-light.
    Muc,
}

impl Scenario {
    /// The name used on the command line and in the JSON result.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Connect => "connect",
            Scenario::OneToOne => "one-to-one",
            Scenario::Register => "register",
            Scenario::Presence => "presence",
            Scenario::SmResume => "sm-resume",
            Scenario::Mam => "mam",
            Scenario::MucLight => "muc-light",
            Scenario::Muc => "muc",
        }
    }

    /// True for the scenarios that send stamped stanzas on an open-loop schedule.
    pub fn sends(self) -> bool {
        matches!(
            self,
            Scenario::OneToOne
                | Scenario::Presence
                | Scenario::SmResume
                | Scenario::Mam
                | Scenario::MucLight
                | Scenario::Muc
        )
    }

    /// True for the group chat scenarios (muc-light, muc).
    pub fn rooms(self) -> bool {
        matches!(self, Scenario::MucLight | Scenario::Muc)
    }
}

/// How the client streams are carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// An XMPP stream over TCP (RFC 6120), with --tls upgraded by STARTTLS.
    Tcp,
    /// XMPP over WebSocket (RFC 7395), plain `ws://` only.
    Websocket,
}

/// The SASL mechanism the users authenticate with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub enum Mechanism {
    /// SCRAM-SHA-1 (RFC 5802).
    #[value(name = "SCRAM-SHA-1")]
    #[serde(rename = "SCRAM-SHA-1")]
    ScramSha1,
    /// SCRAM-SHA-256 (RFC 7677).
    #[value(name = "SCRAM-SHA-256")]
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM-SHA-512.
    #[value(name = "SCRAM-SHA-512")]
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    /// PLAIN (RFC 4616).
    #[value(name = "PLAIN")]
    #[serde(rename = "PLAIN")]
    Plain,
}

impl Mechanism {
    /// The name in `<auth mechanism='…'>` and in `<mechanisms/>`.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
            Mechanism::Plain => "PLAIN",
        }
    }
}

/// meerkat-bench: drives any XMPP server (Meerkat, ejabberd, Prosody) with N simulated
/// users, one tokio task each, spread over worker processes, and prints one JSON line
/// of results (appended to --json FILE when given).
///
/// Accounts PREFIX1..PREFIXN@DOMAIN must exist with one shared password (or use the
/// `register` scenario to create them by in-band registration).
///
/// With --tls the connection is upgraded with STARTTLS and the server's certificate is
/// NOT verified (loopback benchmarking only). Without --tls the stream stays plain TCP,
/// which works only if the server allows it (Meerkat's `tls.mode = "none"` listener,
/// ejabberd/Prosody configured to allow plaintext). With --transport websocket the
/// streams are XMPP over WebSocket (RFC 7395) on plain ws:// (--ws-url).
#[derive(Debug, Clone, Parser, Serialize)]
#[command(name = "meerkat-bench", version, verbatim_doc_comment)]
pub struct Args {
    /// The scenario to run.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// The server's address; for a cluster, the nodes' addresses separated by
    /// commas: user N connects to node (N-1) mod count, so with k nodes a
    /// one-to-one bucket's messages cross nodes (k-1)/k of the time.
    #[arg(long, default_value = "127.0.0.1:5222", value_name = "HOST:PORT[,HOST:PORT…]")]
    pub server: String,
    /// The XMPP domain of the accounts (the stream's `to`).
    #[arg(long, default_value = "localhost")]
    pub domain: String,
    /// Number of simulated users (accounts PREFIX1..PREFIXN).
    #[arg(long)]
    pub users: u32,
    /// Account name prefix.
    #[arg(long, default_value = "user")]
    pub user_prefix: String,
    /// The password shared by every account.
    #[arg(long, default_value = "secret")]
    pub password: String,
    /// Seconds of the measured phase (after the login ramp): users stay online
    /// (connect) or send messages (one-to-one) this long. mam: not used (the fill
    /// lasts as long as --archive-size at --rate takes; see --lookup-seconds).
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// How streams are carried: `tcp`, or `websocket` (RFC 7395 over plain ws://,
    /// see --ws-url; not with --tls).
    #[arg(long, value_enum, default_value = "tcp")]
    pub transport: Transport,
    /// websocket: the endpoint [default: ws://SERVER/ws-xmpp, with --server the HTTP
    /// listener's address].
    #[arg(long, value_name = "URL")]
    pub ws_url: Option<String>,
    /// one-to-one, sm-resume, presence, mam: total stanzas per second to offer
    /// (messages; presence updates); overrides --interval-ms.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Upgrade with STARTTLS (server certificate not verified: loopback benchmarking).
    #[arg(long)]
    pub tls: bool,
    /// Append the JSON result line to this file instead of printing it on stdout.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Worker processes [default: ceil(users / 15000); for muc and muc-light at
    /// least one per core].
    #[arg(long)]
    pub workers: Option<u32>,
    /// Source addresses to bind connections to, round robin: a range
    /// `127.0.0.2-127.0.0.20` or a comma-separated list. Default: chosen by the
    /// kernel, except 127.0.0.2.. (one per 5,000 users) when the server is on
    /// loopback and there are more than 20,000 users.
    #[arg(long, value_name = "IPS")]
    pub source_ips: Option<String>,
    /// A server process to sample from /proc (RSS, CPU); repeatable.
    #[arg(long = "server-pid", value_name = "PID")]
    pub server_pid: Vec<u32>,
    /// Logins per second, open loop, across all workers.
    #[arg(long, default_value_t = 500.0)]
    pub login_rate: f64,
    /// Seconds allowed for the login phase before the measured phase starts
    /// [default: users / login-rate + 5].
    #[arg(long)]
    pub ramp_seconds: Option<f64>,
    /// one-to-one, sm-resume: milliseconds between two messages of one user;
    /// presence: between two presence updates of one user.
    #[arg(long, default_value_t = 1000.0)]
    pub interval_ms: f64,
    /// one-to-one, sm-resume: bytes of each message body.
    #[arg(long, default_value_t = 100)]
    pub body_size: usize,
    /// one-to-one, sm-resume: users per conversation bucket.
    #[arg(long, default_value_t = 10)]
    pub bucket_size: u32,
    /// Open-loop scenarios: send times are rounded down to multiples of this many µs, so that
    /// the sends due in one tick share one wake-up (less generator CPU).
    #[arg(long, default_value_t = 1000)]
    pub tick_us: u64,
    /// one-to-one, sm-resume, presence: seconds to wait for stanzas in flight after the
    /// last send.
    #[arg(long, default_value_t = 5.0)]
    pub drain_seconds: f64,
    /// presence: contacts per user (even, below --users): the K/2 neighbours on each
    /// side in the ring of users, all with mutual `both` subscriptions.
    #[arg(long, default_value_t = 10)]
    pub contacts: u32,
    /// presence: logouts per second across all users during the measured phase; each
    /// churned user logs back in at once (contacts see unavailable, then available).
    #[arg(long, default_value_t = 0.0)]
    pub churn_per_s: f64,
    /// presence: seconds between the login ramp and the measured phase in which the
    /// missing subscriptions are established (not measured)
    /// [default: 5 + users * contacts / 2000]. mam: seconds between the end of the
    /// fill (after the drain) and the lookups, in which every user pages through its
    /// archive once [default: 5 + users * archive-size / page-size / 250].
    /// muc-light, muc: seconds between the login ramp and the measured phase in which
    /// the rooms are created (and joined) [muc-light default: 5 + users * K / 5000,
    /// plus rooms * N² / 2000000 for rooms above --create-chunk; muc: 5 + users /
    /// login-rate + users * K / 1000 + rooms * N² / 200000].
    #[arg(long)]
    pub setup_seconds: Option<f64>,
    /// mam: messages each user's archive receives in this run (its pair's messages
    /// both ways; odd sizes are rounded up to even).
    #[arg(long, default_value_t = 100_000)]
    pub archive_size: u64,
    /// mam: the page looked up (1-based, counted from this run's first message).
    #[arg(long, default_value_t = 50)]
    pub page: u64,
    /// mam: messages per page (RSM `<max/>`; the server may clamp it: Meerkat's
    /// `max_result_limit`, 50 by default).
    #[arg(long, default_value_t = 50)]
    pub page_size: u64,
    /// mam: lookups per second across all users, open loop.
    #[arg(long, default_value_t = 100.0)]
    pub lookup_rate: f64,
    /// mam: seconds of the lookup phase.
    #[arg(long, default_value_t = 10.0)]
    pub lookup_seconds: f64,
    /// muc-light, muc: occupants per room (N).
    #[arg(long, default_value_t = 5)]
    pub room_size: u32,
    /// muc-light, muc: rooms each user is in (K); there are users * K / N rooms
    /// (which must be a whole number).
    #[arg(long, default_value_t = 10)]
    pub rooms_per_user: u32,
    /// muc-light, muc: messages per second offered to each room (open loop).
    #[arg(long, default_value_t = 0.1)]
    pub room_rate: f64,
    /// muc-light: most occupants named in one IQ: the creation names the first
    /// CHUNK - 1 besides the creator, then the creator adds the rest CHUNK at a time
    /// (`#affiliations`). 1,000 keeps each IQ under 64 KiB (Meerkat's and ejabberd's
    /// default max_stanza_size).
    #[arg(long, default_value_t = 1000)]
    pub create_chunk: u32,
    /// muc-light, muc: the rooms' service [default: muclight.DOMAIN for muc-light,
    /// conference.DOMAIN for muc].
    #[arg(long, value_name = "HOST")]
    pub room_service: Option<String>,
    /// sm-resume: connections cut abruptly per second across all users during the
    /// measured phase; each cut session is resumed at once (XEP-0198).
    #[arg(long, default_value_t = 1.0)]
    pub disconnect_per_s: f64,
    /// SASL mechanism.
    #[arg(long, value_enum, default_value = "SCRAM-SHA-256")]
    pub mechanism: Mechanism,
    /// Seconds a login may take before it counts as failed.
    #[arg(long, default_value_t = 30.0)]
    pub login_timeout: f64,
    /// Resource to bind.
    #[arg(long, default_value = "bench")]
    pub resource: String,
    /// Runtime threads per worker process (1: a current-thread runtime).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Internal: run as worker I of W (0-based) and print its result on stdout.
    #[arg(long, hide = true, value_name = "I/W")]
    pub worker: Option<String>,
    /// Internal: Unix ms at which the first login starts.
    #[arg(long, hide = true)]
    pub plan_login_ms: Option<u64>,
    /// Internal: Unix ms at which the measured phase starts.
    #[arg(long, hide = true)]
    pub plan_start_ms: Option<u64>,
    /// Internal: tags this run's messages, so stale offline messages are ignored.
    #[arg(long, hide = true)]
    pub run_id: Option<u64>,
}

impl Args {
    /// Rejects option values that make no sense.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.users == 0 {
            bail!("--users must be at least 1");
        }
        let positive = |x: f64| x.is_finite() && x > 0.0;
        let non_negative = |x: f64| x.is_finite() && x >= 0.0;
        if !(non_negative(self.duration) && non_negative(self.drain_seconds) && positive(self.login_timeout)) {
            bail!("--duration, --drain-seconds must be >= 0 and --login-timeout > 0");
        }
        if self.ramp_seconds.is_some_and(|r| !non_negative(r)) {
            bail!("--ramp-seconds must be >= 0");
        }
        if !positive(self.login_rate) {
            bail!("--login-rate must be > 0");
        }
        if !positive(self.interval_ms) || self.rate.is_some_and(|r| !positive(r)) {
            bail!("--interval-ms and --rate must be > 0");
        }
        if self.bucket_size < 2 {
            bail!("--bucket-size must be at least 2");
        }
        if self.tick_us == 0 {
            bail!("--tick-us must be at least 1");
        }
        if self.threads == 0 {
            bail!("--threads must be at least 1");
        }
        if !(non_negative(self.churn_per_s) && non_negative(self.disconnect_per_s)) {
            bail!("--churn-per-s and --disconnect-per-s must be >= 0");
        }
        if self.setup_seconds.is_some_and(|r| !non_negative(r)) {
            bail!("--setup-seconds must be >= 0");
        }
        if self.scenario == Scenario::Mam {
            if !self.users.is_multiple_of(2) {
                bail!("mam: --users must be even (users talk in pairs)");
            }
            if self.page == 0 || self.page_size == 0 || self.page * self.page_size > self.archive_msgs() {
                bail!("mam: --page and --page-size must be at least 1 and the page within --archive-size");
            }
            if !(positive(self.lookup_rate) && non_negative(self.lookup_seconds)) {
                bail!("mam: --lookup-rate must be > 0 and --lookup-seconds >= 0");
            }
        }
        if self.scenario == Scenario::Presence
            && (self.contacts == 0 || !self.contacts.is_multiple_of(2) || self.contacts >= self.users)
        {
            bail!("presence: --contacts must be even, at least 2 and below --users");
        }
        if self.scenario.rooms() {
            let (n, k) = (u64::from(self.room_size), u64::from(self.rooms_per_user));
            if n < 2 || n > u64::from(self.users) || k == 0 {
                bail!(
                    "{}: --room-size must be at least 2 and at most --users, --rooms-per-user at least 1",
                    self.scenario.name()
                );
            }
            if !(u64::from(self.users) * k).is_multiple_of(n) {
                bail!(
                    "{}: --users * --rooms-per-user ({}) must be a multiple of --room-size ({n})",
                    self.scenario.name(),
                    u64::from(self.users) * k
                );
            }
            if u64::from(self.users) * k > u64::from(u32::MAX / 2) {
                bail!("{}: too many room memberships", self.scenario.name());
            }
            if !positive(self.room_rate) {
                bail!("{}: --room-rate must be > 0", self.scenario.name());
            }
            if self.create_chunk < 2 {
                bail!("{}: --create-chunk must be at least 2", self.scenario.name());
            }
        }
        if self.transport == Transport::Websocket {
            if self.tls {
                bail!("--transport websocket runs over plain ws:// (no --tls)");
            }
            if self.scenario == Scenario::Register {
                bail!("register runs over TCP only");
            }
            crate::ws::WsUrl::parse(&self.ws_url())?;
        }
        self.server_addrs()?;
        self.source_addrs()?;
        Ok(())
    }

    /// The addresses to connect to (the first one each name resolves to): the
    /// --server list, or the host of the WebSocket URL.
    pub fn server_addrs(&self) -> anyhow::Result<Vec<SocketAddr>> {
        let targets = match self.transport {
            Transport::Tcp => self.server.split(',').map(|s| s.trim().to_string()).collect(),
            Transport::Websocket => vec![crate::ws::WsUrl::parse(&self.ws_url())?.authority],
        };
        targets
            .iter()
            .map(|target| {
                target
                    .to_socket_addrs()
                    .with_context(|| format!("resolving {target}"))?
                    .next()
                    .with_context(|| format!("{target} resolves to no address"))
            })
            .collect()
    }

    /// The WebSocket endpoint: --ws-url, else `ws://SERVER/ws-xmpp` (the first server).
    pub fn ws_url(&self) -> String {
        let first = self.server.split(',').next().unwrap_or_default();
        self.ws_url.clone().unwrap_or_else(|| format!("ws://{first}/ws-xmpp"))
    }

    /// presence: seconds of the (unmeasured) subscription setup phase, which comes
    /// before the measured phase (0 for the other scenarios).
    pub fn setup_seconds(&self) -> f64 {
        match self.scenario {
            Scenario::Presence => {
                self.setup_seconds.unwrap_or(5.0 + f64::from(self.users) * f64::from(self.contacts) / 2000.0)
            }
            Scenario::MucLight => {
                let memberships = f64::from(self.users) * f64::from(self.rooms_per_user);
                // Rooms above --create-chunk: each addition is announced to the
                // members already there (about N² / 2 names per room).
                let n = f64::from(self.room_size);
                let additions =
                    if self.room_size > self.create_chunk { self.room_count() as f64 * n * n / 2e6 } else { 0.0 };
                self.setup_seconds.unwrap_or(5.0 + memberships / 5000.0 + additions)
            }
            Scenario::Muc => {
                let memberships = f64::from(self.users) * f64::from(self.rooms_per_user);
                let n = f64::from(self.room_size);
                // Joins are paced at --login-rate; each join is broadcast to the
                // occupants already there (about rooms * N² / 2 presences each way).
                let fanout = self.room_count() as f64 * n * n / 200_000.0;
                self.setup_seconds
                    .unwrap_or(5.0 + f64::from(self.users) / self.login_rate + memberships / 1000.0 + fanout)
            }
            _ => 0.0,
        }
    }

    /// muc-light, muc: rooms in the run (users * K / N).
    pub fn room_count(&self) -> u32 {
        (u64::from(self.users) * u64::from(self.rooms_per_user) / u64::from(self.room_size.max(1))) as u32
    }

    /// muc-light, muc: the rooms' service domain.
    pub fn room_service(&self) -> String {
        match (&self.room_service, self.scenario) {
            (Some(s), _) => s.clone(),
            (None, Scenario::Muc) => format!("conference.{}", self.domain),
            (None, _) => format!("muclight.{}", self.domain),
        }
    }

    /// mam: seconds of the (unmeasured) pass through every archive between the fill
    /// and the lookups (budget: 4 ms per page queried).
    pub fn learn_seconds(&self) -> f64 {
        let pages = self.archive_msgs().div_ceil(self.page_size.max(1)) + 1;
        self.setup_seconds.unwrap_or(5.0 + f64::from(self.users) * pages as f64 / 250.0)
    }

    /// mam: messages each user sends during the fill (half its archive).
    pub fn mam_per_user(&self) -> u64 {
        self.archive_size.div_ceil(2)
    }

    /// mam: messages each user's archive receives in this run.
    pub fn archive_msgs(&self) -> u64 {
        2 * self.mam_per_user()
    }

    /// Users per conversation bucket: pairs for mam.
    pub fn bucket(&self) -> u32 {
        match self.scenario {
            Scenario::Mam => 2,
            _ => self.bucket_size,
        }
    }

    /// Seconds in which the open-loop messages are scheduled: --duration, or for mam
    /// the fill, each user's messages at its interval.
    pub fn send_seconds(&self) -> f64 {
        match self.scenario {
            Scenario::Mam => (self.mam_per_user() * self.interval_us()) as f64 / 1e6,
            _ => self.duration,
        }
    }

    /// Most messages one user sends (mam: exactly half its archive).
    pub fn max_per_user(&self) -> u64 {
        match self.scenario {
            Scenario::Mam => self.mam_per_user(),
            _ => u64::MAX,
        }
    }

    /// Worker processes to run: one per [`USERS_PER_WORKER`] users, and for the
    /// group chat scenarios at least one per core. A room message makes every
    /// member's connection readable at once; one worker's single thread reads
    /// them one after the other, which put the generator's own queue into the
    /// measured time (muc-light, one room of 1,000 at 200,000 deliveries/s: TTD
    /// p99 52–74 ms with one worker, 27–37 ms with two).
    pub fn worker_count(&self) -> u32 {
        let by_users = self.users.div_ceil(USERS_PER_WORKER);
        let by_cores = if self.scenario.rooms() {
            std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        } else {
            1
        };
        self.workers.unwrap_or_else(|| by_users.max(by_cores)).clamp(1, self.users)
    }

    /// Seconds between the first login and the start of the measured phase.
    pub fn ramp_seconds(&self) -> f64 {
        self.ramp_seconds.unwrap_or(self.users as f64 / self.login_rate + 5.0)
    }

    /// Microseconds between two messages of one user (from --rate when given).
    pub fn interval_us(&self) -> u64 {
        let us = match self.rate {
            Some(r) => self.users as f64 * 1e6 / r,
            None => self.interval_ms * 1000.0,
        };
        (us.round() as u64).max(1)
    }

    /// The source addresses to bind to, round robin (empty: let the kernel choose).
    pub fn source_addrs(&self) -> anyhow::Result<Vec<IpAddr>> {
        match &self.source_ips {
            Some(spec) => parse_source_ips(spec),
            None => {
                let loopback = self.server_addrs().map(|a| a.iter().all(|a| a.ip().is_loopback())).unwrap_or(false);
                // bind(ip, 0) must find a port free for every destination: with a
                // source address filled to 70 % of the ephemeral range (20,000 per
                // address) the kernel's search burnt minutes of CPU at 59,700
                // users; 5,000 per address keeps it cheap.
                if loopback && self.users > 20_000 {
                    let n = self.users.div_ceil(5_000).min(250) as u8;
                    Ok((0..n).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i))).collect())
                } else {
                    Ok(Vec::new())
                }
            }
        }
    }

    /// `(index, count)` of `--worker I/W`.
    pub fn worker_slot(&self) -> anyhow::Result<Option<(u32, u32)>> {
        let Some(s) = &self.worker else { return Ok(None) };
        let (i, w) = s.split_once('/').context("--worker takes I/W")?;
        let (i, w): (u32, u32) = (i.parse().context("--worker I")?, w.parse().context("--worker W")?);
        if w == 0 || i >= w {
            bail!("--worker {s}: need 0 <= I < W");
        }
        Ok(Some((i, w)))
    }
}

/// Parses `127.0.0.2-127.0.0.20` (IPv4 range) or `a,b,c`.
pub fn parse_source_ips(spec: &str) -> anyhow::Result<Vec<IpAddr>> {
    if let Some((a, b)) = spec.split_once('-') {
        let a: Ipv4Addr = a.trim().parse().with_context(|| format!("--source-ips: bad address {a}"))?;
        let b: Ipv4Addr = b.trim().parse().with_context(|| format!("--source-ips: bad address {b}"))?;
        let (a, b) = (u32::from(a), u32::from(b));
        if b < a || b - a > 65_535 {
            bail!("--source-ips: bad range {spec}");
        }
        return Ok((a..=b).map(|x| IpAddr::V4(Ipv4Addr::from(x))).collect());
    }
    spec.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().with_context(|| format!("--source-ips: bad address {s}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["meerkat-bench", "one-to-one", "--users", "100"];
        v.extend_from_slice(extra);
        Args::try_parse_from(v).unwrap()
    }

    #[test]
    fn defaults_and_derived_values() {
        let a = args(&[]);
        assert_eq!(a.mechanism, Mechanism::ScramSha256);
        assert_eq!(a.worker_count(), 1);
        assert_eq!(a.interval_us(), 1_000_000);
        assert!((a.ramp_seconds() - 5.2).abs() < 1e-9);
        assert_eq!(args(&["--rate", "1000"]).interval_us(), 100_000);
        let big = Args::try_parse_from(["b", "connect", "--users", "30001"]).unwrap();
        assert_eq!(big.worker_count(), 3);
        assert_eq!(big.source_addrs().unwrap().len(), 7, "one source address per 5,000 users");
        let nodes = args(&["--server", "127.0.0.1:5222, 127.0.0.1:5223"]);
        assert_eq!(nodes.server_addrs().unwrap().len(), 2);
        assert_eq!(args(&["--mechanism", "PLAIN"]).mechanism, Mechanism::Plain);
        assert_eq!(a.transport, Transport::Tcp);
        let ws = args(&["--transport", "websocket", "--server", "127.0.0.1:5280"]);
        assert_eq!(ws.ws_url(), "ws://127.0.0.1:5280/ws-xmpp");
        assert!(ws.validate().is_ok());
        assert!(args(&["--transport", "websocket", "--tls"]).validate().is_err());
        let p = Args::try_parse_from(["b", "presence", "--users", "100", "--contacts", "4"]).unwrap();
        assert!(p.validate().is_ok());
        assert!((p.setup_seconds() - 5.2).abs() < 1e-9);
        let odd = Args::try_parse_from(["b", "presence", "--users", "100", "--contacts", "3"]).unwrap();
        assert!(odd.validate().is_err());
    }

    #[test]
    fn mam_pairs_and_fill_time() {
        let mam = |extra: &[&str]| {
            let mut v = vec!["b", "mam", "--rate", "5000"];
            if !extra.contains(&"--users") {
                v.extend_from_slice(&["--users", "2"]);
            }
            v.extend_from_slice(extra);
            Args::try_parse_from(v).unwrap()
        };
        let a = mam(&[]);
        assert!(a.validate().is_ok());
        assert_eq!((a.bucket(), a.mam_per_user(), a.archive_msgs(), a.max_per_user()), (2, 50_000, 100_000, 50_000));
        // 2 users at 5,000 msgs/s: each sends every 400 µs, 50,000 messages in 20 s.
        assert!((a.send_seconds() - 20.0).abs() < 1e-9);
        assert_eq!(mam(&["--archive-size", "601"]).archive_msgs(), 602);
        assert!(mam(&["--users", "3"]).validate().is_err());
        assert!(mam(&["--archive-size", "600", "--page", "13"]).validate().is_err());
        assert!(mam(&["--archive-size", "600", "--page", "12"]).validate().is_ok());
        assert!((args(&[]).send_seconds() - 30.0).abs() < 1e-9);
    }

    #[test]
    fn room_shape() {
        let muc = |extra: &[&str]| {
            let mut v = vec!["b", "muc-light", "--users", "20"];
            v.extend_from_slice(extra);
            Args::try_parse_from(v).unwrap()
        };
        let a = muc(&[]);
        assert_eq!((a.room_size, a.rooms_per_user, a.room_rate), (5, 10, 0.1));
        assert!(a.validate().is_ok());
        assert_eq!(a.room_count(), 40);
        assert_eq!(a.room_service(), "muclight.localhost");
        assert!((a.setup_seconds() - 5.04).abs() < 1e-9);
        assert!(muc(&["--room-size", "3"]).validate().is_err(), "20 * 10 is not a multiple of 3");
        assert!(muc(&["--room-size", "21"]).validate().is_err());
        assert!(muc(&["--room-size", "20", "--rooms-per-user", "1", "--room-rate", "1"]).validate().is_ok());
        // One room of 5,000 created in chunks of 1,000: + 5000² / 2e6 for the additions.
        let big =
            Args::try_parse_from(["b", "muc-light", "--users", "5000", "--room-size", "5000", "--rooms-per-user", "1"])
                .unwrap();
        assert!((big.setup_seconds() - 18.5).abs() < 1e-9);
        let m = Args::try_parse_from(["b", "muc", "--users", "1000", "--room-size", "1000", "--rooms-per-user", "1"])
            .unwrap();
        assert!(m.validate().is_ok());
        assert_eq!((m.room_count(), m.room_service().as_str()), (1, "conference.localhost"));
        // 5 + 1000 / 500 (paced joins) + 1000 / 1000 + 1000² / 200000.
        assert!((m.setup_seconds() - 13.0).abs() < 1e-9);
    }

    #[test]
    fn source_ip_ranges() {
        let v = parse_source_ips("127.0.0.2-127.0.0.4").unwrap();
        assert_eq!(v, ["127.0.0.2", "127.0.0.3", "127.0.0.4"].map(|s| s.parse::<IpAddr>().unwrap()));
        assert_eq!(parse_source_ips("127.0.0.9, 127.0.0.7").unwrap().len(), 2);
        assert!(parse_source_ips("127.0.0.4-127.0.0.2").is_err());
        assert!(parse_source_ips("nope").is_err());
    }

    #[test]
    fn worker_slot() {
        assert_eq!(args(&["--worker", "1/3"]).worker_slot().unwrap(), Some((1, 3)));
        assert!(args(&["--worker", "3/3"]).worker_slot().is_err());
    }
}
