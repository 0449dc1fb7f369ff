"""POST /v1/chat/completions and the meta routes, in process, on a tiny model and SAE."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings
from tests.api.support import MODEL_ID, chat_body, sse_events, tiny_steered_model, write_preset

STRONG = [{"index": i, "value": 60.0, "mode": "clamp", "unit": "raw"} for i in (3, 17, 40)]


@pytest.fixture
def client(tiny_llama, tiny_tokenizer, tmp_path):
    presets = tmp_path / "presets"
    write_preset(presets, "pirate", system_prompt="You are a pirate.", features=STRONG)
    write_preset(presets, "nudge", features=STRONG, positions="all", generated_limit=0)
    app = create_app(Settings(presets_dir=presets, default_max_tokens=16), tiny_steered_model(tiny_llama, tiny_tokenizer))
    with TestClient(app) as c:
        yield c


def complete(client, **body):
    r = client.post("/v1/chat/completions", json=chat_body(**body))
    assert r.status_code == 200, r.text
    return r.json()


def stream(client, **body):
    with client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True, **body)) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        return sse_events(r.iter_lines())


def streamed_texts(events):
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    for e in events[:-1]:
        for c in e["choices"]:
            texts[c["index"]] = texts.get(c["index"], "") + c["delta"].get("content", "")
            if c["finish_reason"]:
                finish[c["index"]] = c["finish_reason"]
    return texts, finish


def test_non_streamed_shape(client):
    out = complete(client)
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    assert out["model"] == MODEL_ID and isinstance(out["created"], int) and out["system_fingerprint"]
    (choice,) = out["choices"]
    assert choice["index"] == 0 and choice["steered"] is False  # no steering block: nothing steers
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length") and choice["logprobs"] is None
    u = out["usage"]
    assert u["completion_tokens"] <= 12 and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert u["prompt_tokens"] > 0


def test_streamed_equals_non_streamed_for_the_same_seed(client):
    body = dict(n=2, max_tokens=20, steering={"features": STRONG[:1]})
    full = complete(client, **body)
    events = stream(client, **body)
    assert events[-1] == "[DONE]"
    texts, finish = streamed_texts(events)
    for c in full["choices"]:
        assert texts[c["index"]] == c["message"]["content"]
        assert finish[c["index"]] == c["finish_reason"]


def test_stream_chunks_follow_openai(client):
    events = stream(client, max_tokens=8)
    chunks = events[:-1]
    assert all(e["object"] == "chat.completion.chunk" and "usage" not in e for e in chunks)
    assert len({e["id"] for e in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all("role" not in c["delta"] for e in chunks[1:] for c in e["choices"])
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert all(e["choices"][0]["finish_reason"] is None for e in chunks[:-1])


def test_include_usage_adds_a_final_usage_chunk(client):
    events = stream(client, max_tokens=6, stream_options={"include_usage": True})
    chunks = events[:-1]
    assert all(e["usage"] is None for e in chunks[:-1])
    last = chunks[-1]
    assert last["choices"] == []
    full = complete(client, max_tokens=6)
    assert last["usage"] == full["usage"]


def test_seed_of_choice_i_is_seed_plus_i(client):
    two = complete(client, n=2, seed=100, max_tokens=10)
    one = complete(client, n=1, seed=101, max_tokens=10)
    assert two["choices"][1]["message"]["content"] == one["choices"][0]["message"]["content"]
    assert two["usage"]["completion_tokens"] == sum(
        complete(client, seed=s, max_tokens=10)["usage"]["completion_tokens"] for s in (100, 101)
    )


def test_compare_returns_steered_then_baseline_choices(client):
    out = complete(client, n=2, max_tokens=16, steering={"features": STRONG, "compare": True})
    assert [c["index"] for c in out["choices"]] == [0, 1, 2, 3]
    assert [c["steered"] for c in out["choices"]] == [True, True, False, False]
    plain = complete(client, n=2, max_tokens=16)
    baseline = [c["message"]["content"] for c in out["choices"][2:]]
    assert baseline == [c["message"]["content"] for c in plain["choices"]]
    steered = [c["message"]["content"] for c in out["choices"][:2]]
    assert steered != baseline  # a strong clamp changes the answer


def test_compare_streams_interleave_both(client):
    body = dict(max_tokens=10, steering={"features": STRONG, "compare": True})
    texts, _ = streamed_texts(stream(client, **body))
    full = complete(client, **body)
    assert texts == {c["index"]: c["message"]["content"] for c in full["choices"]}


def test_greedy_is_deterministic_without_seed(client):
    a = complete(client, temperature=0, seed=None, max_tokens=8)
    b = complete(client, temperature=0, seed=None, max_tokens=8, top_p=0.5)
    c = complete(client, temperature=0.7, top_p=0, seed=None, max_tokens=8)  # top_p 0: greedy
    assert a["choices"][0]["message"] == b["choices"][0]["message"] == c["choices"][0]["message"]


def test_no_seed_still_pairs_steered_and_baseline(client):
    out = complete(client, seed=None, max_tokens=10, steering={"compare": True})
    assert out["choices"][0]["message"] == out["choices"][1]["message"]  # no clamp: identical


def test_logprobs_in_openai_shape(client):
    out = complete(client, max_tokens=6, logprobs=True, top_logprobs=3)
    content = out["choices"][0]["logprobs"]["content"]
    assert len(content) == out["usage"]["completion_tokens"]
    for item in content:
        assert item["logprob"] <= 0 and isinstance(item["bytes"], list)
        tops = [t["logprob"] for t in item["top_logprobs"]]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and item["logprob"] <= tops[0] + 1e-6
    events = stream(client, max_tokens=6, logprobs=True, top_logprobs=3)
    streamed = [lp for e in events[:-1] for c in e["choices"] if c["logprobs"] for lp in c["logprobs"]["content"]]
    assert streamed == content


def test_stop_string_ends_the_answer(client):
    text = complete(client, max_tokens=12)["choices"][0]["message"]["content"]
    cut = next(i for i in range(1, len(text)) if text[i] not in text[:i])
    out = complete(client, max_tokens=12, stop=[text[cut]])
    assert out["choices"][0]["message"]["content"] == text[:cut]
    assert out["choices"][0]["finish_reason"] == "stop"


def test_max_completion_tokens_wins_and_length_finishes(client):
    out = complete(client, max_tokens=3, max_completion_tokens=5, temperature=0)
    text = complete(client, max_tokens=5, temperature=0)
    assert out["choices"][0]["message"] == text["choices"][0]["message"]
    assert out["usage"]["completion_tokens"] <= 5


def test_preset_applies_features_and_system_prompt(client):
    by_preset = complete(client, steering={"preset": "pirate"})
    explicit = complete(
        client,
        messages=[{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hello"}],
        steering={"features": STRONG},
    )
    assert by_preset["choices"][0]["message"] == explicit["choices"][0]["message"]
    assert by_preset["usage"]["prompt_tokens"] == explicit["usage"]["prompt_tokens"]
    # A system message of the request's own replaces the preset's.
    own = complete(client, messages=[{"role": "system", "content": "Hi"}, {"role": "user", "content": "Hello"}],
                   steering={"preset": "pirate"})
    assert own["usage"]["prompt_tokens"] < by_preset["usage"]["prompt_tokens"]


def test_request_features_win_over_the_preset(client):
    override = [{"index": f["index"], "value": 0.0, "mode": "add"} for f in STRONG]
    out = complete(client, steering={"preset": "pirate", "features": override})
    sys_msgs = [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hello"}]
    assert out["choices"][0]["message"] == complete(client, messages=sys_msgs)["choices"][0]["message"]


def test_clamp_windows_prompt_and_generated_limit(client):
    def text(**steering):
        out = complete(client, max_tokens=12, temperature=0, steering=steering)
        return out["choices"][0]["message"]["content"], out["steering"]

    # What windows do to tokens is tested on the engine (tests/engine/test_generation.py); here: the wire.
    always, _ = text(features=STRONG)
    prompt_only, report = text(features=STRONG, positions="prompt")
    assert report["positions"] == "prompt" and report["generated_limit"] is None
    limit0, report = text(features=STRONG, generated_limit=0)
    assert (report["positions"], report["generated_limit"]) == ("all", 0)
    assert limit0 == prompt_only  # a zero limit clamps the prompt only
    assert text(features=STRONG, generated_limit=1000)[0] == always
    # The pair comes from the preset unless the request sets either field.
    by_preset, report = text(preset="nudge")
    assert by_preset == prompt_only and (report["positions"], report["generated_limit"]) == ("all", 0)
    _, report = text(preset="nudge", positions="generated")
    assert (report["positions"], report["generated_limit"]) == ("generated", None)


def test_developer_role_and_content_parts(client):
    a = complete(client, messages=[{"role": "developer", "content": "Be brief."},
                                   {"role": "user", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]}])
    b = complete(client, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}])
    assert a["choices"][0]["message"] == b["choices"][0]["message"]


def test_multi_turn_with_assistant_message(client):
    out = complete(client, messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                                     {"role": "user", "content": "And?"}], user="someone")
    assert out["choices"][0]["finish_reason"] in ("stop", "length")


def test_health_ready_models(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["sae"]["note"] == "tiny random SAE for tests"
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [MODEL_ID]
    assert models["data"][0]["object"] == "model" and models["data"][0]["sae"]["d_sae"] == 96
    assert client.get(f"/v1/models/{MODEL_ID}").json()["id"] == MODEL_ID
    r = client.get("/v1/models/other")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_openapi_documents_the_steering_extension(client):
    schema = client.get("/openapi.json").json()
    feature = schema["components"]["schemas"]["SteeringFeature"]["properties"]
    assert "description" in feature["value"] and feature["value"]["maximum"] == 1000
    assert "steering" in schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]


def test_concurrent_requests_match_sequential_ones(client):
    from concurrent.futures import ThreadPoolExecutor

    bodies = [dict(seed=s, max_tokens=10, steering={"features": STRONG[:k]}) for s, k in ((1, 0), (2, 1), (3, 3), (4, 0))]
    alone = [complete(client, **b)["choices"][0]["message"]["content"] for b in bodies]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda b: complete(client, **b)["choices"][0]["message"]["content"], bodies))
    assert together == alone


def test_fields_at_their_defaults_and_null_assistant_content_are_accepted(client):
    body = chat_body(messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None},
                               {"role": "user", "content": "Again"}],
                     tools=[], tool_choice="none", response_format={"type": "text"}, store=False, top_k=-1,
                     frequency_penalty=0, presence_penalty=0.0, logit_bias={}, min_p=0, repetition_penalty=1,
                     seed=2**70, n=2.0)  # any integer seed; 2.0 is an integer in JSON Schema
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text


def test_steered_is_false_when_nothing_steers(client):
    plain = client.post("/v1/chat/completions", json=chat_body()).json()
    assert [c["steered"] for c in plain["choices"]] == [False]
    reads = client.post("/v1/chat/completions", json=chat_body(
        n=2, steering={"inspect": {"top_k": 2}, "compare": True})).json()
    assert [c["steered"] for c in reads["choices"]] == [False] * 4
    clamped = client.post("/v1/chat/completions", json=chat_body(
        steering={"features": [{"index": 3, "value": 2.0}]})).json()
    assert [c["steered"] for c in clamped["choices"]] == [True]


def test_sampling_fields_reach_the_engine(client):
    """A logit_bias of +100 on one token makes every generated token that token; -100 on the end token with
    min_tokens keeps the answer going; penalties change a greedy answer."""
    forced = client.post("/v1/chat/completions", json=chat_body(
        max_tokens=5, logit_bias={"77": 100}, logprobs=True)).json()
    tokens = [t["token"] for t in forced["choices"][0]["logprobs"]["content"]]
    assert len(tokens) == 5 and len(set(tokens)) == 1
    ended = client.post("/v1/chat/completions", json=chat_body(max_tokens=12, logit_bias={"2": 100})).json()
    assert ended["usage"]["completion_tokens"] == 0 and ended["choices"][0]["finish_reason"] == "stop"
    held = client.post("/v1/chat/completions", json=chat_body(max_tokens=12, logit_bias={"2": 100},
                                                              min_tokens=4)).json()
    assert held["usage"]["completion_tokens"] == 4
    past = client.post("/v1/chat/completions", json=chat_body(max_tokens=6, logit_bias={"2": 100},
                                                              ignore_eos=True)).json()
    assert past["usage"]["completion_tokens"] == 6 and past["choices"][0]["finish_reason"] == "length"
    greedy = dict(temperature=0, max_tokens=12, ignore_eos=True)
    a = client.post("/v1/chat/completions", json=chat_body(**greedy)).json()
    b = client.post("/v1/chat/completions", json=chat_body(**greedy, frequency_penalty=2.0,
                                                           presence_penalty=2.0)).json()
    assert a["choices"][0]["message"]["content"] != b["choices"][0]["message"]["content"]
