//! meerkat-bench against a three-node Meerkat cluster (in-process nodes over a
//! nats-server of the test's own, one PostgreSQL schema): users spread over
//! the nodes with `--server A,B,C`, so most one-to-one messages cross nodes;
//! every message arrives exactly once.

use std::process::Command;

use meerkat::testing::cluster::{cluster_name, drop_schema, node, pg_schema, Nats};
use meerkat_config::TlsMode;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_across_three_nodes() {
    const USERS: u32 = 30;
    let nats = Nats::start();
    let schema = pg_schema("bench");
    let cluster = cluster_name();
    let nodes = [
        node("n1", &nats, &schema, &cluster).await,
        node("n2", &nats, &schema, &cluster).await,
        node("n3", &nats, &schema, &cluster).await,
    ];
    let n1 = &nodes[0];
    meerkat::accounts::bulk_add(&n1.ctx.config, &n1.ctx.stores, "user", USERS, "localhost", "secret")
        .await
        .expect("provision users");
    let servers = nodes.iter().map(|n| n.addr(TlsMode::None).to_string()).collect::<Vec<_>>().join(",");
    let args: Vec<String> = [
        "one-to-one",
        "--server",
        &servers,
        "--domain",
        "localhost",
        "--users",
        &USERS.to_string(),
        "--user-prefix",
        "user",
        "--password",
        "secret",
        "--ramp-seconds",
        "1",
        "--login-rate",
        "100",
        "--interval-ms",
        "200",
        "--duration",
        "3",
        "--drain-seconds",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_meerkat-bench")).args(&args).output().expect("run meerkat-bench")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "meerkat-bench failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: Value = serde_json::from_str(stdout.lines().last().expect("a JSON line")).expect("JSON");
    assert_eq!(r["logins"], USERS, "{r}");
    assert!(r["sent"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["delivered"], r["sent"], "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["duplicated"], 0, "{r}");
    let [a, b, c] = nodes;
    for n in [a, b, c] {
        n.stop().await;
    }
    drop_schema(&schema).await;
}
