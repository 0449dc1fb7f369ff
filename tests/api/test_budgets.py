"""Per-request and server budgets: the wall-time limit (--max-request-seconds) and the K/V bound (--max-kv-mib)."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings
from steering.engine.kv_cache import KVPool
from tests.api.support import chat_body, sse_events, tiny_steered_model


def _stall(client: TestClient, seconds: float) -> threading.Thread:
    """Hold the compute thread for `seconds` (a stand-in for a slow model), from another thread."""
    engine = client.app.state.server.engine
    t = threading.Thread(target=lambda: engine.call(time.sleep, seconds).result())
    t.start()
    time.sleep(0.2)
    return t


@pytest.fixture
def slow_client(tiny_llama, tiny_tokenizer, tmp_path):
    settings = Settings(presets_dir=tmp_path, max_request_seconds=1)
    with TestClient(create_app(settings, tiny_steered_model(tiny_llama, tiny_tokenizer))) as c:
        yield c


def test_a_request_past_the_wall_time_limit_is_a_408_naming_max_tokens(slow_client):
    stall = _stall(slow_client, 3.0)
    t0 = time.monotonic()
    r = slow_client.post("/v1/chat/completions", json=chat_body())
    assert time.monotonic() - t0 < 2.5  # ended at the limit, not when the model came back
    assert r.status_code == 408, r.text
    error = r.json()["error"]
    assert error["code"] == "request_timeout" and error["param"] == "max_tokens" and "1 s" in error["message"]
    stall.join()
    assert slow_client.post("/v1/chat/completions", json=chat_body()).status_code == 200  # the server goes on


def test_a_stream_past_the_wall_time_limit_ends_with_an_error_event(slow_client):
    stall = _stall(slow_client, 3.0)
    with slow_client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as r:
        events = sse_events(r.iter_lines())
    stall.join()
    assert r.status_code == 200 and events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == "request_timeout"


def test_a_kv_bound_shortens_the_context_and_names_max_tokens(tiny_llama, tiny_tokenizer, tmp_path):
    cfg = tiny_llama.config
    per_position = KVPool.bytes_per_position(cfg.num_hidden_layers, cfg.num_key_value_heads,
                                             cfg.hidden_size // cfg.num_attention_heads, torch_dtype(tiny_llama))
    mib = 1
    fits = (2**20 // (8 * per_position)) // 128 * 128  # 8 rows
    assert 0 < fits < cfg.max_position_embeddings, "the bound must bite for this test"
    settings = Settings(presets_dir=tmp_path, max_batch=8, max_kv_mib=mib)
    with TestClient(create_app(settings, tiny_steered_model(tiny_llama, tiny_tokenizer))) as c:
        engine = c.app.state.server.engine
        assert engine.max_length == fits
        r = c.post("/v1/chat/completions", json=chat_body(max_tokens=fits))
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
        assert f"maximum context length is {fits}" in r.json()["error"]["message"]
        assert c.post("/v1/chat/completions", json=chat_body(max_tokens=8)).status_code == 200
        pool = engine._backend.pool
        assert pool.capacity * pool.slots * per_position <= mib * 2**20


def torch_dtype(model):
    return next(model.parameters()).dtype


def test_the_kv_bound_applies_to_both_backends_and_refuses_a_bound_too_small(tiny_llama):
    from steering.engine.backends import make_backend
    from steering.errors import SteeringError

    fast = make_backend(tiny_llama, None, slots=8, max_kv_bytes=2**20)
    generic = make_backend(tiny_llama, None, slots=8, fast=False, max_kv_bytes=2**20)
    assert type(fast).__name__ == "FastBackend" and type(generic).__name__ == "HFBackend"
    assert fast.max_length == generic.max_length == 128  # 1 MiB / (8 rows x 1 KiB per position)
    assert make_backend(tiny_llama, None, slots=8).max_length == tiny_llama.config.max_position_embeddings
    with pytest.raises(SteeringError) as err:
        make_backend(tiny_llama, None, slots=64, max_kv_bytes=2**20)
    assert err.value.param == "max_kv_mib" and "at least 8 MiB" in str(err.value)
