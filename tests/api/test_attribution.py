"""POST /v1/attribution on the tiny model: a prompt or a conversation, the nodes, and bad input named."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings
from steering.attribution import MAX_ATTRIBUTION_TOKENS, attribute
from steering.inspection import token_rows
from tests.api.support import MODEL_ID, tiny_steered_model


@pytest.fixture
def sm(tiny_llama, tiny_tokenizer):
    return tiny_steered_model(tiny_llama, tiny_tokenizer)


@pytest.fixture
def client(sm, tmp_path):
    with TestClient(create_app(Settings(presets_dir=tmp_path), sm)) as c:
        yield c


def post(client, **body):
    return client.post("/v1/attribution", json={"model": MODEL_ID, **body})


def test_a_prompt_is_attributed_as_the_library_does(client, sm):
    r = post(client, prompt="hello world", top_k=5)
    assert r.status_code == 200, r.text
    body = r.json()
    (ids,) = token_rows(sm, ["hello world"])
    expected = attribute(sm, ids, top_k=5)
    assert body["object"] == "attribution" and body["prompt_tokens"] == len(ids)
    assert body["target"]["token_id"] == expected.target.token_id
    assert [(n["position"], n["kind"], n["feature"]) for n in body["nodes"]] == \
        [(n.position, n.kind, n.feature) for n in expected.nodes]
    assert body["feature_share"] + body["error_share"] + body["sink_share"] == pytest.approx(1.0)


def test_a_conversation_with_a_target_and_a_contrast(client):
    r = post(client, messages=[{"role": "user", "content": "hi"}], target="a", contrast="b", top_k=3)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["contrast"] is not None and len(body["nodes"]) == 3
    assert body["metric"] == pytest.approx(body["target"]["logit"] - body["contrast"]["logit"], abs=1e-4)


@pytest.mark.parametrize(("body", "param"), [
    ({}, "messages"),
    ({"prompt": "x", "messages": [{"role": "user", "content": "x"}]}, "messages"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "x", "target": ""}, "target"),
    ({"prompt": "x", "contrast": ""}, "contrast"),
    ({"prompt": "x", "top_k": 0}, "top_k"),
    ({"prompt": "x", "top_k": "3"}, "top_k"),
    ({"prompt": "a " * (MAX_ATTRIBUTION_TOKENS + 10)}, "prompt"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}, "messages"),
])
def test_bad_input_is_a_400_naming_the_parameter(client, body, param):
    r = post(client, **body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_unknown_model_is_a_404(client):
    r = client.post("/v1/attribution", json={"model": "nope", "prompt": "x"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
