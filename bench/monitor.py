"""The server process seen from /proc while a load runs: resident memory, CPU time and open files, sampled on a thread."""

import csv
import os
import threading
import time

from bench.load import server_cpu
from bench.servers import BenchError, proc_rss_kib


def open_fds(pid):
    """Number of open file descriptors of `pid` (entries of /proc/PID/fd), or None."""
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return None


def machine_cpu():
    """(busy, total) jiffies of all CPUs together, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def sample(pid):
    """{"rss_kib", "cpu_s", "fds", "machine"} of `pid` now (None for what cannot be read)."""
    try:
        rss = proc_rss_kib(pid)
    except (OSError, BenchError):
        rss = None
    return {"rss_kib": rss, "cpu_s": server_cpu(pid), "fds": open_fds(pid), "machine": machine_cpu()}


class ProcessMonitor:
    """Samples `pid` every `interval` seconds on a thread, from start() to stop() (or `max_samples`).

    Each sample has the time since start, VmRSS, the CPU time used and the
    CPU share of one core since the sample before, and the open descriptors.
    """

    def __init__(self, pid, interval=1.0, max_samples=100000):
        self.pid = pid
        self.interval = interval
        self.max_samples = max_samples
        self.samples = []
        self.marks = []  # (t, label): what happened when, for the report
        self._stop = threading.Event()
        self._thread = None
        self._t0 = None

    def start(self):
        self._t0 = time.monotonic()
        self._take()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def now(self):
        return time.monotonic() - self._t0

    def mark(self, label):
        self.marks.append((round(self.now(), 1), label))

    def _take(self):
        s = sample(self.pid)
        s["t"] = round(self.now(), 2)
        if self.samples and s["cpu_s"] is not None and self.samples[-1]["cpu_s"] is not None:
            dt = s["t"] - self.samples[-1]["t"]
            s["cpu_pct"] = round(100 * (s["cpu_s"] - self.samples[-1]["cpu_s"]) / dt, 1) if dt > 0 else None
        else:
            s["cpu_pct"] = None
        # The whole machine's busy share, in % of one CPU (2 CPUs fully busy: 200).
        if self.samples:
            busy0, total0 = self.samples[-1]["machine"]
            busy, total = s["machine"]
            s["machine_pct"] = round(100 * os.cpu_count() * (busy - busy0) / (total - total0), 1) \
                if total > total0 else None
        else:
            s["machine_pct"] = None
        self.samples.append(s)

    def _run(self):
        next_at = time.monotonic() + self.interval
        while len(self.samples) < self.max_samples:
            if self._stop.wait(max(0.0, next_at - time.monotonic())):
                return
            next_at += self.interval
            self._take()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return self

    def between(self, t0, t1):
        return [s for s in self.samples if t0 <= s["t"] <= t1]

    def write_csv(self, path):
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["t_s", "rss_kib", "cpu_s", "cpu_pct", "fds", "machine_cpu_pct"])
            for s in self.samples:
                w.writerow([s["t"], s["rss_kib"], s["cpu_s"], s["cpu_pct"], s["fds"], s["machine_pct"]])


def summary(samples):
    """Peak, first and last RSS (MiB), mean and peak CPU % (the server's, and the machine's mean in % of
    one CPU), fds first, peak and last, over `samples`."""
    rss = [s["rss_kib"] for s in samples if s["rss_kib"] is not None]
    cpu = [s["cpu_pct"] for s in samples if s.get("cpu_pct") is not None]
    machine = [s["machine_pct"] for s in samples if s.get("machine_pct") is not None]
    fds = [s["fds"] for s in samples if s["fds"] is not None]
    mib = lambda k: round(k / 1024, 1)
    out = {"samples": len(samples)}
    if rss:
        out.update(rss_first_mib=mib(rss[0]), rss_peak_mib=mib(max(rss)), rss_last_mib=mib(rss[-1]))
    if cpu:
        out.update(cpu_mean_pct=round(sum(cpu) / len(cpu), 1), cpu_peak_pct=max(cpu))
    if machine:
        out["machine_cpu_mean_pct"] = round(sum(machine) / len(machine), 1)
    if fds:
        out.update(fds_first=fds[0], fds_peak=max(fds), fds_last=fds[-1])
    if len(samples) >= 2 and samples[0]["cpu_s"] is not None and samples[-1]["cpu_s"] is not None:
        out["cpu_s"] = round(samples[-1]["cpu_s"] - samples[0]["cpu_s"], 2)
    return out
