"""Reading a Prosody data folder (its ``internal`` storage) as a XEP-0227 document, for ``bridgectl import-prosody``.

Prosody keeps each store of each user in a file of Lua source:
``DIR/<host>/<store>/<user>.dat`` holds ``return { ... };`` and the archive
stores (offline messages) ``DIR/<host>/<store>/<user>.list`` hold one
``item({ ... });`` per message.  Host and user names are encoded: every byte
that is not a letter or a digit is written ``%xx``.

The files are read by ``parse_lua``, a strict parser of the Lua subset that
Prosody's serializer writes (tables, strings, numbers, booleans); nothing is
ever run as Lua, and anything outside the subset is an error that names the
file and the place.  The stores read, and what they become:
- ``accounts``: the SCRAM keys Prosody keeps with ``internal_hashed`` (its
  default: ``stored_key``, ``server_key`` in hex, ``salt``,
  ``iteration_count``; SCRAM-SHA-1, or SCRAM-SHA-256 with 32-byte keys), or
  with ``internal_plain`` the password, from which SCRAM keys are derived;
- ``roster``: items, groups, pending requests both ways;
- ``vcard``: the vCard (mod_vcard);
- ``private``: private XML (mod_private);
- ``offline``: offline messages (mod_offline), with their delay stamps.
Everything becomes a ``<server-data/>`` element that ``bridge.core.backup``
imports with its checks.
"""

import os
import re

from twisted.words.xish import domish

from bridge.core import sasl
from bridge.core.backup import NS_CLIENT, NS_PIE, NS_PRIVATE, NS_ROSTER, NS_SCRAM, NS_VCARD, make_scram_record
from bridge.core.sasl import SCRAM_HASHES

NS_DELAY = "urn:xmpp:delay"
# The largest Prosody file read, and the deepest nesting of tables in it.
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_DEPTH = 64


class LuaError(ValueError):
    """Text that is not in the subset of Lua that Prosody writes; says where."""


_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92, '"': 34, "'": 39, "\n": 10}
_NUMBER = re.compile(r"-?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SPECIAL = {"(1/0)": float("inf"), "(-1/0)": float("-inf"), "(0/0)": float("nan")}


class _Reader:
    def __init__(self, text):
        self.text = text
        self.at = 0

    def fail(self, what):
        line = self.text.count("\n", 0, self.at) + 1
        raise LuaError(f"line {line}: {what}")

    def skip(self):
        """Past white space and comments (``--`` to the end of the line)."""
        text = self.text
        while self.at < len(text):
            if text[self.at] in " \t\r\n":
                self.at += 1
            elif text.startswith("--", self.at):
                end = text.find("\n", self.at)
                self.at = len(text) if end < 0 else end + 1
            else:
                return

    def expect(self, word):
        self.skip()
        if not self.text.startswith(word, self.at):
            self.fail(f"expected {word!r}")
        self.at += len(word)

    def peek(self, word):
        self.skip()
        return self.text.startswith(word, self.at)

    def value(self, depth=0):
        self.skip()
        text, at = self.text, self.at
        if at >= len(text):
            self.fail("unexpected end of file")
        char = text[at]
        if char == "{":
            if depth >= MAX_DEPTH:
                self.fail(f"tables nested deeper than {MAX_DEPTH}")
            return self.table(depth + 1)
        if char in "\"'":
            return self.string(char)
        for word, number in _SPECIAL.items():
            if text.startswith(word, at):
                self.at += len(word)
                return number
        for word, literal in (("true", True), ("false", False), ("nil", None)):
            if text.startswith(word, at) and not _NAME.match(text, at + len(word)):
                self.at += len(word)
                return literal
        match = _NUMBER.match(text, at)
        if match:
            self.at = match.end()
            token = match.group()
            if "x" in token or "X" in token:
                return int(token, 16)
            return float(token) if any(c in token for c in ".eE") else int(token)
        self.fail(f"unexpected {char!r}")

    def string(self, quote):
        """A quoted string; its bytes (escapes decoded) as UTF-8 text, undecodable bytes kept as surrogates."""
        text = self.text
        self.at += 1
        out = bytearray()
        while True:
            if self.at >= len(text):
                self.fail("unfinished string")
            char = text[self.at]
            if char == quote:
                self.at += 1
                return out.decode("utf-8", "surrogateescape")
            if char == "\n":
                self.fail("a line break in a string")
            if char != "\\":
                out += char.encode("utf-8", "surrogateescape")
                self.at += 1
                continue
            self.at += 1
            escape = text[self.at:self.at + 1]
            if escape in _ESCAPES:
                out.append(_ESCAPES[escape])
                self.at += 1
            elif escape.isdigit():
                digits = re.match(r"\d{1,3}", text[self.at:]).group()
                if int(digits) > 255:
                    self.fail(f"escape \\{digits} is not a byte")
                out.append(int(digits))
                self.at += len(digits)
            elif escape == "x" and re.match(r"[0-9a-fA-F]{2}", text[self.at + 1:self.at + 3]):
                out.append(int(text[self.at + 1:self.at + 3], 16))
                self.at += 3
            elif escape == "z":
                self.at += 1
                while self.at < len(text) and text[self.at] in " \t\r\n":
                    self.at += 1
            else:
                self.fail(f"unknown escape \\{escape}")

    def table(self, depth):
        """A table constructor: a dict, whose positional values are keyed 1, 2, ... as in Lua."""
        self.at += 1
        table, position = {}, 1
        while True:
            self.skip()
            if self.peek("}"):
                self.at += 1
                return table
            if self.peek("["):
                self.at += 1
                key = self.value(depth)
                if key is None or not isinstance(key, (str, int, float, bool)):
                    self.fail("a table key must be a string, a number or a boolean")
                self.expect("]")
                self.expect("=")
                table[key] = self.value(depth)
            else:
                self.skip()
                name = _NAME.match(self.text, self.at)
                after = self.text[name.end():].lstrip(" \t\r\n") if name else ""
                if name and after.startswith("=") and not after.startswith("=="):
                    self.at = name.end()
                    self.expect("=")
                    table[name.group()] = self.value(depth)
                else:
                    table[position] = self.value(depth)
                    position += 1
            self.skip()
            if self.peek(";") or self.peek(","):
                self.at += 1
            elif not self.peek("}"):
                self.fail("expected ';', ',' or '}' in a table")


def parse_lua(text, list_file=False):
    """The value of a Prosody ``.dat`` file (``return VALUE``), or with ``list_file`` the values of a
    ``.list`` file (``item(VALUE);`` repeated); LuaError for anything else."""
    reader = _Reader(text)
    if not list_file:
        reader.expect("return")
        value = reader.value()
        if reader.peek(";"):
            reader.at += 1
        reader.skip()
        if reader.at != len(text):
            reader.fail("text after the value")
        return value
    values = []
    while True:
        reader.skip()
        if reader.at == len(text):
            return values
        reader.expect("item")
        reader.expect("(")
        values.append(reader.value())
        reader.expect(")")
        if reader.peek(";"):
            reader.at += 1


def decode_name(name):
    """A file or folder name of Prosody's datamanager (``%xx`` for every byte not a letter or digit)."""
    try:
        data = re.sub(rb"%([0-9a-fA-F]{2})", lambda match: bytes([int(match.group(1), 16)]), name.encode("ascii"))
        return data.decode("utf-8")
    except (UnicodeError, ValueError):
        raise LuaError(f"{name!r} is not a name Prosody wrote")


def stanza_element(table, default_uri=None):
    """The XML element of a stanza as Prosody serializes it: name, attr (xmlns among them), children in order."""
    if not isinstance(table, dict) or not isinstance(table.get("name"), str):
        raise LuaError("a stanza table without a name")
    attributes = table.get("attr") or {}
    if not isinstance(attributes, dict):
        raise LuaError(f"<{table['name']}/>: attr is not a table")
    uri = attributes.get("xmlns", default_uri)
    element = domish.Element((uri, table["name"]))
    for key, value in attributes.items():
        if key != "xmlns" and isinstance(key, str) and isinstance(value, str):
            element[key] = value
    position = 1
    while position in table:
        child = table[position]
        if isinstance(child, str):
            element.addContent(child)
        else:
            element.addChild(stanza_element(child, uri))
        position += 1
    return element


def credentials_elements(account):
    """The <scram-credentials/> of a Prosody account record."""
    if isinstance(account.get("password"), str):
        records = sasl.make_credentials(account["password"])
    else:
        try:
            stored, server = bytes.fromhex(account["stored_key"]), bytes.fromhex(account["server_key"])
            salt = account["salt"].encode("utf-8", "surrogateescape")
            iterations = int(account["iteration_count"])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise LuaError("an account with neither a password nor stored_key, server_key, salt and "
                           "iteration_count")
        mechanism = {20: "SCRAM-SHA-1", 32: "SCRAM-SHA-256"}.get(len(stored))
        if mechanism is None:
            raise LuaError(f"stored_key of {len(stored)} bytes: neither SHA-1 nor SHA-256")
        records = {mechanism: make_scram_record(salt, iterations, stored, server)}
    elements = []
    for mechanism in SCRAM_HASHES:
        if mechanism in records:
            record = records[mechanism]
            scram = domish.Element((NS_SCRAM, "scram-credentials"))
            scram["mechanism"] = mechanism
            scram.addElement("iter-count", content=str(record["iterations"]))
            scram.addElement("salt", content=record["salt"])
            scram.addElement("server-key", content=record["server_key"])
            scram.addElement("stored-key", content=record["stored_key"])
            elements.append(scram)
    return elements


def roster_elements(roster, owner):
    """The jabber:iq:roster <query/> and the pending inbound requests of a Prosody roster."""
    query = domish.Element((NS_ROSTER, "query"))
    requests = []
    meta = roster.get(False) or {}
    for jid, item in sorted((key, value) for key, value in roster.items() if isinstance(key, str)):
        if not isinstance(item, dict):
            raise LuaError(f"roster item {jid!r} is not a table")
        element = query.addElement("item")
        element["jid"] = jid
        element["subscription"] = item.get("subscription") or "none"
        if isinstance(item.get("name"), str) and item["name"]:
            element["name"] = item["name"]
        if item.get("ask") == "subscribe":
            element["ask"] = "subscribe"
        if item.get("approved"):
            element["approved"] = "true"
        for group in sorted(name for name in (item.get("groups") or {}) if isinstance(name, str)):
            element.addElement("group", content=group)
    for jid in sorted(key for key in (meta.get("pending") or {}) if isinstance(key, str)):
        request = domish.Element((NS_CLIENT, "presence"))
        request["from"], request["to"], request["type"] = jid, owner, "subscribe"
        requests.append(request)
    return query, requests


def offline_message(entry, host):
    """A message of Prosody's offline archive, with its stamp as a XEP-0203 delay."""
    message = stanza_element(entry, NS_CLIENT)
    stamp = message.attributes.pop("stamp", None)
    message.attributes.pop("stamp_legacy", None)
    if stamp:
        delay = message.addElement((NS_DELAY, "delay"))
        delay["from"], delay["stamp"] = host, stamp
    return message


def read_file(path, list_file=False):
    """The parsed content of one file (None when it does not exist); LuaError names the file."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(data) > MAX_FILE_BYTES:
        raise LuaError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
    try:
        return parse_lua(data.decode("utf-8", "surrogateescape"), list_file)
    except LuaError as error:
        raise LuaError(f"{path}: {error}")


def user_element(folder, host, encoded_user):
    """The <user/> of one Prosody account, from the stores under ``folder`` (the host's)."""
    user = decode_name(encoded_user)
    element = domish.Element((NS_PIE, "user"))
    element["name"] = user
    account = read_file(os.path.join(folder, "accounts", encoded_user + ".dat"))
    if not isinstance(account, dict):
        raise LuaError(f"{user}@{host}: the account record is not a table")
    for scram in credentials_elements(account):
        element.addChild(scram)
    roster = read_file(os.path.join(folder, "roster", encoded_user + ".dat"))
    if isinstance(roster, dict):
        query, requests = roster_elements(roster, f"{user}@{host}")
        element.addChild(query)
        for request in requests:
            element.addChild(request)
    vcard = read_file(os.path.join(folder, "vcard", encoded_user + ".dat"))
    if vcard:
        element.addChild(stanza_element(vcard, NS_VCARD))
    private = read_file(os.path.join(folder, "private", encoded_user + ".dat"))
    if isinstance(private, dict) and private:
        query = element.addElement((NS_PRIVATE, "query"))
        for key in sorted(key for key in private if isinstance(key, str)):
            query.addChild(stanza_element(private[key]))
    offline = read_file(os.path.join(folder, "offline", encoded_user + ".list"), list_file=True)
    if offline:
        messages = element.addElement((NS_PIE, "offline-messages"))
        for entry in offline:
            messages.addChild(offline_message(entry, host))
    return element


def read_data_folder(path):
    """The <server-data/> of a Prosody data folder, and the (JID, reason) of the accounts not read."""
    root = domish.Element((NS_PIE, "server-data"))
    unreadable = []
    try:
        names = sorted(os.listdir(path))
    except OSError as error:
        raise LuaError(f"{path}: {error.strerror}")
    for encoded_host in names:
        accounts = os.path.join(path, encoded_host, "accounts")
        if not os.path.isdir(accounts):
            continue
        host = decode_name(encoded_host)
        host_element = root.addElement("host")
        host_element["jid"] = host
        for file_name in sorted(os.listdir(accounts)):
            if not file_name.endswith(".dat"):
                continue
            try:
                host_element.addChild(user_element(os.path.join(path, encoded_host), host, file_name[:-4]))
            except LuaError as error:
                unreadable.append((f"{file_name[:-4]}@{host}", str(error)))
    return root, unreadable
