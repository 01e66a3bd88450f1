"""XEP-0156 host-meta documents on the HTTP listener, over a StringTransport."""

import json
import xml.etree.ElementTree as ET
from types import SimpleNamespace

from tests.unit.test_http import HTTPTestCase

NS_XRD = "{http://docs.oasis-open.org/ns/xri/xrd-1.0}"


class HostMetaTests(HTTPTestCase):
    def fetch(self, path, host="localhost:5280", method="GET", tls=False):
        self.make(tls=tls, hosts={"localhost": {}, "example.org": {"aliases": ["chat.example.org"]}})
        client = self.connect()
        client.request(method, path, host=host)
        [(status, headers, body)] = client.responses()
        return status, headers, body

    def test_xrd_lists_bosh_and_websocket(self):
        """/.well-known/host-meta is an XRD with the BOSH and WebSocket URLs of the listener the client used,
        open to any origin."""
        status, headers, body = self.fetch("/.well-known/host-meta")
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("application/xrd+xml"))
        self.assertEqual(headers["access-control-allow-origin"], "*")
        links = {link.get("rel"): link.get("href") for link in ET.fromstring(body).iter(f"{NS_XRD}Link")}
        self.assertEqual(links, {"urn:xmpp:alt-connections:xbosh": "http://localhost:5280/http-bind",
                                 "urn:xmpp:alt-connections:websocket": "ws://localhost:5280/xmpp-websocket"})

    def test_json_form_and_alias(self):
        """host-meta.json carries the same links as JSON; a hosted alias in Host is kept, on a TLS listener
        the URLs are https and wss."""
        status, headers, body = self.fetch("/.well-known/host-meta.json", host="chat.example.org:5281", tls=True)
        self.assertEqual((status, headers["content-type"]), (200, "application/json"))
        links = {link["rel"]: link["href"] for link in json.loads(body)["links"]}
        self.assertEqual(links["urn:xmpp:alt-connections:xbosh"], "https://chat.example.org:5281/http-bind")
        self.assertEqual(links["urn:xmpp:alt-connections:websocket"], "wss://chat.example.org:5281/xmpp-websocket")

    def test_foreign_host_header_is_not_echoed(self):
        """A Host header that names no hosted domain is replaced by the first host, without its port."""
        _, _, body = self.fetch("/.well-known/host-meta.json", host="evil.example:666")
        hrefs = [link["href"] for link in json.loads(body)["links"]]
        self.assertEqual(hrefs, ["http://localhost/http-bind", "ws://localhost/xmpp-websocket"])

    def test_plain_request_is_sent_to_the_tls_listener(self):
        """Asked over plain HTTP while a TLS listener listens, the document names the TLS listener's URLs."""
        self.make(hosts={"localhost": {}})
        port = SimpleNamespace(getHost=lambda: SimpleNamespace(port=5443))
        self.harness.server.http_listeners.append((True, SimpleNamespace(port=port)))
        client = self.connect()
        client.request("GET", "/.well-known/host-meta.json", host="localhost:5280")
        [(_, _, body)] = client.responses()
        hrefs = [link["href"] for link in json.loads(body)["links"]]
        self.assertEqual(hrefs, ["https://localhost:5443/http-bind", "wss://localhost:5443/xmpp-websocket"])

    def test_other_methods(self):
        """A POST to host-meta gets 405 naming the methods allowed."""
        status, headers, _ = self.fetch("/.well-known/host-meta", method="POST")
        self.assertEqual((status, headers["allow"]), (405, "GET, HEAD, OPTIONS"))
