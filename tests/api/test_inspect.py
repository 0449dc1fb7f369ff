"""POST /v1/inspect and POST /v1/features/contrast on the tiny model."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings
from steering.chat_template import render_chat
from steering.concepts import concept_texts, neutral_texts
from tests.api.support import D_SAE, MODEL_ID, tiny_steered_model
from tests.support import hook_acts, plant_feature

CONCEPT = "zzzz zzzz zzzz zzzz zzzz"
CHAT = [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi! zzz"}]


@pytest.fixture
def sm(tiny_llama, tiny_tokenizer):
    sm = tiny_steered_model(tiny_llama, tiny_tokenizer)
    plant_feature(sm, 17, concept_texts(CONCEPT) + neutral_texts(CONCEPT))
    return sm


@pytest.fixture
def client(sm):
    with TestClient(create_app(Settings(presets_dir=None), sm)) as c:
        yield c


def test_inspect_a_conversation_per_token(client, sm, tiny_tokenizer):
    r = client.post("/v1/inspect", json={"model": MODEL_ID, "messages": CHAT, "inspect": {"top_k": 4, "features": [17]},
                                         "summary_limit": 5})
    assert r.status_code == 200, r.text
    out = r.json()
    ids = render_chat(tiny_tokenizer, CHAT, add_generation_prompt=False)
    assert out["object"] == "inspection" and [t["token_id"] for t in out["tokens"]] == ids[1:]
    assert [t["position"] for t in out["tokens"]] == list(range(1, len(ids)))
    dense = sm.sae.encode(hook_acts(sm.loaded.model, ids)).detach()
    for t in out["tokens"]:
        want = [i for i, v in zip(*dense[t["position"]].topk(4)[::-1]) if v > 0]
        assert [f["index"] for f in t["top"]] == [int(i) for i in want]
        assert t["features"][0]["index"] == 17
        assert t["features"][0]["activation"] == pytest.approx(float(dense[t["position"], 17]), abs=1e-5)
    z = [t for t in out["tokens"] if t["token"] == "z"]
    assert z and all(t["features"][0]["activation"] > 0 for t in z)  # the planted 'z' detector fires on them
    assert len(out["summary"]) == 5 and out["summary"][0]["total"] >= out["summary"][-1]["total"]


@pytest.mark.parametrize("body,param", [
    ({"inspect": {"top_k": 65}}, "inspect.top_k"),
    ({"inspect": {"top_k": 0}}, "inspect.top_k"),
    ({"inspect": {"features": [D_SAE]}}, "inspect.features[0]"),
    ({"inspect": {"positions": "middle"}}, "inspect.positions"),
    ({"inspect": {"colour": 1}}, "inspect.colour"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "z" * 3000}]}, "messages"),
    ({"summary_limit": -1}, "summary_limit"),
])
def test_bad_inspect_requests_name_the_parameter(client, body, param):
    r = client.post("/v1/inspect", json={"model": MODEL_ID, "messages": CHAT, **body})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_unknown_model_is_a_404(client):
    r = client.post("/v1/inspect", json={"model": "other", "messages": CHAT})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_contrast_finds_the_planted_feature(client):
    a = concept_texts(CONCEPT)[:4]
    b = [[{"role": "user", "content": t}] for t in neutral_texts(CONCEPT)[:4]]  # conversations work too
    r = client.post("/v1/features/contrast", json={"model": MODEL_ID, "a": a, "b": b, "limit": 3})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "contrast" and out["a"][0]["index"] == 17 and out["a"][0]["fire_rate_a"] == 1.0
    assert all(f["effect"] < 0 for f in out["b"])
    for body, param in (({"a": []}, "a"), ({"b": ["x"] * 65}, "b"), ({"limit": 0}, "limit"),
                        ({"a": [[{"role": "robot", "content": "x"}]]}, "a[0]")):
        r = client.post("/v1/features/contrast", json={"model": MODEL_ID, "a": a, "b": b, **body})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
