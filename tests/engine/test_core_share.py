"""steering.engine.core_share: threads given up to other processes, and taken back."""

from __future__ import annotations

import subprocess
import sys
import time

import steering.engine.core_share as core_share
from steering.engine.core_share import CoreShare


def test_threads_follow_the_cores_others_leave(monkeypatch):
    clock, busy, mine = [0.0], [0.0], [0.0]
    monkeypatch.setattr(core_share.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(core_share, "_machine_busy_s", lambda: busy[0])
    monkeypatch.setattr(core_share, "_process_cpu_s", lambda: mine[0])
    share = CoreShare(configured=4, cores=4, interval_s=1.0)
    assert share.threads() == 4  # the first call only takes a reading

    def second(machine: float, process: float) -> int:
        clock[0] += 1.0
        busy[0] += machine
        mine[0] += process
        return share.threads()

    assert second(4.0, 4.0) == 4 and share.others == 0.0  # all the busy time was ours
    assert second(4.0, 3.0) == 3  # another process took one core
    assert second(4.0, 3.4) == 4  # 0.6 of a core: not worth a thread
    assert second(3.6, 1.0) == 2  # others took 2.6 cores: 1.4 left, and 0.4 of a busy core still runs a thread
    assert second(4.0, 0.7) == 1  # others took 3.3 cores
    assert second(4.0, 0.5) == 1  # never below one thread
    clock[0] += 0.5
    assert share.threads() == 1  # within the interval: the last answer
    assert second(1.5, 1.5) == 4  # the neighbours stopped: all threads back


def test_a_real_spinning_neighbour_is_seen():
    share = CoreShare(configured=2, cores=2, interval_s=0.3)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        share.threads()
        time.sleep(0.6)
        threads = share.threads()
    finally:
        spinner.kill()
        spinner.wait()
    assert share.others >= 0.5 and threads == 1
