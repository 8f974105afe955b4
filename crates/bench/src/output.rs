//! The result: the server processes' /proc figures, the JSON line (every field the
//! comparison scripts read), the human summary on stderr, and where the line goes.

use std::io::Write as _;

use anyhow::Context as _;
use serde_json::{json, Map, Value};

use crate::cli::{Args, Scenario};
use crate::parent::{commit, Plan};
use crate::procfs::{self, ticks_to_ms, Sample};
use crate::report::{WorkerReport, PHASES};
use crate::schedule::{Bucket, SendPlan};

/// Samples of one server process at the run's boundaries.
#[derive(Debug, Default)]
struct PidStats {
    pid: u32,
    start: Option<Sample>,
    after_login: Option<Sample>,
    window_end: Option<Sample>,
    closing: Option<Sample>,
    lookup_start: Option<Sample>,
    lookup_end: Option<Sample>,
    last: Option<Sample>,
    rss_max: u64,
}

/// The sampled server processes.
#[derive(Debug)]
pub struct ServerStats(Vec<PidStats>);

impl ServerStats {
    /// Tracks `pids`.
    pub fn new(pids: &[u32]) -> Self {
        ServerStats(pids.iter().map(|&pid| PidStats { pid, ..Default::default() }).collect())
    }

    /// A periodic sample (peak RSS, last values).
    pub fn sample(&mut self) {
        for p in &mut self.0 {
            if let Some(s) = procfs::sample(&p.pid.to_string()) {
                p.rss_max = p.rss_max.max(s.rss_kib);
                p.last = Some(s);
            }
        }
    }

    fn mark(&mut self, f: fn(&mut PidStats) -> &mut Option<Sample>) {
        self.sample();
        for p in &mut self.0 {
            *f(p) = p.last;
        }
    }

    /// Before the first login.
    pub fn sample_start(&mut self) {
        self.mark(|p| &mut p.start);
    }
    /// At the end of the login ramp (start of the measured phase).
    pub fn sample_after_login(&mut self) {
        self.mark(|p| &mut p.after_login);
    }
    /// At the end of the measured phase (sessions still online).
    pub fn sample_window_end(&mut self) {
        self.mark(|p| &mut p.window_end);
    }
    /// When sessions close (after the drain).
    pub fn sample_closing(&mut self) {
        self.mark(|p| &mut p.closing);
    }
    /// mam: when the lookups start.
    pub fn sample_lookup_start(&mut self) {
        self.mark(|p| &mut p.lookup_start);
    }
    /// mam: when the lookups end.
    pub fn sample_lookup_end(&mut self) {
        self.mark(|p| &mut p.lookup_end);
    }
    /// After every worker exited.
    pub fn sample_final(&mut self) {
        self.sample();
    }
}

fn cpu_ms(a: Option<Sample>, b: Option<Sample>) -> Option<u64> {
    Some(ticks_to_ms(b?.cpu_ticks.saturating_sub(a?.cpu_ticks)))
}

fn per(num: Option<f64>, den: u64) -> Value {
    match num {
        Some(n) if den > 0 => json!((n / den as f64 * 10.0).round() / 10.0),
        _ => Value::Null,
    }
}

/// The `server` object and the derived per-session / per-message figures.
fn server_json(s: &ServerStats, r: &WorkerReport) -> Value {
    let mut pids = Vec::new();
    let (mut rss_ps, mut cpu_msg, mut cpu_login, mut cpu_lookup) = (None::<f64>, None::<f64>, None::<f64>, None);
    let add = |acc: &mut Option<f64>, v: Option<f64>| {
        if let Some(v) = v {
            *acc = Some(acc.unwrap_or(0.0) + v);
        }
    };
    for p in &s.0 {
        let rss_growth = match (p.start, p.after_login) {
            (Some(a), Some(b)) => Some((b.rss_kib as f64 - a.rss_kib as f64) * 1024.0),
            _ => None,
        };
        let login_cpu = cpu_ms(p.start, p.after_login).map(|ms| ms as f64 * 1000.0);
        let window_cpu = cpu_ms(p.after_login, p.closing).map(|ms| ms as f64 * 1000.0);
        add(&mut rss_ps, rss_growth.map(|g| g / r.logins.max(1) as f64));
        if r.delivered > 0 {
            add(&mut cpu_msg, window_cpu.map(|c| c / r.delivered as f64));
        }
        if r.logins > 0 {
            add(&mut cpu_login, login_cpu.map(|c| c / r.logins as f64));
        }
        let lookup_cpu = cpu_ms(p.lookup_start, p.lookup_end).map(|ms| ms as f64 * 1000.0);
        let lookups = r.extra.lookups_ok + r.extra.lookups_failed();
        if lookups > 0 {
            add(&mut cpu_lookup, lookup_cpu.map(|c| c / lookups as f64));
        }
        pids.push(json!({
            "pid": p.pid,
            "rss_kib_start": p.start.map(|s| s.rss_kib),
            "rss_kib_after_login": p.after_login.map(|s| s.rss_kib),
            "rss_kib_end": p.window_end.map(|s| s.rss_kib),
            "rss_kib_final": p.last.map(|s| s.rss_kib),
            "rss_kib_max": p.rss_max,
            "cpu_ms": cpu_ms(p.start, p.last),
            "cpu_ms_login": cpu_ms(p.start, p.after_login),
            "cpu_ms_window": cpu_ms(p.after_login, p.closing),
            "rss_per_session_bytes": per(rss_growth, r.logins),
            "server_cpu_us_per_msg": per(window_cpu, r.delivered),
            "server_cpu_us_per_login": per(login_cpu, r.logins),
            "cpu_ms_lookups": cpu_ms(p.lookup_start, p.lookup_end),
            "server_cpu_us_per_lookup": per(lookup_cpu, lookups),
        }));
    }
    json!({
        "pids": pids,
        "rss_per_session_bytes": per(rss_ps, 1),
        "server_cpu_us_per_msg": per(cpu_msg, 1),
        "server_cpu_us_per_login": per(cpu_login, 1),
        "server_cpu_us_per_lookup": per(cpu_lookup, 1),
    })
}

/// Every option, with the derived values in effect.
fn params(args: &Args, workers: u32) -> Value {
    let mut p = serde_json::to_value(args).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut p {
        for hidden in ["worker", "plan_login_ms", "plan_start_ms", "run_id"] {
            m.remove(hidden);
        }
        m.insert("workers".into(), json!(workers));
        m.insert("ramp_seconds".into(), json!(args.ramp_seconds()));
        m.insert("interval_us".into(), json!(args.interval_us()));
        let ips: Vec<String> = args.source_addrs().unwrap_or_default().iter().map(|ip| ip.to_string()).collect();
        m.insert("source_ips_used".into(), json!(ips));
    }
    p
}

/// Messages (presence: updates) the schedule offers in total (users alone in their
/// bucket send nothing).
fn offered(args: &Args) -> u64 {
    if !args.scenario.sends() {
        return 0;
    }
    if args.scenario.rooms() {
        return crate::muc::offered(args);
    }
    let plan = SendPlan {
        start_us: 0,
        end_us: (args.send_seconds() * 1e6) as u64,
        interval_us: args.interval_us(),
        users: args.users,
        tick_us: args.tick_us,
        max_count: args.max_per_user(),
    };
    (1..=args.users)
        .filter(|&k| args.scenario == Scenario::Presence || Bucket::of(k, args.users, args.bucket()).len > 1)
        .map(|k| plan.count(k))
        .sum()
}

/// mam: lookups the schedule offers in total.
fn lookups_offered(args: &Args) -> u64 {
    if args.scenario != Scenario::Mam {
        return 0;
    }
    let plan = SendPlan {
        start_us: 0,
        end_us: (args.lookup_seconds * 1e6) as u64,
        interval_us: ((f64::from(args.users) * 1e6 / args.lookup_rate).round() as u64).max(1),
        users: args.users,
        tick_us: args.tick_us,
        max_count: u64::MAX,
    };
    (1..=args.users).map(|k| plan.count(k)).sum()
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The JSON result line of the run.
pub fn result(args: &Args, workers: u32, plan: &Plan, r: &WorkerReport, server: &ServerStats) -> Value {
    let one_to_one = args.scenario.sends();
    let x = &r.extra;
    // presence: each update goes to K contacts, so losses come from the receivers'
    // gap counts; messages: what was sent and not delivered.
    let lost = match args.scenario {
        Scenario::Presence => x.presence_lost as i64,
        // Each room message is due to all N occupants, the sender included.
        Scenario::MucLight | Scenario::Muc => (r.sent * u64::from(args.room_size)) as i64 - r.delivered as i64,
        _ => r.sent as i64 - r.delivered as i64,
    };
    let late_p99 = r.late.pct(99.0);
    let disconnects: u64 = r.disconnects.values().sum();
    let valid = match args.scenario {
        Scenario::OneToOne => late_p99 <= 1000 && lost == 0 && r.duplicated == 0,
        Scenario::Connect => r.failures() == 0 && disconnects == 0,
        Scenario::Register => r.failures() == 0,
        Scenario::Presence => {
            late_p99 <= 1000
                && lost == 0
                && r.duplicated == 0
                && r.failures() == 0
                && disconnects == 0
                && x.setup_incomplete == 0
                && x.finals_missing == 0
                && x.churn_logins == x.churn_logouts
        }
        Scenario::Mam => {
            late_p99 <= 1000
                && lost == 0
                && r.duplicated == 0
                && r.failures() == 0
                && disconnects == 0
                && x.archive_missing == 0
                && x.archive_foreign == 0
                && x.archive_short == 0
                && x.archive_unchecked == 0
                && x.lookups_skipped == 0
                && x.lookups_failed() == 0
                && x.lookups_ok == lookups_offered(args)
        }
        Scenario::MucLight | Scenario::Muc => {
            late_p99 <= 1000
                && lost == 0
                && r.duplicated == 0
                && r.errors == 0
                && r.sent == offered(args)
                && r.failures() == 0
                && disconnects == 0
                && x.setup_incomplete == 0
                && x.rooms_failed() == 0
                && x.rooms_ready == u64::from(args.room_count())
                && (args.scenario == Scenario::MucLight
                    || x.joins_ok == u64::from(args.users) * u64::from(args.rooms_per_user))
        }
        Scenario::SmResume => {
            late_p99 <= 1000
                && lost == 0
                && r.duplicated == 0
                && r.failures() == 0
                && disconnects == 0
                && x.resumes_failed() == 0
                && x.resumes_ok == x.cuts
                && x.bad_acks == 0
        }
    };
    let mut phases = Map::new();
    for (p, h) in PHASES.iter().zip(&r.phases) {
        if !h.is_empty() {
            phases.insert(p.name().into(), json!({ "p50_us": h.pct(50.0), "p99_us": h.pct(99.0) }));
        }
    }
    let server_v = server_json(server, r);
    let duration = args.send_seconds().max(1e-9);
    let mut v = json!({
        "scenario": args.scenario.name(),
        "users": args.users,
        "workers": workers,
        "commit": commit(),
        "started_unix_ms": plan.login_ms,
        "params": params(args, workers),
        "login_attempts": r.login_attempts,
        "logins": r.logins,
        "login_failures": r.failures(),
        "login_failure_reasons": r.login_failures,
        "late_logins": r.late_logins,
        "logins_per_s": round1(r.logins_per_s()),
        "login_p50_us": r.login.pct(50.0),
        "login_p90_us": r.login.pct(90.0),
        "login_p99_us": r.login.pct(99.0),
        "login_max_us": r.login.max(),
        "phases": phases,
        "registered": r.registered,
        "existed": r.existed,
        "offered": offered(args),
        "offered_msgs_per_s": if one_to_one { round1(offered(args) as f64 / duration) } else { 0.0 },
        "sent": r.sent,
        "delivered": r.delivered,
        "lost": lost,
        "duplicated": r.duplicated,
        "stale": r.stale,
        "bounced": r.errors,
        "disconnects": disconnects,
        "disconnect_reasons": r.disconnects,
        "msgs_per_s": if one_to_one { round1(r.delivered as f64 / duration) } else { 0.0 },
        "ttd_p50_us": r.ttd.pct(50.0),
        "ttd_p90_us": r.ttd.pct(90.0),
        "ttd_p99_us": r.ttd.pct(99.0),
        "ttd_p999_us": r.ttd.pct(99.9),
        "ttd_max_us": r.ttd.max(),
        "generator_late_p50_us": r.late.pct(50.0),
        "generator_late_p99_us": late_p99,
        "generator_late_max_us": r.late.max(),
        "generator_cpu_ms": r.generator_cpu_ms,
        "generator_rss_kib": r.generator_rss_kib,
        "scram_derivations": r.scram_derivations,
        "valid": valid,
        "rss_per_session_bytes": server_v["rss_per_session_bytes"].clone(),
        "server_cpu_us_per_msg": server_v["server_cpu_us_per_msg"].clone(),
        "server_cpu_us_per_login": server_v["server_cpu_us_per_login"].clone(),
        "server": server_v,
    });
    if let Value::Object(m) = &mut v {
        m.insert("transport".into(), json!(args.transport));
        match args.scenario {
            Scenario::Presence => {
                let more = json!({
                    "contacts": args.contacts,
                    "presence_expected": r.delivered + x.presence_lost,
                    "presence_per_s": round1(r.delivered as f64 / duration),
                    "presence_replayed": x.presence_replayed,
                    "finals_missing": x.finals_missing,
                    "presence_skipped": x.presence_skipped,
                    "available_rx": x.available_rx,
                    "unavailable_rx": x.unavailable_rx,
                    "subscribe_sent": x.subscribe_sent,
                    "roster_removed": x.roster_removed,
                    "setup_complete": x.setup.len(),
                    "setup_p50_us": x.setup.pct(50.0),
                    "setup_max_us": x.setup.max(),
                    "setup_incomplete": x.setup_incomplete,
                    "churn_logouts": x.churn_logouts,
                    "churn_logins": x.churn_logins,
                    "churn_logins_per_s": round1(x.churn_logins as f64 / duration),
                    "churn_login_p50_us": x.churn_login.pct(50.0),
                    "churn_login_p99_us": x.churn_login.pct(99.0),
                    "churn_login_max_us": x.churn_login.max(),
                });
                m.extend(more.as_object().cloned().unwrap_or_default());
            }
            Scenario::Mam => {
                let lookup_s = args.lookup_seconds.max(1e-9);
                let more = json!({
                    "archive_size": args.archive_msgs(),
                    "page": args.page,
                    "page_size": args.page_size,
                    "fill_seconds": round1(args.send_seconds()),
                    "archive_queries": x.archive_queries,
                    "archive_checked": x.archive_checked,
                    "archive_expected": x.archive_expected,
                    "archive_missing": x.archive_missing,
                    "archive_foreign": x.archive_foreign,
                    "archive_short": x.archive_short,
                    "archive_unchecked": x.archive_unchecked,
                    "lookups_offered": lookups_offered(args),
                    "offered_lookups_per_s": round1(args.lookup_rate),
                    "lookups_sent": x.lookups_sent,
                    "lookups_ok": x.lookups_ok,
                    "lookups_failed": x.lookups_failed(),
                    "lookup_failure_reasons": x.lookup_failures,
                    "lookups_skipped": x.lookups_skipped,
                    "lookup_results": x.lookup_results,
                    "lookups_per_s": round1(x.lookups_ok as f64 / lookup_s),
                    "lookup_p50_us": x.lookup.pct(50.0),
                    "lookup_p90_us": x.lookup.pct(90.0),
                    "lookup_p99_us": x.lookup.pct(99.0),
                    "lookup_p999_us": x.lookup.pct(99.9),
                    "lookup_max_us": x.lookup.max(),
                    "server_cpu_us_per_lookup": server_v["server_cpu_us_per_lookup"].clone(),
                });
                m.extend(more.as_object().cloned().unwrap_or_default());
            }
            Scenario::MucLight | Scenario::Muc => {
                let cpu_per_delivery = server_v["server_cpu_us_per_msg"].as_f64();
                let more = json!({
                    "room_size": args.room_size,
                    "rooms_per_user": args.rooms_per_user,
                    "rooms": args.room_count(),
                    "room_rate": args.room_rate,
                    "room_service": args.room_service(),
                    "setup_seconds": round1(args.setup_seconds()),
                    "rooms_created": x.rooms_created,
                    "rooms_existed": x.rooms_existed,
                    "rooms_ready": x.rooms_ready,
                    "rooms_failed": x.rooms_failed(),
                    "room_failure_reasons": x.room_failures,
                    "joins_expected": if args.scenario == Scenario::Muc {
                        u64::from(args.users) * u64::from(args.rooms_per_user)
                    } else {
                        0
                    },
                    "joins_ok": x.joins_ok,
                    "join_retries": x.join_retries,
                    "room_presence_rx": x.room_presence_rx,
                    "setup_done": x.setup.len(),
                    "setup_p50_us": x.setup.pct(50.0),
                    "setup_max_us": x.setup.max(),
                    "setup_incomplete": x.setup_incomplete,
                    "deliveries_expected": r.sent * u64::from(args.room_size),
                    "deliveries": r.delivered,
                    "deliveries_per_s": round1(r.delivered as f64 / duration),
                    "room_msgs_per_s": round1(r.sent as f64 / duration),
                    "server_cpu_us_per_delivery": server_v["server_cpu_us_per_msg"].clone(),
                    "server_cpu_us_per_room_msg": match cpu_per_delivery {
                        Some(c) if r.sent > 0 => json!(round1(c * r.delivered as f64 / r.sent as f64)),
                        _ => Value::Null,
                    },
                });
                m.extend(more.as_object().cloned().unwrap_or_default());
            }
            Scenario::SmResume => {
                let more = json!({
                    "cuts": x.cuts,
                    "resumes_ok": x.resumes_ok,
                    "resumes_failed": x.resumes_failed(),
                    "resume_failure_reasons": x.resume_failures,
                    "resume_p50_us": x.resume.pct(50.0),
                    "resume_p90_us": x.resume.pct(90.0),
                    "resume_p99_us": x.resume.pct(99.0),
                    "resume_max_us": x.resume.max(),
                    "resent": x.resent,
                    "bad_acks": x.bad_acks,
                });
                m.extend(more.as_object().cloned().unwrap_or_default());
            }
            _ => {}
        }
    }
    v
}

/// A few readable lines for stderr.
pub fn summary(v: &Value) -> String {
    let g = |k: &str| v.get(k).map(|x| x.to_string()).unwrap_or_default();
    let mut s = format!(
        "meerkat-bench {} users={} workers={} commit={} valid={}\n",
        v["scenario"].as_str().unwrap_or("?"),
        g("users"),
        g("workers"),
        v["commit"].as_str().unwrap_or("?"),
        g("valid"),
    );
    s += &format!(
        "  logins {}/{} ({} failed, {} late) {} /s; time to session p50 {} µs, p99 {} µs\n",
        g("logins"),
        g("login_attempts"),
        g("login_failures"),
        g("late_logins"),
        g("logins_per_s"),
        g("login_p50_us"),
        g("login_p99_us"),
    );
    if let Some(Value::Object(ph)) = v.get("phases") {
        let parts: Vec<String> = PHASES
            .iter()
            .filter_map(|p| ph.get(p.name()).map(|x| format!("{} {}/{}", p.name(), x["p50_us"], x["p99_us"])))
            .collect();
        s += &format!("  phases p50/p99 µs: {}\n", parts.join(", "));
    }
    if v["scenario"] == "presence" {
        s += &format!(
            "  setup: {} subscription requests, {} stray roster items removed, {} users complete after p50 {} µs \
             max {} µs, {} incomplete\n",
            g("subscribe_sent"),
            g("roster_removed"),
            g("setup_complete"),
            g("setup_p50_us"),
            g("setup_max_us"),
            g("setup_incomplete"),
        );
        s += &format!(
            "  updates offered {} sent {} skipped {}; deliveries expected {} delivered {} lost {} duplicated {} \
             (+{} replayed, {} final stamps missing); {} presence/s\n",
            g("offered"),
            g("sent"),
            g("presence_skipped"),
            g("presence_expected"),
            g("delivered"),
            g("lost"),
            g("duplicated"),
            g("presence_replayed"),
            g("finals_missing"),
            g("presence_per_s"),
        );
        s += &format!(
            "  churn: {} logouts, {} logins ({} /s), login p50 {} µs p99 {} µs; received available {} unavailable {}\n",
            g("churn_logouts"),
            g("churn_logins"),
            g("churn_logins_per_s"),
            g("churn_login_p50_us"),
            g("churn_login_p99_us"),
            g("available_rx"),
            g("unavailable_rx"),
        );
    }
    if v["scenario"] == "sm-resume" {
        s += &format!(
            "  cuts {} resumed {} failed {}; resume µs p50 {} p99 {} max {}; {} messages sent again\n",
            g("cuts"),
            g("resumes_ok"),
            g("resumes_failed"),
            g("resume_p50_us"),
            g("resume_p99_us"),
            g("resume_max_us"),
            g("resent"),
        );
    }
    if v["scenario"] == "mam" {
        s += &format!(
            "  archives of {} messages filled in {} s; pass: {} queries, {} messages checked of {} expected, \
             {} missing, {} foreign, {} short, {} unchecked\n",
            g("archive_size"),
            g("fill_seconds"),
            g("archive_queries"),
            g("archive_checked"),
            g("archive_expected"),
            g("archive_missing"),
            g("archive_foreign"),
            g("archive_short"),
            g("archive_unchecked"),
        );
        s += &format!(
            "  lookups of page {} ({} per page): offered {} sent {} ok {} failed {} skipped {}; {} lookups/s; \
             {} results\n",
            g("page"),
            g("page_size"),
            g("lookups_offered"),
            g("lookups_sent"),
            g("lookups_ok"),
            g("lookups_failed"),
            g("lookups_skipped"),
            g("lookups_per_s"),
            g("lookup_results"),
        );
        s += &format!(
            "  lookup µs p50 {} p90 {} p99 {} p99.9 {} max {}; server {} µs CPU per lookup\n",
            g("lookup_p50_us"),
            g("lookup_p90_us"),
            g("lookup_p99_us"),
            g("lookup_p999_us"),
            g("lookup_max_us"),
            g("server_cpu_us_per_lookup"),
        );
    }
    if matches!(v["scenario"].as_str(), Some("muc-light" | "muc")) {
        s += &format!(
            "  {} rooms of {} ({} per user) on {}; setup ({} s): {} created, {} existed, {} ready, {} failed; \
             {} joins ok ({} retried, {} presences); done after p50 {} µs max {} µs, {} users incomplete\n",
            g("rooms"),
            g("room_size"),
            g("rooms_per_user"),
            v["room_service"].as_str().unwrap_or("?"),
            g("setup_seconds"),
            g("rooms_created"),
            g("rooms_existed"),
            g("rooms_ready"),
            g("rooms_failed"),
            g("joins_ok"),
            g("join_retries"),
            g("room_presence_rx"),
            g("setup_p50_us"),
            g("setup_max_us"),
            g("setup_incomplete"),
        );
        s += &format!(
            "  room messages offered {} sent {} ({} /s); deliveries expected {} delivered {} lost {} duplicated {} \
             bounced {}; {} deliveries/s; server {} µs CPU per delivery\n",
            g("offered"),
            g("sent"),
            g("room_msgs_per_s"),
            g("deliveries_expected"),
            g("delivered"),
            g("lost"),
            g("duplicated"),
            g("bounced"),
            g("deliveries_per_s"),
            g("server_cpu_us_per_delivery"),
        );
    }
    if matches!(v["scenario"].as_str(), Some("one-to-one" | "sm-resume" | "mam")) {
        s += &format!(
            "  messages offered {} sent {} delivered {} lost {} duplicated {}; {} msgs/s\n",
            g("offered"),
            g("sent"),
            g("delivered"),
            g("lost"),
            g("duplicated"),
            g("msgs_per_s"),
        );
    }
    if matches!(v["scenario"].as_str(), Some("one-to-one" | "sm-resume" | "presence" | "mam" | "muc-light" | "muc")) {
        s += &format!(
            "  TTD µs p50 {} p90 {} p99 {} p99.9 {} max {}; generator lateness p99 {} µs\n",
            g("ttd_p50_us"),
            g("ttd_p90_us"),
            g("ttd_p99_us"),
            g("ttd_p999_us"),
            g("ttd_max_us"),
            g("generator_late_p99_us"),
        );
    }
    if v["scenario"] == "register" {
        s += &format!("  registered {} existed {}\n", g("registered"), g("existed"));
    }
    s += &format!(
        "  generator CPU {} ms, peak RSS {} KiB (all workers)\n",
        g("generator_cpu_ms"),
        g("generator_rss_kib")
    );
    if let Some(Value::Array(pids)) = v["server"].get("pids") {
        for p in pids {
            s += &format!(
                "  server pid {}: RSS KiB {} -> {} (max {}), {} B/session; CPU {} ms ({} login, {} window), {} µs/msg\n",
                p["pid"],
                p["rss_kib_start"],
                p["rss_kib_after_login"],
                p["rss_kib_max"],
                p["rss_per_session_bytes"],
                p["cpu_ms"],
                p["cpu_ms_login"],
                p["cpu_ms_window"],
                p["server_cpu_us_per_msg"],
            );
        }
    }
    for key in [
        "login_failure_reasons",
        "disconnect_reasons",
        "resume_failure_reasons",
        "lookup_failure_reasons",
        "room_failure_reasons",
    ] {
        if let Some(Value::Object(m)) = v.get(key) {
            for (reason, n) in m {
                s += &format!("  {}: {reason}: {n}\n", key.trim_end_matches("_reasons"));
            }
        }
    }
    s
}

/// Appends the line to --json FILE, or prints it on stdout.
pub fn write(args: &Args, v: &Value) -> anyhow::Result<()> {
    let line = format!("{v}\n");
    match &args.json {
        Some(path) => {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            f.write_all(line.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(line.as_bytes())?;
            out.flush()?;
        }
    }
    Ok(())
}
