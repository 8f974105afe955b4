//! The owned element tree.
//!
//! An [`Element`] is an XML 1.0 element after Namespaces-in-XML processing:
//! its name is the local part of its QName and `ns` the namespace name it
//! resolved to (the default namespace of §6.2 when unprefixed). Namespace
//! declarations (`xmlns`, `xmlns:p`) are consumed by resolution and not kept
//! as attributes. Attributes are kept by their name as written: unprefixed
//! ones and `xml:*` ones (the `xml` prefix is bound by definition, §3) have
//! no namespace; other prefixed attributes remember the namespace their
//! prefix was bound to, so the serialiser can re-declare it. That keeps
//! unknown extension content (RFC 6120 §8.4) intact through parse → write.
//!
//! The struct is 96 bytes on 64-bit targets: two [`CompactString`]s and two
//! `Vec`s. Names, namespaces and attributes are `CompactString`s because
//! nearly all of them (`message`, `jabber:client`, `to`, a JID, an id) fit in
//! its 24 inline bytes: parsing a typical stanza then allocates only for its
//! attribute and child lists and its text, not once per name and value.
//! Dropping is iterative (see the `Drop` impl), so even a programmatically
//! built, very deep tree cannot overflow the stack.

use std::fmt;

pub use compact_str::CompactString;

/// An attribute as stored in an [`Element`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attr {
    /// The name as written: `to`, `xml:lang`, or `p:local`.
    pub(crate) name: CompactString,
    /// The value after entity decoding and normalisation.
    pub(crate) value: CompactString,
    /// For `p:local` attributes with `p` other than `xml`: the namespace
    /// `p` was bound to. `None` otherwise.
    pub(crate) ns: Option<Box<str>>,
}

impl Attr {
    /// The prefix part of the name, `""` if unprefixed.
    pub(crate) fn prefix(&self) -> &str {
        match self.name.find(':') {
            Some(i) => &self.name[..i],
            None => "",
        }
    }
}

/// A child of an [`Element`]: an element or a run of text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A child element.
    Element(Element),
    /// Character data (entities decoded; CDATA sections become text too).
    Text(String),
    /// Children serialised once and shared by every copy of the element (a
    /// group chat message fanned out to many occupants): written as they are,
    /// in the scope of the element's namespace, and invisible to
    /// [`Element::children`] and [`Element::text`]. The parser never makes one;
    /// see [`Element::freeze_children`].
    Raw(std::sync::Arc<str>),
}

impl Node {
    /// The element, if this node is one.
    pub fn as_element(&self) -> Option<&Element> {
        match self {
            Node::Element(e) => Some(e),
            Node::Text(_) | Node::Raw(_) => None,
        }
    }

    /// The text, if this node is text.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Node::Element(_) | Node::Raw(_) => None,
            Node::Text(t) => Some(t),
        }
    }
}

impl From<Element> for Node {
    fn from(e: Element) -> Self {
        Node::Element(e)
    }
}

/// An XML element with its attributes and children, owning all its data.
#[derive(Clone, PartialEq, Eq)]
pub struct Element {
    pub(crate) name: CompactString,
    pub(crate) ns: CompactString,
    pub(crate) attrs: Vec<Attr>,
    pub(crate) nodes: Vec<Node>,
}

impl Drop for Element {
    fn drop(&mut self) {
        // Recursion depth of the default drop glue equals the tree depth.
        // Subtrees of depth <= 2 (the overwhelmingly common case: a stanza's
        // children hold only text) are left to the glue; anything deeper is
        // flattened onto a heap stack so each element is dropped childless.
        let deep = self.nodes.iter().any(|n| match n {
            Node::Element(e) => e.nodes.iter().any(|g| matches!(g, Node::Element(_))),
            Node::Text(_) | Node::Raw(_) => false,
        });
        if !deep {
            return;
        }
        let mut stack = std::mem::take(&mut self.nodes);
        while let Some(node) = stack.pop() {
            if let Node::Element(mut e) = node {
                stack.append(&mut e.nodes);
            }
        }
    }
}

impl fmt::Debug for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The serialised form is the most readable and cannot recurse.
        write!(f, "Element({self})")
    }
}

impl Element {
    /// A new element without attributes or children.
    #[must_use]
    pub fn new(name: impl Into<CompactString>, ns: impl Into<CompactString>) -> Self {
        Element { name: name.into(), ns: ns.into(), attrs: Vec::new(), nodes: Vec::new() }
    }

    /// Starts building an element: `Element::builder("message", "jabber:client")
    /// .attr("type", "chat").append(body).build()`.
    #[must_use]
    pub fn builder(name: impl Into<CompactString>, ns: impl Into<CompactString>) -> ElementBuilder {
        ElementBuilder { el: Element::new(name, ns) }
    }

    /// The local name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace URI (`""` for no namespace).
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// Renames the element (local name).
    pub fn set_name(&mut self, name: impl Into<CompactString>) {
        self.name = name.into();
    }

    /// Changes the element's namespace only (children keep theirs); e.g.
    /// `jabber:server` → `jabber:client` when routing a stanza.
    pub fn set_ns(&mut self, ns: impl Into<CompactString>) {
        self.ns = ns.into();
    }

    /// Whether the element has this local name and namespace.
    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns == ns
    }

    /// The value of the attribute with this literal name: an unprefixed
    /// name such as `to`, or a prefixed one as written such as `xml:lang`.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|a| a.name == name).map(|a| a.value.as_str())
    }

    /// The value of the prefixed attribute whose local name is `local` and
    /// whose prefix was bound to `ns` (whatever the prefix).
    pub fn attr_ns(&self, local: &str, ns: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|a| {
                a.ns.as_deref() == Some(ns)
                    && a.name.len() > local.len()
                    && a.name.ends_with(local)
                    && a.name.as_bytes()[a.name.len() - local.len() - 1] == b':'
            })
            .map(|a| a.value.as_str())
    }

    /// Sets an attribute, replacing the value of an existing attribute with
    /// the same name (a parsed `p:local` attribute keeps its namespace).
    /// New attributes must be unprefixed or `xml:*` and a valid XML name:
    /// the serialiser skips `xmlns` / `xmlns:*` names (namespaces are set
    /// with [`Element::new`]) and new prefixed names it cannot declare.
    pub fn set_attr(&mut self, name: impl Into<CompactString>, value: impl Into<CompactString>) {
        let name = name.into();
        let value = value.into();
        match self.attrs.iter_mut().find(|a| a.name == name) {
            Some(a) => a.value = value,
            None => self.attrs.push(Attr { name, value, ns: None }),
        }
    }

    /// Removes the attribute with this literal name, returning its value.
    pub fn remove_attr(&mut self, name: &str) -> Option<String> {
        let i = self.attrs.iter().position(|a| a.name == name)?;
        Some(self.attrs.remove(i).value.into_string())
    }

    /// All attributes as `(name, value)`, names as written (`xml:lang`,
    /// `p:local` for namespaced ones), in document order.
    pub fn attrs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.attrs.iter().map(|a| (a.name.as_str(), a.value.as_str()))
    }

    /// The element children (text is skipped).
    pub fn children(&self) -> impl Iterator<Item = &Element> {
        self.nodes.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) | Node::Raw(_) => None,
        })
    }

    /// The element children, mutably.
    pub fn children_mut(&mut self) -> impl Iterator<Item = &mut Element> {
        self.nodes.iter_mut().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) | Node::Raw(_) => None,
        })
    }

    /// All child nodes, elements and text, in document order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// All child nodes, mutably.
    pub fn nodes_mut(&mut self) -> &mut Vec<Node> {
        &mut self.nodes
    }

    /// The first child element with this name and namespace.
    pub fn get_child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.children().find(|e| e.is(name, ns))
    }

    /// The first child element with this name and namespace, mutably.
    pub fn get_child_mut(&mut self, name: &str, ns: &str) -> Option<&mut Element> {
        self.children_mut().find(|e| e.is(name, ns))
    }

    /// Whether a child element with this name and namespace exists.
    pub fn has_child(&self, name: &str, ns: &str) -> bool {
        self.get_child(name, ns).is_some()
    }

    /// Appends a child element and returns it, for further editing.
    pub fn append_child(&mut self, el: Element) -> &mut Element {
        self.nodes.push(Node::Element(el));
        match self.nodes.last_mut() {
            Some(Node::Element(e)) => e,
            // The node pushed on the previous line is an element.
            _ => unreachable!("last node is the element just pushed"),
        }
    }

    /// Appends text, merging with a preceding text node. Empty text is
    /// ignored (so that serialisation and re-parsing give the same tree).
    pub fn append_text(&mut self, t: impl Into<String>) {
        let t = t.into();
        if t.is_empty() {
            return;
        }
        match self.nodes.last_mut() {
            Some(Node::Text(prev)) => prev.push_str(&t),
            _ => self.nodes.push(Node::Text(t)),
        }
    }

    /// Removes every element child for which `pred` returns true.
    pub fn remove_children(&mut self, mut pred: impl FnMut(&Element) -> bool) {
        self.nodes.retain(|n| match n {
            Node::Element(e) => !pred(e),
            Node::Text(_) | Node::Raw(_) => true,
        });
    }

    /// Removes and returns the first child element with this name and
    /// namespace.
    pub fn remove_child(&mut self, name: &str, ns: &str) -> Option<Element> {
        let i = self.nodes.iter().position(|n| matches!(n, Node::Element(e) if e.is(name, ns)))?;
        match self.nodes.remove(i) {
            Node::Element(e) => Some(e),
            Node::Text(_) | Node::Raw(_) => None,
        }
    }

    /// The concatenation of the direct text children.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            if let Node::Text(t) = n {
                out.push_str(t);
            }
        }
        out
    }

    /// The text of the first child element with this name and namespace.
    pub fn child_text(&self, name: &str, ns: &str) -> Option<String> {
        self.get_child(name, ns).map(Element::text)
    }
}

/// Builder returned by [`Element::builder`].
#[derive(Debug, Clone)]
pub struct ElementBuilder {
    el: Element,
}

impl ElementBuilder {
    /// Sets an attribute (replacing one with the same name).
    #[must_use]
    pub fn attr(mut self, name: impl Into<CompactString>, value: impl Into<CompactString>) -> Self {
        self.el.set_attr(name, value);
        self
    }

    /// Appends a child element.
    #[must_use]
    pub fn append(mut self, child: Element) -> Self {
        self.el.nodes.push(Node::Element(child));
        self
    }

    /// Appends several child elements.
    #[must_use]
    pub fn append_all(mut self, children: impl IntoIterator<Item = Element>) -> Self {
        self.el.nodes.extend(children.into_iter().map(Node::Element));
        self
    }

    /// Appends text (same as [`ElementBuilder::append_text`]).
    #[must_use]
    pub fn text(self, t: impl Into<String>) -> Self {
        self.append_text(t)
    }

    /// Appends text.
    #[must_use]
    pub fn append_text(mut self, t: impl Into<String>) -> Self {
        self.el.append_text(t);
        self
    }

    /// Finishes the element.
    #[must_use]
    pub fn build(self) -> Element {
        self.el
    }
}

impl From<ElementBuilder> for Element {
    fn from(b: ElementBuilder) -> Self {
        b.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_size() {
        assert!(std::mem::size_of::<Element>() <= 96, "{}", std::mem::size_of::<Element>());
        assert!(std::mem::size_of::<Node>() <= 96);
    }

    #[test]
    fn api() {
        let mut m = Element::builder("message", "jabber:client")
            .attr("to", "a@b")
            .attr("type", "chat")
            .append(Element::builder("body", "jabber:client").text("hi").build())
            .append(Element::new("x", "urn:x"))
            .text(" tail")
            .build();
        assert!(m.is("message", "jabber:client"));
        assert_eq!(m.attr("to"), Some("a@b"));
        m.set_attr("to", "c@d");
        assert_eq!(m.attr("to"), Some("c@d"));
        assert_eq!(m.attrs().count(), 2);
        assert_eq!(m.remove_attr("type").as_deref(), Some("chat"));
        assert_eq!(m.remove_attr("type"), None);
        assert_eq!(m.child_text("body", "jabber:client").as_deref(), Some("hi"));
        assert!(m.has_child("x", "urn:x"));
        assert!(!m.has_child("x", "urn:y"));
        assert_eq!(m.text(), " tail");
        m.append_text("!");
        assert_eq!(m.nodes().len(), 3);
        assert_eq!(m.text(), " tail!");
        m.append_child(Element::new("y", "urn:y")).set_attr("k", "v");
        assert_eq!(m.get_child("y", "urn:y").and_then(|y| y.attr("k")), Some("v"));
        if let Some(b) = m.get_child_mut("body", "jabber:client") {
            b.append_text("!");
        }
        assert_eq!(m.child_text("body", "jabber:client").as_deref(), Some("hi!"));
        m.remove_children(|e| e.ns() == "urn:x");
        assert!(!m.has_child("x", "urn:x"));
        assert_eq!(m.remove_child("y", "urn:y").map(|e| e.name().to_owned()).as_deref(), Some("y"));
        assert_eq!(m.children().count(), 1);
        m.set_ns("jabber:server");
        assert_eq!(m.ns(), "jabber:server");
    }

    #[test]
    fn deep_drop_and_clone() {
        let mut root = Element::new("a", "");
        for _ in 0..100_000 {
            let mut parent = Element::new("a", "");
            parent.nodes.push(Node::Element(root));
            root = parent;
        }
        // Serialising is iterative as well.
        assert_eq!(root.to_bytes("").len(), 100_001 * 3 + 100_000 * 4 + 1);
        drop(root);
    }
}
