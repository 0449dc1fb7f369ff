"""End to end: the real server process on the embedded default model, driven by the official openai client.

Starts `python -m api --port FREE` on 127.0.0.1 (offline, the default model
and SAE), waits for GET /ready, and stops the process in a finally.
"""

from __future__ import annotations

import subprocess
import tempfile
import threading

import httpx
import openai
import pytest

from steering.concepts import DIRECTION_FEATURES
from tests.servers import start_api

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "Tell me about your favourite place."}]
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def server():
    log = tempfile.TemporaryFile(mode="w+")
    proc, base = start_api(["--host", "127.0.0.1"], log)
    try:
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model_id(client):
    (model,) = client.models.list().data
    return model.id


@pytest.fixture(scope="module")
def strong_clamp(server):
    """The 3 features with the largest max activation (of the first 1,000), clamped at 20x max."""
    feats = []
    for offset in (0, 500):
        feats += httpx.get(f"{server}/v1/features", params={"offset": offset, "limit": 500}).json()["data"]
    best = sorted((f for f in feats if f["max_activation"]), key=lambda f: -f["max_activation"])[:3]
    return [{"index": f["index"], "value": 20, "mode": "clamp", "unit": "max"} for f in best]


def _stream_texts(stream) -> tuple[dict[int, str], dict[int, str]]:
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    return texts, finish


def test_sync_and_streamed_answers_agree(client, model_id):
    kw = dict(model=model_id, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0.8, seed=11)
    full = client.chat.completions.create(**kw)
    choice = full.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length") and full.usage.completion_tokens <= MAX_TOKENS
    texts, finish = _stream_texts(client.chat.completions.create(**kw, stream=True))
    assert texts == {0: choice.message.content} and finish == {0: choice.finish_reason}


def test_steering_with_compare_and_a_strong_clamp(client, model_id, strong_clamp):
    kw = dict(model=model_id, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0.8, seed=5)
    out = client.chat.completions.create(**kw, extra_body={"steering": {"features": strong_clamp, "compare": True}})
    assert [c.index for c in out.choices] == [0, 1]
    assert [c.model_extra["steered"] for c in out.choices] == [True, False]
    plain = client.chat.completions.create(**kw)
    assert out.choices[1].message.content == plain.choices[0].message.content  # same seed: same baseline
    assert out.choices[0].message.content != out.choices[1].message.content  # the clamp changes the answer
    texts, _ = _stream_texts(client.chat.completions.create(
        **kw, stream=True, extra_body={"steering": {"features": strong_clamp, "compare": True}}))
    assert texts == {0: out.choices[0].message.content, 1: out.choices[1].message.content}


def test_errors_reach_the_client_as_openai_errors(client, model_id):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=4)
    assert info.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model_id, messages=MESSAGES, max_tokens=4,
                                       extra_body={"steering": {"features": [{"index": 10**7, "value": 1}]}})
    assert info.value.body["param"] == "steering.features[0].index"


def test_ready_models_and_feature_search(server, model_id):
    ready = httpx.get(f"{server}/ready").json()
    assert ready["model"] == model_id and ready["sae"]["d_sae"] > 0
    found = httpx.get(f"{server}/v1/features/search", params={"q": "Golden Gate Bridge", "limit": 5, "mode": "activation"}, timeout=60).json()
    assert 0 < len(found["data"]) <= 5 and all(m["activation"] > 0 for m in found["data"])


def test_auto_steer_probes_candidates_and_reports_its_pick(client, model_id):
    # The real search and probe on the shipped SAE (the catalogue's label matches join the candidates).
    kw = dict(model=model_id, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0.8, seed=3)
    out = client.chat.completions.create(**kw, extra_body={"steering": {"concept": "mountains", "compare": True,
                                                                         "method": "feature"}})
    report = out.model_extra["steering"]
    concept = report["concept"]
    probes = {p["index"]: p for p in concept["probe"]}
    assert set(probes) == {c["index"] for c in concept["candidates"]} and len(probes) >= 2
    (picked,) = concept["features"]
    judged = [p for p in probes.values() if p["baseline_rate"] <= 0.25]  # steering.concepts.probe.MAX_BASELINE_RATE
    assert probes[picked]["lift"] == max(p["lift"] for p in judged) > 0
    assert report["features"][0]["index"] == picked and report["generated_limit"] is not None
    assert out.choices[0].message.content != out.choices[1].message.content


def test_auto_steer_adds_the_concepts_direction_by_default(client, model_id):
    kw = dict(model=model_id, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0.8, seed=3)
    out = client.chat.completions.create(**kw, extra_body={"steering": {"concept": "cats", "compare": True}})
    report = out.model_extra["steering"]
    concept = report["concept"]
    assert concept["method"] == "direction" and concept["probe"] == [] and len(concept["features"]) == DIRECTION_FEATURES
    assert [f["index"] for f in report["features"]] == concept["features"]
    assert all(f["mode"] == "add" and f["unit"] == "raw" and f["value"] > 0 for f in report["features"])
    assert out.choices[0].message.content != out.choices[1].message.content


def test_attribution_and_a_graph_beside_a_stream(server, client, model_id):
    """In the real server (SAEs loaded on the compute thread, in inference mode) a graph across the three
    shipped layers is built while a stream goes on: its steps run between the stream's decoding steps."""
    texts: dict[int, str] = {}

    def stream() -> None:
        texts.update(_stream_texts(client.chat.completions.create(
            model=model_id, messages=MESSAGES, max_tokens=64, temperature=0, stream=True))[0])

    thread = threading.Thread(target=stream)
    thread.start()
    body = {"model": model_id, "prompt": "The capital of France is Paris, and the capital of Spain is",
            "target": " Madrid"}
    graph = httpx.post(f"{server}/v1/attribution/graph", json=body, timeout=120)
    single = httpx.post(f"{server}/v1/attribution", json=body, timeout=120)
    thread.join(120)
    assert graph.status_code == 200, graph.text
    assert graph.json()["layers"] == [6, 15, 24] and graph.json()["exact"]
    assert single.status_code == 200 and single.json()["target"]["token"] == " Madrid"
    plain = client.chat.completions.create(model=model_id, messages=MESSAGES, max_tokens=64, temperature=0)
    assert texts[0] == plain.choices[0].message.content  # the stream beside it was not disturbed
