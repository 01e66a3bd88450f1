"""Client State Indication (XEP-0352) driven by slixmpp's own xep_0352 plugin against the real server.

Whether something was *not* delivered is checked without waiting on a clock:
an active witness (kai) shows that the server has routed a presence, then
the inactive client asks for a stream management acknowledgement (<r/>).
The server answers <a/> in order on the same stream, and the answer is a
nonza that CSI never holds: what was written to the client before it has
been read by the time the <a/> arrives.
"""

import asyncio

import pytest

from .harness import Clients, befriend, next_item

USERS = ["ines@localhost", "jon@localhost", "kai@localhost"]
NS_SM = "urn:xmpp:sm:3"
# The client asks for acknowledgements only when the test does (window 0).
PLUGINS = {"xep_0352": {}, "xep_0198": {"window": 0}}


@pytest.fixture(scope="module")
def csi_server(start_server):
    return start_server("csi", USERS)


def drain(queue):
    """Everything in an asyncio queue now, without waiting."""
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


def statuses(presences, sender):
    return [p["status"] for p in presences if p["from"] == sender]


def test_inactive_client_gets_presence_only_with_a_message_or_when_active(csi_server):
    """ines says <inactive/> (slixmpp's plugin, enabled because the server offered <csi/>): jon's
    presence changes do not reach her, though they reach kai; jon's message with a body reaches
    her at once, preceded by the presence held for her; after <active/> she gets only the latest
    of two changes."""

    async def scenario():
        async with Clients(csi_server) as clients:
            ines = await clients.login("ines@localhost/phone", plugins=PLUGINS)
            jon = await clients.login("jon@localhost/desk")
            kai = await clients.login("kai@localhost/desk")
            await befriend(ines, jon)
            await befriend(kai, jon)
            assert ines.plugin["xep_0352"].enabled, "the server did not offer <csi/>"
            assert "stream_management" in ines.features
            acks = ines.watch(f"{{{NS_SM}}}a")
            jon_full = "jon@localhost/desk"

            async def seen_by_kai(status):
                await next_item(kai.presences, lambda p: p["from"] == jon_full and p["status"] == status,
                                what=f"jon's presence {status!r} at kai")

            async def read_everything_sent_to_ines():
                drain(acks)
                ines.send_raw(f"<r xmlns='{NS_SM}'/>")
                await next_item(acks, what="<a/> answering ines's <r/>")

            ines.plugin["xep_0352"].send_inactive()
            # The <a/> comes after the server took <inactive/>, and after what it wrote before.
            await read_everything_sent_to_ines()
            drain(ines.presences)
            jon.send_presence(pshow="away", pstatus="first")
            await seen_by_kai("first")
            await read_everything_sent_to_ines()
            assert statuses(drain(ines.presences), jon_full) == [], "presence reached an inactive client"

            jon.send_message(mto="ines@localhost/phone", mbody="wake up", mtype="chat")
            message = await next_item(ines.messages, lambda m: m["body"] == "wake up", what="jon's message")
            assert message["from"] == jon_full
            # The presence held for ines came just before the message, in the same flush.
            assert statuses(drain(ines.presences), jon_full) == ["first"]

            jon.send_presence(pshow="xa", pstatus="second")
            jon.send_presence(pshow="dnd", pstatus="third")
            await seen_by_kai("second")
            await seen_by_kai("third")
            await read_everything_sent_to_ines()
            assert statuses(drain(ines.presences), jon_full) == [], "still inactive after the message"

            ines.plugin["xep_0352"].send_active()
            await read_everything_sent_to_ines()
            assert statuses(drain(ines.presences), jon_full) == ["third"], "only the latest presence is kept"

    asyncio.run(scenario())
