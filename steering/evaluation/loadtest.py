"""A soak of an OpenAI-compatible steering server: N clients for T seconds, and what it cost.

Each client sends requests back to back, cycling through a mix that covers
what users send (plain, steered with a clamp, streamed, A/B compare), with
small `max_tokens` so that a soak is many requests. Reported:

    requests, by_status          every response by HTTP status (transport failures as "error")
    errors                       responses that are neither 2xx nor 429 (a 429 is the server's
                                 documented back-pressure, counted but not an error)
    latency_ms p50/p95           submit to the last byte, successful requests
    ttft_ms p50/p95              submit to the first content chunk, successful streams
    tokens_per_s                 completion tokens of successful requests / wall time
    rss_mb start/warm/end/peak   the server process's resident memory (with its pid, from /proc):
                                 at the start, after `warmup_s` (KV slots, prefix cache and
                                 allocator pools filled), at the end, and the peak;
                                 growth_after_warmup = end / warm - 1 is the leak figure

`start_server` runs `python -m api` on a free loopback port for a soak of a
fresh process and stops it with SIGTERM (its exit status is reported).
Talks HTTP only; it imports nothing of the server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MIX = ("plain", "steered", "stream", "compare")


@dataclass
class SoakResult:
    clients: int
    seconds: float
    requests: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    error_examples: list[str] = field(default_factory=list)
    latency_ms: dict[str, float | None] = field(default_factory=dict)
    ttft_ms: dict[str, float | None] = field(default_factory=dict)
    tokens_per_s: float = 0.0
    rss_mb: dict[str, float | None] = field(default_factory=dict)
    server_exit: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _pcts(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None}
    values = sorted(values)
    return {"p50": round(statistics.median(values), 1), "p95": round(values[min(len(values) - 1, int(0.95 * len(values)))], 1)}


def _body(kind: str, model: str, feature: int, max_tokens: int, k: int) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "seed": k,
                            "messages": [{"role": "user", "content": f"Tell me something about the number {k}."}]}
    if kind in ("steered", "compare"):
        body["steering"] = {"features": [{"index": feature, "value": 2.0}], "compare": kind == "compare"}
    if kind == "stream":
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def soak(url: str, clients: int = 8, seconds: float = 300.0, max_tokens: int = 24, api_key: str | None = None,
         pid: int | None = None, feature: int = 0, warmup_s: float = 30.0) -> SoakResult:
    """Drive the server at `url` with `clients` clients for `seconds` (see the module docstring)."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    model = httpx.get(f"{url}/v1/models", headers=headers, timeout=30).json()["data"][0]["id"]
    result = SoakResult(clients, seconds)
    lock = threading.Lock()
    latencies: list[float] = []
    ttfts: list[float] = []
    tokens = [0]
    peak = [rss_mb(pid) if pid else None]
    result.rss_mb["start"] = peak[0]
    deadline = time.monotonic() + seconds

    def record(status: str, latency: float | None, ttft: float | None, n_tokens: int, problem: str | None) -> None:
        with lock:
            result.requests += 1
            result.by_status[status] = result.by_status.get(status, 0) + 1
            if problem is not None:
                result.errors += 1
                if len(result.error_examples) < 5:
                    result.error_examples.append(problem[:300])
            if latency is not None:
                latencies.append(latency)
            if ttft is not None:
                ttfts.append(ttft)
            tokens[0] += n_tokens

    def client(c: int) -> None:
        k = c
        with httpx.Client(base_url=url, headers=headers, timeout=120) as http:
            while time.monotonic() < deadline:
                kind = MIX[k % len(MIX)]
                body = _body(kind, model, feature, max_tokens, k)
                k += clients
                t0 = time.perf_counter()
                try:
                    if kind == "stream":
                        first, n, status, text = None, 0, 0, ""
                        with http.stream("POST", "/v1/chat/completions", json=body) as r:
                            status = r.status_code
                            for line in r.iter_lines():
                                if not line.startswith("data: ") or line == "data: [DONE]":
                                    continue
                                chunk = json.loads(line[6:])
                                if "error" in chunk:
                                    text = line
                                elif chunk.get("usage"):
                                    n = chunk["usage"]["completion_tokens"]
                                elif first is None and any(ch["delta"].get("content") for ch in chunk["choices"]):
                                    first = time.perf_counter()
                            text = text or (r.read().decode() if status != 200 else "")
                        ok = status == 200 and not text
                        record(str(status), (time.perf_counter() - t0) * 1e3 if ok else None,
                               (first - t0) * 1e3 if ok and first else None, n if ok else 0,
                               None if ok or status == 429 else f"{status} {text}")
                    else:
                        r = http.post("/v1/chat/completions", json=body)
                        ok = r.status_code == 200
                        n = r.json()["usage"]["completion_tokens"] if ok else 0
                        record(str(r.status_code), (time.perf_counter() - t0) * 1e3 if ok else None, None, n,
                               None if ok or r.status_code == 429 else f"{r.status_code} {r.text}")
                        if r.status_code == 429:
                            time.sleep(float(r.headers.get("retry-after", "1")))
                except Exception as exc:  # a transport failure is an error of the soak, not of this client
                    record("error", None, None, 0, f"{type(exc).__name__}: {exc}")

    warm_at = time.monotonic() + min(warmup_s, seconds / 2)

    def watch_rss() -> None:
        while time.monotonic() < deadline:
            value = rss_mb(pid) if pid else None
            if value is not None:
                peak[0] = max(peak[0] or 0.0, value)
                if "warm" not in result.rss_mb and time.monotonic() >= warm_at:
                    result.rss_mb["warm"] = value
            time.sleep(1.0)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)] + [threading.Thread(target=watch_rss)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - start
    result.latency_ms, result.ttft_ms = _pcts(latencies), _pcts(ttfts)
    result.tokens_per_s = round(tokens[0] / wall, 2)
    result.rss_mb.update(end=rss_mb(pid) if pid else None, peak=peak[0])
    warm, end = result.rss_mb.get("warm"), result.rss_mb["end"]
    result.rss_mb["growth_after_warmup"] = round(end / warm - 1, 4) if warm and end else None
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], ready_timeout_s: float = 300.0, api_key: str | None = None) -> tuple[subprocess.Popen, str]:
    """`python -m api ARGS` on a free loopback port, once GET /ready is 200 (asked with `api_key` when
    the server has keys): (process, base url)."""
    import httpx

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "api", "--port", str(port), *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode}")
        try:
            headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
            if httpx.get(f"{url}/ready", headers=headers, timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the server was not ready in time")


def stop_server(proc: subprocess.Popen, timeout_s: float = 60.0) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
