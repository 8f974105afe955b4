//! Cluster test support: a nats-server of the test's own and nodes sharing one
//! PostgreSQL schema.
#![allow(dead_code)] // each test binary uses its own part

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meerkat::testing::{test_config, TestServer};
use meerkat_config::{Cluster, NatsUrls};

/// A nats-server on a free loopback port, killed on drop.
pub struct Nats {
    child: Child,
    /// Its client port.
    pub port: u16,
}

/// A free loopback port (bound, then released for the child to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Nats {
    /// Starts `nats-server` (Debian's package; .ci/run installs it).
    pub fn start() -> Nats {
        Self::start_with(&[])
    }

    /// Starts `nats-server` with extra arguments.
    pub fn start_with(extra: &[&str]) -> Nats {
        let port = free_port();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed (apt-get install nats-server)");
        wait_port(port);
        Nats { child, port }
    }

    /// `nats://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until something listens on the port (at most 10 s).
pub fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The test PostgreSQL URL.
pub fn pg_url() -> String {
    std::env::var("MEERKAT_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh schema name (created by the first node that opens it).
pub async fn pg_schema(tag: &str) -> String {
    format!("meerkat_{tag}_{}", meerkat_storage::conformance::unique_tag())
}

/// Drops a test schema.
pub async fn drop_schema(schema: &str) {
    let (client, conn) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await.unwrap();
}

/// The `[cluster]` section of a test node: fast heartbeats, a short timeout.
pub fn cluster_config(name: &str, nats: &str, cluster: &str) -> Cluster {
    Cluster {
        nats_url: toml::Spanned::new(0..0, NatsUrls::One(nats.to_string())),
        node_name: toml::Spanned::new(0..0, name.to_string()),
        name: toml::Spanned::new(0..0, cluster.to_string()),
        heartbeat_interval_ms: 200,
        node_timeout_ms: 1000,
    }
}

/// A node in-process.
pub async fn node(name: &str, nats: &Nats, schema: &str, cluster: &str) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.cluster = Some(cluster_config(name, &nats.url(), cluster));
    let stores = meerkat_storage_postgres::open_with_schema(&pg_url(), schema)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL must be reachable at {}: {e}", pg_url()));
    let s = TestServer::start_with_stores(cfg, stores, Some(dir)).await.unwrap();
    // The node serves once it learnt the others (a heartbeat and a half).
    tokio::time::sleep(Duration::from_millis(400)).await;
    s
}
