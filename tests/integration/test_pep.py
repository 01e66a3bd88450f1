"""Personal eventing (XEP-0163) against the real server, driven by slixmpp's own xep_0060, xep_0115, xep_0163,
xep_0084 and xep_0402 plugins: +notify delivery to a contact, avatars, private bookmarks."""

import asyncio

import pytest
from slixmpp.exceptions import IqError
from slixmpp.plugins.xep_0004 import Form
from slixmpp.plugins.xep_0402.stanza import Conference

from .harness import TIMEOUT, Clients, befriend, next_item

USERS = ("ana@localhost", "ben@localhost", "eva@localhost", "tom@localhost")
PLUGINS = {"xep_0004": {}, "xep_0030": {}, "xep_0060": {}, "xep_0115": {}, "xep_0163": {}, "xep_0084": {},
           "xep_0402": {}}
NS_EVENT = "http://jabber.org/protocol/pubsub#event"
NS_AVATAR_DATA = "urn:xmpp:avatar:data"
NS_AVATAR_METADATA = "urn:xmpp:avatar:metadata"
NS_BOOKMARKS = "urn:xmpp:bookmarks:1"


@pytest.fixture(scope="module")
def pep_server(start_server):
    return start_server("pep", USERS)


async def online(clients, jid):
    """A client with the plugins, its presence re-sent with its caps (+notify of avatar metadata);
    ``events`` queues the pubsub notifications it receives."""
    client = await clients.login(jid, plugins=PLUGINS, presence=False)
    client.events = asyncio.Queue()
    client.add_event_handler("pubsub_publish", client.events.put_nowait)
    await client.plugin["xep_0115"].update_caps(broadcast=False)
    client.send_presence()
    return client


def event_items(message, node):
    """The <item/> elements of a pubsub event for ``node`` in a received message."""
    items = message.xml.find(f"{{{NS_EVENT}}}event/{{{NS_EVENT}}}items")
    if items is None or items.get("node") != node:
        return []
    return items.findall(f"{{{NS_EVENT}}}item")


def test_avatar_metadata_notifies_a_contact_who_then_fetches_the_data(pep_server):
    """ana publishes an avatar (data, then metadata) with xep_0084; ben, her contact whose caps say
    urn:xmpp:avatar:metadata+notify, gets the metadata notification and fetches the data by its id; eva, a
    stranger, is refused the data."""

    async def scenario():
        async with Clients(pep_server) as clients:
            ana = await online(clients, "ana@localhost/a")
            ben = await online(clients, "ben@localhost/b")
            eva = await online(clients, "eva@localhost/e")
            await befriend(ana, ben)
            info = await ben.plugin["xep_0030"].get_info(jid="ana@localhost", timeout=TIMEOUT)
            assert ("pubsub", "pep", None, None) in info["disco_info"]["identities"]
            assert "http://jabber.org/protocol/pubsub#publish-options" in info["disco_info"]["features"]

            picture = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
            avatar_id = ana.plugin["xep_0084"].generate_id(picture)
            await ana.plugin["xep_0084"].publish_avatar(picture, timeout=TIMEOUT)
            await ana.plugin["xep_0084"].publish_avatar_metadata(
                {"id": avatar_id, "type": "image/png", "bytes": len(picture)}, timeout=TIMEOUT)
            notified = await next_item(ben.events, lambda m: event_items(m, NS_AVATAR_METADATA),
                                       what="the avatar metadata notification")
            assert str(notified["from"]) == "ana@localhost"
            assert event_items(notified, NS_AVATAR_METADATA)[0].get("id") == avatar_id

            fetched = await ben.plugin["xep_0084"].retrieve_avatar("ana@localhost", avatar_id, timeout=TIMEOUT)
            assert fetched["pubsub"]["items"]["item"]["avatar_data"]["value"] == picture
            with pytest.raises(IqError) as refused:
                await eva.plugin["xep_0084"].retrieve_avatar("ana@localhost", avatar_id, timeout=TIMEOUT)
            assert refused.value.iq["error"]["condition"] == "not-authorized"

    asyncio.run(scenario())


def test_last_metadata_reaches_a_contact_coming_online(pep_server):
    """tom's avatar metadata, published while eva was away, reaches eva when she comes online."""

    async def scenario():
        async with Clients(pep_server) as clients:
            tom = await online(clients, "tom@localhost/t")
            eva = await online(clients, "eva@localhost/first")
            await befriend(tom, eva)
            await eva.close()
            await tom.plugin["xep_0084"].publish_avatar_metadata(
                {"id": "0" * 40, "type": "image/png", "bytes": 10}, timeout=TIMEOUT)
            eva = await online(clients, "eva@localhost/again")
            notified = await next_item(eva.events, lambda m: event_items(m, NS_AVATAR_METADATA),
                                       what="the last avatar metadata")
            assert event_items(notified, NS_AVATAR_METADATA)[0].get("id") == "0" * 40

    asyncio.run(scenario())


def test_bookmarks_are_private(pep_server):
    """ana keeps a XEP-0402 bookmark with publish-options persist_items, max_items=max and access_model
    whitelist; she reads it back, ben (her contact) is refused it, and a contradicting option is a
    precondition-not-met."""

    async def scenario():
        async with Clients(pep_server) as clients:
            ana = await online(clients, "ana@localhost/books")
            ben = await online(clients, "ben@localhost/books")

            def options(access_model):
                form = Form()
                form["type"] = "submit"
                form.add_field(var="FORM_TYPE", ftype="hidden",
                               value="http://jabber.org/protocol/pubsub#publish-options")
                form.add_field(var="pubsub#persist_items", value="true")
                form.add_field(var="pubsub#max_items", value="max")
                form.add_field(var="pubsub#access_model", value=access_model)
                return form

            conference = Conference()
            conference["name"] = "The coven"
            conference["autojoin"] = True
            conference["nick"] = "ana"
            await ana.plugin["xep_0060"].publish(None, NS_BOOKMARKS, id="coven@muc.localhost",
                                                 payload=conference.xml, options=options("whitelist"),
                                                 timeout=TIMEOUT)
            mine = await ana.plugin["xep_0060"].get_items("ana@localhost", NS_BOOKMARKS, timeout=TIMEOUT)
            [item] = list(mine["pubsub"]["items"])
            assert item["id"] == "coven@muc.localhost"
            assert item["conference"]["name"] == "The coven" and item["conference"]["autojoin"]
            with pytest.raises(IqError) as refused:
                await ben.plugin["xep_0060"].get_items("ana@localhost", NS_BOOKMARKS, timeout=TIMEOUT)
            assert refused.value.iq["error"]["condition"] == "not-allowed"
            with pytest.raises(IqError) as conflict:
                await ana.plugin["xep_0060"].publish(None, NS_BOOKMARKS, id="other@muc.localhost",
                                                     payload=conference.xml, options=options("open"),
                                                     timeout=TIMEOUT)
            assert conflict.value.iq["error"]["condition"] == "conflict"

    asyncio.run(scenario())
