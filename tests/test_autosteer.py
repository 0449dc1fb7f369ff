"""Auto-steer plumbing: a valid spec from the concept search, cached, with checked arguments."""

from __future__ import annotations

import json

import pytest
import torch

from steering import autosteer
from steering.autosteer import DEFAULT_MULTIPLIER, auto_steer, clear_cache
from steering.concepts import concept_texts, neutral_texts
from steering.cli import main
from steering.interventions import SteeringError
from steering.sae_io import save_sae
from tests.steering_support import plant_feature, tiny_sm

CONCEPT = "zzzz zzzz zzzz zzzz zzzz"


@pytest.fixture
def planted(tiny_llama, tiny_tokenizer):
    clear_cache()
    sm = tiny_sm(tiny_llama, tiny_tokenizer)
    plant_feature(sm, 17, concept_texts(CONCEPT) + neutral_texts(CONCEPT))
    yield sm
    clear_cache()


def test_auto_steer_returns_a_valid_spec_with_the_planted_feature(planted):
    result = auto_steer(planted, CONCEPT, strength=1.5)
    assert [(c.index, c.value, c.mode, c.unit) for c in result.spec.features] == [(17, DEFAULT_MULTIPLIER * 1.5, "clamp", "max")]
    assert result.spec.positions == "all"
    result.spec.validate(planted.sae)
    assert result.features[0].index == 17 and result.features[0].logit_rank == 0
    assert "feature 17" in result.rationale and "strength 1.5" in result.rationale
    d = result.to_dict()
    json.dumps(d)
    assert d["features"][0] == {**d["features"][0], "index": 17, "value": DEFAULT_MULTIPLIER * 1.5, "mode": "clamp", "unit": "max"}
    texts = planted.chat([{"role": "user", "content": "Hi"}], result.spec, max_tokens=4, compare=True)
    assert len(texts) == 2


def test_search_is_cached_per_concept_and_strength_applies_after(planted, monkeypatch):
    calls = []
    real = autosteer.find_concept_features

    def counting(sm, concept, **kw):
        calls.append(concept)
        return real(sm, concept, **kw)

    monkeypatch.setattr(autosteer, "find_concept_features", counting)
    assert not autosteer.is_cached(planted, CONCEPT)
    a = auto_steer(planted, CONCEPT, 1.0)
    assert autosteer.is_cached(planted, CONCEPT.upper())
    b = auto_steer(planted, "  " + CONCEPT.upper() + " ", 0.5)
    assert len(calls) == 1
    assert a.spec.features[0].index == b.spec.features[0].index
    assert b.spec.features[0].value == pytest.approx(0.5 * a.spec.features[0].value)
    other = tiny_sm(planted.loaded.model, planted.loaded.tokenizer)  # another SAE: its own cache
    auto_steer(other, CONCEPT, 1.0)
    assert len(calls) == 2


def test_second_feature_splits_the_strength(planted, monkeypatch):
    cands = autosteer.concept_candidates(planted, CONCEPT)
    close = [cands[0], type(cands[1])(**{**cands[1].to_dict(), "score": cands[0].score * 0.9})]
    monkeypatch.setattr(autosteer, "concept_candidates", lambda sm, c: close)
    r = auto_steer(planted, CONCEPT, 1.0, max_features=2)
    assert [c.value for c in r.spec.features] == [DEFAULT_MULTIPLIER / 2] * 2
    assert "split over 2 features" in r.rationale
    far = [cands[0], type(cands[1])(**{**cands[1].to_dict(), "score": cands[0].score * 0.5})]
    monkeypatch.setattr(autosteer, "concept_candidates", lambda sm, c: far)
    assert len(auto_steer(planted, CONCEPT, 1.0, max_features=2).spec.features) == 1


def test_unknown_max_activation_falls_back_to_raw_units(planted):
    planted.sae.max_activation[17] = float("nan")
    r = auto_steer(planted, CONCEPT, 1.0)
    (clamp,) = r.spec.features
    assert clamp.unit == "raw" and clamp.value == pytest.approx(DEFAULT_MULTIPLIER * r.candidates[0].max_activation)


@pytest.mark.parametrize(
    "concept,strength,param",
    [("", 1.0, "steering.concept"), ("x" * 101, 1.0, "steering.concept"), (3, 1.0, "steering.concept"),
     ("dog", 0.0, "steering.strength"), ("dog", -1, "steering.strength"), ("dog", float("nan"), "steering.strength"),
     ("dog", 99.0, "steering.strength"), ("dog", True, "steering.strength")],
)
def test_bad_arguments_name_the_parameter(tiny_llama, tiny_tokenizer, concept, strength, param):
    with pytest.raises(SteeringError) as err:  # checked before any search
        auto_steer(tiny_sm(tiny_llama, tiny_tokenizer), concept, strength)
    assert err.value.param == param


def test_no_sae_or_no_candidate_is_a_steering_error(planted, monkeypatch):
    monkeypatch.setattr(autosteer, "concept_candidates", lambda sm, c: [])
    with pytest.raises(SteeringError) as err:
        auto_steer(planted, "dog")
    assert err.value.param == "steering.concept"
    monkeypatch.undo()
    planted.sae = None
    with pytest.raises(SteeringError) as err:
        auto_steer(planted, "dog")
    assert err.value.param == "steering"
    assert torch.is_grad_enabled()  # nothing left a no-grad mode behind


def test_cli_concept_search_with_try(tiny_model_dir, tiny_tokenizer, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    clear_cache()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True).eval()
    sm = tiny_sm(model, tiny_tokenizer)
    plant_feature(sm, 17, concept_texts(CONCEPT) + neutral_texts(CONCEPT))
    sae_dir = save_sae(sm.sae, tmp_path / "sae")
    common = ["--model", str(tiny_model_dir), "--sae", str(sae_dir), "--threads", "1"]
    args = ["concept-search", CONCEPT, "--limit", "3", "--try", "Hi", "--max-tokens", "3", "--json", *common]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["candidates"][0]["index"] == 17 and len(out["candidates"]) <= 3
    assert out["auto_steer"]["features"][0]["index"] == 17 and set(out["answers"]) == {"steered", "baseline"}
    assert main(["concept-search", CONCEPT, "--limit", "3", *common]) == 0  # the table
    assert "promotes" in capsys.readouterr().out
    clear_cache()


def _write_catalogue(folder, d_sae: int, tokenizer, labelled: dict[int, str]) -> None:
    """A minimal steering-catalogue (format of steering.catalogue) with labels and one context per feature."""
    import numpy as np
    from safetensors.numpy import save_file

    vocab = [tokenizer.decode([i]).encode() for i in range(len(tokenizer))]
    offsets = np.cumsum([0] + [len(b) for b in vocab]).astype(np.int64)
    z = tokenizer("z", add_special_tokens=False)["input_ids"][0]
    ctx = np.full((d_sae, 1, 3), np.iinfo(np.uint16).max, dtype=np.uint16)
    ctx[:, 0, 1] = z
    arrays = {
        "max_activation": np.ones(d_sae, np.float32), "firing_frequency": np.full(d_sae, 0.01, np.float32),
        "context_tokens": ctx, "context_activation": np.ones((d_sae, 1), np.float16),
        "promoted_ids": np.zeros((d_sae, 10), np.int32), "promoted_values": np.zeros((d_sae, 10), np.float16),
        "suppressed_ids": np.zeros((d_sae, 10), np.int32), "suppressed_values": np.zeros((d_sae, 10), np.float16),
        "neighbour_ids": np.zeros((d_sae, 10), np.int32), "neighbour_cosine": np.zeros((d_sae, 10), np.float16),
        "vocab_bytes": np.frombuffer(b"".join(vocab), dtype=np.uint8).copy(), "vocab_offsets": offsets,
    }
    save_file(arrays, str(folder / "catalogue.safetensors"))
    labels = [labelled.get(i, f"feature {i}") for i in range(d_sae)]
    (folder / "catalogue.json").write_text(json.dumps({
        "format": "steering-catalogue", "version": 1, "d_sae": d_sae, "n_contexts": 1, "window": [1, 1],
        "n_tokens": 10, "source": "test", "labels": labels}))


def test_cli_concept_search_shows_catalogue_labels(tiny_model_dir, tiny_tokenizer, tmp_path,
                                                                        capsys):
    from transformers import AutoModelForCausalLM

    clear_cache()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True).eval()
    sm = tiny_sm(model, tiny_tokenizer)
    plant_feature(sm, 17, concept_texts(CONCEPT) + neutral_texts(CONCEPT))
    sae_dir = save_sae(sm.sae, tmp_path / "sae")
    _write_catalogue(sae_dir, sm.sae.d_sae, tiny_tokenizer, {17: "zzz buzzing", 40: "zzzz sleeping"})
    args = ["concept-search", CONCEPT, "--limit", "64", "--json", "--model", str(tiny_model_dir),
            "--sae", str(sae_dir), "--threads", "1"]
    assert main(args) == 0
    cands = json.loads(capsys.readouterr().out)["candidates"]
    assert cands[0]["index"] == 17 and cands[0]["catalogue"]["label"] == "zzz buzzing"
    assert main(args[:4] + args[5:]) == 0  # the table
    assert "label: 'zzz buzzing'" in capsys.readouterr().out
    clear_cache()
