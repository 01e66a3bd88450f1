"""Fuzzing the XML stream parser: arbitrary bytes, whole and in pieces, and generated stanzas that come back as sent."""

from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from bridge.core.xmlstream import StreamError, StreamParser
from tests.unit.fuzzing import (
    STREAM_HEADER, TARGETS, chunked, elements, pieces, shape, target, xml_soup,
)


def parse(chunks, limit=10**7):
    """What a parser reports for ``chunks``: its events, and the condition it stopped on (or None)."""
    events = []
    parser = StreamParser(lambda header: events.append(("open", header.toXml())),
                          lambda element: events.append(("element", shape(element))),
                          lambda: events.append(("close",)), limit, "jabber:client")
    try:
        for chunk in chunks:
            parser.feed(chunk)
    except StreamError as error:
        return events, error.condition
    return events, None


RAW = st.one_of(xml_soup(), st.binary(max_size=200), xml_soup().map(lambda soup: STREAM_HEADER + soup))


@target("xml-stream", chunked(RAW), examples=200)
def stream_parser_in_pieces(value):
    """Only StreamError; one byte at a time, any cut, and whole give the same events and the same outcome."""
    data, cuts = value
    whole = parse([data])
    assert parse(pieces(data, cuts)) == whole
    assert parse([bytes([byte]) for byte in data]) == whole


@target("xml-stream-limit", chunked(RAW.map(lambda data: data * 40)), examples=50)
def stream_parser_small_limit(value):
    """With a small stanza limit and long inputs, still nothing but StreamError."""
    data, cuts = value
    parse(pieces(data, cuts), limit=256)


@target("xml-roundtrip", st.tuples(st.lists(elements(), min_size=1, max_size=4), st.lists(st.integers(0, 4096),
                                                                                           max_size=8)),
        examples=40)
def stanzas_come_back(value):
    """Serialised stanzas inside a stream header are parsed back to what was serialised."""
    stanzas, cuts = value
    data = STREAM_HEADER + b"".join(stanza.toXml().encode("utf-8") for stanza in stanzas)
    events, error = parse(pieces(data, sorted(cuts)))
    assert error is None, error
    assert [event[1] for event in events[1:]] == [shape(stanza) for stanza in stanzas]


class StreamParserFuzzTests(SynchronousTestCase):
    def test_arbitrary_bytes_in_pieces(self):
        """Arbitrary bytes and XML fragments raise only StreamError, and their cutting changes nothing."""
        TARGETS["xml-stream"].run()

    def test_small_stanza_limit(self):
        """Long inputs against a small stanza limit raise only StreamError."""
        TARGETS["xml-stream-limit"].run()

    def test_round_trip(self):
        """Generated stanzas survive serialisation and parsing, cut anywhere."""
        TARGETS["xml-roundtrip"].run()


class FoundByFuzzingTests(SynchronousTestCase):
    """Inputs the fuzzers found, kept as plain examples."""

    def test_fault_after_a_stanza_in_the_same_read(self):
        """A stanza before bytes that are not UTF-8 is delivered whether both come in one read or two."""
        data = STREAM_HEADER + b"<message/>\x80"
        self.assertEqual(parse([data]), parse([data[:-1], data[-1:]]))
        self.assertEqual(parse([data])[1], "not-well-formed")
        self.assertEqual(len(parse([data])[0]), 2)

    def test_bytes_that_look_like_utf16(self):
        """b'\\n\\x00' is refused however it is cut: expat used to guess UTF-16 when both bytes came together."""
        self.assertEqual(parse([b"\n\x00"]), ([], "not-well-formed"))
        self.assertEqual(parse([b"\n", b"\x00"]), ([], "not-well-formed"))

    def test_utf16_stream_refused(self):
        """A stream in UTF-16 (with a byte order mark) is refused, not read (RFC 6120 section 11.6)."""
        data = ("\ufeff" + STREAM_HEADER.decode() + "<message/>").encode("utf-16-le")
        self.assertEqual(parse([data]), ([], "not-well-formed"))

    def test_declared_encoding_other_than_utf8(self):
        """An XML declaration naming another encoding is <unsupported-encoding/>; UTF-8 is accepted."""
        latin = b"<?xml version='1.0' encoding='ISO-8859-1'?>" + STREAM_HEADER + b"<message/>"
        self.assertEqual(parse([latin]), ([], "unsupported-encoding"))
        events, error = parse([b"<?xml version='1.0' encoding='UTF-8'?>" + STREAM_HEADER + b"<message/>"])
        self.assertEqual((len(events), error), (2, None))
