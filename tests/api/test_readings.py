"""`steering.inspect` and `steering.monitors` on chat completions, streamed and not."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings
from tests.api.support import chat_body, sse_events, tiny_steered_model


@pytest.fixture
def client(tiny_llama, tiny_tokenizer):
    with TestClient(create_app(Settings(presets_dir=None), tiny_steered_model(tiny_llama, tiny_tokenizer))) as c:
        yield c


def complete(client, **steering):
    r = client.post("/v1/chat/completions", json=chat_body(temperature=0, max_tokens=10, steering=steering))
    assert r.status_code == 200, r.text
    return r.json()


def test_inspection_per_choice_baselines_too_and_no_token_changes(client):
    plain = complete(client, compare=True, features=[{"index": 3, "value": 5}])
    out = complete(client, compare=True, features=[{"index": 3, "value": 5}], inspect={"top_k": 3, "features": [7]})
    for p, c in zip(plain["choices"], out["choices"]):
        assert c["message"] == p["message"] and p["inspection"] is None
        tokens = c["inspection"]
        assert len(tokens) == out["usage"]["completion_tokens"] // 2  # every generated token, for both choices
        assert [t["position"] for t in tokens] == list(range(tokens[0]["position"], tokens[0]["position"] + len(tokens)))
        assert "".join(t["token"] for t in tokens) == c["message"]["content"]
        assert all(len(t["top"]) <= 3 and [f["index"] for f in t["features"]] == [7] for t in tokens)
    every = complete(client, inspect={"top_k": 2, "positions": "all"})
    assert every["choices"][0]["inspection"][0]["position"] == 1  # the prompt's tokens, the sink left out


def test_streamed_chunks_carry_their_tokens_readings(client):
    body = chat_body(temperature=0, max_tokens=10, stream=True, steering={"inspect": {"top_k": 2}})
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        events = [e for e in sse_events(r.iter_lines()) if e != "[DONE]"]
    streamed = [t for e in events for c in e["choices"] for t in c.get("inspection", [])]
    content = "".join(c["delta"].get("content", "") for e in events for c in e["choices"])
    whole = complete(client, inspect={"top_k": 2})["choices"][0]
    assert streamed == whole["inspection"] and content == whole["message"]["content"]
    for e in events:  # a chunk's readings are its own delta's tokens
        for c in e["choices"]:
            if c.get("inspection"):
                assert "".join(t["token"] for t in c["inspection"]) == c["delta"].get("content", "")


def test_a_stop_monitor_ends_its_choice_with_content_filter(client):
    read = complete(client, inspect={"top_k": 1})["choices"][0]
    fired = next(f["index"] for t in read["inspection"][2:] for f in t["top"])  # a feature active at token >= 2
    first = next(k for k, t in enumerate(read["inspection"]) if any(f["index"] == fired for f in t["top"]))
    monitors = [{"index": fired, "threshold": 1e-6, "unit": "raw", "action": "stop", "name": "halt"}]
    out = complete(client, compare=True, monitors=monitors)
    stopped = out["choices"][0]
    assert stopped["finish_reason"] == "content_filter"
    assert stopped["message"]["content"] == read["message"]["content"][:stopped["monitor_events"][0]["token_index"]]
    assert stopped["monitor_events"][0]["token_index"] <= first and stopped["monitor_events"][0]["name"] == "halt"
    assert out["steering"]["monitors"][0]["action"] == "stop"
    flagged = complete(client, monitors=[{**monitors[0], "action": "flag"}])["choices"][0]
    assert flagged["finish_reason"] == "length" and flagged["message"] == read["message"]
    assert flagged["monitor_events"][0]["token_index"] == stopped["monitor_events"][0]["token_index"]


@pytest.mark.parametrize("steering,param", [
    ({"inspect": {"top_k": 0}}, "steering.inspect.top_k"),
    ({"inspect": {"top_k": 65}}, "steering.inspect.top_k"),
    ({"inspect": {"features": [96]}}, "steering.inspect.features[0]"),
    ({"monitors": [{"index": 96, "threshold": 1}]}, "steering.monitors[0].index"),
    ({"monitors": [{"index": 1, "threshold": 0}]}, "steering.monitors[0].threshold"),
    ({"monitors": [{"index": 1, "threshold": "NaN"}]}, "steering.monitors[0].threshold"),
    ({"monitors": [{"index": 1, "threshold": 1, "action": "explode"}]}, "steering.monitors[0].action"),
    ({"monitors": [{"index": 1, "threshold": 1}] * 17}, "steering.monitors"),
])
def test_bad_readings_are_400s_naming_the_parameter(client, steering, param):
    r = client.post("/v1/chat/completions", json=chat_body(steering=steering))
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_a_steer_monitor_clamps_its_choice_from_the_token_after_the_crossing(client):
    read = complete(client, inspect={"top_k": 1})["choices"][0]
    fired = next(f["index"] for t in read["inspection"][2:] for f in t["top"])
    clamps = [{"index": 5, "value": 40}, {"index": 9, "value": 40}]
    monitor = {"index": fired, "threshold": 1e-6, "unit": "raw", "action": "steer", "name": "when", "clamps": clamps}
    out = complete(client, compare=True, monitors=[monitor])
    steered, baseline = out["choices"]
    at = steered["monitor_events"][0]["token_index"]
    assert steered["monitor_events"][0]["action"] == "steer" and out["steering"]["monitors"][0]["clamps"][0]["index"] == 5
    assert steered["message"]["content"][: at + 2] == read["message"]["content"][: at + 2]  # untouched until then
    assert steered["message"]["content"] != read["message"]["content"]
    # the baseline is never steered: its steer monitor only flags
    assert baseline["message"] == read["message"] and [e["action"] for e in baseline["monitor_events"]][:1] == ["flag"]
    for bad, param in (({"action": "steer", "clamps": []}, "steering.monitors[0].clamps"),
                       ({"action": "flag"}, "steering.monitors[0].clamps"),
                       ({"clamps": [{"index": 96, "value": 1}]}, "steering.monitors[0].clamps[0].index"),
                       ({"duration": 0}, "steering.monitors[0].duration")):
        r = client.post("/v1/chat/completions", json=chat_body(steering={"monitors": [{**monitor, **bad}]}))
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (bad, r.text)
