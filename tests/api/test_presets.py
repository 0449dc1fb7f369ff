"""Preset files: validated at start-up, listed, looked up, applied only to their own model and SAE."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from steering.presets import PresetError, PresetRegistry, read_preset
from api.settings import Settings
from steering.interventions import SteeringSpec
from tests.api.support import MODEL_ID, SAE_ID, chat_body, tiny_sae, tiny_steered_model, write_preset


@pytest.fixture
def sae(tiny_llama, tiny_tokenizer):
    return tiny_sae(tiny_llama, tiny_tokenizer)


def load(folder, sae):
    return PresetRegistry.load(folder, MODEL_ID, SAE_ID, sae)


def test_valid_presets_load_and_merge(tmp_path, sae):
    write_preset(tmp_path, "calm", features=[{"index": 3, "value": 5, "mode": "add", "unit": "raw", "label": "calm"}],
                 positions="generated", system_prompt="Be calm.", concept_words=["calm"], notes="n")
    (tmp_path / "README.md").write_text("not a preset")
    reg = load(tmp_path, sae)
    entry = reg.get("calm")
    assert len(reg) == 1 and entry.available and entry.preset.system_prompt == "Be calm."
    spec = entry.preset.spec
    assert spec.positions == "generated" and spec.features[0].mode == "add" and spec.features[0].value == 5
    assert spec.generated_limit is None


def test_missing_folder_means_no_presets(tmp_path, sae):
    assert len(load(tmp_path / "absent", sae)) == 0
    assert len(load(None, sae)) == 0


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"features": []}, "features"),
        ({"features": [{"index": 1, "value": float("inf")}]}, "features[0].value"),
        ({"features": [{"index": 1, "value": 2000}]}, "features[0].value"),
        ({"features": [{"index": 1, "value": 2, "mode": "boost"}]}, "features[0].mode"),
        ({"description": None}, "description"),
        ({"name": "bad name!"}, "name"),
        ({"colour": "red"}, "colour"),
        ({"positions": "middle"}, "positions"),
        ({"generated_limit": -2}, "generated_limit"),
        ({"positions": "prompt", "generated_limit": 4}, "generated_limit"),
        ({"features": [{"index": 500, "value": 2}]}, "features[0].index"),  # past d_sae of the loaded SAE
        ({"features": [{"index": 1, "value": 2}, {"index": 1, "value": 3}]}, "features[1].index"),
        ({"concept_features": [-1]}, "concept_features[0]"),
        ({"concept_features": [3, 96]}, "concept_features[1]"),  # past d_sae of the loaded SAE
        ({"concept_features": "3"}, "concept_features"),
        ({"efficacy": [0.9]}, "efficacy"),
        ({"efficacy": {"concept_rate": 85}}, "efficacy"),  # a share, not a percentage
        ({"efficacy": {"concept_rate": "high"}}, "efficacy"),
        ({"efficacy": {"delta_loss": float("nan")}}, "efficacy.delta_loss"),
        ({"efficacy": {"sweep": [{"x": float("inf")}]}}, "efficacy.sweep"),
    ],
)
def test_broken_preset_names_file_and_field(tmp_path, sae, fields, field):
    path = write_preset(tmp_path, "broken", **fields)
    with pytest.raises(PresetError) as info:
        load(tmp_path, sae)
    assert str(path) in str(info.value) and f"field '{field}'" in str(info.value)


def test_invalid_json_and_missing_fields(tmp_path, sae):
    (tmp_path / "a.json").write_text('{"name": "a",')
    with pytest.raises(PresetError, match=r"a\.json.*not valid JSON"):
        load(tmp_path, sae)
    (tmp_path / "a.json").write_text('{"name": "a", "description": "d", "model": "m", "sae": "s"}')
    with pytest.raises(PresetError, match=r"a\.json: field 'features'"):
        load(tmp_path, sae)


def test_duplicate_names(tmp_path, sae):
    write_preset(tmp_path, "one")
    (tmp_path / "two.json").write_text((tmp_path / "one.json").read_text())
    with pytest.raises(PresetError, match=r"two\.json: field 'name'"):
        load(tmp_path, sae)


def test_other_model_or_sae_is_unavailable_not_fatal(tmp_path, sae):
    write_preset(tmp_path, "other-model", model="big-model", features=[{"index": 9999, "value": 1}])
    write_preset(tmp_path, "other-sae", sae="another-sae")
    reg = load(tmp_path, sae)
    assert [e.available for e in reg.all()] == [False, False]
    assert "big-model" in reg.get("other-model").reason and "another-sae" in reg.get("other-sae").reason
    assert not PresetRegistry.load(tmp_path, MODEL_ID, SAE_ID, None).all()[0].available


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
    write_preset(tmp_path, "calm", concept_words=["calm", "peace"], concept_features=[3, 7], efficacy=EFFICACY)
    write_preset(tmp_path, "plain")
    with TestClient(create_app(Settings(presets_dir=tmp_path), tiny_steered_model(tiny_llama, tiny_tokenizer))) as c:
        one = c.get("/v1/presets/calm").json()
        assert one["concept_words"] == ["calm", "peace"] and one["concept_features"] == [3, 7]
        assert one["efficacy"] == EFFICACY
        listed = {p["name"]: p for p in c.get("/v1/presets").json()["data"]}
        assert listed["calm"]["efficacy"]["concept_rate"] == 0.9
        # Absent: no words, null features (the evaluation then judges by the preset's own clamps), no record.
        assert (listed["plain"]["concept_words"], listed["plain"]["concept_features"], listed["plain"]["efficacy"]) == \
            ([], None, None)
        # Never applied: the same answer as the same clamps without the fields.
        body = chat_body(steering={"preset": "calm"})
        same = chat_body(steering={"preset": "plain"})
        assert c.post("/v1/chat/completions", json=body).json()["choices"][0]["message"] == \
            c.post("/v1/chat/completions", json=same).json()["choices"][0]["message"]


SHIPPED = sorted((Path(__file__).resolve().parents[2] / "presets").glob("*.json"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_presets_parse_and_their_efficacy_verdict_follows_the_numbers(path):
    preset = read_preset(path)
    SteeringSpec(positions=preset.positions, generated_limit=preset.generated_limit).validate_window()
    assert preset.concept_words and preset.efficacy is not None and preset.notes
    for eff in (preset.efficacy, preset.efficacy.get("holdout") or preset.efficacy):
        meets = (eff["concept_rate"] >= 0.8 and eff["baseline_concept_rate"] <= 0.05
                 and eff["repeated_4gram"] <= 0.2 and eff["delta_loss"] <= 1.0)
        assert eff["meets_targets"] is meets and eff["n_prompts"] >= 30

