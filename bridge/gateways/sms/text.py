"""SMS text: GSM 03.38 or UCS-2, split into concatenated parts; phone numbers (pure functions).

A text that the GSM 7-bit default alphabet (with its escape table) can
carry is sent with data_coding 0, one septet per octet as SMPP carries it;
any other text is sent as UCS-2 (UTF-16BE, data_coding 8).  A text longer
than one SMS is split into parts that each start with an 8-bit reference
concatenation UDH (IEI 0x00).  A part never ends inside a GSM escape
sequence nor between the two halves of a UTF-16 surrogate pair.  A phone
number has one spelling, the international form ('+15551234567').
"""

import re

DATA_CODING_GSM = 0
DATA_CODING_LATIN1 = 3
DATA_CODING_UCS2 = 8
ESM_CLASS_UDHI = 0x40

GSM_SINGLE = 160  # septets in one SMS
GSM_PART = 153  # septets in one part after the 6-octet UDH
UCS2_SINGLE = 140  # octets
UCS2_PART = 134
ESCAPE = 0x1B

# The GSM 03.38 default alphabet, by code (0x1B is the escape to the extension table).
_BASIC = ("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
          "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
# The extension table: escape + code.
_EXTENSION = {"\f": 0x0A, "^": 0x14, "{": 0x28, "}": 0x29, "\\": 0x2F, "[": 0x3C, "~": 0x3D, "]": 0x3E,
              "|": 0x40, "€": 0x65}

GSM_ENCODE = {char: bytes([code]) for code, char in enumerate(_BASIC) if code != ESCAPE}
GSM_ENCODE.update({char: bytes([ESCAPE, code]) for char, code in _EXTENSION.items()})
_GSM_DECODE_BASIC = {code: char for code, char in enumerate(_BASIC) if code != ESCAPE}
_GSM_DECODE_EXTENSION = {code: char for char, code in _EXTENSION.items()}

assert len(_BASIC) == 128


def fits_gsm(text):
    """True when every character of ``text`` is in the GSM 03.38 alphabet or its extension."""
    return all(char in GSM_ENCODE for char in text)


def gsm_encode(text):
    """``text`` in GSM 03.38, one septet per octet; escaped characters take two."""
    return b"".join(GSM_ENCODE[char] for char in text)


def gsm_decode(data):
    """GSM 03.38 septets (one per octet) to text; unknown codes become '?'."""
    out = []
    escaped = False
    for code in data:
        code &= 0x7F
        if escaped:
            out.append(_GSM_DECODE_EXTENSION.get(code, " "))
            escaped = False
        elif code == ESCAPE:
            escaped = True
        else:
            out.append(_GSM_DECODE_BASIC.get(code, "?"))
    return "".join(out)


def decode(data, data_coding):
    """The text of a received short message (its UDH already removed)."""
    if data_coding == DATA_CODING_UCS2:
        return data.decode("utf-16-be", "replace")
    if data_coding == DATA_CODING_LATIN1:
        return data.decode("latin-1")
    if data_coding == 1:
        return data.decode("ascii", "replace")
    return gsm_decode(data)


def _units(text, gsm):
    """``text`` as indivisible encoded units: one per character (escapes and surrogate pairs whole)."""
    if gsm:
        return [GSM_ENCODE[char] for char in text]
    return [char.encode("utf-16-be") for char in text]


def _pack(units, size):
    """Group units into chunks of at most ``size`` octets, never splitting a unit."""
    chunks, current, used = [], [], 0
    for unit in units:
        if used + len(unit) > size:
            chunks.append(b"".join(current))
            current, used = [], 0
        current.append(unit)
        used += len(unit)
    if current or not chunks:
        chunks.append(b"".join(current))
    return chunks


def udh(reference, total, number):
    """The concatenation UDH with an 8-bit reference (IEI 0x00)."""
    return bytes([0x05, 0x00, 0x03, reference & 0xFF, total, number])


def split(text, reference, max_parts=255):
    """(data_coding, esm_class, [short_message]) for ``text``.

    One part when it fits one SMS; else parts with a concatenation UDH.
    Beyond ``max_parts`` parts the text is cut (at a character boundary).
    """
    gsm = fits_gsm(text)
    coding = DATA_CODING_GSM if gsm else DATA_CODING_UCS2
    single, part = (GSM_SINGLE, GSM_PART) if gsm else (UCS2_SINGLE, UCS2_PART)
    units = _units(text, gsm)
    if sum(len(unit) for unit in units) <= single:
        return coding, 0, [b"".join(units)]
    chunks = _pack(units, part)[:max(1, min(max_parts, 255))]
    if len(chunks) == 1:
        return coding, 0, chunks
    total = len(chunks)
    return coding, ESM_CLASS_UDHI, [udh(reference, total, number) + chunk
                                    for number, chunk in enumerate(chunks, start=1)]


def parse_udh(short_message):
    """(concatenation (reference, total, number) or None, body) of a message with UDHI set."""
    if not short_message:
        return None, b""
    length = short_message[0]
    header, body = short_message[1:1 + length], short_message[1 + length:]
    concat = None
    position = 0
    while position + 2 <= len(header):
        iei, size = header[position], header[position + 1]
        data = header[position + 2:position + 2 + size]
        if iei == 0x00 and size == 3 and len(data) == 3:
            concat = (data[0], data[1], data[2])
        elif iei == 0x08 and size == 4 and len(data) == 4:
            concat = ((data[0] << 8) | data[1], data[2], data[3])
        position += 2 + size
    return concat, body


def with_sender(name, body):
    """The SMS text: the sender's name before the body ("Alice: are you coming?")."""
    body = body.strip()
    return f"{name}: {body}" if name else body


def display_name(user):
    """A user name as shown before the body: "alice" -> "Alice"."""
    return user[:1].upper() + user[1:] if user else user


_NUMBER = re.compile(r"^\+[0-9]{3,20}$")


def normalize_number(text):
    """'+15551234567' for the ways a number is written; None when it is not a number."""
    if not text:
        return None
    cleaned = re.sub(r"[\s\-().]", "", str(text))
    if cleaned.startswith("00"):
        cleaned = "+" + cleaned[2:]
    elif not cleaned.startswith("+"):
        cleaned = "+" + cleaned
    return cleaned if _NUMBER.match(cleaned) else None
