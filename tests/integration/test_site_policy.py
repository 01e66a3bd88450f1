"""Site policies on the real server (docs/operations.md, "Site policies"): in a "domain" site two
slixmpp users who never subscribed see each other's presence."""

import asyncio

from .harness import Clients, next_item, roster_items

SITE = "site.test"
USERS = (f"ann@{SITE}", f"ben@{SITE}")
TABLES = f'[hosts."{SITE}"]\npresence_access = "domain"\n'


def test_domain_site_colleagues_see_presence_without_subscribing(start_server):
    """ann is online with a status; ben logs in and is shown ann's presence, and ann is shown ben's,
    though neither roster holds the other."""
    server = start_server("site-policy", USERS, tables=TABLES)

    async def scenario():
        async with Clients(server) as clients:
            ann = await clients.login(f"ann@{SITE}/desk")
            ann.send_presence(pstatus="in a meeting", pshow="away")
            ben = await clients.login(f"ben@{SITE}/phone")
            seen = await next_item(ben.presences, lambda p: p["from"] == f"ann@{SITE}/desk",
                                   what="ann's presence at ben")
            assert (seen["type"], seen["status"]) == ("away", "in a meeting")
            await next_item(ann.presences, lambda p: p["from"] == f"ben@{SITE}/phone" and p["type"] == "available",
                            what="ben's presence at ann")
            roster = await ben.query("get", None, "<query xmlns='jabber:iq:roster'/>")
            assert roster_items(roster) == {}

    asyncio.run(scenario())
