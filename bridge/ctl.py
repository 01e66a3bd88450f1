"""bridgectl: account administration and configuration checks.

Works on the same configuration and storage as the server; with SQLite in
WAL mode it may run while the server does.  Storage answers from its own
thread; the tool waits for each answer (``Waiting``) rather than run a reactor.
"""

import argparse
import getpass
import queue
import sys

from twisted.words.protocols.jabber.jid import InvalidFormat, JID

from bridge import config as configuration
from bridge.core.accounts import Accounts, AccountError
from bridge.core.notifications import POLICIES, NotificationPreferences
from bridge.core.storage import open_storage


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

    def callFromThread(self, function, *args):
        self._answers.put((function, args))

    def result(self, deferred):
        """The result of ``deferred``, waiting for the storage's answers until it has fired."""
        box = []
        deferred.addBoth(box.append)
        while not box:
            function, args = self._answers.get()
            function(*args)
        if hasattr(box[0], "raiseException"):
            box[0].raiseException()
        return box[0]


def run(args, out):
    config = configuration.load(args.config)
    if args.command == "check":
        print(f"{config.source}: configuration is valid; hosts: {', '.join(config.hosts)}", file=out)
        return
    waiting = Waiting()
    wait = waiting.result
    storage = open_storage(config, waiting)
    accounts = Accounts(storage)
    try:
        if args.command == "listusers":
            hosts = [args.host] if args.host else list(config.hosts)
            for host in hosts:
                if host not in config.hosts:
                    raise CommandError(f"{host!r} is not a host of this server")
                for user in wait(accounts.users(host)):
                    print(f"{user}@{host}", file=out)
            return
        host, user = _account(config, args.jid)
        if args.command == "notify":
            _notify(storage, config, host, user, args, out, wait)
            return
        if args.command == "adduser":
            wait(accounts.create(host, user, _password(args)))
        elif args.command == "passwd":
            wait(accounts.set_password(host, user, _password(args)))
        elif args.command == "deluser":
            wait(accounts.delete(host, user))
        print(f"{args.command}: {user}@{host}: done", file=out)
    finally:
        wait(storage.close())


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
    print(f"{user}@{host}: policy {current['policy'] or 'default'} ({', '.join(sorted(channels)) or 'none'}), "
          f"mobile {wait(preferences.mobile(host, user)) or '-'}, email {current['email'] or '-'}", file=out)


def parser():
    top = argparse.ArgumentParser(prog="bridgectl", description="Administer a bridge server.")
    top.add_argument("--config", "-c", help="TOML configuration file (default: embedded defaults)")
    commands = top.add_subparsers(dest="command", required=True)
    for name, text in (("adduser", "create an account"), ("passwd", "change an account's password")):
        command = commands.add_parser(name, help=text)
        command.add_argument("jid")
        command.add_argument("--password-file", help="read the password from the first line of this file")
    commands.add_parser("deluser", help="delete an account and all its data").add_argument("jid")
    commands.add_parser("listusers", help="list accounts").add_argument("host", nargs="?")
    commands.add_parser("check", help="validate the configuration")
    notify = commands.add_parser("notify", help="show or set how an offline user hears of messages")
    notify.add_argument("jid")
    notify.add_argument("--policy", choices=("default", *POLICIES),
                        help="channels for this user; 'default' follows the host's offline_notification")
    notify.add_argument("--mobile", help="mobile number in international form (+15551234567); '' clears")
    notify.add_argument("--email", help="email address; '' clears")
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
