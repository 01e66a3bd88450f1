"""Message Carbons (XEP-0280) driven by slixmpp's own xep_0280 plugin against the real server."""

import asyncio

import pytest

from .harness import TIMEOUT, Client, Clients, barrier, next_item

NS_CARBONS = "urn:xmpp:carbons:2"
ACCOUNTS = ("rosa@localhost", "tomas@localhost")


@pytest.fixture(scope="module")
def carbons_server(start_server):
    return start_server("carbons", list(ACCOUNTS))


class CarbonsClient(Client):
    """A slixmpp client with the xep_0280 plugin, whose carbons land in queues of their own."""

    def __init__(self, jid, password):
        super().__init__(jid, password)
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0280")
        self.carbons_sent = asyncio.Queue()
        self.carbons_received = asyncio.Queue()
        self.add_event_handler("carbon_sent", self.carbons_sent.put_nowait)
        self.add_event_handler("carbon_received", self.carbons_received.put_nowait)

    def _message(self, message):
        # Carbons arrive as messages too; only the plain ones go to ``messages``.
        wrappers = [message.xml.find(f"{{{NS_CARBONS}}}{name}") for name in ("sent", "received")]
        if message["type"] != "error" and wrappers == [None, None]:
            self.messages.put_nowait(message)


async def carbons_login(clients, jid, carbons=True):
    server = clients.server
    client = clients.track(CarbonsClient(jid, server.password(jid)))
    client.start(server.port)
    await asyncio.wait_for(client.started, TIMEOUT)
    await asyncio.wait_for(client.get_roster(), TIMEOUT)
    if carbons:
        await client.plugin["xep_0280"].enable(timeout=TIMEOUT)
    client.send_presence()
    await barrier(client)
    return client


def test_two_resources_see_both_sides(carbons_server):
    """Two resources of one user with carbons enabled by slixmpp's plugin: what one sends reaches the
    peer and the other resource as a sent carbon; what the peer sends to one resource reaches the
    other as a received carbon; a message to the bare JID reaches both once, with no carbon."""

    async def scenario():
        async with Clients(carbons_server) as clients:
            phone = await carbons_login(clients, "rosa@localhost/phone")
            laptop = await carbons_login(clients, "rosa@localhost/laptop")
            tomas = await carbons_login(clients, "tomas@localhost/desk", carbons=False)

            info = await laptop.plugin["xep_0030"].get_info(jid="localhost", timeout=TIMEOUT)
            assert NS_CARBONS in info["disco_info"]["features"]

            phone.send_message(mto="tomas@localhost", mbody="sent from the phone", mtype="chat")
            message = await next_item(tomas.messages, what="the phone's message")
            assert message["body"] == "sent from the phone"
            carbon = await next_item(laptop.carbons_sent, what="sent carbon on the laptop")
            assert carbon["from"] == "rosa@localhost"
            inner = carbon["carbon_sent"]
            assert inner["from"] == "rosa@localhost/phone"
            assert inner["to"] == "tomas@localhost"
            assert inner["body"] == "sent from the phone"

            tomas.send_message(mto="rosa@localhost/phone", mbody="to the phone", mtype="chat")
            message = await next_item(phone.messages, what="message to the phone")
            assert message["body"] == "to the phone"
            carbon = await next_item(laptop.carbons_received, what="received carbon on the laptop")
            assert carbon["from"] == "rosa@localhost"
            inner = carbon["carbon_received"]
            assert inner["from"] == "tomas@localhost/desk"
            assert inner["to"] == "rosa@localhost/phone"
            assert inner["body"] == "to the phone"

            tomas.send_message(mto="rosa@localhost", mbody="to both", mtype="chat")
            for client in (phone, laptop):
                message = await next_item(client.messages, what="message to the bare JID")
                assert message["body"] == "to both"
            await barrier(tomas)
            await barrier(phone)
            await barrier(laptop)
            # The sender got no copy of its own message, and no resource got the bare-JID message twice.
            assert phone.carbons_sent.empty() and phone.carbons_received.empty()
            assert laptop.carbons_received.empty() and laptop.messages.empty()

    asyncio.run(scenario())
