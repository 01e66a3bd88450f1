"""SMS text handling: alphabet choice, splitting at safe boundaries, the sender's name."""

from twisted.trial.unittest import SynchronousTestCase

from bridge.gateways.sms import pdu as pdus, text as texts


class AlphabetTests(SynchronousTestCase):
    def test_gsm_or_ucs2(self):
        """A text in the GSM alphabet (escape table included) is GSM; anything else is UCS-2."""
        table = [("hello", True), ("Grüße à Ñoño §¿¡", True), ("{[~]}|^\\€", True), ("naïve", False),
                 ("привет", False), ("emoji 😀", False), ("`", False), ("", True)]
        for value, expected in table:
            self.assertEqual(texts.fits_gsm(value), expected, value)
            coding, _, _ = texts.split(value, 1)
            self.assertEqual(coding, texts.DATA_CODING_GSM if expected else texts.DATA_CODING_UCS2, value)

    def test_encoding_table(self):
        """Characters map to their GSM 03.38 codes; extension characters are escaped with 0x1B."""
        table = [("@", b"\x00"), ("A", b"A"), ("£", b"\x01"), ("§", b"\x5f"), ("¿", b"\x60"),
                 ("€", b"\x1b\x65"), ("{", b"\x1b\x28"), ("\f", b"\x1b\x0a"), ("|", b"\x1b\x40"),
                 ("Ä", b"\x5b"), ("à", b"\x7f")]
        for char, encoded in table:
            self.assertEqual(texts.gsm_encode(char), encoded, char)
            self.assertEqual(texts.gsm_decode(encoded), char, char)

    def test_decode_by_data_coding(self):
        """Received short messages are decoded by their data_coding."""
        self.assertEqual(texts.decode("hé😀".encode("utf-16-be"), 8), "hé😀")
        self.assertEqual(texts.decode("café".encode("latin-1"), 3), "café")
        self.assertEqual(texts.decode(texts.gsm_encode("Ok €5"), 0), "Ok €5")


def reassemble(parts, coding, esm_class):
    """The text a phone shows for these parts."""
    bodies = []
    for part in parts:
        if esm_class & texts.ESM_CLASS_UDHI:
            _, part = texts.parse_udh(part)
        bodies.append(part)
    return texts.decode(b"".join(bodies), coding)


class SplitTests(SynchronousTestCase):
    def test_single_part_limits(self):
        """160 GSM septets or 70 UCS-2 characters fit one SMS with no UDH; one more needs two parts."""
        table = [("a" * 160, 1), ("a" * 161, 2), ("€" * 80, 1), ("€" * 81, 2), ("я" * 70, 1), ("я" * 71, 2),
                 ("a" * 153 * 3, 3), ("a" * (153 * 3 + 1), 4), ("я" * 67 * 2, 2), ("я" * (67 * 2 + 1), 3)]
        for value, count in table:
            coding, esm_class, parts = texts.split(value, 7)
            self.assertEqual(len(parts), count, (value[:3], len(value)))
            self.assertEqual(esm_class, 0 if count == 1 else texts.ESM_CLASS_UDHI)
            self.assertEqual(reassemble(parts, coding, esm_class), value)

    def test_udh(self):
        """Each part starts with the 8-bit reference concatenation UDH: reference, total, number."""
        _, _, parts = texts.split("x" * 400, 300)
        self.assertEqual([part[:6] for part in parts],
                         [bytes([5, 0, 3, 300 % 256, 3, n]) for n in (1, 2, 3)])
        for part in parts:
            self.assertLessEqual(len(part), 6 + 153)

    def test_escape_never_cut(self):
        """An escaped character that would straddle the 153-septet boundary moves whole to the next part."""
        for prefix in (151, 152, 153):
            value = "a" * prefix + "€" + "b" * 100
            coding, esm_class, parts = texts.split(value, 1)
            self.assertEqual(coding, texts.DATA_CODING_GSM)
            for part in parts:
                body = texts.parse_udh(part)[1]
                self.assertNotEqual(body[-1:], b"\x1b", prefix)
                self.assertLessEqual(len(body), 153)
            self.assertEqual(reassemble(parts, coding, esm_class), value)
        first = texts.parse_udh(texts.split("a" * 152 + "€" + "b" * 20, 1)[2][0])[1]
        self.assertEqual(first, b"a" * 152)

    def test_surrogate_pair_never_cut(self):
        """A character outside the BMP (a UTF-16 surrogate pair) is never split between two parts."""
        for prefix in (65, 66, 67):
            value = "я" * prefix + "😀" + "ж" * 40
            coding, esm_class, parts = texts.split(value, 1)
            self.assertEqual(coding, texts.DATA_CODING_UCS2)
            for part in parts:
                body = texts.parse_udh(part)[1]
                self.assertEqual(len(body) % 2, 0)
                self.assertLessEqual(len(body), 134)
                body.decode("utf-16-be")  # strict: a lone surrogate raises
            self.assertEqual(reassemble(parts, coding, esm_class), value)

    def test_max_parts_cuts_the_text(self):
        """Past max_parts the text is cut at a character boundary and the UDH counts the parts kept."""
        coding, esm_class, parts = texts.split("a" * 1000, 9, max_parts=2)
        self.assertEqual(len(parts), 2)
        self.assertEqual([part[4] for part in parts], [2, 2])

    def test_parts_encode_as_submit_sm(self):
        """Every part fits a submit_sm short_message (at most 254 octets)."""
        for value in ("a" * 2000, "€" * 700, "я😀" * 300):
            _, esm_class, parts = texts.split(value, 1)
            for part in parts:
                data = pdus.encode("submit_sm", 1, destination_addr="1555", esm_class=esm_class,
                                   short_message=part)
                self.assertEqual(pdus.decode(data).short_message, part)


class SenderTests(SynchronousTestCase):
    def test_sender_name_before_the_body(self):
        """The SMS reads "Alice: are you coming?"."""
        self.assertEqual(texts.with_sender(texts.display_name("alice"), " are you coming? "),
                         "Alice: are you coming?")
        self.assertEqual(texts.with_sender("", "hi"), "hi")

    def test_parse_udh_16_bit_reference(self):
        """A 16-bit reference UDH (IEI 0x08) is read as well."""
        concat, body = texts.parse_udh(bytes([6, 8, 4, 1, 2, 3, 1]) + b"hi")
        self.assertEqual(concat, (258, 3, 1))
        self.assertEqual(body, b"hi")
