//! Fuzz target for the meerkat-xml stream decoder (XML 1.0, Namespaces in
//! XML, RFC 6120 §11 "XML usage").
//!
//! Feeds the input to a `Framing::Stream` decoder with small limits, once
//! whole and once split in two chunks at a point derived from the input,
//! drains events until an error or `None`, and checks that
//! * both runs give the same events and error (incremental decoding is
//!   chunking-independent), and
//! * every element serialises to text that `parse_element` reads back to an
//!   equal element.
//!
//! The property lives in `meerkat_xml::fuzzing::stream_parser` so that a
//! deterministic unit test (crates/xml/tests/fuzz_mutations.rs) exercises
//! exactly the same logic on stable Rust.
//!
//! Run: `cargo +nightly fuzz run stream_parser` from this directory.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    meerkat_xml::fuzzing::stream_parser(data);
});
