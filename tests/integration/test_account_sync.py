"""The avatar and bookmark conversions against the real server, driven by slixmpp's xep_0153/xep_0054 and
xep_0084 (XEP-0398), xep_0048/xep_0049 and xep_0402/xep_0060 (XEP-0411) plugins."""

import asyncio
import hashlib

import pytest
from slixmpp.plugins.xep_0004 import Form
from slixmpp.plugins.xep_0402.stanza import Conference

from .harness import TIMEOUT, Clients, befriend, next_item

USERS = ("ana@localhost", "ben@localhost", "eva@localhost")
PLUGINS = {"xep_0004": {}, "xep_0030": {}, "xep_0060": {}, "xep_0163": {}, "xep_0054": {}, "xep_0153": {},
           "xep_0084": {}, "xep_0049": {}, "xep_0048": {}, "xep_0402": {}}
NS_AVATAR_METADATA = "urn:xmpp:avatar:metadata"
NS_BOOKMARKS = "urn:xmpp:bookmarks:1"
PICTURE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


@pytest.fixture(scope="module")
def sync_server(start_server):
    return start_server("sync", USERS)


def test_vcard_avatar_appears_in_pep(sync_server):
    """ana sets her avatar with xep_0153 (a vCard PHOTO); her PEP metadata then names its SHA-1 and the
    data node holds the image, as xep_0084 reads them."""

    async def scenario():
        async with Clients(sync_server) as clients:
            ana = await clients.login("ana@localhost/a", plugins=PLUGINS)
            await ana.plugin["xep_0153"].set_avatar(avatar=PICTURE, mtype="image/png", timeout=TIMEOUT)
            digest = hashlib.sha1(PICTURE).hexdigest()
            metadata = await ana.plugin["xep_0060"].get_items("ana@localhost", NS_AVATAR_METADATA, timeout=TIMEOUT)
            [item] = list(metadata["pubsub"]["items"])
            assert item["id"] == digest
            info = item.xml.find(f"{{{NS_AVATAR_METADATA}}}metadata/{{{NS_AVATAR_METADATA}}}info")
            assert (info.get("id"), info.get("type"), info.get("bytes")) == (digest, "image/png", str(len(PICTURE)))
            data = await ana.plugin["xep_0084"].retrieve_avatar("ana@localhost", digest, timeout=TIMEOUT)
            assert data["pubsub"]["items"]["item"]["avatar_data"]["value"] == PICTURE

    asyncio.run(scenario())


def test_pep_avatar_appears_in_the_vcard_and_presence(sync_server):
    """ben publishes an avatar with xep_0084; his vCard (xep_0054) then holds the image, and eva, his
    contact, receives his presence with the image's hash (vcard-temp:x:update)."""

    async def scenario():
        async with Clients(sync_server) as clients:
            ben = await clients.login("ben@localhost/b", plugins=PLUGINS)
            eva = await clients.login("eva@localhost/e", plugins=PLUGINS)
            await befriend(ben, eva)
            digest = ben.plugin["xep_0084"].generate_id(PICTURE)
            await ben.plugin["xep_0084"].publish_avatar(PICTURE, timeout=TIMEOUT)
            await ben.plugin["xep_0084"].publish_avatar_metadata(
                {"id": digest, "type": "image/png", "bytes": len(PICTURE)}, timeout=TIMEOUT)
            vcard = await ben.plugin["xep_0054"].get_vcard("ben@localhost", cached=False, timeout=TIMEOUT)
            assert vcard["vcard_temp"]["PHOTO"]["BINVAL"] == PICTURE
            assert vcard["vcard_temp"]["PHOTO"]["TYPE"] == "image/png"
            await next_item(eva.presences, lambda p: p["from"].bare == "ben@localhost"
                            and p["vcard_temp_update"]["photo"] == digest, what="ben's presence with the new hash")

    asyncio.run(scenario())


def test_bookmarks_are_kept_in_both_stores(sync_server):
    """eva stores XEP-0048 bookmarks with xep_0048 (private storage): they are XEP-0402 items; she adds one
    with xep_0402's payload and publish-options: xep_0048 then reads both rooms, and her URL bookmark."""

    async def scenario():
        async with Clients(sync_server) as clients:
            eva = await clients.login("eva@localhost/books", plugins=PLUGINS)
            legacy = eva.plugin["xep_0048"].stanza.Bookmarks()
            legacy.add_conference("coven@conference.localhost", "eva", name="The coven", autojoin=True)
            legacy.add_url("https://example.org/", name="home")
            await eva.plugin["xep_0048"].set_bookmarks(legacy, timeout=TIMEOUT)
            found = await eva.plugin["xep_0060"].get_items("eva@localhost", NS_BOOKMARKS, timeout=TIMEOUT)
            [item] = list(found["pubsub"]["items"])
            assert item["id"] == "coven@conference.localhost"
            assert (item["conference"]["name"], item["conference"]["autojoin"], item["conference"]["nick"]) == (
                "The coven", True, "eva")

            form = Form()
            form["type"] = "submit"
            form.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/pubsub#publish-options")
            form.add_field(var="pubsub#persist_items", value="true")
            form.add_field(var="pubsub#max_items", value="max")
            form.add_field(var="pubsub#access_model", value="whitelist")
            form.add_field(var="pubsub#send_last_published_item", value="never")
            conference = Conference()
            conference["name"] = "Tea"
            conference["nick"] = "eve"
            await eva.plugin["xep_0060"].publish(None, NS_BOOKMARKS, id="tea@conference.localhost",
                                                 payload=conference.xml, options=form, timeout=TIMEOUT)
            stored = await eva.plugin["xep_0048"].get_bookmarks(timeout=TIMEOUT)
            bookmarks = stored["private"]["bookmarks"]
            rooms = {str(c["jid"]): c for c in bookmarks["conferences"]}
            assert sorted(rooms) == ["coven@conference.localhost", "tea@conference.localhost"]
            assert (rooms["tea@conference.localhost"]["name"], rooms["tea@conference.localhost"]["nick"]) == ("Tea", "eve")
            assert [u["url"] for u in bookmarks["urls"]] == ["https://example.org/"]

    asyncio.run(scenario())
