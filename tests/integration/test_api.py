"""The HTTP API on the real server (docs/operations.md, "HTTP API"), with the standard library's HTTP
client: a logged-in slixmpp user's presence is looked up, and an alert reaches it as a headline."""

import asyncio
import http.client
import json
import os

import pytest

from .harness import Clients, next_item

TOKEN = "integration-token-0123456789abcdef0123456789"
USER = "carla@localhost"


@pytest.fixture(scope="module")
def api_server(start_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("api-token")
    token_file = os.path.join(folder, "api.token")
    with open(token_file, "w", encoding="utf-8") as handle:
        handle.write(TOKEN + "\n")
    os.chmod(token_file, 0o600)
    tables = f'[api]\nenabled = true\ntoken_file = "{token_file}"\nhosts = ["localhost"]\n'
    return start_server("api", [USER], tables=tables, wait_for=("c2s", "c2s-direct-tls", "http"))


def call(server, method, path, document=None, token=TOKEN):
    """(status, JSON answer) of one request to the API over the HTTP listener."""
    connection = http.client.HTTPConnection("127.0.0.1", server.ports["http"], timeout=10)
    try:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        body = json.dumps(document).encode("utf-8") if document is not None else None
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        assert response.getheader("Content-Type") == "application/json"
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_presence_lookup_and_alert(api_server):
    """carla is logged in and away with a status: the API reports it; an alert posted to her arrives as
    a headline from the host; a wrong token gets 401 and an unknown user 404."""

    async def scenario():
        async with Clients(api_server) as clients:
            carla = await clients.login(f"{USER}/laptop")
            carla.send_presence(pshow="away", pstatus="lunch")
            await next_item(carla.presences, lambda p: p["from"] == f"{USER}/laptop", what="own presence back")
            status, document = await asyncio.to_thread(call, api_server, "GET", f"/api/v1/presence/{USER}")
            assert (status, document) == (200, {"jid": USER, "status": "away", "text": "lunch", "resources": 1})
            status, document = await asyncio.to_thread(call, api_server, "POST", "/api/v1/alerts",
                                                       {"to": USER, "subject": "Ticket 42",
                                                        "body": "assigned to you"})
            assert (status, document) == (202, {"sent": 1, "online": 1})
            alert = await next_item(carla.messages, lambda m: m["type"] == "headline", what="the alert")
            assert (str(alert["from"]), alert["subject"], alert["body"]) == ("localhost", "Ticket 42",
                                                                              "assigned to you")
            status, _ = await asyncio.to_thread(call, api_server, "GET", f"/api/v1/presence/{USER}", token="x")
            assert status == 401
            status, _ = await asyncio.to_thread(call, api_server, "GET", "/api/v1/presence/nobody@localhost")
            assert status == 404

    asyncio.run(scenario())
