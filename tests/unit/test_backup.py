"""Backup and restore as XEP-0227 files (bridge.core.backup)."""

import os
import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from bridge.core import backup, sasl
from bridge.core.accounts import Accounts, DISABLED
from bridge.core.storage.memory import MemoryStorage
from bridge.core.xmlstream import serialize
from tests.unit.helpers import make_config, result_of

VCARD = "<vCard xmlns='vcard-temp'><FN>Ana</FN></vCard>"
OFFLINE = "<message xmlns='jabber:client' from='bob@remote.test/x' to='ana@localhost' type='chat'><body>hi</body></message>"
PRIVACY = {"default": "blocked", "lists": {"blocked": [["jid", "spam@remote.test", False, 1, []]]}}


def filled_storage():
    """A storage with one account of every kind of data."""
    storage = MemoryStorage()
    accounts = Accounts(storage, lambda host: ("MD5",))
    result_of(accounts.create("localhost", "ana", "old password"))
    result_of(storage.set("localhost", "ana", "roster", {"version": 7, "items": {
        "bob@remote.test": {"name": "Bob", "groups": ["Friends"], "subscription": "both", "ask": False,
                            "pending_in": None, "approved": False, "hidden": False},
        "eve@remote.test": {"name": None, "groups": [], "subscription": "none", "ask": False,
                            "pending_in": {"status": "let me in", "nick": None}, "approved": False, "hidden": True}}}))
    result_of(storage.set("localhost", "ana", "vcard", {"xml": VCARD, "photo": ""}))
    result_of(storage.set("localhost", "ana", "private", {"exodus:prefs exodus": "<exodus xmlns='exodus:prefs'/>"}))
    result_of(storage.append("localhost", "ana", "offline", OFFLINE))
    result_of(storage.set("localhost", "ana", "blocklist", PRIVACY))
    return storage


def round_trip(storage, config=None):
    """Export ``storage``, write the file's bytes, read them back and import into a fresh storage."""
    root, count = result_of(backup.export_hosts(storage, ["localhost"]))
    data = b"<?xml version='1.0' encoding='UTF-8'?>\n" + serialize(root).encode("utf-8")
    fresh = MemoryStorage()
    outcome = result_of(backup.import_document(fresh, backup.read_document(data), config or make_config()))
    return fresh, data, outcome


class RoundTripTests(SynchronousTestCase):
    def test_everything_comes_back(self):
        """Account keys, roster (with a pending request), vCard, private XML, offline messages and privacy
        lists are written and read back; the old password still matches; no password is in the file."""
        storage = filled_storage()
        fresh, data, (imported, skipped, refused) = round_trip(storage)
        self.assertEqual((len(imported), skipped, refused), (1, [], []))
        self.assertNotIn(b"old password", data)
        self.assertIn(b"urn:xmpp:pie:0#scram", data)
        records = result_of(fresh.get("localhost", "ana", "accounts"))
        self.assertEqual(records, result_of(storage.get("localhost", "ana", "accounts")))
        self.assertTrue(sasl.check_password(records, "old password"))
        roster = result_of(fresh.get("localhost", "ana", "roster"))["items"]
        self.assertEqual(roster["bob@remote.test"]["groups"], ["Friends"])
        self.assertEqual(roster["bob@remote.test"]["subscription"], "both")
        self.assertEqual(roster["eve@remote.test"]["pending_in"], {"status": "let me in", "nick": None})
        self.assertTrue(roster["eve@remote.test"]["hidden"])
        self.assertIn("<FN>Ana</FN>", result_of(fresh.get("localhost", "ana", "vcard"))["xml"])
        self.assertEqual(list(result_of(fresh.get("localhost", "ana", "private"))), ["exodus:prefs exodus"])
        self.assertIn("<body>hi</body>", result_of(fresh.items("localhost", "ana", "offline"))[0][1])
        self.assertEqual(result_of(fresh.get("localhost", "ana", "blocklist")), PRIVACY)

    def test_disabled_mark_survives(self):
        """A disabled account is still disabled after the round trip."""
        storage = filled_storage()
        result_of(Accounts(storage, lambda host: ()).disable("localhost", "ana", "why"))
        fresh, _, _ = round_trip(storage)
        self.assertEqual(result_of(fresh.get("localhost", "ana", "accounts"))[DISABLED], "why")

    def test_existing_accounts_are_left_alone(self):
        """An import never overwrites an account that exists."""
        storage = filled_storage()
        root, _ = result_of(backup.export_hosts(storage, ["localhost"]))
        target = MemoryStorage()
        result_of(Accounts(target, lambda host: ()).create("localhost", "ana", "new"))
        imported, skipped, _ = result_of(backup.import_document(target, root, make_config()))
        self.assertEqual((imported, [jid for jid, _ in skipped]), ([], ["ana@localhost"]))
        self.assertTrue(sasl.check_password(result_of(target.get("localhost", "ana", "accounts")), "new"))


def document(user):
    return ("<server-data xmlns='urn:xmpp:pie:0'><host jid='localhost'>" + user + "</host></server-data>").encode()


SCRAM = ("<scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-1'><iter-count>{count}</iter-count>"
         "<salt>c2FsdA==</salt><server-key>{key}</server-key><stored-key>{key}</stored-key></scram-credentials>")
KEY = "AAAAAAAAAAAAAAAAAAAAAAAAAAA="  # 20 bytes


class IncludeTests(SynchronousTestCase):
    """XEP-0227 section 6: a server split into host and user files with XInclude."""

    def write(self, folder, name, text):
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)

    def folder(self):
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        return folder

    def test_split_files_are_read(self):
        """The main file includes a host file, which includes a user file; the user is imported."""
        folder = self.folder()
        xi = "xmlns:xi='http://www.w3.org/2001/XInclude'"
        self.write(folder, "localhost.xml", f"<host xmlns='urn:xmpp:pie:0' {xi} jid='localhost'>"
                                            "<xi:include href='localhost/a.xml'/></host>")
        self.write(folder, "localhost/a.xml", "<?xml version='1.0'?><user xmlns='urn:xmpp:pie:0' name='a'>"
                   + SCRAM.format(count=4096, key=KEY) + "</user>")
        main = f"<server-data xmlns='urn:xmpp:pie:0' {xi}><xi:include href='localhost.xml'/></server-data>"
        root = backup.read_document(main.encode(), folder)
        imported, _, refused = result_of(backup.import_document(MemoryStorage(), root, make_config()))
        self.assertEqual((imported, refused), ([("a@localhost", "")], []))

    def test_includes_stay_in_the_folder(self):
        """An include outside the file's folder, with a URI scheme, an xpointer, a missing file, or one that
        includes itself is refused with the reason."""
        folder = self.folder()
        xi = "xmlns:xi='http://www.w3.org/2001/XInclude'"
        self.write(folder, "loop.xml", f"<host xmlns='urn:xmpp:pie:0' {xi}><xi:include href='loop.xml'/></host>")
        cases = [("href='../secret.xml'", "outside the folder"), ("href='/etc/passwd'", "outside the folder"),
                 ("href='file:///etc/passwd'", "only a relative path"),
                 ("href='loop.xml' xpointer='x'", "only a relative path"),
                 ("href='missing.xml'", "No such file"), ("href='loop.xml'", "nested deeper")]
        for attributes, reason in cases:
            main = f"<server-data xmlns='urn:xmpp:pie:0' {xi}><xi:include {attributes}/></server-data>"
            with self.assertRaises(backup.BackupError, msg=attributes) as caught:
                backup.read_document(main.encode(), folder)
            self.assertIn(reason, str(caught.exception), attributes)


class BadInputTests(SynchronousTestCase):
    def refusal(self, user):
        root = backup.read_document(document(user))
        imported, _, refused = result_of(backup.import_document(MemoryStorage(), root, make_config()))
        self.assertEqual(imported, [])
        return refused[0][1]

    def test_bad_users_are_refused_with_a_reason(self):
        """A password-only user, a bad SCRAM record, a huge iteration count, a bad name and a bad roster item
        are each refused with what is wrong, and nothing of them is written."""
        cases = [
            ("<user name='a' password='plain'/>", "no SCRAM credentials"),
            ("<user name='a'>" + SCRAM.format(count=4096, key="!!") + "</user>", "not base64"),
            ("<user name='a'>" + SCRAM.format(count=4096, key="AAAA") + "</user>", "must be 20 bytes"),
            ("<user name='a'>" + SCRAM.format(count=10 ** 9, key=KEY) + "</user>", "iter-count"),
            ("<user name='a%b'>" + SCRAM.format(count=4096, key=KEY) + "</user>", "may not contain"),
            ("<user name='a'>" + SCRAM.format(count=4096, key=KEY)
             + "<query xmlns='jabber:iq:roster'><item jid='x@y/z'/></query></user>", "not a bare JID"),
        ]
        for user, reason in cases:
            self.assertIn(reason, self.refusal(user), user)

    def test_a_user_of_another_host_is_refused(self):
        """Accounts of a host not served here are refused."""
        root = backup.read_document(b"<server-data xmlns='urn:xmpp:pie:0'><host jid='elsewhere.test'><user name='a'/>"
                                    b"</host></server-data>")
        _, _, refused = result_of(backup.import_document(MemoryStorage(), root, make_config()))
        self.assertIn("not a host of this server", refused[0][1])

    def test_not_a_document(self):
        """Bytes that are not a <server-data/> document, or that declare entities, are refused."""
        for data in (b"<other/>", b"<server-data xmlns='urn:xmpp:pie:0'>", b"\xff\xfe",
                     b"<!DOCTYPE x [<!ENTITY a 'b'>]><server-data xmlns='urn:xmpp:pie:0'/>"):
            with self.assertRaises(backup.BackupError, msg=data):
                backup.read_document(data)

    def test_sha1_only_account_checks_plain(self):
        """An account with only a SCRAM-SHA-1 record (as Prosody keeps) still checks a PLAIN password."""
        salt = b"0123456789abcdef"
        stored, server = sasl.scram_keys("sha1", "pw", salt, 4096)
        records = {"SCRAM-SHA-1": backup.make_scram_record(salt, 4096, stored, server)}
        self.assertTrue(sasl.check_password(records, "pw"))
        self.assertFalse(sasl.check_password(records, "other"))
