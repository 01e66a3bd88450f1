"""Message Archive Management (XEP-0313) with RSM (XEP-0059) and stanza ids (XEP-0359), on the in-memory server."""

import contextlib
import io
import json
import os
import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase
from twisted.words.protocols.jabber.jid import JID

from bridge import config as configuration, ctl
from bridge.core.sessions import Session
from bridge.core.stanza import make
from bridge.core.storage import ArchiveQuery, ArchiveRecord, sqlite
from bridge.core.xmlstream import parse_element, serialize
from tests.unit.helpers import GatewayLine, Harness, LateStorage, gateway_context, result_of

NS_MAM = "urn:xmpp:mam:2"
NS_SID = "urn:xmpp:sid:0"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_FORWARD = "urn:xmpp:forward:0"
DAY = 86400


def messages(elements):
    return [e for e in elements if e.name == "message"]


def condition(stanza):
    return next(stanza.error.elements()).name


def stanza_ids(message):
    """The (by, id) of the stanza-ids of ``message`` as it is written (the server's stamp is raw XML)."""
    written = parse_element(serialize(message))
    return [(c["by"], c["id"]) for c in written.elements() if c.uri == NS_SID and c.name == "stanza-id"]


def form(*fields):
    """A query form of (var, value or [values]) fields."""
    text = f"<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>{NS_MAM}</value></field>"
    for var, values in fields:
        values = values if isinstance(values, list) else [values]
        text += f"<field var='{var}'>" + "".join(f"<value>{v}</value>" for v in values) + "</field>"
    return text + "</x>"


def rsm(**elements):
    return f"<set xmlns='{NS_RSM}'>" + "".join(f"<{k}>{v}</{k}>" for k, v in elements.items()) + "</set>"


class ArchiveTestCase(SynchronousTestCase):
    mam = {}
    hosts = None

    def setUp(self):
        document = {"c2s": {"require_encryption": False}, "hosts": self.hosts or {"localhost": {}}, "mam": self.mam}
        self.harness = Harness(configuration.parse(document, "test.toml"), self.make_storage())
        for user in ("alice", "bob", "carol"):
            self.harness.add_user(f"{user}@localhost")

    def make_storage(self):
        return None

    def online(self, jid, presence=True):
        client = self.harness.login(jid)
        if presence:
            client.send("<presence/>")
            client.received()
        return client

    def query(self, client, payload="", queryid="q1", to=""):
        """(the results' forwarded messages, with their result ids, and the IQ reply)."""
        to_attribute = f" to='{to}'" if to else ""
        reply = client.iq(f"<iq type='set' id='mamq'{to_attribute}><query xmlns='{NS_MAM}' queryid='{queryid}'>"
                          f"{payload}</query></iq>")
        results = []
        for message in messages(client.backlog):
            result = next(message.elements(NS_MAM, "result"), None)
            if result is not None:
                forwarded = next(result.elements(NS_FORWARD, "forwarded"))
                inner = next(child for child in forwarded.elements() if child.name == "message")
                results.append((result["id"], inner, message, result, forwarded))
        client.backlog = []
        return results, reply

    def bodies(self, results):
        return [str(inner.body) for _, inner, *_ in results]

    def fin(self, reply):
        self.assertEqual(reply["type"], "result", reply.toXml())
        fin = next(reply.elements(NS_MAM, "fin"))
        rsm_set = next(fin.elements(NS_RSM, "set"))
        values = {child.name: str(child) for child in rsm_set.elements()}
        first = next(rsm_set.elements(NS_RSM, "first"), None)
        self.assertIsNone(first.getAttribute("index") if first is not None else None)
        values["complete"] = fin.getAttribute("complete")
        return values

    def archive(self, user):
        return result_of(self.harness.storage.archive_query("localhost", user, ArchiveQuery(limit=1000))).records


class ArchivingTests(ArchiveTestCase):
    def test_both_sides_are_archived_and_found_by_another_resource(self):
        """A message alice's phone sends to bob is in alice's archive (found by her laptop's query,
        from her bare JID, with a delay stamp) and in bob's."""
        phone = self.online("alice@localhost/phone")
        laptop = self.online("alice@localhost/laptop")
        self.online("bob@localhost/b")
        phone.send("<message to='bob@localhost' type='chat' id='m1'><body>hello</body></message>")
        laptop.send(f"<iq type='set' id='raw'><query xmlns='{NS_MAM}'/></iq>")
        self.assertIn(f"<forwarded xmlns='{NS_FORWARD}'><delay xmlns='urn:xmpp:delay' ",
                      laptop.transport.value().decode())
        self.assertIn("/><message xmlns='jabber:client' to='bob@localhost'", laptop.transport.value().decode())
        laptop.received()
        results, reply = self.query(laptop)
        [(record_id, inner, message, result, forwarded)] = results
        self.assertEqual((message["from"], message["to"], result["queryid"]),
                         ("alice@localhost", "alice@localhost/laptop", "q1"))
        self.assertEqual((inner["from"], inner["to"], inner["id"], str(inner.body)),
                         ("alice@localhost/phone", "bob@localhost", "m1", "hello"))
        self.assertIsNotNone(next(forwarded.elements("urn:xmpp:delay", "delay"))["stamp"])
        self.assertEqual(self.fin(reply)["complete"], "true")
        self.assertEqual([r.direction for r in self.archive("bob")], ["in"])
        self.assertEqual([(r.direction, r.with_jid) for r in self.archive("alice")], [("out", "bob@localhost")])

    def test_delivered_copy_is_stamped_with_the_archive_id(self):
        """What bob's resource gets carries <stanza-id by='bob@localhost'/> whose id is the archive's."""
        alice = self.online("alice@localhost/a")
        bob = self.online("bob@localhost/b")
        alice.send("<message to='bob@localhost' type='chat'><body>x</body></message>")
        [message] = messages(bob.received())
        [(by, stanza_id)] = stanza_ids(message)
        self.assertEqual(by, "bob@localhost")
        self.assertEqual([r.id for r in self.archive("bob")], [stanza_id])
        self.assertGreaterEqual(len(stanza_id), 16)

    def test_both_ends_of_a_local_message_share_its_id_and_time(self):
        """A message between two local users has one id and one time in both archives (each archive's
        ids stay unique); the next message has its own."""
        alice = self.online("alice@localhost/a")
        bob = self.online("bob@localhost/b")
        for body in ("one", "two"):
            alice.send(f"<message to='bob@localhost' type='chat'><body>{body}</body></message>")
        stamped = [stanza_ids(message)[0][1] for message in messages(bob.received())]
        sent, received = self.archive("alice"), self.archive("bob")
        self.assertEqual([r.id for r in sent], stamped)
        self.assertEqual([r.id for r in received], stamped)
        self.assertEqual(len(set(stamped)), 2)
        self.assertEqual([r.stanza for r in sent], [r.stanza for r in received])
        self.assertEqual(sent[0].stanza[:len("<message")], "<message")

    def test_forged_stanza_ids_are_removed(self):
        """A stanza-id claiming to be by the recipient's account is removed before delivery (only the
        server's own stays), and from the recipient's archived copy; one by someone else is kept.  A
        user's own client cannot put one by its account into the user's archive either."""
        alice = self.online("alice@localhost/a")
        bob = self.online("bob@localhost/b")
        alice.send("<message to='bob@localhost' type='chat'><body>x</body>"
                   f"<stanza-id xmlns='{NS_SID}' by='bob@localhost' id='forged'/>"
                   f"<stanza-id xmlns='{NS_SID}' by='BOB@localhost' id='forged2'/>"
                   f"<stanza-id xmlns='{NS_SID}' by='alice@localhost' id='own'/>"
                   f"<stanza-id xmlns='{NS_SID}' by='room@muc.example' id='kept'/></message>")
        [message] = messages(bob.received())
        ids = stanza_ids(message)
        self.assertNotIn("forged", [i for _, i in ids])
        self.assertNotIn("forged2", [i for _, i in ids])
        self.assertIn(("room@muc.example", "kept"), ids)
        [received] = self.archive("bob")
        self.assertEqual([i for by, i in ids if by == "bob@localhost"], [received.id])
        self.assertNotIn("forged", received.stanza)
        [sent] = self.archive("alice")
        self.assertNotIn("'own'", sent.stanza)

    def test_what_is_archived(self):
        """Archived: chat and normal with a body, receipts, chat markers, OMEMO without a body, and
        anything with <store/>; not: chat states alone, groupchat, headline, errors, <no-store/>,
        <no-permanent-store/>."""
        alice = self.online("alice@localhost/a")
        self.online("bob@localhost/b")
        cases = {
            "chat": ("chat", "<body>x</body>", True),
            "normal": (None, "<body>x</body>", True),
            "receipt": ("chat", "<received xmlns='urn:xmpp:receipts' id='chat'/>", True),
            "marker": ("chat", "<displayed xmlns='urn:xmpp:chat-markers:0' id='chat'/>", True),
            "omemo": ("chat", "<encrypted xmlns='eu.siacs.conversations.axolotl'><payload>AA==</payload></encrypted>",
                      True),
            "state": ("chat", "<composing xmlns='http://jabber.org/protocol/chatstates'/>", False),
            "stored-state": ("chat", "<paused xmlns='http://jabber.org/protocol/chatstates'/>"
                                     "<store xmlns='urn:xmpp:hints'/>", True),
            "groupchat": ("groupchat", "<body>x</body>", False),
            "headline": ("headline", "<body>x</body>", False),
            "error": ("error", "<body>x</body><error type='cancel'/>", False),
            "no-store": ("chat", "<body>x</body><no-store xmlns='urn:xmpp:hints'/>", False),
            "no-permanent-store": ("chat", "<body>x</body><no-permanent-store xmlns='urn:xmpp:hints'/>", False),
        }
        for name, (kind, payload, _) in cases.items():
            type_attribute = f" type='{kind}'" if kind else ""
            alice.send(f"<message to='bob@localhost/b' id='{name}'{type_attribute}>{payload}</message>")
        expected = [name for name, (_, _, archived) in cases.items() if archived]
        for user in ("alice", "bob"):
            found = [r.stanza.split("id='")[1].split("'")[0] for r in self.archive(user)]
            self.assertEqual(found, expected, user)

    def test_offline_messages_are_archived_once_for_existing_accounts(self):
        """A message for an offline user is archived, stamped, and stored offline with the stamp; one
        for a name without an account is not archived."""
        alice = self.online("alice@localhost/a")
        alice.send("<message to='bob@localhost' type='chat'><body>while away</body></message>")
        alice.send("<message to='nobody@localhost' type='chat'><body>x</body></message>")
        [record] = self.archive("bob")
        self.assertEqual(self.archive("nobody"), [])
        bob = self.harness.login("bob@localhost/b")
        bob.send("<presence/>")
        [message] = messages(bob.received())
        self.assertEqual(stanza_ids(message), [("bob@localhost", record.id)])
        self.assertEqual(len(self.archive("bob")), 1)

    def test_a_message_to_ones_own_account_is_archived_once(self):
        """A message from one resource to another of the same account is archived once, as received."""
        a = self.online("alice@localhost/a")
        self.online("alice@localhost/b")
        a.send("<message to='alice@localhost/b' type='chat'><body>note</body></message>")
        self.assertEqual([r.direction for r in self.archive("alice")], ["in"])

    def test_gateway_sessions_are_archived(self):
        """What a gateway's session (a SIP phone, resource sip) says is in the user's archive, and so is
        what is delivered to it."""
        ctx = gateway_context(self.harness.server, "sip", None)
        line = GatewayLine()
        phone = Session(JID("alice@localhost/sip"), line)
        ctx.bind(phone)
        phone.presence = make("presence")
        bob = self.online("bob@localhost/b")
        message = make("message", to="bob@localhost", type="chat")
        message.addElement("body", content="from the phone")
        ctx.submit(phone, message)
        bob.send("<message to='alice@localhost/sip' type='chat'><body>to the phone</body></message>")
        self.assertEqual(stanza_ids(line.sent[-1])[0][0], "alice@localhost")
        records = self.archive("alice")
        self.assertEqual([(r.direction, r.with_jid) for r in records],
                         [("out", "bob@localhost"), ("in", "bob@localhost")])
        self.assertEqual([r.with_resource for r in records], ["", "b"])

    def test_deleted_account_loses_its_archive(self):
        """Deleting an account deletes its archive."""
        alice = self.online("alice@localhost/a")
        alice.send("<message to='bob@localhost' type='chat'><body>x</body></message>")
        self.assertEqual(len(self.archive("bob")), 1)
        result_of(self.harness.server.accounts.delete("localhost", "bob"))
        self.assertEqual(self.archive("bob"), [])

    def test_disco_on_the_account(self):
        """The account's bare JID lists urn:xmpp:mam:2, its #extended features and urn:xmpp:sid:0."""
        alice = self.online("alice@localhost/a")
        reply = alice.iq("<iq type='get' id='d' to='alice@localhost'>"
                         "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        features = {f["var"] for f in reply.query.elements() if f.name == "feature"}
        self.assertTrue({NS_MAM, NS_MAM + "#extended", NS_SID} <= features, features)


class LateStorageTests(ArchiveTestCase):
    def make_storage(self):
        return LateStorage()

    def test_stamping_waits_for_no_database(self):
        """With storage that has not answered yet, the message is delivered at once with its stanza id,
        and the archive has it once storage answers."""
        alice = self.online("alice@localhost/a")
        bob = self.online("bob@localhost/b")
        self.harness.storage.late = True
        alice.send("<message to='bob@localhost' type='chat'><body>x</body></message>")
        [message] = messages(bob.received())
        [(_, stanza_id)] = stanza_ids(message)
        while self.harness.storage.waiting:
            self.harness.storage.answer()
        self.harness.storage.late = False
        self.assertIn(stanza_id, [r.id for r in self.archive("bob")])


class QueryTests(ArchiveTestCase):
    mam = {"max_page_size": 5, "default_page_size": 3}

    def setUp(self):
        super().setUp()
        self.alice = self.online("alice@localhost/a")
        self.bob = self.online("bob@localhost/b")
        self.carol = self.online("carol@localhost/c")
        for number in range(8):
            sender = self.bob if number % 2 == 0 else self.carol
            self.harness.clock.advance(1)
            sender.send(f"<message to='alice@localhost' type='chat'><body>{number}</body></message>")
        self.alice.received()
        self.ids = [r.id for r in self.archive("alice")]

    def test_default_page_and_paging_forward(self):
        """With no <max/> a page holds default_page_size; <after/> with the last id gives the next page;
        the last page says complete."""
        results, reply = self.query(self.alice)
        self.assertEqual(self.bodies(results), ["0", "1", "2"])
        fin = self.fin(reply)
        self.assertEqual((fin["first"], fin["last"], fin["count"], fin["complete"]),
                         (self.ids[0], self.ids[2], "8", None))
        results, reply = self.query(self.alice, rsm(max=5, after=self.ids[2]))
        self.assertEqual(self.bodies(results), ["3", "4", "5", "6", "7"])
        self.assertEqual(self.fin(reply)["complete"], "true")
        results, reply = self.query(self.alice, rsm(max=5, after=self.ids[7]))
        self.assertEqual((results, self.fin(reply).get("first"), self.fin(reply)["count"]), ([], None, "8"))

    def test_paging_backward_and_flipped(self):
        """An empty <before/> gives the last page, <before>id</before> the one before, in
        chronological order; <flip-page/> reverses a page, its <first/> being the first sent."""
        results, reply = self.query(self.alice, rsm(max=3, before=""))
        self.assertEqual((self.bodies(results), self.fin(reply)["last"]), (["5", "6", "7"], self.ids[7]))
        results, reply = self.query(self.alice, rsm(max=3, before=self.ids[5]))
        self.assertEqual(self.bodies(results), ["2", "3", "4"])
        results, reply = self.query(self.alice, rsm(max=3, before=self.ids[2]))
        self.assertEqual((self.bodies(results), self.fin(reply)["complete"]), (["0", "1"], "true"))
        results, reply = self.query(self.alice, rsm(max=3, before="") + f"<flip-page xmlns='{NS_MAM}'/>")
        self.assertEqual(self.bodies(results), ["7", "6", "5"])
        fin = self.fin(reply)
        self.assertEqual((fin["first"], fin["last"]), (self.ids[7], self.ids[5]))

    def test_filters(self):
        """with (bare JID), start and end, after-id and before-id, ids."""
        results, _ = self.query(self.alice, form(("with", "carol@localhost")) + rsm(max=5))
        self.assertEqual(self.bodies(results), ["1", "3", "5", "7"])
        results, _ = self.query(self.alice, form(("with", "carol@localhost/c")) + rsm(max=5))
        self.assertEqual(self.bodies(results), ["1", "3", "5", "7"])
        results, _ = self.query(self.alice, form(("with", "carol@localhost/other")))
        self.assertEqual(results, [])
        stamps = [r.timestamp for r in self.archive("alice")]
        start, end = (stamp_of(stamps[2]), stamp_of(stamps[4]))
        results, _ = self.query(self.alice, form(("start", start), ("end", end)))
        self.assertEqual(self.bodies(results), ["2", "3", "4"])
        results, _ = self.query(self.alice, form(("after-id", self.ids[1]), ("before-id", self.ids[4])))
        self.assertEqual(self.bodies(results), ["2", "3"])
        results, _ = self.query(self.alice, form(("ids", [self.ids[6], self.ids[0]])))
        self.assertEqual(self.bodies(results), ["0", "6"])

    def test_max_over_the_maximum_is_clamped(self):
        """A <max/> over max_page_size gives max_page_size results, not an error."""
        results, reply = self.query(self.alice, rsm(max=1000))
        self.assertEqual(len(results), 5)
        self.assertEqual(self.fin(reply)["complete"], None)

    def test_bad_requests(self):
        """A malformed form, an unknown field, a wrong form type, a bad date, a bad <max/>, <after/> with
        <before/>: bad-request; <index/>: feature-not-implemented; and the stream goes on."""
        cases = [
            "<x xmlns='jabber:x:data' type='form'/>",
            form(("colour", "blue")),
            form(("start", "yesterday")),
            form(("start", "2026-01-01T00:00:00")),
            form(("with", "@@")),
            form(("after-id", ["a", "b"])),
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:xmpp:mam:1</value></field></x>",
            "<x xmlns='jabber:x:data' type='submit'><field><value>x</value></field></x>",
            rsm(max="-1"),
            rsm(max="many"),
            rsm(after="x", before="y"),
        ]
        for payload in cases:
            results, reply = self.query(self.alice, payload)
            self.assertEqual((reply["type"], condition(reply), results), ("error", "bad-request", []), payload)
        _, reply = self.query(self.alice, rsm(index=2))
        self.assertEqual(condition(reply), "feature-not-implemented")
        self.assertFalse(self.alice.closed_by_server)
        self.assertEqual(self.query(self.alice)[1]["type"], "result")

    def test_unknown_ids_are_item_not_found(self):
        """An <after/> or <before/> id, an after-id or before-id, or an id of ids that is not in the
        archive gets item-not-found, and one of another user's archive too."""
        self.carol.send("<message to='bob@localhost' type='chat'><body>x</body></message>")
        bobs = self.archive("bob")[-1].id
        for payload in (rsm(after="nope"), rsm(before=bobs), form(("after-id", "nope")),
                        form(("before-id", bobs)), form(("ids", [self.ids[0], "nope"]))):
            _, reply = self.query(self.alice, payload)
            self.assertEqual((reply["type"], condition(reply)), ("error", "item-not-found"), payload)

    def test_no_one_reads_anyone_elses_archive(self):
        """A query, the form, the metadata or the preferences of another user's archive: forbidden."""
        results, reply = self.query(self.bob, to="alice@localhost")
        self.assertEqual((condition(reply), results), ("forbidden", []))
        for payload in (f"<query xmlns='{NS_MAM}'/>", f"<metadata xmlns='{NS_MAM}'/>", f"<prefs xmlns='{NS_MAM}'/>"):
            reply = self.bob.iq(f"<iq type='get' id='x' to='alice@localhost'>{payload}</iq>")
            self.assertEqual(condition(reply), "forbidden", payload)
        reply = self.bob.iq(f"<iq type='set' id='x' to='alice@localhost'><prefs xmlns='{NS_MAM}' default='never'/></iq>")
        self.assertEqual(condition(reply), "forbidden")

    def test_form_discovery(self):
        """An IQ get of the query namespace lists the form's fields."""
        reply = self.alice.iq(f"<iq type='get' id='f'><query xmlns='{NS_MAM}'/></iq>")
        x = next(reply.query.elements("jabber:x:data", "x"))
        self.assertEqual([f["var"] for f in x.elements("jabber:x:data", "field")],
                         ["FORM_TYPE", "with", "start", "end", "after-id", "before-id", "ids"])

    def test_metadata(self):
        """<metadata/> names the first and last records; an empty archive has neither."""
        reply = self.alice.iq(f"<iq type='get' id='m'><metadata xmlns='{NS_MAM}'/></iq>")
        metadata = next(reply.elements(NS_MAM, "metadata"))
        self.assertEqual((metadata.start["id"], metadata.end["id"]), (self.ids[0], self.ids[-1]))
        self.harness.add_user("dora@localhost")
        dora = self.online("dora@localhost/d")
        reply = dora.iq(f"<iq type='get' id='m'><metadata xmlns='{NS_MAM}'/></iq>")
        self.assertEqual(list(next(reply.elements(NS_MAM, "metadata")).elements()), [])


def stamp_of(micros):
    import datetime

    return datetime.datetime.fromtimestamp(micros / 1e6, datetime.timezone.utc).isoformat()


class PreferenceTests(ArchiveTestCase):
    def prefs(self, client, text):
        return client.iq(f"<iq type='set' id='p'>{text}</iq>")

    def test_default_and_lists(self):
        """default='never' keeps everything out but the <always/> JIDs; default='always' keeps in all
        but the <never/> JIDs; the preferences are answered back and read again."""
        alice = self.online("alice@localhost/a")
        bob = self.online("bob@localhost/b")
        carol = self.online("carol@localhost/c")
        reply = alice.iq(f"<iq type='get' id='g'><prefs xmlns='{NS_MAM}'/></iq>")
        self.assertEqual(reply.prefs["default"], "always")
        reply = self.prefs(alice, f"<prefs xmlns='{NS_MAM}' default='never'><always><jid>carol@localhost</jid>"
                                  "</always><never/></prefs>")
        self.assertEqual([str(j) for j in reply.prefs.always.elements()], ["carol@localhost"])
        bob.send("<message to='alice@localhost' type='chat'><body>bob 1</body></message>")
        carol.send("<message to='alice@localhost' type='chat'><body>carol 1</body></message>")
        alice.send("<message to='bob@localhost' type='chat'><body>to bob</body></message>")
        self.prefs(alice, f"<prefs xmlns='{NS_MAM}' default='always'><never><jid>bob@localhost</jid></never></prefs>")
        bob.send("<message to='alice@localhost' type='chat'><body>bob 2</body></message>")
        carol.send("<message to='alice@localhost' type='chat'><body>carol 2</body></message>")
        self.assertEqual([r.stanza.split("<body>")[1].split("<")[0] for r in self.archive("alice")],
                         ["carol 1", "carol 2"])
        [message] = [m for m in messages(alice.received()) if m.body is not None and str(m.body) == "bob 2"]
        self.assertEqual(stanza_ids(message), [])
        reply = alice.iq(f"<iq type='get' id='g'><prefs xmlns='{NS_MAM}'/></iq>")
        self.assertEqual((reply.prefs["default"], [str(j) for j in reply.prefs.never.elements()]),
                         ("always", ["bob@localhost"]))

    def test_roster_default(self):
        """default='roster' archives conversations with contacts in the roster only."""
        alice = self.online("alice@localhost/a")
        bob = self.online("bob@localhost/b")
        carol = self.online("carol@localhost/c")
        alice.iq("<iq type='set' id='r'><query xmlns='jabber:iq:roster'><item jid='bob@localhost'/></query></iq>")
        self.prefs(alice, f"<prefs xmlns='{NS_MAM}' default='roster'/>")
        bob.send("<message to='alice@localhost' type='chat'><body>bob</body></message>")
        carol.send("<message to='alice@localhost' type='chat'><body>carol</body></message>")
        self.assertEqual([r.with_jid for r in self.archive("alice")], ["bob@localhost"])

    def test_preferences_of_an_offline_user_apply(self):
        """The preferences of a user with no session are read before a message for them is archived."""
        alice = self.online("alice@localhost/a")
        self.prefs(alice, f"<prefs xmlns='{NS_MAM}' default='never'/>")
        alice.drop()
        self.harness.server.hosts["localhost"].features["mam"].feature.prefs.forget("localhost", "alice")
        bob = self.online("bob@localhost/b")
        bob.send("<message to='alice@localhost' type='chat'><body>x</body></message>")
        self.assertEqual(self.archive("alice"), [])

    def test_users_without_preferences_share_one_document(self):
        """A session whose user never set preferences keeps no copy of the defaults in memory; a user who
        sets some gets a document of their own, and the others keep the shared one."""
        alice = self.online("alice@localhost/a")
        self.online("bob@localhost/b")
        self.online("carol@localhost/c")
        prefs = self.harness.server.hosts["localhost"].features["mam"].feature.prefs
        self.assertIs(prefs.cached("localhost", "alice"), prefs.cached("localhost", "bob"))
        self.prefs(alice, f"<prefs xmlns='{NS_MAM}' default='never'/>")
        self.assertEqual(prefs.cached("localhost", "alice")["default"], "never")
        self.assertIs(prefs.cached("localhost", "bob"), prefs.cached("localhost", "carol"))
        self.assertIsNone(prefs.cached("localhost", "bob")["default"])

    def test_bad_preferences(self):
        """A default not among always/roster/never is bad-request, a malformed JID jid-malformed, more
        JIDs than max_preference_jids not-acceptable; nothing changes."""
        alice = self.online("alice@localhost/a")
        reply = self.prefs(alice, f"<prefs xmlns='{NS_MAM}' default='sometimes'/>")
        self.assertEqual(condition(reply), "bad-request")
        reply = self.prefs(alice, f"<prefs xmlns='{NS_MAM}' default='never'><never><jid>@@</jid></never></prefs>")
        self.assertEqual(condition(reply), "jid-malformed")
        many = "".join(f"<jid>u{n}@example.org</jid>" for n in range(501))
        reply = self.prefs(alice, f"<prefs xmlns='{NS_MAM}' default='never'><never>{many}</never></prefs>")
        self.assertEqual(condition(reply), "not-acceptable")
        reply = alice.iq(f"<iq type='get' id='g'><prefs xmlns='{NS_MAM}'/></iq>")
        self.assertEqual(reply.prefs["default"], "always")


class OfflineInterplayTests(ArchiveTestCase):
    def send_while_away(self):
        alice = self.online("alice@localhost/a")
        alice.send("<message to='bob@localhost' type='chat' id='kept'><body>in the archive</body></message>")
        alice.send("<message to='bob@localhost' type='chat' id='only-offline'><body>not archived</body>"
                   "<no-permanent-store xmlns='urn:xmpp:hints'/></message>")

    def test_a_session_that_syncs_by_mam_is_not_sent_archived_messages_twice(self):
        """A session that queries the archive before its initial presence finds the message there, and
        its presence then flushes offline storage sending only what the archive does not hold; both
        are removed from offline storage."""
        self.send_while_away()
        bob = self.online("bob@localhost/b", presence=False)
        results, _ = self.query(bob)
        self.assertEqual([inner["id"] for _, inner, *_ in results], ["kept"])
        bob.send("<presence/>")
        self.assertEqual([m["id"] for m in messages(bob.received())], ["only-offline"])
        self.assertEqual(result_of(self.harness.storage.count("localhost", "bob", "offline")), 0)

    def test_a_session_that_does_not_sync_gets_everything(self):
        """A session that sends presence without querying first gets every offline message; one that
        queries after its presence changes nothing either."""
        self.send_while_away()
        bob = self.online("bob@localhost/b", presence=False)
        bob.send("<presence/>")
        self.assertEqual([m["id"] for m in messages(bob.received())], ["kept", "only-offline"])


class RetentionTests(ArchiveTestCase):
    mam = {"retention_days": 2, "purge_interval_seconds": 3600}
    hosts = {"localhost": {}, "forever.test": {"mam_retention_days": 0}}

    def test_old_records_are_purged_per_host(self):
        """Every purge interval, records older than the host's retention go; a host whose own setting
        is 0 keeps them; a host with no retention runs no timer."""
        self.harness.add_user("dora@forever.test")
        alice = self.online("alice@localhost/a")
        dora = self.online("dora@forever.test/d")
        alice.send("<message to='bob@localhost' type='chat'><body>old</body></message>")
        dora.send("<message to='alice@localhost' type='chat'><body>old</body></message>")
        self.harness.clock.advance(DAY)
        alice.send("<message to='bob@localhost' type='chat'><body>new</body></message>")
        self.harness.clock.pump([3600] * 26)
        self.assertEqual(len(self.archive("bob")), 1)
        self.assertEqual([r.direction for r in self.archive("alice")], ["out"])
        dora_archive = result_of(self.harness.storage.archive_query("forever.test", "dora", ArchiveQuery()))
        self.assertEqual(dora_archive.count, 1)
        forever = self.harness.server.hosts["forever.test"].features["mam"]
        self.assertEqual(forever.clock.getDelayedCalls(), [])

    def test_unload_stops_the_timer(self):
        """Unloading the feature cancels its purge timer."""
        context = self.harness.server.hosts["localhost"].features["mam"]
        self.assertEqual(len(context.clock.getDelayedCalls()), 1)
        context.unload()
        self.assertEqual(context.clock.getDelayedCalls(), [])


class ConfigTests(SynchronousTestCase):
    def test_errors_name_the_key(self):
        """A default page over the maximum, an unknown preference or a negative retention is a
        configuration error naming the key and the file."""
        for table, key in (({"default_page_size": 300, "max_page_size": 250}, "mam.default_page_size"),
                           ({"default_preference": "sometimes"}, "mam.default_preference"),
                           ({"retention_days": -1}, "mam.retention_days")):
            with self.assertRaises(configuration.ConfigError) as raised:
                configuration.parse({"mam": table}, "bridge.toml")
            self.assertIn(f"bridge.toml: {key}:", str(raised.exception))

    def test_disabled(self):
        """With [mam] enabled = false nothing is archived, stamped or announced."""
        harness = Harness(configuration.parse({"c2s": {"require_encryption": False}, "mam": {"enabled": False}},
                                              "t.toml"))
        for user in ("alice", "bob"):
            harness.add_user(f"{user}@localhost")
        alice = harness.login("alice@localhost/a")
        bob = harness.login("bob@localhost/b")
        bob.send("<presence/>")
        bob.received()
        alice.send("<message to='bob@localhost' type='chat'><body>x</body></message>")
        [message] = messages(bob.received())
        self.assertEqual(stanza_ids(message), [])
        reply = alice.iq(f"<iq type='set' id='q'><query xmlns='{NS_MAM}'/></iq>")
        self.assertEqual(condition(reply), "service-unavailable")


class BridgectlTests(SynchronousTestCase):
    """bridgectl archive-export and archive-delete on an SQLite database, as an administrator runs them."""

    def setUp(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        self.directory = directory
        self.config = os.path.join(directory, "bridge.toml")
        with open(self.config, "w") as handle:
            handle.write('data_dir = "data"\n[hosts.localhost]\n')
        waiting = ctl.Waiting()
        storage = sqlite.SQLiteStorage(os.path.join(directory, "data", "bridge.sqlite"), waiting)
        for number in range(2500):
            storage.archive_append("localhost", "alice", ArchiveRecord(
                f"id{number}", (number + 1) * 10**6, "bob@localhost", "phone" if number == 0 else "", "in",
                f"<message id='m{number}'><body>{number}</body></message>"))
        storage.archive_append("localhost", "bob", ArchiveRecord("b", 0, "alice@localhost", "", "out", "<message/>"))
        waiting.result(storage.close())

    def run_ctl(self, *args):
        out = io.StringIO()
        self.assertEqual(ctl.main(["--config", self.config, *args], out=out), 0)
        return out.getvalue()

    def test_export_pages_through_the_whole_archive(self):
        """archive-export writes every record, oldest first, one JSON object a line, past several pages,
        to standard output or to a file made 0600."""
        lines = [json.loads(line) for line in self.run_ctl("archive-export", "alice@localhost").splitlines()]
        self.assertEqual([line["id"] for line in lines], [f"id{n}" for n in range(2500)])
        self.assertEqual(lines[0], {"id": "id0", "timestamp": "1970-01-01T00:00:01.000000Z",
                                    "with": "bob@localhost/phone", "direction": "in",
                                    "stanza": "<message id='m0'><body>0</body></message>"})
        path = os.path.join(self.directory, "alice.jsonl")
        self.assertIn("2500 messages", self.run_ctl("archive-export", "alice@localhost", "--output", path))
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        with open(path) as handle:
            self.assertEqual(len(handle.readlines()), 2500)

    def test_delete_before_a_date_and_whole(self):
        """archive-delete --before removes older messages only; without it the user's whole archive;
        another user's archive stays; a malformed date is refused."""
        self.assertIn("1000 messages deleted",
                      self.run_ctl("archive-delete", "alice@localhost", "--before", "1970-01-01T00:16:41Z"))
        lines = self.run_ctl("archive-export", "alice@localhost").splitlines()
        self.assertEqual(json.loads(lines[0])["id"], "id1000")
        self.assertIn("1500 messages deleted", self.run_ctl("archive-delete", "alice@localhost"))
        self.assertEqual(self.run_ctl("archive-export", "alice@localhost"), "")
        self.assertEqual(len(self.run_ctl("archive-export", "bob@localhost").splitlines()), 1)
        with contextlib.redirect_stderr(io.StringIO()) as errors:
            status = ctl.main(["--config", self.config, "archive-delete", "bob@localhost", "--before", "soon"],
                              out=io.StringIO())
        self.assertEqual(status, 1)
        self.assertIn("not a XEP-0082", errors.getvalue())
