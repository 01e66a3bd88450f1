"""Tests for bridge.gateways.sip.addressing: XEP-0106, local and foreign addresses, numbers."""

from twisted.trial.unittest import SynchronousTestCase

from bridge.gateways.sip.addressing import (
    AddressError, AddressMap, escape_node, is_canonical_escape, normalize_number, unescape_node,
)

MAP = AddressMap({"localhost", "Example.ORG"}, "sip.localhost")

# (unescaped, escaped): every escape of XEP-0106 and the backslash rules.
ESCAPE_CASES = [
    ("carol@pbx.example", "carol\\40pbx.example"),
    ("mary ann", "mary\\20ann"),
    ('say "hi"', "say\\20\\22hi\\22"),
    ("r&d", "r\\26d"),
    ("o'neil", "o\\27neil"),
    ("a/b", "a\\2fb"),
    ("::x::", "\\3a\\3ax\\3a\\3a"),
    ("<x>", "\\3cx\\3e"),
    ("d:\\tmp", "d\\3a\\tmp"),          # \t is no escape: the backslash stays
    ("d:\\\\tmp", "d\\3a\\\\tmp"),      # two backslashes, neither before a code
    ("d:\\5cfiles", "d\\3a\\5c5cfiles"),  # backslash before 5c must be escaped
    ("x\\20y", "x\\5c20y"),            # a literal \20 survives the round trip
    ("x\\2gy", "x\\2gy"),              # \2g is not a code
    ("plain", "plain"),
    ("ünïcode", "ünïcode"),
]


class EscapeTests(SynchronousTestCase):
    def test_escape_table(self):
        """Each character XEP-0106 lists is escaped, and a backslash only before a code."""
        for text, escaped in ESCAPE_CASES:
            self.assertEqual(escape_node(text), escaped, text)

    def test_unescape_table(self):
        """Unescaping is the exact inverse of escaping on every case of the table."""
        for text, escaped in ESCAPE_CASES:
            self.assertEqual(unescape_node(escaped), text, escaped)
            self.assertTrue(is_canonical_escape(escaped), escaped)

    def test_sequences_that_stay(self):
        """Only the ten codes are unescaped; other backslash sequences are left as they are."""
        for node in ("a\\2gb", "a\\ab", "a\\", "\\4", "a\\41"):
            self.assertEqual(unescape_node(node), node)

    def test_one_pass(self):
        """Unescaping is one left-to-right pass: \\5c5c gives \\5c, not a backslash."""
        self.assertEqual(unescape_node("\\5c5c"), "\\5c")
        self.assertEqual(unescape_node("\\5c40"), "\\40")

    def test_not_canonical(self):
        """A \\5c that escapes nothing is not the canonical escape of its text."""
        for node in ("a\\5cb", "x\\5c2g"):
            self.assertFalse(is_canonical_escape(node), node)

    def test_spaces_at_the_ends(self):
        """A localpart may not begin or end with a space, escaped or not."""
        for text in (" a", "a ", " "):
            self.assertRaises(AddressError, escape_node, text)
        for node in ("\\20a", "a\\20"):
            self.assertRaises(AddressError, unescape_node, node)

    def test_empty(self):
        """An empty localpart is refused both ways."""
        self.assertRaises(AddressError, escape_node, "")
        self.assertRaises(AddressError, unescape_node, "")


# (SIP URI, JID, URI mapped back from the JID)
MAPPING_CASES = [
    ("sip:alice@localhost", "alice@localhost", "sip:alice@localhost"),
    ("sip:Alice@LOCALHOST", "alice@localhost", "sip:alice@localhost"),
    ("sips:alice@localhost", "alice@localhost", "sip:alice@localhost"),
    ("sip:alice@example.org:5070;transport=tcp", "alice@example.org", "sip:alice@example.org"),
    ("sip:alice@localhost;gr=phone", "alice@localhost/phone", "sip:alice@localhost;gr=phone"),
    ("sip:carol@pbx.example", "carol\\40pbx.example@sip.localhost", "sip:carol@pbx.example"),
    ("sip:carol@PBX.example;transport=udp", "carol\\40pbx.example@sip.localhost", "sip:carol@pbx.example"),
    ("sip:carol@pbx.example:5070", "carol\\40pbx.example\\3a5070@sip.localhost", "sip:carol@pbx.example:5070"),
    ("sip:a%20b@pbx.example", "a\\20b\\40pbx.example@sip.localhost", "sip:a%20b@pbx.example"),
    ("sip:a%40b@pbx.example", "a\\40b\\40pbx.example@sip.localhost", "sip:a%40b@pbx.example"),
    ("sip:x@[2001:db8::1]", "x\\40[2001\\3adb8\\3a\\3a1]@sip.localhost", "sip:x@[2001:db8::1]"),
    ("sip:carol@pbx.example;gr=abc", "carol\\40pbx.example@sip.localhost/abc", "sip:carol@pbx.example;gr=abc"),
    ("sip:+1-555-123-4567@pbx.example;user=phone", "+15551234567\\40pbx.example@sip.localhost",
     "sip:+15551234567@pbx.example;user=phone"),
    ("tel:+1-555-123-4567", "+15551234567@sip.localhost", "tel:+15551234567"),
    ("tel:+33.1.23.45.67.89;ext=12", "+33123456789@sip.localhost", "tel:+33123456789"),
]


class MappingTests(SynchronousTestCase):
    def test_uri_to_jid(self):
        """Local users keep their identity, foreign addresses and numbers become gateway JIDs."""
        for uri, jid, _ in MAPPING_CASES:
            self.assertEqual(MAP.jid_for_uri(uri).full(), jid, uri)

    def test_jid_to_uri(self):
        """Each JID maps back to the address of record it stands for."""
        for _, jid, back in MAPPING_CASES:
            self.assertEqual(str(MAP.uri_for_jid(jid)), back, jid)

    def test_remote_xmpp_user(self):
        """A JID of another XMPP domain maps to the SIP URI of that domain (policy is the caller's)."""
        self.assertEqual(str(MAP.uri_for_jid("dave@xmpp.example")), "sip:dave@xmpp.example")

    def test_prompt(self):
        """The XEP-0100 prompt takes a SIP URI, user@host or a number, and gives a bare JID."""
        for typed, jid in [("sip:carol@pbx.example", "carol\\40pbx.example@sip.localhost"),
                           ("carol@pbx.example", "carol\\40pbx.example@sip.localhost"),
                           ("  sip:carol@pbx.example;gr=x ", "carol\\40pbx.example@sip.localhost"),
                           ("+1 555 123 4567", "+15551234567@sip.localhost"),
                           ("tel:+15551234567", "+15551234567@sip.localhost"),
                           ("alice@localhost", "alice@localhost")]:
            self.assertEqual(MAP.jid_for_prompt(typed).full(), jid, typed)

    def test_refused_uris(self):
        """URIs with no JID are refused with a message naming the problem."""
        for uri, words in [("mailto:carol@pbx.example", "scheme"),
                           ("sip:pbx.example", "no user"),
                           ("sip:x@sip.localhost", "gateway's own domain"),
                           ("sip:a b@pbx.example", "malformed"),
                           ("sip:%ff@pbx.example", "not UTF-8"),
                           ("tel:5551234", "not a global number"),
                           ("tel:+1234567890123456", "more than 15"),
                           ("sip:a%00@localhost", "not a valid JID")]:
            with self.assertRaises(AddressError) as caught:
                MAP.jid_for_uri(uri)
            self.assertIn(words, str(caught.exception), uri)

    def test_refused_jids(self):
        """Gateway JIDs that would loop or are not addresses are refused, naming the problem."""
        for jid, words in [("carol\\40localhost@sip.localhost", "local user"),
                           ("carol\\40sip.localhost@sip.localhost", "own domain"),
                           ("carol@sip.localhost", "not user@host"),
                           ("a\\5cb\\40pbx.example@sip.localhost", "canonical"),
                           ("sip.localhost", "no localpart"),
                           ("a\\40b\\40bad_host@sip.localhost", "not a SIP address"),
                           ("+15551234567@sip.localhost/r", "no resources"),
                           ("@@", "malformed JID")]:
            with self.assertRaises(AddressError) as caught:
                MAP.uri_for_jid(jid)
            self.assertIn(words, str(caught.exception), jid)

    def test_numbers(self):
        """Visual separators are dropped; local numbers and letters are refused."""
        self.assertEqual(normalize_number("+44 (20) 7946-0958"), "+442079460958")
        for text in ("020 7946 0958", "+44abc", "+", "tel:"):
            self.assertRaises(AddressError, normalize_number, text)

    def test_long_localpart(self):
        """A foreign address too long for a JID localpart is refused."""
        self.assertRaises(AddressError, MAP.jid_for_uri, "sip:" + "a" * 1020 + "@pbx.example")


class RoomAddressTests(SynchronousTestCase):
    ROOMS = AddressMap({"localhost"}, "sip.localhost", {"Conference.localhost"})

    def test_room_addresses_both_ways(self):
        """A room of a chat service of this server is its own SIP address: the user part, unescaped, is the
        room's XEP-0106 localpart, and back; a gr parameter is an occupant's nick."""
        for uri, jid in [("sip:room@conference.localhost", "room@conference.localhost"),
                         ("sip:my%20room@conference.localhost", "my\\20room@conference.localhost"),
                         ("sip:a%2Fb@conference.localhost", "a\\2fb@conference.localhost"),
                         ("sip:room@conference.localhost;gr=Bob", "room@conference.localhost/Bob")]:
            self.assertEqual(self.ROOMS.jid_for_uri(uri).full(), jid, uri)
            self.assertEqual(self.ROOMS.jid_for_uri(self.ROOMS.uri_for_jid(jid)).full(), jid, jid)
        self.assertEqual(str(self.ROOMS.uri_for_jid("my\\20room@conference.localhost")),
                         "sip:my%20room@conference.localhost")

    def test_without_room_domains_a_service_is_foreign(self):
        """Without the room domains, a SIP address on the service's name is a foreign SIP address."""
        self.assertEqual(MAP.jid_for_uri("sip:room@conference.localhost").full(),
                         "room\\40conference.localhost@sip.localhost")
