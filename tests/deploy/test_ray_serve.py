"""Scale-out on a local Ray cluster: `python -m api.scale_out` with 2 CPU replicas of the default model.

ray[serve] comes with `make test`'s install (the `scale` extra). Checks,
through the official client on 127.0.0.1: 16 concurrent clients are
spread over both replicas; streams running on a replica that is killed
(SIGKILL, a real crash) end with an OpenAI-shaped error, while streams on the
other replica finish; requests after the kill are answered by the survivor;
SIGTERM stops the whole cluster.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.servers import start_scale_out, stop_scale_out

MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture
def cluster(tmp_path):
    try:
        proc, url = start_scale_out(2, 1, tmp_path / "scale_out.log")
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield f"{url}/v1", proc
    finally:
        stop_scale_out(proc)


def test_two_replicas_share_the_load_and_a_crash_fails_cleanly(cluster):
    from openai import APIError, OpenAI

    url, proc = cluster
    client = OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)

    def ask(i: int) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": f"Say a word about the number {i}."}],
            max_tokens=6, temperature=0)
        assert raw.parse().choices[0].message.content
        return raw.headers["x-steering-replica"]

    with ThreadPoolExecutor(16) as pool:
        served_by = list(pool.map(ask, range(16)))
    assert len(set(served_by)) == 2, served_by  # both replicas took requests

    # Four long streams; once each has produced tokens, the replica of the first one is killed.
    replicas: dict[int, str] = {}
    outcomes: dict[int, str] = {}
    progressed = [threading.Event() for _ in range(4)]

    def stream(i: int) -> None:
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": "Tell me a long story about a lighthouse."}],
                max_tokens=160, temperature=0, stream=True)
            replicas[i] = raw.headers["x-steering-replica"]
            for chunks, _ in enumerate(raw.parse(), start=1):
                if chunks == 3:
                    progressed[i].set()
            outcomes[i] = "finished"
        except APIError as exc:
            outcomes[i] = f"error: {exc.message}"
        finally:
            progressed[i].set()

    threads = [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    assert all(e.wait(timeout=120) for e in progressed)
    victim = replicas[0]
    assert 0 not in outcomes, "the first stream ended before the kill"
    os.kill(int(victim.rsplit(":", 1)[1]), signal.SIGKILL)
    killed_at = time.monotonic()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), "a stream hung after its replica died"
    assert time.monotonic() - killed_at < 60
    for i in range(4):
        if replicas.get(i) == victim:
            assert outcomes[i].startswith("error:") and "replica" in outcomes[i], outcomes[i]
        else:
            assert outcomes[i] == "finished", (i, outcomes[i])

    after = [ask(100 + i) for i in range(4)]  # new requests go to the survivor
    assert victim not in after and set(after) <= set(served_by)
    assert proc.poll() is None
    stop_scale_out(proc)  # SIGTERM: Ray Serve shuts down, then the cluster
    assert proc.returncode == 0
