//! Behavioural tests of the decoder and serialiser against XML 1.0,
//! Namespaces in XML and RFC 6120 §11 / RFC 7395: namespace round trips,
//! preservation of unknown content, framings, STARTTLS reset (RFC 6120
//! §5.4.3.3), early enforcement of the size limit, incremental feeding.

use meerkat_xml::{parse_element, Decoder, Element, Error, Framing, Limits, Node, StreamEvent, STREAM_NS};

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0' xml:lang='en'>";

fn drain(d: &mut Decoder) -> Result<Vec<StreamEvent>, Error> {
    let mut v = Vec::new();
    while let Some(ev) = d.next_event()? {
        v.push(ev);
    }
    Ok(v)
}

fn element(ev: &StreamEvent) -> &Element {
    match ev {
        StreamEvent::Element(e) => e,
        other => panic!("expected element, got {other:?}"),
    }
}

#[test]
fn stream_header_and_stanzas() {
    let mut d = Decoder::new(Framing::Stream, Limits::default());
    d.feed(HEADER.as_bytes());
    d.feed(b"<message to='a@b' type='chat'><body>hi</body></message> <presence/><stream:features/>");
    let evs = drain(&mut d).unwrap();
    assert_eq!(evs.len(), 4);
    let StreamEvent::Header(h) = &evs[0] else { panic!("{:?}", evs[0]) };
    assert!(h.is("stream", STREAM_NS));
    assert_eq!(h.attr("to"), Some("example.com"));
    assert_eq!(h.attr("version"), Some("1.0"));
    assert_eq!(h.attr("xml:lang"), Some("en"));
    assert_eq!(h.attr("xmlns"), None, "declarations are not attributes");
    assert_eq!(h.children().count(), 0);
    assert_eq!(d.default_ns(), "jabber:client");
    let m = element(&evs[1]);
    assert!(m.is("message", "jabber:client"));
    assert_eq!(m.child_text("body", "jabber:client").as_deref(), Some("hi"));
    assert!(element(&evs[2]).is("presence", "jabber:client"));
    assert!(element(&evs[3]).is("features", STREAM_NS));
    assert_eq!(d.buffered(), 0);
    d.feed(b"</stream:stream>");
    assert_eq!(d.next_event(), Ok(Some(StreamEvent::Close)));
    assert_eq!(d.next_event(), Ok(None));
}

#[test]
fn namespaces_and_prefixes_round_trip() {
    let xml = "<iq xmlns='jabber:client' xmlns:p='urn:p' xmlns:q='urn:q' type='set' p:a='1'>\
        <p:query q:b='2' xml:lang='fr'><item xmlns=''/><q:item p:c='3'/></p:query>\
        <x xmlns='urn:x' xmlns:p='urn:p2' p:a='4'><y/><stream:z xmlns:stream='http://etherx.jabber.org/streams'/></x></iq>";
    let el = parse_element(xml, &Limits::default()).unwrap();
    assert!(el.is("iq", "jabber:client"));
    assert_eq!(el.attr("p:a"), Some("1"));
    assert_eq!(el.attr_ns("a", "urn:p"), Some("1"));
    let query = el.get_child("query", "urn:p").unwrap();
    assert_eq!(query.attr_ns("b", "urn:q"), Some("2"));
    assert_eq!(query.attr("xml:lang"), Some("fr"));
    assert!(query.has_child("item", ""));
    let qitem = query.get_child("item", "urn:q").unwrap();
    assert_eq!(qitem.attr_ns("c", "urn:p"), Some("3"));
    let x = el.get_child("x", "urn:x").unwrap();
    assert_eq!(x.attr_ns("a", "urn:p2"), Some("4"));
    assert!(x.has_child("y", "urn:x"));
    assert!(x.has_child("z", STREAM_NS));

    let text = el.to_string();
    let back = parse_element(&text, &Limits::default()).unwrap();
    assert_eq!(back, el, "{text}");
    // Relative serialisation omits the inherited namespace.
    let rel = String::from_utf8(el.to_bytes("jabber:client")).unwrap();
    assert!(
        rel.starts_with("<iq xmlns:p='urn:p' p:a='1' type='set'>") || rel.starts_with("<iq type='set' xmlns:p"),
        "{rel}"
    );
    let mut wrapped = String::from("<w xmlns='jabber:client'>");
    wrapped.push_str(&rel);
    wrapped.push_str("</w>");
    let w = parse_element(&wrapped, &Limits::default()).unwrap();
    assert_eq!(w.get_child("iq", "jabber:client"), Some(&el));
}

#[test]
fn unknown_content_survives_stream_round_trip() {
    // A load tool stamps data in unknown attributes and elements; the server
    // must forward them intact.
    let stanza = "<message to='bob@example.com' xmlns:lt='urn:loadtest' lt:seq='42' lt:ts='1700000000' \
        custom='x&amp;y' other=\"it's\"><body>hello</body><lt:stamp run='7'>payload <b>bold</b> &lt;tail&gt;</lt:stamp>\
        <unknown xmlns='urn:unknown:1'><deep><deeper a='b'/></deep>text</unknown></message>";
    let mut d = Decoder::new(Framing::Stream, Limits::default());
    d.feed(HEADER.as_bytes());
    d.feed(stanza.as_bytes());
    let evs = drain(&mut d).unwrap();
    let m = element(&evs[1]).clone();
    assert_eq!(m.attr("custom"), Some("x&y"));
    assert_eq!(m.attr("other"), Some("it's"));
    assert_eq!(m.attr_ns("seq", "urn:loadtest"), Some("42"));
    let stamp = m.get_child("stamp", "urn:loadtest").unwrap();
    assert_eq!(stamp.text(), "payload  <tail>");
    assert!(stamp.has_child("b", "jabber:client"), "unprefixed child inherits the default ns");

    // Forward it into another client stream (relative to jabber:client) …
    let mut out = Vec::new();
    out.extend_from_slice(HEADER.as_bytes());
    m.write_to(&mut out, "jabber:client");
    let mut d2 = Decoder::new(Framing::Stream, Limits::default());
    d2.feed(&out);
    let evs2 = drain(&mut d2).unwrap();
    assert_eq!(element(&evs2[1]), &m);
    // … and store / load it as text.
    assert_eq!(parse_element(&m.to_string_with_ns(), &Limits::default()).unwrap(), m);
}

#[test]
fn websocket_fragments() {
    let mut d = Decoder::new(Framing::Fragments, Limits::default());
    d.feed(b"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0'/>");
    let open = d.next_event().unwrap().unwrap();
    let open = element(&open);
    assert!(open.is("open", "urn:ietf:params:xml:ns:xmpp-framing"));
    assert_eq!(open.attr("to"), Some("localhost"));
    assert_eq!(d.next_event(), Ok(None));
    d.feed(b"<message xmlns='jabber:client' to='a@localhost'><body>x</body></message>");
    let m = d.next_event().unwrap().unwrap();
    assert!(element(&m).is("message", "jabber:client"));
    assert!(element(&m).has_child("body", "jabber:client"));
    // No namespace context carries over between top-level elements.
    d.feed(b"\n<iq type='get'/>");
    let iq = d.next_event().unwrap().unwrap();
    assert!(element(&iq).is("iq", ""));
    d.feed(b"<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>");
    assert!(element(&d.next_event().unwrap().unwrap()).is("close", "urn:ietf:params:xml:ns:xmpp-framing"));
    // A stream header is just an element here; its end tag alone is an error.
    d.feed(b"</stream:stream>");
    assert!(matches!(d.next_event(), Err(Error::NotWellFormed(_))));
}

#[test]
fn reset_after_starttls() {
    let mut d = Decoder::new(Framing::Stream, Limits::default());
    d.feed(HEADER.as_bytes());
    // The attacker appends plaintext after <starttls/> hoping it is
    // processed after the TLS handshake (command injection).
    d.feed(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><iq type='set' id='evil'>");
    assert!(matches!(d.next_event(), Ok(Some(StreamEvent::Header(_)))));
    let st = d.next_event().unwrap().unwrap();
    assert!(element(&st).is("starttls", "urn:ietf:params:xml:ns:xmpp-tls"));
    assert!(d.buffered() > 0);
    d.reset();
    assert_eq!(d.buffered(), 0);
    assert_eq!(d.default_ns(), "");
    // New stream over TLS: an XML declaration is allowed again.
    d.feed(
        b"<?xml version='1.0' encoding='utf-8'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'><presence/>",
    );
    assert!(matches!(d.next_event(), Ok(Some(StreamEvent::Header(_)))));
    assert!(element(&d.next_event().unwrap().unwrap()).is("presence", "jabber:client"));
    assert_eq!(d.next_event(), Ok(None));
}

#[test]
fn reset_clears_errors() {
    let mut d = Decoder::new(Framing::Stream, Limits::default());
    d.feed(b"<!-- x -->");
    assert_eq!(d.next_event(), Err(Error::Restricted("comment")));
    // Sticky, and input is ignored.
    d.feed(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>");
    assert_eq!(d.next_event(), Err(Error::Restricted("comment")));
    assert_eq!(d.buffered(), 0);
    d.reset();
    d.feed(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>");
    assert!(matches!(d.next_event(), Ok(Some(StreamEvent::Header(_)))));
}

#[test]
fn size_limit_triggers_before_the_end() {
    let limits = Limits { max_stanza_bytes: 10_000, ..Limits::default() };
    for (prefix, filler) in [
        ("<message to='", b'a'),   // inside an attribute value
        ("<message><body>", b'b'), // inside text
        ("<message><![CDATA[", b'c'),
        ("<message><a/><b/><c>", b'd'),
    ] {
        let mut d = Decoder::new(Framing::Stream, limits);
        d.feed(HEADER.as_bytes());
        assert!(matches!(d.next_event(), Ok(Some(StreamEvent::Header(_)))));
        d.feed(prefix.as_bytes());
        assert_eq!(d.next_event(), Ok(None));
        let chunk = [filler; 1000];
        let mut fed = prefix.len();
        let err = loop {
            d.feed(&chunk);
            fed += chunk.len();
            assert!(fed < 20_000, "{prefix}: no error after {fed} bytes");
            match d.next_event() {
                Ok(None) => assert!(d.buffered() <= 10_000, "{prefix}: holds {}", d.buffered()),
                Ok(Some(ev)) => panic!("{prefix}: unexpected {ev:?}"),
                Err(e) => break e,
            }
        };
        assert_eq!(err, Error::StanzaTooBig, "{prefix}");
        assert!(fed <= 11_000, "{prefix}: detected late, after {fed} bytes");
    }
}

#[test]
fn size_limit_is_exact() {
    let limits = Limits { max_stanza_bytes: 20, ..Limits::default() };
    let fits = "<message>0123</message>"; // 23 bytes
    assert_eq!(fits.len(), 23);
    let mut d = Decoder::new(Framing::Fragments, limits);
    d.feed(fits.as_bytes());
    assert_eq!(d.next_event(), Err(Error::StanzaTooBig));
    let limits = Limits { max_stanza_bytes: 23, ..Limits::default() };
    for chunk in [1, 2, 5, 23] {
        let mut d = Decoder::new(Framing::Fragments, limits);
        let mut evs = Vec::new();
        for c in fits.as_bytes().chunks(chunk) {
            d.feed(c);
            evs.extend(drain(&mut d).unwrap());
        }
        assert_eq!(evs.len(), 1);
        // Several stanzas in one read are each measured on their own.
        let mut d = Decoder::new(Framing::Fragments, limits);
        d.feed(fits.repeat(5).as_bytes());
        assert_eq!(drain(&mut d).unwrap().len(), 5);
    }
}

#[test]
fn header_limit() {
    let limits = Limits { max_header_bytes: 100, ..Limits::default() };
    let mut d = Decoder::new(Framing::Stream, limits);
    d.feed(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' to='");
    assert_eq!(d.next_event(), Ok(None));
    d.feed(&[b'x'; 40]);
    assert_eq!(d.next_event(), Err(Error::StanzaTooBig));
}

#[test]
fn depth_limit_at_the_start_tag() {
    let limits = Limits { max_depth: 3, ..Limits::default() };
    let mut d = Decoder::new(Framing::Fragments, limits);
    d.feed(b"<a><b><c/></b></a>");
    assert_eq!(drain(&mut d).unwrap().len(), 1);
    d.feed(b"<a><b><c><d>");
    assert_eq!(d.next_event(), Err(Error::TooDeep));
    // The stream header does not count.
    let mut d = Decoder::new(Framing::Stream, limits);
    d.feed(HEADER.as_bytes());
    d.feed(b"<a><b><c/></b></a><a><b><c><d/></c></b></a>");
    assert!(matches!(d.next_event(), Ok(Some(StreamEvent::Header(_)))));
    assert!(matches!(d.next_event(), Ok(Some(StreamEvent::Element(_)))));
    assert_eq!(d.next_event(), Err(Error::TooDeep));
}

#[test]
fn attribute_limits() {
    let limits = Limits { max_attrs: 2, ..Limits::default() };
    let ok = "<a xmlns='u' xmlns:p='v' x='1' p:y='2'/>";
    assert!(parse_element(ok, &limits).is_ok());
    assert_eq!(parse_element("<a x='1' y='2' z='3'/>", &limits), Err(Error::TooManyAttrs));
    assert_eq!(parse_element("<a xmlns='u' xmlns:p='v' xmlns:q='w'/>", &limits), Err(Error::TooManyAttrs));
}

#[test]
fn slow_drip_of_a_large_stanza() {
    // 60 KiB of text fed one byte at a time: linear, not quadratic.
    let mut stanza = String::from("<message><body>");
    stanza.push_str(&"x".repeat(60 * 1024));
    stanza.push_str("</body></message>");
    let mut d = Decoder::new(Framing::Stream, Limits::default());
    d.feed(HEADER.as_bytes());
    assert!(matches!(d.next_event(), Ok(Some(StreamEvent::Header(_)))));
    for b in stanza.as_bytes() {
        d.feed(std::slice::from_ref(b));
        if let Some(ev) = d.next_event().unwrap() {
            assert_eq!(element(&ev).child_text("body", "jabber:client").map(|t| t.len()), Some(60 * 1024));
            return;
        }
    }
    panic!("no element");
}

#[test]
fn shrink_releases_memory() {
    let mut d = Decoder::new(Framing::Stream, Limits::default());
    d.feed(HEADER.as_bytes());
    d.feed(format!("<message><body>{}</body></message><pres", "y".repeat(30_000)).as_bytes());
    assert_eq!(drain(&mut d).unwrap().len(), 2);
    assert_eq!(d.buffered(), 5);
    d.shrink();
    assert_eq!(d.buffered(), 5);
    d.feed(b"ence/>");
    assert!(element(&d.next_event().unwrap().unwrap()).is("presence", "jabber:client"));
    d.shrink();
    assert_eq!(d.buffered(), 0);
    assert_eq!(d.default_ns(), "jabber:client");
}

#[test]
fn text_nodes_and_cdata_merge() {
    let el = parse_element("<a>x<![CDATA[<y>]]>&amp;z<b/>\r\nw</a>", &Limits::default()).unwrap();
    assert_eq!(el.nodes().len(), 3);
    assert_eq!(el.nodes()[0], Node::Text("x<y>&z".into()));
    assert_eq!(el.nodes()[2].as_text(), Some("\nw"));
    assert_eq!(el.text(), "x<y>&z\nw");
}

#[test]
fn parse_element_edges() {
    let l = Limits::default();
    assert!(parse_element("<?xml version='1.0' encoding='UTF-8'?>\n<a xmlns='u'/>\n", &l).is_ok());
    assert!(matches!(parse_element("<a>", &l), Err(Error::NotWellFormed(_))));
    assert!(matches!(parse_element("", &l), Err(Error::NotWellFormed(_))));
    assert!(matches!(parse_element("<a/><b/>", &l), Err(Error::NotWellFormed(_))));
    assert!(matches!(parse_element("<a/><", &l), Err(Error::NotWellFormed(_))));
    assert!(matches!(parse_element("<a/>x", &l), Err(Error::NotWellFormed(_))));
    assert!(matches!(parse_element("x<a/>", &l), Err(Error::NotWellFormed(_))));
    assert_eq!(parse_element("<a>&ent;</a>", &l), Err(Error::Restricted("entity reference")));
    let e =
        parse_element("<a xmlns='u'><stream:error xmlns:stream='http://etherx.jabber.org/streams'/></a>", &l).unwrap();
    assert!(e.has_child("error", STREAM_NS));
}

#[test]
fn write_escapes_and_quotes() {
    let el = Element::builder("m", "jabber:client").attr("a", "'\"<>&\t\n\r").text("<&>'\"\r]]>").build();
    let s = String::from_utf8(el.to_bytes("jabber:client")).unwrap();
    assert_eq!(s, "<m a='&apos;&quot;&lt;&gt;&amp;&#x9;&#xA;&#xD;'>&lt;&amp;&gt;'\"&#xD;]]&gt;</m>");
    assert_eq!(parse_element(&el.to_string(), &Limits::default()).unwrap(), el);
}

#[test]
fn declarations_in_scope_are_bounded() {
    let limits = Limits { max_attrs: 4, ..Limits::default() };
    // 2 levels × 4 declarations = 8 = 2 × max_attrs: fine.
    let ok =
        "<a xmlns:a='1' xmlns:b='2' xmlns:c='3' xmlns:d='4'><b xmlns:e='5' xmlns:f='6' xmlns:g='7' xmlns:h='8'/></a>";
    assert!(parse_element(ok, &limits).is_ok());
    let too_many =
        "<a xmlns:a='1' xmlns:b='2' xmlns:c='3' xmlns:d='4'><b xmlns:e='5' xmlns:f='6' xmlns:g='7' xmlns:h='8'>\
        <c xmlns:i='9'/></b></a>";
    assert_eq!(parse_element(too_many, &limits), Err(Error::TooManyAttrs));
    // Siblings do not accumulate.
    let siblings = format!("<a>{}</a>", "<b xmlns:e='5' xmlns:f='6' xmlns:g='7' xmlns:h='8'/>".repeat(10));
    assert!(parse_element(&siblings, &limits).is_ok());
}

#[test]
fn idle_footprint() {
    let size = std::mem::size_of::<Decoder>();
    assert!(size <= 256, "Decoder is {size} bytes");
    let mut d = Decoder::new(Framing::Stream, Limits::default());
    d.feed(HEADER.as_bytes());
    d.feed(b"<presence/>");
    assert_eq!(drain(&mut d).unwrap().len(), 2);
    d.shrink();
    assert_eq!(d.buffered(), 0);
}
