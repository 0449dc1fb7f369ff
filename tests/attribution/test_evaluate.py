"""eval-attribution's pieces: the rank correlation, and the check on a tiny random model."""

from __future__ import annotations

import math

import pytest
import torch

from steering.attribution.evaluate import PROMPTS, evaluate_attribution, load_prompts, spearman
from steering.inspection import token_rows
from tests.support import tiny_sm


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert spearman([1, 1, 2], [1, 1, 2]) == pytest.approx(1.0)  # ties share a rank


def test_the_shipped_prompts_parse():
    pairs = load_prompts(PROMPTS)
    assert len(pairs) >= 30 and all(p and t.startswith(" ") for p, t in pairs)


def test_the_check_keeps_answered_prompts_and_reports_its_figures(tiny_llama, tiny_tokenizer):
    sm = tiny_sm(tiny_llama, tiny_tokenizer)
    texts = ["hello world", "a b c d", "zz yy xx"]
    prompts = []
    for text in texts:  # the tiny model's own next token as the target, so every prompt is "answered"
        (ids,) = token_rows(sm, [text])
        with torch.no_grad():
            top = int(tiny_llama(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        prompts.append((text, tiny_tokenizer.decode([top])))
    prompts.append(("hello world", tiny_tokenizer.decode([0])))  # not its answer: skipped (unless it is)
    check = evaluate_attribution(sm, prompts, top=5)
    assert 3 <= check.n_prompts <= 4 and check.n_candidates == 4
    assert -1.0 <= check.spearman <= 1.0 and not math.isnan(check.spearman)
    assert 0.0 <= check.top5_beats_random <= 1.0 and 0.0 <= check.error_share <= 1.0
    assert len(check.per_prompt) == check.n_prompts


def test_graph_edges_on_a_linear_model_measure_what_they_estimate(tiny_llama, tiny_tokenizer):
    """Where the model is linear, removing an edge's source changes its target by exactly the edge's weight."""
    from steering.attribution import GraphLayer
    from steering.attribution.evaluate import evaluate_graph_edges
    from tests.attribution.test_graph import linear_llama, sae_at
    from tests.support import tiny_sm

    model = linear_llama(tiny_llama)
    sm = tiny_sm(model, tiny_tokenizer, sae_at(model, 2, seed=2))
    sm.graph_saes = [GraphLayer(sae_at(model, 0, seed=0)), GraphLayer(sm.sae)]
    check = evaluate_graph_edges(sm, [("hello world, how are you", None), ("a b c d e f", None)], top=5)
    assert check.n_prompts == 2 and check.n_edges >= 6
    assert check.spearman == pytest.approx(1.0) and check.sign_agreement == 1.0
    assert check.median_ratio == pytest.approx(1.0, abs=1e-6)
