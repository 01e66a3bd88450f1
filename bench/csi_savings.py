"""What XEP-0352 spares an inactive client in a presence-heavy roster (``python -m bench.csi_savings``).

An in-memory server (the unit tests' harness, no sockets, no clock): one
client, ``--contacts`` contacts that each change their presence ``--rounds``
times, one of them typing (composing, paused) each round, and a message with
a body every ``--message-every`` rounds.  The same traffic is sent to the
client once active and once inactive (saying <active/> at the end); the
script prints the stanzas and bytes the client was written each time.  Figures, not a test.
"""

import argparse

from tests.unit.helpers import Harness, make_config

CLIENT = "reader@localhost/phone"
SHOWS = ("away", "xa", "dnd", "chat")


def written(inactive, contacts, rounds, message_every):
    """(stanzas, bytes) written to the client for the whole run."""
    harness = Harness(make_config(max_connections_per_address=10000))
    harness.add_user("reader@localhost")
    names = [f"contact{number}" for number in range(contacts)]
    for name in names:
        harness.add_user(f"{name}@localhost")
    reader = harness.login(CLIENT)
    reader.send("<presence/>")
    senders = [harness.login(f"{name}@localhost/r") for name in names]
    reader.received()
    if inactive:
        reader.send("<inactive xmlns='urn:xmpp:csi:0'/>")
    stanzas = size = 0

    def collect():
        nonlocal stanzas, size
        size += len(reader.transport.value())
        stanzas += len(reader.received())

    for round_number in range(rounds):
        for sender in senders:
            show = SHOWS[round_number % len(SHOWS)]
            sender.send(f"<presence to='{CLIENT}'><show>{show}</show><status>round {round_number}</status>"
                        "<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://example.org'"
                        " ver='QgayPKawpkPSDYmwT/WM94uAlu0='/></presence>")
        typist = senders[round_number % len(senders)]
        for state in ("composing", "paused"):
            typist.send(f"<message to='{CLIENT}' type='chat'><{state} xmlns='http://jabber.org/protocol/chatstates'/>"
                        "</message>")
        if (round_number + 1) % message_every == 0:
            typist.send(f"<message to='{CLIENT}' type='chat'><body>news of round {round_number}</body></message>")
        collect()
    if inactive:
        # The user opens the application at last: what still waits is sent.
        reader.send("<active xmlns='urn:xmpp:csi:0'/>")
        collect()
    return stanzas, size


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--message-every", type=int, default=5)
    options = parser.parse_args()
    figures = {state: written(state == "inactive", options.contacts, options.rounds, options.message_every)
               for state in ("active", "inactive")}
    print(f"{options.contacts} contacts, {options.rounds} rounds of presence changes and typing, "
          f"a message every {options.message_every} rounds")
    for state, (stanzas, size) in figures.items():
        print(f"  {state:8}  {stanzas:6} stanzas  {size:9} bytes")
    (active_stanzas, active_bytes), (inactive_stanzas, inactive_bytes) = figures["active"], figures["inactive"]
    print(f"  saved     {1 - inactive_stanzas / active_stanzas:6.1%} of stanzas, "
          f"{1 - inactive_bytes / active_bytes:.1%} of bytes")


if __name__ == "__main__":
    main()
