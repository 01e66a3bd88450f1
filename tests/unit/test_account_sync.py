"""The conversions between two stores of one account's data: avatars in the vCard and in PEP (XEP-0398),
bookmarks in private storage and in PEP (XEP-0411 / XEP-0402 section 5.3), on the in-memory server."""

import base64
import hashlib

from bridge.features.avatars import NS_DATA, NS_METADATA
from bridge.features.bookmarks import NS_BOOKMARKS
from tests.unit.test_pep import NS_PUBSUB, PepTestCase, options_form

IMAGE = b"\x89PNG\r\n\x1a\n not really an image"
NS_VCARD = "vcard-temp"
NS_UPDATE = "vcard-temp:x:update"


class ConversionTestCase(PepTestCase):
    def vcard(self, client, inner):
        return client.iq(f"<iq type='set' id='v'><vCard xmlns='{NS_VCARD}'>{inner}</vCard></iq>")

    def stored_vcard(self, client):
        return client.iq("<iq type='get' id='g' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>").vCard

    def private(self, client, kind, inner):
        return client.iq(f"<iq type='{kind}' id='pr'><query xmlns='jabber:iq:private'>{inner}</query></iq>")


class AvatarTests(ConversionTestCase):
    def test_vcard_photo_is_published_to_both_avatar_nodes(self):
        """A client's vCard photo becomes the data item (base64 of the image, its SHA-1 as id) and the metadata
        item (id, bytes, type) of XEP-0084; a resource that wants metadata notifications is told."""
        alice = self.online("alice@localhost/a", [NS_METADATA + "+notify"])
        self.answer_caps(alice, [NS_METADATA + "+notify"])
        digest = hashlib.sha1(IMAGE).hexdigest()
        reply = self.vcard(alice, f"<FN>Alice</FN><PHOTO><TYPE>image/png</TYPE>"
                                  f"<BINVAL>{base64.b64encode(IMAGE).decode()}</BINVAL></PHOTO>")
        self.assertEqual(reply["type"], "result")
        notices = self.events(alice.received())
        self.assertEqual([n.event.items["node"] for n in notices], [NS_METADATA])
        data = self.items(alice, NS_DATA)
        self.assertEqual(self.item_ids(data), [digest])
        self.assertEqual(base64.b64decode(str(data.pubsub.items.item.data)), IMAGE)
        info = self.items(alice, NS_METADATA).pubsub.items.item.metadata.info
        self.assertEqual((info["id"], info["bytes"], info["type"]), (digest, str(len(IMAGE)), "image/png"))

    def test_vcard_without_photo_disables_the_pep_avatar(self):
        """A vCard that drops its photo publishes an empty metadata item (XEP-0084's avatar disabled); the
        same photo set again publishes nothing new."""
        alice = self.online("alice@localhost/a")
        photo = f"<PHOTO><TYPE>image/png</TYPE><BINVAL>{base64.b64encode(IMAGE).decode()}</BINVAL></PHOTO>"
        self.vcard(alice, photo)
        self.vcard(alice, "<FN>Alice</FN>" + photo)
        self.assertEqual(len(self.item_ids(self.items(alice, NS_METADATA))), 1)
        self.vcard(alice, "<FN>Alice</FN>")
        metadata = self.items(alice, NS_METADATA).pubsub.items.item.metadata
        self.assertEqual(list(metadata.elements()), [])

    def test_pep_avatar_goes_into_the_vcard_and_presence(self):
        """A client's data then metadata publish puts the image in the vCard (PHOTO with TYPE and BINVAL,
        the other fields kept), and the owner's available resource announces the new hash to its contact."""
        alice = self.online("alice@localhost/a")
        bob = self.online("bob@localhost/b")
        self.befriend(alice, bob, "alice@localhost", "bob@localhost")
        self.vcard(alice, "<FN>Alice</FN>")
        digest = hashlib.sha1(IMAGE).hexdigest()
        self.publish(alice, NS_DATA, f"<data xmlns='{NS_DATA}'>{base64.b64encode(IMAGE).decode()}</data>",
                     item_id=digest)
        bob.received()
        self.publish(alice, NS_METADATA, f"<metadata xmlns='{NS_METADATA}'><info id='{digest}' type='image/webp' "
                                         f"bytes='{len(IMAGE)}'/></metadata>", item_id=digest)
        vcard = self.stored_vcard(alice)
        self.assertEqual(str(vcard.FN), "Alice")
        self.assertEqual(str(vcard.PHOTO.TYPE), "image/webp")
        self.assertEqual(base64.b64decode(str(vcard.PHOTO.BINVAL)), IMAGE)
        presences = [s for s in bob.received() if s.name == "presence" and s.getAttribute("type") is None]
        self.assertEqual(len(presences), 1)
        self.assertEqual(str(next(presences[0].elements(NS_UPDATE, "x")).photo), digest)

    def test_metadata_naming_a_missing_or_wrong_image_leaves_the_vcard(self):
        """Metadata whose id names no data item, or a data item whose SHA-1 is not its id, changes nothing."""
        alice = self.online("alice@localhost/a")
        self.vcard(alice, "<FN>Alice</FN>")
        self.publish(alice, NS_DATA, f"<data xmlns='{NS_DATA}'>{base64.b64encode(IMAGE).decode()}</data>",
                     item_id="0" * 40)
        for digest in ("0" * 40, "1" * 40):
            self.publish(alice, NS_METADATA, f"<metadata xmlns='{NS_METADATA}'><info id='{digest}' type='image/png' "
                                             "bytes='5'/></metadata>", item_id=digest)
        self.assertIsNone(self.stored_vcard(alice).PHOTO)

    def test_empty_metadata_removes_the_vcard_photo(self):
        """An empty metadata publish (avatar disabled) removes the vCard's photo and its hash from presence."""
        alice = self.online("alice@localhost/a")
        self.vcard(alice, f"<FN>Alice</FN><PHOTO><TYPE>image/png</TYPE>"
                          f"<BINVAL>{base64.b64encode(IMAGE).decode()}</BINVAL></PHOTO>")
        alice.received()
        self.publish(alice, NS_METADATA, f"<metadata xmlns='{NS_METADATA}'/>", item_id="off")
        self.assertIsNone(self.stored_vcard(alice).PHOTO)
        own = [s for s in alice.received() if s.name == "presence"]
        self.assertEqual(len(own), 1)
        self.assertIsNone(next(own[0].elements(NS_UPDATE, "x"), None))

    def test_conversion_is_announced_on_the_account(self):
        """disco#info of the account lists XEP-0398's and XEP-0402's conversion features."""
        alice = self.online("alice@localhost/a")
        reply = alice.iq("<iq type='get' id='d' to='alice@localhost'>"
                         "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        features = {feature["var"] for feature in reply.query.elements() if feature.name == "feature"}
        self.assertLessEqual({"urn:xmpp:pep-vcard-conversion:0", NS_BOOKMARKS + "#compat"}, features)


class BookmarkTests(ConversionTestCase):
    pep = {"max_items_per_node": 50}

    def test_private_bookmarks_become_pep_items(self):
        """A XEP-0048 fragment becomes one XEP-0402 item per room (name, autojoin, nick, password); a later
        fragment without a room retracts its item, with a notification to a +notify resource."""
        alice = self.online("alice@localhost/a", [NS_BOOKMARKS + "+notify"])
        self.answer_caps(alice, [NS_BOOKMARKS + "+notify"])
        self.private(alice, "set", "<storage xmlns='storage:bookmarks'>"
                                   "<conference jid='tea@conference.localhost' name='Tea' autojoin='1'>"
                                   "<nick>al</nick><password>pw</password></conference>"
                                   "<conference jid='coffee@conference.localhost'/>"
                                   "<url name='home' url='https://example.org/'/></storage>")
        found = self.items(alice, NS_BOOKMARKS)
        self.assertEqual(sorted(self.item_ids(found)), ["coffee@conference.localhost", "tea@conference.localhost"])
        tea = next(item for item in found.pubsub.items.elements(NS_PUBSUB, "item")
                   if item["id"] == "tea@conference.localhost").conference
        self.assertEqual((tea["name"], tea["autojoin"], str(tea.nick), str(tea.password)), ("Tea", "true", "al", "pw"))
        alice.received()
        self.private(alice, "set", "<storage xmlns='storage:bookmarks'>"
                                   "<conference jid='tea@conference.localhost' name='Tea' autojoin='true'>"
                                   "<nick>al</nick><password>pw</password></conference></storage>")
        retractions = [r["id"] for n in self.events(alice.received()) for r in n.event.items.elements() if r.name == "retract"]
        self.assertEqual(retractions, ["coffee@conference.localhost"])
        self.assertEqual(self.item_ids(self.items(alice, NS_BOOKMARKS)), ["tea@conference.localhost"])

    def test_pep_bookmarks_become_the_private_fragment(self):
        """A XEP-0402 publish and retract rewrite the fragment's conferences; its URL bookmarks stay."""
        alice = self.online("alice@localhost/a")
        self.private(alice, "set", "<storage xmlns='storage:bookmarks'><url name='home' url='https://example.org/'/>"
                                   "<conference jid='old@conference.localhost'/></storage>")
        options = options_form(persist_items="true", max_items="max", access_model="whitelist",
                               send_last_published_item="never")
        for room in ("tea", "coffee"):
            reply = self.publish(alice, NS_BOOKMARKS, f"<conference xmlns='{NS_BOOKMARKS}' name='{room}' "
                                                      f"autojoin='true'><nick>al</nick></conference>",
                                 item_id=f"{room}@conference.localhost", options=options)
            self.assertEqual(reply["type"], "result", reply.toXml())
        self.iq(alice, "set", f"<retract node='{NS_BOOKMARKS}'><item id='tea@conference.localhost'/></retract>")
        storage = self.private(alice, "get", "<storage xmlns='storage:bookmarks'/>").query.storage
        rooms = {c["jid"]: c for c in storage.elements("storage:bookmarks", "conference")}
        self.assertEqual(sorted(rooms), ["coffee@conference.localhost", "old@conference.localhost"])
        self.assertEqual((rooms["coffee@conference.localhost"]["autojoin"], str(rooms["coffee@conference.localhost"].nick)),
                         ("true", "al"))
        self.assertEqual([u["url"] for u in storage.elements("storage:bookmarks", "url")], ["https://example.org/"])
