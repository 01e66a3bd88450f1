"""The link between a multiplexor and a node (docs/scaling.md, Multiplexor): frames and the handshake, no I/O.

One link carries many client connections.  A frame is a kind (1 byte), a
client id (4 bytes, big endian), a payload length (4 bytes) and the payload:

- ``OPEN``: an XMPP client is connected (payload: its address, ``host:port``);
- ``OPEN_HTTP``: an HTTP client (BOSH, WebSocket) is connected (payload: the same);
- ``DATA``: bytes of that client's stream, either way;
- ``CLOSE``: that connection is over, either way;
- ``PAUSE`` / ``RESUME``: stop / start reading from that client (flow control);
- ``CHALLENGE``, ``AUTH``, ``WELCOME``: the handshake (client id 0).

The handshake proves the shared secret both ways without sending it: the node
sends a random nonce, the mux answers its own nonce and an HMAC of both, the
node answers its HMAC of both.  No client frame is taken before it is done.
"""

import hashlib
import hmac
import os
import struct

OPEN, DATA, CLOSE, PAUSE, RESUME, CHALLENGE, AUTH, WELCOME, OPEN_HTTP = range(1, 10)
KINDS = frozenset((OPEN, DATA, CLOSE, PAUSE, RESUME, CHALLENGE, AUTH, WELCOME, OPEN_HTTP))
HEADER = struct.Struct("!BII")
NONCE_BYTES = 32
AUTH_BYTES = NONCE_BYTES + 32  # a nonce and an HMAC-SHA256
MAX_ADDRESS_BYTES = 256


class FrameError(Exception):
    """The peer broke the framing: the link is dropped."""


def frame(kind, client_id, payload=b""):
    return HEADER.pack(kind, client_id, len(payload)) + payload


def data_frames(client_id, data, max_payload_bytes):
    """``data`` for one client as DATA frames of at most ``max_payload_bytes`` each."""
    return b"".join(frame(DATA, client_id, data[start:start + max_payload_bytes])
                    for start in range(0, len(data), max_payload_bytes))


class FrameDecoder:
    """Bytes in, ``(kind, client_id, payload)`` out; a payload over ``max_payload_bytes`` or an unknown
    kind raises FrameError, so what it holds is never more than one header and one payload."""

    def __init__(self, max_payload_bytes):
        self.max_payload_bytes = max_payload_bytes
        self._buffer = bytearray()

    def feed(self, data):
        self._buffer += data
        frames = []
        while len(self._buffer) >= HEADER.size:
            kind, client_id, length = HEADER.unpack_from(self._buffer)
            if kind not in KINDS:
                raise FrameError(f"unknown frame kind {kind}")
            if length > self.max_payload_bytes:
                raise FrameError(f"frame of {length} bytes, over the limit of {self.max_payload_bytes}")
            end = HEADER.size + length
            if len(self._buffer) < end:
                break
            frames.append((kind, client_id, bytes(self._buffer[HEADER.size:end])))
            del self._buffer[:end]
        return frames


def new_nonce():
    return os.urandom(NONCE_BYTES)


def proof(secret, role, node_nonce, mux_nonce):
    """What ``role`` (b"mux" or b"node") sends to prove it holds ``secret`` on this link."""
    return hmac.new(secret, b"bridge-mux " + role + b" " + node_nonce + mux_nonce, hashlib.sha256).digest()


def auth_payload(secret, node_nonce):
    """The mux's answer to a CHALLENGE: its nonce and its proof; and the nonce, to check the WELCOME."""
    mux_nonce = new_nonce()
    return mux_nonce + proof(secret, b"mux", node_nonce, mux_nonce), mux_nonce


def check_auth(secret, node_nonce, payload):
    """The mux nonce of a valid AUTH payload, or None."""
    mux_nonce, given = payload[:NONCE_BYTES], payload[NONCE_BYTES:]
    if len(mux_nonce) != NONCE_BYTES or not hmac.compare_digest(given, proof(secret, b"mux", node_nonce, mux_nonce)):
        return None
    return mux_nonce


def check_welcome(secret, node_nonce, mux_nonce, payload):
    """Whether a WELCOME payload proves the node holds ``secret``."""
    return hmac.compare_digest(payload, proof(secret, b"node", node_nonce, mux_nonce))


def parse_address(payload):
    """An OPEN payload as (host, port); FrameError if it is not ``host:port``."""
    if len(payload) > MAX_ADDRESS_BYTES:
        raise FrameError("client address too long")
    host, _, port = payload.decode("ascii", "replace").rpartition(":")
    if not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise FrameError(f"malformed client address {payload[:64]!r}")
    return host.strip("[]"), int(port)
