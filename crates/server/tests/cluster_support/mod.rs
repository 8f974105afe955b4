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

/// Two "datacenters" of two nats-servers each (routes inside a datacenter, a
/// NATS gateway between them), all on loopback.
pub struct TwoDatacenters {
    servers: Vec<Child>,
    _dir: tempfile::TempDir,
    /// Client URLs of dc1's servers.
    pub dc1: Vec<String>,
    /// Client URLs of dc2's servers.
    pub dc2: Vec<String>,
}

impl TwoDatacenters {
    /// Starts the four servers.
    pub fn start() -> TwoDatacenters {
        let dir = tempfile::tempdir().unwrap();
        // Per server: client, route and gateway ports.
        let ports: Vec<[u16; 3]> = (0..4).map(|_| [free_port(), free_port(), free_port()]).collect();
        let dcs = [("dc1", [0usize, 1]), ("dc2", [2, 3])];
        let gw_urls = |dc: usize| -> String {
            dcs[dc].1.iter().map(|&i| format!("\"nats://127.0.0.1:{}\"", ports[i][2])).collect::<Vec<_>>().join(", ")
        };
        let mut servers = Vec::new();
        for (d, (dc, members)) in dcs.iter().enumerate() {
            for &i in members {
                let routes = members
                    .iter()
                    .filter(|&&j| j != i)
                    .map(|&j| format!("\"nats://127.0.0.1:{}\"", ports[j][1]))
                    .collect::<Vec<_>>()
                    .join(", ");
                let other = 1 - d;
                let conf = format!(
                    "server_name: s{i}\nhost: 127.0.0.1\nport: {client}\n\
                     cluster {{ name: {dc}, listen: \"127.0.0.1:{route}\", routes: [{routes}] }}\n\
                     gateway {{ name: {dc}, listen: \"127.0.0.1:{gw}\", gateways: [\
                       {{ name: {odc}, urls: [{ourls}] }} ] }}\n",
                    client = ports[i][0],
                    route = ports[i][1],
                    gw = ports[i][2],
                    odc = dcs[other].0,
                    ourls = gw_urls(other),
                );
                let file = dir.path().join(format!("s{i}.conf"));
                std::fs::write(&file, conf).unwrap();
                servers.push(
                    Command::new("nats-server")
                        .arg("-c")
                        .arg(&file)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .expect("nats-server must be installed (apt-get install nats-server)"),
                );
            }
        }
        for p in &ports {
            wait_port(p[0]);
        }
        let url = |i: usize| format!("nats://127.0.0.1:{}", ports[i][0]);
        TwoDatacenters { servers, _dir: dir, dc1: vec![url(0), url(1)], dc2: vec![url(2), url(3)] }
    }
}

impl Drop for TwoDatacenters {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
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
    node_at(name, NatsUrls::One(nats.url()), schema, cluster).await
}

/// A node in-process, connected to the NATS servers at `urls`.
pub async fn node_at(name: &str, urls: NatsUrls, schema: &str, cluster: &str) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    let mut c = cluster_config(name, "", cluster);
    c.nats_url = toml::Spanned::new(0..0, urls);
    cfg.cluster = Some(c);
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

/// Waits until `server`'s router sees `n` sessions of `bare` (at most 10 s).
pub async fn wait_sessions(server: &TestServer, bare: &str, n: usize) {
    let bare = meerkat_stanza::BareJid::new(bare).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.ctx.router.user_session_count(&bare) != n {
        assert!(Instant::now() < deadline, "{bare} never had {n} sessions in this node's table");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
