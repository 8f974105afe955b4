//! Fixture-driven conformance tests for the decoder.
//!
//! Each `tests/fixtures/<case>.xml` is decoded (with [`Framing::Fragments`]
//! if the name starts with `frag_`, else [`Framing::Stream`], default
//! [`Limits`]) and the outcome compared with `<case>.expect`, one line per
//! event:
//!
//! * `header[<default ns>]: <header serialised standalone>`
//! * `element: <element serialised relative to the stream's default ns>`
//! * `close`
//! * `error: <Error variant>` (decoding stops there)
//! * `pending` when input ended inside an element or tag.
//!
//! Newlines inside serialised elements are written as `\n`. The cases
//! cover XML 1.0 / Namespaces in XML well-formedness and the RFC 6120 §11
//! restrictions, including hostile input (billion laughs, XXE, 10 000-deep
//! nesting, huge attributes, bad UTF-8). Every case is also decoded with
//! the input fed byte by byte and in irregular chunks, which must give the
//! same result.

use std::fs;
use std::path::{Path, PathBuf};

use meerkat_xml::{Decoder, Framing, Limits, StreamEvent};

fn variant(e: &meerkat_xml::Error) -> String {
    let dbg = format!("{e:?}");
    dbg.split('(').next().unwrap_or_default().to_owned()
}

/// Decodes `chunks` and renders the outcome in the `.expect` format.
fn run(framing: Framing, chunks: &mut dyn Iterator<Item = &[u8]>) -> String {
    let mut d = Decoder::new(framing, Limits::default());
    let mut out = String::new();
    'feed: for chunk in chunks {
        d.feed(chunk);
        loop {
            match d.next_event() {
                Ok(Some(StreamEvent::Header(h))) => {
                    out += &format!("header[{}]: {}\n", d.default_ns(), h.to_string_with_ns());
                }
                Ok(Some(StreamEvent::Element(e))) => {
                    let text = String::from_utf8(e.to_bytes(d.default_ns())).unwrap();
                    out += &format!("element: {}\n", text.replace('\n', "\\n"));
                }
                Ok(Some(StreamEvent::Close)) => out += "close\n",
                Ok(None) => break,
                Err(e) => {
                    out += &format!("error: {}\n", variant(&e));
                    return out;
                }
            }
        }
        if chunk.is_empty() {
            break 'feed;
        }
    }
    if d.buffered() > 0 {
        out += "pending\n";
    }
    out
}

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut v: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "xml"))
        .collect();
    v.sort();
    assert!(v.len() >= 40, "fixtures missing in {}", dir.display());
    v
}

#[test]
fn fixtures() {
    let mut failures = Vec::new();
    for path in cases() {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let framing = if name.starts_with("frag_") { Framing::Fragments } else { Framing::Stream };
        let input = fs::read(&path).unwrap();
        let expect =
            fs::read_to_string(path.with_extension("expect")).unwrap_or_else(|_| panic!("{name}.expect missing"));

        let whole = run(framing, &mut std::iter::once(&input[..]));
        if whole != expect {
            failures.push(format!("{name}:\n--- expected\n{expect}--- got\n{whole}"));
            continue;
        }
        let dripped = run(framing, &mut input.chunks(1));
        if dripped != expect {
            failures.push(format!("{name} (byte by byte):\n--- expected\n{expect}--- got\n{dripped}"));
        }
        // Irregular chunk sizes 1..=13.
        let mut rest = &input[..];
        let mut chunks = Vec::new();
        let mut n = 0;
        while !rest.is_empty() {
            n = n % 13 + 1;
            let (a, b) = rest.split_at(n.min(rest.len()));
            chunks.push(a);
            rest = b;
        }
        let chunked = run(framing, &mut chunks.into_iter());
        if chunked != expect {
            failures.push(format!("{name} (chunked):\n--- expected\n{expect}--- got\n{chunked}"));
        }
    }
    assert!(failures.is_empty(), "{} fixture failures:\n{}", failures.len(), failures.join("\n"));
}

/// Every element of every fixture survives serialise → parse unchanged.
#[test]
fn fixtures_round_trip() {
    for path in cases() {
        let input = fs::read(&path).unwrap();
        let mut d = Decoder::new(Framing::Stream, Limits::default());
        if path.file_stem().unwrap().to_string_lossy().starts_with("frag_") {
            d = Decoder::new(Framing::Fragments, Limits::default());
        }
        d.feed(&input);
        while let Ok(Some(ev)) = d.next_event() {
            if let StreamEvent::Element(e) | StreamEvent::Header(e) = ev {
                let text = e.to_string_with_ns();
                let back = meerkat_xml::parse_element(&text, &Limits::default())
                    .unwrap_or_else(|err| panic!("{}: {text}: {err}", path.display()));
                assert_eq!(back, e, "{}", path.display());
            }
        }
    }
}
