//! Account administration shared by the CLI (`meerkat user …`) and tests: works
//! directly on the configured storage, whether or not a server is running.

use anyhow::{anyhow, bail, Context as _};
use meerkat_config::Config;
use meerkat_sasl::StoredCredentials;
use meerkat_stanza::BareJid;
use meerkat_storage::{Account, Error, Stores};

/// Parses a user's bare JID and checks its domain is served.
pub fn parse_user(cfg: &Config, jid: &str) -> anyhow::Result<BareJid> {
    let bare = BareJid::new(jid).map_err(|e| anyhow!("`{jid}` is not a valid JID: {e}"))?;
    if bare.node().is_none() {
        bail!("`{jid}` has no user part (expected user@domain)");
    }
    if !cfg.hosts().iter().any(|h| h == bare.domain().as_str()) {
        bail!("domain `{}` is not served here (general.hosts = {:?})", bare.domain(), cfg.hosts());
    }
    Ok(bare)
}

fn acc(bare: &BareJid) -> Account<'_> {
    meerkat_core::account(bare).expect("parse_user checked the localpart")
}

async fn derive(password: &str, iterations: u32) -> anyhow::Result<StoredCredentials> {
    if password.is_empty() {
        bail!("the password must not be empty");
    }
    let p = password.to_string();
    tokio::task::spawn_blocking(move || StoredCredentials::from_password(&p, iterations))
        .await
        .context("deriving SCRAM keys")
}

/// Creates an account.
pub async fn add(cfg: &Config, stores: &Stores, jid: &str, password: &str) -> anyhow::Result<()> {
    let bare = parse_user(cfg, jid)?;
    let creds = derive(password, cfg.auth.scram_iterations).await?;
    match stores.auth.create_user(acc(&bare), &creds).await {
        Ok(()) => Ok(()),
        Err(Error::AlreadyExists) => bail!("user {bare} already exists"),
        Err(e) => Err(e.into()),
    }
}

/// Deletes an account and all its data.
pub async fn delete(cfg: &Config, stores: &Stores, jid: &str) -> anyhow::Result<()> {
    let bare = parse_user(cfg, jid)?;
    if !stores.auth.delete_user(acc(&bare)).await? {
        bail!("user {bare} does not exist");
    }
    Ok(())
}

/// Sets a new password.
pub async fn passwd(cfg: &Config, stores: &Stores, jid: &str, password: &str) -> anyhow::Result<()> {
    let bare = parse_user(cfg, jid)?;
    let creds = derive(password, cfg.auth.scram_iterations).await?;
    match stores.auth.set_credentials(acc(&bare), &creds).await {
        Ok(()) => Ok(()),
        Err(Error::NotFound) => bail!("user {bare} does not exist"),
        Err(e) => Err(e.into()),
    }
}

/// Lists the accounts of a domain.
pub async fn list(cfg: &Config, stores: &Stores, domain: &str) -> anyhow::Result<Vec<String>> {
    if !cfg.hosts().iter().any(|h| h == domain) {
        bail!("domain `{domain}` is not served here (general.hosts = {:?})", cfg.hosts());
    }
    Ok(stores.auth.list_users(domain).await?.into_iter().map(|u| format!("{u}@{domain}")).collect())
}

/// Checks a password.
pub async fn check(cfg: &Config, stores: &Stores, jid: &str, password: &str) -> anyhow::Result<()> {
    let bare = parse_user(cfg, jid)?;
    let Some(creds) = stores.auth.get_credentials(acc(&bare)).await? else {
        bail!("user {bare} does not exist");
    };
    let p = password.to_string();
    let ok = tokio::task::spawn_blocking(move || creds.verify_password(&p)).await?;
    if !ok {
        bail!("wrong password for {bare}");
    }
    Ok(())
}

/// Creates `prefix1..prefixN@domain` with one shared password (for load tests);
/// returns how many were new.
pub async fn bulk_add(
    cfg: &Config,
    stores: &Stores,
    prefix: &str,
    count: u32,
    domain: &str,
    password: &str,
) -> anyhow::Result<u32> {
    let creds = derive(password, cfg.auth.scram_iterations).await?;
    let mut created = 0;
    for i in 1..=count {
        let bare = parse_user(cfg, &format!("{prefix}{i}@{domain}"))?;
        match stores.auth.create_user(acc(&bare), &creds).await {
            Ok(()) => created += 1,
            Err(Error::AlreadyExists) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(created)
}
