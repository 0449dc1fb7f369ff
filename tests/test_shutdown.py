"""Graceful shutdown of the real server process (api.shutdown): SIGTERM with streams in flight.

Each test starts `python -m api` on a free loopback port with the embedded
default model, opens three streams, sends SIGTERM while they run, and reads
what every stream received to its end: with time to drain, three complete
answers; past the drain timeout, three clean error events; either way
`data: [DONE]` last, new requests a 503 meanwhile, and exit status 0.
"""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import threading
import time

import httpx
import pytest

from tests.servers import start_api

pytestmark = pytest.mark.e2e


def _start(drain_timeout: int) -> tuple[subprocess.Popen, str, object]:
    log = tempfile.TemporaryFile(mode="w+")
    proc, base = start_api(["--drain-timeout", str(drain_timeout)], log)
    return proc, base, log


def _stream(base: str, max_tokens: int, out: list, started: threading.Event) -> None:
    body = {"model": "default", "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0, "stream": True}
    events = []
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                started.set()
    out.append(events)


def _run_and_terminate(drain_timeout: int, max_tokens: int) -> tuple[list[list[str]], int, httpx.Response, str]:
    proc, base, log = _start(drain_timeout)
    try:
        results: list[list[str]] = []
        flags = [threading.Event() for _ in range(3)]
        threads = [threading.Thread(target=_stream, args=(base, max_tokens, results, f)) for f in flags]
        for t in threads:
            t.start()
        for f in flags:
            assert f.wait(120), "a stream never started"
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        refused = httpx.post(f"{base}/v1/chat/completions", timeout=30, json={
            "model": "default", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
        for t in threads:
            t.join(120)
        code = proc.wait(timeout=60)
        log.seek(0)
        return results, code, refused, log.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_sigterm_lets_running_streams_finish_and_refuses_new_requests():
    results, code, refused, log = _run_and_terminate(drain_timeout=60, max_tokens=160)
    assert code == 0, log[-2000:]
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "server_shutting_down"
    assert refused.headers.get("retry-after")
    assert len(results) == 3
    for events in results:
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert "error" not in chunks[-1]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"  # the whole answer came
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert text


def test_sigterm_past_the_drain_timeout_ends_streams_with_an_error_event():
    results, code, refused, log = _run_and_terminate(drain_timeout=1, max_tokens=4000)
    assert code == 0, log[-2000:]
    assert refused.status_code == 503
    assert len(results) == 3
    for events in results:
        assert events[-1] == "[DONE]"
        last = json.loads(events[-2])
        assert last["error"]["code"] == "server_shutting_down" and last["error"]["message"]
