"""Concept feature search: scores on hand-made activations, and a planted feature found first."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from steering.concepts.search import (
    TextStats,
    concept_texts,
    concept_token_ids,
    find_concept_features,
    logit_effects,
    logit_ranks,
    logit_score,
    neutral_texts,
    sink_token_id,
    specificity_scores,
    text_stats,
)
from steering.errors import SteeringError
from steering.sae.autoencoder import SparseAutoencoder
from tests.support import hook_acts, hook_acts_many, plant_feature, tiny_sae, tiny_sm

CONCEPT = "zzzz zzzz zzzz zzzz zzzz"  # on a random byte-level model, a "concept" a linear feature can detect


def _stats(per_text: list[list[list[float]]]) -> TextStats:
    """TextStats from activations [text][position][feature], no concept-word positions."""
    acts = [torch.tensor(t) for t in per_text]
    mean = torch.stack([a.mean(0) for a in acts])
    mx = torch.stack([a.amax(0) for a in acts])
    return TextStats(mean=mean, max=mx, on_word=torch.zeros_like(mean), total=torch.stack([a.sum(0) for a in acts]),
                     resid_norm=torch.ones(len(acts)))


def test_specificity_prefers_dense_concept_firing_over_a_token_feature():
    # features: 0 on every position of concept texts; 1 on one position of each; 2 the same everywhere; 3 never
    concept = _stats([[[1.0, 0.0, 0.5, 0.0], [1.0, 1.0, 0.5, 0.0], [1.0, 0.0, 0.5, 0.0], [1.0, 0.0, 0.5, 0.0]]] * 3)
    neutral = _stats([[[0.0, 0.0, 0.5, 0.0], [0.0, 0.0, 0.5, 0.0]]] * 4)
    s = specificity_scores(concept, neutral, torch.tensor([2.0, 1.0, float("nan"), float("nan")]))
    # by hand: (mean_C - mean_N) / max * fire_C
    assert s["specificity"][0] == pytest.approx((1.0 - 0.0) / 2.0 * 1.0)
    assert s["specificity"][1] == pytest.approx((0.25 - 0.0) / 1.0 * 1.0)
    assert s["specificity"][2] == pytest.approx(0.0)  # max unknown: normalised by the largest seen (0.5)
    assert s["specificity"][3] == 0.0
    assert s["concept_fire_rate"].tolist() == [1.0, 1.0, 1.0, 0.0]
    assert s["neutral_fire_rate"].tolist() == [0.0, 0.0, 1.0, 0.0]


def test_specificity_scales_with_the_share_of_concept_texts_it_fires_on():
    concept = _stats([[[1.0]], [[1.0]], [[0.0]], [[0.0]]])
    neutral = _stats([[[0.0]]])
    s = specificity_scores(concept, neutral, torch.tensor([1.0]))
    assert s["specificity"][0] == pytest.approx(0.5 * 0.5)


def test_a_max_statistic_below_what_is_seen_does_not_inflate_the_score():
    concept = _stats([[[1.0]], [[1.0]]])
    neutral = _stats([[[0.0]]])
    s = specificity_scores(concept, neutral, torch.tensor([0.1]))  # statistic from too little text
    assert s["specificity"][0] == pytest.approx(1.0) and s["max"][0] == 1.0


def test_logit_ranks_and_score_by_hand():
    effects = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.0, 5.0, 1.0, 4.0]])
    assert logit_ranks(effects, [2]).tolist() == [1, 2]
    assert logit_ranks(effects, [2, 3]).tolist() == [1, 1]  # the best of the concept tokens
    assert logit_ranks(effects, []).tolist() == [3, 3]
    assert logit_score(0, 100) == 1.0 and logit_score(99, 100) == pytest.approx(0.0)
    assert 0 < logit_score(9, 100) < 1


def test_logit_effects_fold_the_final_norm_weight(tiny_llama):
    with torch.no_grad():
        tiny_llama.model.norm.weight.copy_(torch.linspace(0.5, 2.0, 64))
    d = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    expect = (d * tiny_llama.model.norm.weight) @ tiny_llama.lm_head.weight.T
    torch.testing.assert_close(logit_effects(tiny_llama, d), expect)


def test_concept_token_ids_skip_blank_tokens(tiny_tokenizer):
    ids = concept_token_ids(tiny_tokenizer, "zebra")
    assert [tiny_tokenizer.decode([i]) for i in ids] == ["z", "Z"]
    ids = concept_token_ids(tiny_tokenizer, "zebra", words=["okapi", " "])
    assert [tiny_tokenizer.decode([i]) for i in ids] == ["z", "Z", "o", "O"]


def test_neutral_bank_leaves_out_texts_naming_the_concept():
    assert any("shoes" in t for t in neutral_texts())
    assert not any("shoes" in t.lower() for t in neutral_texts("shoe"))
    assert all(CONCEPT in t for t in concept_texts(CONCEPT))
    assert not any("z" in t.lower() for t in neutral_texts(CONCEPT))  # the planted test relies on it


def test_text_stats_put_a_sink_first_and_mark_concept_words(tiny_llama, tiny_tokenizer):
    sm = tiny_sm(tiny_llama, tiny_tokenizer)
    assert sink_token_id(tiny_tokenizer) == tiny_tokenizer.eos_token_id  # no BOS: eos stands in
    texts = ["a dog here", "nothing", ""]
    stats = text_stats(sm, texts, concept="dog")
    for t, text in enumerate(texts[:2]):
        ids = [tiny_tokenizer.eos_token_id, *tiny_tokenizer(text)["input_ids"]]
        acts = sm.sae.encode(hook_acts(tiny_llama, ids))[1:]  # every token of the text, the sink left out
        torch.testing.assert_close(stats.mean[t], acts.mean(0), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(stats.max[t], acts.amax(0), atol=1e-5, rtol=1e-5)
        if t == 0:  # "a dog here": sink, 'a', ' ', then 'd' 'o' 'g' at positions 3..5
            full = sm.sae.encode(hook_acts(tiny_llama, ids))
            torch.testing.assert_close(stats.on_word[0], full[3:6].sum(0), atol=1e-5, rtol=1e-5)
    assert float(stats.on_word[1].abs().sum()) == 0.0
    assert float(stats.mean[2].abs().sum()) == 0.0  # an empty text counts as silent


def test_planted_concept_feature_ranks_first(tiny_llama, tiny_tokenizer):
    sm = tiny_sm(tiny_llama, tiny_tokenizer)
    planted = 17
    token = plant_feature(sm, planted, concept_texts(CONCEPT) + neutral_texts(CONCEPT))
    found = find_concept_features(sm, CONCEPT, limit=5)
    assert found and found[0].index == planted
    top = found[0]
    assert top.logit_rank == 0 and top.logit_score == 1.0 and top.promoted_tokens[0] == "z"
    assert top.concept_fire_rate == 1.0 and top.neutral_fire_rate == 0.0 and top.neutral_mean == 0.0
    assert top.word_share is not None and top.word_share > 0.99  # it fires only on the z's: a token feature here
    assert [c.score for c in found] == sorted((c.score for c in found), reverse=True)
    for c in found:
        assert c.score == pytest.approx(c.specificity * c.logit_score)
        assert math.isfinite(c.score)
    json.dumps([c.to_dict() for c in found])
    assert token == concept_token_ids(tiny_tokenizer, CONCEPT)[0]


def test_extra_features_join_the_pool(tiny_llama, tiny_tokenizer):
    sm = tiny_sm(tiny_llama, tiny_tokenizer)
    plant_feature(sm, 17, concept_texts(CONCEPT) + neutral_texts(CONCEPT))
    assert [c.index for c in find_concept_features(sm, CONCEPT, limit=5, pool=1)] == [17]
    found = find_concept_features(sm, CONCEPT, limit=5, pool=1, extra=[3, 17, 999])
    assert [c.index for c in found] == [17, 3]  # out-of-range extras dropped, duplicates merged


def test_given_texts_replace_the_templates(tiny_llama, tiny_tokenizer):
    sm = tiny_sm(tiny_llama, tiny_tokenizer)
    plant_feature(sm, 5, ["zz zz zz", "the zz", "zzz"] + neutral_texts("zebra"))
    found = find_concept_features(sm, "zebra", texts=["zz zz zz", "the zz", "zzz"], limit=3)
    assert found[0].index == 5


def test_search_errors_name_the_parameter(tiny_llama, tiny_tokenizer):
    sm = tiny_sm(tiny_llama, tiny_tokenizer)
    for concept, kw, param in (("", {}, "concept"), ("dog", {"limit": 0}, "limit")):
        with pytest.raises(SteeringError) as err:
            find_concept_features(sm, concept, **kw)
        assert err.value.param == param
    sm.sae = None
    with pytest.raises(SteeringError) as err:
        find_concept_features(sm, "dog")
    assert err.value.param == "sae"


def test_precomputed_neutral_statistics_give_the_same_ranking(tiny_llama, tiny_tokenizer):
    """The bank read once per SAE, rows naming the concept left out, equals the bank run per search; and
    each batch of texts is one runner call."""
    from steering.concepts.search import neutral_bank, neutral_bank_stats
    from steering.evaluation.run import Runner

    sm = tiny_sm(tiny_llama, tiny_tokenizer)
    plant_feature(sm, 17, concept_texts(CONCEPT) + neutral_texts(CONCEPT))
    calls: list[str] = []
    runner = Runner(forward=lambda fn, *args: (calls.append(fn.__name__), fn(*args))[1])
    bank = neutral_bank_stats(sm, runner)
    assert bank.mean.shape == (len(neutral_bank()), sm.sae.d_sae) and len(calls) == -(-len(neutral_bank()) // 8)
    for concept in (CONCEPT, "shoes"):  # "shoes" leaves out the bank's rows about shoes
        calls.clear()
        alone = find_concept_features(sm, concept, limit=5)
        shared = find_concept_features(sm, concept, limit=5, neutral=bank, runner=runner)
        assert [(c.index, round(c.score, 5), round(c.neutral_mean, 5)) for c in shared] == \
            [(c.index, round(c.score, 5), round(c.neutral_mean, 5)) for c in alone]
        assert calls == ["_batch_stats", "_logit_view"]  # the 8 concept texts, then the logit view
        if concept == CONCEPT:
            assert shared and shared[0].index == 17
    with pytest.raises(SteeringError) as err:  # statistics of another bank are refused, not misread
        find_concept_features(sm, CONCEPT, neutral=bank.rows(range(10)))
    assert err.value.param == "neutral"


def test_the_residual_norm_is_in_the_sae_units(tiny_llama, tiny_tokenizer):
    """An SAE that scales its inputs by c (`expected_average_only_in`) decodes into c-scaled units, so the
    scale a push is measured against is c x the raw residual's median norm, text by text."""
    sae = tiny_sae(tiny_llama, tiny_tokenizer)
    texts = neutral_texts(CONCEPT)[:3]
    raw = text_stats(tiny_sm(tiny_llama, tiny_tokenizer, sae), texts).resid_norm
    scaled = SparseAutoencoder(dataclasses.replace(sae.cfg, normalize_activations="expected_average_only_in",
                                                   norm_scaling_factor=0.25))
    scaled.load_state_dict(sae.state_dict())
    norms = text_stats(tiny_sm(tiny_llama, tiny_tokenizer, scaled), texts).resid_norm
    by_hand = torch.stack([h[1:].norm(dim=-1).median() for h in hook_acts_many(tiny_llama, tiny_tokenizer, texts)])
    assert torch.allclose(raw, by_hand, rtol=1e-4) and torch.allclose(norms, 0.25 * by_hand, rtol=1e-4)
