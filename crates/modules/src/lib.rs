//! Meerkat's feature modules. Each folder/file is one feature, named for the feature
//! (not the XEP number), and registers its hooks in [`start`]. A new XEP means one
//! new file here plus one line in [`start`].
#![warn(missing_docs)]

use std::sync::Arc;

use meerkat_config::Config;
use meerkat_core::{HookRegistry, Module};

pub mod blocking;
pub mod carbons;
pub mod csi;
pub mod disco;
pub mod last;
pub mod mam;
pub mod muc;
pub mod muc_light;
pub mod offline;
pub mod ping;
pub mod private;
pub mod register;
mod rooms;
pub mod roster;
pub mod stanza_id;
pub mod time;
pub mod vcard;
pub mod version;

/// Starts every module enabled in `cfg` and registers its hooks.
/// The roster is always on (RFC 6121 requires it); `[modules.mod_roster]` only sets options.
pub fn start(cfg: &Config, reg: &mut HookRegistry) {
    fn add(m: Arc<impl Module>, reg: &mut HookRegistry) {
        reg.module(m.name());
        m.register(reg);
    }
    let m = &cfg.modules;
    add(Arc::new(roster::Roster::new(m.mod_roster.clone().unwrap_or_default())), reg);
    if let Some(c) = &m.mod_disco {
        add(Arc::new(disco::Disco::new(c.clone())), reg);
    }
    if m.mod_ping.is_some() {
        add(Arc::new(ping::Ping), reg);
    }
    if let Some(c) = &m.mod_version {
        add(Arc::new(version::Version::new(c.clone())), reg);
    }
    if m.mod_time.is_some() {
        add(Arc::new(time::Time), reg);
    }
    if m.mod_last.is_some() {
        add(Arc::new(last::Last), reg);
    }
    if let Some(c) = &m.mod_vcard {
        add(Arc::new(vcard::Vcard::new(c.clone())), reg);
    }
    if let Some(c) = &m.mod_private {
        add(Arc::new(private::Private::new(c.clone())), reg);
    }
    if m.mod_blocking.is_some() {
        add(Arc::new(blocking::Blocking), reg);
    }
    if let Some(c) = &m.mod_offline {
        add(Arc::new(offline::Offline::new(c.clone())), reg);
    }
    if let Some(c) = &m.mod_register {
        add(Arc::new(register::Register::new(c.clone(), cfg.auth.scram_iterations)), reg);
    }
    // A cluster node's archive ids carry a node part from its name, so two
    // nodes' ids differ even when made in the same microsecond.
    if let Some(c) = &cfg.cluster {
        stanza_id::set_node_part(meerkat_core::context::node_tag(c.node_name.get_ref()) as u8);
    }
    if m.mod_stanza_id.is_some() {
        add(Arc::new(stanza_id::StanzaId), reg);
    }
    if m.mod_carboncopy.is_some() {
        add(Arc::new(carbons::Carbons), reg);
    }
    let mam = m.mod_mam.as_ref().map(|c| Arc::new(mam::Mam::new(c.clone())));
    if let Some(mam) = &mam {
        add(mam.clone(), reg);
    }
    if let Some(c) = &m.mod_muc {
        muc::Muc::start(c.clone(), mam.clone(), cfg, reg);
    }
    if let Some(c) = &m.mod_muc_light {
        muc_light::MucLight::start(c.clone(), mam.clone(), cfg, reg);
    }
    if let Some(c) = &m.mod_csi {
        add(Arc::new(csi::Csi::new(c.clone())), reg);
    }
}
