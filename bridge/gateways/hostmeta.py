"""Discovery of the browser connection methods (XEP-0156): ``/.well-known/host-meta`` and ``host-meta.json``.

A web client that knows only a user's domain fetches these from
``https://<domain>/.well-known/`` and learns where BOSH and WebSocket are
served.  The URLs are built from the request: its Host header names the
domain (only a hosted domain or alias is echoed; anything else gives the
first host) and the port the client used.  A request that did not come
over TLS is told of the TLS listener when there is one, so that a client
is never sent to a plain-text URL it did not already use; without a TLS
listener (a development setup) the plain URLs of the request's own listener
are given.  Both documents allow any origin (CORS), as XEP-0156 section 3.3
asks.
"""

import json

PATHS = ("/.well-known/host-meta", "/.well-known/host-meta.json")
NS_XRD = "http://docs.oasis-open.org/ns/xri/xrd-1.0"
REL_BOSH = "urn:xmpp:alt-connections:xbosh"
REL_WEBSOCKET = "urn:xmpp:alt-connections:websocket"


def authority(server_config, host_header):
    """(host, port or None) for the URLs: the Host header's when it names a hosted domain, else the first host's."""
    host, _, port = (host_header or "").strip().rpartition(":")
    if not host or "]" in port:  # no port given (or an IPv6 literal without one)
        host, port = (host_header or "").strip(), ""
    name = host.lower().rstrip(".")
    if server_config.host_for(name) is None:
        return next(iter(server_config.hosts)), None
    return name, int(port) if port.isascii() and port.isdigit() and 0 < int(port) <= 65535 else None


def documents(links):
    """The XRD (host-meta) and JSON (host-meta.json) bodies listing ``links`` [(rel, href)]."""
    xrd = "<?xml version='1.0' encoding='utf-8'?>\n" + f"<XRD xmlns='{NS_XRD}'>\n"
    for rel, href in links:
        xrd += f"  <Link rel='{rel}' href='{_escape(href)}'/>\n"
    xrd += "</XRD>\n"
    body = json.dumps({"links": [{"rel": rel, "href": href} for rel, href in links]}, indent=1) + "\n"
    return xrd.encode("utf-8"), body.encode("utf-8")


def _escape(text):
    return text.replace("&", "&amp;").replace("'", "&apos;").replace("<", "&lt;")


class HostMeta:
    """Answers the two host-meta paths of the HTTP listener (see ``bridge.gateways.http``)."""

    def __init__(self, server, config):
        self.server = server
        self.config = config

    def links(self, request):
        host, port = authority(self.server.config, request.headers.get("host"))
        secure = request.secure
        if not secure:
            tls_ports = [listener.port.getHost().port for tls, listener in self.server.http_listeners
                         if tls and listener.port is not None]
            if tls_ports:
                secure, port = True, tls_ports[0]
        base = f"{host}:{port}" if port else host
        web, socket = ("https", "wss") if secure else ("http", "ws")
        return [(REL_BOSH, f"{web}://{base}{self.config.bosh_path}"),
                (REL_WEBSOCKET, f"{socket}://{base}{self.config.websocket_path}")]

    def handle(self, request, responder):
        if request.method not in ("GET", "HEAD"):
            responder.respond(405, [("Allow", "GET, HEAD, OPTIONS"), ("Content-Type", "text/plain; charset=utf-8")],
                              b"method not allowed\n")
            return
        xrd, body = documents(self.links(request))
        if request.path.endswith(".json"):
            kind, body = "application/json", body
        else:
            kind, body = "application/xrd+xml; charset=utf-8", xrd
        responder.respond(200, [("Content-Type", kind), ("Access-Control-Allow-Origin", "*"),
                                ("Cache-Control", "max-age=3600")], body)
