//! The configuration schema: one struct per TOML table, defaults matching the
//! zero-setup single node (domain `localhost`, SQLite under `./data`).

use serde::Deserialize;
use std::collections::BTreeMap;
use std::ops::Range;
use toml::Spanned;

use crate::modules::Modules;

/// Reports one validation problem: (span in the source, dotted key, message).
pub(crate) type Report<'a> = dyn FnMut(Option<Range<usize>>, String, String) + 'a;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[general]`
    #[serde(default)]
    pub general: General,
    /// `[listen]` with `[[listen.c2s]]` tables.
    #[serde(default)]
    pub listen: Listen,
    /// `[storage]`
    #[serde(default)]
    pub storage: Storage,
    /// `[auth]`
    #[serde(default)]
    pub auth: Auth,
    /// `[shaper.NAME]` traffic shapers referenced by listeners.
    #[serde(default)]
    pub shaper: BTreeMap<String, Shaper>,
    /// `[modules.mod_x]`: a module is enabled by its table.
    #[serde(default)]
    pub modules: Modules,
    /// `[cluster]`: absent = a single node.
    #[serde(default)]
    pub cluster: Option<Cluster>,
}

/// `[cluster]`: this node's place in a cluster whose nodes talk over NATS and
/// share the PostgreSQL storage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// NATS server URL(s) this node connects to (`nats://host:port`); a list
    /// gives the client several servers of one NATS cluster to fail over between.
    pub nats_url: Spanned<NatsUrls>,
    /// This node's name, unique in the cluster (letters, digits, `-`, `_`).
    pub node_name: Spanned<String>,
    /// The cluster's name: the prefix of every NATS subject it uses, so several
    /// clusters can share one NATS system.
    #[serde(default = "default_cluster_name")]
    pub name: Spanned<String>,
    /// How often this node tells the others it is alive, in milliseconds.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_interval_ms: u64,
    /// A node silent for this long is taken as lost, in milliseconds.
    #[serde(default = "default_node_timeout_ms")]
    pub node_timeout_ms: u64,
}

/// One NATS URL or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum NatsUrls {
    /// `nats_url = "nats://…"`
    One(String),
    /// `nats_url = ["nats://…", "nats://…"]`
    Many(Vec<String>),
}

impl NatsUrls {
    /// The URLs as a list.
    pub fn list(&self) -> Vec<String> {
        match self {
            NatsUrls::One(u) => vec![u.clone()],
            NatsUrls::Many(v) => v.clone(),
        }
    }
}

fn default_cluster_name() -> Spanned<String> {
    Spanned::new(0..0, "meerkat".to_string())
}
fn default_heartbeat_ms() -> u64 {
    1000
}
fn default_node_timeout_ms() -> u64 {
    3000
}

impl Default for Config {
    /// The built-in single-node configuration: what `meerkat serve` runs without a file.
    fn default() -> Self {
        Config {
            general: General::default(),
            listen: Listen {
                http: vec![HttpListener {
                    port: Spanned::new(0..0, 5280),
                    ip_address: default_ip(),
                    tls: None,
                    max_stanza_size: default_max_stanza(),
                    state_timeout: default_state_timeout(),
                    max_stanza_rate: default_stanza_rate(),
                    handlers: HttpHandlers {
                        mod_websockets: vec![HttpHandler {
                            host: any_host(),
                            path: Spanned::new(0..0, "/ws-xmpp".into()),
                        }],
                        mod_bosh: vec![BoshHandler {
                            host: any_host(),
                            path: Spanned::new(0..0, "/http-bind".into()),
                            max_wait: default_bosh_wait(),
                            max_hold: default_bosh_hold(),
                            inactivity: default_bosh_inactivity(),
                            max_pause: default_bosh_maxpause(),
                        }],
                    },
                }],
                c2s: vec![
                    C2sListener::default(),
                    C2sListener {
                        port: Spanned::new(0..0, 5223),
                        tls: ListenerTls { mode: TlsMode::Tls, ..ListenerTls::default() },
                        ..C2sListener::default()
                    },
                ],
            },
            storage: Storage::default(),
            auth: Auth::default(),
            shaper: BTreeMap::new(),
            modules: Modules::all_default(),
            cluster: None,
        }
    }
}

/// `[general]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct General {
    /// XMPP domains served by this server.
    #[serde(default = "default_hosts")]
    pub hosts: Spanned<Vec<String>>,
    /// Log level: error, warning, info, debug.
    #[serde(default = "default_loglevel")]
    pub loglevel: Spanned<String>,
    /// Directory for generated state (self-signed certificate).
    #[serde(default = "default_data_dir")]
    pub data_dir: String,
    /// Most concurrent client connections over all listeners.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Mailbox capacity of one session; overflow closes the session with
    /// `policy-violation` (a consumer that stopped reading).
    #[serde(default = "default_mailbox")]
    pub session_mailbox: usize,
    /// Threads of the async runtime that runs the sessions (absent: one per
    /// core). Several nodes sharing one machine each take their share of it.
    #[serde(default)]
    pub worker_threads: Option<Spanned<usize>>,
}

/// Most runtime threads a configuration may ask for (a typo such as 40000 would
/// otherwise start that many threads).
const MAX_WORKER_THREADS: usize = 1024;

fn default_hosts() -> Spanned<Vec<String>> {
    Spanned::new(0..0, vec!["localhost".to_string()])
}
fn default_loglevel() -> Spanned<String> {
    Spanned::new(0..0, "info".to_string())
}
fn default_data_dir() -> String {
    "data".to_string()
}
fn default_max_connections() -> usize {
    100_000
}
fn default_mailbox() -> usize {
    1024
}

impl Default for General {
    fn default() -> Self {
        General {
            hosts: default_hosts(),
            loglevel: default_loglevel(),
            data_dir: default_data_dir(),
            max_connections: default_max_connections(),
            session_mailbox: default_mailbox(),
            worker_threads: None,
        }
    }
}

/// `[listen]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// `[[listen.c2s]]` client listeners.
    #[serde(default)]
    pub c2s: Vec<C2sListener>,
    /// `[[listen.http]]` HTTP listeners (XMPP over WebSocket and BOSH).
    #[serde(default)]
    pub http: Vec<HttpListener>,
}

/// `[[listen.http]]`: an HTTP listener with handlers by path, shaped like
/// MongooseIM's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpListener {
    /// TCP port.
    pub port: Spanned<u16>,
    /// Address to bind.
    #[serde(default = "default_ip")]
    pub ip_address: Spanned<String>,
    /// HTTPS from the first byte when present (both files required).
    #[serde(default)]
    pub tls: Option<HttpTls>,
    /// Largest stanza (one WebSocket message) in bytes.
    #[serde(default = "default_max_stanza")]
    pub max_stanza_size: usize,
    /// Seconds to authenticate and bind.
    #[serde(default = "default_state_timeout")]
    pub state_timeout: u64,
    /// Stanzas per second a session may send before it is throttled.
    #[serde(default = "default_stanza_rate")]
    pub max_stanza_rate: u32,
    /// Handlers by kind.
    #[serde(default)]
    pub handlers: HttpHandlers,
}

/// `tls.*` of an HTTP listener: a certificate makes it HTTPS. There is no
/// `tls.mode` here (no STARTTLS over HTTP); setting one is an unknown-key error.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTls {
    /// PEM certificate chain.
    pub certfile: Spanned<String>,
    /// PEM private key.
    pub keyfile: Spanned<String>,
}

/// `[[listen.http.handlers.*]]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHandlers {
    /// XMPP over WebSocket (RFC 7395).
    #[serde(default)]
    pub mod_websockets: Vec<HttpHandler>,
    /// XMPP over BOSH (XEP-0124 / XEP-0206).
    #[serde(default)]
    pub mod_bosh: Vec<BoshHandler>,
}

/// `[[listen.http.handlers.mod_bosh]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoshHandler {
    /// Host header to match; `_` = any.
    #[serde(default = "any_host")]
    pub host: String,
    /// URL path, e.g. `/http-bind`.
    pub path: Spanned<String>,
    /// Longest `wait` granted, seconds (XEP-0124 §7.1).
    #[serde(default = "default_bosh_wait")]
    pub max_wait: u64,
    /// Most requests held at once (`hold`).
    #[serde(default = "default_bosh_hold")]
    pub max_hold: u64,
    /// Seconds without a request before the session ends (`inactivity`).
    #[serde(default = "default_bosh_inactivity")]
    pub inactivity: u64,
    /// Longest `pause` a client may ask for, seconds (`maxpause`).
    #[serde(default = "default_bosh_maxpause")]
    pub max_pause: u64,
}

fn default_bosh_wait() -> u64 {
    60
}
fn default_bosh_hold() -> u64 {
    1
}
fn default_bosh_inactivity() -> u64 {
    30
}
fn default_bosh_maxpause() -> u64 {
    120
}

/// One handler: which host and path it answers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHandler {
    /// Host header to match; `_` = any.
    #[serde(default = "any_host")]
    pub host: String,
    /// URL path, e.g. `/ws-xmpp`.
    pub path: Spanned<String>,
}

fn any_host() -> String {
    "_".to_string()
}

/// `[[listen.c2s]]`: one client-to-server listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct C2sListener {
    /// TCP port.
    pub port: Spanned<u16>,
    /// Address to bind.
    #[serde(default = "default_ip")]
    pub ip_address: Spanned<String>,
    /// TLS settings (`tls.mode`, `tls.certfile`, `tls.keyfile`).
    #[serde(default)]
    pub tls: ListenerTls,
    /// Largest stanza in bytes; larger ones close the stream with `policy-violation`.
    #[serde(default = "default_max_stanza")]
    pub max_stanza_size: usize,
    /// Seconds an unauthenticated connection may take to authenticate and bind.
    #[serde(default = "default_state_timeout")]
    pub state_timeout: u64,
    /// Name of a `[shaper.NAME]` limiting inbound bytes per second per connection.
    #[serde(default)]
    pub shaper: Option<Spanned<String>>,
    /// Stanzas per second a session may send before it is throttled.
    #[serde(default = "default_stanza_rate")]
    pub max_stanza_rate: u32,
    /// Listen backlog.
    #[serde(default = "default_backlog")]
    pub backlog: u32,
}

fn default_ip() -> Spanned<String> {
    Spanned::new(0..0, "0.0.0.0".to_string())
}
fn default_max_stanza() -> usize {
    65536
}
fn default_state_timeout() -> u64 {
    30
}
fn default_stanza_rate() -> u32 {
    1000
}
fn default_backlog() -> u32 {
    1024
}

impl Default for C2sListener {
    fn default() -> Self {
        C2sListener {
            port: Spanned::new(0..0, 5222),
            ip_address: default_ip(),
            tls: ListenerTls::default(),
            max_stanza_size: default_max_stanza(),
            state_timeout: default_state_timeout(),
            shaper: None,
            max_stanza_rate: default_stanza_rate(),
            backlog: default_backlog(),
        }
    }
}

/// How a listener uses TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// STARTTLS offered, not required (RFC 6120 §5).
    #[default]
    Starttls,
    /// STARTTLS required before anything else.
    StarttlsRequired,
    /// Direct TLS from the first byte (XEP-0368).
    Tls,
    /// No TLS at all (only for tests and load generators on loopback).
    None,
}

/// `tls.*` of a listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Mode.
    #[serde(default)]
    pub mode: TlsMode,
    /// PEM certificate chain; a self-signed ECDSA P-256 certificate is generated when absent.
    pub certfile: Option<Spanned<String>>,
    /// PEM private key (required with `certfile`).
    pub keyfile: Option<Spanned<String>>,
}

/// `[storage]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// `sqlite://PATH` (relative to the working directory) or `postgres://user@host:port/db`.
    #[serde(default = "default_storage_url")]
    pub url: Spanned<String>,
}

fn default_storage_url() -> Spanned<String> {
    Spanned::new(0..0, "sqlite://data/meerkat.db".to_string())
}

impl Default for Storage {
    fn default() -> Self {
        Storage { url: default_storage_url() }
    }
}

/// Which storage the URL selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageUrl {
    /// Embedded SQLite file.
    Sqlite(String),
    /// PostgreSQL connection URL.
    Postgres(String),
}

impl Storage {
    /// Classifies the URL.
    pub fn parsed(&self) -> Result<StorageUrl, String> {
        let url = self.url.get_ref();
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err("sqlite URL needs a file path, e.g. sqlite://data/meerkat.db".into());
            }
            Ok(StorageUrl::Sqlite(path.to_string()))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(StorageUrl::Postgres(url.clone()))
        } else {
            Err(format!("unsupported storage URL `{url}`: use sqlite://PATH or postgres://USER@HOST:PORT/DB"))
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// Authentication methods; `internal` = accounts in the configured storage.
    #[serde(default = "default_methods")]
    pub methods: Spanned<Vec<String>>,
    /// SASL mechanisms offered (default: all; names as on the wire).
    #[serde(default)]
    pub sasl_mechanisms: Option<Spanned<Vec<String>>>,
    /// PBKDF2 iterations for newly set passwords.
    #[serde(default = "default_iterations")]
    pub scram_iterations: u32,
}

fn default_methods() -> Spanned<Vec<String>> {
    Spanned::new(0..0, vec!["internal".to_string()])
}
fn default_iterations() -> u32 {
    4096
}

impl Default for Auth {
    fn default() -> Self {
        Auth { methods: default_methods(), sasl_mechanisms: None, scram_iterations: default_iterations() }
    }
}

/// `[shaper.NAME]`: a token bucket on inbound bytes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shaper {
    /// Bytes per second.
    pub max_rate: u32,
}

const KNOWN_MECHANISMS: &[&str] = &[
    "PLAIN",
    "SCRAM-SHA-1",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-256",
    "SCRAM-SHA-256-PLUS",
    "SCRAM-SHA-512",
    "SCRAM-SHA-512-PLUS",
];

fn span<T>(s: &Spanned<T>) -> Option<Range<usize>> {
    let r = s.span();
    (r.end > 0).then_some(r)
}

impl Cluster {
    fn validate(&self, cfg: &Config, report: &mut Report<'_>) {
        let urls = self.nats_url.get_ref().list();
        if urls.is_empty() {
            report(span(&self.nats_url), "cluster.nats_url".into(), "at least one NATS URL is required".into());
        }
        for u in &urls {
            let rest = u.strip_prefix("nats://").or_else(|| u.strip_prefix("tls://"));
            if rest.is_none_or(|r| r.is_empty()) {
                report(
                    span(&self.nats_url),
                    "cluster.nats_url".into(),
                    format!("`{u}` is not a nats:// or tls:// URL"),
                );
            }
        }
        let subject_token =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !subject_token(self.node_name.get_ref()) {
            report(
                span(&self.node_name),
                "cluster.node_name".into(),
                format!("`{}` is not a node name (letters, digits, '-', '_')", self.node_name.get_ref()),
            );
        }
        if !subject_token(self.name.get_ref()) {
            report(
                span(&self.name),
                "cluster.name".into(),
                format!("`{}` is not a cluster name (letters, digits, '-', '_')", self.name.get_ref()),
            );
        }
        if self.heartbeat_interval_ms == 0 || self.node_timeout_ms < 2 * self.heartbeat_interval_ms {
            report(
                span(&self.node_name),
                "cluster.node_timeout_ms".into(),
                "node_timeout_ms must be at least twice heartbeat_interval_ms (and both above 0)".into(),
            );
        }
        if !matches!(cfg.storage.parsed(), Ok(StorageUrl::Postgres(_))) {
            report(
                span(&cfg.storage.url),
                "storage.url".into(),
                "the nodes of a cluster share one PostgreSQL database: storage.url must be postgres://".into(),
            );
        }
    }
}

impl Config {
    /// Semantic checks the types cannot express; reports every problem.
    pub(crate) fn validate(&self, report: &mut Report<'_>) {
        let hosts = &self.general.hosts;
        if hosts.get_ref().is_empty() {
            report(span(hosts), "general.hosts".into(), "at least one host is required".into());
        }
        for h in hosts.get_ref() {
            if h.is_empty() || h.contains(['@', '/', ' ']) || h != &h.to_lowercase() {
                report(span(hosts), "general.hosts".into(), format!("`{h}` is not a valid lowercase domain name"));
            }
        }
        let lvl = self.general.loglevel.get_ref().as_str();
        if !["error", "warning", "info", "debug", "trace"].contains(&lvl) {
            report(
                span(&self.general.loglevel),
                "general.loglevel".into(),
                format!("`{lvl}` is not one of error, warning, info, debug, trace"),
            );
        }
        if let Some(n) = &self.general.worker_threads {
            if !(1..=MAX_WORKER_THREADS).contains(n.get_ref()) {
                let msg = format!("must be between 1 and {MAX_WORKER_THREADS} (or absent: one per core)");
                report(span(n), "general.worker_threads".into(), msg);
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, l) in self.listen.c2s.iter().enumerate() {
            let key = |k: &str| format!("listen.c2s[{i}].{k}");
            if !seen.insert((l.ip_address.get_ref().clone(), *l.port.get_ref())) {
                report(span(&l.port), key("port"), format!("port {} is used by another listener", l.port.get_ref()));
            }
            if l.ip_address.get_ref().parse::<std::net::IpAddr>().is_err() {
                report(
                    span(&l.ip_address),
                    key("ip_address"),
                    format!("`{}` is not an IP address", l.ip_address.get_ref()),
                );
            }
            if l.max_stanza_size < 1024 {
                report(None, key("max_stanza_size"), "must be at least 1024 bytes".into());
            }
            match (&l.tls.certfile, &l.tls.keyfile) {
                (Some(c), None) => report(span(c), key("tls.keyfile"), "tls.certfile needs tls.keyfile".into()),
                (None, Some(k)) => report(span(k), key("tls.certfile"), "tls.keyfile needs tls.certfile".into()),
                _ => {}
            }
            if let Some(s) = &l.shaper {
                if !self.shaper.contains_key(s.get_ref()) {
                    report(span(s), key("shaper"), format!("no [shaper.{}] table", s.get_ref()));
                }
            }
        }
        for (i, l) in self.listen.http.iter().enumerate() {
            let key = |k: &str| format!("listen.http[{i}].{k}");
            if !seen.insert((l.ip_address.get_ref().clone(), *l.port.get_ref())) {
                report(span(&l.port), key("port"), format!("port {} is used by another listener", l.port.get_ref()));
            }
            if l.ip_address.get_ref().parse::<std::net::IpAddr>().is_err() {
                report(
                    span(&l.ip_address),
                    key("ip_address"),
                    format!("`{}` is not an IP address", l.ip_address.get_ref()),
                );
            }
            for h in &l.handlers.mod_websockets {
                if !h.path.get_ref().starts_with('/') {
                    report(span(&h.path), key("handlers.mod_websockets.path"), "a path starts with '/'".into());
                }
            }
            for h in &l.handlers.mod_bosh {
                if !h.path.get_ref().starts_with('/') {
                    report(span(&h.path), key("handlers.mod_bosh.path"), "a path starts with '/'".into());
                }
                if h.max_wait == 0 || h.inactivity == 0 {
                    report(
                        span(&h.path),
                        key("handlers.mod_bosh"),
                        "max_wait and inactivity must be at least 1 second".into(),
                    );
                }
            }
        }
        if let Err(e) = self.storage.parsed() {
            report(span(&self.storage.url), "storage.url".into(), e);
        }
        if let Some(c) = &self.cluster {
            c.validate(self, report);
        }
        for m in self.auth.methods.get_ref() {
            if m != "internal" {
                report(
                    span(&self.auth.methods),
                    "auth.methods".into(),
                    format!("unknown method `{m}` (supported: internal)"),
                );
            }
        }
        if let Some(mechs) = &self.auth.sasl_mechanisms {
            for m in mechs.get_ref() {
                if !KNOWN_MECHANISMS.contains(&m.as_str()) {
                    report(
                        span(mechs),
                        "auth.sasl_mechanisms".into(),
                        format!("unknown mechanism `{m}` (supported: {})", KNOWN_MECHANISMS.join(", ")),
                    );
                }
            }
        }
        if self.auth.scram_iterations < 4096 {
            report(None, "auth.scram_iterations".into(), "must be at least 4096 (RFC 7677 §4)".into());
        }
        self.modules.validate(report);
    }

    /// The served domains.
    pub fn hosts(&self) -> &[String] {
        self.general.hosts.get_ref()
    }
}
