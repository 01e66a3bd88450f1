"""The restricted XML parser of an XMPP stream: bytes in, stream events out.

RFC 6120 section 11.1 forbids DTDs, entity declarations, comments and
processing instructions in a stream.  Twisted's stock expat stream expands
internal entities (a "billion laughs" document exhausts memory), so this
parser drives expat itself, refuses all four with ``restricted-xml``, and
counts the bytes of each top-level stanza against a size limit.  It does no
I/O: the stream protocols feed it and receive callbacks.

RFC 6120 section 11.6 allows UTF-8 only.  The parser decodes the bytes itself
and hands expat text, so that expat never picks another encoding from a byte
order mark, from bytes that look like UTF-16, or from an XML declaration.
"""

import codecs
import operator
import re
from xml.parsers import expat
from xml.sax.saxutils import quoteattr

from twisted.words.xish import domish

# What expat says of a document whose root is still open when it is told the input has ended.
_ROOT_STILL_OPEN = expat.errors.codes[expat.errors.XML_ERROR_NO_ELEMENTS]

NS_STREAMS = "http://etherx.jabber.org/streams"
NS_XML = "http://www.w3.org/XML/1998/namespace"
# Deeper nesting than any real payload has would only serve to exhaust the
# recursion of serialisers.
MAX_DEPTH = 64


class StreamError(Exception):
    """A condition that ends the stream (RFC 6120 section 4.9.3)."""

    def __init__(self, condition, text=None):
        super().__init__(condition if text is None else f"{condition}: {text}")
        self.condition = condition
        self.text = text


def _split_name(name):
    uri, _, local = name.rpartition(" ")
    return (uri or None), local


class StreamParser:
    """Parses one XML stream; ``reset`` starts a new one (after TLS or SASL).

    ``on_open(element)`` receives the stream header, ``on_element(element)``
    each complete top-level child, ``on_close()`` the stream's end tag.
    Elements in ``content_namespace`` (``jabber:client``, ``jabber:server``)
    are given no namespace, so that a stanza carries none inside the router
    and takes the default namespace of whichever stream it leaves by.
    """

    __slots__ = ("on_open", "on_element", "on_close", "content_namespace", "stanza_size_limit_bytes", "dormancy",
                 "_parser", "_declarations", "_resume_tag", "_offset", "_decoder", "_depth", "_open",
                 "_stanza_start", "_fed", "_mark")

    def __init__(self, on_open, on_element, on_close, stanza_size_limit_bytes, content_namespace=None,
                 dormancy=None):
        self.on_open = on_open
        self.content_namespace = content_namespace
        self.on_element = on_element
        self.on_close = on_close
        self.stanza_size_limit_bytes = stanza_size_limit_bytes
        self.dormancy = dormancy
        self.reset()

    def reset(self):
        self._parser = self._new_parser()
        self._parser.StartNamespaceDeclHandler = self._declared
        self._declarations = []
        # The start tag that puts a new expat parser back inside this stream
        # (see ``rest``), once the stream has opened; None when it cannot.
        self._resume_tag = None
        # Added to expat's byte indexes to count from the start of the stream.
        self._offset = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._depth = 0
        # The open elements of the stanza being parsed, innermost last.  A
        # child is appended to its parent without a back reference (domish's
        # addChild sets ``parent``): a parsed stanza then holds no reference
        # cycle, and is freed as soon as it is delivered.
        self._open = []
        self._stanza_start = None
        self._fed = 0
        # Byte index of the last event at stream level (header, end of a
        # stanza, whitespace): an unfinished tag is measured from there.
        self._mark = 0

    def _new_parser(self):
        parser = expat.ParserCreate(namespace_separator=" ")
        parser.buffer_text = True
        parser.ordered_attributes = False
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._text
        parser.StartDoctypeDeclHandler = self._refuse
        parser.EntityDeclHandler = self._refuse
        parser.CommentHandler = self._refuse
        parser.ProcessingInstructionHandler = self._refuse
        parser.XmlDeclHandler = self._declaration
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        return parser

    def rest(self):
        """Let go of the expat parser while the stream is between stanzas with nothing unparsed.

        An expat parser holds about 20 KiB (its text buffer, name and
        namespace tables), most of what an idle session costs; the next
        ``feed`` builds a new one, put back inside the stream by a start
        tag with the namespace declarations of the stream's header.
        """
        if (self._parser is not None and self._depth == 1 and self._resume_tag is not None
                and self._parser.CurrentByteIndex + self._offset == self._fed):
            self._parser = None

    def _wake(self):
        parser = self._new_parser()
        parser.StartElementHandler = None
        parser.Parse(self._resume_tag, False)
        parser.StartElementHandler = self._start
        self._offset = self._fed - parser.CurrentByteIndex
        self._parser = parser

    def feed(self, data):
        """Parse ``data``; raises ``StreamError`` for anything a stream must not hold."""
        if self._parser is None:
            self._wake()
        if self.dormancy is not None:
            self.dormancy.fed(self)
        self._fed += len(data)
        fault = None
        try:
            text = self._decoder.decode(data)
        except UnicodeDecodeError as error:
            text, fault = error.object[:error.start].decode("utf-8"), "the stream is not UTF-8"
        if "\x00" in text:
            # Never XML; at the start of a document expat would take it for UTF-16.
            text, fault = text[:text.index("\x00")], "a NUL character"
        # What precedes a fault is parsed first, so that the first fault is the one reported.
        try:
            self._parser.Parse(text, False)
        except expat.ExpatError as error:
            raise StreamError("not-well-formed", str(error)) from None
        if fault:
            raise StreamError("not-well-formed", fault)
        start = self._mark if self._stanza_start is None else self._stanza_start
        if self._fed - start > self.stanza_size_limit_bytes:
            raise StreamError("policy-violation", "stanza too large")

    def close(self):
        """Let go of the expat parser and the callbacks: nothing more is parsed.

        The expat parser's handlers are this object's methods, and the
        callbacks usually lead back to the stream's owner; letting go of
        them when the stream ends frees it all at once, rather than in the
        cycle collector's next full pass.
        """
        self._parser = None
        self.on_open = self.on_element = self.on_close = None

    def ends_between_stanzas(self):
        """Whether everything fed so far is complete: nothing after the last stanza or header but whitespace.

        It ends this parse (a partial tag shows only when expat is told the
        input is over): ``reset`` must follow.
        """
        if self._depth > 1:
            return False
        if self._parser is None:
            return True  # resting: nothing was left unparsed
        try:
            self._parser.Parse(b"", True)
        except expat.ExpatError as error:
            return error.code == _ROOT_STILL_OPEN
        except StreamError:
            return False
        return False

    def _refuse(self, *args):
        raise StreamError("restricted-xml", "DTDs, entities, comments and processing instructions are not allowed")

    def _declaration(self, version, encoding, standalone):
        if encoding is not None and encoding.lower() != "utf-8":
            raise StreamError("unsupported-encoding", f"the stream must be UTF-8, not {encoding}")

    def _start(self, name, attributes):
        uri, local = _split_name(name)
        if uri == self.content_namespace and self._depth:
            uri = None
        element = domish.Element((uri, local), defaultUri=uri)
        for key, value in attributes.items():
            if " " in key:  # a namespaced attribute (xml:lang)
                key = _split_name(key)
            element.attributes[key] = value
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise StreamError("policy-violation", "elements nested too deep")
        if self._depth == 1:
            if (uri, local) != (NS_STREAMS, "stream"):
                raise StreamError("invalid-namespace", "the root must be <stream:stream/>")
            self._mark = self._parser.CurrentByteIndex
            self._parser.StartNamespaceDeclHandler = None
            self._resume_tag = _resume_tag(self._declarations)
            self._declarations = None
            self.on_open(element)
            return
        if self._depth == 2:
            self._stanza_start = self._parser.CurrentByteIndex + self._offset
        else:
            self._open[-1].children.append(element)
        self._open.append(element)

    def _end(self, name):
        self._depth -= 1
        if self._depth == 0:
            self.on_close()
            return
        element = self._open.pop()
        if self._depth == 1:
            self._mark = self._parser.CurrentByteIndex + self._offset
            size = self._mark - self._stanza_start
            self._stanza_start = None
            if size > self.stanza_size_limit_bytes:
                raise StreamError("policy-violation", "stanza too large")
            self.on_element(element)

    def _text(self, data):
        if self._depth >= 2:
            self._open[-1].addContent(data)
        elif data.strip():
            raise StreamError("not-well-formed", "text between stanzas")
        else:
            self._mark = self._parser.CurrentByteIndex + self._offset

    def _declared(self, prefix, uri):
        self._declarations.append((prefix, uri))


def _resume_tag(declarations):
    """A start tag of the stream's root with the namespaces the header declared, or None.

    The root's own prefix is the one bound to the streams namespace; with
    none, or several, the end tag could not be matched, and the parser
    never rests.
    """
    prefixes = [prefix for prefix, uri in declarations if uri == NS_STREAMS]
    if len(prefixes) != 1 or not prefixes[0]:
        return None
    bindings = " ".join(f"xmlns:{prefix}={quoteattr(uri or '')}" if prefix else f"xmlns={quoteattr(uri or '')}"
                        for prefix, uri in declarations)
    return f"<{prefixes[0]}:stream {bindings}>"


# A stream quiet for this long (to twice as long) lets its parser rest.  Waking one
# costs about as much as parsing a small stanza: a stream that speaks once a
# period pays that, and an idle session saves a third of its memory.
DORMANCY_PERIOD_SECONDS = 1.0


class Dormancy:
    """Parsers fed in neither of the last two periods rest (see ``StreamParser.rest``).

    ``tick`` runs every period.  Each feed costs one set insertion, and a
    busy stream never rests: only a stream quiet for a whole period does.
    """

    def __init__(self):
        self._recent = set()
        self._before = set()

    def fed(self, parser):
        self._recent.add(parser)

    def tick(self):
        for parser in self._before - self._recent:
            parser.rest()
        self._before, self._recent = self._recent, set()


def parse_document(chunks, stanza_size_limit_bytes, content_namespace=None):
    """The top-level children of the synthetic stream that ``chunks`` (bytes) make, and whether its root ended.

    For documents parsed whole (a BOSH request, a stored stanza, a SIP
    body); raises ``StreamError``.
    """
    found, ended = [], []
    parser = StreamParser(lambda header: None, found.append, lambda: ended.append(True),
                          stanza_size_limit_bytes, content_namespace)
    try:
        for chunk in chunks:
            parser.feed(chunk)
    finally:
        parser.close()
    return found, bool(ended)


def parse_element(text):
    """One standalone element from a string (used for stored stanzas and tests)."""
    found, _ = parse_document([f"<s:stream xmlns:s='{NS_STREAMS}'>".encode() + text.encode()], len(text) * 4 + 1024)
    return found[0]


class Written:
    """The text of an element that was serialised already (see ``known_as``), with what it was made of."""

    __slots__ = ("children", "count", "attributes", "text")

    def __init__(self, element, text, attributes=None):
        self.children = element.children
        self.count = len(element.children)
        self.attributes = dict(element.attributes) if attributes is None else attributes
        self.text = text

    def fits(self, element):
        return (element.children is self.children and len(self.children) == self.count
                and element.attributes == self.attributes)


def known_as(element, text, before=None):
    """Let ``serialize`` answer ``text`` for ``element`` while its attributes and its list of children
    stay as they are now.  Features that change a stanza change its attributes, or replace or add to its
    children; none edits a child in place.  The archive uses it: the message it has just serialised is
    delivered with its stamp added, so the delivery need not serialise it again.  ``before``: the
    ``Written`` answered for ``element`` before a child was added to it, its attributes the same (their
    copy is shared).  Answers the ``Written``."""
    written = element.__dict__["written"] = Written(element, text, before and before.attributes)
    return written


class SharedChildren:
    """The text of the children that the copies of one stanza share (``stanza.readdress``).

    A stanza sent to many (a room's message, a presence to a roster) is
    copied with new addresses and the same children; their text is written
    for the first copy and reused for the others, while a copy's children
    are still those (features replace or add children, never edit one).
    """

    __slots__ = ("children", "default", "text")

    def __init__(self):
        self.children = None
        self.default = None
        self.text = None

    def text_of(self, children, default):
        """The text of ``children`` under the default namespace ``default``; None if one needs a prefix."""
        known = self.children
        if (known is not None and default == self.default and len(children) == len(known)
                and all(map(operator.is_, children, known))):
            return self.text
        parts = []
        for child in children:
            if not _write_plain(child, default, parts.append):
                return None
        text = "".join(parts)
        if known is None:
            self.children, self.default, self.text = tuple(children), default, text
        return text


def share_children(original, copy):
    """Let ``serialize`` write the children of ``copy``, which are ``original``'s, once for all its copies."""
    shared = original.__dict__.get("shared_children")
    if shared is None:
        shared = original.__dict__["shared_children"] = SharedChildren()
    copy.__dict__["shared_children"] = shared


def serialize(element):
    """``element`` as XML text, the same text as ``element.toXml()``, in about half the time.

    Every stanza sent is serialised once, and domish's serialiser (a prefix
    stack for any namespace layout) is the dearest step of sending one.
    Stanzas almost always use default namespaces only; those are written
    here.  An element that declares or needs a prefix (other than for
    xml:lang and the like) goes to domish.
    """
    # The instance's own attribute only: domish's __getattr__ would answer with a child of that name.
    written = element.__dict__.get("written")
    if written is not None and written.fits(element):
        return written.text
    parts = []
    if _write_plain(element, "", parts.append, element.__dict__.get("shared_children")):
        return "".join(parts)
    return element.toXml()


# Most text needs no escaping; one search for the characters that do is cheaper than the replacements.
_TEXT_SPECIALS = re.compile("[&<>]")
_ATTRIBUTE_SPECIALS = re.compile("[&<>'\"]")


def _escape(text):
    if _TEXT_SPECIALS.search(text) is None:
        return text
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def escape_attribute(text):
    if _ATTRIBUTE_SPECIALS.search(text) is None:
        return text
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace(
        "'", "&apos;").replace('"', "&quot;")


def _write_plain(element, current_default, write, shared_children=None):
    """Write ``element`` as domish would, if it needs no prefix; False (output incomplete) if it does."""
    if isinstance(element, str):
        write(element if isinstance(element, domish.SerializedXML) else _escape(element))
        return True
    if element.localPrefixes:
        return False
    default = element.defaultUri
    if default is None:
        default = current_default
    uri = element.uri
    if (default if uri is None else uri) != default or default == NS_XML:
        return False
    name = element.name
    write("<" + name)
    if default != current_default:
        write(f" xmlns='{default}'")
    attributes = element.attributes
    # One search of all the values for characters to escape, rather than one per value: most have none.
    plain = _ATTRIBUTE_SPECIALS.search("".join(attributes.values())) is None
    for key, value in attributes.items():
        if key.__class__ is tuple:
            if key[0] != NS_XML:
                return False
            key = "xml:" + key[1]
        write(f" {key}='{value}'" if plain else f" {key}='{escape_attribute(value)}'")
    children = element.children
    if not children:
        write("/>")
        return True
    write(">")
    if shared_children is not None:
        text = shared_children.text_of(children, default)
        if text is None:
            return False
        write(text)
    else:
        for child in children:
            if not _write_plain(child, default, write):
                return False
    write(f"</{name}>")
    return True
