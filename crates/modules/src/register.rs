//! In-band registration: XEP-0077 (In-Band Registration, version 2.4).
//!
//! - Before authentication (§3.1): a get returns the fields to fill in
//!   (`<instructions/>`, `<username/>`, `<password/>`); a set with a username and a
//!   password creates the account. The username is prepared with nodeprep (an
//!   invalid one is `jid-malformed`); missing fields are `not-acceptable` (§3.1); a
//!   password shorter than `min_password_length` characters is `not-acceptable`
//!   with a text; an existing account is a `conflict`. One IP address may register
//!   once per `registration_interval` seconds (`resource-constraint`, type wait;
//!   §5 advises throttling). Only SCRAM keys are stored, derived off the async
//!   runtime.
//! - After authentication, from the user's own session, to their account or to the
//!   server (§3.2, §3.3): a get answers `<registered/>` and the username; a set
//!   with `<remove/>` deletes the account and closes all of its sessions with
//!   `<not-authorized/>` (when `allow_unregister`); a set with the username and a
//!   new password changes the password (when `allow_password_change`). Disabled
//!   operations are `not-allowed`.
//! - Advertised as the `<register xmlns='http://jabber.org/features/iq-register'/>`
//!   stream feature (§4) and the `jabber:iq:register` server feature.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meerkat_config::RegisterCfg;
use meerkat_core::hooks::{IqHandler, IqRequest, IqResult, IqScope};
use meerkat_core::{account, HookRegistry, Module, ServerContext, SessionMsg};
use meerkat_stanza::{ns, BareJid, StanzaError, StanzaErrorCondition, StreamError};
use meerkat_storage::{Account, StoredCredentials};
use meerkat_xml::Element;
use parking_lot::Mutex;

/// Longest password accepted (bytes), to bound the work of deriving keys.
const MAX_PASSWORD_BYTES: usize = 1024;

/// The in-band registration module (`[modules.mod_register]`).
pub struct Register {
    cfg: RegisterCfg,
    scram_iterations: u32,
    limiter: Mutex<Limiter>,
}

/// Last registration per IP address, pruned once per interval.
struct Limiter {
    by_ip: HashMap<IpAddr, Instant>,
    last_prune: Instant,
}

impl Register {
    /// With options from `[modules.mod_register]`; passwords are stored as SCRAM
    /// keys with `scram_iterations` (from `[auth]`).
    pub fn new(cfg: RegisterCfg, scram_iterations: u32) -> Self {
        Register {
            cfg,
            scram_iterations,
            limiter: Mutex::new(Limiter { by_ip: HashMap::new(), last_prune: Instant::now() }),
        }
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(self.cfg.registration_interval)
    }

    /// Reserves a registration for `ip`: `false` when the address registered less
    /// than the interval ago. Returns what to restore if the registration fails.
    fn reserve(&self, ip: IpAddr) -> Result<Option<Instant>, ()> {
        let interval = self.interval();
        let now = Instant::now();
        let mut l = self.limiter.lock();
        if now.duration_since(l.last_prune) >= interval {
            l.by_ip.retain(|_, t| now.duration_since(*t) < interval);
            l.last_prune = now;
        }
        match l.by_ip.get(&ip) {
            Some(t) if now.duration_since(*t) < interval => Err(()),
            prev => {
                let prev = prev.copied();
                l.by_ip.insert(ip, now);
                Ok(prev)
            }
        }
    }

    /// Gives back a reservation after a failed registration.
    fn release(&self, ip: IpAddr, prev: Option<Instant>) {
        let mut l = self.limiter.lock();
        match prev {
            Some(t) => l.by_ip.insert(ip, t),
            None => l.by_ip.remove(&ip),
        };
    }

    #[allow(clippy::result_large_err)] // StanzaError is the handlers' error type
    fn check_password(&self, password: &str) -> Result<(), StanzaError> {
        if password.chars().count() < self.cfg.min_password_length {
            return Err(not_acceptable(&format!(
                "the password must have at least {} characters",
                self.cfg.min_password_length
            )));
        }
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(not_acceptable("the password is too long"));
        }
        Ok(())
    }

    /// SCRAM keys for a password, computed on the blocking pool.
    async fn credentials(&self, password: &str) -> Result<StoredCredentials, StanzaError> {
        let password = password.to_string();
        let iterations = self.scram_iterations;
        tokio::task::spawn_blocking(move || StoredCredentials::from_password(&password, iterations)).await.map_err(
            |e| {
                tracing::error!(error = %e, "deriving SCRAM keys failed");
                StanzaError::internal()
            },
        )
    }
}

impl Module for Register {
    fn name(&self) -> &'static str {
        "mod_register"
    }

    fn register(self: Arc<Self>, reg: &mut HookRegistry) {
        reg.on_iq(IqScope::PreAuth, ns::REGISTER, Arc::new(PreAuth(self.clone())));
        reg.on_iq(IqScope::Account, ns::REGISTER, Arc::new(Authenticated(self.clone())));
        reg.on_iq(IqScope::Server, ns::REGISTER, Arc::new(Authenticated(self)));
        reg.stream_feature_preauth(Element::new("register", ns::REGISTER_FEATURE));
        reg.server_feature(ns::REGISTER);
    }
}

fn not_acceptable(text: &str) -> StanzaError {
    StanzaError::new(StanzaErrorCondition::NotAcceptable).with_text(text)
}

fn field(name: &str, value: Option<&str>) -> Element {
    let mut el = Element::new(name, ns::REGISTER);
    if let Some(v) = value {
        el.append_text(v);
    }
    el
}

/// The `<username/>` and `<password/>` of a set, as given.
fn fields(payload: &Element) -> (Option<String>, Option<String>) {
    (payload.child_text("username", ns::REGISTER), payload.child_text("password", ns::REGISTER))
}

/// The account `username@domain`, nodeprep'ed.
#[allow(clippy::result_large_err)] // StanzaError is the handlers' error type
fn account_jid(username: &str, domain: &str) -> Result<BareJid, StanzaError> {
    let malformed = || StanzaError::new(StanzaErrorCondition::JidMalformed).with_text("invalid username");
    if username.is_empty() || username.contains(['@', '/']) {
        return Err(malformed());
    }
    let jid = BareJid::new(&format!("{username}@{domain}")).map_err(|_| malformed())?;
    if jid.node().is_none() || jid.domain().as_str() != domain {
        return Err(malformed());
    }
    Ok(jid)
}

/// Registration before authentication.
struct PreAuth(Arc<Register>);

#[async_trait::async_trait]
impl IqHandler for PreAuth {
    async fn handle_iq(&self, ctx: &ServerContext, req: IqRequest<'_>) -> IqResult {
        let m = &self.0;
        if !req.payload.is("query", ns::REGISTER) {
            return Err(StanzaError::bad_request("expected <query/>"));
        }
        if !req.is_set {
            return Ok(Some(
                Element::builder("query", ns::REGISTER)
                    .append(field("instructions", Some("Choose a username and password to register with this server.")))
                    .append(field("username", None))
                    .append(field("password", None))
                    .build(),
            ));
        }
        if req.payload.has_child("remove", ns::REGISTER) {
            // §3.2: cancelling a registration needs an authenticated stream.
            return Err(StanzaError::new(StanzaErrorCondition::NotAuthorized));
        }
        let (Some(username), Some(password)) = fields(req.payload) else {
            return Err(not_acceptable("a username and a password are required"));
        };
        if username.is_empty() || password.is_empty() {
            return Err(not_acceptable("a username and a password are required"));
        }
        let domain = req.to.domain().as_str();
        if !ctx.is_local_domain(domain) {
            return Err(StanzaError::service_unavailable());
        }
        let jid = account_jid(&username, domain)?;
        m.check_password(&password)?;
        let limited = m.cfg.registration_interval > 0;
        let reservation = match req.peer.map(|p| p.ip()).filter(|_| limited) {
            Some(ip) => match m.reserve(ip) {
                Ok(prev) => Some((ip, prev)),
                Err(()) => {
                    return Err(StanzaError::new(StanzaErrorCondition::ResourceConstraint)
                        .with_type(meerkat_stanza::ErrorType::Wait)
                        .with_text("too many registrations from this address; try again later"))
                }
            },
            None => None,
        };
        let result = create(ctx, m, &jid, &password).await;
        if result.is_err() {
            if let Some((ip, prev)) = reservation {
                m.release(ip, prev);
            }
        }
        result
    }
}

async fn create(ctx: &ServerContext, m: &Register, jid: &BareJid, password: &str) -> IqResult {
    let acc = account(jid).ok_or_else(StanzaError::internal)?;
    let creds = m.credentials(password).await?;
    match ctx.stores.auth.create_user(acc, &creds).await {
        Ok(()) => {
            tracing::info!(user = %jid, "account registered in-band");
            Ok(None)
        }
        Err(meerkat_storage::Error::AlreadyExists) => Err(StanzaError::new(StanzaErrorCondition::Conflict)),
        Err(e) => {
            tracing::error!(user = %jid, error = %e, "storage failure creating an account");
            Err(StanzaError::internal())
        }
    }
}

/// Registration management by an authenticated user (their account or the server).
struct Authenticated(Arc<Register>);

#[async_trait::async_trait]
impl IqHandler for Authenticated {
    async fn handle_iq(&self, ctx: &ServerContext, req: IqRequest<'_>) -> IqResult {
        let m = &self.0;
        if !req.payload.is("query", ns::REGISTER) {
            return Err(StanzaError::bad_request("expected <query/>"));
        }
        // Only the user's own session manages the account (the IQ is to the
        // account's bare JID or to the server).
        let user = req.from.to_bare();
        let to = req.to.to_bare();
        if req.session.is_none() || (to != user && to.node().is_some()) {
            return Err(StanzaError::forbidden());
        }
        let Some(acc) = account(&user) else { return Err(StanzaError::forbidden()) };
        if !req.is_set {
            return Ok(Some(
                Element::builder("query", ns::REGISTER)
                    .append(Element::new("registered", ns::REGISTER))
                    .append(field("username", Some(acc.user)))
                    .build(),
            ));
        }
        if req.payload.has_child("remove", ns::REGISTER) {
            return unregister(ctx, m, &user, acc).await;
        }
        let (username, Some(password)) = fields(req.payload) else {
            return Err(not_acceptable("a username and a password are required"));
        };
        if !m.cfg.allow_password_change {
            return Err(StanzaError::not_allowed().with_text("password changes are disabled"));
        }
        // §3.3: the username is the user's own.
        if let Some(u) = username {
            let named = account_jid(&u, user.domain().as_str())?;
            if named != user {
                return Err(StanzaError::not_allowed().with_text("a user can only change their own password"));
            }
        }
        m.check_password(&password)?;
        let creds = m.credentials(&password).await?;
        match ctx.stores.auth.set_credentials(acc, &creds).await {
            Ok(()) => {
                tracing::info!(user = %user, "password changed in-band");
                Ok(None)
            }
            Err(meerkat_storage::Error::NotFound) => Err(StanzaError::item_not_found()),
            Err(e) => {
                tracing::error!(user = %user, error = %e, "storage failure changing a password");
                Err(StanzaError::internal())
            }
        }
    }
}

/// §3.2: deletes the account and closes its sessions (after the result is sent:
/// the kick goes through the sessions' mailboxes, behind the reply).
async fn unregister(ctx: &ServerContext, m: &Register, user: &BareJid, acc: Account<'_>) -> IqResult {
    if !m.cfg.allow_unregister {
        return Err(StanzaError::not_allowed().with_text("account removal is disabled"));
    }
    for h in &ctx.hooks.account {
        h.before_remove(ctx, user).await;
    }
    match ctx.stores.auth.delete_user(acc).await {
        Ok(true) => {}
        Ok(false) => return Err(StanzaError::item_not_found()),
        Err(e) => {
            tracing::error!(user = %user, error = %e, "storage failure deleting an account");
            return Err(StanzaError::internal());
        }
    }
    tracing::info!(user = %user, "account removed in-band");
    ctx.router.send_all(user, &|| SessionMsg::Kick(StreamError::NotAuthorized, Some("account removed".to_string())));
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_prepared() {
        assert_eq!(account_jid("Alice", "localhost").map(|j| j.to_string()).ok().as_deref(), Some("alice@localhost"));
        assert!(account_jid("", "localhost").is_err());
        assert!(account_jid("a@b", "localhost").is_err());
        assert!(account_jid("a/b", "localhost").is_err());
        assert!(account_jid("a b", "localhost").is_err());
    }

    #[test]
    fn limiter_reserves_and_releases() {
        let r = Register::new(RegisterCfg { registration_interval: 60, ..RegisterCfg::default() }, 64);
        let ip: IpAddr = [192, 0, 2, 1].into();
        let prev = r.reserve(ip).expect("first registration allowed");
        assert!(r.reserve(ip).is_err());
        r.release(ip, prev);
        assert!(r.reserve(ip).is_ok());
        assert!(r.reserve([192, 0, 2, 2].into()).is_ok());
    }
}
