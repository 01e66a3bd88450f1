"""What the servers' logs say: the notable lines, grouped once their variable parts are masked."""

import re


# What varies between otherwise identical lines: timestamps, peers, ids, numbers.
_LOG_NOISE = [
    (re.compile(r"^\S+T\S+\s+"), ""),                                   # twistd timestamp
    (re.compile(r"^\w{3} \d\d \d\d:\d\d:\d\d\s+"), ""),                     # Prosody timestamp
    (re.compile(r"\b\d{1,3}(\.\d{1,3}){3}:\d+\b"), "ADDR"),
    (re.compile(r"\b(c2s|bosh|websocket|http\.server)[0-9a-f]{6,}\b"), r"\1ID"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f-]{27}"), "UUID"),
    (re.compile(r"\b\d+(\.\d+)?\b"), "N"),
]


def notable_lines(paths, pattern, limit=200, skip=None):
    lines = []
    for path in paths:
        try:
            with open(path, errors="replace") as f:
                for line in f:
                    if pattern.search(line) and not (skip and skip.search(line)):
                        lines.append(line.rstrip("\n"))
        except OSError:
            pass
    return lines[:limit] + (["... %d more" % (len(lines) - limit)] if len(lines) > limit else [])


def log_summary(lines, limit=40):
    """Notable log lines grouped once their variable parts are masked:
    {pattern: count}, the most frequent first."""
    counts = {}
    for line in lines:
        if line.startswith("... ") and line.endswith(" more"):
            continue
        key = line
        for pattern, repl in _LOG_NOISE:
            key = pattern.sub(repl, key)
        key = key.strip()[:300]
        counts[key] = counts.get(key, 0) + 1
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
    return dict(top)
