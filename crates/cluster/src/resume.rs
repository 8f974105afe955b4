//! Stream resumption (XEP-0198) across nodes. A node that does not know a
//! resumption id asks every node on `<cluster>.resume`; the node that holds the
//! session hands it over ([`meerkat_core::resumption::SessionMover`]) and
//! answers with it; the others stay silent, so an id no node knows fails after
//! [`ASK_TIMEOUT`].

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use meerkat_core::resumption::{Found, MovedSession, RemoteResumptions};
use meerkat_core::ServerContext;
use meerkat_stanza::{BareJid, FullJid};
use meerkat_xml::{Element, Limits};

/// The namespace of resumption requests and answers (Meerkat's own).
const NS: &str = "urn:meerkat:cluster:resume";

/// How long a resume waits for the node that holds the session.
const ASK_TIMEOUT: Duration = Duration::from_millis(1500);

fn limits() -> Limits {
    // A session's unacknowledged stanzas travel in one answer.
    Limits { max_stanza_bytes: 16 << 20, max_depth: 64, ..Limits::default() }
}

/// Asks the other nodes over NATS.
pub(crate) struct NatsResumptions {
    pub client: async_nats::Client,
    pub subject: String,
}

#[async_trait::async_trait]
impl RemoteResumptions for NatsResumptions {
    async fn find(&self, id: &str, user: &BareJid) -> Found {
        let ask = Element::builder("find", NS).attr("id", id).attr("user", user.as_str()).build();
        let req = self.client.request(self.subject.clone(), ask.to_string_with_ns().into());
        match tokio::time::timeout(ASK_TIMEOUT, req).await {
            Ok(Ok(msg)) => {
                let Ok(el) = std::str::from_utf8(&msg.payload)
                    .map_err(|_| ())
                    .and_then(|s| meerkat_xml::parse_element(s, &limits()).map_err(|_| ()))
                else {
                    tracing::warn!("a malformed resumption answer from another node");
                    return Found::Unknown;
                };
                decode(&el).unwrap_or(Found::Unknown)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "asking the cluster for a resumption id");
                Found::Unknown
            }
            Err(_) => Found::Unknown,
        }
    }
}

/// Answers the other nodes' requests for sessions held here.
pub(crate) async fn serve(ctx: Arc<ServerContext>, client: async_nats::Client, mut sub: async_nats::Subscriber) {
    while let Some(msg) = sub.next().await {
        let Some(reply) = msg.reply.clone() else { continue };
        let (ctx, client) = (ctx.clone(), client.clone());
        tokio::spawn(async move {
            let Ok(el) = std::str::from_utf8(&msg.payload)
                .map_err(|_| ())
                .and_then(|s| meerkat_xml::parse_element(s, &limits()).map_err(|_| ()))
            else {
                return;
            };
            let (Some(id), Some(user)) = (el.attr("id"), el.attr("user").and_then(|u| BareJid::new(u).ok())) else {
                return;
            };
            let Some(mover) = ctx.resumptions.mover() else { return };
            let answer = match mover.take(&ctx, id, &user).await {
                Found::Moved(m) => encode_moved(&m),
                Found::Stale(h) => Element::builder("stale", NS).attr("h", h.to_string()).build(),
                // Not here: another node answers, or nobody.
                Found::Unknown => return,
            };
            if let Err(e) = client.publish(reply, answer.to_string_with_ns().into()).await {
                tracing::error!(error = %e, "answering a resumption request: the session is lost");
            }
        });
    }
}

/// A moved session on the wire.
pub(crate) fn encode_moved(m: &MovedSession) -> Element {
    let mut el = Element::builder("moved", NS)
        .attr("jid", m.jid.as_str())
        .attr("in", m.inbound.to_string())
        .attr("out", m.outbound.to_string())
        .attr("priority", m.priority.to_string())
        .build();
    for (name, list) in [("unacked", &m.unacked), ("pending", &m.pending)] {
        el.append_child(Element::builder(name, NS).append_all(list.iter().cloned()).build());
    }
    if let Some(p) = &m.presence {
        el.append_child(Element::builder("presence", NS).append(p.clone()).build());
    }
    let mut directed = Element::new("directed", NS);
    for j in &m.directed {
        directed.append_child(Element::builder("jid", NS).text(j.as_str()).build());
    }
    el.append_child(directed);
    el.append_child(Element::builder("state", NS).append_all(m.state.iter().cloned()).build());
    el
}

/// An answer from the wire.
pub(crate) fn decode(el: &Element) -> Option<Found> {
    if el.is("stale", NS) {
        return Some(Found::Stale(el.attr("h")?.parse().ok()?));
    }
    if !el.is("moved", NS) {
        return None;
    }
    let list = |name: &str| -> Vec<Element> {
        el.get_child(name, NS).map(|l| l.children().cloned().collect()).unwrap_or_default()
    };
    Some(Found::Moved(Box::new(MovedSession {
        jid: FullJid::new(el.attr("jid")?).ok()?,
        inbound: el.attr("in")?.parse().ok()?,
        outbound: el.attr("out")?.parse().ok()?,
        unacked: list("unacked"),
        pending: list("pending"),
        presence: el.get_child("presence", NS).and_then(|p| p.children().next().cloned()),
        priority: el.attr("priority")?.parse().ok()?,
        directed: el.get_child("directed", NS).map(|d| d.children().map(Element::text).collect()).unwrap_or_default(),
        state: list("state"),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moved_session_round_trips() {
        let msg = |b: &str| {
            meerkat_xml::parse_element(
                &format!("<message xmlns='jabber:client' to='a@b/c' id='{b}'><body>{b} &amp; more</body></message>"),
                &Limits::default(),
            )
            .unwrap()
        };
        let m = MovedSession {
            jid: FullJid::new("a@b/c").unwrap(),
            inbound: 7,
            outbound: u32::MAX,
            unacked: vec![msg("one"), msg("two")],
            pending: vec![msg("three")],
            presence: Some(
                meerkat_xml::parse_element(
                    "<presence xmlns='jabber:client'><show>away</show></presence>",
                    &Limits::default(),
                )
                .unwrap(),
            ),
            priority: -3,
            directed: vec!["room@conference.b/nick".into()],
            state: vec![Element::new("enable", "urn:xmpp:carbons:2")],
        };
        let wire = encode_moved(&m).to_string_with_ns();
        let back = meerkat_xml::parse_element(&wire, &limits()).unwrap();
        match decode(&back) {
            Some(Found::Moved(got)) => assert_eq!(*got, m),
            other => panic!("{other:?}"),
        }
        let stale = Element::builder("stale", NS).attr("h", "12").build();
        assert!(matches!(decode(&stale), Some(Found::Stale(12))));
        assert!(decode(&Element::new("other", NS)).is_none());
    }
}
