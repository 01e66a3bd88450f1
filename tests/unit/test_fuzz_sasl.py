"""Fuzzing the SASL exchanges: SCRAM (with and without channel binding) and PLAIN fed any client messages.

Each message the server receives either gives the next server message or
fails with SASLFailure, nothing else; an exchange ends at its first failure,
as the streams drop it.  A client that follows RFC 5802 with the right
password always succeeds and can verify the server's signature, whatever
the user name, password and nonce; PLAIN succeeds only with the password.
"""

import base64
import functools

from hypothesis import strategies as st
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from bridge.core import sasl
from tests.unit.fuzzing import TARGETS, target

MECHANISMS = ("SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS")
NAMES = st.sampled_from(("alice", "Alice", "a,b=c", "ünï", "ｆｕｌｌ", "\u00adalice", "al\x00ice", "=2C", "",
                         "al ice")) | st.text(max_size=12)
PASSWORDS = st.sampled_from(("secret", "pässwörd", "ｐａｓｓ", "a b", "")) | st.text(max_size=12)
BINDING = b"exported keying material"
DECOYS = sasl.Decoys(b"server secret")


@functools.lru_cache(maxsize=64)
def credentials(password):
    """SCRAM records for ``password`` (few iterations: the key derivation is not what is fuzzed)."""
    return sasl.make_credentials(password, iterations=16)


def decoy(username):
    """Made-up records for names without an account, as the server derives them."""
    return DECOYS.credentials("localhost", username)


def outcome(deferred):
    """(reply, finished) of a receive, or the SASLFailure it failed with; anything else fails the check."""
    box = []
    deferred.addBoth(box.append)
    assert box, "the exchange did not answer at once"
    if isinstance(box[0], Failure):
        if not box[0].check(sasl.SASLFailure):
            box[0].raiseException()
        return box[0].value
    reply, finished = box[0]
    assert isinstance(reply, bytes) and isinstance(finished, bool)
    return box[0]


def escape(name):
    return name.replace("=", "=3D").replace(",", "=2C")


@st.composite
def client_firsts(draw, mechanism):
    flag = draw(st.sampled_from(("n", "y", "p=tls-exporter", "p=tls-unique", "x")))
    if mechanism.endswith("-PLUS") and draw(st.booleans()):
        flag = "p=tls-exporter"
    authzid = draw(st.sampled_from(("", "a=alice", "a=other")))
    bare = f"n={escape(draw(NAMES))},r={draw(st.sampled_from(('abc', 'fyko+d2lbb', ',,', '')))}"
    bare += draw(st.sampled_from(("", ",m=ext", ",x=1", ",", "=")))
    return f"{flag},{authzid},{bare}"


@target("sasl-scram", st.tuples(st.sampled_from(MECHANISMS), st.booleans(), PASSWORDS, st.data()), examples=150)
def scram(value):
    """Generated, mangled and arbitrary client messages: a server message or SASLFailure at each step."""
    mechanism, offered, password, data = value
    exchange = sasl.ScramExchange(mechanism, lambda name: credentials(password) if name == "alice" else None,
                                  BINDING if (mechanism.endswith("-PLUS") or offered) else None,
                                  plus_offered=offered, decoy=decoy)
    first = data.draw(client_firsts(mechanism).map(str.encode) | st.binary(max_size=40))
    result = outcome(exchange.receive(first))
    if isinstance(result, sasl.SASLFailure):
        return
    server_first = result[0].decode("ascii")
    nonce = server_first.split(",")[0][2:]
    channel = base64.b64encode(exchange.gs2_header.encode() + (BINDING if exchange.plus else b"")).decode()
    final = data.draw(st.one_of(
        st.binary(max_size=60),
        st.builds("c={},r={},p={}".format, st.sampled_from((channel, "biws", "")), st.sampled_from((nonce, "x")),
                  st.sampled_from(("AAAA", "=", "!!", base64.b64encode(bytes(32)).decode()))).map(str.encode)))
    outcome(exchange.receive(final))


@target("sasl-scram-client", st.tuples(st.sampled_from(MECHANISMS), NAMES, PASSWORDS, st.text(
        st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=","), min_size=1, max_size=24)),
        examples=100)
def scram_client(value):
    """A client that follows RFC 5802 with the right password succeeds, and the server proves its key."""
    mechanism, name, password, client_nonce = value
    try:
        user = sasl.saslprep(name)
        sasl.saslprep(password)
    except sasl.SASLFailure:
        return  # names and passwords SASLprep refuses cannot have an account
    records = credentials(password)
    exchange = sasl.ScramExchange(mechanism, lambda asked: records if asked == user else None, BINDING,
                                  plus_offered=True, decoy=decoy)
    client = sasl.ScramClient(mechanism, name, password, BINDING, nonce=client_nonce)
    server_first, finished = outcome(exchange.receive(client.first()))
    assert not finished
    server_final, finished = outcome(exchange.receive(client.answer(server_first)))
    assert finished and exchange.username == user
    client.check(server_final)


@target("sasl-plain", st.tuples(PASSWORDS, st.one_of(
    st.binary(max_size=40),
    st.tuples(st.sampled_from(("", "alice", "x")), NAMES, PASSWORDS).map(lambda parts: "\0".join(parts).encode()),
)), examples=150)
def plain(value):
    """PLAIN: success only for alice with her password, SASLFailure for anything else."""
    password, message = value
    exchange = sasl.PlainExchange(lambda name, offered: sasl.password_matches(
        credentials(password) if name == "alice" else None, offered, decoy(name)))
    result = outcome(exchange.receive(message))
    if not isinstance(result, sasl.SASLFailure):
        _, user, offered = message.decode().split("\0")
        assert sasl.saslprep(user) == "alice" and sasl.saslprep(offered) == sasl.saslprep(password)


class SASLFuzzTests(SynchronousTestCase):
    def test_scram_messages(self):
        """SCRAM exchanges fed generated and arbitrary messages answer or fail with SASLFailure."""
        TARGETS["sasl-scram"].run()

    def test_scram_correct_client(self):
        """A correct SCRAM client always succeeds and verifies the server."""
        TARGETS["sasl-scram-client"].run()

    def test_plain(self):
        """PLAIN succeeds only with the password and fails with SASLFailure otherwise."""
        TARGETS["sasl-plain"].run()
