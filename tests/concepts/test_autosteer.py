"""Auto-steer plumbing: a valid spec from the concept search, cached, with checked arguments."""

from __future__ import annotations

import functools
import json

import pytest
import torch

from steering.cli import main
from steering.concepts import autosteer
from steering.concepts.autosteer import DEFAULT_MULTIPLIER, DEFAULT_WINDOW, MULTIPLIER_RANGE, PUSH_FRACTION, AutoSteerer, auto_steer
from steering.concepts.probe import PROBE_PROMPTS, ProbeResult, ProbeSettings, best_probe, judged, probe_specs
from steering.concepts.search import concept_texts, neutral_texts, number_forms
from steering.errors import SteeringError
from steering.sae.formats import save_sae
from tests.support import autosteer_multiplier, plant_feature, tiny_sm

CONCEPT = "zzzz zzzz zzzz zzzz zzzz"
# These tests are of the probed single-feature method (`method="feature"`); the direction's are in
# tests/concepts/test_direction.py.
feature_steer = functools.partial(auto_steer, method="feature")
FeatureSteerer = functools.partial(AutoSteerer, method="feature")


@pytest.fixture
def planted(tiny_llama, tiny_tokenizer):
    sm = tiny_sm(tiny_llama, tiny_tokenizer)
    plant_feature(sm, 17, concept_texts(CONCEPT) + neutral_texts(CONCEPT))
    return sm


def multiplier(sm, index: int, candidates=None) -> float:
    return autosteer_multiplier(sm, index, CONCEPT, candidates)


def test_calibrated_multiplier_by_hand(planted):
    """m_i = PUSH_FRACTION * scale / (max_i * |W_dec[i]|), clipped; the search's max without a known one;
    the fixed multiplier without a residual scale."""
    (cand,) = autosteer.concept_candidates(planted, CONCEPT)[:1]
    sae = planted.sae
    with torch.no_grad():
        sae.W_dec[cand.index] = sae.W_dec[cand.index] / sae.W_dec[cand.index].norm() * 2.0  # |d| = 2
    sae.max_activation[cand.index] = 4.0  # a push of 8 per unit of max
    low, high = MULTIPLIER_RANGE
    scale = 1.5 / PUSH_FRACTION * 8.0  # wants m = 1.5
    assert autosteer.calibrated_multiplier(planted, cand, scale) == pytest.approx(1.5)
    assert autosteer.calibrated_multiplier(planted, cand, scale * 100) == high
    assert autosteer.calibrated_multiplier(planted, cand, scale / 100) == low
    assert autosteer.calibrated_multiplier(planted, cand, None) == DEFAULT_MULTIPLIER
    sae.max_activation[cand.index] = float("nan")  # the search's max instead
    wanted = PUSH_FRACTION * scale / (cand.max_activation * 2.0)
    assert autosteer.calibrated_multiplier(planted, cand, scale) == pytest.approx(min(high, max(low, wanted)), abs=1e-3)
    stats = autosteer.neutral_bank_stats(planted)
    assert stats.resid_norm.shape == (stats.mean.shape[0],) and bool((stats.resid_norm > 0).all())
    assert autosteer.residual_scale(stats) == pytest.approx(float(stats.resid_norm.median()))
    assert autosteer.residual_scale(None) is None


def test_auto_steer_returns_a_valid_spec_with_the_planted_feature(planted):
    m = multiplier(planted, 17)
    result = feature_steer(planted, CONCEPT, strength=1.5, probe=None)  # by the search's score alone
    assert [(c.index, c.mode, c.unit) for c in result.spec.features] == [(17, "clamp", "max")]
    assert result.spec.features[0].value == pytest.approx(m * 1.5)
    assert (result.spec.positions, result.spec.generated_limit) == ("all", DEFAULT_WINDOW)
    assert result.probes == ()
    result.spec.validate(planted.sae)
    assert result.features[0].index == 17 and result.features[0].logit_rank == 0
    assert "feature 17" in result.rationale and "strength 1.5" in result.rationale
    d = result.to_dict()
    json.dumps(d)
    assert d["features"][0] == {**d["features"][0], "index": 17, "value": result.spec.features[0].value, "mode": "clamp",
                                "unit": "max"}
    assert "calibrated" in result.rationale
    texts = planted.chat([{"role": "user", "content": "Hi"}], result.spec, max_tokens=4, compare=True)
    assert len(texts) == 2


def test_search_is_cached_per_concept_and_strength_applies_after(planted, monkeypatch):
    calls = []
    real = autosteer.find_concept_features

    def counting(sm, concept, **kw):
        calls.append(concept)
        return real(sm, concept, **kw)

    monkeypatch.setattr(autosteer, "find_concept_features", counting)
    steerer = FeatureSteerer(planted, probe=None)
    assert not steerer.is_cached(CONCEPT)
    a = steerer.steer(CONCEPT, 1.0)
    assert steerer.is_cached(CONCEPT.upper())
    assert not steerer.is_cached(CONCEPT, extra=[3])  # other extras: another search
    b = steerer.steer("  " + CONCEPT.upper() + " ", 0.5)
    assert len(calls) == 1
    assert a.spec.features[0].index == b.spec.features[0].index
    assert b.spec.features[0].value == pytest.approx(0.5 * a.spec.features[0].value)
    other = tiny_sm(planted.loaded.model, planted.loaded.tokenizer)  # another model and SAE: its own steerer
    FeatureSteerer(other, probe=None).steer(CONCEPT, 1.0)
    assert len(calls) == 2
    feature_steer(planted, CONCEPT, 1.0, probe=None)  # one uncached call: a search of its own
    assert len(calls) == 3


def test_cache_keeps_the_most_recently_used_concepts(planted):
    steerer = FeatureSteerer(planted, probe=None, max_cached=2)
    for concept in (CONCEPT, "zzzz", "zzz zzz"):
        steerer.steer(concept, 1.0)
        if concept == "zzzz":
            steerer.steer(CONCEPT, 1.0)  # a hit makes CONCEPT the most recent
    assert steerer.is_cached(CONCEPT) and steerer.is_cached("zzz zzz")
    assert not steerer.is_cached("zzzz")


def test_second_feature_splits_the_strength(planted, monkeypatch):
    cands = autosteer.concept_candidates(planted, CONCEPT)
    close = [cands[0], type(cands[1])(**{**cands[1].to_dict(), "score": cands[0].score * 0.9})]
    monkeypatch.setattr(autosteer, "concept_candidates", lambda sm, c, extra=(), **_: close)
    r = feature_steer(planted, CONCEPT, 1.0, max_features=2, probe=None)
    assert [c.value for c in r.spec.features] == pytest.approx([multiplier(planted, c.index, candidates=close) / 2
                                                                for c in close])
    assert "split over 2 features" in r.rationale
    far = [cands[0], type(cands[1])(**{**cands[1].to_dict(), "score": cands[0].score * 0.5})]
    monkeypatch.setattr(autosteer, "concept_candidates", lambda sm, c, extra=(), **_: far)
    assert len(feature_steer(planted, CONCEPT, 1.0, max_features=2, probe=None).spec.features) == 1


def test_label_matches_join_the_search_pool(planted):
    pool = autosteer.concept_candidates(planted, CONCEPT)
    assert len(pool) == autosteer.SEARCH_CANDIDATES and pool[0].index == 17
    outsider = next(i for i in range(planted.sae.d_sae) if i not in {c.index for c in pool})
    wider = autosteer.concept_candidates(planted, CONCEPT, extra=[outsider, 17])
    assert [c.index for c in wider[: autosteer.SEARCH_CANDIDATES]] == [c.index for c in pool]
    assert [c.index for c in wider[autosteer.SEARCH_CANDIDATES:]] == [outsider]  # 17 is there once


def _fake_probe(lifts: dict[int, tuple[float, float]], calls: list[int]):
    """probe_specs stand-in: candidate i gets (concept rate, delta loss) = lifts.get(i, (0, 0)) over a 0 baseline."""

    def fake(sm, concept, specs, settings=ProbeSettings(), runner=None, **_):
        calls.append(len(specs))
        for i, spec in specs:  # probed at the value and window auto-steer will use at strength 1
            assert [(c.value, c.unit) for c in spec.features] == [(pytest.approx(multiplier(sm, i)), "max")]
            assert spec.generated_limit == DEFAULT_WINDOW
        out = []
        for i, _ in specs:
            rate, loss = lifts.get(i, (0.0, 0.0))
            out.append(ProbeResult(i, rate, 0.0, 0.0, loss, 4))
        return out

    return fake


def test_probe_picks_the_largest_lift_then_the_smaller_loss(planted, monkeypatch):
    pool = autosteer.concept_candidates(planted, CONCEPT)
    second, third = pool[1].index, pool[2].index
    calls: list[int] = []
    monkeypatch.setattr(autosteer, "probe_specs", _fake_probe({second: (0.75, 1.2), third: (0.75, 0.4)}, calls))
    steerer = FeatureSteerer(planted)
    r = steerer.steer(CONCEPT, 2.0)
    # equal lift: the smaller delta loss wins over the search's order
    assert [c.index for c in r.spec.features] == [third]
    assert r.spec.features[0].value == pytest.approx(multiplier(planted, third) * 2)
    assert calls == [len(pool)] and len(r.probes) == len(pool)
    assert f"feature {third}:" in r.rationale and "3/4 answers carried the concept" in r.rationale
    assert r.to_dict()["probe"][2] == {**r.probes[2].to_dict(), "index": third, "lift": 0.75}
    steerer.steer(CONCEPT, 1.0)
    assert calls == [len(pool)]  # the probe is cached with the search
    two = steerer.steer(CONCEPT, 1.0, max_features=2)
    assert [c.index for c in two.spec.features] == [third, second] and "split over 2" in two.rationale


def test_no_lift_in_the_probe_falls_back_to_the_search(planted, monkeypatch):
    monkeypatch.setattr(autosteer, "probe_specs", _fake_probe({}, []))
    r = feature_steer(planted, CONCEPT, 1.0)
    assert r.spec.features[0].index == 17 and "no candidate lifted" in r.rationale


def test_broad_candidates_are_passed_over_and_label_matches_come_first(planted, monkeypatch):
    pool = autosteer.concept_candidates(planted, CONCEPT)
    outsider = next(i for i in range(planted.sae.d_sae) if i not in {c.index for c in pool})
    second = pool[1].index

    def probe(sm, concept, specs, settings=ProbeSettings(), runner=None, **_):
        # 17 lifts most but its own firing marks 2 of 4 plain answers: too broad to judge by
        return [ProbeResult(i, 1.0 if i == 17 else 0.5 if i == second else 0.0, 0.5 if i == 17 else 0.0,
                            0.0, 0.3, 4) for i, _ in specs]

    monkeypatch.setattr(autosteer, "probe_specs", probe)
    assert feature_steer(planted, CONCEPT, 1.0, extra=[outsider]).spec.features[0].index == second
    monkeypatch.setattr(autosteer, "probe_specs",
                        lambda sm, c, specs, settings=None, runner=None, **_: [ProbeResult(i, 0.5, 0.5, 0.0, 0.1, 4) if i == 17
                                                             else ProbeResult(i, 0.0, 0.0, 0.0, 0.1, 4)
                                                             for i, _ in specs])
    # nothing judged lifts: the label match, then (without one) the search's order past the broad 17
    assert feature_steer(planted, CONCEPT, 1.0, extra=[outsider]).spec.features[0].index == outsider
    assert feature_steer(planted, CONCEPT, 1.0).spec.features[0].index == second


def test_real_probe_on_a_tiny_model(planted):
    r = feature_steer(planted, CONCEPT, 1.0)
    assert [p.index for p in r.probes] == [c.index for c in r.candidates]
    assert all(p.n_answers == len(PROBE_PROMPTS) and 0 <= p.concept_rate <= 1 for p in r.probes)
    best = best_probe(r.probes)
    assert r.spec.features[0].index == (best.index if best is not None else r.candidates[0].index)
    json.dumps(r.to_dict())


def test_probe_of_an_empty_spec_equals_its_baseline(planted):
    from steering.interventions import FeatureClamp, SteeringSpec

    specs = [(17, SteeringSpec()), (17, SteeringSpec((FeatureClamp(17, 50.0),), "all", 4))]
    empty, strong = probe_specs(planted, CONCEPT, specs, ProbeSettings(prompts=PROBE_PROMPTS[:2], max_tokens=6),
                                losses="all")
    assert empty.concept_rate == empty.baseline_rate and empty.delta_loss == pytest.approx(0.0, abs=1e-6)
    assert empty.lift == 0 and empty.n_answers == 2
    assert strong.baseline_rate == empty.baseline_rate and strong.delta_loss != pytest.approx(0.0, abs=1e-6)


def test_probe_equals_the_steering_evaluation_of_the_same_specs(planted):
    """The probe's shortcuts (plain answers read once, firing read while generating, kept contexts)
    give the evaluation's rates and delta loss for each candidate."""
    from steering.evaluation.run import Concept, EvalSettings, EvalTarget, evaluate_targets
    from steering.interventions import FeatureClamp, SteeringSpec

    settings = ProbeSettings(prompts=PROBE_PROMPTS[:3], max_tokens=8)
    specs = [(17, SteeringSpec((FeatureClamp(17, 3.0),), "all", 4)), (17, SteeringSpec((FeatureClamp(17, 0.5),))),
             (3, SteeringSpec((FeatureClamp(3, 2.0),), "all", 6)), (17, SteeringSpec())]
    probed = probe_specs(planted, CONCEPT, specs, settings, losses="all")
    words = tuple(number_forms(CONCEPT))
    targets = [EvalTarget(str(i), spec, Concept(words, (i,))) for i, spec in specs]
    evaluated = evaluate_targets(planted, targets, list(settings.prompts),
                                 EvalSettings(max_tokens=settings.max_tokens, temperature=settings.temperature,
                                              seed=settings.seed))
    assert any(e.feature_rate for e in evaluated)  # the firing judge is exercised
    for p, e in zip(probed, evaluated):
        assert (p.concept_rate, p.baseline_rate) == (e.concept_rate, e.baseline_concept_rate)
        assert p.repeated_4gram == pytest.approx(e.repeated_4gram)
        assert p.delta_loss == pytest.approx(e.delta_loss, abs=1e-5)


def test_probe_measures_delta_loss_for_the_best_lift_only(planted):
    from steering.interventions import FeatureClamp, SteeringSpec

    settings = ProbeSettings(prompts=PROBE_PROMPTS[:2], max_tokens=6)
    # Every feature as a candidate judged on the answers of one strong clamp (or none): on a random
    # model some fire on the changed answers and not on the plain ones, which is a lift.
    strong, mild = SteeringSpec((FeatureClamp(17, 50.0),)), SteeringSpec((FeatureClamp(17, 20.0),), "all", 3)
    specs = [(i, spec) for i in range(planted.sae.d_sae) for spec in (SteeringSpec(), strong, mild)]
    every = probe_specs(planted, CONCEPT, specs, settings, losses="all")
    best = probe_specs(planted, CONCEPT, specs, settings)
    top = max(r.lift for r in every if judged(r))
    assert top > 0
    for a, b in zip(every, best):
        assert (a.concept_rate, a.baseline_rate) == (b.concept_rate, b.baseline_rate)
        assert b.delta_loss == (pytest.approx(a.delta_loss) if judged(a) and a.lift == top else None)
    assert sum(b.delta_loss is not None for b in best) < len(best)
    with pytest.raises(ValueError, match="losses"):
        probe_specs(planted, CONCEPT, specs, settings, losses="some")


def test_plain_answers_are_made_once_for_every_concept(planted, monkeypatch):
    made = []
    real = autosteer.plain_answers
    monkeypatch.setattr(autosteer, "plain_answers", lambda *a, **k: made.append(1) or real(*a, **k))
    steerer = FeatureSteerer(planted, ProbeSettings(prompts=PROBE_PROMPTS[:2], max_tokens=4))
    steerer.prepare()
    assert made == [1]  # at start-up, where the steerer's method is `feature`
    steerer.steer(CONCEPT)
    steerer.steer("yyyy yyyy")
    assert made == [1]
    lazy = AutoSteerer(planted, ProbeSettings(prompts=PROBE_PROMPTS[:2], max_tokens=4))  # method `direction`
    lazy.prepare()
    lazy.steer(CONCEPT)
    assert made == [1]  # the direction needs none
    lazy.steer(CONCEPT, method="feature")
    lazy.steer("yyyy yyyy", method="feature")
    assert made == [1, 1]


def test_probe_prompts_are_distinct_and_outside_the_evaluation_set():
    from steering.evaluation.prompts import load_prompts, prompt_set_path

    assert len(set(PROBE_PROMPTS)) == len(PROBE_PROMPTS) >= 4
    for half in ("select", "check"):
        assert not {p.lower() for p in PROBE_PROMPTS} & {p.lower() for p in load_prompts(prompt_set_path("neutral", half))}


def test_best_probe_needs_a_positive_lift():
    def res(i, c, b, dl):
        return ProbeResult(i, c, b, 0.0, dl, 4)

    assert best_probe([res(1, 0.5, 0.5, 0.1), res(2, 0.0, 0.25, 0.1)]) is None
    assert best_probe([res(1, 0.5, 0.0, 0.9), res(2, 0.75, 0.25, 0.5), res(3, 0.5, 0.0, None)]).index == 2
    assert best_probe([res(1, 0.5, 0.25, None), res(2, 0.25, 0.0, 2.0)]).index == 2  # a scored loss beats none
    assert best_probe([]) is None
    assert best_probe([res(1, 1.0, 0.5, 0.1), res(2, 0.5, 0.25, 0.1)]).index == 2  # 1's judge fires on plain answers


def test_unknown_max_activation_falls_back_to_raw_units(planted):
    planted.sae.max_activation[17] = float("nan")
    r = feature_steer(planted, CONCEPT, 1.0, probe=None)
    (clamp,) = r.spec.features
    m = multiplier(planted, 17)  # from the search's max: the catalogue's is unknown
    assert clamp.unit == "raw" and clamp.value == pytest.approx(m * r.candidates[0].max_activation)


@pytest.mark.parametrize(
    "concept,strength,param",
    [("", 1.0, "steering.concept"), ("x" * 101, 1.0, "steering.concept"), (3, 1.0, "steering.concept"),
     ("dog", 0.0, "steering.strength"), ("dog", -1, "steering.strength"), ("dog", float("nan"), "steering.strength"),
     ("dog", 99.0, "steering.strength"), ("dog", True, "steering.strength")],
)
def test_bad_arguments_name_the_parameter(tiny_llama, tiny_tokenizer, concept, strength, param):
    with pytest.raises(SteeringError) as err:  # checked before any search
        feature_steer(tiny_sm(tiny_llama, tiny_tokenizer), concept, strength)
    assert err.value.param == param


def test_no_sae_or_no_candidate_is_a_steering_error(planted, monkeypatch):
    monkeypatch.setattr(autosteer, "concept_candidates", lambda sm, c, extra=(), **_: [])
    with pytest.raises(SteeringError) as err:
        feature_steer(planted, "dog")
    assert err.value.param == "steering.concept"
    monkeypatch.undo()
    planted.sae = None
    with pytest.raises(SteeringError) as err:
        feature_steer(planted, "dog")
    assert err.value.param == "steering"
    assert torch.is_grad_enabled()  # nothing left a no-grad mode behind


def _saved_planted(tiny_model_dir, tiny_tokenizer, tmp_path):
    """The tiny model loaded from disk with feature 17 planted, and its SAE saved for the CLI."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True).eval()
    sm = tiny_sm(model, tiny_tokenizer)
    plant_feature(sm, 17, concept_texts(CONCEPT) + neutral_texts(CONCEPT))
    return sm, save_sae(sm.sae, tmp_path / "sae")


def test_cli_concept_search_with_try(tiny_model_dir, tiny_tokenizer, tmp_path, capsys):
    _, sae_dir = _saved_planted(tiny_model_dir, tiny_tokenizer, tmp_path)
    common = ["--model", str(tiny_model_dir), "--sae", str(sae_dir), "--threads", "1"]
    args = ["concept-search", CONCEPT, "--limit", "3", "--try", "Hi", "--max-tokens", "3", "--json", *common]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["candidates"][0]["index"] == 17 and len(out["candidates"]) <= 3
    # auto-steer took the probe's best judged candidate (a judged fallback when none lifted the concept)
    picked = out["auto_steer"]["features"][0]["index"]
    judged = [p for p in out["auto_steer"]["probe"] if p["baseline_rate"] <= 0.25]
    lifted = [p for p in judged if p["lift"] > 0]
    if lifted:
        assert picked == max(lifted, key=lambda p: (p["lift"], -p["delta_loss"]))["index"]
    elif judged:
        assert picked in {p["index"] for p in judged}
    assert set(out["answers"]) == {"steered", "baseline"}
    assert main(["concept-search", CONCEPT, "--limit", "3", *common]) == 0  # the table
    assert "promotes" in capsys.readouterr().out


def test_cli_eval_steering_measures_auto_steer(tiny_model_dir, tiny_tokenizer, tmp_path, capsys):
    sm, sae_dir = _saved_planted(tiny_model_dir, tiny_tokenizer, tmp_path)
    args = ["eval-steering", "--concept", CONCEPT, "--strength", "2", "--model", str(tiny_model_dir),
            "--sae", str(sae_dir), "--max-tokens", "3", "--limit-prompts", "2", "--json", "--threads", "1",
            "--method", "feature"]
    assert main(args) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    # the target is auto-steer's spec, judged by its feature and by the concept text as the word
    (clamp,) = out["spec"]["features"]
    assert out["label"] == f"concept:{CONCEPT}" and out["concept_features"] == [clamp["index"]]
    assert clamp == {"index": clamp["index"], "value": pytest.approx(multiplier(sm, clamp["index"]) * 2),
                     "mode": "clamp", "unit": "max"}
    assert out["spec"]["generated_limit"] == DEFAULT_WINDOW and out["concept_words"] == [CONCEPT]
    assert f"auto-steer: feature {clamp['index']}:" in captured.err
    # a window and words from the command line replace auto-steer's defaults
    assert main([*args, "--generated-limit", "2", "--concept-words", "zz,buzz"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["spec"]["generated_limit"] == 2 and out["concept_words"] == ["zz", "buzz"]
    # prompting, measured beside it
    assert main([*args, "--compare-prompt", "Talk about zzzz."]) == 0
    prompted = json.loads(capsys.readouterr().out)["prompted"]
    assert prompted["system_prompt"] == "Talk about zzzz." and 0 <= prompted["concept_rate"] <= 1
    assert main(["eval-steering", "--concept", CONCEPT, "--strength", "9", *args[5:]]) == 2
    assert "steering.strength" in capsys.readouterr().err


def _write_catalogue(folder, d_sae: int, tokenizer, labelled: dict[int, str]) -> None:
    """A minimal steering-catalogue (format of steering.sae.catalogue) with labels and one context per feature."""
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
    sm, sae_dir = _saved_planted(tiny_model_dir, tiny_tokenizer, tmp_path)
    _write_catalogue(sae_dir, sm.sae.d_sae, tiny_tokenizer, {17: "zzz buzzing", 40: "zzzz sleeping"})
    args = ["concept-search", CONCEPT, "--limit", "64", "--json", "--model", str(tiny_model_dir),
            "--sae", str(sae_dir), "--threads", "1"]
    assert main(args) == 0
    cands = json.loads(capsys.readouterr().out)["candidates"]
    assert cands[0]["index"] == 17 and cands[0]["catalogue"]["label"] == "zzz buzzing"
    assert main(args[:4] + args[5:]) == 0  # the table
    assert "label: 'zzz buzzing'" in capsys.readouterr().out


def test_label_matches_are_searched_once_per_concept(planted, monkeypatch):
    calls = []
    monkeypatch.setattr(autosteer, "label_matches", lambda sm, concept, limit=4: calls.append(concept) or [])
    steerer = FeatureSteerer(planted, probe=None)
    assert not steerer.is_cached(CONCEPT) and calls == []  # is_cached never searches the catalogue
    steerer.steer(CONCEPT)
    steerer.steer(CONCEPT.upper(), 0.5)
    assert steerer.is_cached(CONCEPT) and calls == [CONCEPT]

