"""The administrator's control channel: ``bridgectl`` talking to the running server.

A UNIX socket in the data folder (``control.sock``, mode 0600 in the 0700
data folder), so only the user the server runs as reaches it, and nothing
of it is on the network.  One request is one line of JSON, an object whose
``command`` names what to do; the answer is one line of JSON with ``ok`` and
the command's fields, or ``ok: false`` and ``error``.  A request longer than
``MAX_REQUEST_BYTES`` ends the connection with an error.

``parse_request`` checks a line without I/O; ``ControlCommands`` runs the
commands on the server; ``ControlProtocol`` does the reading and writing.
"""

import datetime
import json
import os

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from bridge.core.accounts import AccountError
from bridge.core.stanza import parse_jid

log = Logger()

SOCKET_NAME = "control.sock"
MAX_REQUEST_BYTES = 65536
# The commands and the string arguments each requires.
COMMANDS = {"status": (), "sessions": (), "kick": ("jid",), "announce": ("host", "message"), "reload": (),
            "deluser": ("jid",)}
# The optional string arguments.
OPTIONAL = {"sessions": ("filter",)}


class ControlError(Exception):
    """A request that cannot be carried out; its text is the answer's ``error``."""


def parse_request(line):
    """(command, arguments) of one request line (bytes); ControlError names what is wrong."""
    try:
        request = json.loads(line)
    except (UnicodeDecodeError, ValueError):
        raise ControlError("a request is one JSON object on one line")
    if not isinstance(request, dict):
        raise ControlError("a request is one JSON object on one line")
    command = request.pop("command", None)
    if command not in COMMANDS:
        raise ControlError(f"unknown command {command!r} (one of {', '.join(COMMANDS)})")
    allowed = COMMANDS[command] + OPTIONAL.get(command, ())
    for name, value in request.items():
        if name not in allowed:
            raise ControlError(f"{command}: unknown argument {name!r}")
        if not isinstance(value, str):
            raise ControlError(f"{command}: {name} must be a string")
    for name in COMMANDS[command]:
        if not request.get(name):
            raise ControlError(f"{command}: {name} is missing")
    return command, request


def encode(answer):
    return json.dumps(answer, sort_keys=True).encode("utf-8") + b"\n"


def resident_bytes():
    """The process's resident memory (RSS) in bytes, or None where /proc does not tell it."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def session_kind(session):
    """What carries a session: tcp, bosh, websocket, sip, ... (``kind`` of its stream or framing)."""
    stream = session.stream
    return getattr(stream, "kind", None) or getattr(getattr(stream, "framing", None), "kind", "other")


def session_address(session):
    """The peer address of a session's connection (``host:port``), or '' when it has none of its own."""
    return str(getattr(getattr(session.stream, "framing", None), "peer", None) or "")


class ControlCommands:
    """The commands, run on ``server``.  ``reload``: the Reloader's ``reload``; ``queues``: a function
    returning the sizes of the server's queues by name; ``started``: the clock's time at start."""

    def __init__(self, server, reload, queues, started):
        self.server = server
        self._reload = reload
        self._queues = queues
        self.started = started

    def run(self, line):
        """The answer (a dict, or a Deferred of one) to one request line."""
        try:
            command, arguments = parse_request(line)
            return getattr(self, command)(**arguments)
        except ControlError as error:
            return {"ok": False, "error": str(error)}

    def _sessions(self, selector=None):
        """Every session, or those of the host, account (bare JID) or resource (full JID) ``selector``."""
        sessions = list(self.server.sessions)
        if selector is None:
            return sessions
        jid = parse_jid(selector)
        if jid is None:
            raise ControlError(f"{selector!r} is not a valid JID or host")
        if jid.user is None:
            host = self.server.config.host_for(jid.host)
            return [session for session in sessions if session.jid.host == host]
        text = jid.full() if jid.resource else jid.userhost()
        return [session for session in sessions if text in (session.full, session.bare)]

    def status(self):
        counts = {}
        for session in self.server.sessions:
            kinds = counts.setdefault(session.jid.host, {})
            kind = session_kind(session)
            kinds[kind] = kinds.get(kind, 0) + 1
        return {"ok": True, "uptime_seconds": round(self.server.clock.seconds() - self.started, 1),
                "sessions": counts, "resident_bytes": resident_bytes(), "queues": self._queues(),
                "owners": self._owners()}

    def _owners(self):
        """{resource: "this node", the node that owns it, or null} for what one node at a time serves."""
        claims = self.server.ownership.claims
        return {resource: "this node" if claim.owned else claim.owner for resource, claim in claims.items()}

    def sessions(self, filter=None):
        answer = []
        for session in self._sessions(filter):
            since = datetime.datetime.fromtimestamp(session.since, datetime.timezone.utc)
            answer.append({"jid": session.full, "kind": session_kind(session), "address": session_address(session),
                           "since": since.strftime("%Y-%m-%dT%H:%M:%SZ")})
        answer.sort(key=lambda item: item["jid"])
        return {"ok": True, "sessions": answer}

    def _end(self, jid, condition, text):
        target = parse_jid(jid)
        if target is None or target.user is None:
            raise ControlError(f"{jid!r} is not a user's JID (user@host or user@host/resource)")
        return self.server.end_sessions(target.full() if target.resource else target.userhost(), condition, text)

    def kick(self, jid):
        ended = self._end(jid, "policy-violation", "the administrator ended this session")
        return {"ok": True, "ended": len(ended)}

    def announce(self, host, message):
        name = self.server.config.host_for(host.lower())
        if name is None:
            raise ControlError(f"{host!r} is not a host of this server")
        try:
            return {"ok": True, "sent": self.server.announce(name, message)}
        except ValueError as error:
            raise ControlError(f"announce: {error}")

    def reload(self):
        return self._reload()

    def deluser(self, jid):
        """Delete the account, then end its sessions (no new login can follow the kick)."""
        target = parse_jid(jid)
        host = self.server.config.host_for(target.host) if target is not None else None
        if target is None or target.user is None or target.resource is not None or host is None:
            raise ControlError(f"{jid!r} is not an account of this server (user@host)")

        def refused(failure):
            failure.trap(AccountError)
            return {"ok": False, "error": str(failure.value)}

        return self.server.delete_account(host, target.user).addCallbacks(
            lambda ended: {"ok": True, "ended": ended}, refused)


class ControlProtocol(LineOnlyReceiver):
    """One administrator's connection: a JSON line in, a JSON line out."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_REQUEST_BYTES

    def lineReceived(self, line):
        answer = defer.maybeDeferred(self.factory.commands.run, line)
        answer.addErrback(self._failed)
        answer.addCallback(lambda result: self.transport.write(encode(result)))

    def _failed(self, failure):
        log.failure("control command failed", failure)
        return {"ok": False, "error": failure.getErrorMessage() or failure.type.__name__}

    def lineLengthExceeded(self, line):
        self.transport.write(encode({"ok": False, "error": f"a request is at most {MAX_REQUEST_BYTES} bytes"}))
        self.transport.loseConnection()


class ControlFactory(Factory):
    noisy = False
    protocol = ControlProtocol

    def __init__(self, commands):
        self.commands = commands
