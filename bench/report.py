"""The report: tables of the figures side by side, bridge's ratios to the other servers, the warnings, the JSON."""

import json

from bench import archive, browser, c2s, federation


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return "%.3g" % v if abs(v) < 100 else "%.0f" % v
    return str(v)


def table(figs, names, rows, reference="bridge", versus=None):
    """The figures of ``names`` side by side, then `reference`'s ratio to each server of `versus`
    (by default every other one).

    Returns the text and {other server: {figure: reference / other}}.
    """
    if versus is None:
        versus = [n for n in names if n != reference] if reference in names else []
    others = [n for n in versus if n in names]
    width = {n: max(12, len(n) + 2) for n in names}
    heads = {n: "%s/%s" % (reference, n) for n in others}
    head = "%-30s" % "figure" + "".join("%*s" % (width[n], n) for n in names)
    head += "".join("%*s" % (max(17, len(h) + 2), h) for h in heads.values())
    head += "  better" if others else ""
    lines = [head, "-" * len(head)]
    ratios = {n: {} for n in others}
    for key, label, better in rows:
        row = "%-30s" % label + "".join("%*s" % (width[n], fmt(figs.get(n, {}).get(key)))
                                        for n in names)
        for n in others:
            b, o = figs[reference].get(key), figs[n].get(key)
            ratio = round(b / o, 3) if isinstance(b, (int, float)) and isinstance(o, (int, float)) and o else None
            ratios[n][key] = ratio
            row += "%*s" % (max(17, len(heads[n]) + 2), fmt(ratio))
        lines.append(row + ("  " + better if others else ""))
    return "\n".join(lines), ratios


def load_warnings(r):
    """What makes one loader result doubtful."""
    warn = []
    if r.get("errors"):
        warn.append("errors: %s" % r["errors"])
    if r.get("sessions_ended"):
        warn.append("sessions ended during the load: %s" % r["sessions_ended"])
    failed = r.get("failed")
    if failed is True:
        warn.append("the load failed")
    elif failed:
        warn.append("%s logins failed" % failed)
    lf = r.get("loader_cpu_fraction")
    if lf is not None and lf > 0.9:
        warn.append("loader CPU %.0f%%: the loader may be the bottleneck" % (100 * lf))
    if r.get("lost"):
        warn.append("%d messages not delivered within the drain time" % r["lost"])
    if r.get("bad_from"):
        warn.append("%d messages without the sender's full JID as 'from'" % r["bad_from"])
    return warn


def print_c2s(results, args, names):
    figs = {n: results["servers"].get(n, {}).get("figures", {}) for n in names}
    text, ratios = table(figs, names, c2s.ROWS)
    for other, values in ratios.items():
        results["ratios_bridge_over_%s" % other] = values
    print()
    if names:
        print("Benchmark (%s)%s" % (", ".join(names), " --quick" if args.quick else ""))
        print(text)
    for n in names:
        e = results["servers"].get(n, {})
        for mode in ("idle", "logins", "messages"):
            for w in load_warnings(e.get(mode) or {}):
                print("  %s: %s: %s" % (n, mode, w))
        if e.get("error"):
            print("  %s: error: %s" % (n, e["error"].splitlines()[0]))
    print_skipped(results)


def print_skipped(results):
    for n, why in results["meta"]["skipped"].items():
        print("  %s: SKIPPED, %s" % (n, why))


def print_archive(results, args):
    """The archive comparison: the configurations side by side (bridge's figures are medians over
    its rounds), bridge-on's ratios with the goals, then every run with what its archive holds."""
    out = results.get("archive") or {}
    figs = out.get("figures") or {}
    names = [n for n in ("bridge-off", "bridge-on", "prosody-on", "prosody-off", "ejabberd-on",
                         "ejabberd-off") if n in figs]
    text, ratios = table(figs, names, archive.ROWS, reference="bridge-on",
                         versus=archive.VERSUS)
    out["ratios_bridge_on_over"] = ratios
    print()
    print("Archive: messages, %d pairs, window %d, %.0f s after %.0f s of warm-up; bridge %d "
          "rounds (medians), peers once%s" % (args.pairs, args.window, args.duration, args.warmup,
                                             args.archive_rounds, " --quick" if args.quick else ""))
    if names:
        print(text)
        print()
    for other, goal in archive.GOALS.items():
        r = (ratios.get(other) or {}).get("messages_per_s")
        if r is not None:
            print("bridge-on/%s messages/s: %s, goal >= %s: %s"
                  % (other, fmt(r), fmt(goal), "met" if r >= goal else "NOT met"))
    if out.get("round_ratios"):
        print("bridge-on/bridge-off messages/s per round: %s"
              % " ".join(fmt(r) for r in out["round_ratios"]))
    print()
    head = "%-14s%12s%10s%10s%12s%10s%10s%10s" % (
        "run", "messages/s", "p50 ms", "p99 ms", "CPU us/msg", "sent", "archived", "per msg")
    print(head)
    print("-" * len(head))
    for e in out.get("runs") or []:
        f = e.get("figures") or {}
        sent = (e.get("messages") or {}).get("sent_total")
        items = e.get("archived_items")
        label = archive.run_label(e)
        print("%-14s%12s%10s%10s%12s%10s%10s%10s" % (
            label, fmt(f.get("messages_per_s")), fmt(f.get("latency_p50_ms")),
            fmt(f.get("latency_p99_ms")), fmt(f.get("server_cpu_us_per_message")), fmt(sent),
            fmt(items), fmt(round(items / sent, 2) if sent and items is not None else None)))
    for e in out.get("runs") or []:
        label = archive.run_label(e)
        for w in load_warnings(e.get("messages") or {}) + e.get("warnings", []):
            print("  %s: %s" % (label, w))
        if e.get("error"):
            print("  %s: error: %s" % (label, e["error"].splitlines()[0]))
    if out.get("error"):
        print("  archive: error: %s" % out["error"].splitlines()[0])
    print_skipped(results)


def write_json(results, path):
    with open(path, "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
        f.write("\n")
    print("results written to %s" % path)


def fed_table(cols):
    names = [k for k in ("bridge_to_bridge", "bridge_to_prosody") if k in cols]
    heads = {"bridge_to_bridge": "bridge->bridge", "bridge_to_prosody": "bridge->prosody"}
    head = "%-30s" % "figure" + "".join("%17s" % heads[n] for n in names)
    lines = [head, "-" * len(head)]
    for key, label in federation.ROWS:
        lines.append("%-30s" % label + "".join("%17s" % fmt(cols[n].get(key)) for n in names))
    return "\n".join(lines)


def print_federation(results, args):
    fed = results["federation"]
    local = (results["servers"].get("bridge") or {}).get("figures", {}).get("messages_per_s")
    cols = federation.figures(fed, local)
    fed["figures"] = cols
    print()
    print("Federation: senders on bridge a.test, %d pairs, window %d, %.0f s%s"
          % (args.fed_pairs, args.window, args.fed_duration,
             "" if local else " (no local bridge figure for the ratio)"))
    if cols:
        print(fed_table(cols))
    for key in ("bridge_to_bridge", "bridge_to_prosody"):
        e = fed.get(key) or {}
        warn = load_warnings(e.get("messages") or {})
        if e.get("error"):
            warn.append("error: %s" % e["error"].splitlines()[0])
        for w in warn:
            print("  %s: %s" % (key, w))
    if fed.get("error"):
        print("  federation: error: %s" % fed["error"].splitlines()[0])
    for name, lg in sorted((fed.get("logs") or {}).items()):
        n = len(lg.get("notable_lines") or [])
        if n:
            print("  %s: %d notable log lines (s2s events, errors) in the JSON output"
                  % (name, n))


def print_browser(results, args, names):
    br = results["browser_transports"]
    servers = br.get("servers") or {}
    figs = {n: (servers.get(n) or {}).get("figures", {}) for n in names}
    rows = [r for r in browser.ROWS if r[0].split("_")[0] in args.browser_transports]
    text, ratios = table(figs, names, rows)
    br["ratios_bridge_over_prosody"] = ratios.get("prosody", {})
    print()
    print("Browser transports (plain HTTP): %d idle sessions; %d pairs for %.0f s, window "
          "%d (BOSH %d); BOSH at most %g requests/s per session (bursts of %d)" % (
              args.browser_sessions, args.browser_pairs, args.browser_duration, args.window,
              args.bosh_window, args.bosh_max_rate, args.bosh_burst))
    print(text)
    for n in names:
        e = servers.get(n) or {}
        warn = []
        for transport in args.browser_transports:
            t = e.get(transport) or {}
            for load in ("idle", "messages"):
                warn += ["%s %s: %s" % (transport, load, w) for w in load_warnings(t.get(load) or {})]
            if t.get("error"):
                warn.append("%s error: %s" % (transport, t["error"].splitlines()[0]))
        if e.get("error"):
            warn.append("error: %s" % e["error"].splitlines()[0])
        for w in warn:
            print("  %s: %s" % (n, w))
    if br.get("error"):
        print("  browser transports: error: %s" % br["error"].splitlines()[0])

