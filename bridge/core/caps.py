"""Entity capabilities (XEP-0115): the verification of a 'ver' hash, and a bounded cache of what was verified.

A client's presence names its features by a hash of them; the server asks
the client's disco#info once per hash, checks that the answer hashes to the
'ver' it claimed (section 5), and remembers it for every client that sends
the same hash.  Only the ``+notify`` features (XEP-0163) are kept, and the
cache is bounded in entries and in bytes: a client cannot fill it with
hashes it made up, since only answers that hash to their 'ver' go in.
"""

import base64
import collections
import hashlib

NS_CAPS = "http://jabber.org/protocol/caps"
NS_INFO = "http://jabber.org/protocol/disco#info"
NS_DATA = "jabber:x:data"
NS_XML = "http://www.w3.org/XML/1998/namespace"
NOTIFY = "+notify"
# XEP-0115's hash names (the IANA registry's) and hashlib's.
HASHES = {"sha-1": "sha1", "sha-224": "sha224", "sha-256": "sha256", "sha-384": "sha384", "sha-512": "sha512"}


def caps_of(presence):
    """The (hash, node, ver) a presence stanza announces, or None (no <c/>, or legacy caps without a hash)."""
    for element in presence.elements(NS_CAPS, "c"):
        algorithm, node, ver = (element.getAttribute(name) for name in ("hash", "node", "ver"))
        if algorithm in HASHES and node and ver:
            return algorithm, node, ver
    return None


def verification_string(query):
    """The string section 5.1 hashes for a disco#info <query/>, or None when the answer is invalid (5.4)."""
    identities = []
    for identity in query.elements(NS_INFO, "identity"):
        identities.append("/".join((identity.getAttribute("category") or "", identity.getAttribute("type") or "",
                                    identity.getAttribute((NS_XML, "lang")) or "",
                                    identity.getAttribute("name") or "")))
    features = [feature.getAttribute("var") or "" for feature in query.elements(NS_INFO, "feature")]
    if len(set(identities)) != len(identities) or len(set(features)) != len(features):
        return None
    forms = {}
    for form in query.elements(NS_DATA, "x"):
        fields = {}
        form_type = None
        for field in form.elements(NS_DATA, "field"):
            values = sorted(str(value) for value in field.elements(NS_DATA, "value"))
            if field.getAttribute("var") == "FORM_TYPE":
                if field.getAttribute("type") not in (None, "hidden") or len(values) != 1:
                    form_type = None
                    break
                form_type = values[0]
            else:
                fields[field.getAttribute("var") or ""] = values
        if form_type is None:
            continue  # a form without a proper FORM_TYPE is left out of the hash
        if form_type in forms:
            return None
        forms[form_type] = fields
    text = "".join(f"{entry}<" for entry in sorted(identities))
    text += "".join(f"{entry}<" for entry in sorted(features))
    for form_type in sorted(forms):
        text += f"{form_type}<"
        for var in sorted(forms[form_type]):
            text += f"{var}<" + "".join(f"{value}<" for value in forms[form_type][var])
    return text


def verified(algorithm, ver, query):
    """Whether a disco#info answer hashes to the 'ver' its presence announced."""
    text = verification_string(query)
    if text is None or algorithm not in HASHES:
        return False
    digest = hashlib.new(HASHES[algorithm], text.encode("utf-8")).digest()
    return base64.b64encode(digest).decode("ascii") == ver


def notify_nodes(query, max_nodes, max_node_bytes):
    """The nodes whose ``+notify`` feature a disco#info answer lists (at most ``max_nodes``, each bounded)."""
    nodes = set()
    for feature in query.elements(NS_INFO, "feature"):
        var = feature.getAttribute("var") or ""
        if var.endswith(NOTIFY) and len(var.encode("utf-8")) <= max_node_bytes + len(NOTIFY):
            nodes.add(var[:-len(NOTIFY)])
            if len(nodes) >= max_nodes:
                break
    return frozenset(nodes)


class CapsCache:
    """Verified hashes -> the nodes their clients want notified, the most recently used first kept.

    Bounded by ``max_entries`` and by ``max_bytes`` (the bytes of the node
    names kept, each counted once per entry).
    """

    def __init__(self, max_entries, max_bytes):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries = collections.OrderedDict()  # (hash, ver) -> (frozenset of nodes, bytes)

    def __len__(self):
        return len(self._entries)

    def get(self, key):
        """The nodes of a verified hash, or None when it is not known."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key, nodes):
        size = sum(len(node.encode("utf-8")) for node in nodes) + len(key[1])
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self._entries[key] = (nodes, size)
        self.bytes += size
        while self._entries and (len(self._entries) > self.max_entries or self.bytes > self.max_bytes):
            _, (_, dropped) = self._entries.popitem(last=False)
            self.bytes -= dropped
