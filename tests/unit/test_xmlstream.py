"""The restricted stream parser: refusals, size limit, byte-at-a-time parsing."""

import gc
import weakref

from twisted.trial.unittest import SynchronousTestCase
from twisted.words.xish import domish

from bridge.core.stanza import readdress
from bridge.core.xmlstream import (NS_STREAMS, NS_XML, Dormancy, StreamError, StreamParser, known_as, parse_element,
                                   serialize)

HEADER = f"<stream:stream xmlns='jabber:client' xmlns:stream='{NS_STREAMS}' to='localhost' version='1.0'>"

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>
<message><body>&lol9;</body></message>"""


class Recorder:
    def __init__(self, limit=10000, dormancy=None, content_namespace="jabber:client"):
        self.opened = []
        self.elements = []
        self.closed = 0
        self.parser = StreamParser(self.opened.append, self.elements.append, self.close, limit, content_namespace,
                                   dormancy)

    def close(self):
        self.closed += 1


class RefusalTests(SynchronousTestCase):
    def assertRefused(self, document, condition):
        recorder = Recorder()
        error = self.assertRaises(StreamError, recorder.parser.feed, document.encode())
        self.assertEqual(error.condition, condition)
        return recorder

    def test_billion_laughs(self):
        """A DTD with nested entities is refused before any entity is expanded."""
        recorder = self.assertRefused(BILLION_LAUGHS, "restricted-xml")
        self.assertEqual(recorder.elements, [])

    def test_internal_subset_alone(self):
        """Even an empty DOCTYPE is refused."""
        self.assertRefused("<!DOCTYPE stream>" + HEADER, "restricted-xml")

    def test_comment(self):
        """Comments inside the stream are refused."""
        self.assertRefused(HEADER + "<!-- hello -->", "restricted-xml")

    def test_processing_instruction(self):
        """Processing instructions are refused."""
        self.assertRefused(HEADER + "<?foo bar?>", "restricted-xml")

    def test_undefined_entity(self):
        """An entity reference with no declaration is not well-formed."""
        self.assertRefused(HEADER + "<message><body>&lol;</body></message>", "not-well-formed")

    def test_wrong_root(self):
        """A root other than stream:stream is an invalid namespace."""
        self.assertRefused("<html>", "invalid-namespace")

    def test_deep_nesting(self):
        """Elements nested deeper than any real payload are a policy violation."""
        self.assertRefused(HEADER + "<message>" + "<a>" * 100, "policy-violation")

    def test_text_between_stanzas(self):
        """Text at stream level is not allowed; whitespace (keepalives) is."""
        recorder = Recorder()
        recorder.parser.feed((HEADER + "  \n ").encode())
        self.assertRaises(StreamError, recorder.parser.feed, b"hello")


class SizeLimitTests(SynchronousTestCase):
    def test_oversize_stanza_in_one_chunk(self):
        """A stanza larger than the limit is a policy violation."""
        recorder = Recorder(limit=2000)
        recorder.parser.feed(HEADER.encode())
        big = "<message><body>" + "x" * 3000 + "</body></message>"
        error = self.assertRaises(StreamError, recorder.parser.feed, big.encode())
        self.assertEqual(error.condition, "policy-violation")
        self.assertEqual(recorder.elements, [])

    def test_oversize_stanza_never_ending(self):
        """An unfinished stanza is refused as soon as its bytes pass the limit."""
        recorder = Recorder(limit=2000)
        recorder.parser.feed(HEADER.encode() + b"<message><body>")
        for _ in range(3):
            recorder.parser.feed(b"y" * 500)
        error = self.assertRaises(StreamError, recorder.parser.feed, b"y" * 600)
        self.assertEqual(error.condition, "policy-violation")

    def test_unfinished_start_tag(self):
        """An opening tag that never ends is measured too (its attribute never closes)."""
        recorder = Recorder(limit=2000)
        recorder.parser.feed(HEADER.encode() + b"<message to='x' a='")
        recorder.parser.feed(b"A" * 1500)
        error = self.assertRaises(StreamError, recorder.parser.feed, b"A" * 600)
        self.assertEqual(error.condition, "policy-violation")

    def test_unfinished_header(self):
        """An endless stream header is refused as well."""
        recorder = Recorder(limit=2000)
        recorder.parser.feed(b"<stream:stream a='")
        self.assertRaises(StreamError, recorder.parser.feed, b"B" * 2100)

    def test_whitespace_keepalives_do_not_add_up(self):
        """Whitespace pings between stanzas are not counted as one huge stanza."""
        recorder = Recorder(limit=2000)
        recorder.parser.feed(HEADER.encode())
        for _ in range(100):
            recorder.parser.feed(b" ")
            recorder.parser.feed(b"<presence/>")
        for _ in range(30):
            recorder.parser.feed(b"\n" * 100)
        self.assertEqual(len(recorder.elements), 100)

    def test_many_small_stanzas_pass(self):
        """The limit counts one stanza at a time, not the stream."""
        recorder = Recorder(limit=2000)
        recorder.parser.feed(HEADER.encode())
        for _ in range(50):
            recorder.parser.feed(("<message><body>" + "z" * 1000 + "</body></message>").encode())
        self.assertEqual(len(recorder.elements), 50)


class ParsingTests(SynchronousTestCase):
    DOCUMENT = (HEADER + "<message to='bob@localhost' xml:lang='en'><body>caf\u00e9 &amp; &lt;tea&gt;</body>"
                "<x xmlns='urn:example'><y a='1'/></x></message><iq type='get' id='1'/></stream:stream>")

    def parse(self, chunks):
        recorder = Recorder()
        for chunk in chunks:
            recorder.parser.feed(chunk)
        return recorder

    def test_byte_at_a_time(self):
        """Feeding one byte at a time gives exactly what one feed gives."""
        data = self.DOCUMENT.encode()
        whole = self.parse([data])
        split = self.parse([data[i:i + 1] for i in range(len(data))])
        self.assertEqual([e.toXml() for e in whole.elements], [e.toXml() for e in split.elements])
        self.assertEqual(len(whole.elements), 2)
        self.assertEqual(split.closed, 1)

    def test_content_namespace_stripped(self):
        """Stanzas lose jabber:client so they can leave by any stream; other namespaces stay."""
        message = self.parse([self.DOCUMENT.encode()]).elements[0]
        self.assertIsNone(message.uri)
        self.assertIsNone(message.body.uri)
        self.assertEqual(message.x.uri, "urn:example")
        self.assertEqual(str(message.body), "caf\u00e9 & <tea>")
        self.assertEqual(message.getAttribute(("http://www.w3.org/XML/1998/namespace", "lang")), "en")

    def test_parsed_stanza_holds_no_reference_cycle(self):
        """A parsed stanza is freed by its last reference, not left for the cycle collector."""
        recorder = self.parse([self.DOCUMENT.encode()])
        message = recorder.elements.pop(0)
        self.assertEqual([child.name for child in message.x.elements()], ["y"])
        gc.disable()
        self.addCleanup(gc.enable)
        freed = weakref.ref(message)
        del message
        self.assertIsNone(freed())

    def test_reset_starts_a_new_stream(self):
        """After a reset (STARTTLS, SASL) a new header is accepted."""
        recorder = Recorder()
        recorder.parser.feed(HEADER.encode())
        recorder.parser.reset()
        recorder.parser.feed(HEADER.encode())
        self.assertEqual(len(recorder.opened), 2)


class RestTests(SynchronousTestCase):
    """A quiet stream lets go of its expat parser, and the next bytes are parsed as if it never had."""

    def resting(self, recorder):
        recorder.parser.rest()
        return recorder.parser._parser is None

    def test_rests_between_stanzas_and_parses_on(self):
        """After a rest, stanzas parse with the stream's namespaces, and the end of the stream is seen."""
        recorder = Recorder()
        recorder.parser.feed((HEADER + "<message to='a@b'><body>one</body></message> ").encode())
        self.assertTrue(self.resting(recorder))
        recorder.parser.feed(b"<message to='a@b'><body>two</body></message></stream:stream>")
        self.assertEqual([(element.uri, str(element.body)) for element in recorder.elements],
                         [(None, "one"), (None, "two")])
        self.assertEqual(recorder.closed, 1)

    def test_prefixes_of_the_header_survive(self):
        """A server stream's dialback prefix, declared on its header, still binds after a rest."""
        header = (f"<stream:stream xmlns='jabber:server' xmlns:stream='{NS_STREAMS}' "
                  "xmlns:db='jabber:server:dialback' version='1.0'>")
        recorder = Recorder(content_namespace="jabber:server")
        recorder.parser.feed(header.encode())
        self.assertTrue(self.resting(recorder))
        recorder.parser.feed(b"<db:result to='a' from='b'>key</db:result>")
        self.assertEqual([(element.uri, element.name) for element in recorder.elements],
                         [("jabber:server:dialback", "result")])

    def test_no_rest_with_anything_unparsed(self):
        """An unfinished tag, an open stanza or half a UTF-8 character keeps the parser."""
        for tail in (b"<mess", b"<message><body>", "<message><body>\u00e9".encode()[:-1]):
            recorder = Recorder()
            recorder.parser.feed(HEADER.encode() + tail)
            self.assertFalse(self.resting(recorder), tail)

    def test_no_rest_before_the_header(self):
        """Before the stream opens there is no header to resume from."""
        recorder = Recorder()
        recorder.parser.feed(b"<?xml version='1.0'?>")
        self.assertFalse(self.resting(recorder))

    def test_size_limit_counts_across_a_rest(self):
        """After a rest a stanza is measured from its own start: what came before the rest does not count,
        and what follows it does."""
        recorder = Recorder(limit=200)
        recorder.parser.feed(HEADER.encode() + b"<message><body>" + b"x" * 150 + b"</body></message>")
        self.assertTrue(self.resting(recorder))
        recorder.parser.feed(b"<message><body>" + b"x" * 150)
        recorder.parser.feed(b"</body></message>")
        self.assertEqual(len(recorder.elements), 2)
        self.assertTrue(self.resting(recorder))
        recorder.parser.feed(b"<message><body>" + b"x" * 150)
        error = self.assertRaises(StreamError, recorder.parser.feed, b"x" * 100)
        self.assertEqual(error.condition, "policy-violation")

    def test_ends_between_stanzas_while_resting(self):
        """A resting parser has nothing pending: a stream restart may follow."""
        recorder = Recorder()
        recorder.parser.feed(HEADER.encode())
        self.assertTrue(self.resting(recorder))
        self.assertTrue(recorder.parser.ends_between_stanzas())

    def test_dormancy_rests_only_what_stayed_quiet(self):
        """A parser fed in the last period stays awake; one fed before it and not since rests at the tick."""
        dormancy = Dormancy()
        quiet, busy = Recorder(dormancy=dormancy), Recorder(dormancy=dormancy)
        quiet.parser.feed(HEADER.encode())
        busy.parser.feed(HEADER.encode())
        dormancy.tick()
        busy.parser.feed(b" ")
        dormancy.tick()
        self.assertIsNone(quiet.parser._parser)
        self.assertIsNotNone(busy.parser._parser)
        dormancy.tick()
        self.assertIsNone(busy.parser._parser)


class SerializeTests(SynchronousTestCase):
    """serialize() writes what domish's toXml() writes, for default namespaces and prefixes alike."""

    PARSED = [
        "<message xmlns='jabber:client' to='b@x/y' type='chat' id='1'>"
        "<body>hi &amp; &lt;there&gt; 'q' \"d\"</body></message>",
        "<message xmlns='jabber:client' to='b@x' xml:lang='en'><body xml:lang='fr'>salut</body>"
        "<x xmlns='jabber:x:oob'><url>http://a?b=1&amp;c=2</url></x>"
        "<active xmlns='http://jabber.org/protocol/chatstates'/></message>",
        "<iq xmlns='jabber:client' type='result' id='r'><query xmlns='jabber:iq:roster'>"
        "<item jid='a@b' name='A &apos;n&quot; &lt;' subscription='both'><group>G</group></item></query></iq>",
        "<presence xmlns='jabber:client'><x:y xmlns:x='urn:x'/></presence>",
        "<message xmlns='jabber:client'><foo:bar xmlns:foo='urn:foo' foo:attr='1'/></message>",
        "<message xmlns='jabber:client'><z xmlns='urn:z' xmlns:p='urn:p' p:a='1'><p:in/></z></message>",
    ]

    def built(self):
        plain = domish.Element(("jabber:client", "message"))
        plain["to"] = "a@b"
        plain.addElement("body", content="x<y & z")
        plain.addElement(("urn:q", "q")).addElement("inner")
        no_namespace = domish.Element((None, "message"))
        no_namespace.addElement("body", content="x")
        nested = domish.Element(("urn:a", "a"))
        child = nested.addElement(("urn:b", "b"))
        child.addElement("c")
        child.addChild(domish.Element((None, "d")))
        raw = domish.Element(("jabber:client", "message"))
        raw.addRawXml("<raw a='&amp;'/>")
        prefixed = domish.Element(("jabber:client", "message"))
        prefixed.addElement(("urn:x", "x"), defaultUri="urn:y")
        xml_namespace = domish.Element(("jabber:client", "iq"))
        xml_namespace.addElement((NS_XML, "q"))
        return [plain, no_namespace, nested, raw, xml_namespace, prefixed]

    def test_same_text_as_domish(self):
        elements = [parse_element(text) for text in self.PARSED] + self.built()
        for element in elements:
            self.assertEqual(serialize(element), element.toXml())
        # The cases above include both ways: the ones written here and the ones handed to domish.
        self.assertIn("xmlns:xn0=", serialize(elements[-1]))
        self.assertIn(" xml:lang='fr'", serialize(elements[1]))


class KnownTextTests(SynchronousTestCase):
    def test_known_text_lasts_while_the_element_is_unchanged(self):
        """A text given by known_as is what serialize answers until the element's attributes change,
        a child is added, or its children are replaced; then it is serialised afresh."""
        message = parse_element("<message xmlns='jabber:client' to='b@h'><body>x</body></message>")
        changes = [lambda: message.__setitem__("to", "c@h"), lambda: message.addElement("thread", content="t"),
                   lambda: setattr(message, "children", list(message.children))]
        for change in changes:
            known_as(message, "<known/>")
            self.assertEqual(serialize(message), "<known/>")
            change()
            self.assertEqual(serialize(message), message.toXml())



class SharedChildrenTests(SynchronousTestCase):
    def test_copies_write_their_shared_children_once(self):
        """The copies ``readdress`` makes of one stanza serialise as domish does; the children's text is made
        for the first and reused for the others, and a copy whose children changed is written afresh."""
        message = parse_element("<message xmlns='jabber:client' type='groupchat'><body>a &amp; b</body>"
                                "<x xmlns='urn:example'><y/></x></message>")
        copies = [readdress(message, f"u{number}@localhost/r", "room@conference.localhost/Nick")
                  for number in range(3)]
        for copy in copies:
            self.assertEqual(serialize(copy), copy.toXml())
        shared = copies[0].__dict__["shared_children"]
        self.assertIs(copies[2].__dict__["shared_children"], shared)
        self.assertIn("<body>a &amp; b</body>", shared.text)
        copies[1].addElement("delay", content="later")
        copies[2].children = [child for child in copies[2].children if child.name != "body"]
        for copy in copies:
            self.assertEqual(serialize(copy), copy.toXml())
        self.assertNotIn("later", serialize(copies[0]))

    def test_a_child_that_needs_a_prefix_goes_to_domish(self):
        message = domish.Element(("jabber:client", "message"))
        message.addElement(("urn:a", "a")).addElement(("urn:b", "b"), defaultUri="urn:a")
        copy = readdress(message, "u@localhost", "room@conference.localhost")
        self.assertEqual(serialize(copy), copy.toXml())
