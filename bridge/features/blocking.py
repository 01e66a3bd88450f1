"""Privacy lists (XEP-0016), invisibility (XEP-0126) and the blocking command (XEP-0191), enforced both ways.

Both protocols edit one document per account (``bridge.core.privacy``): the
block list is the default list's deny-all JID rules, so that a contact
blocked through one is blocked through the other, as ejabberd does.  One
enforcement path serves both:

* what reaches a user (``stanza/in``) is decided by the list of the session
  it is for: its active list, else the default list.  A stanza for the bare
  JID is refused when the lists of all the available sessions refuse it
  (the default list when none is available).  Refused messages and IQs get
  ``service-unavailable``; presence is dropped;
* what a user sends (``stanza/out``) is decided by the sending session's
  list: messages and IQs to an entity a deny-all rule matches get
  ``not-acceptable`` with <blocked/> (XEP-0191), presence is dropped;
* presence the server sends for the user (``presence/out``: broadcasts,
  probe answers) is decided by the list of the session it is from, so a
  list that denies ``presence-out`` makes a session invisible (XEP-0126)
  while its messages still flow.

Every stanza is checked, so documents are kept in memory (the most recently
used ones, see ``DocumentCache``); a stanza whose document (or, for a list
with group or subscription rules, roster) is not in memory yet is held until
storage has answered, then decided: the check never fails open, and a
document that cannot be read refuses.

Bounds: ``max_privacy_lists_per_user`` lists, ``max_privacy_items_per_list``
items per list, ``max_privacy_bytes_per_user`` bytes of the stored document
and ``max_blocked_items_per_user`` JIDs on the block list; an edit that
would pass one is refused whole with ``resource-constraint``.  One
account's edits are carried out one after the other, so that two that
arrive while its document is being read both count.
"""

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.xish import domish

from bridge.core.hooks import POLICY, in_background
from bridge.core.privacy import (NS_PRIVACY, PrivacyLists, allowed, inbound_kind, outbound_kind,
                                 parse_rules)
from bridge.core.stanza import error_reply, is_error_or_result, make, parse_jid, result_reply, same_account
from bridge.core.storage.cache import DocumentCache, KeyedLock

log = Logger()

NS_BLOCKING = "urn:xmpp:blocking"
NS_BLOCKED = "urn:xmpp:blocking:errors"
# The store keeps the name it had when it held only the block list (whose
# stored form, a list of JIDs, is still read: see PrivacyLists.from_json).
STORE = "blocklist"


def privacy_documents(storage, caches=None):
    """The privacy documents of one host, by (host, user)."""
    return DocumentCache(storage, STORE, decode=PrivacyLists.from_json, encode=PrivacyLists.to_json, caches=caches)


class Blocking:
    def __init__(self, ctx):
        self.ctx = ctx
        quotas = ctx.config.quotas
        self.max_blocked = quotas.max_blocked_items_per_user
        self.max_lists = quotas.max_privacy_lists_per_user
        self.max_items = quotas.max_privacy_items_per_list
        self.max_bytes = quotas.max_privacy_bytes_per_user
        self.lists = privacy_documents(ctx.storage, ctx.document_caches)
        self.rosters = ctx.rosters.documents
        self._changes = KeyedLock()

    # -- enforcement -------------------------------------------------------------

    def _ready(self, jid):
        """(document, roster or None) of the account of ``jid`` if all it needs is in memory, else None."""
        privacy = self.lists.cached(jid.host, jid.user)
        if privacy is None:
            return None
        if not privacy.uses_roster:
            return privacy, None
        roster = self.rosters.cached(jid.host, jid.user)
        return None if roster is None else (privacy, roster)

    @defer.inlineCallbacks
    def _load(self, jid):
        privacy = yield self.lists.load(jid.host, jid.user)
        roster = (yield self.rosters.load(jid.host, jid.user)) if privacy.uses_roster else None
        return privacy, roster

    def _check(self, event, owner, refuse):
        """Decide at once with what the account of ``owner`` needs in memory; else hold the event until it is read."""
        state = self._ready(owner)
        if state is not None:
            return refuse(event, *state)
        held = event.hold()

        def decide(state):
            if refuse(event, *state):
                held.finish()
            else:
                held.resume()

        def unreadable(failure):
            log.failure("privacy lists of {jid} unreadable: stanza refused", failure, jid=owner.userhost())
            if event.stanza.name != "presence":
                self.ctx.router.bounce(event.stanza, "internal-server-error")
            held.finish()

        self._load(owner).addCallbacks(decide, unreadable)
        return True

    def _rules_of(self, privacy, session):
        return privacy.rules_for(session.data if session is not None else None)

    def inbound(self, event):
        """Stanzas from an entity the recipient's list denies never reach the user."""
        sender, to = event.sender, event.to
        if sender is None or to.user is None or same_account(sender, to):
            return False
        return self._check(event, to, self._refuse_inbound)

    def _refuse_inbound(self, event, privacy, roster):
        if not privacy.lists:
            return False
        kind = inbound_kind(event.stanza)
        if event.to.resource:
            recipients = [self.ctx.sessions.get(event.to.full())]
        else:
            recipients = self.ctx.sessions.available(event.to.userhost()) or [None]
        if any(allowed(self._rules_of(privacy, session), kind, event.sender, roster) for session in recipients):
            return False
        if event.stanza.name != "presence" and not is_error_or_result(event.stanza):
            self.ctx.router.bounce(event.stanza, "service-unavailable")
        return True

    def outbound(self, event):
        """Stanzas of the user to an entity the sending session's list denies are refused."""
        to, sender = event.to, event.sender
        if to is None or sender is None or sender.user is None or same_account(to, sender):
            return False
        return self._check(event, sender, self._refuse_outbound)

    def _refuse_outbound(self, event, privacy, roster):
        if not privacy.lists:
            return False
        rules = self._rules_of(privacy, event.origin)
        if allowed(rules, outbound_kind(event.stanza), event.to, roster):
            return False
        if event.stanza.name != "presence" and not is_error_or_result(event.stanza):
            reply = error_reply(event.stanza, "not-acceptable", extra=domish.Element((NS_BLOCKED, "blocked")))
            if event.origin is not None:
                event.origin.send(reply)
        return True

    def preload(self, session):
        """A new session: its account's lists read now, so that its first stanzas need not wait."""
        self._load(session.jid).addErrback(
            lambda failure: log.failure("privacy lists of {jid} unreadable", failure, jid=session.bare))
        return False

    def forget(self, bare):
        user, host = bare.split("@", 1)
        self.lists.forget(host, user)
        return False

    # -- changes, shared by both protocols --------------------------------------------

    def _too_big(self, before, after):
        """Why ``after`` may not be kept (a text naming the bound), or None."""
        if len(after.lists) > self.max_lists and len(after.lists) > len(before.lists):
            return f"an account may keep at most {self.max_lists} privacy lists"
        for name, rules in after.lists.items():
            if len(rules) > self.max_items and len(rules) > len(before.lists.get(name, ())):
                return f"a privacy list may hold at most {self.max_items} items"
        if len(after.blocked) > self.max_blocked and len(after.blocked) > len(before.blocked):
            return f"a block list may hold at most {self.max_blocked} items"
        if after.size_bytes() > self.max_bytes and after.size_bytes() > before.size_bytes():
            return f"an account's privacy lists may take at most {self.max_bytes} bytes"
        return None

    def _edit(self, event, work, *args):
        """Run ``work(event, privacy, roster, *args)`` in the account's turn; it returns the new
        document to keep, or None when it answered an error."""
        jid = event.to

        @defer.inlineCallbacks
        def in_turn():
            before, roster = yield self._load(jid)
            if roster is None:
                roster = yield self.rosters.load(jid.host, jid.user)
            after = work(event, before, roster, *args)
            if after is None:
                return
            too_big = self._too_big(before, after)
            if too_big:
                event.reply(error_reply(event.stanza, "resource-constraint", too_big))
                return
            yield self.lists.save(jid.host, jid.user, after, read=before)
            event.reply(result_reply(event.stanza))
            self._announce(event, before, after)

        return self._changes.run((jid.host, jid.user), in_turn)

    def _announce(self, event, before, after):
        """Tell the account's resources what changed: XEP-0191 pushes of the block list to those
        that asked for it, XEP-0016 pushes of each changed list to those that used privacy lists
        (to every resource, after an XEP-0016 edit)."""
        bare = event.to.userhost()
        sessions = self.ctx.sessions.resources(bare)
        added, removed = after.blocked - before.blocked, before.blocked - after.blocked
        for session in self.ctx.sessions.available(bare):
            for jid in sorted(added):
                self.ctx.route(make("presence", to=jid, sender=session.full, type="unavailable"))
        command = event.stanza.firstChildElement()
        # XEP-0191 section 3.5: unblocking everything is pushed as an empty <unblock/>.
        unblocked_all = command.uri == NS_BLOCKING and command.name == "unblock" and not list(command.elements())
        for pushed_name, jids in (("block", added), ("unblock", removed)):
            if not jids:
                continue
            for session in sessions:
                if "blocklist-requested" in session.marks:
                    push = make("iq", to=session.full, type="set", id="block-push")
                    pushed = push.addElement((NS_BLOCKING, pushed_name))
                    if not (pushed_name == "unblock" and unblocked_all):
                        for jid in sorted(jids):
                            pushed.addElement("item")["jid"] = jid
                    session.send(push)
        changed = sorted(name for name in set(before.lists) | set(after.lists)
                         if before.lists.get(name) != after.lists.get(name))
        everyone = command.uri == NS_PRIVACY
        for session in sessions:
            if everyone or "privacy-requested" in session.marks:
                for name in changed:
                    push = make("iq", to=session.full, type="set", id="privacy-push")
                    push.addElement((NS_PRIVACY, "query")).addElement("list")["name"] = name
                    session.send(push)

    # -- XEP-0191 ---------------------------------------------------------------------

    def get_blocklist(self, event):
        if not event.from_owner():
            return True
        self._remember(event, "blocklist-requested")
        return self._get_blocklist(event)

    def _remember(self, event, what):
        session = self.ctx.sessions.get(event.sender.full())
        if session is not None:
            self.ctx.sessions.mark(session, what)
        return session

    @in_background()
    @defer.inlineCallbacks
    def _get_blocklist(self, event):
        privacy, _ = yield self._load(event.to)
        reply = result_reply(event.stanza)
        blocklist = reply.addElement((NS_BLOCKING, "blocklist"))
        for jid in sorted(privacy.blocked):
            blocklist.addElement("item")["jid"] = jid
        event.reply(reply)

    def change_blocklist(self, event):
        if not event.from_owner():
            return True
        command = event.stanza.firstChildElement()
        items = []
        for item in command.elements(NS_BLOCKING, "item"):
            jid = parse_jid(item.getAttribute("jid"))
            if jid is None:
                event.reply(error_reply(event.stanza, "jid-malformed"))
                return True
            items.append(jid.full())
        if command.name == "block" and not items:
            event.reply(error_reply(event.stanza, "bad-request", "nothing to block"))
            return True
        return self._change_blocklist(event, command.name, frozenset(items))

    @in_background()
    def _change_blocklist(self, event, command, items):
        return self._edit(event, self._apply_blocklist, command, items)

    @staticmethod
    def _apply_blocklist(event, privacy, roster, command, items):
        if command == "block":
            return privacy.block(items - privacy.blocked) if items - privacy.blocked else privacy
        return privacy.unblock(items or None)

    # -- XEP-0016 -----------------------------------------------------------------------

    def get_privacy(self, event):
        if not event.from_owner():
            return True
        self._remember(event, "privacy-requested")
        return self._get_privacy(event)

    @in_background()
    @defer.inlineCallbacks
    def _get_privacy(self, event):
        privacy, _ = yield self._load(event.to)
        asked = [child for child in event.stanza.firstChildElement().elements()]
        reply = result_reply(event.stanza)
        query = reply.addElement((NS_PRIVACY, "query"))
        if not asked:
            session = self.ctx.sessions.get(event.sender.full())
            active = session.data.get("privacy-active") if session is not None else None
            if active in privacy.lists:
                query.addElement("active")["name"] = active
            if privacy.default is not None:
                query.addElement("default")["name"] = privacy.default
            for name in sorted(privacy.lists):
                query.addElement("list")["name"] = name
        elif len(asked) > 1 or asked[0].name != "list" or not asked[0].getAttribute("name"):
            reply = error_reply(event.stanza, "bad-request", "ask for all lists or for one <list name=''/>")
        else:
            name = asked[0]["name"]
            if name not in privacy.lists:
                reply = error_reply(event.stanza, "item-not-found")
            else:
                listed = query.addElement("list")
                listed["name"] = name
                for rule in privacy.lists[name]:
                    listed.addChild(rule.to_element())
        event.reply(reply)

    def set_privacy(self, event):
        if not event.from_owner():
            return True
        session = self._remember(event, "privacy-requested")
        children = list(event.stanza.firstChildElement().elements())
        if len(children) != 1 or children[0].name not in ("active", "default", "list") \
                or children[0].uri != NS_PRIVACY:
            event.reply(error_reply(event.stanza, "bad-request", "one <active/>, <default/> or <list/>"))
            return True
        child = children[0]
        name = child.getAttribute("name")
        if child.name == "list" and not name:
            event.reply(error_reply(event.stanza, "bad-request", "a list has a name"))
            return True
        return self._set_privacy(event, session, child.name, name, child)

    @in_background()
    def _set_privacy(self, event, session, what, name, element):
        if what == "active":
            return self._changes.run((event.to.host, event.to.user), self._activate, event, session, name)
        work = self._make_default if what == "default" else self._edit_list
        return self._edit(event, work, session, name, element)

    @defer.inlineCallbacks
    def _activate(self, event, session, name):
        """The session's active list (XEP-0016 section 2.4); no name declines it.  Nothing is stored."""
        privacy, _ = yield self._load(event.to)
        if name is not None and name not in privacy.lists:
            event.reply(error_reply(event.stanza, "item-not-found"))
            return
        if session is not None:
            if name is None:
                session.data.pop("privacy-active", None)
            else:
                session.data["privacy-active"] = name
        event.reply(result_reply(event.stanza))

    def _others_use(self, event, session, name, by_default_only=False):
        """True when a session other than ``session`` applies list ``name`` (as its active list, unless
        ``by_default_only``, or as the default because it has none)."""
        privacy = self.lists.cached(event.to.host, event.to.user)
        for other in self.ctx.sessions.resources(event.to.userhost()):
            if other is session:
                continue
            active = other.data.get("privacy-active")
            if active in privacy.lists:
                if active == name and not by_default_only:
                    return True
            elif name == privacy.default:
                return True
        return False

    def _make_default(self, event, privacy, roster, session, name, element):
        """The default list (XEP-0016 section 2.5): conflict while another session applies the current one."""
        if name is not None and name not in privacy.lists:
            event.reply(error_reply(event.stanza, "item-not-found"))
            return None
        if name != privacy.default and privacy.default is not None \
                and self._others_use(event, session, privacy.default, by_default_only=True):
            event.reply(error_reply(event.stanza, "conflict", "the default list is in use by another resource"))
            return None
        return privacy.with_default(name)

    def _edit_list(self, event, privacy, roster, session, name, element):
        """Create, replace or (with no items) remove a list (XEP-0016 sections 2.6 and 2.7)."""
        try:
            rules = parse_rules(element, roster)
        except ValueError as error:
            condition, text = error.args
            event.reply(error_reply(event.stanza, condition, text))
            return None
        if not rules:
            if name not in privacy.lists:
                event.reply(error_reply(event.stanza, "item-not-found"))
                return None
            if self._others_use(event, session, name):
                event.reply(error_reply(event.stanza, "conflict", "the list is in use by another resource"))
                return None
            if session is not None and session.data.get("privacy-active") == name:
                session.data.pop("privacy-active")
        return privacy.with_list(name, rules)


def setup(ctx):
    blocking = Blocking(ctx)
    ctx.add_feature(NS_BLOCKING)
    ctx.add_feature(NS_PRIVACY)
    ctx.hook("session/bound", blocking.preload)
    ctx.hook("account/deleted", blocking.forget)
    ctx.hook("stanza/in", blocking.inbound, priority=POLICY)
    ctx.hook("stanza/out", blocking.outbound, priority=POLICY)
    ctx.hook("presence/out", blocking.outbound, priority=POLICY)
    ctx.hook(f"iq-get/bare/{NS_BLOCKING}:blocklist", blocking.get_blocklist)
    ctx.hook(f"iq-set/bare/{NS_BLOCKING}:block", blocking.change_blocklist)
    ctx.hook(f"iq-set/bare/{NS_BLOCKING}:unblock", blocking.change_blocklist)
    ctx.hook(f"iq-get/bare/{NS_PRIVACY}:query", blocking.get_privacy)
    ctx.hook(f"iq-set/bare/{NS_PRIVACY}:query", blocking.set_privacy)
    return blocking
