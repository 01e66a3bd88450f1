"""SIP registrations in a cluster (docs/scaling.md): held by one node, taken over when it dies.

The node that accepted a REGISTER holds the bindings: it keeps them in
memory as without a cluster, binds the phones' session (which the cluster
shows to every node, so a message for it from any node is handed to this
one), and writes each address of record's bindings, with their expiry, to
its hash of held state (``bridge.core.holdings``, kind ``sip``).  When the
node dies, one survivor takes its hash over: it adopts the bindings that
have not expired, binds the phones' session itself and sends to the
contacts from its own SIP socket (a UDP contact by the address its REGISTER
came from, a TCP one by a new connection) until they expire or the phone
registers again.
"""

import json

from twisted.logger import Logger

from bridge.gateways.sip.message import GrammarError, parse_address
from bridge.gateways.sip.registrar import Binding, contact_key

log = Logger()

KIND = "sip"


def encode_bindings(bindings):
    """One address of record's bindings as the text of its field."""
    return json.dumps([{"uri": binding.uri, "contact": str(binding.contact), "call_id": binding.call_id,
                        "cseq": binding.cseq, "expires_at": binding.expires_at,
                        "source": list(binding.source) if binding.source else None, "protocol": binding.protocol}
                       for binding in bindings], separators=(",", ":"))


def decode_bindings(text):
    """The bindings a field holds (no transport: the flow stayed on the node that wrote them); ValueError
    when it is not such a list."""
    bindings = []
    for item in json.loads(text):
        if not isinstance(item, dict):
            raise ValueError("a binding is not an object")
        source = item.get("source")
        if source is not None and not (isinstance(source, list) and len(source) == 2
                                       and isinstance(source[0], str) and isinstance(source[1], int)):
            raise ValueError(f"source {source!r}")
        try:
            contact = parse_address(item["contact"])
        except (GrammarError, KeyError, TypeError, AttributeError) as problem:
            raise ValueError(f"contact: {problem}") from None
        if not (isinstance(item.get("call_id"), str) and isinstance(item.get("cseq"), int)
                and isinstance(item.get("expires_at"), (int, float)) and item.get("protocol") in ("UDP", "TCP", "TLS")):
            raise ValueError("call_id, cseq, expires_at or protocol")
        bindings.append(Binding(str(contact.uri), contact, item["call_id"], item["cseq"], float(item["expires_at"]),
                                None, tuple(source) if source else None, item["protocol"]))
    return bindings


class ClusteredRegistrations:
    """This node's registrations in Redis, and those it takes over from dead nodes."""

    def __init__(self, gateway, cluster):
        self.gateway = gateway
        self.bindings = gateway.registrar.bindings
        self.written = set()  # (host, user) whose bindings are in this node's hash
        self.holdings = cluster.hold(KIND, self.adopt, self.release)

    def changed(self, host, user):
        """The bindings of ``user@host`` changed here: write them, or remove the field once none is left."""
        current = self.bindings.current(host, user)
        if current:
            self.written.add((host, user))
            self.holdings.put(f"{user}@{host}", encode_bindings(current))
        elif (host, user) in self.written:
            self.written.discard((host, user))
            self.holdings.remove(f"{user}@{host}")

    def prune(self):
        """Remove the fields of addresses of record whose bindings all expired."""
        for host, user in list(self.written):
            if not self.bindings.current(host, user):
                self.changed(host, user)

    def adopt(self, records):
        """Bindings taken over (or found again at a join): served from here until they expire."""
        now = self.gateway.clock.seconds()
        udp = self.gateway.outbound_transport()
        for field, text in records.items():
            user, _, host = field.rpartition("@")
            if not user or self.gateway.ctx.local_host(host) != host:
                log.warn("SIP: a taken-over registration of {field!r} is of no host here; skipped", field=field)
                continue
            try:
                taken = decode_bindings(text)
            except ValueError as problem:
                log.warn("SIP: a taken-over registration of {field} is malformed ({problem}); skipped", field=field,
                         problem=str(problem))
                continue
            table = self.bindings.table(host, user)
            for binding in taken:
                if binding.expires_at > now and contact_key(binding.contact.uri) not in table:
                    if binding.protocol == "UDP" and binding.source is not None:
                        binding.transport = udp
                    table[contact_key(binding.contact.uri)] = binding
            self.bindings.discard_empty(host, user)
            self.written.add((host, user))
            self.gateway.phones.registered(host, user)
            self.changed(host, user)
        log.info("SIP: serving {count} taken-over address(es) of record", count=len(records))

    def release(self):
        """This node lost its lease: a survivor may take its registrations over; it forgets them."""
        self.bindings.clear()
        self.written.clear()
        self.gateway.phones.prune()
