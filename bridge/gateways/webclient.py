"""The web chat page: Converse.js, served by the HTTP listener.

``GET /`` is a page that runs Converse.js in full screen, pointed at this
listener's BOSH and WebSocket paths (the URLs are made from the request's
Host header) with the first configured host as the default domain.  The files
of Converse.js's ``dist`` folder (``web_client_dir``, installed with npm) are
served under ``/converse/``.  When the folder is missing the page says only
that the client is not installed: where it was looked for and the command
that installs it go to the log, once, since the server's paths are no
business of anonymous visitors.  Nothing outside that folder is ever served.
"""

import html
import json
import os
import posixpath
import re
from urllib.parse import unquote

from twisted.logger import Logger

log = Logger()

PREFIX = "/converse/"
NPM_PACKAGE = "converse.js"
# The major version the page is written for (converse.min.js, a global converse.initialize).
NPM_VERSION = "14"
CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".html": "text/html; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".gif": "image/gif",
    ".ico": "image/vnd.microsoft.icon",
    ".webp": "image/webp",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".eot": "application/vnd.ms-fontobject",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".wasm": "application/wasm",
}
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")
_COMMON = [("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer")]


def _script_json(value):
    """JSON that cannot end a <script> element."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def client_installed(folder):
    """Whether ``folder`` (``web_client_dir``) holds Converse.js."""
    return os.path.isfile(os.path.join(folder, "converse.min.js"))


class WebClient:
    """Answers every request of the HTTP listener that is neither BOSH nor WebSocket."""

    def __init__(self, server, config):
        self.server = server
        self.config = config
        self.root = os.path.realpath(config.web_client_dir) if config.web_client_dir else ""
        self.default_domain = next(iter(server.config.hosts))
        self.registration = server.config.hosts[self.default_domain].registration
        self._absence_logged = False

    def installed(self):
        return bool(self.root) and client_installed(self.root)

    def handle(self, request, responder):
        if request.method not in ("GET", "HEAD"):
            responder.respond(405, [("Allow", "GET, HEAD, OPTIONS"), ("Content-Type", "text/plain; charset=utf-8")],
                              b"method not allowed\n")
        elif request.path == "/":
            self._page(request, responder)
        elif request.path.startswith(PREFIX):
            self._file(request, responder)
        else:
            responder.respond(404, [("Content-Type", "text/plain; charset=utf-8")], b"not found\n")

    # -- the page --------------------------------------------------------------

    def urls(self, request):
        """(BOSH URL, WebSocket URL) of this listener as the browser reached it."""
        host = request.headers.get("host", "")
        if not _HOST.match(host):
            # No usable Host header: the address the connection came to.
            address = request.transport.getHost()
            name = str(getattr(address, "host", "localhost"))
            host = f"[{name}]" if ":" in name else name
            host += f":{getattr(address, 'port', 80)}"
        http_scheme, ws_scheme = ("https", "wss") if request.secure else ("http", "ws")
        return (f"{http_scheme}://{host}{self.config.bosh_path}", f"{ws_scheme}://{host}{self.config.websocket_path}")

    def _page(self, request, responder):
        bosh_url, websocket_url = self.urls(request)
        if self.installed():
            settings = {
                "assets_path": PREFIX,
                "bosh_service_url": bosh_url,
                "websocket_url": websocket_url,
                "view_mode": "fullscreen",
                "default_domain": self.default_domain,
                "discover_connection_methods": False,
                "allow_registration": self.registration,
            }
            body = PAGE.format(title=html.escape(self.default_domain), prefix=PREFIX, settings=_script_json(settings))
        else:
            self._log_absence()
            body = MISSING.format(title=html.escape(self.default_domain), bosh=html.escape(bosh_url),
                                  websocket=html.escape(websocket_url))
        headers = [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-cache")] + _COMMON
        responder.respond(200, headers, body.encode("utf-8"))

    def _log_absence(self):
        """Tell the administrator, once, where Converse.js was looked for and how to install it."""
        if self._absence_logged:
            return
        self._absence_logged = True
        log.warn("the web client is not installed: {folder} has no converse.min.js; install it with: {command}",
                 folder=self.config.web_client_dir, command=self.install_command())

    def install_command(self):
        """The npm command that fills ``web_client_dir`` (relative to the working directory when inside it)."""
        folder = self.config.web_client_dir
        suffix = os.path.join("node_modules", NPM_PACKAGE, "dist")
        if folder.rstrip(os.sep).endswith(suffix):
            prefix = folder.rstrip(os.sep)[: -len(suffix)].rstrip(os.sep) or "."
            if os.path.isabs(prefix):
                relative = os.path.relpath(prefix)
                prefix = prefix if relative.startswith("..") else relative
        else:
            prefix = "web"
        return f"npm install --prefix {prefix} --no-audit --no-fund {NPM_PACKAGE}@{NPM_VERSION}"

    # -- Converse.js's files ------------------------------------------------------

    def _file(self, request, responder):
        path = self._resolve(request.path[len(PREFIX):])
        if path is None:
            responder.respond(404, [("Content-Type", "text/plain; charset=utf-8")], b"not found\n")
            return
        status = os.stat(path)
        etag = f'"{status.st_mtime_ns:x}-{status.st_size:x}"'
        headers = [("ETag", etag), ("Cache-Control", "no-cache")] + _COMMON
        if etag in [tag.strip() for tag in request.headers.get("if-none-match", "").split(",")]:
            responder.respond(304, headers, b"")
            return
        extension = posixpath.splitext(path)[1].lower()
        content_type = CONTENT_TYPES.get(extension, "application/octet-stream")
        try:
            with open(path, "rb") as handle:
                body = handle.read()
        except OSError:
            responder.respond(404, [("Content-Type", "text/plain; charset=utf-8")], b"not found\n")
            return
        responder.respond(200, [("Content-Type", content_type)] + headers, body)

    def _resolve(self, relative):
        """The file under the root that ``relative`` (still percent-encoded) names, or None."""
        if not self.root:
            return None
        try:
            name = unquote(relative, errors="strict")
        except UnicodeDecodeError:
            return None
        segments = name.split("/")
        if any(segment in ("", ".", "..") or "\\" in segment or "\0" in segment for segment in segments):
            return None
        candidate = os.path.realpath(os.path.join(self.root, *segments))
        if not candidate.startswith(self.root + os.sep) or not os.path.isfile(candidate):
            return None
        return candidate


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Chat on {title}</title>
<link rel="icon" href="{prefix}images/favicon.ico">
<link rel="stylesheet" href="{prefix}converse.min.css">
<script type="module" src="{prefix}converse.min.js"></script>
</head>
<body class="converse-fullscreen">
<noscript>This chat needs JavaScript.</noscript>
<script type="module">
converse.initialize({settings});
</script>
</body>
</html>
"""

MISSING = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Chat on {title}: the web client is not installed</title>
</head>
<body>
<h1>The web client is not installed</h1>
<p>This page runs <a href="https://conversejs.org/">Converse.js</a>, which is not installed
on this server.  Its administrator finds the command that installs it in the server's log.</p>
<p>Meanwhile any XMPP client can connect here over
BOSH (<code>{bosh}</code>) or WebSocket (<code>{websocket}</code>).</p>
</body>
</html>
"""
