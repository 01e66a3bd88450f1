"""Service administration (XEP-0133) as ad-hoc commands (XEP-0050), for a host's administrators.

The administrators of a host are the bare JIDs of its ``[hosts.NAME]
admins``, and, on a host whose users live in LDAP, the members of the
directory's ``admins_group``.  Anyone else is answered ``forbidden``, and the
commands node in service discovery lists nothing for them.

A command is run in one or two steps: an ``execute`` without a form is
answered with the command's form and a session id, and the submitted form
completes it (a form sent with the first ``execute`` completes it at once).
Sessions are few (``MAX_SESSIONS`` per host) and lapse after
``SESSION_SECONDS``.

Users are deleted, disabled and their sessions ended through the same code
as ``bridgectl`` (``bridge.core.server``).  The message of the day is kept per
host and sent as a headline to each session at its initial presence; the blocked domains are
refused federation beside ``[s2s] denied_domains``, which stays as the file
says.
"""

import uuid

from twisted.internet import defer
from twisted.words.xish import domish

from bridge.core.accounts import AccountError
from bridge.core.hooks import in_background
from bridge.core.server import MAX_ANNOUNCE_BYTES, headline
from bridge.core.stanza import NS_DATA, error_reply, form_values, parse_jid, result_reply

NS_COMMANDS = "http://jabber.org/protocol/commands"
NS_ADMIN = "http://jabber.org/protocol/admin"
MOTD_STORE = "motd"
MAX_SESSIONS = 100
SESSION_SECONDS = 600.0
# The most JIDs a form lists or takes (online users, accounts, blocked domains).
MAX_JIDS = 10000

# node suffix -> (name, fields as (var, type, label, required)).
COMMANDS = {
    "add-user": ("Add a User", (("accountjid", "jid-single", "The Jabber ID for the account to be added", True),
                                ("password", "text-private", "The password for this account", True),
                                ("password-verify", "text-private", "Retype password", False))),
    "delete-user": ("Delete a User", (("accountjids", "jid-multi", "The Jabber ID(s) to delete", True),)),
    "disable-user": ("Disable a User", (("accountjids", "jid-multi", "The Jabber ID(s) to disable", True),)),
    "reenable-user": ("Re-Enable a User", (("accountjids", "jid-multi", "The Jabber ID(s) to re-enable", True),)),
    "end-user-session": ("End User Session", (("accountjids", "jid-multi", "The Jabber ID(s) whose sessions end",
                                               True),)),
    "get-online-users-list": ("Get List of Online Users", (("max_items", "text-single",
                                                            "Maximum number of items to show", False),)),
    "announce": ("Send Announcement to Online Users", (("announcement", "text-multi", "Announcement", True),)),
    "set-motd": ("Set Message of the Day", (("motd", "text-multi", "Message of the Day", True),)),
    "edit-motd": ("Edit Message of the Day", (("motd", "text-multi", "Message of the Day", True),)),
    "delete-motd": ("Delete Message of the Day", ()),
    "edit-blacklist": ("Edit Blocked Domains", (("blacklistjids", "jid-multi", "The blocked domains", False),)),
}


class CommandError(Exception):
    """A command refused: its stanza error condition and text."""

    def __init__(self, condition, text):
        super().__init__(text)
        self.condition = condition


def make_form(kind, title, fields, values=None):
    """A XEP-0004 form of ``kind`` with FORM_TYPE admin: ``fields`` as (var, type, label, required),
    ``values``: {var: [values]}."""
    form = domish.Element((NS_DATA, "x"))
    form["type"] = kind
    if title:
        form.addElement("title", content=title)
    hidden = form.addElement("field")
    hidden["var"], hidden["type"] = "FORM_TYPE", "hidden"
    hidden.addElement("value", content=NS_ADMIN)
    for var, kind_of_field, label, required in fields:
        field = form.addElement("field")
        field["var"], field["type"], field["label"] = var, kind_of_field, label
        if required:
            field.addElement("required")
        for value in (values or {}).get(var, ()):
            field.addElement("value", content=value)
    return form


def submitted_form(command):
    """The values of the form submitted with ``command``, or None when it carries none."""
    for form in command.elements(NS_DATA, "x"):
        if form.getAttribute("type") == "submit":
            return form_values(form)
    return None


def text_of(values, var):
    """A text field's lines joined (text-multi) or its one value, '' when absent."""
    return "\n".join(values.get(var, ()))


class Administration:
    def __init__(self, ctx):
        self.ctx = ctx
        self.server = ctx.server
        self.host = ctx.host.name
        self.sessions = {}  # session id -> (the admin's full JID, node)

    def is_admin(self, sender):
        """Whether the authenticated ``sender`` administers this host."""
        if sender is None:
            return False
        bare = sender.userhost().lower()
        if self.ctx.config.is_host_admin(bare, self.host):
            return True
        directory = self.ctx.accounts.directory(self.host)
        return bool(directory is not None and sender.host == self.host
                    and directory.in_policy_group("admins", sender.user))

    # -- service discovery --------------------------------------------------------------

    def disco(self, domain, namespace, node, sender):
        """The commands node (its items, for admins) and each command's node."""
        if node == NS_COMMANDS and namespace.endswith("#items"):
            if not self.is_admin(sender):
                return []
            return [self._item(suffix, name) for suffix, (name, _) in COMMANDS.items()]
        if node and node.startswith(NS_ADMIN + "#") and node[len(NS_ADMIN) + 1:] in COMMANDS:
            if namespace.endswith("#items"):
                return []
            identity = domish.Element((None, "identity"))
            identity["category"], identity["type"] = "automation", "command-node"
            identity["name"] = COMMANDS[node[len(NS_ADMIN) + 1:]][0]
            children = [identity]
            for feature in (NS_COMMANDS, NS_DATA):
                element = domish.Element((None, "feature"))
                element["var"] = feature
                children.append(element)
            return children
        return None if node else ()

    def _item(self, suffix, name):
        item = domish.Element((None, "item"))
        item["jid"], item["node"], item["name"] = self.host, f"{NS_ADMIN}#{suffix}", name
        return item

    # -- running a command --------------------------------------------------------------

    @in_background()
    def execute(self, event):
        command = event.stanza.command
        node = command.getAttribute("node") or ""
        suffix = node[len(NS_ADMIN) + 1:] if node.startswith(NS_ADMIN + "#") else None
        if not self.is_admin(event.sender):
            event.reply(error_reply(event.stanza, "forbidden", "only the host's administrators run these commands"))
            return None
        if suffix not in COMMANDS:
            event.reply(error_reply(event.stanza, "item-not-found", "no such command"))
            return None
        session_id = command.getAttribute("sessionid")
        if session_id is not None and self.sessions.get(session_id, (None, None))[:2] != (event.sender.full(), node):
            event.reply(error_reply(event.stanza, "bad-request", "no such session"))
            return None
        if command.getAttribute("action") == "cancel":
            self._forget(session_id)
            event.reply(self._answer(event, node, session_id, "canceled"))
            return None
        values = submitted_form(command)
        if values is None and COMMANDS[suffix][1]:
            return self._first_step(event, node, suffix)
        self._forget(session_id)
        d = defer.maybeDeferred(getattr(self, suffix.replace("-", "_")), values or {})
        d.addCallbacks(self._completed, self._refused, (event, node, session_id), None, (event,))
        return d

    @defer.inlineCallbacks
    def _first_step(self, event, node, suffix):
        if len(self.sessions) >= MAX_SESSIONS:
            event.reply(error_reply(event.stanza, "resource-constraint", "too many commands are under way"))
            return
        session_id = uuid.uuid4().hex
        call = self.ctx.clock.callLater(SESSION_SECONDS, self.sessions.pop, session_id, None)
        self.sessions[session_id] = (event.sender.full(), node, call)
        name, fields = COMMANDS[suffix]
        values = yield self._current(suffix)
        reply = self._answer(event, node, session_id, "executing")
        actions = reply.command.addElement("actions")
        actions["execute"] = "complete"
        actions.addElement("complete")
        reply.command.addChild(make_form("form", name, fields, values))
        event.reply(reply)

    def _current(self, suffix):
        """Deferred: the values a command's form starts with (the message of the day, the blocked domains)."""
        if suffix == "edit-motd":
            return self.ctx.storage.get(self.host, "", MOTD_STORE).addCallback(
                lambda motd: {"motd": motd.split("\n")} if motd else {})
        if suffix == "edit-blacklist":
            return defer.succeed({"blacklistjids": sorted(self.server.blocked_domains)})
        return defer.succeed({})

    def _forget(self, session_id):
        entry = self.sessions.pop(session_id, None)
        if entry is not None and entry[2].active():
            entry[2].cancel()

    def _answer(self, event, node, session_id, status):
        reply = result_reply(event.stanza)
        command = reply.addElement((NS_COMMANDS, "command"))
        command["node"], command["status"] = node, status
        command["sessionid"] = session_id or uuid.uuid4().hex
        return reply

    def _completed(self, outcome, event, node, session_id):
        note, form = outcome if isinstance(outcome, tuple) else (outcome, None)
        reply = self._answer(event, node, session_id, "completed")
        reply.command.addElement("note", content=note)["type"] = "info"
        if form is not None:
            reply.command.addChild(form)
        event.reply(reply)

    def _refused(self, failure, event):
        failure.trap(CommandError, AccountError)
        condition = getattr(failure.value, "condition", "not-acceptable")
        event.reply(error_reply(event.stanza, condition, str(failure.value)))

    # -- the commands -------------------------------------------------------------------------

    def _account(self, text):
        """(user, host) of the account ``text`` names on this host; CommandError otherwise."""
        jid = parse_jid(text)
        if jid is None or jid.user is None or jid.resource is not None \
                or self.ctx.config.host_for(jid.host) != self.host:
            raise CommandError("bad-request", f"{text!r} is not an account of {self.host} (user@{self.host})")
        return jid.user, self.host

    def _accounts(self, values):
        texts = values.get("accountjids", ())
        if not texts:
            raise CommandError("bad-request", "accountjids: no account named")
        if len(texts) > MAX_JIDS:
            raise CommandError("bad-request", f"accountjids: at most {MAX_JIDS} at once")
        return [self._account(text) for text in texts]

    @defer.inlineCallbacks
    def add_user(self, values):
        user, host = self._account(text_of(values, "accountjid"))
        password = text_of(values, "password")
        if not password:
            raise CommandError("bad-request", "password: must not be empty")
        if "password-verify" in values and text_of(values, "password-verify") != password:
            raise CommandError("bad-request", "password-verify: the passwords differ")
        try:
            yield self.ctx.accounts.create(host, user, password)
        except AccountError as error:
            raise CommandError("conflict" if "already exists" in str(error) else "not-acceptable", str(error))
        return f"{user}@{host} was added"

    @defer.inlineCallbacks
    def delete_user(self, values):
        ended = 0
        for user, host in self._accounts(values):
            ended += yield self.server.delete_account(host, user)
        return f"deleted; {ended} sessions ended"

    @defer.inlineCallbacks
    def disable_user(self, values):
        ended = 0
        for user, host in self._accounts(values):
            ended += yield self.server.disable_account(host, user, "disabled by an administrator")
        return f"disabled; {ended} sessions ended"

    @defer.inlineCallbacks
    def reenable_user(self, values):
        for user, host in self._accounts(values):
            yield self.ctx.accounts.enable(host, user)
        return "re-enabled"

    def end_user_session(self, values):
        texts = values.get("accountjids", ())
        if not texts or len(texts) > MAX_JIDS:
            raise CommandError("bad-request", f"accountjids: name between 1 and {MAX_JIDS} JIDs")
        ended = 0
        for text in texts:
            jid = parse_jid(text)
            if jid is None or jid.user is None or self.ctx.config.host_for(jid.host) != self.host:
                raise CommandError("bad-request", f"{text!r} is not a user of {self.host}")
            target = f"{jid.user}@{self.host}" + (f"/{jid.resource}" if jid.resource else "")
            ended += len(self.server.end_sessions(target, "policy-violation", "the administrator ended this session"))
        return f"{ended} sessions ended"

    def get_online_users_list(self, values):
        limit = text_of(values, "max_items")
        if limit and limit != "none" and not limit.isdigit():
            raise CommandError("bad-request", "max_items: a number")
        limit = min(int(limit), MAX_JIDS) if limit.isdigit() else MAX_JIDS
        users = sorted({session.bare for session in self.server.sessions if session.jid.host == self.host})
        form = make_form("result", "Online Users",
                         (("onlineuserjids", "jid-multi", "The list of all online users", False),),
                         {"onlineuserjids": users[:limit]})
        return f"{len(users)} users online", form

    def announce(self, values):
        try:
            sent = self.server.announce(self.host, text_of(values, "announcement"))
        except ValueError as error:
            raise CommandError("not-acceptable", str(error))
        return f"sent to {sent} sessions"

    @defer.inlineCallbacks
    def set_motd(self, values):
        motd = text_of(values, "motd")
        if not motd:
            raise CommandError("bad-request", "motd: must not be empty (delete-motd removes it)")
        if len(motd.encode("utf-8")) > MAX_ANNOUNCE_BYTES:
            raise CommandError("not-acceptable", f"the message is longer than {MAX_ANNOUNCE_BYTES} bytes")
        yield self.ctx.storage.set(self.host, "", MOTD_STORE, motd)
        return "the message of the day is set"

    edit_motd = set_motd

    @defer.inlineCallbacks
    def delete_motd(self, values):
        yield self.ctx.storage.set(self.host, "", MOTD_STORE, None)
        return "the message of the day is deleted"

    @defer.inlineCallbacks
    def edit_blacklist(self, values):
        texts = values.get("blacklistjids", ())
        if len(texts) > MAX_JIDS:
            raise CommandError("bad-request", f"blacklistjids: at most {MAX_JIDS} domains")
        domains = set()
        for text in texts:
            jid = parse_jid(text)
            if jid is None or jid.user is not None or jid.resource is not None:
                raise CommandError("bad-request", f"{text!r} is not a domain")
            if self.ctx.config.host_for(jid.host) is not None:
                raise CommandError("not-acceptable", f"{jid.host} is a host of this server")
            domains.add(jid.host)
        yield self.server.set_blocked_domains(domains)
        return f"{len(domains)} domains blocked, beside the {len(self.ctx.config.s2s.denied_domains)} of [s2s] " \
               "denied_domains"

    # -- the message of the day at login -------------------------------------------------------

    @in_background(handled=False)
    @defer.inlineCallbacks
    def send_motd(self, session):
        """``presence/initial``: a session's first presence is answered with the host's message of the
        day, if any (as offline messages are delivered)."""
        motd = yield self.ctx.storage.get(self.host, "", MOTD_STORE)
        if motd:
            self.ctx.route(headline(self.host, session.full, motd))


def setup(ctx):
    administration = Administration(ctx)
    ctx.add_feature(NS_COMMANDS)
    ctx.add_node_source(administration.disco)
    ctx.hook(f"iq-set/host/{NS_COMMANDS}:command", administration.execute)
    ctx.hook("presence/initial", administration.send_motd)
    return administration
