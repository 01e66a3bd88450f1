"""Reading Prosody's data folder (bridge.core.prosody): the strict Lua parser and the stores it converts."""

import os
import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from bridge.core import backup, prosody, sasl
from bridge.core.accounts import Accounts
from bridge.core.storage.memory import MemoryStorage
from tests.unit.helpers import make_config, result_of

# Files as Prosody 0.12 (Debian) wrote them for ana@example.test, password "ana pw" (internal_hashed).
ACCOUNT = '''return {
\t["stored_key"] = "d0e30158f1feffba0d5b9f2ed420571d0b2228e8";
\t["salt"] = "a9bbfd84-ae9c-4e3f-96ce-14aea570c9e4";
\t["iteration_count"] = 10000;
\t["server_key"] = "c4c6ed302e0bf51f7a2623ee3f4789622ef05ede";
};
'''
ROSTER = '''return {
\t[false] = {
\t\t["pending"] = {
\t\t\t["eve@example.test"] = {
\t\t\t\t["name"] = "presence";
\t\t\t\t["attr"] = {
\t\t\t\t\t["from"] = "eve@example.test";
\t\t\t\t\t["type"] = "subscribe";
\t\t\t\t};
\t\t\t};
\t\t};
\t\t["version"] = 2;
\t};
\t["bob@example.test"] = {
\t\t["name"] = "Bobby";
\t\t["groups"] = {
\t\t\t["Team"] = true;
\t\t};
\t\t["subscription"] = "none";
\t\t["ask"] = "subscribe";
\t};
};
'''
VCARD = '''return {
\t{
\t\t"Ana Example";
\t\t["name"] = "FN";
\t\t["attr"] = {
\t\t\t["xmlns"] = "vcard-temp";
\t\t};
\t};
\t["name"] = "vCard";
\t["attr"] = {
\t\t["xmlns"] = "vcard-temp";
\t};
};
'''
OFFLINE = '''item({
\t{
\t\t"hello offline ana";
\t\t["name"] = "body";
\t\t["attr"] = {};
\t};
\t["name"] = "message";
\t["with"] = "";
\t["when"] = 1796616220;
\t["key"] = "fxG5YfjUZgmJC9bBay7JZFJx";
\t["attr"] = {
\t\t["from"] = "bob@example.test/x";
\t\t["stamp"] = "2026-12-07T04:03:40Z";
\t\t["to"] = "ana@example.test";
\t};
});
'''


class LuaParserTests(SynchronousTestCase):
    def test_values(self):
        """The subset Prosody writes: tables with [key] =, name = and positional entries, strings with
        Lua's escapes, numbers, booleans."""
        cases = [
            ("return {};", {}),
            ('return { ["a"] = 1; [false] = true; x = -2.5; "one", "two" };',
             {"a": 1, False: True, "x": -2.5, 1: "one", 2: "two"}),
            (r'return "q\"b\\s\n\r\t\065\x41\195\169";', 'q"b\\s\n\r\tAAé'),
            ('return "line\\\nnext";', "line\nnext"),
            ("return 1e3;", 1000.0),
            ("return 0x1F;", 31),
            ("-- a comment\nreturn { nested = { { } } }", {"nested": {1: {}}}),
        ]
        for text, expected in cases:
            self.assertEqual(prosody.parse_lua(text), expected, text)

    def test_list_files(self):
        """A .list file is item(VALUE); repeated."""
        self.assertEqual(prosody.parse_lua('item({ a = 1 });\nitem({ a = 2 });\n', list_file=True),
                         [{"a": 1}, {"a": 2}])
        self.assertEqual(prosody.parse_lua("", list_file=True), [])

    def test_anything_else_is_refused(self):
        """Code, calls, unknown escapes, unfinished text and deep nesting are errors naming the line;
        nothing is run."""
        cases = [
            'return os.execute("rm -rf /")',
            "return function() end",
            "return { a = b }",
            'return "\\q"',
            'return "open',
            "return { 1 2 }",
            "return {} extra",
            "return { [nil] = 1 }",
            'item({}) os.exit()',
            "return " + "{" * 100 + "}" * 100,
        ]
        for text in cases:
            with self.assertRaises(prosody.LuaError, msg=text) as caught:
                prosody.parse_lua(text, list_file=text.startswith("item"))
            self.assertIn("line", str(caught.exception))

    def test_names(self):
        """Prosody's %xx folder and file names are decoded."""
        self.assertEqual(prosody.decode_name("example%2etest"), "example.test")
        self.assertEqual(prosody.decode_name("j%c3%bcrgen"), "jürgen")


class DataFolderTests(SynchronousTestCase):
    def folder(self):
        path = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, path)
        for store, name, text in (("accounts", "ana.dat", ACCOUNT), ("roster", "ana.dat", ROSTER),
                                  ("vcard", "ana.dat", VCARD), ("offline", "ana.list", OFFLINE),
                                  ("accounts", "broken.dat", "return { password = os.getenv('X') }")):
            os.makedirs(os.path.join(path, "example%2etest", store), exist_ok=True)
            with open(os.path.join(path, "example%2etest", store, name), "w", encoding="utf-8") as handle:
                handle.write(text)
        return path

    def test_accounts_rosters_vcards_offline(self):
        """ana's SCRAM-SHA-1 keys still match her password; her roster item, the pending request,
        the vCard and the offline message (with its delay) are imported; a file outside the subset
        is reported with its name and not imported."""
        root, unreadable = prosody.read_data_folder(self.folder())
        self.assertEqual([jid for jid, _ in unreadable], ["broken@example.test"])
        self.assertIn("broken.dat", unreadable[0][1])
        storage = MemoryStorage()
        imported, _, refused = result_of(backup.import_document(storage, root,
                                                                make_config(hosts={"example.test": {}})))
        self.assertEqual((imported, refused), ([("ana@example.test", "")], []))
        records = result_of(storage.get("example.test", "ana", "accounts"))
        self.assertEqual(list(records), ["SCRAM-SHA-1"])
        self.assertTrue(sasl.check_password(records, "ana pw"))
        self.assertFalse(sasl.check_password(records, "other"))
        roster = result_of(storage.get("example.test", "ana", "roster"))["items"]
        self.assertEqual((roster["bob@example.test"]["name"], roster["bob@example.test"]["groups"],
                          roster["bob@example.test"]["ask"]), ("Bobby", ["Team"], True))
        self.assertIsNotNone(roster["eve@example.test"]["pending_in"])
        self.assertIn("Ana Example", result_of(storage.get("example.test", "ana", "vcard"))["xml"])
        message = result_of(storage.items("example.test", "ana", "offline"))[0][1]
        self.assertIn("hello offline ana", message)
        self.assertIn("stamp='2026-12-07T04:03:40Z'", message)

    def test_a_plain_login_completes_the_keys(self):
        """An account with SCRAM-SHA-1 keys only gets SCRAM-SHA-256 keys at its first PLAIN login, so that
        clients that pick SCRAM-SHA-256 log in from then on; a wrong password changes nothing."""
        root, _ = prosody.read_data_folder(self.folder())
        storage = MemoryStorage()
        result_of(backup.import_document(storage, root, make_config(hosts={"example.test": {}})))
        accounts = Accounts(storage, lambda host: ())
        decoy = sasl.Decoys(b"s" * 32)
        self.assertFalse(result_of(accounts.check_password("example.test", "ana", "wrong",
                                                           lambda user: decoy.credentials("example.test", user))))
        self.assertEqual(list(result_of(storage.get("example.test", "ana", "accounts"))), ["SCRAM-SHA-1"])
        self.assertTrue(result_of(accounts.check_password("example.test", "ana", "ana pw", None)))
        records = result_of(storage.get("example.test", "ana", "accounts"))
        self.assertEqual(sorted(records), ["SCRAM-SHA-1", "SCRAM-SHA-256"])
        self.assertTrue(sasl.check_password({"SCRAM-SHA-256": records["SCRAM-SHA-256"]}, "ana pw"))

    def test_plain_passwords_become_scram_keys(self):
        """An internal_plain account's password is turned into SCRAM keys; the password is not kept."""
        elements = prosody.credentials_elements({"password": "plain pw"})
        mechanisms = [element["mechanism"] for element in elements]
        self.assertEqual(mechanisms, ["SCRAM-SHA-256", "SCRAM-SHA-1"])
        record = backup.scram_record(elements[0])[1]
        self.assertTrue(sasl.check_password({"SCRAM-SHA-256": record}, "plain pw"))
