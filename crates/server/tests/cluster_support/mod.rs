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

/// A Meerkat node running as its own process (the `meerkat` binary), killed on drop.
pub struct NodeProcess {
    child: Child,
    /// Its plain c2s port.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl NodeProcess {
    /// Starts `meerkat serve` with a cluster configuration: one plain c2s
    /// listener, PostgreSQL in `schema` (which must exist), the messaging modules.
    pub fn start(name: &str, nats: &str, schema: &str, cluster: &str) -> NodeProcess {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let url = format!("{}?options=-c%20search_path%3D{schema}", pg_url());
        let cfg = format!(
            r#"
[general]
hosts = ["localhost"]
data_dir = "{data}"
[[listen.c2s]]
port = {port}
ip_address = "127.0.0.1"
tls.mode = "none"
[storage]
url = "{url}"
[auth]
methods = ["internal"]
[modules.mod_roster]
[modules.mod_offline]
[modules.mod_stanza_id]
[modules.mod_disco]
[modules.mod_version]
[cluster]
nats_url = "{nats}"
node_name = "{name}"
name = "{cluster}"
heartbeat_interval_ms = 200
node_timeout_ms = 1000
"#,
            data = dir.path().display(),
        );
        let file = dir.path().join("meerkat.toml");
        std::fs::write(&file, cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("meerkat.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_meerkat"))
            .args(["serve", "--config"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start meerkat");
        wait_port(port);
        NodeProcess { child, port, _dir: dir }
    }

    /// The node's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("meerkat.log")).unwrap_or_default()
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The client address.
    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Creates a schema for nodes that open PostgreSQL by URL.
pub async fn create_schema(schema: &str) {
    let (client, conn) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client.batch_execute(&format!("CREATE SCHEMA {schema}")).await.unwrap();
}

/// Creates accounts directly in the schema.
pub async fn add_users(schema: &str, users: &[(&str, &str)]) {
    let stores = meerkat_storage_postgres::open_with_schema(&pg_url(), schema).await.unwrap();
    let cfg = meerkat_config::Config::default();
    for (jid, pw) in users {
        meerkat::accounts::add(&cfg, &stores, jid, pw).await.unwrap();
    }
}

/// alice subscribes to bob and bob approves, then both subscribe the other way:
/// `both` on each side (RFC 6121 §3), whichever nodes they are on.
pub async fn befriend(a: &mut meerkat::testing::RawClient, b: &mut meerkat::testing::RawClient) {
    use meerkat_stanza::ns;
    a.send("<presence to='bob@localhost' type='subscribe'/>").await;
    b.expect_where(|e| e.name() == "presence" && e.attr("type") == Some("subscribe")).await;
    b.send("<presence to='alice@localhost' type='subscribed'/>").await;
    b.send("<presence to='alice@localhost' type='subscribe'/>").await;
    a.expect_where(|e| e.name() == "presence" && e.attr("type") == Some("subscribe")).await;
    a.send("<presence to='bob@localhost' type='subscribed'/>").await;
    for (c, other) in [(&mut *a, "bob@localhost"), (&mut *b, "alice@localhost")] {
        c.expect_where(|e| {
            e.name() == "iq"
                && e.get_child("query", ns::ROSTER).and_then(|q| q.children().next()).is_some_and(|i| {
                    i.attr("jid") == Some(other) && i.attr("subscription") == Some("both")
                })
        })
        .await;
    }
}
