"""SMPP v3.4 PDUs: framing by command_length and smpplib's codec.

smpplib is used as a codec only.  Its ``make_pdu`` ignores a ``sequence=``
keyword and ``parse_pdu`` advances the sequence of the ``client`` it is
given, so each call here gets a throwaway counter and the sequence is set
on the PDU afterwards.
"""

import struct

from smpplib import exceptions as smpp_exceptions, smpp

HEADER = struct.Struct(">LLLL")
MAX_PDU_BYTES = 65536

ESME_ROK = 0x00
ESME_RINVMSGLEN = 0x01
ESME_RINVCMDLEN = 0x02
ESME_RINVCMDID = 0x03
ESME_RINVBNDSTS = 0x04
ESME_RALYBND = 0x05
ESME_RSYSERR = 0x08
ESME_RMSGQFUL = 0x14
ESME_RTHROTTLED = 0x58
ESME_RX_T_APPN = 0x64
# Statuses after which the same submit_sm may succeed later.
TRANSIENT = frozenset({ESME_RSYSERR, ESME_RMSGQFUL, ESME_RX_T_APPN, 0x0D, 0x45, 0x61, 0xFE})

GENERIC_NACK = 0x80000000


class _Counter:
    """What smpplib's codec wants as ``client``: a sequence it may advance."""

    sequence = 0

    def next_sequence(self):
        self.sequence += 1
        return self.sequence


class PDUError(Exception):
    """A PDU that cannot be decoded; ``status`` is the generic_nack status to answer with."""

    def __init__(self, status, sequence, text):
        super().__init__(text)
        self.status = status
        self.sequence = sequence


def encode(command, sequence, status=ESME_ROK, **fields):
    """The bytes of one PDU."""
    pdu = smpp.make_pdu(command, client=_Counter(), **fields)
    pdu.sequence = sequence
    pdu.status = status
    return pdu.generate()


def header(data):
    """(command_length, command_id, command_status, sequence_number) of a PDU's first 16 bytes."""
    return HEADER.unpack_from(data)


def decode(data):
    """The smpplib PDU object for one whole PDU; PDUError when it cannot be read."""
    _, command_id, _, sequence = header(data)
    try:
        return smpp.parse_pdu(data, client=_Counter())
    except smpp_exceptions.UnknownCommandError:
        raise PDUError(ESME_RINVCMDID, sequence, f"unknown command id 0x{command_id:08x}")
    except Exception as error:  # the codec raises whatever a truncated field makes it raise
        raise PDUError(ESME_RINVMSGLEN if command_id & 0x80000000 == 0 else ESME_RSYSERR, sequence,
                       f"malformed PDU 0x{command_id:08x}: {error!r}")


class FramingError(ValueError):
    """An impossible command_length: the stream cannot be cut any further.

    ``frames`` are the whole PDUs that came before it in the same data, to be
    handled before the link is closed, as they would be had they come in an
    earlier read.
    """

    def __init__(self, text, frames):
        super().__init__(text)
        self.frames = frames


class Framer:
    """Cuts a byte stream into PDUs by their big-endian command_length (which counts itself)."""

    def __init__(self, limit=MAX_PDU_BYTES):
        self.limit = limit
        self._buffer = bytearray()

    def feed(self, data):
        """The whole PDUs now available; FramingError when a length is impossible."""
        self._buffer += data
        found = []
        while len(self._buffer) >= 4:
            (length,) = struct.unpack_from(">L", self._buffer)
            if length < 16 or length > self.limit:
                raise FramingError(f"impossible command_length {length}", found)
            if len(self._buffer) < length:
                break
            found.append(bytes(self._buffer[:length]))
            del self._buffer[:length]
        return found


def text_field(value):
    """A C-octet string field as str (smpplib gives bytes)."""
    if value is None:
        return ""
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)
