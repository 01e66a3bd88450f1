"""The archive comparison (``python -m bench --archive``): the c2s messages load with the message archive on and off.

bridge runs with its archive off and on, alternately, ``--archive-rounds``
times each (the machine's noise is larger than the difference sought, so
the medians are compared); Prosody and ejabberd run once with mod_mam and
once without.  Every bridge run gets a fresh copy of one data folder that
holds the accounts, so each run with the archive on starts from an empty
archive, as the peers' single runs do.  Once a server has stopped, the
bench counts what its archive holds: a server that was to archive and
archived nothing makes the comparison void, and the report says so.
"""

import os
import shutil
import sqlite3
import statistics
import subprocess

from bench.c2s import bench_one, make_server, peer_key
from bench.servers import BenchError, say

# The goals of the archive work: bridge with its archive on against itself with it off, and
# against Prosody with mod_mam.
GOALS = {"bridge-off": 0.7, "prosody-on": 3.0}
VERSUS = ("bridge-off", "prosody-on", "ejabberd-on")
FIGURES = ("messages_per_s", "latency_p50_ms", "latency_p99_ms", "server_cpu_us_per_message",
           "rss_per_idle_session_kib")
ROWS = [  # key, label, better
    ("messages_per_s", "messages/s delivered", "higher"),
    ("latency_p50_ms", "latency p50 ms", "lower"),
    ("latency_p99_ms", "latency p99 ms", "lower"),
    ("server_cpu_us_per_message", "server CPU us per message", "lower"),
    ("rss_per_idle_session_kib", "KiB per idle session (--archive-idle)", "lower"),
]


def schedule(names, rounds):
    """The runs in their order, as (configuration, server, archive on, round).

    bridge's rounds alternate which of off and on comes first (off-on, on-off,
    ...), so that a drift of the machine over the rounds weighs on both alike.
    """
    runs = []
    if "bridge" in names:
        for i in range(1, rounds + 1):
            pair = [("bridge-off", "bridge", False, i), ("bridge-on", "bridge", True, i)]
            runs += pair if i % 2 else pair[::-1]
    for name in ("prosody", "ejabberd"):
        if name in names:
            runs += [(name + "-on", name, True, 1), (name + "-off", name, False, 1)]
    return runs


def run(args, tmp, names, results):
    """The runs of `schedule`, one server at a time; False when one failed."""
    out = results["archive"] = {"rounds": args.archive_rounds, "runs": []}
    ok = True
    accounts_data = None
    if "bridge" in names:
        # The accounts are made once (in --bridge-data-dir when given); each run copies them.
        maker = make_server(args, tmp, "bridge", None, label="bridge-accounts",
                            data_dir=args.bridge_data_dir)
        try:
            maker.prepare(args.accounts)
            accounts_data = maker.data
        except (BenchError, OSError, subprocess.SubprocessError) as exc:
            ok = False
            out["error"] = "bridge accounts: %s" % exc
            say("bridge accounts: FAILED: %s" % exc)
    bridge_key = None
    for config, name, archive, round_ in schedule(names, args.archive_rounds):
        if name == "bridge" and accounts_data is None:
            continue
        entry = {"configuration": config, "server": name, "archive": archive, "round": round_}
        label = run_label(entry)
        data_dir = None
        if name == "bridge":
            data_dir = os.path.join(tmp, label, "data")
            shutil.copytree(accounts_data, data_dir)
        server = make_server(args, tmp, name, peer_key(args, bridge_key), label=label,
                             archive=archive, data_dir=data_dir)
        out["runs"].append(entry)
        phases = ("idle", "messages") if args.archive_idle else ("messages",)
        ok = bench_one(args, server, entry, phases=phases) and ok
        if name == "bridge":
            bridge_key = bridge_key or server.info.get("certificate_key")
        try:
            entry["archived_items"] = server.archived_items()
        except (BenchError, OSError, sqlite3.Error, subprocess.SubprocessError) as exc:
            entry["archive_check_error"] = str(exc)
        entry["warnings"] = archive_warnings(entry)
        for w in entry["warnings"]:
            say("%s: %s" % (label, w))
    out["figures"] = summary(out["runs"])
    out["round_ratios"] = round_ratios(out["runs"])
    return ok


def run_label(entry):
    """A run's name: its configuration, and for bridge its round (bridge-on-2)."""
    if entry["server"] == "bridge":
        return "%s-%d" % (entry["configuration"], entry["round"])
    return entry["configuration"]


def archive_warnings(entry):
    """What makes a run's archive figures doubtful: an archive that was to hold the messages and
    holds none (or fewer than were sent), or one that was to be off and holds some."""
    if "archive_check_error" in entry:
        return ["its archive could not be counted: %s" % entry["archive_check_error"]]
    items = entry.get("archived_items")
    sent = (entry.get("messages") or {}).get("sent_total")
    if items is None:
        return []
    if entry["archive"] and items == 0:
        return ["WARNING: archived nothing with its archive on: the comparison is void"]
    if entry["archive"] and sent and items < sent:
        return ["archived %d items for %d messages sent: some were not archived" % (items, sent)]
    if not entry["archive"] and items:
        return ["archived %d items with its archive off" % items]
    return []


def summary(runs):
    """Per configuration (bridge-off, bridge-on, prosody-on...): the median of each figure over its
    runs that went through, each run's messages/s, and archived items per message sent."""
    by_config = {}
    for entry in runs:
        by_config.setdefault(entry["configuration"], []).append(entry)
    out = {}
    for config, entries in by_config.items():
        done = [e for e in entries if "error" not in e]
        f = {}
        for key in FIGURES:
            values = [e["figures"][key] for e in done if e["figures"].get(key) is not None]
            f[key] = round(statistics.median(values), 3) if values else None
        f["runs_messages_per_s"] = [e["figures"].get("messages_per_s") for e in entries]
        f["runs"] = len(done)
        items = sum(e.get("archived_items") or 0 for e in entries)
        sent = sum((e.get("messages") or {}).get("sent_total") or 0 for e in entries)
        f["archived_items"] = items
        f["archived_per_message_sent"] = round(items / sent, 3) if sent else None
        out[config] = f
    return out


def round_ratios(runs):
    """bridge-on / bridge-off messages/s of each round in which both went through."""
    rates = {}
    for e in runs:
        if e["server"] == "bridge" and "error" not in e:
            rates[(e["configuration"], e["round"])] = e["figures"].get("messages_per_s")
    ratios = []
    for (config, round_), on in sorted(rates.items()):
        off = rates.get(("bridge-off", round_))
        if config == "bridge-on" and on and off:
            ratios.append(round(on / off, 3))
    return ratios
