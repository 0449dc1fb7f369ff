"""How many cores the compute thread may use now: fewer when other processes keep some busy.

Why: a decoding step is ~120 short parallel kernels, each ending in a barrier
where every thread of the team waits for the slowest. With 2 threads on 2
cores and another process spinning on one of them, one of our threads keeps
being descheduled and every barrier waits for it: measured on this 2-core
host, a greedy batch-1 answer fell from 49.5 to 16 tokens/s with 2 threads,
where 1 thread kept 30.

`CoreShare.threads()` reads, at most once per `interval_s`, the CPU time of
the whole machine (/proc/stat) and of this process (/proc/self/stat) over
the last interval, and returns

    others    = (busy time of all cores - this process's CPU time) / interval      [cores]
    threads   = clamp(floor(cores - others + 0.75), 1, configured)

so a neighbour taking (most of) a whole core costs one thread, one taking
less (a load-test client parsing our streams on the same machine) costs
none, and the full count returns when it stops. Without /proc (not Linux) it always returns the
configured count.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_busy_s() -> float | None:
    """Seconds of CPU time spent busy on all cores since boot (None without /proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values[:8]) - idle) / _TICK


def _process_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


class CoreShare:
    """See the module docstring. `configured` is the thread count asked for; `cores` the machine's."""

    def __init__(self, configured: int, cores: int | None = None, interval_s: float = 0.5):
        self.configured = max(1, configured)
        if cores is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.cores = cores
        self.interval_s = interval_s
        self._last: tuple[float, float, float] | None = None  # (wall, machine busy, process cpu)
        self._threads = self.configured
        self.others = 0.0  # cores other processes used over the last interval

    def threads(self) -> int:
        now = time.monotonic()
        if self._last is not None and now - self._last[0] < self.interval_s:
            return self._threads
        busy = _machine_busy_s()
        if busy is None:
            return self.configured
        mine = _process_cpu_s()
        if self._last is not None:
            wall, busy0, mine0 = self._last
            self.others = max(0.0, ((busy - busy0) - (mine - mine0)) / (now - wall))
            free = int(self.cores - self.others + 0.75)
            self._threads = max(1, min(self.configured, free))
        self._last = (now, busy, mine)
        return self._threads
