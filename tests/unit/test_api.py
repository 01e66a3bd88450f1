"""The HTTP API (bridge/gateways/api.py): the token, presence lookup, alerts and their errors."""

import json
import os
import shutil
import tempfile
from types import SimpleNamespace

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from bridge import config as configuration
from bridge.gateways import api
from tests.unit.helpers import Harness, gateway_context

TOKEN = "s3cret-token-of-the-calendar-0123456789abcdef"


class Responder:
    def __init__(self):
        self.answers = []

    def respond(self, status, headers, body):
        self.answers.append((status, dict(headers), json.loads(body)))


def temporary_file(test, text, mode=0o600):
    """A file holding ``text`` in a folder of its own, removed after ``test``."""
    folder = tempfile.mkdtemp()
    test.addCleanup(shutil.rmtree, folder)
    path = os.path.join(folder, "file")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, mode)
    return path


class APITestCase(SynchronousTestCase):
    api_settings = {}

    def setUp(self):
        token_file = temporary_file(self, TOKEN + "\n")
        document = {"c2s": {"require_encryption": False}, "hosts": {"localhost": {}, "other.test": {}},
                    "api": {"enabled": True, "token_file": token_file, **self.api_settings}}
        self.harness = Harness(configuration.parse(document, "test.toml"))
        for jid in ("alice@localhost", "bob@localhost", "zed@other.test"):
            self.harness.add_user(jid)
        self.context = gateway_context(self.harness.server, "api", self.harness.config.api)
        self.api = api.attach(self.context, None, None)
        self.api.start()

    def call(self, method, path, body=b"", token=TOKEN):
        headers = {"authorization": f"Bearer {token}"} if token is not None else {}
        request = SimpleNamespace(method=method, path=path, query="", headers=headers, body=body)
        responder = Responder()
        self.api.handle(request, responder)
        [answer] = responder.answers
        return answer

    def alert(self, document, **options):
        return self.call("POST", "/api/v1/alerts", json.dumps(document).encode("utf-8"), **options)


class TokenTests(APITestCase):
    def test_missing_or_wrong_token_is_401(self):
        """Without a token, with another scheme or with a wrong token: 401 with a JSON error and a challenge."""
        for token in (None, "wrong", TOKEN + "x", ""):
            status, headers, document = self.call("GET", "/api/v1/presence/alice@localhost", token=token)
            self.assertEqual(status, 401, token)
            self.assertEqual(headers["WWW-Authenticate"], 'Bearer realm="bridge"')
            self.assertIn("token", document["error"])

    def test_served_under_the_path(self):
        """The API registers its path on the HTTP listener's routes."""
        self.assertIs(self.harness.server.http_routes["/api/"], self.api)

    def test_config_needs_a_token_file(self):
        """An enabled API without token_file, with a token file others may read or with a short token is a
        configuration error."""
        with self.assertRaises(configuration.ConfigError) as caught:
            configuration.load(temporary_file(self, '[api]\nenabled = true\n'))
        self.assertIn("api.token_file: must name", str(caught.exception))
        token_file = temporary_file(self, TOKEN, mode=0o644)
        with self.assertRaises(configuration.ConfigError) as caught:
            configuration.load(temporary_file(self, f'[api]\nenabled = true\ntoken_file = "{token_file}"\n'))
        self.assertIn("readable by others", str(caught.exception))
        short = temporary_file(self, "abc123")
        with self.assertRaises(configuration.ConfigError) as caught:
            configuration.load(temporary_file(self, f'[api]\nenabled = true\ntoken_file = "{short}"\n'))
        self.assertIn("at least 32 characters", str(caught.exception))


class ReloadTests(APITestCase):
    def test_reload_rotates_the_token_and_keeps_the_path(self):
        """A reload rereads the token file: the old token is refused once the step is committed; the
        path served stays the one of the start."""
        new_token = "a-new-token-after-rotation-0123456789abcdef"
        document = {"hosts": {"localhost": {}, "other.test": {}},
                    "api": {"enabled": True, "path": "/other/", "token_file": temporary_file(self, new_token)}}
        commit = self.api.prepare_reload(configuration.parse(document, "test.toml").api)
        self.assertEqual(self.call("GET", "/api/v1/presence/alice@localhost")[0], 200)
        commit()
        self.assertEqual(self.call("GET", "/api/v1/presence/alice@localhost")[0], 401)
        self.assertEqual(self.call("GET", "/api/v1/presence/alice@localhost", token=new_token)[0], 200)
        self.assertEqual(self.api.config.path, "/api/")


class PresenceTests(APITestCase):
    def test_offline_user(self):
        """A user with no session is unavailable, with no resources."""
        status, _, document = self.call("GET", "/api/v1/presence/alice@localhost")
        self.assertEqual((status, document), (200, {"jid": "alice@localhost", "status": "unavailable", "text": "",
                                                    "resources": 0}))

    def test_online_user_show_and_status(self):
        """The show and status of the resource of highest priority, and the number of available resources."""
        low = self.harness.login("alice@localhost/low")
        low.send("<presence><priority>1</priority><show>xa</show><status>gone</status></presence>")
        high = self.harness.login("alice@localhost/high")
        high.send("<presence><priority>5</priority><show>dnd</show><status>In a meeting</status></presence>")
        status, _, document = self.call("GET", "/api/v1/presence/Alice@LOCALHOST")
        self.assertEqual((status, document), (200, {"jid": "alice@localhost", "status": "dnd",
                                                    "text": "In a meeting", "resources": 2}))

    def test_unknown_user_and_bad_jid(self):
        """An unknown user or an unhosted domain is 404; a JID with a resource is 400."""
        self.assertEqual(self.call("GET", "/api/v1/presence/nobody@localhost")[0], 404)
        self.assertEqual(self.call("GET", "/api/v1/presence/alice@elsewhere.test")[0], 404)
        self.assertEqual(self.call("GET", "/api/v1/presence/alice@localhost/desk")[0], 400)
        self.assertEqual(self.call("GET", "/api/v1/nothing")[0], 404)
        self.assertEqual(self.call("DELETE", "/api/v1/presence/alice@localhost")[0], 405)


class ScopedTokenTests(APITestCase):
    api_settings = {"hosts": ["localhost"]}

    def test_other_host_is_403(self):
        """A token for localhost only may not look at, nor alert, the users of other.test."""
        self.assertEqual(self.call("GET", "/api/v1/presence/zed@other.test")[0], 403)
        self.assertEqual(self.alert({"to": "zed@other.test", "body": "hi"})[0], 403)
        self.assertEqual(self.call("GET", "/api/v1/presence/alice@localhost")[0], 200)


class AlertTests(APITestCase):
    api_settings = {"max_recipients": 3, "max_request_bytes": 512}

    def messages(self, client):
        return [e for e in client.received() if e.name == "message"]

    def test_alert_reaches_online_users_as_a_headline(self):
        """An alert to a list is a headline from the host, with subject and body, to each user."""
        alice = self.harness.login("alice@localhost/a")
        alice.send("<presence/>")
        alice.received()
        status, _, document = self.alert({"to": ["alice@localhost", "bob@localhost"], "subject": "Calendar",
                                          "body": "Standup in 5 minutes"})
        self.assertEqual((status, document), (202, {"sent": 2, "online": 1}))
        [message] = self.messages(alice)
        self.assertEqual((message["type"], message["from"]), ("headline", "localhost"))
        self.assertEqual((str(message.subject), str(message.body)), ("Calendar", "Standup in 5 minutes"))

    def test_bad_requests(self):
        """Malformed bodies are 400, too many recipients or too large a body 413, an unknown user 404,
        a group on a host without a directory 404; nothing is sent for a refused request."""
        alice = self.harness.login("alice@localhost/a")
        alice.send("<presence/>")
        alice.received()
        for body in (b"not json", b"[]", json.dumps({"to": "alice@localhost"}).encode(),
                     json.dumps({"to": "alice@localhost", "body": "x", "colour": "red"}).encode(),
                     json.dumps({"to": [], "body": "x"}).encode(),
                     json.dumps({"to": "alice@localhost", "group": "g", "host": "localhost", "body": "x"}).encode()):
            self.assertEqual(self.call("POST", "/api/v1/alerts", body)[0], 400, body)
        too_many = [f"u{n}@localhost" for n in range(4)]
        self.assertEqual(self.alert({"to": too_many, "body": "x"})[0], 413)
        self.assertEqual(self.alert({"to": "alice@localhost", "body": "x" * 600})[0], 413)
        self.assertEqual(self.alert({"to": ["alice@localhost", "nobody@localhost"], "body": "x"})[0], 404)
        self.assertEqual(self.alert({"group": "staff", "host": "localhost", "body": "x"})[0], 404)
        self.assertEqual(self.call("GET", "/api/v1/alerts")[0], 405)
        self.assertEqual(self.messages(alice), [])


class GroupDirectory:
    """A directory of localhost that answers only for its groups (members are bridge's own accounts here)."""

    def __init__(self, groups):
        self._groups = groups

    def groups(self):
        return defer.succeed(self._groups)


class GroupAlertTests(APITestCase):
    def test_alert_to_a_directory_group(self):
        """An alert for a group of the host's directory reaches each member that is a valid JID's local part."""
        directory = GroupDirectory({"staff": ["alice", "Bob", "no body"], "other": ["zed"]})
        self.patch(self.harness.server.accounts, "directory", lambda host: directory if host == "localhost" else None)
        status, _, document = self.alert({"group": "staff", "host": "localhost", "body": "fire drill at 11"})
        self.assertEqual((status, document), (202, {"sent": 2, "online": 0}))
        self.assertEqual(self.alert({"group": "nobody", "host": "localhost", "body": "x"})[0], 404)
        self.assertEqual(self.alert({"group": "staff", "host": "other.test", "body": "x"})[0], 404)


class ConfigTests(SynchronousTestCase):
    def test_path_and_hosts_checked(self):
        """api.path must be a folder of its own, api.hosts hosted domains."""
        with self.assertRaises(configuration.ConfigError) as caught:
            configuration.parse({"hosts": {"localhost": {}}, "api": {"path": "/", "hosts": ["nowhere.test"]}},
                                "test.toml")
        text = str(caught.exception)
        self.assertIn("api.path", text)
        self.assertIn("api.hosts: 'nowhere.test'", text)
