"""The HTTP listener of the real server behind a trusted reverse proxy (played by this test, on loopback):
its forwarding header decides which client a BOSH session counts against."""

import http.client

import pytest

from bridge.core.xmlstream import parse_element

from .harness import ServerProcess, write_config
from .test_bosh import NS_HTTPBIND, body_text


def proxied_server(tmp_path, header):
    config_path = write_config(str(tmp_path))
    with open(config_path, encoding="utf-8") as handle:
        text = handle.read()
    text = text.replace("[http]\n", f'[http]\ntrusted_proxies = ["127.0.0.1"]\ntrusted_proxy_header = "{header}"\n'
                                    "bosh_max_sessions_per_address = 1\n", 1)
    with open(config_path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return ServerProcess(config_path).start(wait_for=("http",))


def create_session(port, headers):
    """A BOSH session creation with these headers: its sid, or the condition it was refused with."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        attributes = {"rid": 1000, "to": "localhost", "wait": 5, "hold": 1, "ver": "1.6", "xmpp:version": "1.0"}
        connection.request("POST", "/http-bind", body=body_text(attributes).encode(),
                           headers={"Content-Type": "text/xml; charset=utf-8", **headers})
        response = connection.getresponse()
        body = parse_element(response.read().decode("utf-8"))
    finally:
        connection.close()
    assert (body.uri, body.name) == (NS_HTTPBIND, "body")
    return body.getAttribute("sid") or body.getAttribute("condition")


@pytest.mark.parametrize("header, first, second", [
    ("forwarded", {"Forwarded": "for=198.51.100.1;proto=https"}, {"Forwarded": 'for="[2001:db8::2]"'}),
    ("x-forwarded-for", {"X-Forwarded-For": "198.51.100.1"}, {"X-Forwarded-For": "198.51.100.2"}),
])
def test_sessions_count_per_forwarded_client(tmp_path, header, first, second):
    """With one BOSH session per address, two clients behind the proxy each get one, and a second session
    of the same client is refused; the header the proxy does not write is not believed."""
    process = proxied_server(tmp_path, header)
    port = process.ports["http"]
    try:
        assert create_session(port, first) != "policy-violation"
        assert create_session(port, second) != "policy-violation"
        assert create_session(port, first) == "policy-violation"
        other = {"X-Forwarded-For": "203.0.113.9"} if header == "forwarded" else {"Forwarded": "for=203.0.113.9"}
        # The other header is ignored: the request counts against the proxy itself, which has no session yet.
        assert create_session(port, other) != "policy-violation"
        assert create_session(port, other) == "policy-violation"
    finally:
        process.stop()
