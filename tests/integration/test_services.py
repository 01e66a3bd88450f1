"""Server services: disco#info (XEP-0030), ping (XEP-0199), version (XEP-0092), private
storage (XEP-0049), and the answer to IQs nobody handles."""

import asyncio
import xml.etree.ElementTree as ET

from .harness import Clients, error_condition

NS_INFO = "http://jabber.org/protocol/disco#info"
NS_VERSION = "jabber:iq:version"
NS_PRIVATE = "jabber:iq:private"
NS_BOOKMARKS = "storage:bookmarks"


def test_disco_info_of_the_server(server):
    """disco#info of the server names a server/im identity and lists ping, vcard-temp, blocking,
    version and private storage among its features."""

    async def scenario():
        async with Clients(server) as clients:
            ivan = await clients.login("ivan@localhost/disco", presence=False)
            reply = await ivan.query("get", "localhost", f"<query xmlns='{NS_INFO}'/>")
            assert reply["type"] == "result", reply
            assert reply["from"] == "localhost"
            query = reply.xml.find(f"{{{NS_INFO}}}query")
            features = {feature.get("var") for feature in query.findall(f"{{{NS_INFO}}}feature")}
            for needed in ("urn:xmpp:ping", "vcard-temp", "urn:xmpp:blocking", NS_VERSION, NS_PRIVATE,
                           NS_INFO):
                assert needed in features, f"{needed} missing from {sorted(features)}"
            identities = {(i.get("category"), i.get("type")) for i in query.findall(f"{{{NS_INFO}}}identity")}
            assert ("server", "im") in identities

    asyncio.run(scenario())


def test_unknown_iq_payload_is_service_unavailable(server):
    """An IQ get or set to the server with a payload no module handles is answered with a
    service-unavailable error (RFC 6120 section 8.4), with the same id."""

    async def scenario():
        async with Clients(server) as clients:
            ivan = await clients.login("ivan@localhost/unknown", presence=False)
            for kind in ("get", "set"):
                reply = await ivan.query(kind, "localhost", "<query xmlns='urn:example:nothing-handles-this'/>")
                assert reply["type"] == "error", reply
                assert error_condition(reply) == "service-unavailable", reply
                assert reply["from"] == "localhost"

    asyncio.run(scenario())


def test_unknown_iq_to_accounts_is_service_unavailable(server):
    """An IQ with an unknown payload to an account's bare JID, or to a full JID with no such
    resource, is answered service-unavailable by the server (RFC 6121 section 8.5)."""

    async def scenario():
        async with Clients(server) as clients:
            ivan = await clients.login("ivan@localhost/asker", presence=False)
            for to in ("judy@localhost", "judy@localhost/nowhere"):
                reply = await ivan.query("get", to, "<query xmlns='urn:example:nothing-handles-this'/>")
                assert reply["type"] == "error", reply
                assert error_condition(reply) == "service-unavailable", reply
                assert reply["from"] == to

    asyncio.run(scenario())


def test_ping_the_server(server):
    """A XEP-0199 ping to the server gets an empty result from the server."""

    async def scenario():
        async with Clients(server) as clients:
            ivan = await clients.login("ivan@localhost/ping", presence=False)
            reply = await ivan.query("get", "localhost", "<ping xmlns='urn:xmpp:ping'/>")
            assert reply["type"] == "result", reply
            assert reply["from"] == "localhost"
            assert len(reply.xml) == 0, reply

    asyncio.run(scenario())


def test_software_version_is_bridge(server):
    """The XEP-0092 software version of the server has the name "bridge" and a version."""

    async def scenario():
        async with Clients(server) as clients:
            ivan = await clients.login("ivan@localhost/version", presence=False)
            reply = await ivan.query("get", "localhost", f"<query xmlns='{NS_VERSION}'/>")
            assert reply["type"] == "result", reply
            query = reply.xml.find(f"{{{NS_VERSION}}}query")
            assert query.findtext(f"{{{NS_VERSION}}}name") == "bridge"
            assert (query.findtext(f"{{{NS_VERSION}}}version") or "").strip()

    asyncio.run(scenario())


BOOKMARKS = (f"<query xmlns='{NS_PRIVATE}'><storage xmlns='{NS_BOOKMARKS}'>"
             "<conference name='Council' autojoin='true' jid='council@conference.localhost'>"
             "<nick>ivan</nick></conference></storage></query>")


def test_private_storage_of_bookmarks(server):
    """Bookmarks stored with XEP-0049 are returned by a later get, in a new session; another
    user may not read them (forbidden)."""

    async def scenario():
        async with Clients(server) as clients:
            ivan = await clients.login("ivan@localhost/store", presence=False)
            reply = await ivan.query("set", None, BOOKMARKS)
            assert reply["type"] == "result", reply
            await ivan.close()

            ivan = await clients.login("ivan@localhost/fetch", presence=False)
            reply = await ivan.query("get", None, f"<query xmlns='{NS_PRIVATE}'><storage xmlns='{NS_BOOKMARKS}'/></query>")
            assert reply["type"] == "result", reply
            storage = reply.xml.find(f"{{{NS_PRIVATE}}}query/{{{NS_BOOKMARKS}}}storage")
            assert storage is not None, reply
            conference = storage.find(f"{{{NS_BOOKMARKS}}}conference")
            assert conference is not None, ET.tostring(storage, "unicode")
            assert conference.get("jid") == "council@conference.localhost"
            assert conference.get("name") == "Council"
            assert conference.findtext(f"{{{NS_BOOKMARKS}}}nick") == "ivan"

            # Another namespace of ivan's private storage is empty.
            reply = await ivan.query("get", None, f"<query xmlns='{NS_PRIVATE}'><other xmlns='urn:example:x'/></query>")
            assert reply["type"] == "result", reply
            other = reply.xml.find(f"{{{NS_PRIVATE}}}query/{{urn:example:x}}other")
            assert other is not None and len(other) == 0, reply

            judy = await clients.login("judy@localhost/snoop", presence=False)
            reply = await judy.query("get", "ivan@localhost",
                                     f"<query xmlns='{NS_PRIVATE}'><storage xmlns='{NS_BOOKMARKS}'/></query>")
            assert reply["type"] == "error", reply
            assert error_condition(reply) == "forbidden"

    asyncio.run(scenario())
