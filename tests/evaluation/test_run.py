"""Steering evaluation: text metrics by hand, and the harness on a tiny random Llama."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from steering.errors import SteeringError
from steering.evaluation import (
    Bounds,
    Concept,
    EvalResult,
    EvalSettings,
    EvalTarget,
    evaluate,
    evaluate_preset,
    evaluate_targets,
    load_prompts,
    score_answers,
    scoring,
)
from steering.evaluation import run as evaluation_run
from steering.evaluation.metrics import (
    concept_word_pattern,
    concept_words_found,
    has_concept_words,
    repeated_ngram_share,
    text_units,
)
from steering.engine import SamplingParams, SequenceRequest
from steering.interventions import FeatureClamp, SteeringSpec
from steering.presets import find_preset as load_preset
from tests.support import hook_acts, tiny_sm

PROMPTS = ["Describe yourself.", "Tell me a story.", "What is new?"]
FAST = EvalSettings(max_tokens=6, temperature=1.0, seed=3)


# ------------------------------------------------------------------ metrics
@pytest.mark.parametrize(
    "text,share",
    [
        ("a b c d a b c d", 1 / 5),  # 4-grams abcd bcda cdab dabc abcd: the last repeats the first
        ("the cat sat on the mat", 0.0),
        ("dog dog dog dog dog dog", 2 / 3),  # three 4-grams, all the same
        ("Europe, Europe, Europe, Europe", 2 / 4),  # punctuation marks are units: e , e , e , e
        ("only three words", 0.0),
        ("", 0.0),
        ("The END the end THE END the end", 3 / 5),  # case-insensitive: tete etet TETE ETET tete
    ],
)
def test_repeated_4gram_share_by_hand(text, share):
    assert repeated_ngram_share(text) == pytest.approx(share)


def test_text_units_split_words_and_punctuation():
    assert text_units("Hi, I'm Max!!") == ["hi", ",", "i'm", "max", "!", "!"]


@pytest.mark.parametrize(
    "text,words,hit",
    [
        ("I love my Dog.", ["dog"], True),
        ("Two dogs barked", ["dog"], True),
        ("the dog's bowl", ["dog"], True),
        ("a hotdog stand", ["dog"], False),  # whole words only
        ("dogma and dogged", ["dog"], False),
        ("Puppies everywhere", ["puppy"], True),  # consonant + y -> ies
        ("three boxes", ["box"], True),
        ("long days", ["day"], True),
        ("ladies", ["lady"], True),
        ("the category", ["cat"], False),
        ("the Golden  Gate at dusk", ["golden gate"], True),  # a phrase, any whitespace
        ("both Golden Gates", ["Golden Gate"], True),
        ("goldengate", ["golden gate"], False),
        ("pizza", [], False),
        ("ahoy, matey", ["pirate", "ahoy"], True),
    ],
)
def test_concept_word_matching(text, words, hit):
    assert has_concept_words(text, words) is hit


def test_concept_words_found_lists_matches_in_order():
    assert concept_words_found("Dogs and a cat, then dog.", ["dog", "cat"]) == ["Dogs", "cat", "dog"]
    assert concept_word_pattern([" ", ""]) is None


def test_shipped_neutral_prompts_are_many_distinct_and_neutral():
    prompts = load_prompts()
    assert len(prompts) >= 40 and len(set(prompts)) == len(prompts)
    banned = ["dog", "cat", "animal", "paris", "city", "pizza", "food", "eat", "happy", "sad", "angry", "love",
              "pirate", "football", "sport", "game", "code", "python", "program"]
    assert not [p for p in prompts if has_concept_words(p, banned)]


def test_scaled_spec_multiplies_every_value():
    spec = SteeringSpec((FeatureClamp(1, 2.0), FeatureClamp(2, -1.0, "add", "raw")), "generated", 6)
    out = spec.scaled(1.5)
    assert [c.value for c in out.features] == [3.0, -1.5]
    assert out.positions == "generated" and out.features[1].mode == "add" and out.features[1].unit == "raw"
    assert out.generated_limit == 6 and out.to_dict()["generated_limit"] == 6


def test_concept_features_default_to_positive_clamps():
    spec = SteeringSpec((FeatureClamp(1, 2.0), FeatureClamp(2, -1.0, "add"), FeatureClamp(3, 0.5, "scale"),
                         FeatureClamp(4, 3.0, "scale")))
    assert Concept.for_spec(spec).features == (1, 4)
    assert Concept.for_spec(spec, ["dog"], [7]).features == (7,)
    assert Concept.for_spec(spec, ["dog"]).rule == "concept word OR concept feature firing"


# ------------------------------------------------------------------ harness
def test_score_answers_loss_and_peak_by_hand(tiny_llama, tiny_tokenizer):
    sm = tiny_sm(tiny_llama, tiny_tokenizer)
    ctx = list(sm.prompt_ids([{"role": "user", "content": "Hello there"}]))
    with torch.no_grad():
        logits = tiny_llama(input_ids=torch.tensor([ctx])).logits[0, -1]
    likely, unlikely = [int(logits.argmax())] * 3, [int(logits.argmin())] * 3
    losses, peaks = score_answers(sm, [ctx, ctx, ctx], [likely, unlikely, []], features=[4, 7])
    for answer, loss, peak in zip((likely, unlikely), losses, peaks):
        ids = torch.tensor([ctx + answer])
        with torch.no_grad():
            lp = torch.log_softmax(tiny_llama(input_ids=ids).logits[0], -1)
        manual = -sum(float(lp[len(ctx) - 1 + t, answer[t]]) for t in range(3)) / 3
        assert loss == pytest.approx(manual, abs=1e-4)
        f = sm.sae.encode(hook_acts(tiny_llama, ctx + answer))[len(ctx):, [4, 7]] / sm.sae.max_activation[[4, 7]]
        assert peak == pytest.approx(f.amax(0).tolist(), abs=1e-4)  # one peak per feature
    assert losses[0] < losses[1]  # the model's own greedy token is likelier than its least likely one
    assert losses[2] is None and peaks[2] is None


def test_score_answers_on_gpt2_without_an_sae(tiny_gpt2, tiny_tokenizer):
    from steering.steered_model import SteeredModel

    sm = SteeredModel(tiny_sm(tiny_gpt2, tiny_tokenizer, sae=object()).loaded, None, "none")
    ctx_a, ctx_b = [5, 6, 7, 8, 9], [10, 11]
    ans_a, ans_b = [20, 21], [30, 31, 32, 33]
    losses, peaks = score_answers(sm, [ctx_a, ctx_b], [ans_a, ans_b], features=[1])
    for ctx, ans, loss in ((ctx_a, ans_a, losses[0]), (ctx_b, ans_b, losses[1])):
        with torch.no_grad():
            lp = torch.log_softmax(tiny_gpt2(input_ids=torch.tensor([ctx + ans])).logits[0], -1)
        manual = -sum(float(lp[len(ctx) - 1 + t, ans[t]]) for t in range(len(ans))) / len(ans)
        assert loss == pytest.approx(manual, abs=1e-4)
    assert peaks == [None, None]


def test_empty_spec_gives_steered_equal_baseline(tiny_llama, tiny_tokenizer):
    sm = tiny_sm(tiny_llama, tiny_tokenizer)
    result = evaluate(sm, SteeringSpec(), Concept(words=("a",), features=(3,)), PROMPTS, FAST)
    assert result.n_prompts == 3 and len(result.rows) == 3
    for row in result.rows:
        assert row.steered == row.baseline and row.steered_tokens == row.baseline_tokens > 0
    assert result.delta_loss == pytest.approx(0.0, abs=1e-5)
    assert result.concept_rate == result.baseline_concept_rate
    assert result.repeated_4gram == result.baseline_repeated_4gram
    json.dumps(result.to_dict())


def test_baseline_uses_same_seed_and_strong_clamp_changes_answers(tiny_llama, tiny_tokenizer):
    sm = tiny_sm(tiny_llama, tiny_tokenizer)
    spec = SteeringSpec((FeatureClamp(5, 40.0), FeatureClamp(9, 40.0)))
    settings = EvalSettings(max_tokens=8, temperature=0.0, seed=11)
    result = evaluate(sm, spec, None, PROMPTS, settings)  # concept: the spec's own clamps
    for j, row in enumerate(result.rows):
        alone = sm.chat([{"role": "user", "content": PROMPTS[j]}], None, max_tokens=8, temperature=0.0, seed=11 + j)
        steered = sm.chat([{"role": "user", "content": PROMPTS[j]}], spec, max_tokens=8, temperature=0.0, seed=11 + j)
        assert row.baseline == alone[0] and row.steered == steered[0]
    assert any(r.steered != r.baseline for r in result.rows)
    # (The sign of delta loss is checked by hand in test_score_answers_loss_and_peak_by_hand: a random
    # tiny model's greedy text is not reliably likelier than its steered text.)
    losses = [(r.steered_loss, r.baseline_loss) for r in result.rows]
    assert result.delta_loss == pytest.approx(sum(a for a, _ in losses) / 3 - sum(b for _, b in losses) / 3)
    assert result.concept_rule.startswith("concept feature") and result.word_rate is None
    assert result.feature_rate is not None and result.concept_features == [5, 9]


def test_samples_answer_each_prompt_again_with_later_seeds(tiny_llama, tiny_tokenizer):
    sm = tiny_sm(tiny_llama, tiny_tokenizer)
    spec = SteeringSpec((FeatureClamp(5, 4.0),))
    settings = EvalSettings(max_tokens=6, temperature=1.0, seed=3, samples=2)
    result = evaluate(sm, spec, None, PROMPTS, settings)
    assert (result.n_prompts, result.n_answers, len(result.rows)) == (3, 6, 6)
    assert [r.prompt for r in result.rows] == PROMPTS * 2
    for k, row in enumerate(result.rows):  # sample k // 3 of prompt k % 3: seed 3 + k
        alone = sm.chat([{"role": "user", "content": row.prompt}], spec, max_tokens=6, temperature=1.0, seed=3 + k)
        assert row.steered == alone[0]
    one = evaluate(sm, spec, None, PROMPTS, dataclasses.replace(settings, samples=1))
    assert [r.steered for r in one.rows] == [r.steered for r in result.rows[:3]]
    assert result.efficacy()["n_answers"] == 6 and result.efficacy()["samples"] == 2
    with pytest.raises(SteeringError) as err:
        evaluate(sm, spec, None, PROMPTS, dataclasses.replace(settings, samples=0))
    assert err.value.param == "samples"


def test_rates_aggregate_by_hand(tiny_llama, tiny_tokenizer, monkeypatch):
    sm = tiny_sm(tiny_llama, tiny_tokenizer)
    prompts = ["p1", "p2", "p3", "p4"]
    texts = ["plain words", "nothing here", "still plain", "a a a a a a",  # baselines
             "my dog", "Dogs!", "no concept", "dog dog dog dog dog"]  # steered

    def fake_generate(sm_, requests, batch_size):
        assert [r.steering is None for r in requests] == [True] * 4 + [False] * 4
        assert [r.sampling.seed for r in requests] == [0, 1, 2, 3] * 2
        return [scoring.Answer(t, tuple(tiny_tokenizer(t)["input_ids"])) for t in texts]

    monkeypatch.setattr(evaluation_run, "_generate", fake_generate)
    spec = SteeringSpec((FeatureClamp(1, 2.0),))
    r = evaluate(sm, spec, Concept(words=("dog",)), prompts, EvalSettings(seed=0))
    assert (r.word_rate, r.baseline_word_rate, r.concept_rate, r.baseline_concept_rate) == (0.75, 0.0, 0.75, 0.0)
    assert r.feature_rate is None and r.concept_rule == "concept word"
    assert r.repeated_4gram == pytest.approx((0 + 0 + 0 + 1 / 2) / 4)  # 5 units: 2 four-grams, 1 repeat
    assert r.baseline_repeated_4gram == pytest.approx((0 + 0 + 0 + 2 / 3) / 4)  # 6 units: 3, 2 repeats
    assert r.delta_loss == pytest.approx(sum(x.steered_loss for x in r.rows) / 4 - sum(x.baseline_loss for x in r.rows) / 4)
    assert [e["steered"] for e in r.examples] == texts[4:]
    # Feature rule: with fire fraction 0, any positive activation of the concept feature counts.
    c = Concept(words=("dog",), features=(1, 6), fire_fraction=0.0)
    r2 = evaluate(sm, spec, c, prompts, EvalSettings(seed=0))
    _, peaks = score_answers(sm, [sm.prompt_ids([{"role": "user", "content": p}]) for p in prompts],
                             [tiny_tokenizer(t)["input_ids"] for t in texts[4:]], features=[1, 6])
    assert [row.steered_peak for row in r2.rows] == pytest.approx([max(p) for p in peaks], abs=1e-5)
    expect = [row.steered_peak > 0 or row.steered_words for row in r2.rows]
    assert r2.concept_rate == sum(expect) / 4
    assert r2.feature_rate == sum(row.steered_peak > 0 for row in r2.rows) / 4


def test_targets_share_one_baseline_and_keep_their_own_concepts(tiny_llama, tiny_tokenizer, monkeypatch):
    sm = tiny_sm(tiny_llama, tiny_tokenizer)
    texts = ["x", "y", "a dog", "a dog", "a cat", "plain"]  # baselines, target A, target B

    def fake_generate(sm_, requests, batch_size):
        assert len(requests) == 6 and [r.steering is None for r in requests] == [True, True] + [False] * 4
        prompts = [tiny_tokenizer.decode(list(r.prompt_ids)) for r in requests]
        assert "Talk about cats." in prompts[4] and "Talk about cats." not in prompts[2]
        return [scoring.Answer(t, tuple(tiny_tokenizer(t)["input_ids"])) for t in texts]

    monkeypatch.setattr(evaluation_run, "_generate", fake_generate)
    a = EvalTarget("A", SteeringSpec((FeatureClamp(1, 2.0),)), Concept(words=("dog",), features=(1,)))
    b = EvalTarget("B", SteeringSpec((FeatureClamp(2, 2.0),)), Concept(words=("cat",), features=(8,)), "Talk about cats.")
    ra, rb = evaluate_targets(sm, [a, b], ["p1", "p2"], EvalSettings())
    assert (ra.word_rate, rb.word_rate) == (1.0, 0.5)
    assert ra.concept_features == [1] and rb.concept_features == [8]
    assert [r.baseline for r in ra.rows] == [r.baseline for r in rb.rows] == ["x", "y"]
    assert rb.settings["system_prompt"] == "Talk about cats." and ra.settings["system_prompt"] is None


def test_conditional_target_counts_triggers_and_untouched_answers(tiny_llama, tiny_tokenizer):
    """A `steer` monitor that never fires leaves every answer equal to its baseline; one that fires at
    once (threshold below any activation of a busy feature) changes answers, and both rates say so."""
    from steering.monitors import Monitor

    sm = tiny_sm(tiny_llama, tiny_tokenizer)
    settings = EvalSettings(max_tokens=8, temperature=0.0, seed=5)
    clamps = (FeatureClamp(5, 40.0), FeatureClamp(9, 40.0))
    from steering.evaluation.monitoring import MonitorSettings, answer_peaks

    peaks = answer_peaks(sm, PROMPTS, MonitorSettings(max_tokens=8, temperature=0.0, seed=5))  # [3, d_sae]
    busy = int(peaks.amin(0).argmax())  # the feature whose weakest answer peak is highest
    assert float(peaks[:, busy].min()) > 0
    never = Monitor(busy, 1e6, "raw", "steer", "never", clamps)
    always = Monitor(busy, 0.5 * float(peaks[:, busy].min()), "raw", "steer", "always", clamps)
    targets = [EvalTarget(m.name, SteeringSpec(()), Concept.for_spec(SteeringSpec(()), monitors=(m,)), None, (m,))
               for m in (never, always)]
    assert targets[0].concept.features == (5, 9)  # concept features default to the steer clamps
    quiet, fired = evaluate_targets(sm, targets, PROMPTS, settings)
    assert quiet.triggered_rate == 0.0 and quiet.unchanged_rate == 1.0
    assert all(r.steered == r.baseline for r in quiet.rows)
    assert fired.triggered_rate == 1.0 and fired.unchanged_rate < 1.0
    changed = [r.steered != r.baseline for r in fired.rows]
    assert fired.unchanged_rate == pytest.approx(1 - sum(changed) / 3)
    for j, row in enumerate(fired.rows):  # each answer is the engine's own with the monitor attached
        request = SequenceRequest(sm.prompt_ids([{"role": "user", "content": PROMPTS[j]}]),
                                  SamplingParams(max_tokens=8, temperature=0.0, seed=5 + j), None, None, (always,))
        assert row.steered == "".join(e.text for events in sm.stream([request]) for e in events)
    plain = evaluate(sm, SteeringSpec((FeatureClamp(5, 4.0),)), None, PROMPTS, settings)
    assert plain.triggered_rate is None and plain.efficacy()["unchanged_rate"] == plain.unchanged_rate


def test_meets_checks_all_four_targets():
    def result(**kw):
        base = dict(label="x", spec={}, n_prompts=1, n_answers=1, concept_words=[], concept_features=[], concept_rule="",
                    concept_rate=0.9, baseline_concept_rate=0.0, word_rate=None, baseline_word_rate=None,
                    feature_rate=None, baseline_feature_rate=None, repeated_4gram=0.1, baseline_repeated_4gram=0.0,
                    loss=2.0, baseline_loss=1.5, delta_loss=0.5, settings={}, seconds=0.0)
        return EvalResult(**{**base, **kw})

    assert result().meets()
    eff = result(settings={"max_tokens": 48, "seed": 0}).efficacy()
    assert eff["concept_rate"] == 0.9 and eff["max_tokens"] == 48 and eff["meets_targets"] is True
    json.dumps(eff)
    for bad in (dict(concept_rate=0.7), dict(concept_rate=None), dict(baseline_concept_rate=0.1),
                dict(repeated_4gram=0.25), dict(delta_loss=1.2), dict(delta_loss=None)):
        assert not result(**bad).meets()
    assert result(concept_rate=0.7).meets(Bounds(concept_rate=0.6))
    # A suppression preset: the plain answers to prompts about the concept carry it, the steered ones seldom.
    assert result(goal="suppress", concept_rate=0.1, baseline_concept_rate=0.9).meets()
    for bad in (dict(concept_rate=0.3), dict(baseline_concept_rate=0.7), dict(concept_rate=None),
                dict(delta_loss=1.2), dict(repeated_4gram=0.25)):
        assert not result(**{"goal": "suppress", "concept_rate": 0.1, "baseline_concept_rate": 0.9, **bad}).meets()
    assert not result(goal="suppress").meets()  # 90% of steered answers on the concept: not suppressed


def test_bad_spec_fails_before_generating(tiny_llama, tiny_tokenizer):
    sm = tiny_sm(tiny_llama, tiny_tokenizer)
    with pytest.raises(SteeringError) as err:
        evaluate(sm, SteeringSpec((FeatureClamp(10_000, 1.0),)), Concept(), PROMPTS, FAST)
    assert err.value.param == "features[0].index"
    with pytest.raises(SteeringError) as err:
        evaluate(sm, SteeringSpec((FeatureClamp(1, 1.0),)), Concept(features=(999,)), PROMPTS, FAST)
    assert err.value.param == "concept_features"


def test_preset_system_prompt_goes_to_steered_rows_only(tiny_llama, tiny_tokenizer, tmp_path, monkeypatch):
    sm = tiny_sm(tiny_llama, tiny_tokenizer)
    (tmp_path / "p.json").write_text(json.dumps({"name": "p", "features": [{"index": 2, "value": 1.0}],
                                                 "system_prompt": "Be brief.", "concept_words": ["x"]}))
    seen = []

    def fake_generate(sm_, requests, batch_size):
        seen.extend(requests)
        return [scoring.Answer("x", (10,))] * len(requests)

    monkeypatch.setattr(evaluation_run, "_generate", fake_generate)
    r = evaluate_preset(sm, load_preset(tmp_path / "p.json"), PROMPTS, FAST)
    assert r.label == "p" and r.settings["system_prompt"] == "Be brief."
    texts = [tiny_tokenizer.decode(list(req.prompt_ids)) for req in seen]
    assert [("Be brief." in t) for t in texts] == [False] * 3 + [True] * 3
    assert [req.steering is not None for req in seen] == [False] * 3 + [True] * 3
    assert r.word_rate == 1.0 and r.baseline_word_rate == 1.0


def test_prompting_baseline_rows_have_the_compare_prompt_and_no_clamps(tiny_llama, tiny_tokenizer, monkeypatch):
    """A target's compare_prompt adds rows answered with it as the system prompt and no clamps; they are judged
    and scored like the steered ones and reported as `prompted` (a target without one gets None)."""
    sm = tiny_sm(tiny_llama, tiny_tokenizer)
    seen = []

    def fake_generate(sm_, requests, batch_size):
        seen.extend(requests)
        # plain rows say nothing of the concept, steered rows half the time, prompted rows always
        texts = ["plain"] * 3 + ["x", "no", "x"] + ["y"] * 3 + ["x"] * 3
        return [scoring.Answer(t, (10 + k % 3,)) for k, t in enumerate(texts)]

    monkeypatch.setattr(evaluation_run, "_generate", fake_generate)
    spec = SteeringSpec((FeatureClamp(2, 1.0),))
    asked = EvalTarget("asked", spec, Concept(words=("x",)), compare_prompt="Talk about x.")
    other = EvalTarget("other", spec, Concept(words=("y",)))
    r_asked, r_other = evaluate_targets(sm, [asked, other], PROMPTS, FAST)
    texts = [tiny_tokenizer.decode(list(req.prompt_ids)) for req in seen]
    assert len(seen) == 12 and [("Talk about x." in t) for t in texts] == [False] * 9 + [True] * 3
    assert [req.steering is not None for req in seen] == [False] * 3 + [True] * 6 + [False] * 3
    assert r_asked.concept_rate == pytest.approx(2 / 3) and r_asked.prompted["concept_rate"] == 1.0
    assert r_asked.prompted["system_prompt"] == "Talk about x." and r_asked.prompted["delta_loss"] is not None
    assert r_asked.efficacy()["prompted"]["word_rate"] == 1.0 and r_other.prompted is None
    assert "prompting instead: concept 100%" in r_asked.summary()


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gemma3", "qwen2", "qwen3", "mistral", "phi3", "gpt2"])
def test_score_answers_over_a_shared_context_equals_full_forwards(arch):
    """The context's K/V is computed once and repeated for the answers that share it; each answer's loss and
    peaks equal a full forward of context + answer (sliding windows and soft-capping included)."""
    from steering.evaluation.random_models import random_steered_model
    from steering.hooks import activations_at

    sm = random_steered_model(arch, d_sae=64)
    model, sae = sm.loaded.model, sm.sae
    ctx_a, ctx_b = list(range(40, 52)), list(range(60, 65))
    answers = [[70, 71, 72, 73, 74, 75, 76, 77], [80, 81], [], [90, 91, 92, 93, 94], [100, 101, 102]]
    contexts = [ctx_a, ctx_a, ctx_a, ctx_b, ctx_a]
    losses, peaks = score_answers(sm, contexts, answers, features=[3, 9], batch_size=2)  # chunks of one context
    assert losses[2] is None and peaks[2] is None
    for ctx, ans, loss, peak in zip(contexts, answers, losses, peaks):
        if not ans:
            continue
        ids = torch.tensor([ctx + ans])
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            _, acts = next(iter(activations_at(model, sae.cfg.hook_layer, "resid_post", [ctx + ans])))
            f = sae.encode(acts[len(ctx):])[:, [3, 9]] / sae.max_activation[[3, 9]]
        manual = -sum(float(lp[len(ctx) - 1 + t, ans[t]]) for t in range(len(ans))) / len(ans)
        assert loss == pytest.approx(manual, abs=1e-4)
        assert peak == pytest.approx(f.amax(0).tolist(), abs=1e-4)


def test_a_context_cache_forwards_each_context_once_across_calls(tiny_llama, tiny_tokenizer, monkeypatch):
    import steering.evaluation.scoring as scoring

    sm = tiny_sm(tiny_llama, tiny_tokenizer)
    calls = []
    real = scoring._context_forward
    monkeypatch.setattr(scoring, "_context_forward", lambda model, ctx: calls.append(ctx.shape[1]) or real(model, ctx))
    cache = scoring.ContextCache()
    ctx_a, ctx_b = [5, 6, 7, 8], [9, 10]
    first = score_answers(sm, [ctx_a, ctx_b], [[20, 21], [22]], features=[1], context_cache=cache)
    second = score_answers(sm, [ctx_b, ctx_a], [[22], [20, 21]], features=[1], context_cache=cache)
    assert calls == [4, 2]  # the second call reused both contexts
    assert second[0] == [first[0][1], first[0][0]] and second[1] == [first[1][1], first[1][0]]
