"""Monitor flag rates and screening on a tiny model: the engine's readout agrees with the dense reference."""

from __future__ import annotations

import pytest

from steering.evaluation.monitoring import (
    MonitorSettings,
    answer_peaks,
    evaluate_monitors,
    greedy_cover,
    screen_features,
)
from steering.monitors import Monitor
from tests.support import tiny_sm

ON = ["Tell me about dogs.", "A story about a cat.", "What is a park?", "Say something."]
OFF = ["What is two plus two?", "Name a colour.", "Count to three.", "Hello there."]
FAST = MonitorSettings(max_tokens=6, temperature=0.7, seed=3)


@pytest.fixture
def sm(tiny_llama, tiny_tokenizer):
    return tiny_sm(tiny_llama, tiny_tokenizer)


def test_flag_rates_count_the_answers_whose_peak_reaches_the_threshold(sm):
    on_peaks, off_peaks = answer_peaks(sm, ON, FAST), answer_peaks(sm, OFF, FAST)
    feature = int(on_peaks.sum(0).argmax())
    threshold = float(on_peaks[:, feature].median()) or 1e-3
    rates = evaluate_monitors(sm, [Monitor(feature, threshold, "raw", "stop")], ON, OFF, FAST)  # measured as a flag
    assert rates.flagged_on == int((on_peaks[:, feature] >= threshold - 1e-5).sum())
    assert rates.flagged_off == int((off_peaks[:, feature] >= threshold - 1e-5).sum())
    assert rates.flag_rate_on == rates.flagged_on / len(ON) and rates.n_off == len(OFF)


def test_screening_follows_its_threshold_rule(sm):
    cands, on_peaks, off_peaks = screen_features(sm, ON, OFF, FAST, max_off_answers=0, limit=5)
    assert len(cands) == 5
    for c in cands:
        assert c.threshold >= 1.05 * float(off_peaks[:, c.index].max()) - 1e-6  # no off-topic answer flagged
        assert c.on_rate == pytest.approx(float((on_peaks[:, c.index] >= c.threshold).float().mean()))
        assert c.off_rate == 0.0
    assert [c.on_rate for c in cands] == sorted((c.on_rate for c in cands), reverse=True)
    cover = greedy_cover(cands, on_peaks, off_peaks)
    assert cover and cover[0] == cands[0] and len(cover) <= 3


def test_cli_pools_repeated_prompt_files_and_measures_a_conditional_preset(tiny_model_dir, tiny_tokenizer, tmp_path,
                                                                            capsys):
    """`--on A --on B` measures the prompts of both files; eval-steering takes a preset whose only clamps
    are a `steer` monitor's (and reports how often it fired)."""
    import json

    from transformers import AutoModelForCausalLM

    from steering.cli import main
    from steering.sae.formats import save_sae

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True).eval()
    sae_dir = save_sae(tiny_sm(model, tiny_tokenizer).sae, tmp_path / "sae")
    files = []
    for k, prompts in enumerate((ON[:2], ON[2:], OFF)):
        files.append(tmp_path / f"p{k}.txt")
        files[-1].write_text("\n".join(prompts))
    common = ["--model", str(tiny_model_dir), "--sae", str(sae_dir), "--max-tokens", "4", "--json", "--threads", "1"]
    assert main(["eval-monitors", "--monitor", "3=1e6:raw", "--on", str(files[0]), "--on", str(files[1]),
                 "--off", str(files[2]), *common]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["n_on"], out["n_off"], out["flagged_on"]) == (len(ON), len(OFF), 0)
    assert out["on"] == f"{files[0]}, {files[1]}"
    preset = tmp_path / "cond.json"
    preset.write_text(json.dumps({"name": "cond", "features": [], "concept_words": ["e"], "monitors": [
        {"index": 3, "threshold": 1e6, "unit": "raw", "action": "steer", "clamps": [{"index": 5, "value": 4.0}]}]}))
    assert main(["eval-steering", "--preset", str(preset), "--prompts", str(files[2]), *common]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["triggered_rate"] == 0.0 and out["unchanged_rate"] == 1.0 and out["concept_features"] == [5]
