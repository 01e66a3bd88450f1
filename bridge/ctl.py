"""bridgectl: account administration, configuration checks, commands to the running server, and the
PostgreSQL schema.

Works on the same configuration and storage as the server; with SQLite in
WAL mode it may run while the server does.  Storage answers from its own
thread; the tool waits for each answer (``Waiting``) rather than run a reactor.
``status``, ``sessions``, ``kick``, ``announce`` and ``reload`` go to the
running server over its control socket (bridge.core.control), and so does
``deluser`` when a server runs, which then ends the account's sessions.
``export`` and ``import`` write and read XEP-0227 files (bridge.core.backup);
``import-prosody`` reads a Prosody data folder (bridge.core.prosody).
"""

import argparse
import getpass
import json
import os
import queue
import socket
import sys

from twisted.internet import task
from twisted.words.protocols.jabber.jid import InvalidFormat, JID

from bridge import checks
from bridge import config as configuration
from bridge.core import backup, prosody
from bridge.core.accounts import DIRECTORY_STORE, STORE, Accounts, AccountError, sip_digest_algorithms
from bridge.core.control import MAX_REQUEST_BYTES, SOCKET_NAME, encode
from bridge.core.notifications import POLICIES, NotificationPreferences
from bridge.core.storage import ArchiveQuery, open_storage
from bridge.core.mam_query import QueryError, parse_stamp, stamp
from bridge.core.xmlstream import serialize
from bridge.gateways.sms.queue import STORE as SMS_QUEUE_STORE
from bridge.gateways.sms.verification import Verification


class CommandError(Exception):
    pass


def _account(config, text):
    try:
        jid = JID(text)
    except (InvalidFormat, UnicodeError):
        raise CommandError(f"{text!r} is not a valid JID")
    host = config.host_for(jid.host)
    if jid.user is None or jid.resource is not None:
        raise CommandError(f"{text!r} must be of the form user@host")
    if host is None:
        raise CommandError(f"{jid.host!r} is not a host of this server ({', '.join(config.hosts)})")
    return host, jid.user


def _password(args):
    if args.password_file:
        try:
            password = configuration.read_first_line(args.password_file)
        except OSError as error:
            raise CommandError(f"{args.password_file}: {error.strerror}")
    elif not sys.stdin.isatty():
        # Piped in (echo pw | bridgectl adduser ...), as a script does: its first line.
        line = sys.stdin.readline()
        if not line:
            raise CommandError("no password on standard input: pipe one line, or give --password-file")
        password = line.rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise CommandError("the passwords differ")
    if not password:
        raise CommandError("the password is empty")
    return password


class Waiting:
    """Stands in for the reactor: storage answers from its thread, and the tool waits for each answer.

    The storage calls ``callFromThread`` with what its answer runs; here that
    is queued and run by ``result``, on the tool's own thread, so the tool
    needs no event loop and may run again in the same process.
    """

    def __init__(self):
        self._answers = queue.SimpleQueue()
        self._never = task.Clock()

    def callFromThread(self, function, *args):
        self._answers.put((function, args))

    def callLater(self, delay, function, *args):
        """A timer that fires only at the end of a turn, when the tool waits (``result``), and only when
        its delay is 0: what the storage gathers for a moment it hands over at its next call or at close."""
        return self._never.callLater(delay, function, *args)

    def result(self, deferred):
        """The result of ``deferred``, waiting for the storage's answers until it has fired."""
        box = []
        deferred.addBoth(box.append)
        while not box:
            self._never.advance(0)  # the end of the tool's turn: the storage hands over the calls made in it
            function, args = self._answers.get()
            function(*args)
        if hasattr(box[0], "raiseException"):
            box[0].raiseException()
        return box[0]


# How long bridgectl waits for the running server's answer.
CONTROL_TIMEOUT_SECONDS = 60
# Commands that only the running server can carry out.
SERVER_COMMANDS = ("status", "sessions", "kick", "announce", "reload")


def ask_server(config, request):
    """The running server's answer (a dict) to ``request`` over its control socket; None when none runs."""
    path = config.data_path(SOCKET_NAME)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(CONTROL_TIMEOUT_SECONDS)
        try:
            connection.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        except OSError as error:
            raise CommandError(f"cannot reach the server at {path}: {error.strerror or error}")
        request = encode(request)
        if len(request) > MAX_REQUEST_BYTES:
            raise CommandError(f"the request is longer than the {MAX_REQUEST_BYTES} bytes the server reads")
        try:
            connection.sendall(request)
            answer = connection.makefile("rb").readline()
        except OSError as error:
            raise CommandError(f"no answer from the server at {path}: {error.strerror or error}")
    if not answer.endswith(b"\n"):
        raise CommandError(f"the server at {path} closed the connection without an answer")
    return json.loads(answer)


def _server_command(config, args, out):
    request = {"command": args.command}
    for name in ("jid", "host", "message", "filter"):
        if getattr(args, name, None) is not None:
            request[name] = getattr(args, name)
    answer = ask_server(config, request)
    if answer is None:
        raise CommandError(f"the server is not running (no control socket at {config.data_path(SOCKET_NAME)})")
    if not answer["ok"]:
        raise CommandError(f"{args.command}: {answer['error']}")
    _show(args.command, args, answer, out)


def _show(command, args, answer, out):
    """The server's answer to ``command``, for a reader."""
    if command == "status":
        memory = answer["resident_bytes"]
        print(f"uptime: {answer['uptime_seconds']:.0f} s", file=out)
        print(f"memory (RSS): {memory / 1048576:.1f} MiB" if memory is not None else "memory (RSS): unknown", file=out)
        total = sum(sum(kinds.values()) for kinds in answer["sessions"].values())
        print(f"sessions: {total}", file=out)
        for host, kinds in sorted(answer["sessions"].items()):
            print(f"  {host}: " + ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items())), file=out)
        print("queues: " + ", ".join(f"{name} {size}" for name, size in sorted(answer["queues"].items())), file=out)
        if answer.get("owners"):
            print("served by one node at a time: " + ", ".join(
                f"{resource} ({owner or 'nobody yet'})" for resource, owner in sorted(answer["owners"].items())),
                file=out)
    elif command == "sessions":
        for session in answer["sessions"]:
            print(f"{session['jid']}\t{session['kind']}\t{session['address'] or '-'}\t{session['since']}", file=out)
    elif command in ("kick", "deluser"):
        print(f"{command}: {args.jid}: done, {answer['ended']} sessions ended", file=out)
    elif command == "announce":
        print(f"announce: {args.host}: sent to {answer['sent']} sessions", file=out)
    elif command == "reload":
        print(f"reload: {len(answer['live'])} changes applied" + "".join(f"\n  {key}" for key in answer["live"]),
              file=out)
        if answer["restart"]:
            print(f"reload: {len(answer['restart'])} changes need a restart (the running values stay)"
                  + "".join(f"\n  {key}" for key in answer["restart"]), file=out)


def run(args, out):
    config = configuration.load(args.config)
    if args.command == "check":
        _check(config, out)
        return
    if args.command in ("migrate", "copy-sqlite-to-postgresql"):
        _postgresql_command(config, args, out)
        return
    if args.command in SERVER_COMMANDS:
        _server_command(config, args, out)
        return
    if args.command in ("import", "import-prosody") and ask_server(config, {"command": "status"}) is not None:
        raise CommandError(f"{args.command}: the server is running; stop it first (it keeps rosters and block lists "
                           "in memory)")
    if args.command == "deluser":
        host, user = _account(config, args.jid)
        answer = ask_server(config, {"command": "deluser", "jid": f"{user}@{host}"})
        if answer is not None:
            if not answer["ok"]:
                raise CommandError(answer["error"])
            _show("deluser", args, answer, out)
            return
    waiting = Waiting()
    wait = waiting.result
    storage = open_storage(config, waiting)
    accounts = Accounts(storage, sip_digest_algorithms(config))
    try:
        if args.command == "listusers":
            hosts = [args.host] if args.host else list(config.hosts)
            for host in hosts:
                if host not in config.hosts:
                    raise CommandError(f"{host!r} is not a host of this server")
                store = DIRECTORY_STORE if config.hosts[host].ldap else STORE
                for user in wait(storage.users(host, store)):
                    print(f"{user}@{host}", file=out)
            return
        if args.command == "export":
            _backup(storage, config, args, out, wait)
            return
        if args.command == "import":
            _restore(storage, config, args, out, wait)
            return
        if args.command == "import-prosody":
            _import_prosody(storage, config, args, out, wait)
            return
        if args.command == "sms-held":
            _sms_held(storage, config, out, wait)
            return
        host, user = _account(config, args.jid)
        if args.command == "notify":
            _notify(storage, config, host, user, args, out, wait)
            return
        if args.command == "archive-export":
            _export(storage, host, user, args.output, out, wait)
            return
        if args.command == "archive-delete":
            before = _moment(args.before) if args.before else None
            removed = wait(storage.archive_remove(host, user, before))
            print(f"archive-delete: {user}@{host}: {removed} messages deleted", file=out)
            return
        if config.hosts[host].ldap:
            raise CommandError(f"the accounts of {host} are kept in its LDAP directory [ldap.{config.hosts[host].ldap}]")
        if args.command == "adduser":
            wait(accounts.create(host, user, _password(args)))
        elif args.command == "passwd":
            wait(accounts.set_password(host, user, _password(args)))
        elif args.command == "deluser":
            wait(accounts.delete(host, user))
        print(f"{args.command}: {user}@{host}: done", file=out)
    finally:
        wait(storage.close())


def _check(config, out):
    """Print what ``checks.check`` finds; CommandError (exit 1) when an error is among it, warnings alone pass."""
    findings = checks.check(config)
    for finding in findings:
        print(finding, file=out)
    errors = sum(finding.severity == "error" for finding in findings)
    if errors:
        raise CommandError(f"check: {errors} errors, {len(findings) - errors} warnings in {config.source}")
    warnings = f", {len(findings)} warnings" if findings else ""
    print(f"{config.source}: configuration is valid{warnings}; hosts: {', '.join(config.hosts)}", file=out)


def _sms_held(storage, config, out, wait):
    """List the SMS parts held in the queue (docs/scaling.md): their submit_sm may have reached the SMSC, so
    they are not sent again by themselves.  Reads only: safe beside a running server."""
    domain = config.sms.domain.lower()
    held = 0
    for key in wait(storage.users(domain, SMS_QUEUE_STORE)):
        doc = wait(storage.get(domain, key, SMS_QUEUE_STORE))
        for index, part in enumerate((doc or {}).get("parts", [])):
            if part["state"] == "held":
                held += 1
                print(f"{key}\tpart {index + 1} of {len(doc['parts'])}\tto {doc['number']}\tSMSC {part['smsc']}",
                      file=out)
    print(f"sms-held: {held} parts held", file=out)


def _notify(storage, config, host, user, args, out, wait):
    """Show, then change, a user's offline notification preferences."""
    preferences = NotificationPreferences(storage, config.hosts.__getitem__)
    changes = {}
    for key in ("policy", "mobile", "email"):
        value = getattr(args, key)
        if value is not None:
            changes[key] = None if value in ("", "default") else value
    if changes:
        wait(preferences.update(host, user, **changes))
    current = wait(preferences.get(host, user))
    channels = wait(preferences.channels(host, user))
    mobile = wait(preferences.mobile(host, user))
    if not mobile:
        state = ""
    elif wait(Verification(storage, None, config.sms, preferences).verified_number(host, user)):
        state = " (verified)"
    else:
        state = f" (unverified: the user sends 'verify' to {config.sms.domain})"
    print(f"{user}@{host}: policy {current['policy'] or 'default'} ({', '.join(sorted(channels)) or 'none'}), "
          f"mobile {mobile or '-'}{state}, email {current['email'] or '-'}", file=out)


def _postgresql_command(config, args, out):
    """``migrate``: bring the PostgreSQL schema to this version; ``copy-sqlite-to-postgresql``: copy the
    SQLite database into it (docs/scaling.md)."""
    if config.storage.backend != "postgresql":
        raise CommandError(f"{args.command}: {config.source}: [storage] backend is {config.storage.backend!r}, "
                           "not 'postgresql' (the SQLite schema is brought up to date when the file is opened)")
    import sqlite3

    import psycopg

    from bridge.core.storage import postgresql_ops, sqlite_ops

    try:
        with psycopg.connect(config.storage.postgresql_conninfo(), autocommit=True,
                             connect_timeout=max(2, round(config.storage.postgresql_connect_timeout_seconds))) as conn:
            if args.command == "migrate":
                before, after = postgresql_ops.migrate(conn)
                print(f"migrate: schema version {before} -> {after}" if before != after
                      else f"migrate: schema version {after}, nothing to do", file=out)
                return
            path = args.sqlite or config.data_path(config.storage.path)
            if not os.path.isfile(path):
                raise CommandError(f"{path}: no such SQLite database")
            source = sqlite_ops.connect(path)
            try:
                copied = postgresql_ops.copy_from_sqlite(source, conn)
            finally:
                source.close()
    except postgresql_ops.SchemaError as error:
        raise CommandError(str(error))
    except (psycopg.Error, sqlite3.Error) as error:
        raise CommandError(f"{args.command}: {str(error).strip()}")
    print(f"copy-sqlite-to-postgresql: {path}: " + ", ".join(f"{rows} {table} rows" for table, rows in copied.items()),
          file=out)


def _backup(storage, config, args, out, wait):
    """Every account of the server (or of one host) as a XEP-0227 file, created 0600."""
    if args.host is not None and args.host not in config.hosts:
        raise CommandError(f"{args.host!r} is not a host of this server")
    hosts = [args.host] if args.host else [name for name in config.hosts if not config.hosts[name].ldap]
    root, count = wait(backup.export_hosts(storage, hosts))
    try:
        with os.fdopen(os.open(args.file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(b"<?xml version='1.0' encoding='UTF-8'?>\n" + serialize(root).encode("utf-8") + b"\n")
    except OSError as error:
        raise CommandError(f"{args.file}: {error.strerror}")
    print(f"export: {count} accounts of {', '.join(hosts)} written to {args.file}", file=out)


def _restore(storage, config, args, out, wait):
    """The accounts of a XEP-0227 file, into storage; existing accounts are left as they are."""
    try:
        with open(args.file, "rb") as handle:
            data = handle.read(backup.MAX_IMPORT_BYTES + 1)
    except OSError as error:
        raise CommandError(f"{args.file}: {error.strerror}")
    try:
        root = backup.read_document(data, os.path.dirname(os.path.abspath(args.file)))
    except backup.BackupError as error:
        raise CommandError(f"{args.file}: {error}")
    _report(wait(backup.import_document(storage, root, config)), out)


def _import_prosody(storage, config, args, out, wait):
    """The accounts of a Prosody data folder (bridge.core.prosody), imported as from a XEP-0227 file."""
    try:
        root, unreadable = prosody.read_data_folder(args.folder)
    except prosody.LuaError as error:
        raise CommandError(f"import-prosody: {error}")
    imported, skipped, refused = wait(backup.import_document(storage, root, config))
    _report((imported, skipped, unreadable + refused), out)


def _report(outcome, out):
    """What an import did, one line per account not imported."""
    imported, skipped, refused = outcome
    for jid, reason in skipped:
        print(f"import: {jid}: skipped, {reason}", file=out)
    for jid, reason in refused:
        print(f"import: {jid}: refused, {reason}", file=out)
    print(f"import: {len(imported)} accounts imported, {len(skipped)} skipped, {len(refused)} refused", file=out)
    if refused:
        raise CommandError(f"import: {len(refused)} accounts could not be imported")


# Records read at a time while exporting an archive.
EXPORT_PAGE = 1000


def _moment(text):
    try:
        return parse_stamp(text)
    except QueryError as error:
        raise CommandError(error.text)


def _export(storage, host, user, path, out, wait):
    """One user's archive, oldest first, as JSON lines (docs/features.md), to ``path`` (created 0600) or ``out``."""
    if path:
        try:
            handle = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8")
        except OSError as error:
            raise CommandError(f"{path}: {error.strerror}")
    else:
        handle = out
    after, exported = None, 0
    try:
        while True:
            page = wait(storage.archive_query(host, user, ArchiveQuery(page_after=after, limit=EXPORT_PAGE)))
            for record in page.records:
                party = record.with_jid + (f"/{record.with_resource}" if record.with_resource else "")
                print(json.dumps({"id": record.id, "timestamp": stamp(record.timestamp), "with": party,
                                  "direction": record.direction, "stanza": record.stanza}), file=handle)
            exported += len(page.records)
            if page.complete:
                break
            after = page.records[-1].id
    finally:
        if path:
            handle.close()
    if path:
        print(f"archive-export: {user}@{host}: {exported} messages written to {path}", file=out)


def parser():
    top = argparse.ArgumentParser(prog="bridgectl", description="Administer a bridge server.")
    top.add_argument("--config", "-c", help="TOML configuration file (default: embedded defaults)")
    commands = top.add_subparsers(dest="command", required=True)
    for name, text in (("adduser", "create an account"), ("passwd", "change an account's password")):
        command = commands.add_parser(name, help=text)
        command.add_argument("jid")
        command.add_argument("--password-file", help="read the password from the first line of this file")
    commands.add_parser("deluser", help="delete an account and all its data, ending its sessions").add_argument("jid")
    commands.add_parser("listusers", help="list accounts").add_argument("host", nargs="?")
    commands.add_parser("check", help="validate the configuration")
    commands.add_parser("status", help="the running server: uptime, sessions, memory, queues")
    commands.add_parser("sessions", help="the running server's sessions").add_argument(
        "filter", nargs="?", metavar="HOST|JID", help="only those of this host, account or resource")
    commands.add_parser("kick", help="end an account's sessions (or one resource's)").add_argument("jid")
    announce = commands.add_parser("announce", help="send a headline message to every online user of a host")
    announce.add_argument("host")
    announce.add_argument("message")
    commands.add_parser("reload", help="make the running server read its configuration file again")
    commands.add_parser("migrate", help="bring the PostgreSQL database's schema to this version")
    copy = commands.add_parser("copy-sqlite-to-postgresql",
                               help="copy a SQLite database into the configured, migrated and empty PostgreSQL one")
    copy.add_argument("--sqlite", help="the SQLite file (default: [storage] path under data_dir)")
    notify = commands.add_parser("notify", help="show or set how an offline user hears of messages")
    notify.add_argument("jid")
    notify.add_argument("--policy", choices=("default", *POLICIES),
                        help="channels for this user; 'default' follows the host's offline_notification")
    notify.add_argument("--mobile", help="mobile number in international form (+15551234567), unverified until "
                                         "the user verifies it (docs/sms.md); '' clears")
    notify.add_argument("--email", help="email address; '' clears")
    export = commands.add_parser("archive-export", help="write a user's message archive as JSON lines")
    export.add_argument("jid")
    export.add_argument("--output", "-o", help="file to write (created 0600); default: standard output")
    backup_command = commands.add_parser("export", help="write every account's data as a XEP-0227 file")
    backup_command.add_argument("file", help="the file to write (created 0600)")
    backup_command.add_argument("--host", help="only this host's accounts")
    commands.add_parser("sms-held", help="list the SMS parts held because their submit_sm may have reached the SMSC")
    commands.add_parser("import", help="read accounts from a XEP-0227 file (the server stopped)").add_argument("file")
    commands.add_parser("import-prosody", help="import the accounts of a Prosody data folder (the server stopped)"
                        ).add_argument("folder", help="Prosody's data_path (/var/lib/prosody)")
    delete = commands.add_parser("archive-delete", help="delete a user's message archive")
    delete.add_argument("jid")
    delete.add_argument("--before", help="only messages older than this XEP-0082 time (2026-01-01T00:00:00Z)")
    return top


def main(argv=None, out=sys.stdout):
    args = parser().parse_args(argv)
    try:
        run(args, out)
    except configuration.ConfigError as error:
        print(f"invalid configuration:\n{error}", file=sys.stderr)
        return 1
    except (CommandError, AccountError) as error:
        print(f"bridgectl: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
