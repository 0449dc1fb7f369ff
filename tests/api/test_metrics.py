"""GET /metrics: Prometheus text with the server's counts, moved by real requests."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings
from tests.api.support import chat_body, sse_events, tiny_steered_model


def value(text: str, name: str, **labels: str) -> float:
    """A sample's value from the exposition text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+)(\{[^}]*\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = ",".join(sorted((m.group(2) or "{}")[1:-1].split(","))) if m.group(2) else ""
        if got == want:
            return float(m.group(3))
    return 0.0


@pytest.fixture
def client(tiny_llama, tiny_tokenizer):
    app = create_app(Settings(presets_dir=None, default_max_tokens=6), tiny_steered_model(tiny_llama, tiny_tokenizer))
    with TestClient(app) as c:
        yield c


def test_metrics_count_requests_tokens_latencies_and_refusals(client):
    before = client.get("/metrics")
    assert before.status_code == 200 and before.headers["content-type"].startswith("text/plain")
    plain = client.post("/v1/chat/completions", json=chat_body(max_tokens=5, ignore_eos=True))
    assert plain.status_code == 200
    steered = client.post("/v1/chat/completions", json=chat_body(
        max_tokens=4, ignore_eos=True, stream=True, steering={"features": [{"index": 3, "value": 2.0}]}))
    assert sse_events(steered.text.splitlines())[-1] == "[DONE]"
    assert client.post("/v1/chat/completions", json=chat_body(n=0)).status_code == 400
    text = client.get("/metrics").text
    assert value(text, "steering_chat_requests_total", steered="false") == 1
    assert value(text, "steering_chat_requests_total", steered="true") == 1
    assert value(text, "steering_generated_tokens_total", steered="false") == 5
    assert value(text, "steering_generated_tokens_total", steered="true") == 4
    assert value(text, "steering_time_to_first_token_seconds_count") == 2  # one per choice
    assert value(text, "steering_inter_token_latency_seconds_count") == 4 + 3
    route = "/v1/chat/completions"
    assert value(text, "steering_http_requests_total", route=route, status="200") == 2
    assert value(text, "steering_http_requests_total", route=route, status="400") == 1
    assert value(text, "steering_requests_in_flight") == 0
