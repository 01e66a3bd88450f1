"""Backup and restore of accounts as XEP-0227 files (Portable Import/Export Format, ``urn:xmpp:pie:0``).

What a user element carries, from the stores of the same name:
- the account: its SCRAM records as ``<scram-credentials/>`` (XEP-0227 1.1),
  never a password; the SIP digest secrets (HA1) and the disabled mark in
  elements of bridge's own namespace (``NS_BRIDGE``), which other servers
  skip;
- the roster (``jabber:iq:roster``), and the subscription requests waiting
  for an answer as ``<presence type='subscribe'/>``;
- the vCard (``vcard-temp``), private XML (``jabber:iq:private``), the
  offline messages (``<offline-messages/>``, oldest first) and the privacy
  and block lists (``jabber:iq:privacy``; the block list is the default
  privacy list, ``core/privacy.py``).

``export_hosts`` reads storage and builds the document; ``import_document``
writes what a document holds.  Neither touches files: ``bridgectl`` does.
Everything read from a file is checked as the server checks what a client
sends (JIDs, privacy rules, SCRAM records), and a user who is not valid is
refused with the reason, not half written.
"""

import base64
import binascii
import hashlib
import os

from twisted.internet import defer
from twisted.words.xish import domish

from bridge.core import privacy
from bridge.core.accounts import DIGEST, DIGEST_HASHES, DISABLED, STORE as ACCOUNTS
from bridge.core.accounts import AccountError, check_new_name
from bridge.core.roster import STORE as ROSTER, Roster, RosterItem
from bridge.core.sasl import SCRAM_HASHES
from bridge.core.stanza import parse_jid
from bridge.core.xmlstream import NS_STREAMS, parse_document, serialize
from bridge.features.vcard import photo_hash

NS_PIE = "urn:xmpp:pie:0"
NS_SCRAM = "urn:xmpp:pie:0#scram"
NS_BRIDGE = "urn:bridge:pie:0"
NS_ROSTER = "jabber:iq:roster"
NS_PRIVATE = "jabber:iq:private"
NS_VCARD = "vcard-temp"
NS_CLIENT = "jabber:client"
NS_XINCLUDE = "http://www.w3.org/2001/XInclude"
# The stores of the features whose data is carried (their names in storage).
VCARD, PRIVATE, OFFLINE, BLOCKLIST = "vcard", "private", "offline", "blocklist"
# The largest file read by an import.
MAX_IMPORT_BYTES = 1024 * 1024 * 1024
# How deep included files may include others (XEP-0227 splits a server into hosts, a host into users).
MAX_INCLUDE_DEPTH = 3
# The highest SCRAM iteration count accepted from a file (a login costs that many HMACs).
MAX_ITERATIONS = 1000000


class BackupError(ValueError):
    """A file, host or user that cannot be imported; the text says why."""


@defer.inlineCallbacks
def export_user(storage, host, user):
    """Deferred: the <user/> element of ``user@host`` (None when the account has no record)."""
    records = yield storage.get(host, user, ACCOUNTS)
    if records is None:
        return None
    element = domish.Element((NS_PIE, "user"))
    element["name"] = user
    for mechanism in SCRAM_HASHES:
        record = records.get(mechanism)
        if record is None:
            continue
        scram = element.addElement((NS_SCRAM, "scram-credentials"))
        scram["mechanism"] = mechanism
        scram.addElement("iter-count", content=str(record["iterations"]))
        scram.addElement("salt", content=record["salt"])
        scram.addElement("server-key", content=record["server_key"])
        scram.addElement("stored-key", content=record["stored_key"])
    for realm, secrets in records.get(DIGEST, {}).items():
        for algorithm, ha1 in secrets.items():
            digest = element.addElement((NS_BRIDGE, "sip-digest"), content=ha1)
            digest["realm"], digest["algorithm"] = realm, algorithm
    if DISABLED in records:
        element.addElement((NS_BRIDGE, "disabled"), content=records[DISABLED] or "")
    roster = yield storage.get(host, user, ROSTER)
    if roster:
        query = element.addElement((NS_ROSTER, "query"))
        for jid, data in sorted(roster["items"].items()):
            item = RosterItem.from_json(jid, data)
            if not item.hidden:
                query.addChild(item.to_element())
            if item.pending_in is not None:
                request = element.addElement((NS_CLIENT, "presence"))
                request["from"], request["to"], request["type"] = jid, f"{user}@{host}", "subscribe"
                if item.pending_in.get("status"):
                    request.addElement("status", content=item.pending_in["status"])
    vcard = yield storage.get(host, user, VCARD)
    if vcard:
        element.addChild(_parse(vcard["xml"]))
    fragments = yield storage.get(host, user, PRIVATE)
    if fragments:
        query = element.addElement((NS_PRIVATE, "query"))
        for key in sorted(fragments):
            query.addChild(_parse(fragments[key]))
    messages = yield storage.items(host, user, OFFLINE)
    if messages:
        offline = element.addElement((NS_PIE, "offline-messages"))
        for _, text in messages:
            offline.addChild(_parse(text))
    lists = privacy.PrivacyLists.from_json((yield storage.get(host, user, BLOCKLIST)))
    if lists.lists:
        query = element.addElement((privacy.NS_PRIVACY, "query"))
        for name, rules in sorted(lists.lists.items()):
            listed = query.addElement("list")
            listed["name"] = name
            for rule in rules:
                listed.addChild(rule.to_element())
        if lists.default:
            query.addElement("default")["name"] = lists.default
    return element


@defer.inlineCallbacks
def export_hosts(storage, hosts):
    """Deferred: the <server-data/> element with every account of ``hosts``, and how many."""
    root = domish.Element((NS_PIE, "server-data"))
    count = 0
    for host in hosts:
        host_element = root.addElement("host")
        host_element["jid"] = host
        for user in sorted((yield storage.users(host, ACCOUNTS))):
            element = yield export_user(storage, host, user)
            if element is not None:
                host_element.addChild(element)
                count += 1
    return root, count


def _parse(text):
    found, _ = parse_document([f"<s:stream xmlns:s='{NS_STREAMS}'>".encode() + text.encode("utf-8")],
                              len(text.encode("utf-8")) + 1024)
    return found[0]


def _element_of(data):
    """The one element of a file's bytes (after an XML declaration); BackupError when it is not one."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    text = data.lstrip()
    if text.startswith(b"<?xml"):
        end = text.find(b"?>")
        text = text[end + 2:] if end >= 0 else text
    try:
        found, _ = parse_document([f"<s:stream xmlns:s='{NS_STREAMS}'>".encode() + text], len(text) + 1024)
    except Exception as error:
        raise BackupError(f"not a well-formed XML document: {error}")
    if len(found) != 1:
        raise BackupError("not one XML element")
    return found[0]


class _Includes:
    """XEP-0227's XInclude: ``<xi:include href='...'/>`` with a relative path under the main file's folder,
    no ``parse`` and no ``xpointer``, replaced by the element of that file; at most ``MAX_INCLUDE_DEPTH``
    deep and ``MAX_IMPORT_BYTES`` in all."""

    def __init__(self, folder, size):
        self.folder = os.path.realpath(folder) if folder else None
        self.total = size

    def resolve(self, element, depth=0):
        for index, child in enumerate(element.children):
            if not isinstance(child, domish.Element):
                continue
            if child.uri == NS_XINCLUDE and child.name == "include":
                element.children[index] = self.resolve(self.read(child, depth), depth + 1)
            else:
                self.resolve(child, depth)
        return element

    def read(self, include, depth):
        href = include.getAttribute("href") or ""
        if self.folder is None:
            raise BackupError("an <xi:include/> in a document not read from a file")
        if depth >= MAX_INCLUDE_DEPTH:
            raise BackupError(f"<xi:include/> nested deeper than {MAX_INCLUDE_DEPTH}")
        if include.hasAttribute("parse") or include.hasAttribute("xpointer") or not href or ":" in href:
            raise BackupError(f"<xi:include href={href!r}/>: only a relative path, without parse or xpointer")
        path = os.path.realpath(os.path.join(self.folder, href))
        if os.path.commonpath([path, self.folder]) != self.folder:
            raise BackupError(f"<xi:include href={href!r}/> is outside the folder of the file")
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_IMPORT_BYTES - self.total + 1)
        except OSError as error:
            raise BackupError(f"<xi:include href={href!r}/>: {error.strerror}")
        self.total += len(data)
        if self.total > MAX_IMPORT_BYTES:
            raise BackupError(f"the file and its includes are larger than {MAX_IMPORT_BYTES} bytes")
        try:
            return _element_of(data)
        except BackupError as error:
            raise BackupError(f"{href}: {error}")


def read_document(data, folder=None):
    """The <server-data/> element of a file's bytes, its XIncludes read from ``folder`` (the file's);
    BackupError when it is not one."""
    if len(data) > MAX_IMPORT_BYTES:
        raise BackupError(f"the file is larger than {MAX_IMPORT_BYTES} bytes")
    root = _Includes(folder, len(data)).resolve(_element_of(data))
    if root.uri != NS_PIE or root.name != "server-data":
        raise BackupError(f"the root element is not <server-data xmlns='{NS_PIE}'/>")
    return root


def _b64(text, what):
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise BackupError(f"{what} is not base64")


def scram_record(element):
    """(mechanism, record) of a <scram-credentials/>; BackupError when it is not valid."""
    mechanism = element.getAttribute("mechanism")
    if mechanism not in SCRAM_HASHES:
        raise BackupError(f"unknown SCRAM mechanism {mechanism!r} (known: {', '.join(SCRAM_HASHES)})")
    values = {child.name: str(child).strip() for child in element.elements()}
    count = values.get("iter-count", "")
    if not count.isdigit() or not 1 <= int(count) <= MAX_ITERATIONS:
        raise BackupError(f"{mechanism}: iter-count must be a number from 1 to {MAX_ITERATIONS}")
    size = hashlib.new(SCRAM_HASHES[mechanism]).digest_size
    salt = _b64(values.get("salt", ""), f"{mechanism}: salt")
    if not salt:
        raise BackupError(f"{mechanism}: the salt is empty")
    keys = {}
    for name in ("server-key", "stored-key"):
        key = _b64(values.get(name, ""), f"{mechanism}: {name}")
        if len(key) != size:
            raise BackupError(f"{mechanism}: {name} must be {size} bytes")
        keys[name] = key
    return mechanism, make_scram_record(salt, int(count), keys["stored-key"], keys["server-key"])


def make_scram_record(salt, iterations, stored_key, server_key):
    """A SCRAM record as accounts keep it (``sasl.make_credentials``), from raw bytes."""
    return {"salt": _encode(salt), "iterations": iterations, "stored_key": _encode(stored_key),
            "server_key": _encode(server_key)}


def _encode(data):
    return base64.b64encode(data).decode("ascii")


def user_documents(host, element, max_roster_items):
    """{store: document} for one <user/> element, and its offline messages (serialised, oldest
    first); BackupError names what is not valid."""
    name = element.getAttribute("name") or ""
    jid = parse_jid(f"{name}@{host}")
    if jid is None or jid.user != name:
        raise BackupError(f"{name!r} is not a valid user name")
    check_new_name(name)
    records, roster, offline = {}, {}, []
    documents = {ACCOUNTS: records}
    for child in element.elements():
        if child.uri == NS_SCRAM and child.name == "scram-credentials":
            mechanism, record = scram_record(child)
            records[mechanism] = record
        elif child.uri == NS_BRIDGE and child.name == "sip-digest":
            realm, algorithm, ha1 = child.getAttribute("realm"), child.getAttribute("algorithm"), str(child).strip()
            hashed = DIGEST_HASHES.get(algorithm)
            if hashed is None or len(ha1) != hashed().digest_size * 2 or not realm \
                    or any(c not in "0123456789abcdef" for c in ha1):
                raise BackupError("sip-digest: not an HA1 of MD5 or SHA-256 for a realm")
            records.setdefault(DIGEST, {}).setdefault(realm, {})[algorithm] = ha1
        elif child.uri == NS_BRIDGE and child.name == "disabled":
            records[DISABLED] = str(child)
        elif child.uri == NS_ROSTER and child.name == "query":
            for item in child.elements(NS_ROSTER, "item"):
                contact = parse_jid(item.getAttribute("jid") or "")
                if contact is None or contact.resource is not None:
                    raise BackupError(f"roster: {item.getAttribute('jid')!r} is not a bare JID")
                subscription = item.getAttribute("subscription", "none")
                if subscription not in ("none", "to", "from", "both"):
                    raise BackupError(f"roster: subscription {subscription!r} of {contact.full()}")
                groups = [str(group) for group in item.elements(NS_ROSTER, "group")]
                roster[contact.full()] = RosterItem(contact.full(), item.getAttribute("name"), groups, subscription,
                                                    item.getAttribute("ask") == "subscribe",
                                                    approved=item.getAttribute("approved") in ("true", "1"))
        elif child.uri == NS_CLIENT and child.name == "presence" and child.getAttribute("type") == "subscribe":
            contact = parse_jid(child.getAttribute("from") or "")
            if contact is None:
                raise BackupError(f"a subscription request from {child.getAttribute('from')!r}")
            contact = contact.userhost()
            item = roster.get(contact) or RosterItem(contact, hidden=True)
            roster[contact] = item
            status = next((str(status) for status in child.elements() if status.name == "status"), None)
            item.pending_in = {"status": status, "nick": None}
        elif child.uri == NS_VCARD and child.name == "vCard":
            documents[VCARD] = {"xml": serialize(child), "photo": photo_hash(child)}
        elif child.uri == NS_PRIVATE and child.name == "query":
            fragments = {}
            for fragment in child.elements():
                if not fragment.uri or fragment.uri.startswith("jabber:"):
                    raise BackupError(f"private XML: <{fragment.name}/> needs a namespace of its own")
                fragments[f"{fragment.uri} {fragment.name}"] = serialize(fragment)
            documents[PRIVATE] = fragments
        elif child.uri == NS_PIE and child.name == "offline-messages":
            offline = [serialize(message) for message in child.elements() if message.name == "message"]
        elif child.uri == privacy.NS_PRIVACY and child.name == "query":
            documents[BLOCKLIST] = privacy_document(child, roster)
    if not any(mechanism in records for mechanism in SCRAM_HASHES):
        raise BackupError("no SCRAM credentials (bridge never imports a password)")
    if len(roster) > max_roster_items:
        raise BackupError(f"roster: {len(roster)} items, more than the {max_roster_items} a roster holds")
    if roster:
        documents[ROSTER] = {"version": 1, "items": {jid: item.to_json() for jid, item in roster.items()}}
    return documents, offline


def privacy_document(query, roster):
    """The stored privacy lists of a jabber:iq:privacy <query/>; BackupError for a rule not valid."""
    checked = Roster(items=dict(roster))
    lists, default = {}, None
    for child in query.elements():
        if child.name == "list":
            try:
                lists[child.getAttribute("name") or ""] = privacy.parse_rules(child, checked)
            except ValueError as error:
                raise BackupError(f"privacy list {child.getAttribute('name')!r}: {error.args[-1]}")
        elif child.name == "default":
            default = child.getAttribute("name")
    if default is not None and default not in lists:
        raise BackupError(f"privacy: the default list {default!r} is not in the file")
    return privacy.PrivacyLists(lists, default).to_json()


@defer.inlineCallbacks
def import_document(storage, root, config):
    """Deferred: write the accounts of ``root`` whose host is served here (directly or by an alias).

    An account that exists already is left as it is.  The answer: (imported, skipped, refused) lists of
    (JID, reason); nothing of a refused user is written.
    """
    imported, skipped, refused = [], [], []
    for host_element in root.elements(NS_PIE, "host"):
        name = config.host_for((host_element.getAttribute("jid") or "").lower())
        if name is None or config.hosts[name].ldap:
            for user in host_element.elements(NS_PIE, "user"):
                refused.append((f"{user.getAttribute('name')}@{host_element.getAttribute('jid')}",
                                "not a host of this server with its own accounts"))
            continue
        for element in host_element.elements(NS_PIE, "user"):
            jid = f"{element.getAttribute('name')}@{name}"
            try:
                documents, offline = user_documents(name, element, config.quotas.max_roster_items_per_user)
            except (BackupError, AccountError, ValueError) as error:
                refused.append((jid, str(error)))
                continue
            user = element.getAttribute("name")
            if (yield storage.get(name, user, ACCOUNTS)) is not None:
                skipped.append((jid, "the account exists"))
                continue
            for store, document in documents.items():
                if store != ACCOUNTS:
                    yield storage.set(name, user, store, document)
            for text in offline:
                yield storage.append(name, user, OFFLINE, text)
            yield storage.set(name, user, ACCOUNTS, documents[ACCOUNTS])  # last: a half import is no account
            imported.append((jid, ""))
    return imported, skipped, refused
