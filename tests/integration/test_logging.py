"""What the real server logs of logins, and the levels of [log] (docs/operations.md, "Log levels")."""

import asyncio

import pytest

from .conftest import accounts_for
from .harness import Clients, ServerProcess, add_users, write_config

USER = "lena@localhost"


def test_logins_are_logged_once_each(start_server):
    """A successful login is logged with the JID, the client's address and the transport; a wrong
    password with the JID named once."""
    server = start_server("login-log", [USER])

    async def scenario():
        async with Clients(server) as clients:
            await clients.login(f"{USER}/desk")
            server.wait_for_line(lambda line: f"{USER} logged in from 127.0.0.1:" in line and " over tcp+tls" in line,
                                 10, "the login line")
            with pytest.raises(AssertionError, match="authentication failed"):
                await clients.login(f"{USER}/again", password="wrong")
            line = server.wait_for_line(lambda line: "authentication failed for" in line, 10, "the failure line")
            assert f"authentication failed for {USER} from 127.0.0.1:" in line, line

    asyncio.run(scenario())


def test_a_subsystem_at_warn_drops_its_info_lines(tmp_path):
    """With [log] levels = {"c2s" = "warn"} the server logs no login line, while the other subsystems
    keep logging at info (its listeners are announced)."""
    config_path = write_config(str(tmp_path), tables='[log]\nlevels = {"c2s" = "warn"}\n')
    accounts = accounts_for([USER])
    add_users(config_path, accounts)
    server = ServerProcess(config_path, accounts).start()
    try:
        async def scenario():
            async with Clients(server) as clients:
                await clients.login(f"{USER}/desk")

        asyncio.run(scenario())
    finally:
        server.stop()
    assert any("listening c2s on 127.0.0.1:" in line for line in server.lines)
    assert not [line for line in server.lines if "logged in from" in line], server.tail()
