"""The data folder and the secrets kept in it: folders 0700, files 0600.

``data_dir`` holds the database, the generated TLS key and the server's
secret.  Whoever reads them can pose as the server or attack every account's
password offline, so bridge creates its folders for its own user only and
writes its secret files 0600.  A folder that exists already is left as the
administrator made it (a backup group may read it on purpose), but one that
other users may enter is reported in the log at every start.
"""

import os
import stat

from twisted.logger import Logger

log = Logger()

SECRET_BYTES = 32


def private_folder(path):
    """Create ``path`` (and its parents) for this user only, or warn when it exists open to others."""
    try:
        os.makedirs(path, mode=0o700)
    except FileExistsError:
        _warn_if_open(path, "folder", "700")


def write_private_file(path, data):
    """Write ``data`` to ``path``, readable by this user only (0600, whatever mode the file had)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(data)


def server_secret(path):
    """The server's secret: ``SECRET_BYTES`` random bytes kept in ``path`` (hex, 0600), made at the first start.

    Values derived from it stay the same across restarts.  A file that holds
    no such secret is an error naming it (deleting it makes a new secret).
    """
    try:
        with open(path, encoding="ascii") as handle:
            text = handle.read().strip()
    except FileNotFoundError:
        secret = os.urandom(SECRET_BYTES)
        write_private_file(path, secret.hex().encode("ascii") + b"\n")
        log.info("generated the server's secret at {path}", path=os.path.abspath(path))
        return secret
    except ValueError:
        text = ""
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) < SECRET_BYTES:
        raise ValueError(f"{path}: does not hold a secret of {SECRET_BYTES} hex-encoded bytes; "
                         "delete it to have a new one made")
    _warn_if_open(path, "file", "600")
    return secret


def _warn_if_open(path, kind, wanted):
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        log.warn("the {kind} {path} holds secrets but other users may use it (mode {mode}): chmod {wanted} it",
                 kind=kind, path=os.path.abspath(path), mode=f"{mode:03o}", wanted=wanted)
