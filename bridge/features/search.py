"""Jabber Search (XEP-0055) over the LDAP directory of a host, with a data form (XEP-0004).

Loaded on every host, active only on one whose users live in a directory
(docs/directory.md).  Only the host's own logged-in users may search: the
directory is the organisation's, not the federation's.  A user searches by
login name, by name or by mail, each a "contains" match; every value is
escaped into the filter (RFC 4515), a value is at most ``MAX_VALUE_CHARACTERS``
long, and an answer lists at most ``[ldap.NAME] max_search_results`` users.
"""

from twisted.internet import defer
from twisted.words.protocols.jabber.xmpp_stringprep import nodeprep

from bridge.core.directory import DirectoryUnavailable
from bridge.core.hooks import in_background
from bridge.core.stanza import NS_DATA, error_reply, form_values, result_reply

NS_SEARCH = "jabber:iq:search"
# Form field -> the DirectoryEntry attribute it searches, with its label.
FIELDS = (("user", "uid", "Login name"), ("name", "name", "Name"), ("mail", "mail", "Email"))
MAX_VALUE_CHARACTERS = 256


def _add_field(parent, var, value=None, kind=None, label=None):
    field = parent.addElement("field")
    field["var"] = var
    if kind:
        field["type"] = kind
    if label:
        field["label"] = label
    if value is not None:
        field.addElement("value", content=value)


class DirectorySearch:
    def __init__(self, ctx, directory, max_results):
        self.ctx = ctx
        self.directory = directory
        self.max_results = max_results

    def _from_local_user(self, event):
        """True for a logged-in user of this host; anyone else is answered forbidden."""
        sender = event.sender
        if sender is not None and sender.user and sender.host == event.host.name:
            return True
        event.reply(error_reply(event.stanza, "forbidden", "only users of this host may search its directory"))
        return False

    def form(self, event):
        if not self._from_local_user(event):
            return True
        reply = result_reply(event.stanza)
        query = reply.addElement((NS_SEARCH, "query"))
        query.addElement("instructions", content="Find users of this host by login name, name or email.")
        form = query.addElement((NS_DATA, "x"))
        form["type"] = "form"
        _add_field(form, "FORM_TYPE", NS_SEARCH, kind="hidden")
        for var, _, label in FIELDS:
            _add_field(form, var, kind="text-single", label=label)
        event.reply(reply)
        return True

    @in_background()
    @defer.inlineCallbacks
    def search(self, event):
        if not self._from_local_user(event):
            return
        forms = [form for form in event.stanza.query.elements(NS_DATA, "x") if form.getAttribute("type") == "submit"]
        if not forms:
            event.reply(error_reply(event.stanza, "bad-request", "submit the search form (XEP-0004)"))
            return
        values = form_values(forms[0])
        criteria = {attribute: (values.get(var) or [""])[0].strip() for var, attribute, _ in FIELDS}
        if any(len(value) > MAX_VALUE_CHARACTERS for value in criteria.values()):
            event.reply(error_reply(event.stanza, "not-acceptable",
                                    f"a search value may have at most {MAX_VALUE_CHARACTERS} characters"))
            return
        if not any(criteria.values()):
            event.reply(error_reply(event.stanza, "bad-request", "fill in at least one field"))
            return
        try:
            entries = yield self.directory.search(criteria, self.max_results)
        except DirectoryUnavailable:
            event.reply(error_reply(event.stanza, "remote-server-timeout", "the directory does not answer"))
            return
        event.reply(self._results(event, entries))

    def _results(self, event, entries):
        reply = result_reply(event.stanza)
        form = reply.addElement((NS_SEARCH, "query")).addElement((NS_DATA, "x"))
        form["type"] = "result"
        _add_field(form, "FORM_TYPE", NS_SEARCH, kind="hidden")
        reported = form.addElement("reported")
        _add_field(reported, "jid", kind="jid-single", label="JID")
        for var, _, label in FIELDS:
            _add_field(reported, var, kind="text-single", label=label)
        for entry in entries:
            try:
                node = nodeprep.prepare(entry.uid)
            except UnicodeError:
                continue  # a uid that is no JID's local part: no one could log in with it
            item = form.addElement("item")
            _add_field(item, "jid", f"{node}@{event.host.name}")
            for var, attribute, _ in FIELDS:
                _add_field(item, var, getattr(entry, attribute) or "")
        return reply


def setup(ctx):
    directory = ctx.accounts.directory(ctx.host.name) if ctx.has_accounts else None
    if directory is None:
        return None
    search = DirectorySearch(ctx, directory, directory.max_search_results)
    ctx.add_feature(NS_SEARCH)
    ctx.hook(f"iq-get/host/{NS_SEARCH}:query", search.form)
    ctx.hook(f"iq-set/host/{NS_SEARCH}:query", search.search)
    return search
