"""Subscriptions and presence (RFC 6121 sections 3 and 4)."""

import asyncio

from .harness import Clients, befriend, collect, login, next_item, roster_items, subscription_of


def roster_query():
    return "<query xmlns='jabber:iq:roster'/>"


def test_subscription_handshake_both_ways(server):
    """carol subscribes to dave and dave approves (carol: 'to', dave: 'from', carol sees dave's
    presence); dave subscribes back and carol approves; both rosters end with 'both'."""

    async def scenario():
        async with Clients(server) as clients:
            carol = await clients.login("carol@localhost/home")
            dave = await clients.login("dave@localhost/home")

            carol.send_presence(pto="dave@localhost", ptype="subscribe")
            push = await next_item(carol.roster_pushes, lambda iq: "dave@localhost" in roster_items(iq),
                                   what="roster push of the outgoing request")
            assert roster_items(push)["dave@localhost"]["subscription"] == "none"
            assert roster_items(push)["dave@localhost"]["ask"] == "subscribe"
            request = await next_item(dave.presences, lambda p: p["type"] == "subscribe",
                                      what="subscription request at dave")
            assert request["from"] == "carol@localhost"

            dave.send_presence(pto="carol@localhost", ptype="subscribed")
            found = await collect(carol.presences, {
                "approval": lambda p: p["type"] == "subscribed" and p["from"] == "dave@localhost",
                "presence": lambda p: p["type"] == "available" and p["from"] == "dave@localhost/home",
            })
            assert found["presence"][1]["to"].bare == "carol@localhost"
            await next_item(carol.roster_pushes, lambda iq: subscription_of(iq, "dave@localhost") == "to",
                            what="roster push with subscription 'to'")
            await next_item(dave.roster_pushes, lambda iq: subscription_of(iq, "carol@localhost") == "from",
                            what="roster push with subscription 'from'")

            dave.send_presence(pto="carol@localhost", ptype="subscribe")
            await next_item(carol.presences,
                            lambda p: p["type"] == "subscribe" and p["from"] == "dave@localhost",
                            what="subscription request at carol")
            carol.send_presence(pto="dave@localhost", ptype="subscribed")
            await collect(dave.presences, {
                "approval": lambda p: p["type"] == "subscribed" and p["from"] == "carol@localhost",
                "presence": lambda p: p["type"] == "available" and p["from"] == "carol@localhost/home",
            })

            for client, contact in ((carol, "dave@localhost"), (dave, "carol@localhost")):
                await next_item(client.roster_pushes, lambda iq: subscription_of(iq, contact) == "both",
                                what=f"roster push of {contact} with 'both'")
                roster = await client.query("get", None, roster_query())
                item = roster_items(roster)[contact]
                assert item["subscription"] == "both", (client.boundjid, item)
                assert not item.get("ask")

    asyncio.run(scenario())


def test_approval_arrives_before_the_contacts_presence(server):
    """RFC 6121 section 3.1.5: the contact's server routes the 'subscribed' approval (and pushes
    the roster) first, THEN sends the contact's current presence; so the user sees the approval
    and the roster push with 'to' before the first presence of the new contact."""

    async def scenario():
        async with Clients(server) as clients:
            uma = await clients.login("uma@localhost/home")
            victor = await clients.login("victor@localhost/home")
            uma.send_presence(pto="victor@localhost", ptype="subscribe")
            await next_item(victor.presences, lambda p: p["type"] == "subscribe", what="request at victor")
            victor.send_presence(pto="uma@localhost", ptype="subscribed")
            found = await collect(uma.presences, {
                "approval": lambda p: p["type"] == "subscribed" and p["from"] == "victor@localhost",
                "presence": lambda p: p["type"] == "available" and p["from"] == "victor@localhost/home",
            })
            assert found["approval"][0] < found["presence"][0], (
                "victor's presence reached uma before his subscription approval")

    asyncio.run(scenario())


def test_presence_broadcast_and_unavailable_on_logout(server):
    """With a mutual subscription, a change of show/status by one user reaches the other, and
    logging out (closing the stream) sends unavailable presence from the full JID."""

    async def scenario():
        async with Clients(server) as clients:
            pat = await clients.login("pat@localhost/desk")
            quinn = await clients.login("quinn@localhost/phone")
            await befriend(pat, quinn)

            quinn.send_presence(pshow="away", pstatus="at lunch")
            changed = await next_item(pat.presences,
                                      lambda p: p["from"] == "quinn@localhost/phone" and p["show"] == "away",
                                      what="quinn's away presence")
            assert changed["status"] == "at lunch"
            assert changed["type"] == "away"

            await quinn.close()
            gone = await next_item(pat.presences,
                                   lambda p: p["from"] == "quinn@localhost/phone" and p["type"] == "unavailable",
                                   what="quinn's unavailable presence")
            assert gone["to"].bare == "pat@localhost"

    asyncio.run(scenario())


def test_dropped_socket_gives_unavailable_presence(server):
    """A contact whose TCP connection is aborted (no closing tag, no unavailable presence of its
    own) is announced unavailable to its subscribers by the server."""

    async def scenario():
        async with Clients(server) as clients:
            sam = await clients.login("sam@localhost/laptop")
            sue = await clients.login("sue@localhost/tablet")
            await befriend(sam, sue)
            # sue's presence is known to sam before the drop.
            sue.send_presence(pstatus="here")
            await next_item(sam.presences, lambda p: p["from"] == "sue@localhost/tablet" and p["status"] == "here",
                            what="sue's presence")

            sue.transport.abort()
            gone = await next_item(sam.presences,
                                   lambda p: p["from"] == "sue@localhost/tablet" and p["type"] == "unavailable",
                                   what="unavailable presence after the dropped socket")
            assert gone["to"].bare == "sam@localhost"

            # The server forgot the dropped session: a new one of sue is announced again.
            again = await login("sue@localhost/tablet", server.password("sue@localhost"), server.port)
            clients.track(again)
            await next_item(sam.presences,
                            lambda p: p["from"] == "sue@localhost/tablet" and p["type"] == "available",
                            what="sue's presence after logging in again")

    asyncio.run(scenario())
