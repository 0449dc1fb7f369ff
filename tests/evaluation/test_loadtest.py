"""The soak (steering.evaluation.loadtest) against a real server on loopback with a tiny model."""

from __future__ import annotations

import os

import pytest

from api.app import create_app
from api.settings import Settings
from steering.evaluation.loadtest import MIX, soak
from tests.api.support import tiny_steered_model
from tests.servers import served


@pytest.fixture
def server(tiny_llama, tiny_tokenizer):
    app = create_app(Settings(presets_dir=None, default_max_tokens=4), tiny_steered_model(tiny_llama, tiny_tokenizer))
    with served(app) as (url, _):
        yield url


def test_a_short_soak_covers_the_mix_and_reports_every_figure(server):
    result = soak(server, clients=2, seconds=3.0, max_tokens=4, pid=os.getpid(), feature=3, warmup_s=1.0)
    assert result.requests >= len(MIX) and result.errors == 0, result.error_examples
    assert set(result.by_status) == {"200"} and sum(result.by_status.values()) == result.requests
    assert result.latency_ms["p50"] > 0 and result.latency_ms["p95"] >= result.latency_ms["p50"]
    assert result.ttft_ms["p50"] is not None  # streams were among them
    assert result.tokens_per_s > 0
    assert result.rss_mb["start"] > 0 and result.rss_mb["peak"] >= result.rss_mb["start"]
    assert result.rss_mb["warm"] > 0 and result.rss_mb["growth_after_warmup"] is not None
