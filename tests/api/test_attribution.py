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


@pytest.fixture
def graph_client(sm, tmp_path):
    from steering.attribution import GraphLayer
    from tests.attribution.test_graph import sae_at

    sm.graph_saes = [GraphLayer(sae_at(sm.loaded.model, 0, seed=5).float(), None, "early"), GraphLayer(sm.sae, None, "main")]
    with TestClient(create_app(Settings(presets_dir=tmp_path), sm)) as c:
        yield c


def test_a_graph_across_two_layers_is_the_library_s(graph_client, sm):
    from steering.attribution import attribution_graph, graph_layers

    r = graph_client.post("/v1/attribution/graph", json={"model": MODEL_ID, "prompt": "hello world",
                                                         "max_feature_nodes": 4, "node_threshold": 0.9})
    assert r.status_code == 200, r.text
    body = r.json()
    (ids,) = token_rows(sm, ["hello world"])
    expected = attribution_graph(sm.loaded.model, sm.loaded.tokenizer, graph_layers(sm), ids, max_feature_nodes=4,
                                 node_threshold=0.9)
    assert body["object"] == "attribution.graph" and body["layers"] == [0, sm.sae.cfg.hook_layer]
    assert body["sae_names"] == ["early", "main"] and body["tokens"] == list(expected.tokens)
    assert [n["id"] for n in body["nodes"]] == [n.id for n in expected.nodes]
    assert [(e["source"], e["target"]) for e in body["edges"]] == [(e.source, e.target) for e in expected.edges]
    assert body["nodes"][0]["kind"] == "logit" and body["computed_nodes"] == expected.computed_nodes
    ids_ = {n["id"] for n in body["nodes"]}
    assert all(e["source"] in ids_ and e["target"] in ids_ for e in body["edges"])
    assert {n["kind"] for n in body["nodes"]} >= {"feature", "token", "logit"}
    single = attribute(sm, ids, target=sm.loaded.tokenizer.decode([expected.target.token_id]))
    assert [c["feature"] for c in body["suggested_clamps"]] == [x.feature for x in single.suggestions]
    assert body["suggested_steering"] == single.suggested_steering()


def test_a_graph_in_circuit_tracer_s_format(graph_client):
    r = graph_client.post("/v1/attribution/graph", json={"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}],
                                                         "target": "a", "format": "circuit-tracer"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"metadata", "qParams", "nodes", "links"}
    ids = {n["node_id"] for n in body["nodes"]}
    assert len(ids) == len(body["nodes"]) and all(link["source"] in ids and link["target"] in ids for link in body["links"])
    types = {n["feature_type"] for n in body["nodes"]}
    assert "logit" in types and "embedding" in types and "cross layer transcoder" in types
    (logit,) = [n for n in body["nodes"] if n["is_target_logit"]]
    assert logit["clerp"].startswith('Output "a"') and body["metadata"]["prompt_tokens"]


@pytest.mark.parametrize(("body", "param"), [
    ({"max_feature_nodes": 0}, "max_feature_nodes"),
    ({"max_feature_nodes": 65}, "max_feature_nodes"),
    ({"max_feature_nodes": "3"}, "max_feature_nodes"),
    ({"node_threshold": 0}, "node_threshold"),
    ({"edge_threshold": 1.5}, "edge_threshold"),
    ({"format": "png"}, "format"),
    ({"target": ""}, "target"),
    ({"prompt": None}, "messages"),
])
def test_bad_graph_input_is_a_400_naming_the_parameter(graph_client, body, param):
    r = graph_client.post("/v1/attribution/graph", json={"model": MODEL_ID, "prompt": "x", **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_a_client_builds_one_graph_at_a_time(graph_client):
    slots = graph_client.app.state.server.graphs
    ticket = slots.take("addr:testclient")  # as if this client's first graph were still being built
    try:
        r = graph_client.post("/v1/attribution/graph", json={"model": MODEL_ID, "prompt": "x"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
        assert "attribution graph" in r.json()["error"]["message"] and int(r.headers["retry-after"]) >= 1
    finally:
        slots.give(ticket)
    assert graph_client.post("/v1/attribution/graph", json={"model": MODEL_ID, "prompt": "x"}).status_code == 200


def test_attribution_suggests_the_clamps_that_lower_the_target(client):
    r = post(client, prompt="hello world", top_k=5)
    suggestions = r.json()["suggested_clamps"]
    assert suggestions and all(s["estimated_drop"] > 0 for s in suggestions)
    drops = [s["estimated_drop"] for s in suggestions]
    assert drops == sorted(drops, reverse=True)
    assert all(s["clamp"] == {"index": s["feature"], "value": 0.0, "mode": "clamp", "unit": "raw"} for s in suggestions)
    steering = r.json()["suggested_steering"]
    assert steering == {"features": [s["clamp"] for s in suggestions], "positions": "all"}
    chat = client.post("/v1/chat/completions", json={"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}],
                                                     "max_tokens": 2, "steering": steering})
    assert chat.status_code == 200, chat.text  # it pastes into a chat request as it is


def test_an_assistant_prefix_continues_the_conversation(client, sm):
    messages = [{"role": "user", "content": "hi"}]
    r = post(client, messages=messages, assistant_prefix="ab", top_k=3)
    assert r.status_code == 200, r.text
    (ids,) = token_rows(sm, [messages])
    assert r.json()["prompt_tokens"] == len(ids) + len(sm.loaded.tokenizer("ab", add_special_tokens=False)["input_ids"])
    bad = post(client, prompt="x", assistant_prefix="ab")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "assistant_prefix"
