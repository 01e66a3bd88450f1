"""Offline notification preferences: host policy, user override, mobile number from the vCard."""

import io
import os
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from bridge import ctl
from bridge.core.notifications import NotificationPreferences
from tests.unit.helpers import Harness, make_config, result_of


class PreferenceTests(SynchronousTestCase):
    def setUp(self):
        self.harness = Harness(make_config(hosts={"localhost": {"offline_notification": "email"}}))
        self.harness.add_user("bob@localhost")
        self.preferences = NotificationPreferences(self.harness.storage, self.harness.config.hosts.__getitem__)

    def test_host_policy_then_user_override(self):
        """Without a choice of their own a user follows the host; their choice (opt-out too) wins."""
        self.assertEqual(result_of(self.preferences.channels("localhost", "bob")), {"email"})
        result_of(self.preferences.update("localhost", "bob", policy="none"))
        self.assertEqual(result_of(self.preferences.channels("localhost", "bob")), set())
        result_of(self.preferences.update("localhost", "bob", policy=None))
        self.assertEqual(result_of(self.preferences.channels("localhost", "bob")), {"email"})

    def test_mobile_from_vcard_unless_stored(self):
        """The vCard's TEL marked CELL is the number, unless one is stored."""
        bob = self.harness.login("bob@localhost/b")
        bob.iq("<iq type='set' id='v'><vCard xmlns='vcard-temp'><TEL><HOME/><NUMBER>+1111</NUMBER></TEL>"
               "<TEL><CELL/><NUMBER>+15551234567</NUMBER></TEL></vCard></iq>")
        self.assertEqual(result_of(self.preferences.mobile("localhost", "bob")), "+15551234567")
        result_of(self.preferences.update("localhost", "bob", mobile="+4470000000"))
        self.assertEqual(result_of(self.preferences.mobile("localhost", "bob")), "+4470000000")

    def test_unknown_policy_refused(self):
        """A policy that does not exist is an error, not silently stored."""
        self.failureResultOf(self.preferences.update("localhost", "bob", policy="pigeon"), ValueError)


class BridgectlNotifyTests(SynchronousTestCase):
    def test_set_and_show(self):
        """bridgectl notify stores the choice and the number, and shows them."""
        directory = tempfile.mkdtemp()
        path = os.path.join(directory, "bridge.toml")
        with open(path, "w") as handle:
            handle.write('data_dir = "data"\n[hosts.localhost]\n')
        with open(os.path.join(directory, "pw"), "w") as handle:
            handle.write("secret\n")
        out = io.StringIO()
        self.assertEqual(ctl.main(["--config", path, "adduser", "bob@localhost", "--password-file",
                                   os.path.join(directory, "pw")], out=out), 0)
        self.assertEqual(ctl.main(["--config", path, "notify", "bob@localhost", "--policy", "sms",
                                   "--mobile", "+15551234567"], out=out), 0)
        self.assertIn("bob@localhost: policy sms (sms), mobile +15551234567", out.getvalue())
