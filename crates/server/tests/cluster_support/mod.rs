//! Cluster test support beyond `meerkat::testing::cluster`: nodes as processes,
//! two datacenters of NATS servers joined by a gateway.
#![allow(dead_code)] // each test binary uses its own part

use std::process::{Child, Command, Stdio};

pub use meerkat::testing::cluster::*;

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

/// Whether every child still runs a moment after its ports answered: one that
/// could not bind a port picked by [`free_port`] (another test's process took it
/// meanwhile) has exited, and its port may be answered by that other process.
fn all_running(children: &mut [Child]) -> bool {
    std::thread::sleep(std::time::Duration::from_millis(100));
    children.iter_mut().all(|c| matches!(c.try_wait(), Ok(None)))
}

/// Kills and reaps `children`.
fn stop_all(children: &mut [Child]) {
    for c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl TwoDatacenters {
    /// Starts the four servers (again, on other ports, if one could not bind its own).
    pub fn start() -> TwoDatacenters {
        for _ in 0..5 {
            if let Some(dcs) = Self::try_start() {
                return dcs;
            }
        }
        panic!("the four nats-servers did not start (ports taken five times)");
    }

    fn try_start() -> Option<TwoDatacenters> {
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
        if !all_running(&mut servers) {
            stop_all(&mut servers);
            return None;
        }
        let url = |i: usize| format!("nats://127.0.0.1:{}", ports[i][0]);
        Some(TwoDatacenters { servers, _dir: dir, dc1: vec![url(0), url(1)], dc2: vec![url(2), url(3)] })
    }
}

impl Drop for TwoDatacenters {
    fn drop(&mut self) {
        stop_all(&mut self.servers);
    }
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
[modules.mod_muc]
[modules.mod_mam]
[modules.mod_mam.async_writer]
flush_interval = 100
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
    // Opening the stores creates the schema and runs the migrations.
    drop(meerkat_storage_postgres::open_with_schema(&pg_url(), schema).await.unwrap());
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
                && e.get_child("query", ns::ROSTER)
                    .and_then(|q| q.children().next())
                    .is_some_and(|i| i.attr("jid") == Some(other) && i.attr("subscription") == Some("both"))
        })
        .await;
    }
}

/// Connects to `addr`, logs `user` in with `resource`, asks for the roster (so
/// roster pushes come) and becomes available.
pub async fn online(
    addr: std::net::SocketAddr,
    user: &str,
    password: &str,
    resource: &str,
) -> meerkat::testing::RawClient {
    let mut c = meerkat::testing::RawClient::connect(addr).await.unwrap();
    c.login_plain(user, password, resource).await;
    c.send("<iq type='get' id='r0'><query xmlns='jabber:iq:roster'/></iq>").await;
    c.expect_where(|e| e.attr("id") == Some("r0")).await;
    c.send("<presence/>").await;
    c
}
