"""Coverage-guided fuzzing of bridge's parsers and state machines with atheris (not run in CI).

The targets are the ones the unit tests run with Hypothesis for a few
examples (``tests/unit/test_fuzz_*.py``): each is a strategy of inputs and a
check.  Here libFuzzer's mutated bytes drive the same strategies (through
Hypothesis' ``fuzz_one_input``), with bridge, h11, wsproto and smpplib
instrumented for coverage, for as long as ``--seconds`` says.

A failing check does not stop the run: each distinct failure (exception type
and the line it came from) is counted, and its first input and traceback are
written to ``--crashes``.  At the end one JSON line reports the executions,
the distinct failures and the inputs slower than ``--slow-seconds``::

    .venv/bin/python bench/fuzz.py --list
    .venv/bin/python bench/fuzz.py xml-stream --seconds 300
    .venv/bin/python bench/fuzz.py sip-datagram --seconds 300 --corpus /tmp/corpus-sip --output /tmp/fuzz.jsonl

A regression test for a failure is its input as a plain unit test.
"""

import argparse
import hashlib
import importlib
import json
import os
import pathlib
import sys
import time
import traceback

import atheris

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
INSTRUMENTED = ["bridge", "h11", "wsproto", "smpplib"]


def load_targets():
    from tests.unit import fuzzing

    with atheris.instrument_imports(include=INSTRUMENTED):
        for path in sorted((ROOT / "tests" / "unit").glob("test_fuzz_*.py")):
            importlib.import_module(f"tests.unit.{path.stem}")
    return fuzzing.TARGETS


def where(error):
    """The innermost frame of bridge's own code in the traceback (else the innermost of all); for a
    failure the code logged, in that failure's traceback."""
    failure = getattr(error, "failure", None)
    if failure is not None:
        frames = [(filename, line) for _, filename, line, _, _ in failure.frames]
    else:
        frames = [(frame.filename, frame.lineno) for frame in traceback.extract_tb(error.__traceback__)]
    ours = [frame for frame in frames if f"{os.sep}bridge{os.sep}" in frame[0]] or frames
    filename, line = ours[-1]
    name = type(failure.value if failure is not None else error).__name__
    return f"{name} at {os.path.relpath(filename, ROOT)}:{line}"


class Run:
    def __init__(self, target, seconds, crashes, slow_seconds):
        self.target = target
        self.deadline = time.monotonic() + seconds
        self.started = time.monotonic()
        self.crashes = crashes
        self.slow_seconds = slow_seconds
        self.fuzzer_inputs = 0
        self.executions = 0
        self.failures = {}  # where -> {"exception", "count", "file"}
        self.slowest = 0.0
        self.slow = 0

    def check(self, value):
        self.executions += 1
        start = time.monotonic()
        try:
            self.target.check(value)
        except Exception as error:
            self.failed(value, error)
        finally:
            elapsed = time.monotonic() - start
            self.slowest = max(self.slowest, elapsed)
            if elapsed > self.slow_seconds:
                self.slow += 1
                self.save("slow", value, f"took {elapsed:.2f} s\n")

    def failed(self, value, error):
        key = where(error)
        entry = self.failures.get(key)
        if entry is not None:
            entry["count"] += 1
            return
        text = "".join(traceback.format_exception(error))
        path = self.save("crash", value, text)
        self.failures[key] = {"exception": f"{type(error).__name__}: {str(error)[:300]}", "count": 1,
                              "file": str(path)}
        print(f"\n*** {self.target.name}: {key}\n{text}", file=sys.stderr, flush=True)

    def save(self, kind, value, text):
        self.crashes.mkdir(parents=True, exist_ok=True)
        data = repr(value)
        path = self.crashes / f"{self.target.name}-{kind}-{hashlib.sha1(data.encode()).hexdigest()[:12]}.txt"
        path.write_text(f"input: {data}\n\n{text}")
        return path

    def report(self):
        return {"target": self.target.name, "seconds": round(time.monotonic() - self.started, 1),
                "fuzzer_inputs": self.fuzzer_inputs, "executions": self.executions,
                "distinct_failures": len(self.failures), "failures": self.failures,
                "slowest_input_seconds": round(self.slowest, 3), "slow_inputs": self.slow}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", nargs="?", help="a target name (--list shows them)")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to fuzz (default 60)")
    parser.add_argument("--corpus", help="a folder libFuzzer keeps its interesting inputs in (kept across runs)")
    parser.add_argument("--crashes", default="fuzz-crashes", help="where failing inputs are written")
    parser.add_argument("--slow-seconds", type=float, default=1.0, help="an input slower than this is reported")
    parser.add_argument("--output", help="append the JSON report to this file")
    parser.add_argument("libfuzzer", nargs="*", help="after --: options for libFuzzer (e.g. -max_len=8192)")
    args = parser.parse_args()

    targets = load_targets()
    if args.list or not args.target:
        for name, found in sorted(targets.items()):
            print(f"{name:20} {' '.join((found.check.__doc__ or '').split())}".rstrip())
        return
    if args.target not in targets:
        parser.error(f"unknown target {args.target!r}; --list shows them")

    from hypothesis import given, settings
    from twisted.logger import globalLogBeginner

    # Log events go nowhere (the checks watch for failures themselves).
    globalLogBeginner.beginLoggingTo([lambda event: None], discardBuffer=True, redirectStandardIO=False)
    target = targets[args.target]
    run = Run(target, args.seconds, pathlib.Path(args.crashes), args.slow_seconds)
    fuzz = settings(database=None, deadline=None)(given(target.strategy)(run.check)).hypothesis.fuzz_one_input

    def one_input(data):
        run.fuzzer_inputs += 1
        if time.monotonic() > run.deadline:
            finish(run, args.output)
        fuzz(data)

    # Hypothesis needs room to build structured inputs: the longest length from the start.
    libfuzzer = [sys.argv[0], "-timeout=60", "-rss_limit_mb=4096", "-max_len=4096", "-len_control=0", *args.libfuzzer]
    if args.corpus:
        os.makedirs(args.corpus, exist_ok=True)
        libfuzzer.append(args.corpus)
    atheris.Setup(libfuzzer, one_input)
    atheris.Fuzz()


def finish(run, output):
    line = json.dumps(run.report())
    print(line, flush=True)
    if output:
        with open(output, "a") as handle:
            handle.write(line + "\n")
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
