//! Meerkat, an XMPP server: wiring. Opens storage, starts modules, builds the
//! [`ServerContext`], binds listeners and serves until shutdown.
//!
//! [`run`] is the one entry point, used by `meerkat serve` and by tests alike;
//! listeners are bound by the caller ([`bind`]) so tests can use `127.0.0.1:0`.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use meerkat_config::{Config, StorageUrl, TlsMode};
use meerkat_core::{HookRegistry, ServerContext};
use meerkat_router::LocalRouter;
use meerkat_storage::Stores;
use meerkat_transport::tls::TlsMaterial;
use meerkat_transport::{serve_c2s, serve_http, HttpRuntime, ListenerRuntime};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

pub mod accounts;
pub mod testing;

/// Opens the configured storage (applying migrations).
pub async fn open_storage(cfg: &Config) -> anyhow::Result<Stores> {
    let url = cfg.storage.parsed().map_err(anyhow::Error::msg)?;
    Ok(match url {
        StorageUrl::Sqlite(path) => meerkat_storage_sqlite::open(Path::new(&path))
            .await
            .with_context(|| format!("opening SQLite database {path}"))?,
        StorageUrl::Postgres(url) => meerkat_storage_postgres::open(&url).await.context("opening PostgreSQL")?,
    })
}

/// A server ready to [`run`]: its context and its router (which a cluster
/// transport keeps informed of the other nodes).
pub struct Server {
    /// The shared context.
    pub ctx: Arc<ServerContext>,
    /// The router behind `ctx.router`.
    pub router: Arc<LocalRouter>,
}

/// Starts the modules and assembles the server context.
pub fn build(cfg: Arc<Config>, stores: Stores) -> Server {
    let mut reg = HookRegistry::default();
    meerkat_modules::start(&cfg, &mut reg);
    let router = Arc::new(LocalRouter::new());
    let ctx = ServerContext::new(cfg, stores, reg.freeze(), router.clone());
    ctx.resumptions.set_mover(Arc::new(meerkat_stream::Mover));
    Server { ctx, router }
}

/// Bound listener sockets, in configuration order.
pub struct Listeners {
    /// One per `[[listen.c2s]]`.
    pub c2s: Vec<TcpListener>,
    /// One per `[[listen.http]]`.
    pub http: Vec<TcpListener>,
}

/// Binds every `[[listen.c2s]]` and `[[listen.http]]` listener.
pub async fn bind(cfg: &Config) -> anyhow::Result<Listeners> {
    let mut out = Listeners { c2s: Vec::new(), http: Vec::new() };
    for l in &cfg.listen.c2s {
        let addr = format!("{}:{}", l.ip_address.get_ref(), l.port.get_ref());
        out.c2s.push(TcpListener::bind(&addr).await.with_context(|| format!("binding c2s listener {addr}"))?);
    }
    for l in &cfg.listen.http {
        let addr = format!("{}:{}", l.ip_address.get_ref(), l.port.get_ref());
        out.http.push(TcpListener::bind(&addr).await.with_context(|| format!("binding http listener {addr}"))?);
    }
    Ok(out)
}

/// The secret that makes SCRAM answers for unknown users look like real ones
/// (kept under the data directory so they stay stable across restarts).
fn load_scram_secret(data_dir: &Path) -> anyhow::Result<()> {
    let path = data_dir.join("scram-secret");
    let secret: [u8; 32] = match std::fs::read(&path) {
        Ok(b) if b.len() == 32 => b.try_into().expect("length checked"),
        _ => {
            let mut b = [0u8; 32];
            getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
            std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
            std::fs::write(&path, b).with_context(|| format!("writing {}", path.display()))?;
            b
        }
    };
    meerkat_sasl::set_unknown_user_secret(secret);
    Ok(())
}

/// Serves on already-bound listeners until `shutdown` turns true, then tells every
/// session to close and returns. With `[cluster]`, joins the cluster first (the
/// other nodes' sessions are known before the first client is accepted) and
/// leaves it after the sessions closed.
pub async fn run(server: Server, listeners: Listeners, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let Server { ctx, router } = server;
    let cfg = ctx.config.clone();
    if listeners.c2s.len() != cfg.listen.c2s.len() || listeners.http.len() != cfg.listen.http.len() {
        bail!("the bound listeners do not match the [[listen.*]] tables");
    }
    let data_dir = Path::new(&cfg.general.data_dir);
    load_scram_secret(data_dir)?;
    let cluster = match &cfg.cluster {
        Some(c) => {
            let handle = meerkat_cluster::join(ctx.clone(), router).await?;
            tracing::info!(node = %c.node_name.get_ref(), "cluster joined");
            Some(handle)
        }
        None => None,
    };
    let slots = Arc::new(Semaphore::new(cfg.general.max_connections));
    let mut self_signed: Option<TlsMaterial> = None;
    let mut tasks = Vec::new();
    for (l, sock) in cfg.listen.http.iter().zip(listeners.http) {
        let tls = match &l.tls {
            Some(t) => Some(
                meerkat_transport::tls::load(Path::new(t.certfile.get_ref()), Path::new(t.keyfile.get_ref()))
                    .context("loading the HTTP listener's TLS certificate")?,
            ),
            None => None,
        };
        let addr = sock.local_addr()?;
        tracing::info!(%addr, https = tls.is_some(), "http listener ready (WebSocket)");
        let rt = Arc::new(HttpRuntime {
            ctx: ctx.clone(),
            cfg: l.clone(),
            tls,
            slots: slots.clone(),
            bosh: Default::default(),
        });
        tasks.push(tokio::spawn(serve_http(rt, sock, shutdown.clone())));
    }
    for (l, sock) in cfg.listen.c2s.iter().zip(listeners.c2s) {
        let tls = match (&l.tls.certfile, &l.tls.keyfile, l.tls.mode) {
            (_, _, TlsMode::None) => None,
            (Some(c), Some(k), _) => Some(
                meerkat_transport::tls::load(Path::new(c.get_ref()), Path::new(k.get_ref()))
                    .context("loading the listener's TLS certificate")?,
            ),
            _ => {
                if self_signed.is_none() {
                    self_signed = Some(
                        meerkat_transport::tls::self_signed(data_dir, cfg.hosts())
                            .context("preparing the self-signed certificate")?,
                    );
                }
                self_signed.clone()
            }
        };
        let shaper_rate = l.shaper.as_ref().and_then(|s| cfg.shaper.get(s.get_ref())).map(|s| s.max_rate);
        let addr = sock.local_addr()?;
        tracing::info!(%addr, mode = ?l.tls.mode, "c2s listener ready");
        let rt = Arc::new(ListenerRuntime { ctx: ctx.clone(), cfg: l.clone(), tls, shaper_rate, slots: slots.clone() });
        tasks.push(tokio::spawn(serve_c2s(rt, sock, shutdown.clone())));
    }
    tracing::info!(hosts = ?cfg.hosts(), storage = ctx.stores.backend, modules = ?ctx.hooks.modules, "Meerkat is serving");
    for t in tasks {
        let _ = t.await;
    }
    // Listeners stopped; sessions received the shutdown signal too. Give them a
    // moment to send their stream errors and unavailable presence.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while ctx.router.session_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The other nodes forget this one's sessions.
    if let Some(c) = cluster {
        c.leave().await;
    }
    // Then modules write what they still hold (the archive writer's pending rows).
    for h in &ctx.hooks.shutdown {
        h.on_shutdown(&ctx).await;
    }
    Ok(())
}
