"""The ASCII fast path of JID parsing (``stanza.prepared_parts``) against Twisted's stringprep parsing.

For any ASCII text both must agree: the same three parts, or both refuse
it.  The texts are drawn mostly from the characters that matter to the
rules (the separators, what the profiles refuse, case, dots and hyphens).
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from twisted.words.protocols.jabber.jid import InvalidFormat, parse

from bridge.core import stanza

RULE_CHARACTERS = list("aAzZ09.-@/ _+&'\"<>:\x00\x1f\x7f\t=!~")
ASCII_TEXTS = (st.text(st.sampled_from(RULE_CHARACTERS), max_size=24)
               | st.text(st.characters(max_codepoint=127), max_size=24))
MALFORMED = (InvalidFormat, UnicodeError, IndexError)


def outcome(function, text):
    try:
        return function(text)
    except MALFORMED:
        return "malformed"


class ASCIIFastPathTests(SynchronousTestCase):
    @settings(max_examples=3000, deadline=None, derandomize=True)
    @given(ASCII_TEXTS)
    def test_same_as_stringprep(self, text):
        self.assertEqual(outcome(stanza.prepared_parts, text), outcome(parse, text))

    def test_examples(self):
        """Cases each rule decides, checked against stringprep as well."""
        cases = {
            "Alice@Example.COM/Phone X": ("alice", "example.com", "Phone X"),
            "+15551234@sms.localhost": ("+15551234", "sms.localhost", None),
            "example.com.": (None, "example.com.", None),
            "room@conference.localhost/nick/with/slashes": ("room", "conference.localhost", "nick/with/slashes"),
            "host/res@x": (None, "host", "res@x"),
            "@host": (None, "host", None),
            "a b@host": "malformed",
            "a@b@c": "malformed",
            "a@-b.c": "malformed",
            "a@b..c": "malformed",
            "a@b_c": "malformed",
            "a@": "malformed",
            "a@b/\x07": "malformed",
        }
        for text, expected in cases.items():
            self.assertEqual((text, outcome(stanza.prepared_parts, text)), (text, expected))
            self.assertEqual((text, outcome(parse, text)), (text, expected))

    def test_other_texts_take_stringprep(self):
        """Beyond ASCII, stringprep's own mapping and refusals apply."""
        self.assertEqual(stanza.prepared_parts("ÄLICE@EXAMPLE.COM"), ("älice", "example.com", None))
        self.assertEqual(outcome(stanza.prepared_parts, "a\u2000b@example.com"), "malformed")

    def test_parsed_bare_jid_goes_through_the_bounded_cache(self):
        full = stanza.parse_jid("bob@example.com/desk")
        self.assertIs(full.userhostJID(), stanza.parse_jid("bob@example.com"))
        bare = stanza.parse_jid("bob@example.com")
        self.assertIs(bare.userhostJID(), bare)
