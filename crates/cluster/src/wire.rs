//! The messages nodes exchange, in a compact binary form (stanzas inside are
//! XML text). Every message starts with the sender's name and incarnation (a
//! random number drawn at start, so a restarted node is told from its former
//! self).
//!
//! Integers are little-endian; strings and byte strings carry a `u32` length.
//! Public for tools and tests that speak to a cluster; the fields follow the
//! variant docs.
#![allow(missing_docs)]

use bytes::Bytes;
use meerkat_xml::Element;

/// One session as a snapshot lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapEntry {
    /// Full JID.
    pub jid: String,
    /// Session id.
    pub id: u64,
    /// Bound at (µs since the epoch).
    pub since: u64,
    /// Priority.
    pub priority: i8,
    /// Available presence as XML, if available.
    pub presence: Option<String>,
}

/// Who a forwarded session message is for.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// One session.
    Session { jid: String, id: u64 },
    /// Every session of a bare JID.
    User { bare: String },
}

/// A forwarded session message.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionMsgWire {
    /// A module event as XML.
    Event(String),
    /// Replaced by a newer session.
    Replaced,
    /// Close with this stream error condition and text.
    Kick(String, Option<String>),
    /// Stanzas for the client, in order, in one mailbox slot (XML each).
    Stanzas(Vec<String>),
}

/// What travels inside a `Data` message.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// A stanza for a session.
    Stanza { to: String, xml: String, fallback: bool, hops: u8 },
    /// A session message.
    Msg { to: Target, msg: SessionMsgWire },
    /// A stanza for a service entity (a MUC room) run by the receiving node.
    Service { xml: String, hops: u8 },
}

/// A cluster message.
#[derive(Debug, Clone, PartialEq)]
pub enum Msg {
    /// "I am alive; my directory is at `seq`" (also the first message of a node).
    Heartbeat { seq: u64 },
    /// A session was bound.
    Added { seq: u64, jid: String, id: u64, since: u64 },
    /// A session ended.
    Removed { seq: u64, jid: String, id: u64 },
    /// A session's presence changed.
    Presence { seq: u64, jid: String, id: u64, priority: i8, presence: Option<String> },
    /// The node leaves the cluster (orderly stop): forget its sessions now.
    Bye,
    /// "Send me your sessions" (request number `req`).
    SyncRequest { req: u64 },
    /// Part of the answer to `SyncRequest { req }`: the sender's sessions at `seq`.
    Snapshot { req: u64, seq: u64, last: bool, entries: Vec<SnapEntry> },
    /// Forwarded traffic for incarnation `to_inc` of the receiver, numbered
    /// from 1 within `epoch` (the sender starts a new epoch whenever it starts
    /// over with that receiver). `ack`, when present, acknowledges the traffic
    /// the other way as [`Msg::Ack`] would (`(epoch, seq)`): under two-way
    /// traffic acknowledgements cost no message of their own.
    Data { to_inc: u64, epoch: u64, seq: u64, ack: Option<(u64, u64)>, payload: Payload },
    /// Everything up to `seq` of `epoch` sent to incarnation `to_inc` arrived.
    Ack { to_inc: u64, epoch: u64, seq: u64 },
    /// The sender took singleton `key` over from owner `from` (`node inc`).
    Took { key: String, from: String },
}

/// A message with its sender.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The sending node.
    pub from: String,
    /// Its incarnation.
    pub inc: u64,
    /// The message.
    pub msg: Msg,
}

struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    /// An element serialised in place as a length-prefixed string (no
    /// intermediate string).
    fn xml(&mut self, el: &Element) {
        let at = self.0.len();
        self.0.extend_from_slice(&[0; 4]);
        el.write_to(&mut self.0, "");
        let n = (self.0.len() - at - 4) as u32;
        self.0[at..at + 4].copy_from_slice(&n.to_le_bytes());
    }
    fn ack(&mut self, ack: Option<(u64, u64)>) {
        match ack {
            Some((epoch, seq)) => {
                self.u8(1);
                self.u64(epoch);
                self.u64(seq);
            }
            None => self.u8(0),
        }
    }
    fn opt(&mut self, s: Option<&str>) {
        match s {
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
            None => self.u8(0),
        }
    }
}

struct R<'a>(&'a [u8]);

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<String> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
    fn ack(&mut self) -> Option<Option<(u64, u64)>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some((self.u64()?, self.u64()?))),
            _ => None,
        }
    }
    fn opt(&mut self) -> Option<Option<String>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.str()?)),
            _ => None,
        }
    }
}

/// The tag that marks a batch: several envelopes in one NATS message.
const BATCH: u8 = 11;

/// Encodes several encoded envelopes of one sender as one NATS message: the
/// sender's name and incarnation, tag 11, the count, then each envelope with a
/// `u32` length. Under load a node sends what it queued for one destination in
/// one message: one publish, one delivery and one wake-up of the receiver for
/// many stanzas.
pub fn encode_batch(from: &str, inc: u64, items: &[Bytes]) -> Bytes {
    let size: usize = items.iter().map(|b| b.len() + 4).sum();
    let mut w = W(Vec::with_capacity(21 + from.len() + size));
    w.str(from);
    w.u64(inc);
    w.u8(BATCH);
    w.u64(items.len() as u64);
    for b in items {
        w.0.extend_from_slice(&(b.len() as u32).to_le_bytes());
        w.0.extend_from_slice(b);
    }
    w.0.into()
}

/// The envelopes of a well-formed batch, in order; `None` when `b` is not a
/// batch or is a malformed one (which then fails to decode as an envelope).
pub fn split_batch(b: &[u8]) -> Option<Vec<&[u8]>> {
    let mut r = R(b);
    let n = u32::from_le_bytes(r.take(4)?.try_into().ok()?) as usize;
    r.take(n)?;
    r.u64()?;
    if r.u8()? != BATCH {
        return None;
    }
    let count = r.u64()?;
    let mut items = Vec::with_capacity(count.min(4096) as usize);
    for _ in 0..count {
        let n = u32::from_le_bytes(r.take(4)?.try_into().ok()?) as usize;
        items.push(r.take(n)?);
    }
    r.0.is_empty().then_some(items)
}

impl Envelope {
    /// Encodes a `Data` message carrying a stanza, serialising the element
    /// straight into the message (the hot path of cross-node delivery); decodes
    /// as `Msg::Data { payload: Payload::Stanza { .. } }`.
    #[allow(clippy::too_many_arguments)]
    pub fn encode_stanza(
        from: &str,
        inc: u64,
        to_inc: u64,
        epoch: u64,
        seq: u64,
        ack: Option<(u64, u64)>,
        to: &str,
        stanza: &Element,
        fallback: bool,
        hops: u8,
    ) -> Bytes {
        let mut w = W(Vec::with_capacity(128 + from.len() + to.len()));
        w.str(from);
        w.u64(inc);
        w.u8(8);
        w.u64(to_inc);
        w.u64(epoch);
        w.u64(seq);
        w.ack(ack);
        w.u8(1);
        w.str(to);
        w.xml(stanza);
        w.u8(u8::from(fallback));
        w.u8(hops);
        w.0.into()
    }

    /// Encodes the envelope.
    pub fn encode(&self) -> Bytes {
        let mut w = W(Vec::with_capacity(64));
        w.str(&self.from);
        w.u64(self.inc);
        match &self.msg {
            Msg::Heartbeat { seq } => {
                w.u8(1);
                w.u64(*seq);
            }
            Msg::Added { seq, jid, id, since } => {
                w.u8(2);
                w.u64(*seq);
                w.str(jid);
                w.u64(*id);
                w.u64(*since);
            }
            Msg::Removed { seq, jid, id } => {
                w.u8(3);
                w.u64(*seq);
                w.str(jid);
                w.u64(*id);
            }
            Msg::Presence { seq, jid, id, priority, presence } => {
                w.u8(4);
                w.u64(*seq);
                w.str(jid);
                w.u64(*id);
                w.u8(*priority as u8);
                w.opt(presence.as_deref());
            }
            Msg::Bye => w.u8(5),
            Msg::SyncRequest { req } => {
                w.u8(6);
                w.u64(*req);
            }
            Msg::Snapshot { req, seq, last, entries } => {
                w.u8(7);
                w.u64(*req);
                w.u64(*seq);
                w.u8(u8::from(*last));
                w.u64(entries.len() as u64);
                for e in entries {
                    w.str(&e.jid);
                    w.u64(e.id);
                    w.u64(e.since);
                    w.u8(e.priority as u8);
                    w.opt(e.presence.as_deref());
                }
            }
            Msg::Data { to_inc, epoch, seq, ack, payload } => {
                w.u8(8);
                w.u64(*to_inc);
                w.u64(*epoch);
                w.u64(*seq);
                w.ack(*ack);
                match payload {
                    Payload::Stanza { to, xml, fallback, hops } => {
                        w.u8(1);
                        w.str(to);
                        w.str(xml);
                        w.u8(u8::from(*fallback));
                        w.u8(*hops);
                    }
                    Payload::Service { xml, hops } => {
                        w.u8(3);
                        w.str(xml);
                        w.u8(*hops);
                    }
                    Payload::Msg { to, msg } => {
                        w.u8(2);
                        match to {
                            Target::Session { jid, id } => {
                                w.u8(1);
                                w.str(jid);
                                w.u64(*id);
                            }
                            Target::User { bare } => {
                                w.u8(2);
                                w.str(bare);
                            }
                        }
                        match msg {
                            SessionMsgWire::Event(xml) => {
                                w.u8(1);
                                w.str(xml);
                            }
                            SessionMsgWire::Replaced => w.u8(2),
                            SessionMsgWire::Kick(cond, text) => {
                                w.u8(3);
                                w.str(cond);
                                w.opt(text.as_deref());
                            }
                            SessionMsgWire::Stanzas(xmls) => {
                                w.u8(4);
                                w.u64(xmls.len() as u64);
                                for x in xmls {
                                    w.str(x);
                                }
                            }
                        }
                    }
                }
            }
            Msg::Ack { to_inc, epoch, seq } => {
                w.u8(9);
                w.u64(*to_inc);
                w.u64(*epoch);
                w.u64(*seq);
            }
            Msg::Took { key, from } => {
                w.u8(10);
                w.str(key);
                w.str(from);
            }
        }
        w.0.into()
    }

    /// Decodes an envelope; `None` if it is malformed.
    pub fn decode(b: &[u8]) -> Option<Envelope> {
        let mut r = R(b);
        let from = r.str()?;
        let inc = r.u64()?;
        let msg = match r.u8()? {
            1 => Msg::Heartbeat { seq: r.u64()? },
            2 => Msg::Added { seq: r.u64()?, jid: r.str()?, id: r.u64()?, since: r.u64()? },
            3 => Msg::Removed { seq: r.u64()?, jid: r.str()?, id: r.u64()? },
            4 => Msg::Presence {
                seq: r.u64()?,
                jid: r.str()?,
                id: r.u64()?,
                priority: r.u8()? as i8,
                presence: r.opt()?,
            },
            5 => Msg::Bye,
            6 => Msg::SyncRequest { req: r.u64()? },
            7 => {
                let req = r.u64()?;
                let seq = r.u64()?;
                let last = r.u8()? == 1;
                let n = r.u64()?;
                let mut entries = Vec::with_capacity(n.min(4096) as usize);
                for _ in 0..n {
                    entries.push(SnapEntry {
                        jid: r.str()?,
                        id: r.u64()?,
                        since: r.u64()?,
                        priority: r.u8()? as i8,
                        presence: r.opt()?,
                    });
                }
                Msg::Snapshot { req, seq, last, entries }
            }
            8 => {
                let to_inc = r.u64()?;
                let epoch = r.u64()?;
                let seq = r.u64()?;
                let ack = r.ack()?;
                let payload = match r.u8()? {
                    1 => Payload::Stanza { to: r.str()?, xml: r.str()?, fallback: r.u8()? == 1, hops: r.u8()? },
                    2 => {
                        let to = match r.u8()? {
                            1 => Target::Session { jid: r.str()?, id: r.u64()? },
                            2 => Target::User { bare: r.str()? },
                            _ => return None,
                        };
                        let msg = match r.u8()? {
                            1 => SessionMsgWire::Event(r.str()?),
                            2 => SessionMsgWire::Replaced,
                            3 => SessionMsgWire::Kick(r.str()?, r.opt()?),
                            4 => {
                                let n = r.u64()?;
                                let mut xmls = Vec::with_capacity(n.min(4096) as usize);
                                for _ in 0..n {
                                    xmls.push(r.str()?);
                                }
                                SessionMsgWire::Stanzas(xmls)
                            }
                            _ => return None,
                        };
                        Payload::Msg { to, msg }
                    }
                    3 => Payload::Service { xml: r.str()?, hops: r.u8()? },
                    _ => return None,
                };
                Msg::Data { to_inc, epoch, seq, ack, payload }
            }
            9 => Msg::Ack { to_inc: r.u64()?, epoch: r.u64()?, seq: r.u64()? },
            10 => Msg::Took { key: r.str()?, from: r.str()? },
            _ => return None,
        };
        r.0.is_empty().then_some(Envelope { from, inc, msg })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(msg: Msg) {
        let e = Envelope { from: "n1".into(), inc: 42, msg };
        let b = e.encode();
        assert_eq!(Envelope::decode(&b), Some(e.clone()));
        // Every strict prefix is rejected, never misread.
        for n in 0..b.len() {
            assert_eq!(Envelope::decode(&b[..n]), None, "prefix of {n} bytes of {e:?}");
        }
    }

    #[test]
    fn every_message_round_trips() {
        roundtrip(Msg::Heartbeat { seq: 7 });
        roundtrip(Msg::Added { seq: 1, jid: "a@b/c".into(), id: 9, since: 123 });
        roundtrip(Msg::Removed { seq: 2, jid: "a@b/c".into(), id: 9 });
        roundtrip(Msg::Presence {
            seq: 3,
            jid: "a@b/c".into(),
            id: 9,
            priority: -5,
            presence: Some("<presence/>".into()),
        });
        roundtrip(Msg::Presence { seq: 3, jid: "a@b/c".into(), id: 9, priority: 0, presence: None });
        roundtrip(Msg::Bye);
        roundtrip(Msg::SyncRequest { req: 3 });
        roundtrip(Msg::Snapshot {
            req: 3,
            seq: 4,
            last: true,
            entries: vec![
                SnapEntry { jid: "a@b/c".into(), id: 1, since: 2, priority: 3, presence: None },
                SnapEntry { jid: "d@b/e".into(), id: 4, since: 5, priority: -1, presence: Some("<p/>".into()) },
            ],
        });
        roundtrip(Msg::Data {
            to_inc: 5,
            epoch: 8,
            seq: 6,
            ack: Some((9, 10)),
            payload: Payload::Stanza { to: "a@b/c".into(), xml: "<message/>".into(), fallback: true, hops: 1 },
        });
        for msg in [
            SessionMsgWire::Event("<x xmlns='y'/>".into()),
            SessionMsgWire::Replaced,
            SessionMsgWire::Kick("conflict".into(), Some("why".into())),
            SessionMsgWire::Stanzas(vec!["<presence/>".into(), "<message/>".into()]),
        ] {
            roundtrip(Msg::Data {
                to_inc: 5,
                epoch: 8,
                seq: 6,
                ack: None,
                payload: Payload::Msg { to: Target::Session { jid: "a@b/c".into(), id: 3 }, msg: msg.clone() },
            });
            roundtrip(Msg::Data {
                to_inc: 5,
                epoch: 8,
                seq: 6,
                ack: None,
                payload: Payload::Msg { to: Target::User { bare: "a@b".into() }, msg },
            });
        }
        roundtrip(Msg::Data {
            to_inc: 5,
            epoch: 8,
            seq: 7,
            ack: None,
            payload: Payload::Service { xml: "<presence to='r@conference.b/n'/>".into(), hops: 1 },
        });
        roundtrip(Msg::Ack { to_inc: 1, epoch: 2, seq: 99 });
        roundtrip(Msg::Took { key: "room@conference.example".into(), from: "n1 5".into() });
    }

    #[test]
    fn a_stanza_encoded_in_place_decodes_as_data() {
        let el = meerkat_xml::parse_element(
            "<message xmlns='jabber:client' to='a@b/c' type='chat'><body>x &amp; y</body></message>",
            &meerkat_xml::Limits::default(),
        )
        .unwrap();
        let b = Envelope::encode_stanza("n1", 1, 2, 3, 4, Some((5, 6)), "a@b/c", &el, true, 1);
        let e = Envelope::decode(&b).unwrap();
        let Msg::Data {
            to_inc: 2,
            epoch: 3,
            seq: 4,
            ack: Some((5, 6)),
            payload: Payload::Stanza { to, xml, fallback: true, hops: 1 },
        } = e.msg
        else {
            panic!("{e:?}")
        };
        assert_eq!(to, "a@b/c");
        assert_eq!(meerkat_xml::parse_element(&xml, &meerkat_xml::Limits::default()).unwrap(), el);
    }

    #[test]
    fn a_batch_splits_into_its_envelopes() {
        let items: Vec<Bytes> = [Msg::Heartbeat { seq: 1 }, Msg::Ack { to_inc: 1, epoch: 2, seq: 3 }, Msg::Bye]
            .into_iter()
            .map(|msg| Envelope { from: "n1".into(), inc: 42, msg }.encode())
            .collect();
        let b = encode_batch("n1", 42, &items);
        let split = split_batch(&b).expect("a batch");
        assert_eq!(split, items.iter().map(|i| &i[..]).collect::<Vec<_>>());
        // A batch is not an envelope, an envelope is not a batch, and every strict
        // prefix of a batch is neither.
        assert_eq!(Envelope::decode(&b), None);
        assert_eq!(split_batch(&items[0]), None);
        for n in 0..b.len() {
            assert_eq!(split_batch(&b[..n]), None, "prefix of {n} bytes");
            assert_eq!(Envelope::decode(&b[..n]), None, "prefix of {n} bytes");
        }
        assert_eq!(split_batch(&encode_batch("n1", 42, &[])), Some(vec![]));
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(Envelope::decode(b""), None);
        assert_eq!(Envelope::decode(&[0xff; 40]), None);
        let mut b = Envelope { from: "n".into(), inc: 1, msg: Msg::Bye }.encode().to_vec();
        b.push(0);
        assert_eq!(Envelope::decode(&b), None, "trailing bytes");
    }
}
