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
