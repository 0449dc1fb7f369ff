"""Servers for tests, always on 127.0.0.1 and a free port, always stopped by the test.

    with served(app) as (url, server): ...          the app in a thread (uvicorn), in this process
    proc, url = start_api(["--drain-timeout", "5"], log)   `python -m api` as a process, once /ready is 200
    proc, url = start_scale_out(2, 1, log_path)             `python -m api.scale_out`, once its replicas are ready
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

import httpx
import pytest
import uvicorn

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(app: Any) -> Iterator[tuple[str, uvicorn.Server]]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def start_api(args: Sequence[str], log: IO[str]) -> tuple[subprocess.Popen, str]:
    """`python -m api --port FREE ARGS` (offline, 2 threads unless STEERING_THREADS says otherwise), once
    GET /ready is 200; fails the test with the log's tail if it exits or is not ready in time."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "STEERING_THREADS": os.environ.get("STEERING_THREADS", "2")}
    proc = subprocess.Popen([sys.executable, "-m", "api", "--port", str(port), *args], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"the server exited with {proc.returncode}:\n{log.read()[-3000:]}")
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the server was not ready in time")
        time.sleep(0.5)


def start_scale_out(replicas: int, threads: int, log_path: Path) -> tuple[subprocess.Popen, str]:
    """`python -m api.scale_out` (a local Ray cluster of this machine's CPUs) on a free loopback port, once it
    printed that every replica is ready; raises RuntimeError with the log's tail if it exits or is not ready."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "api.scale_out", "--replicas", str(replicas), "--threads",
                                 str(threads), "--num-cpus", str(os.cpu_count() or 2), "--port", str(port),
                                 "--drain-timeout", "5"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while f"ready: {replicas} replicas" not in log_path.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_scale_out(proc)
            raise RuntimeError(f"scale_out did not become ready:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)
    return proc, f"http://127.0.0.1:{port}"


def stop_scale_out(proc: subprocess.Popen) -> None:
    """SIGTERM (Ray Serve drains, then the cluster stops); SIGKILL to its process group after 90 s."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
