"""HTTP File Upload (XEP-0363): ``upload.<host>`` hands out slots on bridge's own HTTP listener.

A local user asks for a slot (name, size, type); the answer is a PUT URL
signed with a key derived from the server's secret (HMAC over the path, the
size, the content type, the expiry and the owner), and a GET URL whose random
token nobody can guess.  Slots are not stored: the signature is the slot.

Files live flat under ``data_dir/upload``: ``<token>`` (the bytes) and
``<token>.json`` (owner, size, type, creation time).  The client's file name
is only part of the URL, never of a path on disk, and a token is checked
against ``TOKEN`` before it names a file.  A PUT streams into
``<token>.part`` and is renamed when complete; a GET (whole or a range) is
sent from the file as the client reads it (``FileBody``), never held whole.

Limits (``[upload]``): a maximum file size, a quota per user (counted on
disk plus uploads in progress), expiry after some days.  An account's files
go with the account.
"""

import hashlib
import hmac
import json
import os
import re
import secrets
from urllib.parse import parse_qs, quote

from twisted.logger import Logger
from twisted.words.xish import domish

from bridge.core.server import looping_call
from bridge.core.stanza import error_reply, result_reply, simple_form
from bridge.gateways.http import FileBody, text_body

log = Logger()

NS_UPLOAD = "urn:xmpp:http:upload:0"
PREFIX = "/upload/"
FOLDER = "upload"
TOKEN = re.compile(r"^[A-Za-z0-9_-]{22,64}$")
# type/subtype with optional parameters of plain characters (it is echoed in a header).
CONTENT_TYPE = re.compile(r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(?: *; *[A-Za-z0-9_.+-]+=[A-Za-z0-9_.+\"-]+)*$")
DEFAULT_TYPE = "application/octet-stream"
MAX_FILENAME_CHARS = 255
EXPIRY_INTERVAL_SECONDS = 3600
_CORS = [("Access-Control-Allow-Origin", "*"), ("Access-Control-Allow-Methods", "GET, HEAD, PUT, OPTIONS"),
         ("Access-Control-Allow-Headers", "Content-Type")]
_GET_HEADERS = [("X-Content-Type-Options", "nosniff"), ("Content-Security-Policy", "default-src 'none'; sandbox"),
                ("Access-Control-Allow-Origin", "*")]


def attach(ctx, reactor, tls_context):
    """The service of ``ctx.config`` (the [upload] section), or None when it is off."""
    if not ctx.config.enabled:
        return None
    return UploadService(ctx, ctx.section("data_dir"))


def valid_filename(name):
    """Whether a slot may carry ``name``: no separators, no control characters, not "." or ".."."""
    return (0 < len(name) <= MAX_FILENAME_CHARS and name not in (".", "..")
            and not any(char in "/\\" or ord(char) < 32 or ord(char) == 127 for char in name))


def signature(key, path, size, content_type, expires, owner):
    """The hex HMAC-SHA256 that makes a PUT URL valid."""
    message = "\n".join((path, str(size), content_type, str(expires), owner)).encode("utf-8")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def split_path(path):
    """(token, quoted file name) of an upload ``path`` as it came (still percent-encoded), or None."""
    if not path.startswith(PREFIX):
        return None
    parts = path[len(PREFIX):].split("/")
    if len(parts) != 2 or not TOKEN.match(parts[0]) or not parts[1]:
        return None
    return parts[0], parts[1]


def parse_range(header, size):
    """The (first, last) byte of a Range header (one range) for a file of ``size`` bytes.

    None: no usable range (the whole file is served); "unsatisfiable": 416.
    """
    if header is None:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or last.isdigit()) or (first and not first.isdigit()) or (
            last and not last.isdigit()):
        return None
    if not first:  # the final ``last`` bytes
        length = int(last)
        if length == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - length), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, end


class UploadService:
    """The slots (XMPP side) and the files (HTTP side) of every ``upload.<host>``."""

    def __init__(self, ctx, data_dir):
        self.ctx = ctx
        self.config = ctx.config
        self.clock = ctx.clock
        self.folder = os.path.join(data_dir, FOLDER)
        self.key = ctx.derive_key("upload put-url")
        self.usage = {}  # owner -> bytes on disk
        self.uploading = {}  # token -> (owner, size) of a PUT in progress
        self._expiry = None
        for host in ctx.host_names():
            ctx.serve(f"{self.config.subdomain}.{host}".lower(), ("store", "file", "HTTP File Upload"),
                      listed_on=host)
        ctx.add_feature(NS_UPLOAD)
        ctx.add_form(self._limits_form())
        ctx.hook(f"iq-get/host/{NS_UPLOAD}:request", self.on_request)
        ctx.hook_local("account/deleted", self.forget_account)
        ctx.serve_http(PREFIX, self)

    def _limits_form(self):
        return simple_form("result", NS_UPLOAD, (("max-file-size", str(self.config.max_file_bytes)),))

    # -- lifetime (the Gateway shape of tap.py) -------------------------------------

    def listeners(self):
        return []

    def start(self):
        os.makedirs(self.folder, mode=0o700, exist_ok=True)
        for token, meta in self._stored():
            self.usage[meta["owner"]] = self.usage.get(meta["owner"], 0) + meta["size"]
        if self.config.expire_after_days:
            self.expire()
            self._expiry = looping_call(self.clock, EXPIRY_INTERVAL_SECONDS, self.expire)

    def stop(self):
        if self._expiry is not None and self._expiry.running:
            self._expiry.stop()

    # -- files on disk --------------------------------------------------------------

    def _path(self, token, suffix=""):
        return os.path.join(self.folder, token + suffix)

    def _meta(self, token):
        try:
            with open(self._path(token, ".json"), encoding="utf-8") as file:
                return json.load(file)
        except (OSError, ValueError):
            return None

    def _stored(self):
        """(token, metadata) of every complete file."""
        try:
            names = os.listdir(self.folder)
        except OSError:
            return
        for name in names:
            token, dot, suffix = name.partition(".")
            if suffix == "part" and token not in self.uploading:
                os.unlink(self._path(name))  # a PUT cut off by a stop
            elif suffix == "json" and TOKEN.match(token):
                meta = self._meta(token)
                if meta is not None:
                    yield token, meta

    def _remove(self, token, meta):
        for suffix in ("", ".json"):
            try:
                os.unlink(self._path(token, suffix))
            except FileNotFoundError:
                pass
        self.usage[meta["owner"]] = max(0, self.usage.get(meta["owner"], 0) - meta["size"])

    def expire(self):
        """Delete the files older than ``expire_after_days``."""
        oldest = self.clock.seconds() - self.config.expire_after_days * 86400
        for token, meta in list(self._stored()):
            if meta["created"] < oldest:
                self._remove(token, meta)

    def forget_account(self, event):
        """``account/deleted``: the account's files go with it."""
        owner = event.lower()
        for token, meta in list(self._stored()):
            if meta["owner"] == owner:
                self._remove(token, meta)
        self.usage.pop(owner, None)
        return False

    def used(self, owner):
        return self.usage.get(owner, 0) + sum(size for who, size in self.uploading.values() if who == owner)

    # -- slots (XEP-0363 section 4) ---------------------------------------------------

    def on_request(self, event):
        stanza = event.stanza
        request = next(stanza.elements(NS_UPLOAD, "request"), None)
        sender = event.sender
        if sender is None or sender.user is None or self.ctx.local_host(sender.host) is None:
            event.reply(error_reply(stanza, "not-allowed", "only local users may upload here"))
            return True
        owner = sender.userhost().lower()
        filename = request.getAttribute("filename", "")
        size = request.getAttribute("size", "")
        content_type = request.getAttribute("content-type") or DEFAULT_TYPE
        if not valid_filename(filename):
            event.reply(error_reply(stanza, "not-acceptable", "the file name is missing or not acceptable"))
            return True
        if not size.isdigit() or int(size) == 0:
            event.reply(error_reply(stanza, "not-acceptable", "the size must be a positive number of bytes"))
            return True
        if not CONTENT_TYPE.match(content_type) or len(content_type) > 255:
            event.reply(error_reply(stanza, "not-acceptable", "the content type is not acceptable"))
            return True
        size = int(size)
        limit = self.config.max_file_bytes
        if size > limit:
            too_large = domish.Element((NS_UPLOAD, "file-too-large"))
            too_large.addElement("max-file-size", content=str(limit))
            event.reply(error_reply(stanza, "not-acceptable",
                                    f"File too large. The maximum file size is {limit} bytes", extra=too_large))
            return True
        if self.used(owner) + size > self.config.quota_bytes_per_user:
            event.reply(error_reply(stanza, "resource-constraint",
                                    f"your uploads would exceed your quota of {self.config.quota_bytes_per_user} "
                                    "bytes"))
            return True
        base = self.base_url(event.to.host)
        if base is None:
            event.reply(error_reply(stanza, "service-unavailable", "the HTTP listener is not listening"))
            return True
        path = f"{PREFIX}{secrets.token_urlsafe(24)}/{quote(filename, safe='')}"
        expires = int(self.clock.seconds()) + self.config.slot_lifetime_seconds
        signed = signature(self.key, path, size, content_type, expires, owner)
        reply = result_reply(stanza)
        slot = reply.addElement((NS_UPLOAD, "slot"))
        query = f"size={size}&expires={expires}&owner={quote(owner, safe='@')}&sig={signed}"
        slot.addElement("put")["url"] = f"{base}{path}?{query}"
        slot.addElement("get")["url"] = base + path
        event.reply(reply)
        return True

    def base_url(self, domain):
        """The scheme://host:port of the URLs (``public_url``, else the listener's, by the local host's name)."""
        if self.config.public_url:
            return self.config.public_url
        host = domain.partition(".")[2]
        listening = [(secure, port) for secure, port in self.ctx.http_listeners() if port is not None]
        for secure, port in sorted(listening, key=lambda entry: not entry[0]):
            return f"{'https' if secure else 'http'}://{host}:{port.getHost().port}"
        return None

    # -- HTTP (called by bridge.gateways.http) ------------------------------------------

    def open_body(self, method, path, query, headers):
        """A PUT's body: a ``FileSink`` where it goes, or (status, text) to refuse it before it is read."""
        if method != "PUT":
            return None
        parts = split_path(path)
        if parts is None:
            return 404, "not found"
        token = parts[0]
        fields = {name: values[0] for name, values in parse_qs(query).items()}
        size, expires, owner = fields.get("size", ""), fields.get("expires", ""), fields.get("owner", "")
        content_type = headers.get("content-type") or DEFAULT_TYPE
        expected = signature(self.key, path, size, content_type, expires, owner)
        if not hmac.compare_digest(expected, fields.get("sig", "")):
            return 403, "the URL's signature does not match this upload (its path or type)"
        size = int(size)
        length = headers.get("content-length")
        if length is not None and int(length) > size:
            return 413, f"the slot is for {size} bytes"
        if length is not None and int(length) < size:
            return 400, f"the slot is for {size} bytes"
        if not expires.isdigit() or int(expires) < self.clock.seconds():
            return 403, "the upload slot has expired"
        if token in self.uploading or os.path.exists(self._path(token, ".json")):
            return 409, "this slot was used already"
        if self.used(owner) + size > self.config.quota_bytes_per_user:
            return 413, "the upload would exceed the quota"
        self.uploading[token] = (owner, size)
        return FileSink(self, token, owner, size, content_type)

    def handle(self, request, responder):
        if request.method == "OPTIONS":
            responder.respond(204, _CORS, b"")
        elif request.method == "PUT":
            request.body.answer(responder)
        elif request.method in ("GET", "HEAD"):
            self._get(request, responder)
        else:
            responder.respond(405, [("Allow", "GET, HEAD, PUT, OPTIONS")] + text_body("method not allowed")[0],
                              b"method not allowed\n")

    def _get(self, request, responder):
        parts = split_path(request.path)
        meta = self._meta(parts[0]) if parts is not None else None
        if meta is None or meta.get("name") != parts[1]:
            responder.respond(404, *text_body("not found"))
            return
        size = meta["size"]
        wanted = parse_range(request.headers.get("range"), size)
        headers = [("Content-Type", meta["type"]), ("Accept-Ranges", "bytes")] + _GET_HEADERS
        if wanted == "unsatisfiable":
            responder.respond(416, [("Content-Range", f"bytes */{size}")] + text_body("range not satisfiable")[0],
                              b"range not satisfiable\n")
            return
        first, last = wanted if wanted is not None else (0, size - 1)
        try:
            body = FileBody(open(self._path(parts[0]), "rb"), first, last - first + 1)
        except FileNotFoundError:  # expired or deleted since its metadata was read
            responder.respond(404, *text_body("not found"))
            return
        if wanted is None:
            responder.respond(200, headers, body)
        else:
            responder.respond(206, headers + [("Content-Range", f"bytes {first}-{last}/{size}")], body)


class FileSink:
    """Where a PUT's body goes, chunk by chunk: a ``.part`` file renamed when it is complete."""

    def __init__(self, service, token, owner, size, content_type):
        self.service = service
        self.token = token
        self.owner = owner
        self.limit = size  # the body may not be longer than the slot said
        self.content_type = content_type
        self.received = 0
        self.file = open(service._path(token, ".part"), "wb")

    def write(self, data):
        self.received += len(data)
        self.file.write(data)

    def abort(self):
        """The body will not complete (too long, or the connection went): nothing is kept."""
        if self.file is not None:
            self.file.close()
            self.file = None
            os.unlink(self.service._path(self.token, ".part"))
        self.service.uploading.pop(self.token, None)

    def answer(self, responder):
        """The body is complete: keep the file, or say why not."""
        if self.received != self.limit:
            self.abort()
            responder.respond(400, *text_body(f"the body has {self.received} bytes, the slot {self.limit}"))
            return
        service = self.service
        self.file.close()
        self.file = None
        name = split_path(responder.request.path)[1]
        meta = {"owner": self.owner, "size": self.limit, "type": self.content_type, "name": name,
                "created": service.clock.seconds()}
        os.replace(service._path(self.token, ".part"), service._path(self.token))
        with open(service._path(self.token, ".json"), "w", encoding="utf-8") as file:
            json.dump(meta, file)
        service.uploading.pop(self.token, None)
        service.usage[self.owner] = service.usage.get(self.owner, 0) + self.limit
        responder.respond(201, _CORS, b"")
