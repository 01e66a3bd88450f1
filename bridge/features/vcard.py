"""vCards (XEP-0054) and the avatar hash in presence (XEP-0153).

Anyone may read an account's vCard; only the owner may change it.  Photos
stay inside the vCard and travel over XMPP only, so they are never a
browsable URL (a pain point of the field reports).  The SHA-1 of the photo
is added to the owner's outgoing presence when the client left it out.
A vCard of more than ``max_vcard_bytes`` bytes of XML is refused with
``not-acceptable``; the default holds a real avatar photo, base64 and all,
within the default client stanza size limit.  A host's site policy may set
its own bound, or none at all (``[hosts.NAME] max_vcard_bytes``,
bridge/core/sitepolicy.py): then a set is refused with ``not-allowed``.

A client's new vCard is told on ``vcard/changed``; ``vcard/write`` puts
another photo in the stored vCard (``features/avatars.py``, from PEP), after
which the owner's available resources announce the new hash again
(``bridge.core.account_data``).

On a host whose users live in an LDAP directory (docs/directory.md) the
vCard is read from the user's entry (name, login name, mail, mobile, photo)
and cannot be changed over XMPP.  Its photo goes only to logged-in users of
the host; anyone else gets the vCard without it.
"""

import base64
import binascii
import hashlib

from twisted.internet import defer
from twisted.words.xish import domish

from bridge.core import sitepolicy
from bridge.core.account_data import Changed
from bridge.core.directory import DirectoryUnavailable
from bridge.core.hooks import AMEND, in_background
from bridge.core.stanza import error_reply, result_reply
from bridge.core.storage.cache import KeyedLock
from bridge.core.xmlstream import parse_element, serialize

NS_VCARD = "vcard-temp"
NS_UPDATE = "vcard-temp:x:update"
STORE = "vcard"


def photo_hash(vcard):
    """The SHA-1 (hex) of the vCard's photo, "" when it has none."""
    for photo in vcard.elements(NS_VCARD, "PHOTO"):
        for binval in photo.elements(NS_VCARD, "BINVAL"):
            try:
                data = base64.b64decode("".join(str(binval).split()))
            except binascii.Error:
                return ""
            return hashlib.sha1(data).hexdigest()
    return ""


def directory_vcard(entry):
    """The vCard of a ``DirectoryEntry`` (None: an empty one); its photo only if the entry has one."""
    vcard = domish.Element((NS_VCARD, "vCard"))
    if entry is None:
        return vcard
    if entry.name:
        vcard.addElement("FN", content=entry.name)
    vcard.addElement("NICKNAME", content=entry.uid)
    if entry.mail:
        email = vcard.addElement("EMAIL")
        email.addElement("INTERNET")
        email.addElement("USERID", content=entry.mail)
    if entry.mobile:
        tel = vcard.addElement("TEL")
        tel.addElement("CELL")
        tel.addElement("NUMBER", content=entry.mobile)
    if entry.photo:
        photo = vcard.addElement("PHOTO")
        photo.addElement("TYPE", content="image/jpeg")
        photo.addElement("BINVAL", content=base64.b64encode(entry.photo).decode("ascii"))
    return vcard


def _from_user_of(event):
    """True when a logged-in user of the addressed host sent the stanza."""
    return event.sender is not None and bool(event.sender.user) and event.sender.host == event.host.name


class VCards:
    def __init__(self, ctx):
        self.ctx = ctx
        self._hashes = {}
        self._changes = KeyedLock()  # a client's set and a conversion's write, one at a time per account
        self.directory = ctx.accounts.directory(ctx.host.name) if ctx.has_accounts else None

    def max_bytes(self):
        """The bytes of XML a vCard of this host may take (0: none kept)."""
        return sitepolicy.storage_bound(self.ctx.host.config.max_vcard_bytes, self.ctx.config.quotas.max_vcard_bytes)

    @in_background()
    @defer.inlineCallbacks
    def get(self, event):
        if self.directory is not None:
            try:
                entry = yield self.directory.find(event.to.user, photo=_from_user_of(event))
            except DirectoryUnavailable:
                event.reply(error_reply(event.stanza, "remote-server-timeout", "the directory does not answer"))
                return
            reply = result_reply(event.stanza)
            reply.addChild(directory_vcard(entry))
            event.reply(reply)
            return
        stored = yield self.ctx.storage.get(event.host.name, event.to.user, STORE)
        reply = result_reply(event.stanza)
        if stored is None:
            reply.addElement((NS_VCARD, "vCard"))
        else:
            reply.addChild(parse_element(stored["xml"]))
        event.reply(reply)

    @in_background()
    @defer.inlineCallbacks
    def set(self, event):
        if not event.from_owner():
            return
        if self.directory is not None:
            event.reply(error_reply(event.stanza, "not-allowed", "the vCards of this host come from its directory"))
            return
        vcard = event.stanza.vCard
        text = serialize(vcard)
        max_bytes = self.max_bytes()
        if not max_bytes:
            event.reply(error_reply(event.stanza, "not-allowed", "vCards are not kept on this host"))
            return
        if len(text.encode("utf-8")) > max_bytes:
            event.reply(error_reply(event.stanza, "not-acceptable", f"a vCard may take at most {max_bytes} bytes"))
            return
        yield self._changes.run(event.to.userhost(), self._set, event, vcard, text)

    @defer.inlineCallbacks
    def _set(self, event, vcard, text):
        owner = event.to.userhost()
        stored = yield self.ctx.storage.get(event.host.name, event.to.user, STORE)
        digest = photo_hash(vcard)
        yield self.ctx.storage.set(event.host.name, event.to.user, STORE, {"xml": text, "photo": digest})
        self._hashes[owner] = digest
        change = Changed(owner, "vCard", vcard, previous=stored["photo"] if stored else "")
        self.ctx.fire("vcard/changed", change)
        change.settled().addCallback(lambda _: event.reply(result_reply(event.stanza)))

    def take_write(self, request):
        """``vcard/write``: a conversion puts another photo (or none) in the stored vCard; on a directory host
        the directory's photo stays the vCard's."""
        if self.directory is not None:
            request.done.callback(None)
            return True
        self._changes.run(request.owner, self._write, request).chainDeferred(request.done)
        return True

    @defer.inlineCallbacks
    def _write(self, request):
        user, host = request.owner.split("@", 1)
        stored = yield self.ctx.storage.get(host, user, STORE)
        vcard = parse_element(stored["xml"]) if stored else domish.Element((NS_VCARD, "vCard"))
        vcard.children = [child for child in vcard.children
                          if not (isinstance(child, domish.Element) and child.name == "PHOTO")]
        if request.value is not None:
            kind, data = request.value
            photo = vcard.addElement("PHOTO")
            photo.addElement("TYPE", content=kind)
            photo.addElement("BINVAL", content=base64.b64encode(data).decode("ascii"))
        text = serialize(vcard)
        if len(text.encode("utf-8")) > self.max_bytes():
            raise ValueError(f"the vCard would take more than {self.max_bytes()} bytes")
        digest = photo_hash(vcard)
        yield self.ctx.storage.set(host, user, STORE, {"xml": text, "photo": digest})
        changed = self._hashes.get(request.owner) != digest
        self._hashes[request.owner] = digest
        if changed:
            self._announce(request.owner)

    def _announce(self, owner):
        """Each available resource of ``owner`` says its presence again, with the new photo hash."""
        for session in self.ctx.sessions.available(owner):
            presence = domish.Element((None, "presence"))
            presence.attributes = {key: value for key, value in session.presence.attributes.items()
                                   if key not in ("to", "from")}
            presence.children = [child for child in session.presence.children
                                 if not (isinstance(child, domish.Element) and child.uri == NS_UPDATE)]
            self.ctx.server.stanza_from_session(session, presence)

    @in_background(handled=False)
    @defer.inlineCallbacks
    def load_hash(self, session):
        """Cache the photo hash when a session binds, for its presence to carry."""
        if session.bare in self._hashes:
            return
        if self.directory is not None:
            try:
                entry = yield self.directory.find(session.jid.user, photo=True)
            except DirectoryUnavailable:
                return  # the next session tries again
            self._hashes[session.bare] = hashlib.sha1(entry.photo).hexdigest() if entry and entry.photo else ""
            return
        stored = yield self.ctx.storage.get(session.jid.host, session.jid.user, STORE)
        self._hashes[session.bare] = stored["photo"] if stored else ""

    def stamp_presence(self, event):
        """Add <x xmlns='vcard-temp:x:update'/> to available presence that lacks it."""
        stanza = event.stanza
        if stanza.getAttribute("type") is not None:
            return False
        digest = self._hashes.get(event.origin.bare)
        for update in stanza.elements(NS_UPDATE, "x"):
            # A client's hash is replaced by the stored photo's, which a conversion may have changed
            # (XEP-0398 section 4); an <x/> without <photo/> (not ready yet) is left as it is.
            for photo in update.elements(NS_UPDATE, "photo"):
                if digest is not None:
                    photo.children = [digest] if digest else []
            return False
        if digest:
            update = stanza.addElement((NS_UPDATE, "x"))
            update.addElement("photo", content=digest)
        return False


def setup(ctx):
    vcards = VCards(ctx)
    ctx.add_feature(NS_VCARD)
    ctx.hook(f"iq-get/bare/{NS_VCARD}:vCard", vcards.get)
    ctx.hook(f"iq-set/bare/{NS_VCARD}:vCard", vcards.set)
    ctx.hook("session/bound", vcards.load_hash)
    ctx.hook("pre-presence/self", vcards.stamp_presence, priority=AMEND)
    ctx.hook("vcard/write", vcards.take_write)
    return vcards
