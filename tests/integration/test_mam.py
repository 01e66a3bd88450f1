"""Message Archive Management (XEP-0313) driven by slixmpp's own xep_0313, xep_0059 and xep_0441 plugins against
the real server, with the SIP gateway on (a phone's MESSAGE, sent by sipp, is found in the archive), and
bridgectl exporting and deleting an archive while the server runs."""

import asyncio
import json
import os
import shutil
import subprocess
import sys

import pytest

from .harness import TIMEOUT, Clients, barrier, next_item, server_env
from .test_sip import SIP_SECTION, free_port, sipp

NS_MAM = "urn:xmpp:mam:2"
NS_SID = "urn:xmpp:sid:0"
USERS = ("rosa@localhost", "tomas@localhost", "ines@localhost", "pablo@localhost", "lucia@localhost",
         "marta@localhost", "jorge@localhost")
MAM_PLUGINS = {"xep_0030": {}, "xep_0059": {}, "xep_0313": {}, "xep_0441": {}}


@pytest.fixture(scope="module")
def mam_server(start_server):
    """bridge with the SIP gateway on loopback ports, and the archive on its defaults."""
    return start_server("mam", USERS, sip=SIP_SECTION, wait_for=("c2s", "sip-udp", "sip-tcp", "sip-tls"))


async def archive(client, **options):
    """Every message of the client's own archive that slixmpp's iterator yields: [(result id, forwarded message)]."""
    found = []
    async for message in client.plugin["xep_0313"].iterate(jid=client.boundjid.bare, **options):
        found.append((message["mam_result"]["id"], message["mam_result"]["forwarded"]["stanza"]))
    return found


def bodies(found):
    return [str(stanza["body"]) for _, stanza in found]


def test_two_resources_one_sends_both_find_it(mam_server):
    """rosa's phone sends to tomas; rosa's laptop finds the message in her archive (from her bare JID,
    with a delay stamp), and tomas finds it in his, under the id of the stanza-id he was given."""

    async def scenario():
        async with Clients(mam_server) as clients:
            phone = await clients.login("rosa@localhost/phone", plugins=MAM_PLUGINS)
            laptop = await clients.login("rosa@localhost/laptop", plugins=MAM_PLUGINS)
            tomas = await clients.login("tomas@localhost/desk", plugins=MAM_PLUGINS)
            info = await laptop.plugin["xep_0030"].get_info(jid="rosa@localhost", timeout=TIMEOUT)
            assert {NS_MAM, NS_MAM + "#extended", NS_SID} <= set(info["disco_info"]["features"])

            phone.send_message(mto="tomas@localhost", mbody="kept for later", mtype="chat")
            received = await next_item(tomas.messages, lambda m: m["body"], what="the phone's message")
            stanza_id = received.xml.find(f"{{{NS_SID}}}stanza-id")
            assert stanza_id is not None and stanza_id.get("by") == "tomas@localhost"
            await barrier(phone)

            found = await archive(laptop)
            assert bodies(found) == ["kept for later"]
            _, stanza = found[0]
            assert str(stanza["from"]) == "rosa@localhost/phone" and str(stanza["to"]) == "tomas@localhost"
            theirs = await archive(tomas)
            assert [(record_id, str(stanza["body"])) for record_id, stanza in theirs] == \
                [(stanza_id.get("id"), "kept for later")]

    asyncio.run(scenario())


def test_paging_500_messages_both_ways(mam_server):
    """500 messages archived; slixmpp pages through them 50 at a time forward (oldest first) and
    backward (newest first, by <before/>), each finding all 500 in order; a page of <max/> 1000 is cut
    to the server's 250."""

    async def scenario():
        async with Clients(mam_server) as clients:
            ines = await clients.login("ines@localhost/a", plugins=MAM_PLUGINS)
            pablo = await clients.login("pablo@localhost/b", plugins=MAM_PLUGINS)
            for number in range(500):
                ines.send_message(mto="pablo@localhost", mbody=f"message {number}", mtype="chat")
                if number % 100 == 99:
                    await barrier(ines)
            await barrier(ines)
            expected = [f"message {number}" for number in range(500)]
            forward = await archive(pablo, rsm={"max": 50})
            assert bodies(forward) == expected
            backward = await archive(pablo, reverse=True, rsm={"max": 50})
            assert bodies(backward) == expected[::-1]
            assert [record_id for record_id, _ in backward] == [record_id for record_id, _ in forward][::-1]
            results = []
            reply = await pablo.plugin["xep_0313"].retrieve(jid=pablo.boundjid.bare, rsm={"max": 1000},
                                                            timeout=TIMEOUT, callback=results.append)
            assert reply["mam_fin"]["rsm"]["count"] == "500"
            assert len(results[0]["mam"]["results"]) == 250
            assert reply["mam_fin"].xml.get("complete") is None

    asyncio.run(scenario())


def test_preferences(mam_server):
    """lucia sets default='never' with marta in <always/> through slixmpp's xep_0441: marta's message
    is archived, jorge's is not (nor stamped with a stanza-id); the preferences read back."""

    async def scenario():
        async with Clients(mam_server) as clients:
            lucia = await clients.login("lucia@localhost/a", plugins=MAM_PLUGINS)
            marta = await clients.login("marta@localhost/b", plugins=MAM_PLUGINS)
            jorge = await clients.login("jorge@localhost/c", plugins=MAM_PLUGINS)
            await lucia.plugin["xep_0441"].set_preferences(default="never", always=["marta@localhost"],
                                                           timeout=TIMEOUT)
            default, always, never = await lucia.plugin["xep_0441"].get_preferences(timeout=TIMEOUT)
            assert (default, [str(jid) for jid in always], list(never)) == ("never", ["marta@localhost"], [])
            jorge.send_message(mto="lucia@localhost", mbody="not kept", mtype="chat")
            marta.send_message(mto="lucia@localhost", mbody="kept", mtype="chat")
            from_jorge = await next_item(lucia.messages, lambda m: m["body"] == "not kept", what="jorge's message")
            assert from_jorge.xml.find(f"{{{NS_SID}}}stanza-id") is None
            await next_item(lucia.messages, lambda m: m["body"] == "kept", what="marta's message")
            assert bodies(await archive(lucia)) == ["kept"]

    asyncio.run(scenario())


@pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp is missing (Debian package sip-tester)")
def test_a_sip_phones_message_is_in_the_archive(mam_server, tmp_path):
    """sipp registers tomas's phone and sends a MESSAGE to rosa on slixmpp; rosa finds it in her archive
    from tomas@localhost, and tomas finds it (sent) and rosa's answer (delivered to his phone) in his."""
    port = free_port()
    status, output, _ = sipp(mam_server, tmp_path, "message_register", user="tomas", local_port=port)
    assert status == 0, output + mam_server.tail(30)

    async def scenario():
        async with Clients(mam_server) as clients:
            rosa = await clients.login("rosa@localhost/sip-test", plugins=MAM_PLUGINS)
            run = asyncio.ensure_future(asyncio.to_thread(sipp, mam_server, tmp_path, "message_roundtrip",
                                                          user="tomas", auth_uri="rosa@localhost", local_port=port,
                                                          keys=[("peer", "rosa")]))
            message = await next_item(rosa.messages, lambda m: m["body"], timeout=20, what="the phone's MESSAGE")
            reply = message.reply("hello tomas, from XMPP")
            reply["thread"] = message["thread"]
            reply.send()
            outcome = await run
            found = await archive(rosa, with_jid="tomas@localhost")
            tomas = await clients.login("tomas@localhost/desk", plugins=MAM_PLUGINS)
            his = await archive(tomas, with_jid="rosa@localhost")
            return outcome, found, his

    (status, output, _), found, his = asyncio.run(scenario())
    assert status == 0, output + mam_server.tail(40)
    texts = [str(stanza["body"]).strip() for _, stanza in found]
    assert "hello rosa, from sipp" in texts, texts
    assert "hello tomas, from XMPP" in texts, texts
    his_texts = [str(stanza["body"]).strip() for _, stanza in his]
    assert his_texts[-2:] == ["hello rosa, from sipp", "hello tomas, from XMPP"], his_texts


def bridgectl(server, *args):
    done = subprocess.run([sys.executable, "-m", "bridge.ctl", "--config", server.config_path, *args],
                          env=server_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_bridgectl_exports_and_deletes_an_archive(mam_server, tmp_path):
    """While the server runs, bridgectl archive-export writes marta's archive as JSON lines (the ids
    her client knows), and archive-delete empties it: her next query finds nothing."""

    async def send_and_read():
        async with Clients(mam_server) as clients:
            marta = await clients.login("marta@localhost/x", plugins=MAM_PLUGINS)
            jorge = await clients.login("jorge@localhost/y", plugins=MAM_PLUGINS)
            jorge.send_message(mto="marta@localhost", mbody="to export", mtype="chat")
            await next_item(marta.messages, lambda m: m["body"] == "to export", what="jorge's message")
            await barrier(jorge)
            return await archive(marta)

    known = asyncio.run(send_and_read())
    path = os.path.join(str(tmp_path), "marta.jsonl")
    bridgectl(mam_server, "archive-export", "marta@localhost", "--output", path)
    with open(path) as handle:
        lines = [json.loads(line) for line in handle]
    assert [line["id"] for line in lines] == [record_id for record_id, _ in known]
    assert "to export" in lines[-1]["stanza"] and lines[-1]["with"].startswith("jorge@localhost")
    assert "messages deleted" in bridgectl(mam_server, "archive-delete", "marta@localhost")

    async def read_again():
        async with Clients(mam_server) as clients:
            marta = await clients.login("marta@localhost/x", plugins=MAM_PLUGINS)
            return await archive(marta)

    assert asyncio.run(read_again()) == []


def test_the_archive_survives_a_restart_and_its_writer_ends_with_the_server(start_server):
    """Messages archived by the writer process are in the archive after the server stops (SIGTERM) and
    starts again; the writer ended with the server."""
    server = start_server("mam-restart", ("ana@localhost", "luis@localhost"))
    data = os.path.join(os.path.dirname(server.config_path), "data")

    def writers():
        found = subprocess.run(["pgrep", "-f", f"archive_writer_main {data}"], capture_output=True, text=True)
        return found.stdout.split()

    async def send():
        async with Clients(server) as clients:
            ana = await clients.login("ana@localhost/a", plugins=MAM_PLUGINS)
            luis = await clients.login("luis@localhost/l", plugins=MAM_PLUGINS)
            for number in range(20):
                ana.send_message(mto="luis@localhost", mbody=f"before the restart {number}", mtype="chat")
            await next_item(luis.messages, lambda m: m["body"] == "before the restart 19", what="the last message")
            await barrier(ana)

    async def read():
        async with Clients(server) as clients:
            luis = await clients.login("luis@localhost/l", plugins=MAM_PLUGINS)
            return bodies(await archive(luis))

    expected = [f"before the restart {number}" for number in range(20)]
    asyncio.run(send())
    assert asyncio.run(read()) == expected  # answered once the writer has stored them
    assert len(writers()) == 1
    server.stop()
    assert writers() == []
    server.start()
    assert asyncio.run(read()) == expected
