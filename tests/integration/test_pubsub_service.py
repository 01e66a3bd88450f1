"""The publish-subscribe service on pubsub.localhost against the real server, driven by slixmpp's xep_0060
(with xep_0004 forms and xep_0030 disco): a news channel with its owner, a publisher and a subscriber."""

import asyncio

import pytest
from slixmpp.exceptions import IqError
from slixmpp.plugins.xep_0004 import Form
from slixmpp.xmlstream import ET

from .harness import TIMEOUT, Clients, next_item

USERS = ("ann@localhost", "bea@localhost", "cy@localhost")
PLUGINS = {"xep_0004": {}, "xep_0030": {}, "xep_0060": {}}
SERVICE = "pubsub.localhost"
NS_ATOM = "http://www.w3.org/2005/Atom"


@pytest.fixture(scope="module")
def pubsub_server(start_server):
    return start_server("pubsub", USERS)


def entry(title):
    element = ET.Element(f"{{{NS_ATOM}}}entry")
    ET.SubElement(element, f"{{{NS_ATOM}}}title").text = title
    return element


async def online(clients, jid):
    client = await clients.login(jid, plugins=PLUGINS)
    client.events = asyncio.Queue()
    client.add_event_handler("pubsub_publish", client.events.put_nowait)
    return client


def test_news_channel(pubsub_server):
    """ann creates a configured node (found in disco), makes bea a publisher; cy subscribes and receives
    bea's entry; cy may not publish; the items, the node's configuration and ann's affiliations read back."""

    async def scenario():
        async with Clients(pubsub_server) as clients:
            ann = await online(clients, "ann@localhost/a")
            bea = await online(clients, "bea@localhost/b")
            cy = await online(clients, "cy@localhost/c")
            info = await cy.plugin["xep_0030"].get_info(jid=SERVICE, timeout=TIMEOUT)
            assert ("pubsub", "service", None, "Publish-Subscribe") in info["disco_info"]["identities"]
            assert "http://jabber.org/protocol/pubsub#create-nodes" in info["disco_info"]["features"]

            config = Form()
            config["type"] = "submit"
            config.add_field(var="pubsub#title", value="Town news")
            config.add_field(var="pubsub#max_items", value="10")
            await ann.plugin["xep_0060"].create_node(SERVICE, "news", config=config, timeout=TIMEOUT)
            items = await cy.plugin["xep_0030"].get_items(jid=SERVICE, timeout=TIMEOUT)
            assert (SERVICE, "news", "Town news") in items["disco_items"]["items"]
            await ann.plugin["xep_0060"].modify_affiliations(SERVICE, "news", [("bea@localhost", "publisher")],
                                                             timeout=TIMEOUT)
            subscribed = await cy.plugin["xep_0060"].subscribe(SERVICE, "news", timeout=TIMEOUT)
            assert subscribed["pubsub"]["subscription"]["subscription"] == "subscribed"

            await bea.plugin["xep_0060"].publish(SERVICE, "news", id="first", payload=entry("Bridge opens"),
                                                 timeout=TIMEOUT)
            notice = await next_item(cy.events, lambda m: m["pubsub_event"]["items"]["node"] == "news",
                                     what="the news notification")
            assert str(notice["from"]) == SERVICE
            assert notice["pubsub_event"]["items"]["item"]["id"] == "first"
            with pytest.raises(IqError) as refused:
                await cy.plugin["xep_0060"].publish(SERVICE, "news", payload=entry("spam"), timeout=TIMEOUT)
            assert refused.value.iq["error"]["condition"] == "forbidden"

            found = await cy.plugin["xep_0060"].get_items(SERVICE, "news", timeout=TIMEOUT)
            [item] = list(found["pubsub"]["items"])
            assert item.xml.find(f"{{{NS_ATOM}}}entry/{{{NS_ATOM}}}title").text == "Bridge opens"
            form = await ann.plugin["xep_0060"].get_node_config(SERVICE, "news", timeout=TIMEOUT)
            values = form["pubsub_owner"]["configure"]["form"].get_values()
            assert (values["pubsub#title"], values["pubsub#max_items"]) == ("Town news", "10")
            mine = await ann.plugin["xep_0060"].get_affiliations(SERVICE, timeout=TIMEOUT)
            assert [(a["node"], a["affiliation"]) for a in mine["pubsub"]["affiliations"]] == [("news", "owner")]

            await ann.plugin["xep_0060"].retract(SERVICE, "news", "first", notify=True, timeout=TIMEOUT)
            await ann.plugin["xep_0060"].delete_node(SERVICE, "news", timeout=TIMEOUT)
            with pytest.raises(IqError) as gone:
                await cy.plugin["xep_0060"].get_items(SERVICE, "news", timeout=TIMEOUT)
            assert gone.value.iq["error"]["condition"] == "item-not-found"

    asyncio.run(scenario())


def test_a_taken_name_and_a_non_owner(pubsub_server):
    """A node name already taken is a conflict, and an owner-only request from a non-owner is forbidden."""

    async def scenario():
        async with Clients(pubsub_server) as clients:
            ann = await online(clients, "ann@localhost/p")
            bea = await online(clients, "bea@localhost/p")
            await ann.plugin["xep_0060"].create_node(SERVICE, "board", timeout=TIMEOUT)
            with pytest.raises(IqError) as taken:
                await bea.plugin["xep_0060"].create_node(SERVICE, "board", timeout=TIMEOUT)
            assert taken.value.iq["error"]["condition"] == "conflict"
            with pytest.raises(IqError) as forbidden:
                await bea.plugin["xep_0060"].purge(SERVICE, "board", timeout=TIMEOUT)
            assert forbidden.value.iq["error"]["condition"] == "forbidden"

    asyncio.run(scenario())
