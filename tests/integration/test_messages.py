"""Message delivery (RFC 6121 section 8) and offline storage (XEP-0160, XEP-0203 stamps)."""

import asyncio
import datetime

from .harness import Clients, barrier, child, error_condition, next_item

NS_DELAY = "urn:xmpp:delay"


def test_chat_to_full_and_bare_jid(server):
    """A chat message to a full JID reaches that resource and one to the bare JID reaches the
    available resource, with the sender's full JID as 'from'; replies flow back the same way."""

    async def scenario():
        async with Clients(server) as clients:
            erin = await clients.login("erin@localhost/pc")
            frank = await clients.login("frank@localhost/mobile")

            erin.send_message(mto="frank@localhost/mobile", mbody="to your full JID", mtype="chat")
            message = await next_item(frank.messages, what="message to the full JID")
            assert message["body"] == "to your full JID"
            assert message["from"] == "erin@localhost/pc"
            assert message["to"] == "frank@localhost/mobile"
            assert message["type"] == "chat"

            erin.send_message(mto="frank@localhost", mbody="to your bare JID", mtype="chat")
            message = await next_item(frank.messages, what="message to the bare JID")
            assert message["body"] == "to your bare JID"
            assert message["from"] == "erin@localhost/pc"

            frank.send_message(mto="erin@localhost", mbody="and back", mtype="chat")
            message = await next_item(erin.messages, what="the reply")
            assert message["body"] == "and back"
            assert message["from"] == "frank@localhost/mobile"

    asyncio.run(scenario())


def test_message_to_unknown_account_is_an_error(server):
    """A message to an account that does not exist comes back as an error (service-unavailable)."""

    async def scenario():
        async with Clients(server) as clients:
            erin = await clients.login("erin@localhost/unknown")
            erin.send_message(mto="nobody-here@localhost", mbody="hello?", mtype="chat")
            error = await next_item(erin.message_errors, what="error for the unknown account")
            assert error["from"].bare == "nobody-here@localhost"
            assert error_condition(error) == "service-unavailable"

    asyncio.run(scenario())


def test_offline_messages_delivered_in_order_with_delay(server):
    """Three messages to an offline user are stored and delivered at their next login, in the
    order sent, each with a XEP-0203 <delay/> stamped by the server; they are delivered once."""

    async def scenario():
        async with Clients(server) as clients:
            grace = await clients.login("grace@localhost/pc")
            before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
            bodies = ["first", "second", "third"]
            for body in bodies:
                grace.send_message(mto="heidi@localhost", mbody=body, mtype="chat")
            await barrier(grace)

            heidi = await clients.login("heidi@localhost/later")
            received = [await next_item(heidi.messages, what=f"offline message {n + 1}") for n in range(3)]
            assert [m["body"] for m in received] == bodies
            after = datetime.datetime.now(datetime.timezone.utc)
            for message in received:
                assert message["from"] == "grace@localhost/pc"
                delay = child(message, f"{{{NS_DELAY}}}delay")
                assert delay is not None, f"no urn:xmpp:delay element in {message}"
                stamp = datetime.datetime.fromisoformat(delay.get("stamp").replace("Z", "+00:00"))
                assert before - datetime.timedelta(seconds=1) <= stamp <= after, stamp
                assert delay.get("from") == "localhost"
            await heidi.close()

            # Delivered once: at the next login only a live message arrives, with no delay.
            heidi = await clients.login("heidi@localhost/again")
            grace.send_message(mto="heidi@localhost/again", mbody="live", mtype="chat")
            message = await next_item(heidi.messages, what="live message")
            assert message["body"] == "live"
            assert child(message, f"{{{NS_DELAY}}}delay") is None

    asyncio.run(scenario())
