//! SASL negotiation (RFC 6120 §6) over the `meerkat-sasl` state machines: PLAIN and
//! SCRAM-SHA-1/256/512 with their -PLUS variants.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use meerkat_core::account;
use meerkat_sasl::{AuthRequest, Failure, Mechanism, ScramServer};
use meerkat_stanza::{ns, BareJid};
use meerkat_xml::Element;

use crate::c2s::{C2s, Output, Stage, State};

/// An exchange in progress.
pub(crate) struct SaslExchange {
    mech: Mechanism,
    scram: Option<ScramServer>,
    /// The client's first message was received and answered.
    first_done: bool,
    /// The account being authenticated (after client-first).
    user: Option<BareJid>,
}

/// Decodes a `<auth/>`/`<response/>` payload: empty = no data, `=` = empty data
/// (RFC 6120 §6.4.2).
fn payload(el: &Element) -> Result<Option<Vec<u8>>, Failure> {
    let t = el.text();
    let t = t.trim();
    if t.is_empty() {
        Ok(None)
    } else if t == "=" {
        Ok(Some(Vec::new()))
    } else {
        B64.decode(t).map(Some).map_err(|_| Failure::IncorrectEncoding)
    }
}

impl C2s {
    /// `<auth mechanism='…'>`.
    pub(crate) async fn sasl_start(&mut self, el: Element) {
        let offered = crate::features::mechanisms(self);
        let Some(mech) = el.attr("mechanism").and_then(Mechanism::from_name).filter(|m| offered.contains(m)) else {
            self.sasl_failure(Failure::InvalidMechanism);
            return self.after_sasl_failure().await;
        };
        let scram = match mech {
            Mechanism::Plain => None,
            Mechanism::Scram { alg, plus } => {
                let advertised = offered.iter().any(|m| m.is_plus());
                Some(ScramServer::new(alg, plus, advertised, self.info.channel_binding.clone()))
            }
        };
        let ex = Box::new(SaslExchange { mech, scram, first_done: false, user: None });
        match payload(&el) {
            Err(f) => {
                self.sasl_failure(f);
                self.after_sasl_failure().await
            }
            Ok(None) => {
                // No initial response: an empty challenge asks for it.
                self.out.push(Output::Element(Element::new("challenge", ns::SASL)));
                self.state = State::Sasl(ex);
            }
            Ok(Some(data)) => self.sasl_data(ex, data).await,
        }
    }

    /// `<response/>` or `<abort/>` during an exchange.
    pub(crate) async fn sasl_step(&mut self, ex: Box<SaslExchange>, el: Element) {
        if el.ns() != ns::SASL {
            return self.stream_error(meerkat_stanza::StreamError::NotAuthorized, None).await;
        }
        match el.name() {
            "abort" => {
                self.sasl_failure(Failure::Aborted);
                self.after_sasl_failure().await
            }
            "response" => match payload(&el) {
                Ok(data) => self.sasl_data(ex, data.unwrap_or_default()).await,
                Err(f) => {
                    self.sasl_failure(f);
                    self.after_sasl_failure().await
                }
            },
            _ => self.stream_error(meerkat_stanza::StreamError::UnsupportedStanzaType, None).await,
        }
    }

    /// Feeds client data to the mechanism.
    async fn sasl_data(&mut self, mut ex: Box<SaslExchange>, data: Vec<u8>) {
        let result = match ex.mech {
            Mechanism::Plain => self.plain(&data).await.map(|user| (user, None)),
            Mechanism::Scram { alg, .. } => {
                let Some(scram) = ex.scram.as_mut() else { unreachable!("SCRAM exchanges hold a SCRAM server") };
                if !ex.first_done {
                    match scram.handle_client_first(&data) {
                        Err(f) => Err(f),
                        Ok(req) => match self.lookup(&req).await {
                            Err(f) => Err(f),
                            Ok((user, creds)) => match scram.server_first(creds.as_ref().map(|c| c.keys(alg))) {
                                Ok(first) => {
                                    ex.first_done = true;
                                    ex.user = Some(user);
                                    let mut ch = Element::new("challenge", ns::SASL);
                                    ch.append_text(B64.encode(first));
                                    self.out.push(Output::Element(ch));
                                    self.state = State::Sasl(ex);
                                    return;
                                }
                                Err(f) => Err(f),
                            },
                        },
                    }
                } else {
                    match (scram.handle_client_final(&data), ex.user.take()) {
                        (Ok(fin), Some(user)) => Ok((user, Some(fin))),
                        (Ok(_), None) => Err(Failure::NotAuthorized),
                        (Err(f), _) => Err(f),
                    }
                }
            }
        };
        match result {
            Ok((user, additional)) => {
                tracing::debug!(user = %user, mechanism = ex.mech.name(), "authenticated");
                let mut s = Element::new("success", ns::SASL);
                if let Some(a) = additional {
                    s.append_text(B64.encode(a));
                }
                self.out.push(Output::Element(s));
                self.out.push(Output::ResetDecoder);
                self.header_sent = false;
                self.state = State::WaitHeader(Stage::Authenticated(user));
            }
            Err(f) => {
                tracing::debug!(peer = %self.info.peer, mechanism = ex.mech.name(), failure = f.condition(), "authentication failed");
                self.sasl_failure(f);
                self.after_sasl_failure().await
            }
        }
    }

    /// Resolves the authentication identity to an account and loads its
    /// credentials. The authzid, if any, must name the same account (RFC 6120 §6.3.8).
    async fn lookup(&self, req: &AuthRequest) -> Result<(BareJid, Option<meerkat_sasl::StoredCredentials>), Failure> {
        let user = BareJid::new(&format!("{}@{}", req.authcid, self.domain)).map_err(|_| Failure::NotAuthorized)?;
        if user.node().is_none() {
            return Err(Failure::NotAuthorized);
        }
        if let Some(z) = req.authzid.as_deref().filter(|z| !z.is_empty()) {
            match BareJid::new(z) {
                Ok(z) if z == user => {}
                _ => return Err(Failure::InvalidAuthzid),
            }
        }
        let acc = account(&user).ok_or(Failure::NotAuthorized)?;
        match self.ctx.stores.auth.get_credentials(acc).await {
            Ok(creds) => Ok((user, creds)),
            Err(e) => {
                tracing::error!(user = %user, error = %e, "storage failure loading credentials");
                Err(Failure::TemporaryAuthFailure)
            }
        }
    }

    /// SASL PLAIN: checks the password against the stored SCRAM keys (PBKDF2 off the
    /// runtime threads).
    async fn plain(&self, data: &[u8]) -> Result<BareJid, Failure> {
        let (req, password) = meerkat_sasl::parse_plain(data)?;
        let (user, creds) = self.lookup(&req).await?;
        let Some(creds) = creds else { return Err(Failure::NotAuthorized) };
        let ok = tokio::task::spawn_blocking(move || creds.verify_password(&password))
            .await
            .map_err(|_| Failure::TemporaryAuthFailure)?;
        if ok {
            Ok(user)
        } else {
            Err(Failure::NotAuthorized)
        }
    }
}
