//! Cluster test support: a nats-server of the test's own (Debian's
//! `nats-server`) and in-process nodes sharing one PostgreSQL schema.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meerkat_config::{Cluster, NatsUrls};

use super::{test_config, TestServer};

/// A nats-server on a free loopback port, killed on drop.
pub struct Nats {
    child: Child,
    /// Its client port.
    pub port: u16,
}

/// A free loopback port (bound, then released for a child process to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("bound").port()
}

/// Waits until something listens on the loopback port (at most 10 s).
pub fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Nats {
    /// Starts `nats-server` (Debian's package; scripts/test installs it) on a
    /// port it picks itself and reports in a ports file: a port picked here and
    /// released for it could be taken by another test's server meanwhile (then
    /// this one would fail to bind, and the test would talk to the other's).
    pub fn start() -> Nats {
        let dir = tempfile::tempdir().expect("a directory for the nats-server ports file");
        let mut child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", "-1", "--ports_file_dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed (apt-get install nats-server)");
        let file = dir.path().join(format!("nats-server_{}.ports", child.id()));
        let deadline = Instant::now() + Duration::from_secs(10);
        let port = loop {
            // {"nats":["nats://127.0.0.1:PORT"]}, once written in full.
            let found = std::fs::read_to_string(&file).ok().and_then(|text| {
                if !text.trim_end().ends_with('}') {
                    return None;
                }
                let url = text.split('"').find(|s| s.starts_with("nats://"))?;
                url.rsplit(':').next()?.parse::<u16>().ok()
            });
            if let Some(port) = found {
                break port;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("nats-server exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "nats-server wrote no ports file in {}", dir.path().display());
            std::thread::sleep(Duration::from_millis(20));
        };
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

/// The test PostgreSQL URL (`MEERKAT_TEST_PG_URL`, default the local `test` database).
pub fn pg_url() -> String {
    std::env::var("MEERKAT_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh schema name (created by the first node that opens it).
pub fn pg_schema(tag: &str) -> String {
    format!("meerkat_{tag}_{}", meerkat_storage::conformance::unique_tag())
}

/// Drops a test schema.
pub async fn drop_schema(schema: &str) {
    meerkat_storage_postgres::drop_schema(&pg_url(), schema).await.expect("drop the test schema");
}

/// A fresh cluster name, so tests sharing one NATS never see each other.
pub fn cluster_name() -> String {
    format!("t{}", meerkat_storage::conformance::unique_tag())
}

/// The `[cluster]` section of a test node: fast heartbeats, a short timeout.
pub fn cluster_config(name: &str, urls: NatsUrls, cluster: &str) -> Cluster {
    Cluster {
        nats_url: toml::Spanned::new(0..0, urls),
        node_name: toml::Spanned::new(0..0, name.to_string()),
        name: toml::Spanned::new(0..0, cluster.to_string()),
        heartbeat_interval_ms: 200,
        node_timeout_ms: 1000,
    }
}

/// A node in-process on `nats`.
pub async fn node(name: &str, nats: &Nats, schema: &str, cluster: &str) -> TestServer {
    node_at(name, NatsUrls::One(nats.url()), schema, cluster).await
}

/// A node in-process, connected to the NATS servers at `urls`, storing in
/// PostgreSQL schema `schema`.
pub async fn node_at(name: &str, urls: NatsUrls, schema: &str, cluster: &str) -> TestServer {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut cfg = test_config(dir.path());
    cfg.cluster = Some(cluster_config(name, urls, cluster));
    let stores = meerkat_storage_postgres::open_with_schema(&pg_url(), schema)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL must be reachable at {}: {e}", pg_url()));
    let s = TestServer::start_with_stores(cfg, stores, Some(dir)).await.expect("the node starts");
    // The node serves once it learnt the others (a heartbeat and a half).
    tokio::time::sleep(Duration::from_millis(400)).await;
    s
}

/// Waits until `server`'s router sees `n` sessions of `bare` (at most 10 s).
pub async fn wait_sessions(server: &TestServer, bare: &str, n: usize) {
    let bare = meerkat_stanza::BareJid::new(bare).expect("a bare JID");
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.ctx.router.user_session_count(&bare) != n {
        assert!(Instant::now() < deadline, "{bare} never had {n} sessions in this node's table");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
