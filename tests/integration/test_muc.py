"""Multi-user chat (XEP-0045) driven by slixmpp's own xep_0045 and xep_0313 plugins against the real server:
joining, history on join, the subject, members-only and password rooms, a ban, and a persistent room (and
its MAM archive) that outlives a restart of the server."""

import asyncio

import pytest
from slixmpp.exceptions import PresenceError

from .harness import TIMEOUT, Clients, barrier, next_item

SERVICE = "conference.localhost"
USERS = ("nora@localhost", "otto@localhost", "pia@localhost")
MUC_PLUGINS = {"xep_0030": {}, "xep_0045": {}, "xep_0004": {}, "xep_0059": {}, "xep_0313": {}}


@pytest.fixture(scope="module")
def muc_server(start_server):
    return start_server("muc", USERS)


async def create(client, room, nick, **settings):
    """Join ``room`` (creating it: status 201), then submit its configuration form with ``settings``."""
    muc = client.plugin["xep_0045"]
    presence, *_ = await muc.join_muc_wait(room, nick, timeout=TIMEOUT)
    assert 201 in presence["muc"]["status_codes"], presence
    form = await muc.get_room_config(room, timeout=TIMEOUT)
    submitted = client.plugin["xep_0004"].make_form(ftype="submit")
    for var, value in settings.items():
        submitted.add_field(var=f"muc#roomconfig_{var}", value=value)
    del form
    await muc.set_room_config(room, submitted, timeout=TIMEOUT)


async def refused(client, room, nick, **options):
    """The error condition a join is refused with."""
    with pytest.raises(PresenceError) as raised:
        await client.plugin["xep_0045"].join_muc_wait(room, nick, timeout=TIMEOUT, **options)
    return raised.value.condition


def test_join_history_subject_and_messages(muc_server):
    """nora creates a room, sets its subject and talks; otto joins and gets nora's presence, the last two
    messages he asked for (delayed, from the room) and the subject; his message reaches nora with an
    occupant id; the service lists the room in disco#items."""

    async def scenario():
        async with Clients(muc_server) as clients:
            nora = await clients.login("nora@localhost/a", plugins=MUC_PLUGINS)
            otto = await clients.login("otto@localhost/b", plugins=MUC_PLUGINS)
            room = f"lobby@{SERVICE}"
            await create(nora, room, "Nora", roomname="Lobby")
            nora.plugin["xep_0045"].set_subject(room, "Today: planning")
            for number in range(3):
                nora.send_message(mto=room, mbody=f"note {number}", mtype="groupchat")
            await next_item(nora.messages, lambda m: m["body"] == "note 2", what="nora's own last note")
            presence, subject, occupants, history = await otto.plugin["xep_0045"].join_muc_wait(
                room, "Otto", maxstanzas=2, timeout=TIMEOUT)
            assert 110 in presence["muc"]["status_codes"]
            assert sorted(str(p["from"]) for p in occupants) == [f"{room}/Nora", f"{room}/Otto"]
            assert [str(m["body"]) for m in history] == ["note 1", "note 2"]
            assert subject["subject"] == "Today: planning"
            otto.send_message(mto=room, mbody="hello all", mtype="groupchat")
            heard = await next_item(nora.messages, lambda m: m["body"] == "hello all", what="otto's message")
            assert str(heard["from"]) == f"{room}/Otto"
            assert heard.xml.find("{urn:xmpp:occupant-id:0}occupant-id") is not None
            items = await otto.plugin["xep_0030"].get_items(jid=SERVICE, timeout=TIMEOUT)
            assert room in [str(item[0]) for item in items["disco_items"]["items"]]

    asyncio.run(scenario())


def test_members_only_password_and_ban(muc_server):
    """A members-only room refuses pia (registration-required) until nora makes her a member; a
    password room refuses a wrong password (not-authorized); a banned otto is removed with 301 and
    refused (forbidden) when he comes back."""

    async def scenario():
        async with Clients(muc_server) as clients:
            nora = await clients.login("nora@localhost/c", plugins=MUC_PLUGINS)
            otto = await clients.login("otto@localhost/d", plugins=MUC_PLUGINS)
            pia = await clients.login("pia@localhost/e", plugins=MUC_PLUGINS)
            members = f"club@{SERVICE}"
            await create(nora, members, "Nora", membersonly=True)
            assert await refused(pia, members, "Pia") == "registration-required"
            await nora.plugin["xep_0045"].set_affiliation(members, "member", jid="pia@localhost", timeout=TIMEOUT)
            await pia.plugin["xep_0045"].join_muc_wait(members, "Pia", timeout=TIMEOUT)

            secret = f"vault@{SERVICE}"
            await create(nora, secret, "Nora", passwordprotectedroom=True, roomsecret="open sesame")
            assert await refused(pia, secret, "Pia", password="wrong") == "not-authorized"
            await pia.plugin["xep_0045"].join_muc_wait(secret, "Pia", password="open sesame", timeout=TIMEOUT)

            await otto.plugin["xep_0045"].join_muc_wait(secret, "Otto", password="open sesame", timeout=TIMEOUT)
            in_room = asyncio.Queue()
            otto.add_event_handler(f"muc::{secret}::presence", in_room.put_nowait)
            await nora.plugin["xep_0045"].set_affiliation(secret, "outcast", jid="otto@localhost",
                                                          reason="enough", timeout=TIMEOUT)
            banned = await next_item(in_room, lambda p: p["type"] == "unavailable"
                                     and 301 in p["muc"]["status_codes"], what="otto's ban")
            assert 110 in banned["muc"]["status_codes"]
            assert await refused(otto, secret, "Otto", password="open sesame") == "forbidden"

    asyncio.run(scenario())


def test_persistent_room_survives_a_restart(start_server):
    """A persistent room keeps its configuration, its members, its subject, its history and its archive
    over a restart of the server: after it, pia (a member) joins and gets them, and finds the message in
    the room's archive (XEP-0313 on the room JID); otto (no member) is refused."""
    server = start_server("muc-restart", USERS)
    room = f"archive@{SERVICE}"

    async def before():
        async with Clients(server) as clients:
            nora = await clients.login("nora@localhost/f", plugins=MUC_PLUGINS)
            await create(nora, room, "Nora", persistentroom=True, membersonly=True, roomname="Kept")
            await nora.plugin["xep_0045"].set_affiliation(room, "member", jid="pia@localhost", timeout=TIMEOUT)
            nora.plugin["xep_0045"].set_subject(room, "What stays")
            nora.send_message(mto=room, mbody="written before the restart", mtype="groupchat")
            await next_item(nora.messages, lambda m: m["body"] == "written before the restart",
                            what="nora's message")
            await barrier(nora)

    async def after():
        async with Clients(server) as clients:
            pia = await clients.login("pia@localhost/g", plugins=MUC_PLUGINS)
            otto = await clients.login("otto@localhost/h", plugins=MUC_PLUGINS)
            _, subject, _, history = await pia.plugin["xep_0045"].join_muc_wait(room, "Pia", timeout=TIMEOUT)
            assert [str(m["body"]) for m in history] == ["written before the restart"]
            assert subject["subject"] == "What stays"
            info = await pia.plugin["xep_0030"].get_info(jid=room, timeout=TIMEOUT)
            assert {"muc_persistent", "muc_membersonly", "urn:xmpp:mam:2"} <= set(info["disco_info"]["features"])
            found = [message async for message in pia.plugin["xep_0313"].iterate(jid=room)]
            assert [str(m["mam_result"]["forwarded"]["stanza"]["body"]) for m in found] == \
                ["written before the restart"]
            assert await refused(otto, room, "Otto") == "registration-required"

    asyncio.run(before())
    server.stop()
    server.start()
    asyncio.run(after())


def test_moderator_retracts_a_message(muc_server):
    """XEP-0425 with slixmpp's xep_0425 plugin: otto (a participant) may not retract nora's message
    (forbidden); nora (the owner, a moderator) retracts otto's by its stanza id; otto's client gets the
    moderated retraction, and the room's archive holds a tombstone without the body in its place."""
    from slixmpp.exceptions import IqError

    plugins = {**MUC_PLUGINS, "xep_0425": {}}

    async def scenario():
        async with Clients(muc_server) as clients:
            nora = await clients.login("nora@localhost/i", plugins=plugins)
            otto = await clients.login("otto@localhost/j", plugins=plugins)
            room = f"forum@{SERVICE}"
            await create(nora, room, "Nora", persistentroom=True)
            await otto.plugin["xep_0045"].join_muc_wait(room, "Otto", timeout=TIMEOUT)
            moderated = asyncio.Queue()
            otto.add_event_handler("moderated_message", moderated.put_nowait)
            otto.send_message(mto=room, mbody="buy cheap pills", mtype="groupchat")
            heard = await next_item(nora.messages, lambda m: m["body"] == "buy cheap pills", what="otto's spam")
            stanza_id = heard.xml.find("{urn:xmpp:sid:0}stanza-id").get("id")
            with pytest.raises(IqError) as raised:
                await otto.plugin["xep_0425"].moderate(heard["from"], stanza_id, timeout=TIMEOUT)
            assert raised.value.condition == "forbidden"
            await nora.plugin["xep_0425"].moderate(heard["from"], stanza_id, "spam", timeout=TIMEOUT)
            retraction = await next_item(moderated, lambda m: True, what="the retraction")
            assert retraction["retract"]["id"] == stanza_id
            assert str(retraction["retract"]["moderated"]["by"]) == f"{room}/Nora"
            found = [message async for message in nora.plugin["xep_0313"].iterate(jid=room)]
            [tombstone] = [m["mam_result"]["forwarded"]["stanza"] for m in found]
            assert tombstone["body"] == ""
            assert tombstone.xml.find("{urn:xmpp:message-retract:1}retracted") is not None

    asyncio.run(scenario())
