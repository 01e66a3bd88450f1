"""Push Notifications (XEP-0357) against the real server: slixmpp clients and a slixmpp app server.

The app server is a XEP-0114 component (push.localhost) connected to the
server; it answers each publish with a result, as an app server does.
slixmpp 1.x has no XEP-0357 plugin, so the clients send <enable/> as raw XML.
"""

import asyncio

import pytest
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from .harness import TIMEOUT, Clients, Component, befriend, next_item

APP = "push.localhost"
SECRET = "integration-push-secret"
NS_PUSH = "urn:xmpp:push:0"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_DATA = "jabber:x:data"
NS_COMPONENT = "jabber:component:accept"
USERS = ["amy@localhost", "ben@localhost", "cat@localhost"]
OPTIONS = (f"<x xmlns='{NS_DATA}' type='submit'>"
           "<field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>"
           "<field var='secret'><value>device-token-secret</value></field></x>")


@pytest.fixture(scope="module")
def push_server(start_server):
    """A server with the app server's component domain configured."""
    return start_server("push", USERS, tables=f'[components."{APP}"]\nsecret = "{SECRET}"\n',
                        wait_for=("c2s", "c2s-direct-tls", "component"))


class AppServer(Component):
    """A push app server: each pubsub publish it receives lands in ``published`` and is answered with a result."""

    def __init__(self):
        super().__init__(APP, SECRET)
        self.published = asyncio.Queue()
        self.register_handler(Callback("push publish", MatchXPath(f"{{{NS_COMPONENT}}}iq/{{{NS_PUBSUB}}}pubsub"),
                                       self._publish))

    def _publish(self, iq):
        self.published.put_nowait(iq)
        iq.reply().send()


def fields(form):
    return {field.get("var"): [value.text for value in field.findall(f"{{{NS_DATA}}}value")]
            for field in form.findall(f"{{{NS_DATA}}}field")}


def read_push(iq):
    """(node, summary fields, publish-options fields) of a publish the app server received."""
    pubsub = iq.xml.find(f"{{{NS_PUBSUB}}}pubsub")
    publish = pubsub.find(f"{{{NS_PUBSUB}}}publish")
    summary = publish.find(f"{{{NS_PUBSUB}}}item/{{{NS_PUSH}}}notification/{{{NS_DATA}}}x")
    options = pubsub.find(f"{{{NS_PUBSUB}}}publish-options/{{{NS_DATA}}}x")
    return publish.get("node"), fields(summary), fields(options) if options is not None else None


async def enable_push(client, node):
    reply = await client.query("set", client.boundjid.bare,
                               f"<enable xmlns='{NS_PUSH}' jid='{APP}' node='{node}'>{OPTIONS}</enable>")
    assert reply["type"] == "result", reply


def test_push_for_a_held_session(push_server):
    """amy enables push naming the app server, and stream management with resumption; her connection
    drops and the server holds her session; cat's message to her makes the server publish, from
    amy's bare JID to the app server, a summary (one message, from cat, no body) with amy's
    publish-options."""

    async def scenario():
        app = AppServer()
        try:
            await app.start(push_server.ports["component"])
            async with Clients(push_server) as clients:
                amy = await clients.login("amy@localhost/phone", plugins={"xep_0198": {"window": 0}})
                cat = await clients.login("cat@localhost/desk")
                await enable_push(amy, "amy-node")
                # The server answered <enable/> (stream management) before the IQ that followed it.
                assert amy.plugin["xep_0198"].sm_id, "stream management with resumption was not enabled"
                amy.transport.abort()
                await asyncio.to_thread(push_server.wait_for_line,
                                        lambda line: "amy@localhost/phone waits" in line, TIMEOUT,
                                        "amy's session held for resumption")
                cat.send_message(mto="amy@localhost", mbody="are you there?", mtype="chat")
                iq = await next_item(app.published, what="the push for amy")
                assert (str(iq["from"]), iq["type"]) == ("amy@localhost", "set"), iq
                node, summary, options = read_push(iq)
                assert node == "amy-node"
                assert summary == {"FORM_TYPE": ["urn:xmpp:push:summary"], "message-count": ["1"],
                                   "last-message-sender": ["cat@localhost/desk"]}, summary
                assert options["secret"] == ["device-token-secret"], options
        finally:
            await app.close()

    asyncio.run(scenario())


def test_push_for_an_offline_user(push_server):
    """ben enables push and logs out; cat's message to him is stored offline and makes the server
    publish a summary to the app server."""

    async def scenario():
        app = AppServer()
        try:
            await app.start(push_server.ports["component"])
            async with Clients(push_server) as clients:
                ben = await clients.login("ben@localhost/phone")
                cat = await clients.login("cat@localhost/laptop")
                await befriend(ben, cat)
                await enable_push(ben, "ben-node")
                await ben.close()
                await next_item(cat.presences, lambda p: p["from"] == "ben@localhost/phone"
                                and p["type"] == "unavailable", what="ben's unavailable presence")
                cat.send_message(mto="ben@localhost", mbody="call me", mtype="chat")
                iq = await next_item(app.published, what="the push for ben")
                assert str(iq["from"]) == "ben@localhost", iq
                node, summary, _ = read_push(iq)
                assert node == "ben-node"
                assert summary["message-count"] == ["1"] and summary["last-message-sender"] == ["cat@localhost/laptop"]
        finally:
            await app.close()

    asyncio.run(scenario())
