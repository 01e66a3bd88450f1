"""Runs the load generator (``bench/load.py``, a process of its own) against a server and reads its result."""

import json
import queue
import subprocess
import sys
import threading
import time

from bench.servers import REPO, BenchError, proc_rss_kib, say


def loader_cmd(args, server, mode, extra, recv=None, accounts=None, transport=None):
    """The load.py command line; `transport` (bosh, websocket) points it at the
    server's HTTP listener instead of c2s."""
    port = server.port
    if transport and transport != "tcp":
        port = server.http_port
        extra = ["--transport", transport, "--bosh-max-rate", args.bosh_max_rate,
                 "--bosh-burst", args.bosh_burst] + list(extra)
    cmd = [sys.executable, "-m", "bench.load", mode, "--host", server.host, "--port", str(port),
           "--domain", server.domain, "--user-pattern", args.user_pattern,
           "--password", args.password, "--accounts", str(accounts or args.accounts),
           "--concurrency", str(args.concurrency),
           "--server-pid", str(server.pid)]
    if recv is not None:  # federated messages: receivers on another server
        cmd += ["--recv-host", recv.host, "--recv-port", str(recv.port),
                "--recv-domain", recv.domain, "--recv-user-pattern", args.user_pattern,
                "--recv-password", args.password, "--recv-server-pid", str(recv.pid)]
    return cmd + [str(x) for x in extra]


def parse_line(line):
    """The JSON object of one line of the loader's standard output, or None."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        return json.loads(line)
    except ValueError:
        return None


def parse_result(stdout):
    result = None
    for line in stdout.splitlines():
        obj = parse_line(line)
        if obj is not None and obj.get("type") == "result":
            result = obj
    return result


def run_loader(args, server, mode, extra, timeout, recv=None, accounts=None, transport=None):
    cmd = loader_cmd(args, server, mode, extra, recv, accounts, transport)
    say("%s: load %s: %s" % (server.name, mode, " ".join(cmd[3:])))
    t0 = time.monotonic()
    try:
        r = subprocess.run(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=None, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError("loader %s timed out after %.0f s" % (mode, timeout))
    wall = time.monotonic() - t0
    res = parse_result(r.stdout)
    if res is None:
        raise BenchError("loader %s gave no result (exit %s)" % (mode, r.returncode))
    res["loader_wall_s"] = round(wall, 3)
    for srv in (server, recv):
        if srv is not None and not srv.alive():
            res["server_died"] = True
            raise BenchError("%s died during the %s load (exit code %s)"
                             % (srv.name, mode, srv.proc.returncode if srv.proc else None))
    return res


def run_idle(args, server, sessions, accounts=None, transport=None):
    extra = ["--sessions", sessions, "--hold-timeout", args.hold_timeout]
    cmd = loader_cmd(args, server, "idle", extra, accounts=accounts, transport=transport)
    say("%s: load idle: %s" % (server.name, " ".join(cmd[3:])))
    time.sleep(args.settle)
    rss_before = proc_rss_kib(server.pid)
    proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=None, text=True)
    lines = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    ready = None
    collected = []
    deadline = time.monotonic() + args.idle_timeout
    try:
        while ready is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError("idle loader not ready after %.0f s" % args.idle_timeout)
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise BenchError("idle loader exited before ready: %s"
                                 % parse_result("".join(collected)))
            collected.append(line)
            obj = parse_line(line)
            if obj is not None and obj.get("type") == "ready":
                ready = obj
        time.sleep(args.settle)
        if not server.alive():
            raise BenchError("server died during the idle load")
        samples = []
        for _ in range(3):
            samples.append(proc_rss_kib(server.pid))
            time.sleep(0.5)
        rss_after = samples[-1]
    finally:
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    while True:
        try:
            line = lines.get(timeout=5)
        except queue.Empty:
            break
        if line is None:
            break
        collected.append(line)
    res = parse_result("".join(collected)) or {"type": "result", "mode": "idle"}
    n = ready["sessions"]
    res.update({
        "rss_before_kib": rss_before, "rss_after_kib": rss_after,
        "rss_samples_kib": samples,
        "rss_per_session_kib": round((rss_after - rss_before) / n, 2) if n else None,
    })
    return res


def smoke(args, server, accounts, transport=None):
    """A few logins right after start: lazily loaded code gets loaded before
    any measurement, and a broken login fails fast."""
    n = min(20, accounts)
    res = run_loader(args, server, "logins", ["--logins", n, "--login-accounts", n,
                                              "--max-time", 120], timeout=180,
                     accounts=accounts, transport=transport)
    if res.get("failed") is True or not res.get("logins_ok"):
        raise BenchError("%s: smoke logins failed: %s" % (server.name, res.get("errors")))
    return res
