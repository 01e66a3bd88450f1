"""Service administration (XEP-0133) on the real server, through slixmpp's ad-hoc commands plugin (XEP-0050)."""

import asyncio

import pytest

from .conftest import accounts_for
from .harness import TIMEOUT, Clients, ServerProcess, add_users, login, write_config

NS_ADMIN = "http://jabber.org/protocol/admin"


@pytest.fixture
def admin_server(tmp_path):
    """A server whose localhost has boss@localhost as its administrator; stopped at the end."""
    config_path = write_config(str(tmp_path))
    with open(config_path, encoding="utf-8") as handle:
        text = handle.read()
    with open(config_path, "w", encoding="utf-8") as handle:
        handle.write(text.replace("[hosts.localhost]\n", '[hosts.localhost]\nadmins = ["boss@localhost"]\n', 1))
    accounts = accounts_for(["boss@localhost", "alice@localhost"])
    add_users(config_path, accounts)
    process = ServerProcess(config_path, accounts)
    process.start()
    yield process
    process.stop()


async def run_command(client, node, fill):
    """Run ``node`` on localhost with slixmpp's xep_0050: the form the server answers is filled by ``fill``
    and completed; the final result (or error) stanza."""
    loop = asyncio.get_running_loop()
    outcome = loop.create_future()

    def next_step(iq, session):
        form = iq["command"]["form"]
        answer = client.plugin["xep_0004"].make_form(ftype="submit")
        for var, value in fill(form).items():
            answer.add_field(var=var, value=value)
        session["payload"] = answer
        session["next"] = lambda iq, session: outcome.done() or outcome.set_result(iq)
        client.plugin["xep_0050"].complete_command(session)

    def failed(iq, session):
        if not outcome.done():
            outcome.set_result(iq)

    client.plugin["xep_0050"].start_command("localhost", node, {"next": next_step, "error": failed})
    return await asyncio.wait_for(outcome, TIMEOUT)


def test_an_admin_adds_a_user_who_then_logs_in(admin_server):
    """The admin finds add-user in the commands node, runs it with slixmpp's adhoc plugin, and the new
    user logs in; alice, no admin, sees no commands and is forbidden."""
    plugins = {"xep_0030": {}, "xep_0004": {}, "xep_0050": {}}

    async def scenario():
        async with Clients(admin_server) as clients:
            boss = await clients.login("boss@localhost/desk", plugins=plugins)
            items = await boss.plugin["xep_0050"].get_commands("localhost", timeout=TIMEOUT)
            nodes = [item[1] for item in items["disco_items"]["items"]]
            assert f"{NS_ADMIN}#add-user" in nodes
            result = await run_command(boss, f"{NS_ADMIN}#add-user", lambda form: {
                "FORM_TYPE": NS_ADMIN, "accountjid": "newbie@localhost", "password": "fresh pw",
                "password-verify": "fresh pw"})
            assert result["type"] == "result", result
            assert result["command"]["status"] == "completed"
            newbie = await login("newbie@localhost/phone", "fresh pw", admin_server.port)
            clients.track(newbie)

            alice = await clients.login("alice@localhost/x", plugins=plugins)
            items = await alice.plugin["xep_0050"].get_commands("localhost", timeout=TIMEOUT)
            assert list(items["disco_items"]["items"]) == []
            refused = await run_command(alice, f"{NS_ADMIN}#add-user", lambda form: {})
            assert refused["type"] == "error" and refused["error"]["condition"] == "forbidden"

    asyncio.run(scenario())
