"""Rosters (RFC 6121 section 2): set, push to every interested resource, remove."""

import asyncio

from .harness import Clients, next_item, roster_items

ITEM = ("<query xmlns='jabber:iq:roster'><item jid='trent@localhost' name='Trent'>"
        "<group>Friends</group></item></query>")


def test_roster_set_is_pushed_to_other_resource(server):
    """When bob/r1 adds a roster item, bob/r2 (which fetched its roster) receives a roster push
    with the item's name, group and subscription 'none', and a later roster get returns it."""

    async def scenario():
        async with Clients(server) as clients:
            r1 = await clients.login("bob@localhost/r1")
            r2 = await clients.login("bob@localhost/r2")
            reply = await r1.query("set", None, ITEM)
            assert reply["type"] == "result", reply
            push = await next_item(r2.roster_pushes, lambda iq: "trent@localhost" in roster_items(iq),
                                   what="roster push of trent@localhost")
            assert not push["from"] or push["from"].bare == "bob@localhost"
            item = roster_items(push)["trent@localhost"]
            assert item["name"] == "Trent"
            assert list(item["groups"]) == ["Friends"]
            assert item["subscription"] == "none"
            # The resource that made the change is pushed too.
            await next_item(r1.roster_pushes, lambda iq: "trent@localhost" in roster_items(iq),
                            what="roster push to the resource that set the item")
            fetched = await r2.query("get", None, "<query xmlns='jabber:iq:roster'/>")
            assert roster_items(fetched)["trent@localhost"]["name"] == "Trent"

            removal = "<query xmlns='jabber:iq:roster'><item jid='trent@localhost' subscription='remove'/></query>"
            reply = await r2.query("set", None, removal)
            assert reply["type"] == "result", reply
            push = await next_item(r1.roster_pushes,
                                   lambda iq: roster_items(iq).get("trent@localhost", {}).get("subscription")
                                   == "remove", what="roster push removing trent@localhost")
            fetched = await r1.query("get", None, "<query xmlns='jabber:iq:roster'/>")
            assert "trent@localhost" not in roster_items(fetched)

    asyncio.run(scenario())
