//! The load generator tested end to end against an in-process Meerkat: the built
//! `meerkat-bench` binary runs as a subprocess against the test server's STARTTLS and
//! no-TLS listeners, and its JSON result line is checked.

use std::process::Command;

use meerkat::testing::TestServer;
use meerkat_config::TlsMode;
use serde_json::Value;

const USERS: u32 = 50;

/// Runs meerkat-bench with `args` (off the async runtime); returns its stdout.
async fn run(args: Vec<String>) -> String {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_meerkat-bench")).args(&args).output().expect("run meerkat-bench")
    })
    .await
    .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "meerkat-bench failed: {stderr}");
    assert!(stderr.contains("meerkat-bench "), "no summary on stderr: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The last JSON line of `text`.
fn last_json(text: &str) -> Value {
    let line = text.lines().last().unwrap_or_else(|| panic!("no JSON line in {text:?}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON ({e}): {line}"))
}

/// Runs meerkat-bench and returns the JSON line it printed.
async fn bench(args: Vec<String>) -> Value {
    last_json(&run(args).await)
}

fn args(scenario: &str, addr: std::net::SocketAddr, users: u32, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        scenario,
        "--server",
        &addr.to_string(),
        "--domain",
        "localhost",
        "--users",
        &users.to_string(),
        "--user-prefix",
        "user",
        "--password",
        "secret",
        "--ramp-seconds",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} is not a count in {v}"))
}

fn assert_monotone(v: &Value, keys: &[&str]) {
    let vals: Vec<u64> = keys.iter().map(|k| u(v, k)).collect();
    assert!(vals.windows(2).all(|w| w[0] <= w[1]), "{keys:?} not monotone: {vals:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_one_to_one_against_meerkat() {
    let s = TestServer::start().await.expect("test server");
    meerkat::accounts::bulk_add(&s.ctx.config, &s.ctx.stores, "user", USERS, "localhost", "secret")
        .await
        .expect("provision users");

    // connect over STARTTLS with SCRAM-SHA-256.
    let starttls = s.addr(TlsMode::Starttls);
    let r = bench(args("connect", starttls, USERS, &["--duration", "2", "--tls", "--login-rate", "200"])).await;
    for key in [
        "scenario",
        "users",
        "sent",
        "delivered",
        "lost",
        "duplicated",
        "msgs_per_s",
        "ttd_p50_us",
        "ttd_p90_us",
        "ttd_p99_us",
        "ttd_p999_us",
        "ttd_max_us",
        "logins_per_s",
        "login_p50_us",
        "login_p99_us",
        "login_failures",
        "generator_late_p99_us",
        "valid",
        "commit",
        "params",
        "server",
    ] {
        assert!(r.get(key).is_some(), "missing {key} in {r}");
    }
    assert_eq!(r["scenario"], "connect");
    assert_eq!(u(&r, "logins"), u64::from(USERS), "{r}");
    assert_eq!(u(&r, "login_failures"), 0, "{r}");
    assert_eq!(u(&r, "disconnects"), 0, "{r}");
    assert_monotone(&r, &["login_p50_us", "login_p99_us", "login_max_us"]);
    assert!(u(&r, "login_p50_us") > 0);
    assert!(r["logins_per_s"].as_f64().unwrap() > 0.0);
    for phase in ["connect", "tls", "auth", "bind", "roster"] {
        let p = &r["phases"][phase];
        assert!(p["p50_us"].as_u64().unwrap() <= p["p99_us"].as_u64().unwrap(), "{phase}: {p}");
    }
    assert_eq!(r["params"]["tls"], true);
    assert_eq!(r["params"]["mechanism"], "SCRAM-SHA-256");
    assert_eq!(r["valid"], true, "{r}");

    // one-to-one over plain TCP, two workers: every message arrives exactly once.
    let plain = s.addr(TlsMode::None);
    let r = bench(args(
        "one-to-one",
        plain,
        USERS,
        &["--workers", "2", "--interval-ms", "200", "--duration", "3", "--drain-seconds", "2", "--login-rate", "200"],
    ))
    .await;
    assert_eq!(r["workers"], 2);
    assert_eq!(u(&r, "logins"), u64::from(USERS), "{r}");
    assert!(u(&r, "sent") > 0, "{r}");
    assert_eq!(u(&r, "sent"), u(&r, "offered"), "{r}");
    assert_eq!(u(&r, "delivered"), u(&r, "sent"), "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(u(&r, "duplicated"), 0, "{r}");
    assert_eq!(u(&r, "stale"), 0, "{r}");
    assert!(u(&r, "ttd_p50_us") > 0);
    assert_monotone(&r, &["ttd_p50_us", "ttd_p90_us", "ttd_p99_us", "ttd_p999_us", "ttd_max_us"]);
    assert!(r["msgs_per_s"].as_f64().unwrap() > 0.0);

    // With --server-pid (this process hosts the server): the server block is filled.
    // Also PLAIN, and --json appending to a file.
    let dir = std::env::temp_dir().join(format!("meerkat-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("results.jsonl");
    let pid = std::process::id().to_string();
    let stdout = run(args(
        "one-to-one",
        plain,
        20,
        &[
            "--interval-ms",
            "100",
            "--duration",
            "1",
            "--drain-seconds",
            "1",
            "--mechanism",
            "PLAIN",
            "--server-pid",
            &pid,
            "--json",
            json.to_str().unwrap(),
        ],
    ))
    .await;
    assert!(stdout.trim().is_empty(), "with --json the line goes to the file: {stdout}");
    let r = last_json(&std::fs::read_to_string(&json).expect("the --json file"));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(u(&r, "delivered"), u(&r, "sent"), "{r}");
    let p = &r["server"]["pids"][0];
    assert_eq!(p["pid"], std::process::id(), "{r}");
    for key in ["rss_kib_start", "rss_kib_after_login", "rss_kib_end", "rss_kib_max", "cpu_ms", "cpu_ms_window"] {
        assert!(p[key].as_u64().is_some(), "server.{key} missing in {p}");
    }
    assert!(p["rss_kib_max"].as_u64().unwrap() > 0);
    assert!(r["server"]["rss_per_session_bytes"].is_number(), "{r}");
    assert!(r["server_cpu_us_per_msg"].is_number(), "{r}");

    // register (XEP-0077, as bench/compare does for ejabberd and Prosody): three new
    // accounts, one per source address (the server allows one registration per address
    // and minute), which can then log in.
    let reg = |scenario: &str, extra: &[&str]| {
        let mut v: Vec<String> = [
            scenario,
            "--server",
            &starttls.to_string(),
            "--domain",
            "localhost",
            "--users",
            "3",
            "--user-prefix",
            "reg",
            "--password",
            "a-long-secret",
            "--tls",
            "--ramp-seconds",
            "0",
            "--login-rate",
            "100",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let r = bench(reg("register", &["--source-ips", "127.0.0.2-127.0.0.4"])).await;
    assert_eq!((u(&r, "registered"), u(&r, "login_failures")), (3, 0), "{r}");
    let r = bench(reg("connect", &["--duration", "0"])).await;
    assert_eq!(u(&r, "logins"), 3, "{r}");
    s.stop().await;
}

/// presence (TCP, then again over WebSocket on the same accounts), one-to-one over
/// WebSocket, and sm-resume over STARTTLS: every expected delivery arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_websocket_and_sm_resume_against_meerkat() {
    const N: u32 = 30;
    let s = TestServer::start().await.expect("test server");
    meerkat::accounts::bulk_add(&s.ctx.config, &s.ctx.stores, "user", N, "localhost", "secret")
        .await
        .expect("provision users");
    let plain = s.addr(TlsMode::None);
    let ws_url = format!("ws://{}/ws-xmpp", s.http_addrs[0]);

    // presence with churn: the setup phase subscribes everyone to their 4 contacts.
    let r = bench(args(
        "presence",
        plain,
        N,
        &[
            "--contacts",
            "4",
            "--interval-ms",
            "200",
            "--duration",
            "3",
            "--drain-seconds",
            "2",
            "--setup-seconds",
            "3",
            "--churn-per-s",
            "2",
            "--login-rate",
            "200",
        ],
    ))
    .await;
    assert_eq!(r["scenario"], "presence");
    assert_eq!(u(&r, "logins"), u64::from(N), "{r}");
    assert_eq!(u(&r, "subscribe_sent"), u64::from(N) * 4, "one request per direction: {r}");
    assert_eq!(u(&r, "setup_complete"), u64::from(N), "{r}");
    assert_eq!(u(&r, "setup_incomplete"), 0, "{r}");
    assert_eq!((u(&r, "churn_logouts"), u(&r, "churn_logins")), (6, 6), "{r}");
    assert!(u(&r, "unavailable_rx") >= 6 * 4 - 4, "contacts see churned users leave: {r}");
    assert!(u(&r, "delivered") > 0 && u(&r, "sent") > 0, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(u(&r, "duplicated"), 0, "{r}");
    assert_eq!(u(&r, "stale"), 0, "{r}");
    assert_eq!(u(&r, "presence_expected"), u(&r, "delivered"), "{r}");
    assert_eq!(u(&r, "finals_missing"), 0, "{r}");
    assert_eq!(u(&r, "disconnects"), 0, "{r}");
    assert!(r["presence_per_s"].as_f64().unwrap() > 0.0 && r["churn_logins_per_s"].as_f64().unwrap() > 0.0);
    assert_monotone(&r, &["ttd_p50_us", "ttd_p90_us", "ttd_p99_us", "ttd_p999_us", "ttd_max_us"]);
    assert_monotone(&r, &["churn_login_p50_us", "churn_login_p99_us"]);
    assert!(u(&r, "ttd_p50_us") > 0);

    // Again on the same accounts, over WebSocket, without churn and with 2 contacts: the
    // setup removes the 2 former contacts that no longer are, subscribes to nobody, and
    // every update reaches exactly the 2 contacts.
    let r = bench(args(
        "presence",
        plain,
        N,
        &[
            "--transport",
            "websocket",
            "--ws-url",
            &ws_url,
            "--contacts",
            "2",
            "--interval-ms",
            "250",
            "--duration",
            "2",
            "--drain-seconds",
            "1",
            "--setup-seconds",
            "1",
        ],
    ))
    .await;
    assert_eq!(r["transport"], "websocket", "{r}");
    assert_eq!(u(&r, "logins"), u64::from(N), "{r}");
    assert_eq!(u(&r, "roster_removed"), 2 * u64::from(N), "{r}");
    assert_eq!((u(&r, "subscribe_sent"), u(&r, "setup_incomplete")), (0, 0), "idempotent setup: {r}");
    assert_eq!(u(&r, "sent"), u(&r, "offered"), "{r}");
    assert_eq!(u(&r, "delivered"), 2 * u(&r, "sent"), "{r}");
    assert_eq!((r["lost"].as_i64(), u(&r, "duplicated"), u(&r, "stale")), (Some(0), 0, 0), "{r}");
    assert_eq!(u(&r, "finals_missing"), 0, "{r}");

    // one-to-one over WebSocket.
    let r = bench(args(
        "one-to-one",
        plain,
        20,
        &["--transport", "websocket", "--ws-url", &ws_url, "--interval-ms", "200", "--duration", "2"],
    ))
    .await;
    assert_eq!(u(&r, "logins"), 20, "{r}");
    assert!(u(&r, "sent") > 0, "{r}");
    assert_eq!(u(&r, "delivered"), u(&r, "sent"), "{r}");
    assert_eq!(u(&r, "duplicated"), 0, "{r}");

    // sm-resume over STARTTLS: 4 cuts per second for 3 s, every one resumed, every
    // message delivered exactly once.
    let r = bench(args(
        "sm-resume",
        s.addr(TlsMode::Starttls),
        N,
        &["--tls", "--interval-ms", "100", "--duration", "3", "--drain-seconds", "2", "--disconnect-per-s", "4"],
    ))
    .await;
    assert_eq!(r["scenario"], "sm-resume");
    assert_eq!(u(&r, "logins"), u64::from(N), "{r}");
    assert_eq!((u(&r, "cuts"), u(&r, "resumes_ok"), u(&r, "resumes_failed")), (12, 12, 0), "{r}");
    assert_eq!(u(&r, "sent"), u(&r, "offered"), "{r}");
    assert_eq!(u(&r, "delivered"), u(&r, "sent"), "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!((u(&r, "duplicated"), u(&r, "bad_acks"), u(&r, "disconnects")), (0, 0, 0), "{r}");
    assert!(u(&r, "resume_p50_us") > 0, "{r}");
    assert_monotone(&r, &["resume_p50_us", "resume_p99_us", "resume_max_us"]);
    assert_monotone(&r, &["ttd_p50_us", "ttd_p99_us", "ttd_max_us"]);
    s.stop().await;
}

/// mam: two pairs fill their archives with 600 messages each, every archive is paged
/// through and checked, page 5 is looked up and every lookup gets the right 50 ids;
/// then again on the same archives (the run's part starts after the first run's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mam_fill_pass_and_lookups_against_meerkat() {
    const N: u32 = 4;
    let s = TestServer::start().await.expect("test server");
    meerkat::accounts::bulk_add(&s.ctx.config, &s.ctx.stores, "user", N, "localhost", "secret")
        .await
        .expect("provision users");
    let plain = s.addr(TlsMode::None);
    for (size, page) in [(600u64, 5u64), (200, 2)] {
        let r = bench(args(
            "mam",
            plain,
            N,
            &[
                "--rate",
                "800",
                "--archive-size",
                &size.to_string(),
                "--page",
                &page.to_string(),
                "--page-size",
                "50",
                "--setup-seconds",
                "3",
                "--lookup-rate",
                "40",
                "--lookup-seconds",
                "2",
                "--drain-seconds",
                "1",
                "--login-rate",
                "200",
            ],
        ))
        .await;
        assert_eq!(r["scenario"], "mam");
        assert_eq!(u(&r, "logins"), u64::from(N), "{r}");
        assert_eq!(u(&r, "archive_size"), size, "{r}");
        // Each user sends half of its archive to its partner.
        assert_eq!(u(&r, "offered"), u64::from(N) * size / 2, "{r}");
        assert_eq!(u(&r, "sent"), u(&r, "offered"), "{r}");
        assert_eq!(u(&r, "delivered"), u(&r, "sent"), "{r}");
        assert_eq!((r["lost"].as_i64(), u(&r, "duplicated"), u(&r, "stale")), (Some(0), 0, 0), "{r}");
        // The pass saw exactly this run's messages in every archive.
        assert_eq!(u(&r, "archive_expected"), u64::from(N) * size, "{r}");
        assert_eq!(u(&r, "archive_checked"), u64::from(N) * size, "{r}");
        assert_eq!(u(&r, "archive_queries"), u64::from(N) * size.div_ceil(50), "{r}");
        for key in ["archive_missing", "archive_foreign", "archive_short", "archive_unchecked"] {
            assert_eq!(u(&r, key), 0, "{key}: {r}");
        }
        // Every lookup got the page's 50 ids in order.
        assert!(u(&r, "lookups_offered") > 0, "{r}");
        assert_eq!(u(&r, "lookups_ok"), u(&r, "lookups_offered"), "{r}");
        assert_eq!(u(&r, "lookups_sent"), u(&r, "lookups_ok"), "{r}");
        assert_eq!((u(&r, "lookups_failed"), u(&r, "lookups_skipped")), (0, 0), "{r}");
        assert_eq!(u(&r, "lookup_results"), 50 * u(&r, "lookups_ok"), "{r}");
        assert!(u(&r, "lookup_p50_us") > 0, "{r}");
        assert_monotone(&r, &["lookup_p50_us", "lookup_p90_us", "lookup_p99_us", "lookup_p999_us", "lookup_max_us"]);
        assert!(r["lookups_per_s"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(u(&r, "disconnects"), 0, "{r}");
    }
    s.stop().await;
}

/// The group chat scenarios, amoc's shape scaled down: 20 users in rooms of 5, 4 rooms
/// each (16 rooms), 2 messages per second per room; then the large-room shape scaled
/// down: one room of all 20. Every message reaches all its room's occupants exactly
/// once. muc-light runs the first shape twice on the same accounts (the second run
/// finds its rooms: `conflict`) and creates the big room in chunks of 8 (a creation
/// naming 7, then additions of 8 and 4); muc rooms are temporary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn muc_light_and_muc_against_meerkat() {
    const N: u32 = 20;
    let s = TestServer::start().await.expect("test server");
    meerkat::accounts::bulk_add(&s.ctx.config, &s.ctx.stores, "user", N, "localhost", "secret")
        .await
        .expect("provision users");
    let plain = s.addr(TlsMode::None);
    let timing = ["--room-rate", "2", "--duration", "3", "--drain-seconds", "2", "--setup-seconds", "2"];
    // (scenario, room size, rooms per user, extra options, rooms existing already)
    let cases: [(&str, u64, u64, &[&str], bool); 5] = [
        ("muc-light", 5, 4, &[], false),
        ("muc-light", 5, 4, &["--workers", "2"], true),
        ("muc-light", 20, 1, &["--create-chunk", "8"], false),
        ("muc", 5, 4, &[], false),
        ("muc", 20, 1, &["--workers", "2"], false),
    ];
    for (scenario, size, per_user, more, existing) in cases {
        let (size_s, per_user_s) = (size.to_string(), per_user.to_string());
        let mut extra = vec!["--room-size", &size_s, "--rooms-per-user", &per_user_s, "--login-rate", "200"];
        extra.extend_from_slice(&timing);
        extra.extend_from_slice(more);
        let r = bench(args(scenario, plain, N, &extra)).await;
        let rooms = u64::from(N) * per_user / size;
        assert_eq!(r["scenario"], scenario);
        assert_eq!(u(&r, "logins"), u64::from(N), "{r}");
        assert_eq!(u(&r, "rooms"), rooms, "{r}");
        // 2 msgs/s per room for 3 s, each to all occupants.
        let msgs = rooms * 6;
        assert_eq!((u(&r, "offered"), u(&r, "sent")), (msgs, msgs), "{r}");
        assert_eq!(u(&r, "deliveries_expected"), msgs * size, "{r}");
        assert_eq!(u(&r, "delivered"), msgs * size, "{r}");
        assert_eq!(u(&r, "deliveries"), msgs * size, "{r}");
        assert_eq!(r["lost"], 0, "{r}");
        assert_eq!((u(&r, "duplicated"), u(&r, "stale"), u(&r, "bounced")), (0, 0, 0), "{r}");
        assert_eq!((u(&r, "rooms_ready"), u(&r, "rooms_failed"), u(&r, "setup_incomplete")), (rooms, 0, 0), "{r}");
        let created = if existing { 0 } else { rooms };
        assert_eq!((u(&r, "rooms_created"), u(&r, "rooms_existed")), (created, rooms - created), "{r}");
        if scenario == "muc" {
            assert_eq!((u(&r, "joins_ok"), u(&r, "joins_expected")), (rooms * size, rooms * size), "{r}");
            // Each join is announced to the occupants already there, and they to it.
            assert_eq!(u(&r, "room_presence_rx"), rooms * size * (size - 1), "{r}");
        }
        assert!(u(&r, "setup_p50_us") > 0, "{r}");
        assert!(u(&r, "ttd_p50_us") > 0, "{r}");
        assert_monotone(&r, &["ttd_p50_us", "ttd_p90_us", "ttd_p99_us", "ttd_p999_us", "ttd_max_us"]);
        assert!(r["deliveries_per_s"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(u(&r, "disconnects"), 0, "{r}");
        // Valid unless the (debug, shared-core) generator itself was late to send.
        if u(&r, "generator_late_p99_us") <= 1000 {
            assert_eq!(r["valid"], true, "{r}");
        }
    }
    s.stop().await;
}
