"""Strength sweeps: knee selection on hand-made numbers, and one sweep on a tiny model."""

from __future__ import annotations

import json

import pytest

from steering.cli import main
from steering.evaluation import Bounds, Concept, EvalSettings, SweepPoint, pick_knee, sweep
from steering.evaluation.sweep import plot_sweep
from steering.interventions import FeatureClamp, SteeringSpec
from steering.sae.formats import save_sae
from tests.support import tiny_sm


def P(m, rate, rep, dloss, base=0.0):
    return SweepPoint(m, rate, base, rep, dloss)


def test_knee_is_smallest_fluent_multiplier_reaching_target():
    points = [P(3, 0.95, 0.30, 1.5), P(0.5, 0.1, 0.05, 0.1), P(2, 0.85, 0.15, 0.8), P(1, 0.5, 0.1, 0.3),
              P(2.5, 0.9, 0.2, 1.0)]
    knee = pick_knee(points)
    assert (knee.multiplier, knee.rule) == (2, "target")


def test_knee_without_target_is_best_fluent_with_ties_to_smaller():
    points = [P(1, 0.3, 0.1, 0.2), P(1.5, 0.6, 0.1, 0.5), P(2, 0.6, 0.19, 0.9), P(3, 0.9, 0.5, 2.0)]
    knee = pick_knee(points)
    assert (knee.multiplier, knee.rule) == (1.5, "best fluent")
    assert "0.60" in knee.reason


def test_knee_when_nothing_is_fluent_is_least_broken():
    # excess: m=1: (0.3-0.2)/0.2 = 0.5; m=2: (0.25-0.2)/0.2 + (1.2-1)/1 = 0.45; m=3: 2.0 + 1.0
    points = [P(1, 0.2, 0.3, 0.5), P(2, 0.5, 0.25, 1.2), P(3, 1.0, 0.6, 2.0)]
    knee = pick_knee(points)
    assert (knee.multiplier, knee.rule) == (2, "least broken")


def test_knee_needs_a_low_baseline_to_claim_the_target():
    points = [P(1, 0.85, 0.1, 0.2, base=0.5), P(2, 0.9, 0.1, 0.4, base=0.5)]
    knee = pick_knee(points)
    assert (knee.multiplier, knee.rule) == (2, "best fluent") and "without steering" in knee.reason
    assert pick_knee(points, Bounds(baseline_concept_rate=0.5)).rule == "target"


def test_knee_respects_custom_bounds_and_missing_figures():
    points = [P(1, None, 0.0, None), P(2, 0.6, 0.1, 0.2)]
    assert pick_knee(points, Bounds(concept_rate=0.5)).multiplier == 2
    assert pick_knee(points, Bounds(concept_rate=0.9)).rule == "best fluent"
    with pytest.raises(ValueError):
        pick_knee([])


def test_sweep_on_tiny_model_shares_baseline_and_plots(tiny_llama, tiny_tokenizer, tmp_path):
    sm = tiny_sm(tiny_llama, tiny_tokenizer)
    spec = SteeringSpec((FeatureClamp(4, 3.0, "add"),))
    settings = EvalSettings(max_tokens=5, temperature=1.0, seed=1)
    result = sweep(sm, spec, Concept(words=("e",)), [0.0, 8.0], ["Hi there", "Say something"], settings, label="t")
    assert [p.multiplier for p in result.points] == [0.0, 8.0]
    zero, strong = result.results
    assert zero.spec["features"][0]["value"] == 0.0 and strong.spec["features"][0]["value"] == 24.0
    assert [r.steered for r in zero.rows] == [r.baseline for r in zero.rows]  # add x 0 is the identity
    assert [r.baseline for r in zero.rows] == [r.baseline for r in strong.rows]  # one shared baseline
    assert result.knee.multiplier in (0.0, 8.0)
    assert "<- knee" in result.table()
    json.dumps(result.to_dict())
    out = tmp_path / "sweep.png"
    plot_sweep(result, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_sweep(tiny_model_dir, tiny_tokenizer, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True).eval()
    sae_dir = save_sae(tiny_sm(model, tiny_tokenizer).sae, tmp_path / "sae")
    args = ["sweep", "--feature", "3=2", "--concept-words", "a,b", "--multipliers", "0.5,1",
            "--model", str(tiny_model_dir), "--sae", str(sae_dir), "--max-tokens", "3", "--limit-prompts", "2",
            "--json", "--threads", "1", "--plot", str(tmp_path / "s.png")]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert [p["multiplier"] for p in out["points"]] == [0.5, 1.0]
    assert out["results"][1]["concept_words"] == ["a", "b"] and out["knee"]["rule"]
    assert (tmp_path / "s.png").is_file()
    assert main(["sweep", "--feature", "3=2", "--multipliers", "x", "--model", str(tiny_model_dir)]) == 2
