"""XEP-0156 host-meta on the real server's HTTP listener: a browser that knows only the domain learns the
BOSH and WebSocket URLs, and the BOSH URL it is given opens a session."""

import http.client
import json
import ssl

import pytest

from .harness import TIMEOUT


@pytest.fixture(scope="module")
def web_server(start_server):
    return start_server("hostmeta", ["web@localhost"], wait_for=("c2s", "c2s-direct-tls", "http", "https"))


def get(port, path, host):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_host_meta_points_to_a_working_bosh_url(web_server):
    """Asked over plain HTTP, host-meta.json and host-meta name the TLS listener's https BOSH and wss
    WebSocket URLs; a BOSH session request to the advertised URL (over TLS) is answered with a session."""
    plain, secure = web_server.ports["http"], web_server.ports["https"]
    status, headers, body = get(plain, "/.well-known/host-meta.json", f"localhost:{plain}")
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "*"
    links = {link["rel"]: link["href"] for link in json.loads(body)["links"]}
    assert links == {"urn:xmpp:alt-connections:xbosh": f"https://localhost:{secure}/http-bind",
                     "urn:xmpp:alt-connections:websocket": f"wss://localhost:{secure}/xmpp-websocket"}
    status, headers, body = get(plain, "/.well-known/host-meta", "localhost")
    assert status == 200 and headers["Content-Type"].startswith("application/xrd+xml")
    assert f"https://localhost:{secure}/http-bind".encode() in body

    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # the test server's own certificate
    connection = http.client.HTTPSConnection("127.0.0.1", secure, timeout=TIMEOUT, context=context)
    try:
        request = ("<body xmlns='http://jabber.org/protocol/httpbind' xmlns:xmpp='urn:xmpp:xbosh' to='localhost' "
                   "rid='1000' wait='5' hold='1' ver='1.11' xmpp:version='1.0' content='text/xml; charset=utf-8'/>")
        connection.request("POST", "/http-bind", body=request.encode(),
                           headers={"Host": f"localhost:{secure}", "Content-Type": "text/xml; charset=utf-8"})
        response = connection.getresponse()
        answer = response.read()
    finally:
        connection.close()
    assert response.status == 200 and b"sid=" in answer, answer
