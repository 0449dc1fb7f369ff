"""Does a new concept stall other clients? A plain request's time to first token, idle and beside concept searches.

    1. idle      `plain` plain streamed requests, one after another (after one warm-up
                 request): each one's time to first token (TTFT)
    2. busy      `concepts` requests with concepts the server has not seen, each from its
                 own client (its own API key), sent `spacing_s` apart; from `lead_s`
                 after the first, the same `plain` requests again, one after another,
                 while the searches run
    3. reported  TTFT median and max of both phases and their ratio
                 (busy median / idle median: the issue's goal is <= 2), how many
                 concepts were searched (200) and refused (429, with their
                 Retry-After), and each search's seconds

The server must accept `keys` (one per concept client; `--start` passes them)
so that each concept counts as another client's. Talks HTTP only, like the
soak (`steering.evaluation.loadtest`).
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from typing import Any

# Concepts a fresh server has not searched (none is a shipped preset's).
CONCEPTS = ("volcanoes", "chess", "trains", "bees", "jazz", "castles", "rainbows", "pirates")


def concept_keys(n: int) -> list[str]:
    return [f"fairness-client-{k}" for k in range(n + 1)]  # the last one sends the plain requests


def _ttft(http: Any, body: dict[str, Any]) -> float:
    """Milliseconds from sending a streamed request to its first content chunk."""
    t0 = time.perf_counter()
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"a plain request got {r.status_code}: {r.read().decode()[:300]}")
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise RuntimeError(f"a plain request's stream ended with {line[:300]}")
                if any(ch["delta"].get("content") for ch in chunk["choices"]):
                    elapsed = (time.perf_counter() - t0) * 1e3
                    for _ in lines:  # read it out: the next request must not overlap this one
                        pass
                    return elapsed
    raise RuntimeError("a plain request produced no content")


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 1), "max": round(max(values), 1), "n": len(values)}


def fairness(url: str, keys: list[str], concepts: int = 5, plain: int = 8, max_tokens: int = 16,
             spacing_s: float = 0.2, lead_s: float = 1.0) -> dict[str, Any]:
    """Measure (module docstring); `keys[:concepts]` send the concepts, `keys[-1]` the plain requests."""
    import httpx

    if not 0 < concepts <= len(CONCEPTS) or len(keys) <= concepts:
        raise ValueError(f"concepts must be in 1..{len(CONCEPTS)} with a key each and one more for plain requests")
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys[-1]}"}, timeout=600) as http:
        model = http.get("/v1/models").json()["data"][0]["id"]

        def body(k: int, **extra: Any) -> dict[str, Any]:
            return {"model": model, "max_tokens": max_tokens, "seed": k, "stream": True, **extra,
                    "messages": [{"role": "user", "content": f"Tell me something about the number {k}."}]}

        _ttft(http, body(0))  # warm-up
        idle = [_ttft(http, body(k)) for k in range(1, plain + 1)]
        outcomes: list[dict[str, Any]] = [{} for _ in range(concepts)]

        def search(k: int) -> None:
            t0 = time.perf_counter()
            r = httpx.post(f"{url}/v1/chat/completions", timeout=600,
                           headers={"Authorization": f"Bearer {keys[k]}"},
                           json={"model": model, "max_tokens": max_tokens, "seed": k, "steering": {"concept": CONCEPTS[k]},
                                 "messages": [{"role": "user", "content": "What is on your mind?"}]})
            outcomes[k] = {"concept": CONCEPTS[k], "status": r.status_code, "seconds": round(time.perf_counter() - t0, 2),
                           "retry_after": r.headers.get("retry-after")}

        threads = [threading.Thread(target=search, args=(k,)) for k in range(concepts)]
        for t in threads:
            t.start()
            time.sleep(spacing_s)
        time.sleep(max(0.0, lead_s - spacing_s * concepts))
        busy, searching = [], []
        for k in range(plain):
            searching.append(sum(t.is_alive() for t in threads))
            busy.append(_ttft(http, body(100 + k)))
        for t in threads:
            t.join()
    i, b = _summary(idle), _summary(busy)
    return {"idle_ttft_ms": i, "busy_ttft_ms": b, "ratio_median": round(b["median"] / i["median"], 2),
            "ratio_max": round(b["max"] / i["median"], 2), "searches_running_at_each_plain_request": searching,
            "concepts": outcomes, "max_tokens": max_tokens}
