"""Message Archive Management (XEP-0313, urn:xmpp:mam:2 and #extended), paged by XEP-0059, ids by XEP-0359.

Every chat message a local user sends or receives is kept in the user's
archive, whatever carried it: what the user says passes ``stanza/out`` (after
the block list), what is delivered to the user passes ``message/delivering``
or, with no resource available, ``message/offline``; a SIP phone's or a
mobile's session speaks and is spoken to through the same events.

What is archived (as Prosody and ejabberd do by default): messages of type
chat or normal with a <body/>, or with a receipt or chat marker (so that
read state follows the user to every device), or an encrypted payload
(OMEMO, OpenPGP), a reaction or a retraction; never chat states alone,
groupchat, headline or errors.  The XEP-0334 hints <no-store/> and
<no-permanent-store/> keep a message out, <store/> lets any chat or normal
message in.  The user's preferences (<prefs/>) decide per contact.

A message delivered to the user is stamped with
<stanza-id xmlns='urn:xmpp:sid:0' by='user@host' id='...'/> before any
resource (or carbons copy, or offline storage) sees it: the id is made here,
random and unguessable, so stamping waits for no database; it is the id of
the record in the archive.  A message between two local users has one id and
one time in both archives (docs/decisions.md).  A stanza-id claiming to be by the account that
arrives from anyone else is removed, so that a client can trust the ones it
sees.

Offline storage and the archive together: a session that queries the
archive before its initial presence is taken to sync its history by MAM.
When its presence then flushes offline storage, the messages the archive
holds (those stamped with a stanza-id by the account) are removed without
being sent; only those the archive does not hold are delivered (event
``offline/flushing``, answered here).
"""

from twisted.internet import defer
from twisted.logger import Logger

from bridge.core.hooks import AMEND, OBSERVE
from bridge.core.mam_query import (FORM_FIELDS, NS_DATA, NS_MAM, QueryError, fin_reply, first_child, new_id,
                                   parse_query, result_message, stamp)
from bridge.core.server import looping_call
from bridge.core.stanza import error_reply, parse_jid, result_reply
from bridge.core.storage import ArchiveItemNotFound, ArchiveQuery, ArchiveRecord
from bridge.core.storage.cache import DocumentCache, KeyedLock
from bridge.core.xmlstream import escape_attribute, known_as, serialize

log = Logger()

NS_MAM_EXTENDED = "urn:xmpp:mam:2#extended"
NS_SID = "urn:xmpp:sid:0"
NS_HINTS = "urn:xmpp:hints"
NS_CLIENT = "jabber:client"
PREFS_STORE = "mam-prefs"
SYNCED = "mam-synced"  # key in Session.data: the session queried the archive before its initial presence
# Payloads worth archiving without a body: receipts and chat markers (read state on every device),
# encrypted messages (OMEMO old and new, OpenPGP for XMPP, legacy OpenPGP), reactions, retractions.
CONTENT_NAMESPACES = frozenset(("urn:xmpp:receipts", "urn:xmpp:chat-markers:0", "eu.siacs.conversations.axolotl",
                                "urn:xmpp:omemo:2", "urn:xmpp:openpgp:0", "jabber:x:encrypted",
                                "urn:xmpp:reactions:0", "urn:xmpp:message-retract:1"))
PREFERENCES = ("always", "roster", "never")
_MISSING = object()
_new_tuple = tuple.__new__


def archivable(stanza, account):
    """Whether a message is one the archive keeps (see the module's docstring), once the stanza-ids
    that claim to be by ``account`` (a bare JID; only the server stamps those) are removed; and
    whether it carries no stanza-id at all (then the answer is the same for any account).

    One pass over the children: every message a local user sends or receives comes here.
    """
    worth = kept_out = claimed = False
    for child in stanza.children:
        if isinstance(child, str):  # text, or raw XML (a stamp of this server's)
            continue
        uri = child.uri
        if uri == NS_HINTS:
            if child.name in ("no-store", "no-permanent-store"):
                kept_out = True
            elif child.name == "store":
                worth = True
        elif uri == NS_SID:
            claimed = claimed or child.name == "stanza-id"
        elif (child.name == "body" and uri in (None, NS_CLIENT)) or uri in CONTENT_NAMESPACES:
            worth = True
    if claimed:
        _remove_claimed_ids(stanza, account)
    return worth and not kept_out and (stanza.attributes.get("type") or "normal") in ("chat", "normal"), not claimed


def _remove_claimed_ids(stanza, account):
    stanza.children = [child for child in stanza.children
                       if isinstance(child, str) or child.uri != NS_SID or child.name != "stanza-id"
                       or not _is_account(child.getAttribute("by"), account)]


def _is_account(text, account):
    jid = parse_jid(text)
    return jid is not None and jid.resource is None and jid.userhost() == account


# The preferences of every user who never set any: one shared document, never changed in place (a user's
# new preferences are a new document), so that an idle session costs no copy of it.
NO_PREFERENCES = {"default": None, "always": (), "never": ()}


def decode_prefs(stored):
    if not stored:
        return NO_PREFERENCES
    return {"default": stored.get("default"), "always": list(stored.get("always", ())),
            "never": list(stored.get("never", ()))}


class Archive:
    def __init__(self, ctx):
        self.ctx = ctx
        self.config = ctx.config.mam
        self.host = ctx.host.name
        self.prefs = DocumentCache(ctx.storage, PREFS_STORE, decode=decode_prefs, caches=ctx.document_caches)
        self._prefs_changes = KeyedLock()  # one account's preferences set one after the other
        # The message its sender archived last, for its recipient's record (``_received``): the stanza, what
        # it was serialised as (``xmlstream.Written``), the record's time and id, the sender's bare JID.
        self._sent = (None, None, 0, None, None)
        # The verdict of the host's default preference for users who set none (None: "roster", it depends).
        self._default_verdict = {"always": True, "never": False}.get(self.config.default_preference)

    def now(self):
        return round(self.ctx.clock.seconds() * 1e6)

    # -- preferences: who is archived ---------------------------------------------------

    def decision(self, user, contact):
        """Whether a message with ``contact`` (a JID) goes to ``user``'s archive, or None while the
        preferences (or, for "roster", the roster) are not in memory.  A JID listed bare in <always/>
        or <never/> stands for all its resources."""
        prefs = self.prefs.cached(self.host, user, _MISSING)
        if prefs is NO_PREFERENCES and self._default_verdict is not None:
            return self._default_verdict  # most users, every message: spared the lists
        if prefs is _MISSING:
            return None
        if prefs["never"] or prefs["always"]:
            names = (contact.userhost(), contact.full())
            if any(name in prefs["never"] for name in names):
                return False
            if any(name in prefs["always"] for name in names):
                return True
        default = prefs["default"] or self.config.default_preference
        if default != "roster":
            return default == "always"
        roster = self.ctx.rosters.documents.cached(self.host, user, _MISSING)
        if roster is _MISSING:
            return None
        return roster.get(contact.userhost()) is not None

    @defer.inlineCallbacks
    def decide(self, user, contact):
        """Deferred: ``decision``, reading what it needs first."""
        yield self.prefs.load(self.host, user)
        verdict = self.decision(user, contact)
        if verdict is None:
            yield self.ctx.rosters.load(f"{user}@{self.host}")
            verdict = self.decision(user, contact)
        return verdict

    def preload(self, session):
        """``session/bound``: a user with a session has its preferences in memory for what it is sent."""
        self.prefs.load(self.host, session.jid.user).addErrback(
            lambda failure: log.failure("archive preferences of {user} not read", failure, user=session.bare))
        return False

    def forget(self, bare):
        """``account/deleted``: storage deleted the archive and preferences; forget the cached ones."""
        self.prefs.forget(self.host, bare.split("@", 1)[0])
        return False

    # -- archiving -------------------------------------------------------------------------

    def _record(self, user, contact, with_jid, direction, micros, record_id, text, verdict):
        """Archive ``text`` (a message serialised) with ``contact`` (bare: ``with_jid``), once the preferences
        allow it (``verdict`` None: ask them)."""
        # The named tuple made without its generated __new__, a Python call: two records a message.
        record = _new_tuple(ArchiveRecord, (record_id, micros, with_jid, contact.resource or "", direction, text))
        if verdict is None:
            d = self.decide(user, contact)
            d.addCallback(lambda allowed: allowed and self.ctx.storage.archive_append(self.host, user, record))
            d.addErrback(lambda failure: log.failure("message of {user} not archived", failure, user=user))
        else:
            self.ctx.storage.archive_append(self.host, user, record)

    def sent(self, event):
        """``stanza/out``: a message the user sends, to anyone but the user's own account."""
        stanza = event.stanza
        if stanza.name != "message":
            return False
        account = event.origin.bare
        kept, plain = archivable(stanza, account)
        to = event.to.userhost()
        if not kept or to == account:
            return False
        user = event.origin.jid.user
        verdict = self.decision(user, event.to)
        if verdict is not False:
            micros = self.now()
            record_id = new_id(micros)
            written = known_as(stanza, serialize(stanza))
            self._record(user, event.to, to, "out", micros, record_id, written.text, verdict)
            if plain:
                self._sent = (stanza, written, micros, record_id, account)
        return False

    def delivering(self, payload):
        """``message/delivering``: stamp the archive's id on a message for the user's resources, and archive it."""
        self._received(payload[0], None)
        return False

    def _received(self, event, verdict):
        stanza = event.stanza
        account = event.to.userhost()
        # A message between two local users is archived by its sender, then, a moment later, by its
        # recipient: as the same text, at the same time and under the same id (an id is unique within one
        # archive; docs/decisions.md), unless it changed in between (another feature filtered it, see
        # ``known_as``).  It carried no stanza-id (``archivable``): it is archivable for the recipient too.
        sent, written, micros, record_id, sender = self._sent
        shared = stanza is sent and written.fits(stanza)
        if (not shared and not archivable(stanza, account)[0]) or event.sender is None:
            return
        user = event.to.user
        if verdict is None:
            verdict = self.decision(user, event.sender)
        if verdict is False:
            return
        if not shared:
            micros = self.now()
            record_id = new_id(micros)
            written, sender = None, event.sender.userhost()
        text = written.text if shared else serialize(stanza)
        self._record(user, event.sender, sender, "in", micros, record_id, text, verdict)
        # As text: the stamp is written with the message, never looked into in between, and an element
        # would cost every message more than the rest of the archiving does.
        stamp = f"<stanza-id xmlns='{NS_SID}' by='{escape_attribute(account)}' id='{record_id}'/>"
        stanza.addRawXml(stamp)
        close = f"</{stanza.name}>"
        if text.endswith(close):
            # Delivered as archived, with the stamp: serialised once for the archive and the delivery.
            known_as(stanza, text[:-len(close)] + stamp + close, written)

    def offline(self, event):
        """``message/offline``: archived (and stamped) before the phones or offline storage take it,
        once it is known that the account exists and the preferences allow it."""
        stanza = event.stanza
        if not archivable(stanza, event.to.userhost())[0] or event.sender is None:
            return False
        held = event.hold()
        user = event.to.user
        checks = self.ctx.accounts.exists(self.host, user)
        checks.addCallback(lambda exists: exists and self.decide(user, event.sender))
        checks.addCallback(lambda allowed: allowed and self._received(event, True))
        checks.addErrback(lambda failure: log.failure("offline message for {to} not archived", failure,
                                                      to=event.to.userhost()))
        checks.addBoth(lambda _: held.resume())
        return True

    def flushing(self, session):
        """``offline/flushing``: true when the session syncs by the archive (it queried it before its
        initial presence), so that offline storage sends it only what the archive does not hold."""
        return bool(session.data.get(SYNCED))

    def purge(self):
        """The retention of this host: records older than it are deleted."""
        days = self.ctx.host.config.archive_retention_days(self.config)
        d = self.ctx.storage.archive_expire(self.host, self.now() - days * 86400 * 10**6)
        d.addErrback(lambda failure: log.failure("archive retention of {host} failed", failure, host=self.host))
        return d

    # -- queries ---------------------------------------------------------------------------------

    def query(self, event):
        """A query of the user's own archive: result messages to the querying resource, then <fin/>."""
        if not event.from_owner():
            return True
        stanza = event.stanza
        try:
            query, flip = parse_query(stanza.query, self.config)
        except QueryError as error:
            event.reply(error_reply(stanza, error.condition, error.text))
            return True
        session = self.ctx.sessions.get(event.sender.full())
        if session is not None and session.presence is None:
            session.data[SYNCED] = True
        d = self.ctx.storage.archive_query(self.host, event.to.user, query)
        d.addCallback(self._answer, event, session, stanza.query.getAttribute("queryid"), flip)
        d.addErrback(self._failed, event)
        return True

    def _answer(self, page, event, session, queryid, flip):
        records = page.records[::-1] if flip else page.records
        account = event.to.userhost()
        if session is not None:
            for record in records:
                session.send(result_message(session.full, account, queryid, record))
        event.reply(fin_reply(event.stanza, page, records))

    def _failed(self, failure, event):
        if failure.check(ArchiveItemNotFound):
            event.reply(error_reply(event.stanza, "item-not-found", f"no message {failure.value.args[0]!r} in the archive"))
            return
        log.failure("archive query of {user} failed", failure, user=event.to.userhost())
        event.reply(error_reply(event.stanza, "internal-server-error"))

    def form(self, event):
        """The fields a query may use (XEP-0313 section 4.1.5)."""
        if not event.from_owner():
            return True
        reply = result_reply(event.stanza)
        form = reply.addElement((NS_MAM, "query")).addElement((NS_DATA, "x"))
        form["type"] = "form"
        form_type = form.addElement("field")
        form_type["var"], form_type["type"] = "FORM_TYPE", "hidden"
        form_type.addElement("value", content=NS_MAM)
        for var, (kind, label) in FORM_FIELDS.items():
            field = form.addElement("field")
            field["var"], field["type"], field["label"] = var, kind, label
        event.reply(reply)
        return True

    def metadata(self, event):
        """The first and the last record of the archive (urn:xmpp:mam:2#extended)."""
        if not event.from_owner():
            return True
        user = event.to.user
        ends = defer.gatherResults([self.ctx.storage.archive_query(self.host, user, ArchiveQuery(limit=1)),
                                    self.ctx.storage.archive_query(self.host, user,
                                                                   ArchiveQuery(limit=1, last_page=True))],
                                   consumeErrors=True)

        def answer(pages):
            reply = result_reply(event.stanza)
            metadata = reply.addElement((NS_MAM, "metadata"))
            for name, page in zip(("start", "end"), pages):
                if page.records:
                    end = metadata.addElement(name)
                    end["id"], end["timestamp"] = page.records[0].id, stamp(page.records[0].timestamp)
            event.reply(reply)

        ends.addCallback(answer)
        ends.addErrback(self._failed, event)
        return True

    # -- preferences: the protocol ----------------------------------------------------------------

    def get_prefs(self, event):
        if not event.from_owner():
            return True
        d = self.prefs.load(self.host, event.to.user)
        d.addCallback(lambda prefs: event.reply(self._prefs_reply(event.stanza, prefs)))
        d.addErrback(self._failed, event)
        return True

    def set_prefs(self, event):
        if not event.from_owner():
            return True
        element = event.stanza.prefs
        default = element.getAttribute("default")
        if default not in PREFERENCES:
            event.reply(error_reply(event.stanza, "bad-request", f"default must be one of {', '.join(PREFERENCES)}"))
            return True
        prefs = {"default": default, "always": [], "never": []}
        for name in ("always", "never"):
            listed = first_child(element, NS_MAM, name)
            for item in listed.elements(NS_MAM, "jid") if listed is not None else ():
                jid = parse_jid(str(item).strip())
                if jid is None:
                    event.reply(error_reply(event.stanza, "jid-malformed", f"{str(item)!r} is not a JID"))
                    return True
                if jid.full() not in prefs[name]:
                    prefs[name].append(jid.full())
        if len(prefs["always"]) + len(prefs["never"]) > self.config.max_preference_jids:
            event.reply(error_reply(event.stanza, "not-acceptable",
                                    f"at most {self.config.max_preference_jids} JIDs in the preferences"))
            return True
        d = self._prefs_changes.run(event.to.user, self._replace_prefs, event.to.user, prefs)
        d.addCallback(lambda _: event.reply(self._prefs_reply(event.stanza, prefs)))
        d.addErrback(self._failed, event)
        return True

    @defer.inlineCallbacks
    def _replace_prefs(self, user, prefs):
        """Replace the preferences whole; read first, as a save in a cluster names the copy it replaces."""
        current = yield self.prefs.load(self.host, user)
        yield self.prefs.save(self.host, user, prefs, read=current)

    def _prefs_reply(self, iq, prefs):
        reply = result_reply(iq)
        element = reply.addElement((NS_MAM, "prefs"))
        element["default"] = prefs["default"] or self.config.default_preference
        for name in ("always", "never"):
            listed = element.addElement(name)
            for jid in prefs[name]:
                listed.addElement("jid", content=jid)
        return reply


def setup(ctx):
    config = ctx.config.mam
    if not config.enabled or not ctx.has_accounts:
        return None
    archive = Archive(ctx)
    for namespace in (NS_MAM, NS_MAM_EXTENDED, NS_SID):
        ctx.add_feature(namespace, where="account")
    ctx.hook("stanza/out", archive.sent, priority=AMEND)
    ctx.hook("message/delivering", archive.delivering, priority=AMEND)
    ctx.hook("message/offline", archive.offline, priority=OBSERVE)
    ctx.hook("offline/flushing", archive.flushing)
    ctx.hook("session/bound", archive.preload)
    ctx.hook("account/deleted", archive.forget)
    ctx.hook(f"iq-set/bare/{NS_MAM}:query", archive.query)
    ctx.hook(f"iq-get/bare/{NS_MAM}:query", archive.form)
    ctx.hook(f"iq-get/bare/{NS_MAM}:metadata", archive.metadata)
    ctx.hook(f"iq-get/bare/{NS_MAM}:prefs", archive.get_prefs)
    ctx.hook(f"iq-set/bare/{NS_MAM}:prefs", archive.set_prefs)
    if ctx.host.config.archive_retention_days(config):
        looping_call(ctx.clock, config.purge_interval_seconds, archive.purge)
    return archive
