//! Serialisation of [`Element`] trees.
//!
//! Output is XML 1.0 that Namespaces in XML resolves to the same tree, as
//! RFC 6120 §11.2 and §4.8 require of what a server sends:
//!
//! * attributes use single quotes; text and attribute values are escaped
//!   by [`crate::escape_text`] / [`crate::escape_attr`];
//! * `xmlns='…'` is written only when an element's namespace differs from
//!   the default namespace in scope (`parent_ns` for the element written);
//! * elements in `http://etherx.jabber.org/streams` (`<stream:features>`,
//!   `<stream:error>`) are written with the conventional `stream:` prefix
//!   (RFC 6120 §4.8.5; some clients match the qualified name literally),
//!   declaring `xmlns:stream` on the outermost such element; the default
//!   namespace in scope is unchanged for their children;
//! * prefixed attributes re-declare their prefix (`xmlns:p='…'`) unless an
//!   ancestor written in the same call already bound it to the same URI.
//!
//! The walk is iterative with an explicit stack: no recursion on depth.

use std::fmt;

use crate::element::{Attr, Element, Node};
use crate::escape::{escape_attr_to, escape_text_to, Sink};
use crate::STREAM_NS;

struct Frame<'a> {
    el: &'a Element,
    next: usize,
    /// Default namespace in scope for this element's children.
    default_ns: &'a str,
    /// Length of the prefix-binding scope before this element.
    mark: usize,
    stream_prefix: bool,
}

/// Prefix bindings declared during this serialisation, innermost last.
type Scope<'a> = Vec<(&'a str, &'a str)>;

fn bound<'a>(scope: &Scope<'a>, prefix: &str) -> Option<&'a str> {
    scope.iter().rev().find(|(p, _)| *p == prefix).map(|(_, u)| *u)
}

/// Attributes that cannot be written as they are: namespace declarations
/// set by hand, and prefixed names (other than `xml:`) without a namespace
/// to declare for the prefix.
fn unwritable(a: &Attr) -> bool {
    let prefix = a.prefix();
    a.name == "xmlns" || prefix == "xmlns" || (a.ns.is_none() && !prefix.is_empty() && prefix != "xml")
}

/// Writes the start tag of `el`; returns a frame if it has children (else
/// the tag was self-closed).
fn open<'a, S: Sink>(el: &'a Element, default_ns: &'a str, scope: &mut Scope<'a>, out: &mut S) -> Option<Frame<'a>> {
    let mark = scope.len();
    // Use the `stream:` prefix unless an attribute of this very element
    // needs `stream` bound to something else (only possible with odd input).
    let stream_prefix = el.ns == STREAM_NS
        && !el.attrs.iter().any(|a| a.ns.is_some() && a.prefix() == "stream" && a.ns.as_deref() != Some(STREAM_NS));
    out.put("<");
    let child_default = if stream_prefix {
        out.put("stream:");
        out.put(&el.name);
        if bound(scope, "stream") != Some(STREAM_NS) {
            out.put(" xmlns:stream='");
            out.put(STREAM_NS);
            out.put("'");
            scope.push(("stream", STREAM_NS));
        }
        default_ns
    } else {
        out.put(&el.name);
        if el.ns != default_ns {
            out.put(" xmlns='");
            escape_attr_to(&el.ns, out);
            out.put("'");
        }
        el.ns.as_str()
    };
    for a in &el.attrs {
        if unwritable(a) {
            continue;
        }
        if let Some(uri) = a.ns.as_deref() {
            let prefix = a.prefix();
            if !prefix.is_empty() && bound(scope, prefix) != Some(uri) {
                out.put(" xmlns:");
                out.put(prefix);
                out.put("='");
                escape_attr_to(uri, out);
                out.put("'");
                scope.push((prefix, uri));
            }
        }
        out.put(" ");
        out.put(&a.name);
        out.put("='");
        escape_attr_to(&a.value, out);
        out.put("'");
    }
    if el.nodes.is_empty() {
        out.put("/>");
        scope.truncate(mark);
        None
    } else {
        out.put(">");
        Some(Frame { el, next: 0, default_ns: child_default, mark, stream_prefix })
    }
}

/// Writes `root`, leaving out the children of `root` itself for which `skip`
/// is true.
fn write_tree<S: Sink>(root: &Element, out: &mut S, parent_ns: &str) {
    write_tree_skipping(root, out, parent_ns, |_| false);
}

fn write_tree_skipping<S: Sink>(root: &Element, out: &mut S, parent_ns: &str, skip: impl Fn(&Element) -> bool) {
    let mut scope: Scope<'_> = Vec::new();
    let mut stack: Vec<Frame<'_>> = Vec::new();
    if let Some(f) = open(root, parent_ns, &mut scope, out) {
        stack.push(f);
    }
    loop {
        let depth = stack.len();
        let Some(top) = stack.last_mut() else { break };
        let el = top.el;
        match el.nodes.get(top.next) {
            Some(node) => {
                top.next += 1;
                match node {
                    Node::Text(t) => escape_text_to(t, out),
                    Node::Raw(r) => out.put(r),
                    Node::Element(child) if depth == 1 && skip(child) => {}
                    Node::Element(child) => {
                        let d = top.default_ns;
                        if let Some(f) = open(child, d, &mut scope, out) {
                            stack.push(f);
                        }
                    }
                }
            }
            None => {
                out.put("</");
                if top.stream_prefix {
                    out.put("stream:");
                }
                out.put(&el.name);
                out.put(">");
                scope.truncate(top.mark);
                stack.pop();
            }
        }
    }
}

impl Element {
    /// Serialises the element into `out`. `parent_ns` is the default
    /// namespace in scope where the element is written (e.g. `jabber:client`
    /// inside a client stream); `xmlns` is emitted only if the element's
    /// namespace differs from it. Children are written relative to their
    /// parent.
    pub fn write_to(&self, out: &mut Vec<u8>, parent_ns: &str) {
        write_tree(self, out, parent_ns);
    }

    /// Serialises the children once into one shared [`crate::Node::Raw`] node,
    /// so that copies of the element (one per recipient of a group chat
    /// message) share them instead of copying the tree, and each copy is
    /// written with a single copy of the bytes. Afterwards the children are no
    /// longer visible as elements; do it last, on an element that is only
    /// written from then on.
    pub fn freeze_children(&mut self) {
        if self.nodes.iter().all(|n| matches!(n, crate::Node::Raw(_))) {
            return;
        }
        let mut out = String::with_capacity(256);
        for n in &self.nodes {
            match n {
                crate::Node::Text(t) => escape_text_to(t, &mut out),
                crate::Node::Raw(r) => out.put(r),
                crate::Node::Element(child) => write_tree(child, &mut out, &self.ns),
            }
        }
        self.nodes = vec![crate::Node::Raw(out.into())];
    }

    /// Serialises the element into a new buffer; see [`Element::write_to`].
    pub fn to_bytes(&self, parent_ns: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        write_tree(self, &mut out, parent_ns);
        out
    }

    /// Serialises the element standalone (with its `xmlns` always emitted,
    /// unless its namespace is empty), e.g. to store a stanza as text that
    /// [`crate::parse_element`] reads back.
    pub fn to_string_with_ns(&self) -> String {
        let mut out = String::with_capacity(128);
        write_tree(self, &mut out, "");
        out
    }

    /// Like [`Element::to_string_with_ns`], without the element's own children
    /// for which `skip` is true (deeper descendants are all written).
    pub fn to_string_with_ns_skipping(&self, skip: impl Fn(&Element) -> bool) -> String {
        let mut out = String::with_capacity(128);
        write_tree_skipping(self, &mut out, "", skip);
        out
    }
}

impl fmt::Display for Element {
    /// Same as [`Element::to_string_with_ns`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string_with_ns())
    }
}

#[cfg(test)]
mod tests {
    use crate::{parse_element, Element, Limits};

    #[test]
    fn frozen_children_write_the_same_bytes() {
        let mut m = Element::builder("message", "jabber:client")
            .attr("from", "room@muc/nick")
            .append(Element::builder("body", "jabber:client").text("<hi> & 'bye'").build())
            .append(Element::builder("stanza-id", "urn:xmpp:sid:0").attr("id", "1").build())
            .append_text("tail & more")
            .build();
        let before = (m.to_bytes("jabber:client"), m.to_string_with_ns());
        m.freeze_children();
        assert_eq!(m.children().count(), 0, "frozen children are opaque");
        let mut copy = m.clone();
        copy.set_attr("to", "a@b/c");
        assert_eq!((m.to_bytes("jabber:client"), m.to_string_with_ns()), before);
        assert_eq!(
            String::from_utf8(copy.to_bytes("jabber:client")).unwrap(),
            "<message from='room@muc/nick' to='a@b/c'><body>&lt;hi&gt; &amp; 'bye'</body>\
             <stanza-id xmlns='urn:xmpp:sid:0' id='1'/>tail &amp; more</message>"
        );
        // Standalone, it parses back into the tree it came from.
        let back = parse_element(&copy.to_string_with_ns(), &Limits::default()).unwrap();
        assert_eq!(back.child_text("body", "jabber:client").as_deref(), Some("<hi> & 'bye'"));
    }

    #[test]
    fn skipping_leaves_out_only_matching_children_of_the_root() {
        let sid = |by: &str| Element::builder("stanza-id", "urn:xmpp:sid:0").attr("by", by).attr("id", "1").build();
        let m = Element::builder("message", "jabber:client")
            .append(sid("a@b"))
            .append(Element::builder("body", "jabber:client").text("hi").build())
            .append(Element::builder("x", "urn:x").append(sid("a@b")).build())
            .append(sid("c@d"))
            .build();
        let out = m.to_string_with_ns_skipping(|c| c.is("stanza-id", "urn:xmpp:sid:0"));
        assert_eq!(
            out,
            "<message xmlns='jabber:client'><body>hi</body><x xmlns='urn:x'>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='a@b' id='1'/></x></message>"
        );
        assert_eq!(m.to_string_with_ns_skipping(|_| false), m.to_string_with_ns());
    }

    #[test]
    fn relative_namespaces() {
        let m = Element::builder("message", "jabber:client")
            .attr("to", "a@b/c")
            .attr("xml:lang", "en")
            .append(Element::builder("body", "jabber:client").text("<hi> & 'bye'").build())
            .append(Element::builder("x", "urn:x").append(Element::new("y", "urn:x")).build())
            .append(Element::new("none", ""))
            .build();
        assert_eq!(
            String::from_utf8(m.to_bytes("jabber:client")).unwrap(),
            "<message to='a@b/c' xml:lang='en'><body>&lt;hi&gt; &amp; 'bye'</body>\
             <x xmlns='urn:x'><y/></x><none xmlns=''/></message>"
        );
        assert!(m.to_string_with_ns().starts_with("<message xmlns='jabber:client' to="));
        assert_eq!(m.to_string(), m.to_string_with_ns());
        assert_eq!(parse_element(&m.to_string(), &Limits::default()), Ok(m));
    }

    #[test]
    fn stream_prefix() {
        let f = Element::builder("features", crate::STREAM_NS)
            .append(
                Element::builder("starttls", "urn:ietf:params:xml:ns:xmpp-tls")
                    .append(Element::new("required", "urn:ietf:params:xml:ns:xmpp-tls"))
                    .build(),
            )
            .append(Element::new("error", crate::STREAM_NS))
            .append(Element::new("c", "jabber:client"))
            .build();
        assert_eq!(
            String::from_utf8(f.to_bytes("jabber:client")).unwrap(),
            "<stream:features xmlns:stream='http://etherx.jabber.org/streams'>\
             <starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>\
             <stream:error/><c/></stream:features>"
        );
        assert_eq!(parse_element(&f.to_string(), &Limits::default()), Ok(f));
    }

    #[test]
    fn ignores_xmlns_attrs() {
        let mut e = Element::new("a", "urn:a");
        e.set_attr("xmlns", "urn:b");
        e.set_attr("xmlns:p", "urn:p");
        e.set_attr("p:q", "undeclarable");
        e.set_attr("xml:lang", "en");
        assert_eq!(e.to_string(), "<a xmlns='urn:a' xml:lang='en'/>");
    }
}
