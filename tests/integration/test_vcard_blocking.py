"""vCards (XEP-0054) with the avatar hash in presence (XEP-0153), and blocking (XEP-0191)."""

import asyncio
import base64
import hashlib

from .harness import Clients, befriend, child, error_condition, next_item

NS_VCARD = "vcard-temp"
NS_UPDATE = "vcard-temp:x:update"
NS_BLOCKING = "urn:xmpp:blocking"
NS_BLOCKED = "urn:xmpp:blocking:errors"
PHOTO = bytes(range(256)) * 4


def vcard_xml(photo=None):
    parts = [f"<vCard xmlns='{NS_VCARD}'><FN>Judy Example</FN><NICKNAME>judes</NICKNAME>"]
    if photo is not None:
        parts.append(f"<PHOTO><TYPE>image/png</TYPE><BINVAL>{base64.b64encode(photo).decode()}</BINVAL></PHOTO>")
    parts.append("</vCard>")
    return "".join(parts)


def test_vcard_set_and_read_by_another_user(server):
    """A vCard stored by its owner is returned to another user who asks for it; that other user
    may not overwrite it."""

    async def scenario():
        async with Clients(server) as clients:
            judy = await clients.login("judy@localhost/card", presence=False)
            kim = await clients.login("kim@localhost/reader", presence=False)
            reply = await judy.query("set", None, vcard_xml(PHOTO))
            assert reply["type"] == "result", reply

            reply = await kim.query("get", "judy@localhost", f"<vCard xmlns='{NS_VCARD}'/>")
            assert reply["type"] == "result", reply
            assert reply["from"] == "judy@localhost"
            vcard = reply.xml.find(f"{{{NS_VCARD}}}vCard")
            assert vcard is not None, reply
            assert vcard.findtext(f"{{{NS_VCARD}}}FN") == "Judy Example"
            assert vcard.findtext(f"{{{NS_VCARD}}}NICKNAME") == "judes"
            binval = vcard.findtext(f"{{{NS_VCARD}}}PHOTO/{{{NS_VCARD}}}BINVAL")
            assert base64.b64decode(binval) == PHOTO

            reply = await kim.query("set", "judy@localhost", f"<vCard xmlns='{NS_VCARD}'><FN>Mallory</FN></vCard>")
            assert reply["type"] == "error", reply
            assert error_condition(reply) == "forbidden"
            reply = await kim.query("get", "judy@localhost", f"<vCard xmlns='{NS_VCARD}'/>")
            assert reply.xml.findtext(f"{{{NS_VCARD}}}vCard/{{{NS_VCARD}}}FN") == "Judy Example"

    asyncio.run(scenario())


def test_photo_hash_in_presence_after_vcard_with_photo(server):
    """Once an account's vCard holds a PHOTO, its available presence (re-sent without any
    vcard-temp:x:update of its own) carries <photo> with the SHA-1 of the image (XEP-0153)."""

    async def scenario():
        async with Clients(server) as clients:
            walter = await clients.login("walter@localhost/cam")
            kim = await clients.login("kim@localhost/watcher")
            await befriend(walter, kim)

            walter.send_presence(pstatus="no photo yet")
            plain = await next_item(kim.presences, lambda p: p["status"] == "no photo yet",
                                    what="presence before the vCard")
            hash_element = child(plain, f"{{{NS_UPDATE}}}x/{{{NS_UPDATE}}}photo")
            assert hash_element is None or not (hash_element.text or "").strip()

            image = b"\x89PNG walter's avatar" * 10
            reply = await walter.query("set", None, vcard_xml(image).replace("Judy Example", "Walter"))
            assert reply["type"] == "result", reply
            walter.send_presence(pstatus="with photo")
            stamped = await next_item(kim.presences, lambda p: p["status"] == "with photo",
                                      what="presence after the vCard")
            photo = child(stamped, f"{{{NS_UPDATE}}}x/{{{NS_UPDATE}}}photo")
            assert photo is not None, f"no vcard-temp:x:update photo in {stamped}"
            assert photo.text == hashlib.sha1(image).hexdigest()

    asyncio.run(scenario())


def blocklist(reply):
    return {item.get("jid") for item in reply.xml.iter(f"{{{NS_BLOCKING}}}item")}


def test_blocking_and_unblocking(server):
    """After mallory blocks niaj: niaj's message to mallory gets service-unavailable and never
    reaches her, mallory's message to niaj gets not-acceptable with <blocked/>, and the block list
    holds niaj (and is pushed to mallory's resource that asked for it).  After unblocking, the list is empty and niaj's messages arrive again."""

    async def scenario():
        async with Clients(server) as clients:
            mallory = await clients.login("mallory@localhost/desk")
            niaj = await clients.login("niaj@localhost/phone")
            watcher = await clients.login("mallory@localhost/watcher", presence=False)
            pushes = watcher.watch(f"{{jabber:client}}iq/{{{NS_BLOCKING}}}block")
            reply = await watcher.query("get", None, f"<blocklist xmlns='{NS_BLOCKING}'/>")
            assert reply["type"] == "result" and blocklist(reply) == set(), reply

            reply = await mallory.query("set", None, f"<block xmlns='{NS_BLOCKING}'><item jid='niaj@localhost'/></block>")
            assert reply["type"] == "result", reply
            reply = await mallory.query("get", None, f"<blocklist xmlns='{NS_BLOCKING}'/>")
            assert reply["type"] == "result", reply
            assert blocklist(reply) == {"niaj@localhost"}
            # The resource that asked for the list earlier gets the change pushed.
            push = await next_item(pushes, what="block push to the interested resource")
            assert push["type"] == "set"
            assert blocklist(push) == {"niaj@localhost"}

            niaj.send_message(mto="mallory@localhost", mbody="blocked words", mtype="chat")
            error = await next_item(niaj.message_errors, what="error for the blocked message")
            assert error_condition(error) == "service-unavailable", error
            assert error["from"].bare == "mallory@localhost"

            mallory.send_message(mto="niaj@localhost", mbody="to someone I block", mtype="chat")
            error = await next_item(mallory.message_errors, what="error for a message to a blocked contact")
            assert error_condition(error) == "not-acceptable", error
            assert child(error, f"{{{NS_BLOCKED}}}blocked") is not None, error

            reply = await mallory.query("set", None, f"<unblock xmlns='{NS_BLOCKING}'><item jid='niaj@localhost'/></unblock>")
            assert reply["type"] == "result", reply
            reply = await mallory.query("get", None, f"<blocklist xmlns='{NS_BLOCKING}'/>")
            assert blocklist(reply) == set()

            niaj.send_message(mto="mallory@localhost", mbody="after unblock", mtype="chat")
            # The first message mallory ever receives is this one: the blocked one never arrived.
            message = await next_item(mallory.messages, what="message after unblocking")
            assert message["body"] == "after unblock"
            assert message["from"] == "niaj@localhost/phone"
            assert mallory.messages.empty()

    asyncio.run(scenario())
