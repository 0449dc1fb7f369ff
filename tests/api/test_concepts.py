"""Auto-steer through the API (`steering.concept`) and the response's `steering` report (api/routes/chat.py).

Most requests here ask for the probed single feature (`"method": "feature"`): the probe is replaced by a
stand-in that credits the planted feature, which makes the pick known; the direction's tests say so."""

from __future__ import annotations

import json
import threading
import time

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings
from steering.concepts import autosteer, search
from steering.concepts.autosteer import DEFAULT_WINDOW
from steering.concepts.probe import ProbeResult, ProbeSettings
from steering.concepts.search import concept_texts, neutral_texts
from tests.api.support import chat_body, sse_events, tiny_steered_model, write_preset
from tests.support import autosteer_multiplier as multiplier, plant_feature

CONCEPT = "zzzz zzzz zzzz zzzz zzzz"
PLANTED = 17


def probe_favouring_planted(sm, concept, specs, settings=ProbeSettings(), runner=None, **_):
    """probe_specs stand-in: what a random tiny model generates is arbitrary, so the probe credits
    the planted feature (3 of 4 answers) and nothing else."""
    return [ProbeResult(i, 0.75 if i == PLANTED else 0.0, 0.0, 0.0, 0.5, 4) for i, _ in specs]


@pytest.fixture
def sm(tiny_llama, tiny_tokenizer, monkeypatch):
    """The tiny model and SAE, with feature 17 planted as a detector and promoter of 'z'."""
    monkeypatch.setattr(autosteer, "probe_specs", probe_favouring_planted)
    sm = tiny_steered_model(tiny_llama, tiny_tokenizer)
    plant_feature(sm, PLANTED, concept_texts(CONCEPT) + neutral_texts(CONCEPT))
    return sm


@pytest.fixture
def client(sm, tmp_path):
    presets = tmp_path / "presets"
    write_preset(presets, "mix", features=[{"index": PLANTED, "value": 0.5, "mode": "add"},
                                           {"index": 5, "value": 1.0}], positions="generated")
    with TestClient(create_app(Settings(presets_dir=presets, default_max_tokens=12), sm)) as c:
        yield c


def post(client, **body):
    return client.post("/v1/chat/completions", json=chat_body(**body))


def complete(client, **body):
    r = post(client, **body)
    assert r.status_code == 200, r.text
    return r.json()


def test_concept_picks_the_planted_feature_and_reports_it(client, sm):
    out = complete(client, max_tokens=10, steering={"method": "feature", "concept": CONCEPT, "strength": 1.5})
    report = out["steering"]
    assert report["features"] == [{"index": PLANTED, "value": pytest.approx(multiplier(sm, PLANTED, CONCEPT) * 1.5),
                                   "mode": "clamp", "unit": "max"}]
    assert (report["positions"], report["generated_limit"], report["preset"]) == ("all", DEFAULT_WINDOW, None)
    concept = report["concept"]
    assert concept["concept"] == CONCEPT and concept["strength"] == 1.5 and concept["features"] == [PLANTED]
    assert f"feature {PLANTED}:" in concept["rationale"] and "3/4 answers carried the concept" in concept["rationale"]
    # every candidate's probe is reported; the pick is the one with the lift
    assert [p["index"] for p in concept["probe"]] == [c["index"] for c in concept["candidates"]]
    assert [p["lift"] for p in concept["probe"] if p["index"] == PLANTED] == [0.75]
    top = concept["candidates"][0]
    assert top["index"] == PLANTED and top["match"] == "concept" and top["score"] == top["concept"]["score"]
    scores = top["concept"]
    assert scores["logit_rank"] == 0 and scores["promoted_tokens"][0] == "z"
    assert scores["concept_fire_rate"] == 1.0 and scores["concept_mean"] > scores["neutral_mean"]
    assert scores["score"] == pytest.approx(scores["specificity"] * scores["logit_score"])
    # The report pastes back: the same features without the concept give the same answer.
    again = complete(client, max_tokens=10, steering={k: report[k] for k in ("features", "positions", "generated_limit")})
    assert again["choices"][0]["message"] == out["choices"][0]["message"]
    plain = complete(client, max_tokens=10)
    assert plain["steering"] is None


def test_report_pastes_into_a_preset(client, sm, tmp_path):
    report = complete(client, steering={"method": "feature", "concept": CONCEPT})["steering"]
    folder = tmp_path / "saved"
    write_preset(folder, "saved", features=report["features"], positions=report["positions"])
    with TestClient(create_app(Settings(presets_dir=folder, default_max_tokens=12), sm)) as c:
        by_preset = complete(c, steering={"preset": "saved"})
    assert by_preset["steering"]["features"] == report["features"] and by_preset["steering"]["preset"] == "saved"
    by_concept = complete(client, steering={"method": "feature", "concept": CONCEPT})
    assert by_preset["choices"][0]["message"] == by_concept["choices"][0]["message"]


def test_streamed_first_chunk_carries_the_report_and_text_matches(client):
    body = chat_body(max_tokens=10, steering={"method": "feature", "concept": CONCEPT, "compare": True})
    full = client.post("/v1/chat/completions", json=body).json()
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        events = sse_events(r.iter_lines())
    chunks = events[:-1]
    assert chunks[0]["steering"] == full["steering"]
    assert all("steering" not in e for e in chunks[1:])
    texts: dict[int, str] = {}
    for e in chunks:
        for c in e["choices"]:
            texts[c["index"]] = texts.get(c["index"], "") + c["delta"].get("content", "")
    assert texts == {c["index"]: c["message"]["content"] for c in full["choices"]}
    assert [c["steered"] for c in full["choices"]] == [True, False]


def test_merge_order_preset_then_concept_then_request(client, sm):
    # The preset adds to 17 and clamps 5; the concept clamps 17; the request's own clamp on 5 wins over the preset.
    out = complete(client, steering={"preset": "mix", "method": "feature", "concept": CONCEPT,
                                     "features": [{"index": 5, "value": 2.0, "unit": "raw"}]})
    report = out["steering"]
    # the window follows the layers too: auto-steer's over the preset's ("generated"), the request's over both
    assert report["preset"] == "mix" and (report["positions"], report["generated_limit"]) == ("all", DEFAULT_WINDOW)
    windowed = complete(client, steering={"preset": "mix", "method": "feature", "concept": CONCEPT, "positions": "prompt"})["steering"]
    assert (windowed["positions"], windowed["generated_limit"]) == ("prompt", None)
    assert complete(client, steering={"preset": "mix"})["steering"]["positions"] == "generated"
    by_index = {f["index"]: f for f in report["features"]}
    assert by_index[PLANTED] == {"index": PLANTED, "value": pytest.approx(multiplier(sm, PLANTED, CONCEPT)), "mode": "clamp",
                                 "unit": "max"}
    assert by_index[5] == {"index": 5, "value": 2.0, "mode": "clamp", "unit": "raw"}
    # The request's features also win over the concept's.
    own = complete(client, steering={"method": "feature", "concept": CONCEPT, "features": [{"index": PLANTED, "value": 0.25}]})
    assert own["steering"]["features"] == [{"index": PLANTED, "value": 0.25, "mode": "clamp", "unit": "max"}]
    assert own["steering"]["concept"]["features"] == [PLANTED]


def test_search_runs_once_on_the_compute_thread_beside_generations_then_is_cached(client, monkeypatch):
    calls, forwards = [], []
    real, real_forward = autosteer.find_concept_features, search._batch_stats

    def counting(sm, concept, **kw):
        calls.append(concept)
        return real(sm, concept, **kw)

    def forward(*args):
        forwards.append(threading.current_thread().name)
        return real_forward(*args)

    monkeypatch.setattr(autosteer, "find_concept_features", counting)
    monkeypatch.setattr(search, "_batch_stats", forward)
    gate = client.app.state.server.gate
    client.portal.call(gate.enter)  # a generation that never ends: a new concept no longer waits for it
    first = complete(client, steering={"method": "feature", "concept": CONCEPT})
    assert len(calls) == 1
    # Its forwards ran between the engine's steps, on its thread; the unrelated bank was read at start-up,
    # so only the concept's own texts ran.
    assert forwards == ["steering-compute"] * -(-len(search.concept_texts(CONCEPT)) // search.TEXT_BATCH)
    second = complete(client, steering={"method": "feature", "concept": CONCEPT.upper(), "strength": 0.5})
    client.portal.call(gate.leave)
    assert len(calls) == 1  # cached: no second search
    assert second["steering"]["features"][0]["value"] == pytest.approx(0.5 * first["steering"]["features"][0]["value"])


def test_a_plain_request_is_answered_while_a_new_concept_is_searched(client, monkeypatch):
    """The probe (here a stand-in that takes 2 s) runs beside the engine: a plain request sent after the
    concept request finishes long before it."""
    def slow_probe(sm, concept, specs, settings=ProbeSettings(), runner=None, **_):
        time.sleep(2.0)
        return probe_favouring_planted(sm, concept, specs, settings, runner)

    monkeypatch.setattr(autosteer, "probe_specs", slow_probe)
    done: dict[str, float] = {}

    def send(name: str, **body) -> None:
        assert post(client, **body).status_code == 200
        done[name] = time.monotonic()

    concept = threading.Thread(target=send, args=("concept",), kwargs={"steering": {"method": "feature", "concept": "something new"}})
    start = time.monotonic()
    concept.start()
    time.sleep(0.3)
    send("plain")
    concept.join(30)
    assert done["plain"] - start < 1.5 and done["concept"] - start >= 2.0


def test_concept_searches_are_bounded_per_client_and_in_total(sm, tmp_path, monkeypatch):
    """At most one search per client (its API key on a keyed server) and two in all; a refusal is a 429
    naming steering.concept with a Retry-After from the running searches."""
    def slow_probe(sm, concept, specs, settings=ProbeSettings(), runner=None, **_):
        time.sleep(2.0)
        return probe_favouring_planted(sm, concept, specs, settings, runner)

    monkeypatch.setattr(autosteer, "probe_specs", slow_probe)
    statuses: dict[str, int] = {}
    settings = Settings(presets_dir=tmp_path, default_max_tokens=12, api_keys=("a", "b", "c"))
    with TestClient(create_app(settings, sm)) as client:

        def send(name: str, key: str) -> None:
            r = client.post("/v1/chat/completions", json=chat_body(steering={"method": "feature", "concept": name}),
                            headers={"Authorization": f"Bearer {key}"})
            statuses[name] = r.status_code

        first = threading.Thread(target=send, args=("first concept", "a"))
        first.start()
        time.sleep(0.5)
        again = client.post("/v1/chat/completions", json=chat_body(steering={"method": "feature", "concept": "second concept"}),
                            headers={"Authorization": "Bearer a"})
        assert again.status_code == 429, again.text
        error = again.json()["error"]
        assert error["param"] == "steering.concept" and error["code"] == "rate_limit_exceeded"
        assert "this client" in error["message"] and 1 <= int(again.headers["retry-after"]) <= 10
        other = threading.Thread(target=send, args=("third concept", "b"))  # another client may search
        other.start()
        time.sleep(0.5)
        full = client.post("/v1/chat/completions", json=chat_body(steering={"method": "feature", "concept": "fourth concept"}),
                           headers={"Authorization": "Bearer c"})
        assert full.status_code == 429 and "2 concept searches are running" in full.json()["error"]["message"]
        first.join(30)
        other.join(30)
        assert statuses == {"first concept": 200, "third concept": 200}
        assert client.post("/v1/chat/completions", json=chat_body(steering={"method": "feature", "concept": "second concept"}),
                           headers={"Authorization": "Bearer a"}).status_code == 200  # its turn now


def test_concept_steers_by_its_direction_by_default(client, sm):
    out = complete(client, max_tokens=6, steering={"concept": CONCEPT, "strength": 0.5})
    report = out["steering"]
    concept = report["concept"]
    assert concept["method"] == "direction" and concept["probe"] == [] and PLANTED in concept["features"]
    assert [f["index"] for f in report["features"]] == concept["features"]
    assert {(f["mode"], f["unit"]) for f in report["features"]} == {("add", "raw")}
    assert (report["positions"], report["generated_limit"]) == ("all", DEFAULT_WINDOW)
    assert "direction of" in concept["rationale"]
    full = complete(client, max_tokens=6, steering={"concept": CONCEPT, "method": "direction"})["steering"]
    assert [f["value"] for f in full["features"]] == pytest.approx([2 * f["value"] for f in report["features"]])
    probed = complete(client, max_tokens=6, steering={"concept": CONCEPT, "method": "feature"})["steering"]
    assert probed["concept"]["method"] == "feature" and probed["concept"]["features"] == [PLANTED]


@pytest.mark.parametrize(
    ("steering", "param"),
    [
        ({"method": "feature"}, "steering.method"),
        ({"concept": "dog", "method": "vector"}, "steering.method"),
        ({"concept": "dog", "method": 1}, "steering.method"),
        ({"method": "feature", "concept": ""}, "steering.concept"),
        ({"method": "feature", "concept": "   "}, "steering.concept"),
        ({"method": "feature", "concept": "x" * (autosteer.MAX_CONCEPT_CHARS + 1)}, "steering.concept"),
        ({"method": "feature", "concept": 3}, "steering.concept"),
        ({"method": "feature", "concept": "dog", "strength": 0}, "steering.strength"),
        ({"method": "feature", "concept": "dog", "strength": -1}, "steering.strength"),
        ({"method": "feature", "concept": "dog", "strength": autosteer.MAX_STRENGTH + 0.5}, "steering.strength"),
        ({"method": "feature", "concept": "dog", "strength": "strong"}, "steering.strength"),
        ({"strength": 2}, "steering.strength"),
    ],
)
def test_bad_concept_or_strength_names_the_parameter(client, steering, param):
    r = post(client, steering=steering)
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_non_finite_strength_is_rejected(client):
    raw = json.dumps(chat_body())[:-1] + ', "steering": {"method": "feature", "concept": "dog", "strength": NaN}}'
    r = client.post("/v1/chat/completions", content=raw.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "steering.strength"


def test_cheap_errors_come_before_any_search(client, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("no search for a request that fails anyway")

    monkeypatch.setattr(autosteer, "find_concept_features", fail)
    r = post(client, steering={"method": "feature", "concept": CONCEPT, "preset": "nope"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "steering.preset"
    r = post(client, model="gpt-4o", steering={"method": "feature", "concept": CONCEPT})
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    r = post(client, steering={"method": "feature", "concept": CONCEPT, "features": [{"index": 96, "value": 1}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "steering.features[0].index"


def test_a_concept_without_any_feature_is_a_400(client, monkeypatch):
    monkeypatch.setattr(autosteer, "find_concept_features", lambda *a, **k: [])
    r = post(client, steering={"method": "feature", "concept": "nothing at all"})
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "steering.concept" and "nothing at all" in err["message"]


def test_concept_without_an_sae_is_a_400(tiny_llama, tiny_tokenizer):
    app = create_app(Settings(presets_dir=None), tiny_steered_model(tiny_llama, tiny_tokenizer, with_sae=False))
    with TestClient(app) as c:
        r = post(c, steering={"method": "feature", "concept": "dogs"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "steering"


def test_features_only_report_and_openapi(client):
    out = complete(client, steering={"features": [{"index": 3, "value": 2}], "compare": True})
    assert out["steering"] == {"features": [{"index": 3, "value": 2.0, "mode": "clamp", "unit": "max"}],
                               "positions": "all", "generated_limit": None, "monitors": [], "preset": None,
                               "concept": None, "max_unit": "sae"}
    assert complete(client, steering={"compare": True})["steering"]["features"] == []
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    opts = schema["SteeringOptions"]["properties"]
    assert opts["strength"]["exclusiveMinimum"] == 0 and opts["strength"]["maximum"] == autosteer.MAX_STRENGTH
    assert "description" in opts["concept"] and "description" in schema["ChatCompletion"]["properties"]["steering"]


def test_raw_values_past_the_request_bound_are_reported_as_used(client, sm, monkeypatch):
    # No known max activation: auto-steer clamps in raw units (x the largest activation its search saw),
    # which may pass a request's |value| <= 1000; the report says what was used.
    import dataclasses

    sm.sae.max_activation[PLANTED] = float("nan")
    (best,) = autosteer.concept_candidates(sm, CONCEPT)[:1]
    big = dataclasses.replace(best, max_activation=500.0)
    monkeypatch.setattr(autosteer, "concept_candidates", lambda sm, concept, extra=(), **_: [big])
    out = complete(client, steering={"method": "feature", "concept": CONCEPT, "strength": 5})
    m = multiplier(sm, PLANTED, CONCEPT, candidates=[big])
    assert out["steering"]["features"] == [{"index": PLANTED, "value": pytest.approx(m * 5 * 500.0),
                                            "mode": "clamp", "unit": "raw"}]
    assert m * 5 * 500.0 > 1000  # past a request's bound
    assert out["steering"]["concept"]["candidates"][0]["concept"]["max_activation"] == 500.0
