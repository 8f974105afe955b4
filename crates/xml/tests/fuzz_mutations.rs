//! Deterministic stand-in for the `stream_parser` fuzz target (fuzz/ at the
//! workspace root), runnable on stable Rust in CI.
//!
//! Mutates seed streams (the fuzz corpus, a few built-in XMPP streams and
//! the small conformance fixtures) with a seeded xorshift generator and runs
//! the same property as the fuzz target,
//! `meerkat_xml::fuzzing::stream_parser`: no panic, chunking-independent
//! results (XML 1.0 well-formedness decisions must not depend on how TCP
//! split the bytes), and serialise → `parse_element` round trips (RFC 6120
//! §11 / Namespaces in XML).

use std::fs;
use std::path::Path;

use meerkat_xml::fuzzing::{decode_chunks, stream_parser};
use meerkat_xml::StreamEvent;

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const BYTES: &[u8] = b"<>/'\"&;:=! ?#x]\r\n\t\x00\xff\xc3\xa9\xef";

const TOKENS: &[&str] = &[
    "<![CDATA[",
    "]]>",
    "&amp;",
    "&#x41;",
    "&#13;",
    "&#9;",
    "&lt;",
    "&foo;",
    " xmlns:p='urn:p'",
    " xmlns=''",
    " xmlns='urn:d'",
    " p:a='1'",
    " xml:lang='en'",
    "p:",
    "stream:",
    "<a>",
    "</a>",
    "<p:b/>",
    "<stream:features/>",
    "</stream:stream>",
    "<!--",
    "<?xml version='1.0'?>",
    "\r\n",
    "é",
    "😀",
    "\t",
    " x='\t\n'",
];

const BUILTIN: &[&str] = &[
    "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='e.com' version='1.0'>\
     <iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r</resource></bind></iq>\
     <auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGp1bGlldAByMG0zMG15cjBtMzA=</auth></stream:stream>",
    "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>\
     <message xmlns:lt='urn:lt' lt:seq='1' to='a@b'><body>x &lt; y\r\n</body><lt:s k='v'>t<u/></lt:s></message>",
];

/// Seeds; the first `good` of them are valid streams (the built-in ones and
/// the fuzz corpus), the rest are the fixtures, mostly hostile.
fn seeds() -> (Vec<Vec<u8>>, usize) {
    let mut seeds: Vec<Vec<u8>> = BUILTIN.iter().map(|s| s.as_bytes().to_vec()).collect();
    let mut good = seeds.len();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (i, dir) in [root.join("../../fuzz/corpus/stream_parser"), root.join("tests/fixtures")].iter().enumerate() {
        if i == 1 {
            good = seeds.len();
        }
        let Ok(entries) = fs::read_dir(dir) else { continue };
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            if p.extension().is_some_and(|x| x == "expect") {
                continue;
            }
            if let Ok(data) = fs::read(&p) {
                if data.len() <= 2048 {
                    seeds.push(data);
                }
            }
        }
    }
    (seeds, good)
}

fn mutate(rng: &mut XorShift, data: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    let len = data.len();
    match rng.below(6) {
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = BYTES[rng.below(BYTES.len())];
        }
        2 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(16)).min(len);
            data.drain(start..end);
        }
        3 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(64)).min(len);
            let chunk = data[start..end].to_vec();
            let at = rng.below(data.len() + 1);
            data.splice(at..at, chunk);
        }
        4 => {
            let tok = TOKENS[rng.below(TOKENS.len())].as_bytes();
            let at = rng.below(len + 1);
            data.splice(at..at, tok.iter().copied());
        }
        _ => {
            let other = &seeds[rng.below(seeds.len())];
            let from = rng.below(other.len() + 1);
            let at = rng.below(len + 1);
            data.truncate(at);
            data.extend_from_slice(&other[from..]);
        }
    }
}

#[test]
fn seeds_pass_the_property() {
    for s in seeds().0 {
        stream_parser(&s);
    }
}

#[test]
fn mutated_seeds_pass_the_property() {
    let (seeds, good) = seeds();
    assert!(seeds.len() >= 6);
    // MEERKAT_FUZZ_ROUNDS / MEERKAT_FUZZ_SEED allow longer local runs, e.g.
    // `MEERKAT_FUZZ_ROUNDS=1000000 cargo test --release -p meerkat-xml --test fuzz_mutations`.
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let rounds = env("MEERKAT_FUZZ_ROUNDS").unwrap_or(6000) as usize;
    let mut rng = XorShift(env("MEERKAT_FUZZ_SEED").unwrap_or(0x9E37_79B9_7F4A_7C15).max(1));
    let mut with_elements = 0;
    for round in 0..rounds {
        // Mostly valid streams, so mutations reach deep into the grammar.
        let pick = if rng.below(4) == 0 { rng.below(seeds.len()) } else { rng.below(good) };
        let mut data = seeds[pick].clone();
        for _ in 0..1 + rng.below(3) {
            mutate(&mut rng, &mut data, &seeds);
        }
        let outcome = std::panic::catch_unwind(|| stream_parser(&data));
        if outcome.is_err() {
            panic!("round {round}: property violated for input {:?}", String::from_utf8_lossy(&data));
        }
        // Every split point, not just the derived one, for a sample.
        if round % 50 == 0 {
            let whole = decode_chunks(&[&data]);
            for split in 0..=data.len() {
                let (a, b) = data.split_at(split);
                assert_eq!(decode_chunks(&[a, b]), whole, "round {round}, split {split}");
            }
        }
        let (events, _) = decode_chunks(&[&data]);
        if events.iter().any(|e| matches!(e, StreamEvent::Element(_))) {
            with_elements += 1;
        }
    }
    // The mutations must not be so destructive that nothing parses (the
    // decoder is strict: about one input in eight still yields elements).
    assert!(with_elements > rounds / 20, "only {with_elements} inputs produced elements");
}
