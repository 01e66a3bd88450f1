"""Message Carbons (XEP-0280), with the <private/> element and the XEP-0334 <no-copy/> hint.

A resource that sends <enable/> gets a copy of every message of its account
that it would not see otherwise: what another resource sent, wrapped in
<sent/>, and what was delivered to another resource, wrapped in <received/>;
each wrapped in a XEP-0297 <forwarded/>, from the account's bare JID.

What is copied (XEP-0280 section 6, the rules it suggests): type chat (chat
states, XEP-0184 receipts and XEP-0333 markers included, so that a message
read on one device is read on all); type normal with a <body/>; an error
answering a message that was copied (see ``Answerable``); never groupchat,
nor anything from or to a MUC room or occupant (a muc#user <x/>).  A
<private/> element or a <no-copy/> hint keeps a message from being copied,
and <private/> is removed before the message is delivered to a resource or
stored offline.

Copies go to sessions directly, never through the router: a message that
comes through the router with a carbons <sent/> or <received/> element was
not made by this server.  XEP-0280 section 11 makes a client trust only
copies whose 'from' is its own bare JID, which only this server can write;
the server goes further, removing such elements from what it delivers
locally or stores offline, and copies the message by the ordinary rules.

Everything a user says enters through ``stanza/out`` and everything delivered
to a resource passes ``message/delivering``, so a SIP phone's or a mobile's
session (``alice@localhost/sip``) is one more resource here like any client.
"""

import collections
import hashlib

from twisted.words.xish import domish

from bridge.core.hooks import AMEND, OBSERVE
from bridge.core.stanza import error_reply, forwarded_copy, make, result_reply

NS_CARBONS = "urn:xmpp:carbons:2"
NS_FORWARD = "urn:xmpp:forward:0"
NS_HINTS = "urn:xmpp:hints"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_CLIENT = "jabber:client"
ENABLED = "carbons"  # the session mark while carbons are enabled (shared with other nodes)
# Messages copied lately, remembered so that an error answering one is copied too.
ANSWERABLE_KEPT = 4096


def eligible(stanza):
    """Whether a message is one of instant messaging, to be copied (errors aside, see ``Answerable``)."""
    kind = stanza.getAttribute("type") or "normal"
    if kind == "normal":
        has_body = any(child.name == "body" and child.uri in (None, NS_CLIENT) for child in stanza.elements())
        if not has_body:
            return False
    elif kind != "chat":
        return False
    return not withheld(stanza)


def withheld(stanza):
    """A message its sender keeps from copies, or one of a MUC room."""
    for child in stanza.elements():
        if (child.uri, child.name) in ((NS_CARBONS, "private"), (NS_HINTS, "no-copy"), (NS_MUC_USER, "x")):
            return True
    return False


def bare(address):
    return (address or "").split("/", 1)[0]


class Answerable:
    """Copied messages lately seen, by (sender's bare JID, recipient's bare JID, id).

    XEP-0280 copies an error that answers a copied message; the error
    carries the original's id with the addresses swapped.  At most
    ``ANSWERABLE_KEPT`` are kept, each as a 16-byte digest, so that the
    memory they take is bounded whatever the addresses and ids.
    """

    def __init__(self, kept=ANSWERABLE_KEPT):
        self.kept = kept
        self._seen = collections.OrderedDict()

    @staticmethod
    def _key(sender, recipient, stanza_id):
        text = "\0".join((bare(sender), bare(recipient), stanza_id))
        return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()

    def remember(self, stanza):
        stanza_id = stanza.getAttribute("id")
        if not stanza_id:
            return
        key = self._key(stanza.getAttribute("from"), stanza.getAttribute("to"), stanza_id)
        self._seen[key] = None
        self._seen.move_to_end(key)
        if len(self._seen) > self.kept:
            self._seen.popitem(last=False)

    def answers(self, error):
        """Whether ``error`` (a message of type error) answers a message remembered here."""
        stanza_id = error.getAttribute("id")
        if not stanza_id or withheld(error):
            return False
        return self._key(error.getAttribute("to"), error.getAttribute("from"), stanza_id) in self._seen


def carbon(direction, stanza, session):
    """The <sent/> or <received/> copy of ``stanza`` for ``session``, from its account's bare JID.

    Built without domish's parent links, as the parser builds stanzas, so
    that a copy leaves no reference cycle behind once sent.
    """
    wrapper = make("message", to=session.full, sender=session.bare, type=stanza.getAttribute("type"))
    wrapping = domish.Element((NS_CARBONS, direction))
    forwarded = domish.Element((NS_FORWARD, "forwarded"))
    wrapper.children.append(wrapping)
    wrapping.children.append(forwarded)
    forwarded.children.append(forwarded_copy(stanza))
    return wrapper


def take_carbons_elements(stanza):
    """Remove the carbons elements a message arrived with; whether <private/> was one of them.

    A <sent/> or <received/> there was not made by this server (its copies
    go to sessions directly), and <private/> is for this server only.
    """
    for child in stanza.children:  # most messages have none: looked for before any list is made
        if not isinstance(child, str) and child.uri == NS_CARBONS:
            break
    else:
        return False
    found = [child for child in stanza.children if not isinstance(child, str) and child.uri == NS_CARBONS]
    stanza.children = [child for child in stanza.children if isinstance(child, str) or child.uri != NS_CARBONS]
    return any(child.name == "private" for child in found)


class Carbons:
    def __init__(self, ctx):
        self.ctx = ctx
        self.answerable = Answerable()
        # Every message asks sessions.marked(ENABLED, account): one dictionary
        # lookup for the accounts without carbons, on this node or another.
        self.sessions = ctx.sessions

    # -- the protocol -----------------------------------------------------------

    def enable(self, event):
        return self._switch(event, True)

    def disable(self, event):
        return self._switch(event, False)

    def _switch(self, event, enabled):
        """<enable/> or <disable/> from a resource of the account itself (repeating either is no error)."""
        session = self.ctx.sessions.get(event.sender.full()) if event.sender is not None else None
        if session is None or session.bare != event.to.userhost():
            event.reply(error_reply(event.stanza, "not-allowed"))
            return True
        self.sessions.mark(session, ENABLED, enabled)
        event.reply(result_reply(event.stanza))
        return True

    # -- copies -------------------------------------------------------------------

    def _copy(self, direction, stanza, account, skip):
        """Copy ``stanza`` as ``direction`` to the carbons-enabled resources of ``account`` but ``skip``."""
        targets = [session for session in self.sessions.resources(account)
                   if ENABLED in session.marks and session.full not in skip]
        if not targets:
            return
        if stanza.getAttribute("type") == "error":
            if not self.answerable.answers(stanza):
                return
        elif eligible(stanza):
            self.answerable.remember(stanza)
        else:
            return
        for session in targets:
            session.send(carbon(direction, stanza, session))

    def sent(self, event):
        """``stanza/out``: a message of a local user goes to the user's other resources as <sent/>.

        A message to the user's own account is left to the receiving side,
        which copies it to every resource that does not get it.
        """
        account = event.origin.bare
        if not self.sessions.marked(ENABLED, account) or event.stanza.name != "message" or event.to.userhost() == account:
            return False
        self._copy("sent", event.stanza, account, (event.origin.full,))
        return False

    def received(self, payload):
        """``message/delivering``: the account's resources that do not get the message get <received/>.

        The sending resource itself never gets a copy (a message to one's own
        account), nor do those RFC 6121 delivers it to (a bare JID's top
        priority resources).
        """
        event, sessions = payload
        stanza = event.stanza
        if take_carbons_elements(stanza):
            return False  # <private/>
        account = event.to.userhost()
        if self.sessions.marked(ENABLED, account):
            skip = {session.full for session in sessions}
            skip.add(stanza.getAttribute("from"))
            self._copy("received", stanza, account, skip)
        return False

    def stored(self, event):
        """``message/offline``: what is kept for later leaves without carbons elements too."""
        take_carbons_elements(event.stanza)
        return False


def setup(ctx):
    carbons = Carbons(ctx)
    ctx.add_feature(NS_CARBONS)
    ctx.hook(f"iq-set/bare/{NS_CARBONS}:enable", carbons.enable)
    ctx.hook(f"iq-set/bare/{NS_CARBONS}:disable", carbons.disable)
    ctx.hook("stanza/out", carbons.sent, priority=OBSERVE)
    ctx.hook("message/delivering", carbons.received, priority=OBSERVE)
    ctx.hook("message/offline", carbons.stored, priority=AMEND)
    return carbons
