"""What the fuzz tests share: the targets, their settings, and the check for logged failures.

A *target* is a strategy of inputs and a check that raises when the code
under test does something it must not (an exception outside its documented
error types, a logged internal failure, a broken round trip).  The unit tests
(``tests/unit/test_fuzz_*.py``) run each target with Hypothesis for a few
deterministic examples; ``bench/fuzz.py`` drives the same targets with
atheris, coverage-guided, for as long as it is asked to.
"""

import functools
from contextlib import contextmanager
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.logger import globalLogPublisher
from twisted.words.xish import domish

TARGETS = {}


@dataclass(frozen=True)
class Target:
    name: str
    strategy: object
    check: object
    examples: int

    def run(self):
        """Hypothesis over ``examples`` inputs, the same ones on every run."""
        test = settings(max_examples=self.examples, derandomize=True, deadline=None, database=None,
                        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                               HealthCheck.filter_too_much])(given(self.strategy)(self.check))
        test()


def target(name, strategy, examples=100):
    """Register ``check(value)`` as the fuzz target ``name`` over ``strategy``."""

    def register(check):
        if name in TARGETS:
            raise ValueError(f"fuzz target {name} is defined twice")
        TARGETS[name] = Target(name, strategy, check, examples)
        return check

    return register


@functools.cache
def _records(user):
    from bridge.core.accounts import make_records  # (imported late: bench/fuzz.py instruments bridge first)

    return make_records("localhost", user, "secret")


def add_users(harness, *users):
    """Accounts ``user@localhost`` with password "secret", their keys derived once per process
    (key derivation would be most of a fresh server's cost)."""
    from bridge.core.accounts import STORE
    from tests.unit.helpers import result_of

    for user in users:
        result_of(harness.storage.set("localhost", user, STORE, _records(user)))


class UnexpectedFailure(AssertionError):
    """The code under test logged a failure (an exception it caught as a bug, not as bad input)."""

    def __init__(self, text, failure):
        super().__init__(text)
        self.failure = failure


@contextmanager
def no_logged_failures():
    """Fails when anything in the block logs a failure (``log.failure``: an unexpected exception)."""
    found = []

    def observe(event):
        if "log_failure" in event:
            found.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield
    finally:
        globalLogPublisher.removeObserver(observe)
    if found:
        failure = found[0]["log_failure"]
        raise UnexpectedFailure(f"{found[0].get('log_format')}: {failure.getTraceback()}", failure)


# -- XML inputs shared by the stream targets (TCP, BOSH, WebSocket) ------------------------

NS_STREAMS = "http://etherx.jabber.org/streams"
STREAM_HEADER = (f"<stream:stream xmlns='jabber:client' xmlns:stream='{NS_STREAMS}' to='localhost' "
                 "version='1.0'>").encode()

# Pieces of XML that parsers trip on, glued together at random ("token soup").
XML_TOKENS = [
    b"<", b">", b"/>", b"</", b"<a>", b"</a>", b"<a/>", b"<message>", b"</message>", b"<body>", b"</body>",
    b"<iq type='get' id='1'>", b"</iq>", b"<presence/>", b" ", b"\n", b"\t", b"=", b"'", b'"',
    b" xmlns='urn:x'", b" xmlns:p='urn:p'", b"<p:x>", b"</p:x>", b" p:a='1'", b" xml:lang='en'",
    b" a='1'", b" a='2'", b"&", b"&amp;", b"&lt;", b"&#65;", b"&#x0;", b"&#xD800;", b"&e;", b";",
    b"<!DOCTYPE a [<!ENTITY e 'x'>]>", b"<!ENTITY", b"<!--", b"-->", b"<?pi x?>", b"<?xml version='1.0'?>",
    b"<?xml version='1.0' encoding='utf-16'?>", b"<![CDATA[", b"]]>", b"</stream:stream>", STREAM_HEADER,
    b"<stream:stream xmlns:stream='urn:wrong'>", b"\x00", b"\xff", b"\xc3", b"\xc3\xa9", b"\xef\xbb\xbf",
    b"\xf0\x9f\x98\x80", b"\xed\xa0\x80", "\ufffe".encode(), b"text",
]


def xml_soup(max_tokens=40):
    token = st.sampled_from(XML_TOKENS) | st.binary(max_size=4)
    return st.lists(token, max_size=max_tokens).map(b"".join)


def chunked(data_strategy):
    """(data, cut positions): the same bytes fed whole and in arbitrary pieces."""
    return st.tuples(data_strategy, st.lists(st.integers(0, 4096), max_size=12).map(sorted))


def pieces(data, cuts):
    """``data`` cut at ``cuts``, never into an empty read (a transport never delivers one: h11 takes b"" for
    the end of the connection)."""
    cuts = sorted({cut for cut in cuts if 0 < cut < len(data)})
    bounds = [0, *cuts, len(data)]
    return [data[start:end] for start, end in zip(bounds, bounds[1:])]


NS_XML = "http://www.w3.org/XML/1998/namespace"
# Characters XML 1.0 can carry literally and that survive a parse unchanged (CR and, in
# attributes, tab and newline are normalised by every XML parser).
_CHARACTERS = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"), exclude_characters="\ufffe\uffff")
XML_TEXT = st.text(_CHARACTERS | st.sampled_from("\t\n<>&'\"]"), min_size=1, max_size=20)
ATTRIBUTE_TEXT = st.text(_CHARACTERS | st.sampled_from("<>&'\""), max_size=20)


@dataclass(frozen=True)
class Vocabulary:
    """What generated elements are made of: names, namespaces, attributes and their values."""

    names: tuple = ("message", "presence", "iq", "body", "query", "item", "x", "error", "a")
    namespaces: tuple = ("urn:x", "jabber:iq:roster", "vcard-temp", "http://jabber.org/protocol/disco#info")
    attributes: tuple = ("to", "from", "type", "id", "a", "jid", "node", (NS_XML, "lang"))
    values: object = ATTRIBUTE_TEXT
    text: object = XML_TEXT
    roots: tuple = ()  # (namespace, name) of top elements; empty: as any other


GENERIC = Vocabulary()


@st.composite
def elements(draw, vocabulary=GENERIC, parent_uri=None, depth=0, max_depth=4):
    """A domish element; children without a namespace of their own only below parents without one."""
    if depth == 0 and vocabulary.roots:
        uri, name = draw(st.sampled_from(vocabulary.roots))
    else:
        uri = draw(st.sampled_from((parent_uri, *vocabulary.namespaces)))
        name = draw(st.sampled_from(vocabulary.names) | st.text("abcxyz0_.-", min_size=1, max_size=6).map("n".__add__))
    element = domish.Element((uri, name), defaultUri=uri)
    for attribute in draw(st.lists(st.sampled_from(vocabulary.attributes), max_size=4, unique=True)):
        element[attribute] = draw(vocabulary.values)
    if depth < max_depth:
        for child in draw(st.lists(st.none() | vocabulary.text, max_size=4)):
            if child is None:
                element.addChild(draw(elements(vocabulary, uri, depth + 1, max_depth)))
            else:
                element.addContent(child)
    return element


def shape(element):
    """An element as plain data, for comparing what went out with what came back."""
    children = []
    for child in element.children:
        if isinstance(child, str):
            if children and isinstance(children[-1], str):
                children[-1] += child
            elif child:
                children.append(child)
        else:
            children.append(shape(child))
    attributes = sorted((str(key), value) for key, value in element.attributes.items())
    return element.uri, element.name, attributes, children


def _apply_edits(seed, edits):
    data = bytearray(seed)
    for position, operation, token in edits:
        position = position % (len(data) + 1)
        if operation == "insert":
            data[position:position] = token
        elif operation == "replace":
            data[position:position + len(token)] = token
        else:
            del data[position:position + len(token)]
    return bytes(data)


def mutated(seeds, tokens):
    """Valid inputs from ``seeds`` with a few tokens inserted, written over or cut out."""
    edit = st.tuples(st.integers(0, 2**16), st.sampled_from(("insert", "replace", "delete")),
                     st.sampled_from(tokens) | st.binary(min_size=1, max_size=3))
    return st.builds(_apply_edits, st.sampled_from(seeds), st.lists(edit, max_size=6))
