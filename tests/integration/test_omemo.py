"""OMEMO (XEP-0384) through bridge's PEP with slixmpp-omemo: two clients publish their device lists and bundles
as the plugin does (publish-options, open access model), and one sends the other a message that only the
other's keys decrypt.  Skipped, with the reason, where slixmpp-omemo is not installed (the test extra)."""

import asyncio

import pytest

from .harness import TIMEOUT, Clients, next_item

omemo = pytest.importorskip("omemo", reason="slixmpp-omemo is not installed (pip install 'bridge[test]')")
slixmpp_omemo = pytest.importorskip("slixmpp_omemo", reason="slixmpp-omemo is not installed")

from slixmpp import JID  # noqa: E402
from slixmpp.plugins import register_plugin  # noqa: E402

USERS = ("oma@localhost", "omar@localhost")
NS_TWOMEMO_DEVICES = "urn:xmpp:omemo:2:devices"
NS_TWOMEMO_BUNDLES = "urn:xmpp:omemo:2:bundles"
NS_OLDMEMO_DEVICES = "eu.siacs.conversations.axolotl.devicelist"
PLUGINS = {name: {} for name in ("xep_0004", "xep_0030", "xep_0060", "xep_0163", "xep_0280", "xep_0334",
                                 "xep_0384")}


class MemoryStorage(omemo.Storage):
    """The keys of one test client, in memory."""

    def __init__(self):
        super().__init__()
        self.values = {}

    async def _load(self, key):
        return omemo.Just(self.values[key]) if key in self.values else omemo.Nothing()

    async def _store(self, key, value):
        self.values[key] = value

    async def _delete(self, key):
        self.values.pop(key, None)


class MemoryOMEMO(slixmpp_omemo.XEP_0384):
    """slixmpp-omemo with in-memory keys and blind trust before verification (no user to ask)."""

    default_config = {"fallback_message": "This message is OMEMO encrypted."}

    def plugin_init(self):
        self._storage = MemoryStorage()
        super().plugin_init()

    @property
    def storage(self):
        return self._storage

    @property
    def _btbv_enabled(self):
        return True

    async def _prompt_manual_trust(self, manually_trusted, identifier):
        raise AssertionError(f"no manual trust decision expected: {manually_trusted}")


@pytest.fixture(scope="module")
def omemo_server(start_server):
    register_plugin(MemoryOMEMO)
    return start_server("omemo", USERS)


def test_encrypted_message_between_two_omemo_clients(omemo_server):
    """Both clients' device lists (OMEMO 2 and the older eu.siacs node) and bundles land in their PEP nodes,
    each readable by the other; oma's
    message to omar carries no plaintext body on the wire, and omar's keys decrypt it to the text oma wrote."""
    secret = "the meeting moved to room 4"

    async def scenario():
        async with Clients(omemo_server) as clients:
            oma = await clients.login("oma@localhost/phone", plugins=PLUGINS)
            omar = await clients.login("omar@localhost/laptop", plugins=PLUGINS)
            managers = [await client.plugin["xep_0384"].get_session_manager() for client in (oma, omar)]
            own_ids = [(await manager.get_own_device_information())[0].device_id for manager in managers]

            devices = await omar.plugin["xep_0060"].get_items(JID("oma@localhost"), NS_TWOMEMO_DEVICES,
                                                              timeout=TIMEOUT)
            assert f"id=\"{own_ids[0]}\"" in str(devices), devices
            bundles = await oma.plugin["xep_0060"].get_items(JID("omar@localhost"), NS_TWOMEMO_BUNDLES,
                                                             timeout=TIMEOUT)
            assert str(own_ids[1]) in [item["id"] for item in bundles["pubsub"]["items"]]
            legacy = await omar.plugin["xep_0060"].get_items(JID("oma@localhost"), NS_OLDMEMO_DEVICES,
                                                             timeout=TIMEOUT)
            assert f"id=\"{own_ids[0]}\"" in str(legacy), legacy

            message = oma.make_message(mto=JID("omar@localhost"), mbody=secret, mtype="chat")
            encrypted, errors = await oma.plugin["xep_0384"].encrypt_message(message, JID("omar@localhost"))
            assert not errors, errors
            encrypted.send()
            received = await next_item(omar.messages, lambda m: omar.plugin["xep_0384"].is_encrypted(m),
                                       what="oma's encrypted message")
            assert secret not in str(received)
            decrypted, sender_device = await omar.plugin["xep_0384"].decrypt_message(received)
            return decrypted["body"], sender_device.device_id, own_ids[0]

    body, sender_device, oma_device = asyncio.run(scenario())
    assert body == secret
    assert sender_device == oma_device
