"""Preset files: one reader, every field checked, a folder checked against a model and SAE (steering.presets)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steering.errors import SteeringError
from steering.interventions import FeatureClamp, SteeringSpec
from steering.presets import PresetError, PresetRegistry, find_preset, read_preset
from tests.api.support import MODEL_ID, SAE_ID, tiny_sae, write_preset


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
        ({"goal": "amplify"}, "goal"),
        ({"prompt_set": "../dogs"}, "prompt_set"),
        ({"prompt_set": 3}, "prompt_set"),
        ({"compare_prompt": ["Talk about dogs."]}, "compare_prompt"),
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


SHIPPED = sorted((Path(__file__).resolve().parents[1] / "presets").glob("*.json"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_presets_parse_and_their_efficacy_verdict_follows_the_numbers(path):
    preset = read_preset(path)
    SteeringSpec(positions=preset.positions, generated_limit=preset.generated_limit).validate_window()
    assert preset.concept_words and preset.efficacy is not None and preset.notes
    conditional = any(m.action == "steer" for m in preset.monitors)
    if not preset.features and not conditional:  # a preset that only watches: its record is of flag rates
        assert preset.monitors
        eff = preset.efficacy
        meets = eff["flag_rate_on"] >= 0.9 and eff["flag_rate_off"] <= 0.1
        assert eff["meets_targets"] is meets and eff["n_on"] >= 40 and eff["n_off"] >= 40
        assert eff["flag_rate_on"] == eff["flagged_on"] / eff["n_on"]
        return
    top = preset.efficacy  # what `eval-steering --preset all` measures: the check half, on fresh seeds
    assert top["half"] == "check" and top["prompt_set"] == preset.prompt_set and top["goal"] == preset.goal
    assert top["n_answers"] >= (80 if conditional else 90) and top["seed"] >= 1000
    if preset.compare_prompt:
        assert top["prompted"]["system_prompt"] == preset.compare_prompt
    selection = top.get("selection")
    for eff in [top] + ([selection] if selection else []):
        if preset.goal == "suppress":  # on prompts about the concept: it leaves the answers
            rates = eff["concept_rate"] <= 0.2 and eff["baseline_concept_rate"] >= 0.8
        else:
            rates = eff["concept_rate"] >= 0.8 and eff["baseline_concept_rate"] <= 0.05
        meets = rates and eff["repeated_4gram"] <= 0.2 and eff["delta_loss"] <= 1.0
        # the self set is the ten self-description prompts a half (nine answers each); others >= 20
        assert eff["meets_targets"] is meets and eff["n_prompts"] >= (10 if preset.prompt_set == "self" else 20)
    if conditional:  # measured on on-topic prompts, and on off-topic ones where it should leave answers alone
        off = preset.efficacy["off_topic"]
        assert preset.efficacy["n_prompts"] >= 40 and off["n_prompts"] >= 40
        assert 1 >= off["unchanged_rate"] >= 1 - off["triggered_rate"] - 1e-9  # untriggered rows are untouched



def test_a_draft_preset_by_name_or_path(tmp_path):
    """The evaluation's drafts: no description, model or sae needed; the clamps' labels are notes."""
    path = tmp_path / "dog.json"
    path.write_text(json.dumps({
        "name": "dog", "model": "m", "sae": "s", "positions": "generated", "generated_limit": 4,
        "features": [{"index": 5, "value": 2.5, "label": "dogs"}, {"index": 9, "value": 1, "mode": "add", "unit": "raw"}],
        "concept_words": ["dog", "puppy"], "concept_features": [5], "system_prompt": "Hi", "efficacy": {"x": 1},
        "goal": "suppress", "prompt_set": "dogs", "compare_prompt": "Never mention dogs.",
    }))
    p = find_preset("dog", presets_dir=tmp_path)
    assert p.spec == SteeringSpec((FeatureClamp(5, 2.5), FeatureClamp(9, 1.0, "add", "raw")), "generated", 4)
    assert p.concept_words == ("dog", "puppy") and p.concept_features == (5,)
    assert (p.system_prompt, p.model, p.sae) == ("Hi", "m", "s")
    assert (p.goal, p.prompt_set, p.compare_prompt) == ("suppress", "dogs", "Never mention dogs.")
    assert read_preset(write_preset(tmp_path, "plain")).goal == "steer"  # the defaults
    assert read_preset(tmp_path / "plain.json").prompt_set == "neutral"
    assert find_preset(path).name == "dog"
    with pytest.raises(SteeringError) as err:
        find_preset("missing", presets_dir=tmp_path)
    assert err.value.param == "preset"


@pytest.mark.parametrize(("fields", "field"), [
    ({"features": [{"index": 1, "value": 2, "mode": []}]}, "features[0].mode"),
    ({"features": [{"index": 1, "value": 2, "unit": {}}]}, "features[0].unit"),
    ({"positions": ["all"]}, "positions"),
    ({"name": "abc\n"}, "name"),
    ({"monitors": [{"index": 1, "threshold": 1, "action": ["stop"]}]}, "monitors[0].action"),
    ({"monitors": [{"index": 1, "threshold": 0}]}, "monitors[0].threshold"),
    ({"monitors": [{"index": 96, "threshold": 1}]}, "monitors[0].index"),  # past d_sae of the loaded SAE
])
def test_wrong_types_and_monitors_name_the_field(tmp_path, sae, fields, field):
    path = write_preset(tmp_path, "broken", **fields)
    with pytest.raises(PresetError) as info:
        load(tmp_path, sae)
    assert str(path) in str(info.value) and f"field '{field}'" in str(info.value)
