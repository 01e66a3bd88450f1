"""Privacy lists (XEP-0016) driven by slixmpp's own xep_0016 plugin, and the block list (XEP-0191) that shares their store."""

import asyncio

from .harness import Clients, error_condition, next_item

ACCOUNTS = ["priya@localhost", "quentin@localhost", "rosa@localhost"]


def test_privacy_list_refuses_a_contact_and_shows_on_the_block_list(start_server):
    """priya sets, with slixmpp's xep_0016 plugin, a list denying quentin, makes it active and default:
    quentin's message is refused (service-unavailable) and never reaches her, rosa's still does, and
    XEP-0191 (slixmpp's xep_0191) lists quentin as blocked."""
    server = start_server("privacy", ACCOUNTS)

    async def scenario():
        async with Clients(server) as clients:
            priya = await clients.login("priya@localhost/desk")
            quentin = await clients.login("quentin@localhost/phone")
            rosa = await clients.login("rosa@localhost/laptop")
            priya.register_plugin("xep_0016")
            priya.register_plugin("xep_0191")
            privacy = priya.plugin["xep_0016"]
            await privacy.edit_list("no-quentin", [
                {"type": "jid", "value": "quentin@localhost", "action": "deny", "order": "1"}])
            await privacy.activate("no-quentin")
            await privacy.make_default("no-quentin")
            lists = await privacy.get_privacy_lists()
            assert lists["privacy"]["default"]["name"] == "no-quentin", lists
            assert lists["privacy"]["active"]["name"] == "no-quentin", lists

            quentin.send_message(mto="priya@localhost", mbody="let me in", mtype="chat")
            error = await next_item(quentin.message_errors, what="quentin's refused message")
            assert error_condition(error) == "service-unavailable", error
            rosa.send_message(mto="priya@localhost", mbody="after quentin", mtype="chat")
            first = await next_item(priya.messages, what="the first message priya receives")
            assert (str(first["from"].bare), first["body"]) == ("rosa@localhost", "after quentin"), first

            blocked = await priya.plugin["xep_0191"].get_blocked()
            listed = {item.get("jid") for item in blocked.xml.iter("{urn:xmpp:blocking}item")}
            assert listed == {"quentin@localhost"}, blocked

    asyncio.run(scenario())
