"""Client State Indication (XEP-0352): what an inactive client is spared.

A client in the background (a phone in a pocket) says <inactive/>; until it
says <active/>, its stream holds back what can wait: the presence of its
contacts and bare chat states ("is typing").  Each is collapsed to the
latest per sender and kind, so a contact who changes status ten times costs
the client one stanza, not ten.  Anything else (a message with a body, an
encrypted one, an IQ, a subscription request, an error) is important: what
was held goes out first, in order, then the stanza itself.  This is the rule
of Prosody's mod_csi_simple (hold the unimportant, release it all with the
first important stanza) with ejabberd's mod_client_state collapsing (keep
only the latest presence and chat state of each sender).

``HeldStanzas`` is the queue of one stream; it does no I/O.  The stream
(``ClientStream``) asks it to hold each stanza it would send and writes what
it gives back (see docs/stream-management.md for the XEP-0198 side).
"""

from bridge.core.stanza import NS_DELAY
from bridge.core.xmlstream import serialize

NS_CSI = "urn:xmpp:csi:0"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"
CLIENT_NAMESPACES = (None, "jabber:client")
# Payloads that may ride along with a chat state without making the message
# more than a chat state: delay stamps, stanza and origin ids, hints.
CHAT_STATE_COMPANIONS = frozenset((NS_CHATSTATES, NS_DELAY, "urn:xmpp:sid:0", "urn:xmpp:hints"))


def collapse_key(stanza):
    """The key under which ``stanza`` may wait (the latest of one key replaces the earlier), or None
    when it is important and must go at once."""
    name = stanza.name
    if name == "presence":
        if stanza.getAttribute("type") in (None, "unavailable"):
            return ("presence", stanza.getAttribute("from"))
        return None
    if name == "message" and stanza.getAttribute("type") != "error" and _chat_state_only(stanza):
        return ("chat-state", stanza.getAttribute("from"))
    return None


def _chat_state_only(message):
    """A message that carries a chat state (XEP-0085) and nothing a user reads or a client must
    decrypt: no body, subject or other payload (an encrypted one, a receipt, a carbon)."""
    chat_state = False
    for child in message.elements():
        uri = child.uri
        if uri in CLIENT_NAMESPACES:
            if child.name != "thread":
                return False
        elif uri not in CHAT_STATE_COMPANIONS:
            return False
        elif uri == NS_CHATSTATES:
            chat_state = True
    return chat_state


class HeldStanzas:
    """The stanzas held back from one inactive client, collapsed, bounded in count and bytes."""

    def __init__(self, max_stanzas, max_bytes):
        self.max_stanzas = max_stanzas
        self.max_bytes = max_bytes
        self._held = {}  # key -> (stanza, its size in bytes); a replaced key keeps its first place
        self.bytes = 0

    def __len__(self):
        return len(self._held)

    def hold(self, stanza):
        """True if ``stanza`` waits; False if it must be sent now, after everything ``take`` gives
        (it is important, or holding it would pass the bound)."""
        key = collapse_key(stanza)
        if key is None:
            return False
        size = len(serialize(stanza).encode("utf-8"))
        previous = self._held.get(key)
        total = self.bytes + size - (previous[1] if previous else 0)
        if total > self.max_bytes or (previous is None and len(self._held) >= self.max_stanzas):
            return False
        self._held[key] = (stanza, size)
        self.bytes = total
        return True

    def take(self):
        """Everything held, in the order each key first came; the queue is emptied."""
        held = [stanza for stanza, _ in self._held.values()]
        self._held = {}
        self.bytes = 0
        return held
