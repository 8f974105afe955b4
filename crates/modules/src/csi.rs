//! Client state indication (XEP-0352 v1.0.0): a client that says it is
//! `<inactive/>` (a phone in a pocket) gets presence updates held back — only the
//! latest per contact is kept, up to `buffer_max` — while messages and everything
//! else go out at once, preceded by what was held so order is kept. `<active/>`
//! (or a full buffer) sends what was held.

use std::sync::Arc;

use meerkat_config::CsiCfg;
use meerkat_core::hooks::{Flow, SessionHooks};
use meerkat_core::{HookRegistry, Module, ServerContext, SessionState};
use meerkat_stanza::{ns, Stanza, StanzaKind};
use meerkat_xml::Element;

const EXT: &str = "mod_csi";

/// The CSI module.
pub struct Csi {
    cfg: CsiCfg,
}

impl Csi {
    /// With options from `[modules.mod_csi]`.
    pub fn new(cfg: CsiCfg) -> Self {
        Csi { cfg }
    }
}

/// Presence held for an inactive client: (from, element), latest per sender.
#[derive(Default)]
struct Held(Vec<(String, Element)>);

impl Module for Csi {
    fn name(&self) -> &'static str {
        "mod_csi"
    }

    fn register(self: Arc<Self>, reg: &mut HookRegistry) {
        reg.stream_feature_bound(Element::new("csi", ns::CSI));
        reg.on_session(90, self);
    }
}

fn flush(s: &mut SessionState) {
    if let Some(held) = s.ext_mut::<Held>(EXT) {
        let items = std::mem::take(&mut held.0);
        for (_, el) in items {
            s.send(el);
        }
    }
}

/// Presence that may wait: availability updates from contacts (not subscription
/// requests, errors or probes).
fn can_wait(st: &Stanza) -> bool {
    st.kind == StanzaKind::Presence && matches!(st.type_attr(), None | Some("unavailable"))
}

#[async_trait::async_trait]
impl SessionHooks for Csi {
    fn on_nonza(&self, _ctx: &ServerContext, s: &mut SessionState, el: &Element) -> bool {
        if el.ns() != ns::CSI {
            return false;
        }
        match el.name() {
            "inactive" => {
                s.ext.get_or_insert_with(EXT, || Box::new(Held::default()));
                true
            }
            "active" => {
                flush(s);
                s.ext.remove(EXT);
                true
            }
            _ => false,
        }
    }

    /// An inactive session moves as `<inactive/>` holding what it held back.
    fn export_state(&self, s: &SessionState) -> Option<Element> {
        let held = s.ext::<Held>(EXT)?;
        Some(Element::builder("inactive", ns::CSI).append_all(held.0.iter().map(|(_, el)| el.clone())).build())
    }

    fn import_state(&self, s: &mut SessionState, el: &Element) -> bool {
        if !el.is("inactive", ns::CSI) {
            return false;
        }
        let held = el.children().map(|p| (p.attr("from").unwrap_or("").to_owned(), p.clone())).collect();
        s.ext.insert(EXT, Box::new(Held(held)));
        true
    }

    fn on_user_receive(&self, _ctx: &ServerContext, s: &mut SessionState, st: &mut Stanza) -> Flow {
        let buffer_max = self.cfg.buffer_max;
        let Some(held) = s.ext_mut::<Held>(EXT) else { return Flow::Continue };
        if can_wait(st) {
            let from = st.el.attr("from").unwrap_or("").to_string();
            held.0.retain(|(f, _)| f != &from);
            held.0.push((from, st.el.clone()));
            if held.0.len() >= buffer_max {
                flush(s);
            }
            return Flow::Drop;
        }
        // Anything else is urgent enough: send what was held first.
        flush(s);
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meerkat_core::SessionId;

    fn session() -> SessionState {
        SessionState::new(SessionId(1), "a@b/c".parse().unwrap(), "127.0.0.1:1".parse().unwrap())
    }

    /// An inactive session moving to another node stays inactive there, with
    /// the presence it held back; an active one moves nothing.
    #[test]
    fn client_state_moves_with_the_session() {
        let csi = Csi::new(CsiCfg::default());
        let mut s = session();
        assert!(csi.export_state(&s).is_none(), "an active session has no state to move");
        s.ext.insert(EXT, Box::new(Held::default()));
        let p = Element::builder("presence", ns::CLIENT).attr("from", "d@b/e").build();
        s.ext_mut::<Held>(EXT).unwrap().0.push(("d@b/e".into(), p.clone()));
        let state = csi.export_state(&s).expect("inactive");
        let mut moved = session();
        assert!(!csi.import_state(&mut moved, &Element::new("enable", ns::CARBONS)), "not its state");
        assert!(csi.import_state(&mut moved, &state));
        let held = moved.ext::<Held>(EXT).expect("inactive after the move");
        assert_eq!(held.0, vec![("d@b/e".to_owned(), p)]);
        // Becoming active sends what was held.
        flush(&mut moved);
        assert_eq!(moved.outbox.len(), 1);
    }
}
