"""External components (XEP-0114): a slixmpp ComponentXMPP connected to the real server."""

import asyncio

import pytest

from .harness import TIMEOUT, Clients, Component, error_condition, next_item

DOMAIN = "comp.localhost"
SECRET = "integration-component-secret"
NS_ITEMS = "http://jabber.org/protocol/disco#items"

COMPONENTS = f"""
[components."{DOMAIN}"]
secret = "{SECRET}"
"""


@pytest.fixture(scope="module")
def component_server(start_server):
    """A server with the component comp.localhost configured, its component listener on a free port."""
    return start_server("component", ["alice@localhost", "bob@localhost"], tables=COMPONENTS,
                        wait_for=("c2s", "c2s-direct-tls", "component"))


class EchoComponent(Component):
    """Answers every chat or normal message with the same body, prefixed with "echo: "."""

    def __init__(self, secret=SECRET):
        super().__init__(DOMAIN, secret)
        self.received = asyncio.Queue()
        self.add_event_handler("message", self._message)

    def _message(self, message):
        if message["type"] in ("chat", "normal"):
            self.received.put_nowait(message)
            self.send_message(mto=message["from"], mfrom=message["to"], mbody=f"echo: {message['body']}",
                              mtype="chat")


async def disco_items(client):
    reply = await client.query("get", "localhost", f"<query xmlns='{NS_ITEMS}'/>")
    assert reply["type"] == "result", reply
    query = reply.xml.find(f"{{{NS_ITEMS}}}query")
    return {item.get("jid") for item in query.findall(f"{{{NS_ITEMS}}}item")}


def test_component_listener_port_is_logged(component_server):
    """The server logs "listening component on 127.0.0.1:PORT" for the component listener."""
    assert component_server.ports.get("component"), component_server.tail()
    assert component_server.ports["component"] not in (component_server.port, component_server.tls_port)


def test_message_to_component_and_echo(component_server):
    """A client's message to echo@comp.localhost reaches the connected component with the client's
    full JID as sender, and the component's reply reaches the client from echo@comp.localhost."""

    async def scenario():
        component = EchoComponent()
        try:
            await component.start(component_server.ports["component"])
            async with Clients(component_server) as clients:
                alice = await clients.login("alice@localhost/echo", presence=False)
                alice.send_message(mto=f"echo@{DOMAIN}", mbody="ping-1", mtype="chat")
                seen = await next_item(component.received, what="the message at the component")
                assert str(seen["from"]) == "alice@localhost/echo", seen
                assert str(seen["body"]) == "ping-1", seen
                reply = await next_item(alice.messages, lambda m: m["body"] == "echo: ping-1",
                                        what="the component's echo")
                assert str(reply["from"]) == f"echo@{DOMAIN}", reply
        finally:
            await component.close()

    asyncio.run(scenario())


def test_disco_items_list_the_component_while_connected(component_server):
    """disco#items of the server lists comp.localhost while the component is connected; once it
    has disconnected, the item is gone and a message to its domain is answered service-unavailable."""

    async def scenario():
        async with Clients(component_server) as clients:
            bob = await clients.login("bob@localhost/disco", presence=False)
            component = EchoComponent()
            try:
                await component.start(component_server.ports["component"])
                assert DOMAIN in await disco_items(bob)
            finally:
                await component.close()
            # The server may see the end of the stream a little after the component does.
            for _ in range(50):
                if DOMAIN not in await disco_items(bob):
                    break
                await asyncio.sleep(0.1)
            assert DOMAIN not in await disco_items(bob)
            bob.send_message(mto=f"echo@{DOMAIN}", mbody="anyone?", mtype="chat")
            error = await next_item(bob.message_errors, what="the bounce of the message to the gone component")
            assert error_condition(error) == "service-unavailable", error
            assert str(error["from"]) == f"echo@{DOMAIN}", error

    asyncio.run(scenario())


def test_wrong_secret_is_refused(component_server):
    """A component with a wrong secret is disconnected by the server and never starts its session."""

    async def scenario():
        component = EchoComponent(secret="not-the-secret")
        errors = asyncio.Queue()
        component.add_event_handler("stream_error", errors.put_nowait)
        component.connect(host="127.0.0.1", port=component_server.ports["component"])
        try:
            error = await next_item(errors, what="a stream error")
            assert error["condition"] == "not-authorized", error
            await asyncio.wait_for(asyncio.shield(component.ended), TIMEOUT)
            assert not component.started.done()
        finally:
            component.abort()

    asyncio.run(scenario())
