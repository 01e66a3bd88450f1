"""Service administration ad-hoc commands (bridge.features.admin, XEP-0133 over XEP-0050)."""

from twisted.trial.unittest import SynchronousTestCase

from bridge.core.sasl import SASLFailure
from tests.unit.helpers import Harness, make_config, result_of, scram_login

NS_COMMANDS = "http://jabber.org/protocol/commands"
NS_ADMIN = "http://jabber.org/protocol/admin"
NS_DATA = "jabber:x:data"
NS_ITEMS = "http://jabber.org/protocol/disco#items"


def field(var, *values):
    return f"<field var='{var}'>" + "".join(f"<value>{value}</value>" for value in values) + "</field>"


def submit(node, *fields, session=None, id="c"):
    """An IQ that runs ``node`` with a submitted form (in session ``session``, if given)."""
    sessionid = f" sessionid='{session}'" if session else ""
    return (f"<iq type='set' id='{id}' to='localhost'><command xmlns='{NS_COMMANDS}' node='{NS_ADMIN}#{node}'"
            f" action='complete'{sessionid}><x xmlns='{NS_DATA}' type='submit'>"
            f"{field('FORM_TYPE', NS_ADMIN)}{''.join(fields)}</x></command></iq>")


def note(reply):
    return str(next(reply.command.elements(NS_COMMANDS, "note")))


class AdminCommandTests(SynchronousTestCase):
    def setUp(self):
        self.harness = Harness(make_config(hosts={"localhost": {"admins": ["boss@localhost"]},
                                                  "other.test": {"admins": ["chief@other.test"]}}))
        for jid in ("boss@localhost", "alice@localhost", "chief@other.test"):
            self.harness.add_user(jid)
        self.admin = self.harness.login("boss@localhost/desk")

    def logs_in(self, user, password="secret"):
        client = self.harness.connect()
        client.open_stream("localhost")
        try:
            return scram_login(client, user, password).name == "success"
        except SASLFailure:
            return False

    def test_add_user_in_two_steps(self):
        """execute without a form answers the form and a session; its submission creates the account,
        which then logs in with the password given."""
        first = self.admin.iq(f"<iq type='set' id='a' to='localhost'><command xmlns='{NS_COMMANDS}' "
                              f"node='{NS_ADMIN}#add-user' action='execute'/></iq>")
        self.assertEqual(first["type"], "result")
        self.assertEqual(first.command["status"], "executing")
        form = next(first.command.elements(NS_DATA, "x"))
        self.assertIn("accountjid", [f.getAttribute("var") for f in form.elements(NS_DATA, "field")])
        done = self.admin.iq(submit("add-user", field("accountjid", "newbie@localhost"), field("password", "pw1"),
                                    field("password-verify", "pw1"), session=first.command["sessionid"]))
        self.assertEqual(done.command["status"], "completed", done.toXml())
        self.assertTrue(self.logs_in("newbie", "pw1"))

    def test_non_admins_are_forbidden(self):
        """A user not in the host's admins (nor another host's admin) gets forbidden, and no account is made."""
        for jid in ("alice@localhost/x",):
            client = self.harness.login(jid)
            reply = client.iq(submit("add-user", field("accountjid", "x@localhost"), field("password", "p")))
            self.assertEqual(reply["type"], "error")
            self.assertEqual(reply.error.firstChildElement().name, "forbidden")
        self.assertFalse(result_of(self.harness.server.accounts.exists("localhost", "x")))

    def test_admin_of_another_host_is_forbidden_here(self):
        """The admin of other.test may not add users to localhost."""
        client = self.harness.login("chief@other.test/x")
        reply = client.iq(submit("add-user", field("accountjid", "x@localhost"), field("password", "p")))
        self.assertEqual(reply.error.firstChildElement().name, "forbidden")

    def test_disco_lists_commands_for_admins_only(self):
        """The commands node lists the admin commands to an admin and nothing to anyone else."""
        query = (f"<iq type='get' id='d' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items' "
                 f"node='{NS_COMMANDS}'/></iq>")
        nodes = [item["node"] for item in self.admin.iq(query).query.elements(NS_ITEMS, "item")]
        self.assertIn(f"{NS_ADMIN}#add-user", nodes)
        self.assertIn(f"{NS_ADMIN}#edit-blacklist", nodes)
        alice = self.harness.login("alice@localhost/x")
        self.assertEqual(list(alice.iq(query).query.elements(NS_ITEMS, "item")), [])

    def test_delete_user_ends_sessions(self):
        """delete-user removes the account and ends its live sessions."""
        alice = self.harness.login("alice@localhost/x")
        reply = self.admin.iq(submit("delete-user", field("accountjids", "alice@localhost")))
        self.assertEqual(reply.command["status"], "completed")
        self.assertIn("1 sessions ended", note(reply))
        self.assertTrue(alice.transport.disconnecting)
        self.assertFalse(result_of(self.harness.server.accounts.exists("localhost", "alice")))

    def test_disable_then_reenable(self):
        """A disabled user's sessions end and logins fail (SCRAM and PLAIN) until re-enabled."""
        alice = self.harness.login("alice@localhost/x")
        self.admin.iq(submit("disable-user", field("accountjids", "alice@localhost")))
        self.assertTrue(alice.transport.disconnecting)
        self.assertFalse(self.logs_in("alice"))
        decoys = self.harness.server.decoys
        self.assertFalse(result_of(self.harness.server.accounts.check_password(
            "localhost", "alice", "secret", lambda user: decoys.credentials("localhost", user))))
        result_of(self.harness.server.accounts.set_password("localhost", "alice", "new"))
        self.assertFalse(self.logs_in("alice", "new"), "a password change does not re-enable")
        self.admin.iq(submit("reenable-user", field("accountjids", "alice@localhost")))
        self.assertTrue(self.logs_in("alice", "new"))

    def test_end_user_session(self):
        """end-user-session with a full JID ends that session only."""
        one = self.harness.login("alice@localhost/one")
        two = self.harness.login("alice@localhost/two")
        self.admin.iq(submit("end-user-session", field("accountjids", "alice@localhost/one")))
        self.assertTrue(one.transport.disconnecting)
        self.assertFalse(two.transport.disconnecting)

    def test_online_users(self):
        """get-online-users-list gives the bare JIDs with a session on the host."""
        self.harness.login("alice@localhost/x")
        reply = self.admin.iq(submit("get-online-users-list", field("max_items", "100")))
        form = next(reply.command.elements(NS_DATA, "x"))
        values = [str(value) for f in form.elements(NS_DATA, "field") if f.getAttribute("var") == "onlineuserjids"
                  for value in f.elements(NS_DATA, "value")]
        self.assertEqual(values, ["alice@localhost", "boss@localhost"])

    def test_announce_and_its_bound(self):
        """announce sends a headline to every session of the host; a huge one is refused."""
        alice = self.harness.login("alice@localhost/x")
        self.admin.iq(submit("announce", field("announcement", "line one", "line two")))
        message = [stanza for stanza in alice.received() if stanza.name == "message"][-1]
        self.assertEqual(message["type"], "headline")
        self.assertEqual(str(message.body), "line one\nline two")
        huge = self.admin.iq(submit("announce", field("announcement", "x" * 9000), id="h"))
        self.assertEqual(huge["type"], "error")
        self.assertIn("longer than", huge.toXml())

    def test_message_of_the_day(self):
        """set-motd is sent to each new session at its initial presence; edit-motd shows it; delete-motd
        stops it."""
        self.admin.iq(submit("set-motd", field("motd", "welcome")))
        alice = self.harness.login("alice@localhost/x")
        alice.send("<presence/>")
        self.assertIn("welcome", [str(stanza.body) for stanza in alice.received() if stanza.name == "message"])
        first = self.admin.iq(f"<iq type='set' id='e' to='localhost'><command xmlns='{NS_COMMANDS}' "
                              f"node='{NS_ADMIN}#edit-motd'/></iq>")
        self.assertIn("<value>welcome</value>", first.toXml())
        self.admin.iq(f"<iq type='set' id='f' to='localhost'><command xmlns='{NS_COMMANDS}' "
                      f"node='{NS_ADMIN}#delete-motd'/></iq>")
        later = self.harness.login("alice@localhost/y")
        later.send("<presence/>")
        self.assertEqual([stanza for stanza in later.received() if stanza.name == "message"], [])

    def test_edit_blocked_domains(self):
        """edit-blacklist makes the s2s policy refuse the domains, keeps them in storage, and refuses a
        domain of this server."""
        reply = self.admin.iq(submit("edit-blacklist", field("blacklistjids", "evil.example", "bad.example")))
        self.assertEqual(reply.command["status"], "completed")
        server = self.harness.server
        self.assertEqual(server.blocked_domains, {"evil.example", "bad.example"})
        self.assertEqual(sorted(result_of(server.storage.get("", "", "blocked-domains"))),
                         ["bad.example", "evil.example"])
        own = self.admin.iq(submit("edit-blacklist", field("blacklistjids", "other.test"), id="o"))
        self.assertEqual(own["type"], "error")

    def test_unknown_session_and_command(self):
        """A made-up session id is bad-request; an unknown node is item-not-found."""
        reply = self.admin.iq(submit("add-user", field("accountjid", "x@localhost"), session="nope"))
        self.assertEqual(reply.error.firstChildElement().name, "bad-request")
        unknown = self.admin.iq(f"<iq type='set' id='u' to='localhost'><command xmlns='{NS_COMMANDS}' "
                                f"node='{NS_ADMIN}#shutdown'/></iq>")
        self.assertEqual(unknown.error.firstChildElement().name, "item-not-found")

    def test_sessions_lapse(self):
        """A form answered but never submitted is forgotten after SESSION_SECONDS."""
        first = self.admin.iq(f"<iq type='set' id='a' to='localhost'><command xmlns='{NS_COMMANDS}' "
                              f"node='{NS_ADMIN}#add-user'/></iq>")
        self.harness.clock.advance(601)
        reply = self.admin.iq(submit("add-user", field("accountjid", "x@localhost"), field("password", "p"),
                                     session=first.command["sessionid"]))
        self.assertEqual(reply.error.firstChildElement().name, "bad-request")


class HostAdminsTests(SynchronousTestCase):
    def test_host_admins_are_checked(self):
        """[hosts.NAME] admins must be bare JIDs."""
        from bridge import config as configuration

        with self.assertRaises(configuration.ConfigError) as caught:
            make_config(hosts={"localhost": {"admins": ["boss@localhost/desk"]}})
        self.assertIn("hosts.localhost.admins", str(caught.exception))

    def test_host_admins_administer_muc_and_pubsub(self):
        """A host's admin is an admin of the MUC and pubsub services, beside their own lists."""
        from bridge.gateways.muc.service import MUCService
        from bridge.gateways.pubsub import PubsubService
        from tests.unit.helpers import gateway_context

        harness = Harness(make_config(hosts={"localhost": {"admins": ["boss@localhost"]}}))
        server = harness.server
        muc = MUCService(gateway_context(server, "muc", server.config.muc))
        pubsub = PubsubService(gateway_context(server, "pubsub", server.config.pubsub))
        self.assertTrue(muc.is_admin("boss@localhost"))
        self.assertFalse(muc.is_admin("alice@localhost"))
        self.assertTrue(pubsub.is_admin("boss@localhost"))
        self.assertFalse(pubsub.is_admin("alice@localhost"))
