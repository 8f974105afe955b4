//! Stream features (RFC 6120 §4.3.2): what the server offers at each stage.

use meerkat_config::TlsMode;
use meerkat_sasl::{ChannelBinding, Mechanism};
use meerkat_stanza::ns;
use meerkat_xml::Element;

use crate::c2s::{C2s, Stage, TlsState};

/// The SASL mechanisms offered on this connection, strongest first. PLAIN only
/// over TLS (or on a listener explicitly without TLS, for loopback tests); -PLUS
/// only when the channel offers `tls-exporter` (TLS 1.3).
pub(crate) fn mechanisms(c: &C2s) -> Vec<Mechanism> {
    let exporter = matches!(c.info.channel_binding, ChannelBinding::TlsExporter(_));
    let allowed = c.ctx.config.auth.sasl_mechanisms.as_ref().map(|m| m.get_ref());
    Mechanism::all()
        .iter()
        .copied()
        .filter(|m| match m {
            Mechanism::Plain => c.confidential(),
            Mechanism::Scram { plus, .. } => !plus || exporter,
        })
        .filter(|m| allowed.is_none_or(|a| a.iter().any(|n| n == m.name())))
        .collect()
}

pub(crate) fn features(c: &C2s, stage: &Stage) -> Element {
    let mut f = Element::new("features", ns::STREAM);
    match stage {
        Stage::Anonymous => {
            let secure = c.info.tls == TlsState::Secure;
            if !secure && c.listener.starttls_available {
                let mut st = Element::new("starttls", ns::TLS);
                if c.listener.tls_mode == TlsMode::StarttlsRequired {
                    st.append_child(Element::new("required", ns::TLS));
                }
                f.append_child(st);
            }
            if c.tls_satisfied() {
                let mut m = Element::new("mechanisms", ns::SASL);
                for mech in mechanisms(c) {
                    m.append_child(Element::builder("mechanism", ns::SASL).text(mech.name()).build());
                }
                f.append_child(m);
                if matches!(c.info.channel_binding, ChannelBinding::TlsExporter(_)) {
                    // XEP-0440: the channel-binding types we support.
                    f.append_child(
                        Element::builder("sasl-channel-binding", ns::SASL_CB)
                            .append(
                                Element::builder("channel-binding", ns::SASL_CB).attr("type", "tls-exporter").build(),
                            )
                            .build(),
                    );
                }
                if c.confidential() {
                    for extra in &c.ctx.hooks.stream_features_preauth {
                        f.append_child(extra.clone());
                    }
                }
            }
        }
        Stage::Authenticated(_) => {
            f.append_child(Element::new("bind", ns::BIND));
            // RFC 6121 §1.4 / RFC 3921 §3: legacy session establishment, optional.
            f.append_child(
                Element::builder("session", ns::SESSION).append(Element::new("optional", ns::SESSION)).build(),
            );
            if c.ctx.config.modules.mod_roster.as_ref().is_none_or(|r| r.versioning) {
                f.append_child(Element::new("ver", ns::ROSTER_VER));
            }
            if c.ctx.config.modules.mod_stream_management.is_some() {
                f.append_child(Element::new("sm", ns::SM));
            }
            for extra in &c.ctx.hooks.stream_features_bound {
                f.append_child(extra.clone());
            }
        }
    }
    f
}
