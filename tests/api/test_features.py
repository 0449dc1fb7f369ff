"""GET /v1/features, /v1/features/{index} and /v1/features/search, with and without a catalogue."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings
from steering.hooks import capture, run_until_capture
from tests.api.support import D_SAE, tiny_steered_model


@pytest.fixture
def sm(tiny_llama, tiny_tokenizer):
    return tiny_steered_model(tiny_llama, tiny_tokenizer)


@pytest.fixture
def client(sm):
    with TestClient(create_app(Settings(presets_dir=None), sm)) as c:
        yield c


def test_paging(client, sm):
    page = client.get("/v1/features", params={"offset": 90, "limit": 4}).json()
    assert page["object"] == "list" and page["total"] == D_SAE and page["has_more"] is True
    assert [f["index"] for f in page["data"]] == [90, 91, 92, 93]
    f = page["data"][0]
    assert f["label"] is None and f["max_activation"] == pytest.approx(float(sm.sae.max_activation[90]))
    assert f["firing_frequency"] == pytest.approx(float(sm.sae.firing_frequency[90]))
    last = client.get("/v1/features", params={"offset": 94, "limit": 50}).json()
    assert len(last["data"]) == 2 and last["has_more"] is False
    assert client.get("/v1/features", params={"offset": 1000}).json()["data"] == []
    for params, param in (({"limit": 0}, "limit"), ({"limit": 501}, "limit"), ({"offset": -1}, "offset"),
                          ({"limit": "many"}, "limit")):
        r = client.get("/v1/features", params=params)
        assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_unknown_statistics_are_null(sm):
    sm.sae.max_activation[7] = float("nan")
    with TestClient(create_app(Settings(presets_dir=None), sm)) as c:
        assert c.get("/v1/features/7").json()["max_activation"] is None


def test_detail_without_catalogue_computes_effects_and_neighbours(client, sm):
    d = client.get("/v1/features/5").json()
    assert d["source"] == "sae" and d["label"] is None and d["top_contexts"] == []
    w_u = sm.loaded.model.get_output_embeddings().weight.detach()
    effect = w_u @ sm.sae.W_dec[5].detach()
    assert d["promoted_tokens"][0]["token_id"] == int(effect.argmax())
    assert d["promoted_tokens"][0]["effect"] == pytest.approx(float(effect.max()), rel=1e-4)
    assert d["suppressed_tokens"][0]["token_id"] == int(effect.argmin())
    w = torch.nn.functional.normalize(sm.sae.W_dec.detach(), dim=-1)
    cos = w @ w[5]
    cos[5] = -2
    assert d["neighbours"][0]["index"] == int(cos.argmax()) and len(d["neighbours"]) == 10
    assert 5 not in [n["index"] for n in d["neighbours"]]


def test_unknown_feature_index(client):
    r = client.get(f"/v1/features/{D_SAE}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "feature_not_found"
    assert client.get("/v1/features/-1").status_code == 400
    assert client.get("/v1/features/abc").json()["error"]["param"] == "index"


def test_search_by_text_returns_the_most_active_features(client, sm, tiny_tokenizer):
    out = client.get("/v1/features/search", params={"q": "dog park", "limit": 5, "mode": "activation"}).json()
    assert out["query"] == "dog park" and 0 < len(out["data"]) <= 5
    assert all(m["match"] == "activation" for m in out["data"])
    # The same numbers by hand: the text after a sink token, up to the SAE's site.
    ids = tiny_tokenizer("dog park", add_special_tokens=False)["input_ids"]
    with capture(sm.loaded.model, 2, "resid_post", stop=True) as store:
        run_until_capture(sm.loaded.model, input_ids=torch.tensor([[tiny_tokenizer.eos_token_id, *ids]]))
    with torch.no_grad():
        peak = sm.sae.encode(store[0][0, 1:]).amax(0)
    relative = peak / sm.sae.max_activation
    top = relative.topk(5).indices.tolist()
    assert [m["index"] for m in out["data"]] == top
    first = out["data"][0]
    assert first["activation"] == pytest.approx(float(peak[top[0]]), rel=1e-4)
    assert first["relative_activation"] == pytest.approx(float(relative[top[0]]), rel=1e-4)
    scores = [m["relative_activation"] for m in out["data"]]
    assert scores == sorted(scores, reverse=True)


def test_search_validation(client):
    assert client.get("/v1/features/search", params={"q": ""}).json()["error"]["param"] == "q"
    assert client.get("/v1/features/search").json()["error"]["param"] == "q"
    assert client.get("/v1/features/search", params={"q": "x", "limit": 0}).status_code == 400


def _write_catalogue(folder, tokenizer, labelled=None):
    """A small catalogue in steering.sae.catalogue's on-disk format (feature 4 is about bridges)."""
    import json

    import numpy as np
    from safetensors.numpy import save_file

    from steering.evaluation.random_models import SPECIAL_TOKENS

    vocab = [s.encode() for s in SPECIAL_TOKENS] + [bytes([b]) for b in range(256)]
    assert len(vocab) == len(tokenizer)
    ids = lambda text: [b + len(SPECIAL_TOKENS) for b in text.encode()]  # noqa: E731
    S, C, top = D_SAE, 2, 10
    context_tokens = np.full((S, C, 4), np.iinfo(np.uint16).max, dtype=np.uint16)
    context_tokens[4, 0] = ids("abcd")
    context_activation = np.zeros((S, C), dtype=np.float16)
    context_activation[4, 0] = 5.0
    arange = np.arange(top, dtype=np.int32)
    arrays = {
        "max_activation": np.linspace(1, 2, S).astype(np.float32),
        "firing_frequency": np.full(S, 0.01, dtype=np.float32),
        "context_tokens": context_tokens,
        "context_activation": context_activation,
        "promoted_ids": np.tile(arange + 100, (S, 1)), "promoted_values": np.tile(np.linspace(1, 0.1, top), (S, 1)).astype(np.float16),
        "suppressed_ids": np.tile(arange + 50, (S, 1)), "suppressed_values": -np.tile(np.linspace(1, 0.1, top), (S, 1)).astype(np.float16),
        "neighbour_ids": np.tile(arange + 20, (S, 1)), "neighbour_cosine": np.tile(np.linspace(0.9, 0.5, top), (S, 1)).astype(np.float16),
        "vocab_bytes": np.frombuffer(b"".join(vocab), dtype=np.uint8).copy(),
        "vocab_offsets": np.cumsum([0] + [len(v) for v in vocab]).astype(np.int64),
    }
    labels = [f"feature {i}" for i in range(S)]
    for i, label in (labelled or {4: "bridge things"}).items():
        labels[i] = label
    kinds = ["unclear"] * S
    kinds[4] = "concept"
    meta = {"format": "steering-catalogue", "version": 1, "d_sae": S, "n_contexts": C, "window": [2, 1],
            "n_tokens": 1000, "source": "test", "labels": labels, "label_kinds": kinds}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "catalogue.json").write_text(json.dumps(meta))
    save_file(arrays, str(folder / "catalogue.safetensors"))


def with_catalogue(sm, folder):
    """The same model and SAE, read from `folder` (where SteeredModel finds the catalogue)."""
    return dataclasses.replace(sm, sae_dir=folder, catalogue=None)


def test_the_real_catalogue_next_to_the_sae(sm, tiny_tokenizer, tmp_path):
    folder = tmp_path / "tiny-sae"
    _write_catalogue(folder, tiny_tokenizer)
    with TestClient(create_app(Settings(presets_dir=None), with_catalogue(sm, folder))) as c:
        assert c.get("/ready").json()["sae"]["catalogue"] is True
        d = c.get("/v1/features/4").json()
        assert d["source"] == "catalogue" and d["label"] == "bridge things"
        assert d["top_contexts"] == [{"text": "ab[[c]]d", "token": "c", "activation": 5.0}]
        assert d["promoted_tokens"][0]["token"] == tiny_tokenizer.decode([100])
        assert d["suppressed_tokens"][0]["effect"] == pytest.approx(-1.0)
        assert [n["index"] for n in d["neighbours"]] == list(range(20, 30))
        assert d["max_activation"] == pytest.approx(1 + 4 / (D_SAE - 1), rel=1e-5)
        page = c.get("/v1/features", params={"offset": 3, "limit": 2}).json()["data"]
        assert [(f["label"], f["label_kind"]) for f in page] == [("feature 3", "unclear"), ("bridge things", "concept")]
        found = c.get("/v1/features/search", params={"q": "bridge", "limit": 3}).json()["data"]
        assert [(m["index"], m["match"], m["label_kind"]) for m in found if m["match"] == "label"] == [(4, "label", "concept")]
        assert any(m["match"] == "activation" for m in found)
    # Without the files: no catalogue, and the server still starts.
    with TestClient(create_app(Settings(presets_dir=None), with_catalogue(sm, tmp_path / "empty"))) as c:
        assert c.get("/ready").json()["sae"]["catalogue"] is False


def test_search_waits_for_running_generations_then_gives_up(client, monkeypatch):
    import api.state as app_module

    gate = client.app.state.server.gate
    monkeypatch.setattr(app_module, "EXCLUSIVE_WAIT_S", 0.2)
    client.portal.call(gate.enter)  # a generation that never ends
    r = client.get("/v1/features/search", params={"q": "dog"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_busy" and r.headers["retry-after"] == "10"
    client.portal.call(gate.leave)
    assert client.get("/v1/features/search", params={"q": "dog"}).status_code == 200


# ------------------------------------------------------------ concept search
CONCEPT = "zzzz zzzz zzzz zzzz zzzz"


@pytest.fixture
def planted(sm):
    """Feature 17 planted as a detector of 'z' that promotes 'z' (tests/support.py)."""
    from steering.concepts.search import concept_texts, neutral_texts
    from tests.support import plant_feature

    plant_feature(sm, 17, concept_texts(CONCEPT) + neutral_texts(CONCEPT))
    return sm


def test_concept_search_ranks_the_planted_feature_with_both_scores(planted):
    from steering.concepts.search import find_concept_features

    with TestClient(create_app(Settings(presets_dir=None), planted)) as c:
        out = c.get("/v1/features/search", params={"q": CONCEPT, "limit": 4, "mode": "concept"}).json()
    found = out["data"]
    assert 0 < len(found) <= 4 and all(m["match"] == "concept" and m["activation"] is None for m in found)
    expected = find_concept_features(planted, CONCEPT, limit=4)
    assert [m["index"] for m in found] == [e.index for e in expected] and found[0]["index"] == 17
    top = found[0]["concept"]
    assert found[0]["score"] == pytest.approx(expected[0].score) == pytest.approx(top["specificity"] * top["logit_score"])
    assert top["specificity"] == pytest.approx((top["concept_mean"] - top["neutral_mean"]) * top["concept_fire_rate"])
    assert top["concept_fire_rate"] == 1.0 and top["neutral_fire_rate"] < 1.0
    assert top["logit_rank"] == 0 and top["logit_score"] == 1.0 and top["promoted_tokens"][0] == "z"
    scores = [m["score"] for m in found]
    assert scores == sorted(scores, reverse=True)


def test_search_modes(planted, tiny_tokenizer, tmp_path):
    _write_catalogue(tmp_path / "sae", tiny_tokenizer, {4: "zzzz bridges", 8: "zzzz eight"})
    with TestClient(create_app(Settings(presets_dir=None), with_catalogue(planted, tmp_path / "sae"))) as c:
        def kinds(**params):
            data = c.get("/v1/features/search", params={"q": CONCEPT, "limit": 3, **params}).json()["data"]
            return [m["match"] for m in data], data

        everything, data = kinds()
        assert everything == ["label"] * 2 + ["activation"] * 3 + ["concept"] * 3  # each kind up to limit, in order
        assert kinds(mode="label")[0] == ["label"] * 2
        assert kinds(mode="activation")[0] == ["activation"] * 3
        assert set(kinds(mode="concept")[0]) == {"concept"}
        # Catalogue label matches join the concept pool; labels come from the catalogue.
        _, wide = kinds(mode="concept", limit=100)
        by_index = {m["index"]: m for m in wide}
        assert {4, 8} <= set(by_index) and by_index[4]["label"] == "zzzz bridges" and by_index[17]["label"] == "feature 17"
        # A long q: no concept matches in `all`, a 400 for `concept`.
        long_q = "word " * 30
        assert "concept" not in [m["match"] for m in c.get("/v1/features/search", params={"q": long_q}).json()["data"]]
        for q, mode in ((long_q, "concept"), ("   ", "concept")):
            r = c.get("/v1/features/search", params={"q": q, "mode": mode})
            assert r.status_code == 400 and r.json()["error"]["param"] == "q"
        r = c.get("/v1/features/search", params={"q": "x", "mode": "everything"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "mode"
