"""Fuzzing SMPP framing and PDU decoding, the ESME protocol with its queue, and the SMS text functions.

The framer raises only FramingError (an impossible command_length) and cuts a
stream the same way whatever the reads; decoding raises only PDUError; a
generated PDU decodes to what was encoded.  An ESME bound to a fake SMSC
that sends anything at all logs no failure and writes only PDUs that
decode.  Texts split into parts that fit an SMS and join back.
"""

import struct

from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from bridge.gateways.sms import pdu as pdus, text as texts
from bridge.gateways.sms.queue import id_keys
from tests.unit.fuzzing import TARGETS, chunked, mutated, no_logged_failures, pieces, target
from tests.unit.test_sms_esme import Rig

COMMANDS = ("generic_nack", "submit_sm_resp", "deliver_sm", "enquire_link", "enquire_link_resp", "unbind",
            "unbind_resp", "bind_transceiver_resp", "alert_notification", "data_sm", "query_sm_resp",
            "submit_sm", "deliver_sm_resp")
# smpplib writes C-octet strings from str (as Latin-1; TLVs as UTF-8) and reads them as bytes.
C_OCTETS = st.text(st.characters(min_codepoint=1, max_codepoint=0x7F), max_size=15)
MESSAGE_IDS = st.sampled_from(("", "1", "0a", "FF", "12345678", "9" * 60, "f" * 60)) | C_OCTETS
RECEIPTS = st.sampled_from((
    b"id:1 sub:001 dlvrd:001 submit date:2401011200 done date:2401011201 stat:DELIVRD err:000 text:",
    b"id:0a stat:UNDELIV", b"id:\xb2 stat:DELIVRD", b"id: stat:", b"stat:EXPIRED id:12345678", b"id:" + b"f" * 200,
)) | st.binary(max_size=60)


@st.composite
def pdu_fields(draw, command):
    if command in ("deliver_sm", "submit_sm", "data_sm"):
        fields = {"source_addr": draw(C_OCTETS), "destination_addr": draw(C_OCTETS),
                  "esm_class": draw(st.sampled_from((0, 0x04, 0x08, 0x40, 0x44)) | st.integers(0, 255)),
                  "data_coding": draw(st.sampled_from((0, 1, 3, 8)) | st.integers(0, 255))}
        if command != "data_sm":
            fields["short_message"] = draw(RECEIPTS | st.binary(max_size=254))
        if command != "submit_sm" and draw(st.booleans()):
            fields["receipted_message_id"] = draw(MESSAGE_IDS.filter(bool))  # (an empty TLV is left out)
            fields["message_state"] = draw(st.integers(0, 9))
        return fields
    if command in ("submit_sm_resp", "data_sm_resp"):
        return {"message_id": draw(MESSAGE_IDS)}
    if command == "bind_transceiver_resp":
        return {"system_id": draw(C_OCTETS)}
    return {}


@st.composite
def encoded_pdus(draw):
    """(command, sequence, status, fields) of a PDU a SMSC could send."""
    command = draw(st.sampled_from(COMMANDS))
    sequence = draw(st.integers(0, 5) | st.integers(0, 2**32 - 1))
    status = draw(st.sampled_from((0, 0x58, 0x14, 0x0E, 0x08)) | st.integers(0, 2**32 - 1))
    return command, sequence, status, draw(pdu_fields(command))


def encode(value):
    command, sequence, status, fields = value
    return pdus.encode(command, sequence, status, **fields)


SEEDS = [encode(("deliver_sm", 1, 0, {"source_addr": "123", "destination_addr": "456", "esm_class": 4,
                                      "data_coding": 0, "short_message": b"id:1 stat:DELIVRD",
                                      "receipted_message_id": "1", "message_state": 2})),
         encode(("submit_sm_resp", 2, 0, {"message_id": "abc"})), encode(("enquire_link", 3, 0, {})),
         encode(("bind_transceiver_resp", 1, 0, {"system_id": "smsc"})), encode(("generic_nack", 9, 3, {}))]
HEADER_TOKENS = [struct.pack(">L", value) for value in (0, 16, 17, 65536, 65537, 2**32 - 1, 0x80000000, 0x80000004,
                                                        0x00000005, 0x00000015, 0x80000009)] + [b"\0", b"\xff"]
RAW_PDUS = mutated(SEEDS, HEADER_TOKENS)


@target("smpp-framing", chunked(st.lists(RAW_PDUS | st.binary(max_size=40), max_size=4).map(b"".join)),
        examples=100)
def framing(value):
    """Only FramingError; the same PDUs whole, cut anywhere, and byte by byte, up to an impossible length."""
    data, cuts = value

    def frames(chunks):
        framer, found = pdus.Framer(), []
        try:
            for chunk in chunks:
                found += framer.feed(chunk)
        except pdus.FramingError as error:
            return found + error.frames, str(error)
        return found, None

    whole = frames([data])
    assert frames(pieces(data, cuts)) == whole
    assert frames([bytes([byte]) for byte in data]) == whole


def whole_pdu(data):
    """``data`` with a command_length that says its own length, as the framer hands PDUs on."""
    data = data.ljust(16, b"\0")
    return struct.pack(">L", len(data)) + data[4:]


@target("smpp-decode", st.one_of(RAW_PDUS, st.binary(min_size=16, max_size=300)).map(whole_pdu), examples=150)
def decoding(data):
    """Only PDUError, whatever follows a PDU header."""
    try:
        pdus.decode(data)
    except pdus.PDUError:
        pass


@target("smpp-roundtrip", encoded_pdus(), examples=80)
def pdu_round_trip(value):
    """A generated PDU decodes to its command, sequence, status and fields."""
    command, sequence, status, fields = value
    decoded = pdus.decode(encode(value))
    assert (decoded.command, decoded.sequence, decoded.status) == (command, sequence, status)
    for name, expected in fields.items():
        if isinstance(expected, str):
            expected = expected.encode("ascii")
        actual = getattr(decoded, name)
        if actual is None and expected == b"":
            actual = b""  # (smpplib reads an empty short_message as None)
        assert actual == expected, (name, actual, expected)


ESME_OPERATIONS = st.lists(st.one_of(
    st.tuples(st.just("pdu"), encoded_pdus(), st.lists(st.integers(1, 64), max_size=3)),
    st.tuples(st.just("raw"), RAW_PDUS | st.binary(max_size=40)),
    st.tuples(st.just("answer"), st.integers(0, 2**32 - 1), MESSAGE_IDS),
    st.tuples(st.just("add"), st.text(max_size=400)),
    st.tuples(st.just("advance"), st.sampled_from((0.001, 1.0, 10.0, 30.0, 120.0))),
    st.tuples(st.just("drop")),
), min_size=1, max_size=10)


@target("smpp-esme", ESME_OPERATIONS, examples=60)
def esme(operations):
    """A bound ESME and its queue, fed anything a SMSC could send: no logged failure, and every PDU
    written decodes."""
    with no_logged_failures():
        rig = Rig()
        rig.start()
        for operation in operations:
            kind = operation[0]
            if kind == "pdu":
                _, value, cuts = operation
                for piece in pieces(encode(value), cuts):
                    rig.smsc.protocol.dataReceived(piece)
            elif kind == "raw":
                rig.smsc.protocol.dataReceived(operation[1])
            elif kind == "answer":
                written = [pdu for pdu in rig.smsc.received() if not pdu.command.endswith(("_resp", "_nack"))]
                if written:
                    request = written[-1]
                    fields = {"message_id": operation[2]} if request.command == "submit_sm" else {}
                    rig.smsc.answer(request, operation[1] % 2**32, **fields)
            elif kind == "add":
                rig.add(operation[1] or "x")
            elif kind == "advance":
                rig.clock.advance(operation[1])
            else:
                rig.smsc.drop()
                rig.clock.advance(60)
                if rig.smsc.connections and not rig.smsc.transport.disconnecting:
                    rig.smsc.bind()
        # Whatever is left is written as PDUs that decode (PDUError fails the check).
        rig.smsc.received()
        rig.link.stop()
        rig.queue.stop()


TEXTS = st.text(st.sampled_from(texts._BASIC.replace("\x1b", "") + "".join(texts._EXTENSION)), max_size=500) | st.text(
    max_size=300)


@target("sms-split", st.tuples(TEXTS, st.integers(0, 255), st.integers(1, 8)), examples=200)
def split_and_join(value):
    """Parts fit one SMS each, are at most max_parts, and decode and join back to the text (or a prefix
    of it when cut)."""
    text, reference, max_parts = value
    coding, esm_class, parts = texts.split(text, reference, max_parts)
    assert len(parts) <= max_parts
    bodies = []
    for number, part in enumerate(parts, start=1):
        assert len(part) <= (160 if coding == texts.DATA_CODING_GSM else 140)
        if esm_class & texts.ESM_CLASS_UDHI:
            concat, part = texts.parse_udh(part)
            assert concat == (reference, len(parts), number)
        bodies.append(texts.decode(part, coding))
    joined = "".join(bodies)
    assert joined == text if len(parts) < max_parts else text.startswith(joined)


@target("sms-decode", st.tuples(st.binary(max_size=200), st.integers(0, 255)), examples=200)
def decode_anything(value):
    """Any short message with any data_coding reads as text, with or without a UDH."""
    data, coding = value
    texts.decode(data, coding)
    concat, body = texts.parse_udh(data)
    assert concat is None or len(concat) == 3
    texts.decode(body, coding)


class SMSFuzzTests(SynchronousTestCase):
    def test_framing(self):
        """The SMPP framer raises only FramingError and cuts the same way whatever the reads."""
        TARGETS["smpp-framing"].run()

    def test_decoding(self):
        """Decoding mutated and arbitrary PDUs raises only PDUError."""
        TARGETS["smpp-decode"].run()

    def test_round_trip(self):
        """Generated PDUs decode to what was encoded."""
        TARGETS["smpp-roundtrip"].run()

    def test_esme(self):
        """A bound ESME fed arbitrary PDUs and bytes logs no failure and writes only valid PDUs."""
        TARGETS["smpp-esme"].run()

    def test_split(self):
        """Texts split into parts that fit an SMS and join back."""
        TARGETS["sms-split"].run()

    def test_decode(self):
        """Any short message and data_coding decode to text."""
        TARGETS["sms-decode"].run()


class FoundByFuzzingTests(SynchronousTestCase):
    """Inputs the fuzzers found, kept as plain examples."""

    def test_pdu_before_an_impossible_length_in_the_same_read(self):
        """A whole PDU followed, in the same read, by an impossible command_length is answered before the
        generic_nack that ends the link, as it is when the two arrive in separate reads."""
        framer = pdus.Framer()
        enquire = pdus.encode("enquire_link", 7)
        error = self.assertRaises(pdus.FramingError, framer.feed, enquire + b"\x00\x02\x31\x00")
        self.assertEqual(error.frames, [enquire])
        rig = Rig()
        rig.start()
        rig.smsc.protocol.dataReceived(enquire + b"\x00\x02\x31\x00")
        self.assertEqual([(pdu.command, pdu.sequence) for pdu in rig.smsc.received()],
                         [("enquire_link_resp", 7), ("generic_nack", 0)])
        self.assertTrue(rig.smsc.transport.disconnecting)

    def test_receipt_id_of_a_superscript_digit(self):
        """A receipt 'id:\\xb2' (Latin-1 superscript two, a Unicode digit) is a receipt for an unknown id:
        answered ESME_ROK; it raised ValueError in the queue and was answered ESME_RX_T_APPN."""
        rig = Rig()
        rig.start()
        with no_logged_failures():
            rig.smsc.send("deliver_sm", 5, source_addr="123", destination_addr="456", esm_class=4,
                          short_message=b"id:\xb2 stat:DELIVRD")
        [answer] = rig.smsc.received()
        self.assertEqual((answer.command, answer.status), ("deliver_sm_resp", pdus.ESME_ROK))

    def test_long_message_ids(self):
        """Message ids longer than SMPP's 64 characters are looked up as written only: 5000 hex digits
        made a decimal form of over 4300 digits, which Python refuses to write."""
        self.assertEqual(id_keys("f" * 5000), {"f" * 5000})
        self.assertEqual(id_keys("1" * 5000), {"1" * 5000})
        self.assertEqual(id_keys("0A"), {"0a", "10"})
        self.assertEqual(id_keys("10"), {"10", "16", "a"})
