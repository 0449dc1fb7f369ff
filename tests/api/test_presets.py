"""Presets over HTTP: a broken file stops start-up, GET /v1/presets lists them, a request applies one."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings
from steering.presets import PresetError
from tests.api.support import chat_body, tiny_steered_model, write_preset


def test_broken_preset_stops_start_up(tmp_path, tiny_llama, tiny_tokenizer):
    write_preset(tmp_path, "bad", features=[{"index": 500, "value": 1}])
    app = create_app(Settings(presets_dir=tmp_path), tiny_steered_model(tiny_llama, tiny_tokenizer))
    with pytest.raises(PresetError, match=r"bad\.json: field 'features\[0\]\.index'"):
        with TestClient(app):
            pass


def test_schema_errors_stop_start_up_before_loading(tmp_path):
    (tmp_path / "x.json").write_text("[]")
    fatal = []
    with pytest.raises(PresetError, match=r"x\.json"):
        with TestClient(create_app(Settings(presets_dir=tmp_path), on_fatal=fatal.append)):
            pass
    assert isinstance(fatal[0], PresetError)


def test_preset_routes(tmp_path, tiny_llama, tiny_tokenizer):
    write_preset(tmp_path, "alpha", system_prompt="A")
    write_preset(tmp_path, "beta", model="big-model")
    app = create_app(Settings(presets_dir=tmp_path), tiny_steered_model(tiny_llama, tiny_tokenizer))
    with TestClient(app) as c:
        listed = c.get("/v1/presets").json()
        assert listed["object"] == "list" and [p["name"] for p in listed["data"]] == ["alpha", "beta"]
        assert [p["available"] for p in listed["data"]] == [True, False]
        one = c.get("/v1/presets/alpha").json()
        assert one["object"] == "preset" and one["system_prompt"] == "A" and one["features"][0]["index"] == 3
        r = c.get("/v1/presets/gamma")
        assert r.status_code == 404 and r.json()["error"]["code"] == "preset_not_found"
        assert c.get("/ready").json()["presets"] == 2


EFFICACY = {"n_prompts": 30, "concept_rule": "concept word OR concept feature firing", "concept_rate": 0.9,
            "baseline_concept_rate": 0.0, "repeated_4gram": 0.05, "delta_loss": 0.4, "max_tokens": 64, "seed": 0,
            "meets_targets": True, "measured_at": "2026-11-21T09:00:00Z",
            "command": "python -m steering eval-steering --preset calm --json", "sweep": [{"multiplier": 2, "rate": 0.5}]}


def test_concept_fields_and_efficacy_are_listed(tmp_path, tiny_llama, tiny_tokenizer):
    write_preset(tmp_path, "calm", concept_words=["calm", "peace"], concept_features=[3, 7], efficacy=EFFICACY,
                 goal="suppress", prompt_set="calm", compare_prompt="Never be calm.")
    write_preset(tmp_path, "plain")
    with TestClient(create_app(Settings(presets_dir=tmp_path), tiny_steered_model(tiny_llama, tiny_tokenizer))) as c:
        one = c.get("/v1/presets/calm").json()
        assert one["concept_words"] == ["calm", "peace"] and one["concept_features"] == [3, 7]
        assert one["efficacy"] == EFFICACY
        assert (one["goal"], one["prompt_set"], one["compare_prompt"]) == ("suppress", "calm", "Never be calm.")
        listed = {p["name"]: p for p in c.get("/v1/presets").json()["data"]}
        assert listed["calm"]["efficacy"]["concept_rate"] == 0.9
        # Absent: no words, null features (the evaluation then judges by the preset's own clamps), no record.
        assert (listed["plain"]["concept_words"], listed["plain"]["concept_features"], listed["plain"]["efficacy"]) == \
            ([], None, None)
        assert (listed["plain"]["goal"], listed["plain"]["prompt_set"], listed["plain"]["compare_prompt"]) == \
            ("steer", "neutral", None)
        # Never applied: the same answer as the same clamps without the fields.
        body = chat_body(steering={"preset": "calm"})
        same = chat_body(steering={"preset": "plain"})
        assert c.post("/v1/chat/completions", json=body).json()["choices"][0]["message"] == \
            c.post("/v1/chat/completions", json=same).json()["choices"][0]["message"]




def test_a_preset_with_a_steer_monitor_is_listed(tmp_path, tiny_llama, tiny_tokenizer):
    """A conditional preset (a steer monitor with its own clamps) in the list and alone, as written."""
    monitor = {"index": 4, "threshold": 0.5, "unit": "raw", "action": "steer", "name": "trigger",
               "clamps": [{"index": 9, "value": 2.0, "mode": "clamp", "unit": "max"}], "duration": 8}
    write_preset(tmp_path, "conditional", features=[], monitors=[monitor])
    with TestClient(create_app(Settings(presets_dir=tmp_path), tiny_steered_model(tiny_llama, tiny_tokenizer))) as c:
        listed = c.get("/v1/presets")
        assert listed.status_code == 200, listed.text
        one = c.get("/v1/presets/conditional").json()
        assert one["monitors"][0]["clamps"] == monitor["clamps"] and one["monitors"][0]["duration"] == 8
