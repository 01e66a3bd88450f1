"""Quotas over a real socket, with slixmpp clients and SQLite on its own thread: a burst of offline
messages stops at the byte quota, and a vCard past its quota is refused.  The server is one of its own."""

import asyncio

import pytest

from .conftest import accounts_for
from .harness import NS_CLIENT, NS_STANZAS, Clients, ServerProcess, add_users, error_condition, next_item, \
    write_config

MAX_OFFLINE_BYTES = 20000
MAX_VCARD_BYTES = 32768
BODY_BYTES = 3000
MESSAGES = 10
USERS = ("alice@localhost", "bob@localhost")


@pytest.fixture(scope="module")
def quota_server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("quotas")
    config_path = write_config(str(directory), tables=(
        f"[quotas]\nmax_offline_bytes_per_user = {MAX_OFFLINE_BYTES}\nmax_vcard_bytes = {MAX_VCARD_BYTES}\n"))
    accounts = accounts_for(USERS)
    add_users(config_path, accounts)
    process = ServerProcess(config_path, accounts).start()
    yield process
    process.stop()


def error_text(stanza):
    return stanza.xml.findtext(f"{{{NS_CLIENT}}}error/{{{NS_STANZAS}}}text") or ""


def test_offline_burst_stops_at_the_byte_quota(quota_server):
    """alice sends ten messages of 3 kB at once to bob, who is offline and may keep 20 kB: the
    first ones are stored, every later one comes back <resource-constraint/> with a text (the burst
    does not slip past the quota while the database answers), and at login bob gets exactly the
    stored ones, in order, within the quota."""

    async def scenario():
        async with Clients(quota_server) as clients:
            alice = await clients.login("alice@localhost/burst")
            for number in range(MESSAGES):
                alice.send_message(mto="bob@localhost", mbody=f"{number:02d}" + "x" * (BODY_BYTES - 2),
                                   mtype="chat")
            refused = []
            while not refused or refused[-1]["body"][:2] != f"{MESSAGES - 1:02d}":
                refused.append(await next_item(alice.message_errors, what="a refusal of the burst's messages"))
            assert {error_condition(error) for error in refused} == {"resource-constraint"}, refused
            assert "offline storage is full" in error_text(refused[0])

            bob = await clients.login("bob@localhost/late")
            delivered = [await next_item(bob.messages, what=f"stored message {n}")
                         for n in range(MESSAGES - len(refused))]
            numbers = [int(message["body"][:2]) for message in delivered]
            assert numbers == list(range(len(delivered))), numbers
            assert [int(error["body"][:2]) for error in refused] == list(range(len(delivered), MESSAGES))
            assert 0 < len(delivered) * BODY_BYTES <= MAX_OFFLINE_BYTES, len(delivered)

    asyncio.run(scenario())


def test_vcard_past_the_quota_is_refused(quota_server):
    """A vCard with a 20 kB photo is stored; one with a 40 kB photo, within the stanza size limit
    but past max_vcard_bytes, gets <not-acceptable/> and the first stays."""

    def vcard(photo_bytes):
        return f"<vCard xmlns='vcard-temp'><FN>Alice</FN><PHOTO><BINVAL>{'Q' * photo_bytes}</BINVAL></PHOTO></vCard>"

    async def scenario():
        async with Clients(quota_server) as clients:
            alice = await clients.login("alice@localhost/card", presence=False)
            reply = await alice.query("set", None, vcard(20000))
            assert reply["type"] == "result", reply
            reply = await alice.query("set", None, vcard(40000))
            assert reply["type"] == "error" and error_condition(reply) == "not-acceptable", reply
            assert f"{MAX_VCARD_BYTES} bytes" in error_text(reply)
            reply = await alice.query("get", "alice@localhost", "<vCard xmlns='vcard-temp'/>")
            binval = reply.xml.findtext("{vcard-temp}vCard/{vcard-temp}PHOTO/{vcard-temp}BINVAL")
            assert binval == "Q" * 20000, len(binval or "")

    asyncio.run(scenario())
