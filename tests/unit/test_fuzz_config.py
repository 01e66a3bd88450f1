"""Fuzzing configuration loading: TOML-shaped documents and arbitrary files.

Whatever a document or a file holds, loading gives a Config or a ConfigError
that names the file, never another exception; and a Config that loads has
every option within the range its field declares.
"""

import atexit
import dataclasses
import datetime
import functools
import math
import pathlib
import shutil
import tempfile
import typing

from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from bridge import config as configuration
from tests.unit.fuzzing import TARGETS, mutated, target

SECTIONS = {name: kind for name, kind in configuration._SECTIONS.items()}
NAMED = dict(configuration._NAMED)


def keys_of(kind):
    return [option.name for option in dataclasses.fields(kind)]


SCALARS = st.one_of(
    st.text(max_size=12), st.sampled_from(("", "tcp:5222", "udp:5060", "udp:x", "udp:5060:interface=", "host:0",
                                           "[::1]:5060", "h:\u00b2", "1.2", "1.3", "sms.localhost", "localhost",
                                           "replace", "SHA-256", "MD5", "none", "sms", "9" * 5000)),
    st.integers(), st.sampled_from((0, -1, 1, 2**31, 2**63 - 1, -2**63, 10**30)),
    st.floats(), st.sampled_from((math.nan, math.inf, -math.inf, 0.5, 1e308)), st.booleans(),
    st.just(datetime.datetime(2026, 12, 6, 7, 0)), st.just(datetime.date(2026, 12, 6)),
    st.just(datetime.time(7, 0)),
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=6), inner, max_size=3), max_leaves=6)


# True seven times in eight (Hypothesis favours the ends of an integer range; a sample is drawn evenly).
MOSTLY = st.sampled_from([True] * 7 + [False])
STRINGS = st.text(max_size=12) | st.sampled_from((
    "", "tcp:5222", "udp:5060", "udp:x", "udp:5060:interface=", "udp:\u00b2", "host:0", "[::1]:5060", "h:\u00b2",
    "1.2", "1.3", "sms.localhost", "sip.localhost", "localhost", "replace", "SHA-256", "MD5", "none", "sms",
    "9" * 5000))


def typed(kind, meta):
    """Values of an option's own type, around its bounds, with now and then anything at all."""
    low, high, choices = meta.get("low"), meta.get("high"), meta.get("choices")
    edges = [edge for bound in (low, high) if bound is not None for edge in (bound, bound - 1, bound + 1)]
    if kind is bool:
        values = st.booleans()
    elif kind is int:
        values = st.sampled_from(edges or [0]) | st.integers(-2**64, 2**64)
    elif kind is float:
        values = (st.sampled_from(edges or [0.0]) | st.floats() | st.sampled_from((math.nan, math.inf, -math.inf))
                  | st.integers(-10**6, 10**6))
    elif kind is str:
        values = st.sampled_from(choices) | STRINGS if choices else STRINGS
    elif kind is list:
        values = st.lists(STRINGS, max_size=3)
    else:
        values = st.dictionaries(STRINGS, STRINGS, max_size=2)
    # (one_of picks a branch uniformly, and the same strategy given twice counts once)
    return MOSTLY.flatmap(lambda usual: values if usual else VALUES)


@st.composite
def tables(draw, kind):
    """A table for dataclass ``kind``: mostly its own keys with values of their types."""
    hints = typing.get_type_hints(kind)
    fields = {option.name: option for option in dataclasses.fields(kind)}
    table = {}
    names = MOSTLY.flatmap(lambda usual: st.sampled_from(list(fields)) if usual else st.text(max_size=8))
    for name in draw(st.lists(names, max_size=5, unique=True)):
        option = fields.get(name)
        table[name] = draw(typed(hints[name], option.metadata) if option else VALUES)
    return table


@st.composite
def documents(draw):
    """Mostly well-formed sections and named tables, so that what is wrong in one value is what decides."""
    document = {}
    names = st.sampled_from([*SECTIONS, *NAMED] * 8 + ["data_dir", "source", "x"])
    for name in draw(st.lists(names, max_size=5, unique=True)):
        if name in SECTIONS and draw(MOSTLY):
            document[name] = draw(tables(SECTIONS[name]))
        elif name in NAMED and draw(MOSTLY):
            document[name] = draw(st.dictionaries(st.sampled_from(("localhost", "Example.COM", "sms.localhost",
                                                                   "sip.localhost", "")) | st.text(max_size=6),
                                                  tables(NAMED[name]), min_size=1, max_size=3))
        else:
            document[name] = draw(VALUES)
    return document


def check_ranges(value, path="", seen=None):
    """Every option of a loaded Config lies within the range and the choices its field declares."""
    if isinstance(value, dict):
        for key, item in value.items():
            check_ranges(item, f"{path}{key}.")
        return
    for option in dataclasses.fields(value):
        current = getattr(value, option.name)
        if dataclasses.is_dataclass(current) or isinstance(current, dict) and current and dataclasses.is_dataclass(
                next(iter(current.values()))):
            check_ranges(current, f"{path}{option.name}.")
            continue
        meta = option.metadata
        name = f"{path}{option.name}"
        if isinstance(current, (int, float)) and not isinstance(current, bool):
            assert not math.isnan(current), f"{name} is NaN"
            assert meta.get("low") is None or current >= meta["low"], f"{name} = {current} < {meta['low']}"
            assert meta.get("high") is None or current <= meta["high"], f"{name} = {current} > {meta['high']}"
        if meta.get("choices"):
            assert current in meta["choices"], f"{name} = {current!r}"


@target("config-document", documents(), examples=80)
def document(value):
    """Any TOML-shaped document: a Config within its declared ranges, or a ConfigError naming the file."""
    try:
        loaded = configuration.parse(value, "fuzz.toml")
    except configuration.ConfigError as error:
        assert error.problems and all(problem.startswith("fuzz.toml: ") for problem in error.problems)
        return
    check_ranges(loaded)
    loaded.smtp.relay_address()


@functools.cache
def scratch():
    folder = tempfile.mkdtemp(prefix="bridge-fuzz-config-")
    atexit.register(shutil.rmtree, folder, True)
    return pathlib.Path(folder) / "bridge.toml"


SAMPLE = (pathlib.Path(__file__).resolve().parents[2] / "conf" / "bridge.toml").read_bytes()
LINES = [line + b"\n" for line in SAMPLE.splitlines() if line.strip() and not line.startswith(b"#")]
TOML_TOKENS = [b"[", b"]", b"[[", b"]]", b"=", b'"', b"'", b"'''", b'"""', b"\\", b"\\u0000", b"\\uD800", b"\n",
               b"#", b".", b",", b"{", b"}", b"nan", b"inf", b"-inf", b"1e999", b"0x7fffffffffffffffff", b"9" * 5000,
               b"1979-05-27T07:32:00Z", b"true", b"\x00", b"\xff", b"\xef\xbb\xbf", b"\r", b"[" * 2000, b"{a=" * 500]
SEEDS = [SAMPLE] + [b"".join(LINES[start:start + 8]) for start in range(0, len(LINES), 8)]


@target("config-file", mutated(SEEDS, TOML_TOKENS), examples=80)
def config_file(data):
    """Any bytes in the file: a Config or a ConfigError naming the file."""
    path = scratch()
    path.write_bytes(data)
    try:
        loaded = configuration.load(str(path))
    except configuration.ConfigError as error:
        assert error.problems and all(problem.startswith(str(path)) for problem in error.problems), error.problems
        return
    check_ranges(loaded)


class ConfigFuzzTests(SynchronousTestCase):
    def test_documents(self):
        """TOML-shaped documents load or raise ConfigError, and what loads is within range."""
        TARGETS["config-document"].run()

    def test_files(self):
        """Mutated and arbitrary configuration files load or raise ConfigError."""
        TARGETS["config-file"].run()


class FoundByFuzzingTests(SynchronousTestCase):
    """Inputs the fuzzers found, kept as plain examples."""

    def problems(self, data):
        path = scratch()
        path.write_bytes(data)
        error = self.assertRaises(configuration.ConfigError, configuration.load, str(path))
        return [problem.replace(str(path), "FILE") for problem in error.problems]

    def test_file_not_utf8(self):
        """A file that is not UTF-8 (a 0xff byte before the sample file) is a ConfigError naming it, not
        UnicodeDecodeError."""
        [problem] = self.problems(b"\xff" + SAMPLE)
        self.assertTrue(problem.startswith("FILE: not valid TOML: "), problem)

    def test_arrays_nested_too_deep(self):
        """Arrays nested 5000 deep are a ConfigError, not RecursionError from tomllib."""
        [problem] = self.problems(b"data_dir = " + b"[" * 5000 + b"]" * 5000)
        self.assertTrue(problem.startswith("FILE: not valid TOML: "), problem)

    def test_integer_of_5000_digits(self):
        """An integer of 5000 digits is a ConfigError, not the ValueError of Python's conversion limit."""
        [problem] = self.problems(b"[offline]\nmax_messages_per_user = " + b"9" * 5000)
        self.assertTrue(problem.startswith("FILE: not valid TOML: "), problem)

    def test_nan(self):
        """nan is refused for a number option (found as smtp.digest_seconds = nan): it passed every range
        check, nan < low and nan > high being both false."""
        self.assertEqual(self.problems(b"[c2s]\npre_auth_timeout_seconds = nan\n"),
                         ["FILE: c2s.pre_auth_timeout_seconds: must be a number, not nan"])

    def test_ports_of_unicode_digits(self):
        """A port written with a Unicode digit ('\\u00b2') is a clear problem, and an SMTP relay given one
        no longer stops the server at start with ValueError (found by looking for the pattern of the SMS
        and SIP faults: str.isdigit() before int())."""
        for table, key, value in (("sip", "advertised_address", "h:\u00b2"), ("sip", "udp_endpoints", ["udp:\u00b2"]),
                                  ("sip", "dns_server", "h:\u00b9")):
            error = self.assertRaises(configuration.ConfigError, configuration.parse, {table: {key: value}}, "f")
            self.assertNotIn("invalid literal", str(error))
        for relay in ("mail:\u00b2", "mail:" + "9" * 5000):
            loaded = configuration.parse({"smtp": {"relay": relay}}, "f")
            self.assertEqual(loaded.smtp.relay_address(), (relay, 25))
