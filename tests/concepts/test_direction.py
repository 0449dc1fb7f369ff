"""Auto-steer's default method: the concept's difference in means over the SAE's features."""

from __future__ import annotations

import pytest
import torch

from steering.concepts import autosteer
from steering.concepts.autosteer import DEFAULT_WINDOW, AutoSteerer, auto_steer
from steering.concepts.direction import (DIRECTION_FEATURES, DIRECTION_PUSH, MAX_NEUTRAL_FIRE, concept_direction,
                                         direction_alpha)
from steering.concepts.search import concept_texts, neutral_texts, text_stats
from steering.errors import SteeringError
from steering.hooks import steering as steering_hook
from steering.interventions import build_plan
from tests.support import plant_feature, tiny_sm

CONCEPT = "zzzz zzzz zzzz zzzz zzzz"


@pytest.fixture
def planted(tiny_llama, tiny_tokenizer):
    sm = tiny_sm(tiny_llama, tiny_tokenizer)
    plant_feature(sm, 17, concept_texts(CONCEPT) + neutral_texts(CONCEPT))
    return sm


def test_direction_is_the_largest_mean_differences_by_hand(planted):
    found = concept_direction(planted, CONCEPT)
    c = text_stats(planted, concept_texts(CONCEPT), CONCEPT).mean.mean(0)
    neutral = text_stats(planted, neutral_texts(CONCEPT))
    d = c - neutral.mean.mean(0)
    broad = (neutral.max > 0).float().mean(0) > MAX_NEUTRAL_FIRE
    assert broad.any() and not broad.all()  # the tiny SAE has broad features to leave out
    d[broad] = 0
    expected = [int(i) for i in d.argsort(descending=True)[:DIRECTION_FEATURES] if d[i] > 0]
    assert [cand.index for cand, _ in found] == expected and 17 in expected
    for cand, w in found:
        assert w == pytest.approx(float(d[cand.index]), rel=1e-4, abs=1e-6)
    assert [w for _, w in found] == sorted((w for _, w in found), reverse=True)
    # alpha makes the decoded push DIRECTION_PUSH of the scale
    alpha = direction_alpha(planted, found, 10.0)
    v = sum(w * planted.sae.W_dec[cand.index].detach().float() for cand, w in found)
    assert alpha * float(v.norm()) == pytest.approx(DIRECTION_PUSH * 10.0, rel=1e-4)
    assert direction_alpha(planted, found, None) == 1.0 and direction_alpha(planted, [], 10.0) == 1.0


def test_auto_steer_adds_the_direction_without_a_probe(planted, monkeypatch):
    monkeypatch.setattr(autosteer, "probe_specs", lambda *a, **k: pytest.fail("the direction needs no probe"))
    steerer = AutoSteerer(planted)
    assert steerer.method == "direction" and not steerer.is_cached(CONCEPT)
    r = steerer.steer(CONCEPT, strength=2.0)
    found = concept_direction(planted, CONCEPT, steerer._neutral)
    alpha = direction_alpha(planted, found, autosteer.residual_scale(steerer._neutral))
    assert r.method == "direction" and r.probes == ()
    assert [(c.index, c.mode, c.unit) for c in r.spec.features] == [(cand.index, "add", "raw") for cand, _ in found]
    for clamp, (_, w) in zip(r.spec.features, found):
        assert clamp.value == pytest.approx(alpha * 2.0 * w, rel=1e-5)
    assert (r.spec.positions, r.spec.generated_limit) == ("all", DEFAULT_WINDOW)
    assert "direction of" in r.rationale and r.to_dict()["method"] == "direction"
    assert steerer.is_cached(CONCEPT) and not steerer.is_cached(CONCEPT, method="feature")
    half = steerer.steer(CONCEPT.upper(), strength=1.0)  # cached, scaled after the cache
    assert [c.value for c in half.spec.features] == pytest.approx([c.value / 2 for c in r.spec.features])


def test_method_is_checked_and_a_concept_with_no_direction_is_an_error(planted, monkeypatch):
    with pytest.raises(SteeringError) as e:
        auto_steer(planted, CONCEPT, method="vector")
    assert e.value.param == "steering.method"
    with pytest.raises(SteeringError):
        AutoSteerer(planted, method="vector")
    with pytest.raises(SteeringError) as e:
        auto_steer(planted, CONCEPT, max_features=2)  # the direction has its own features
    assert e.value.param == "max_features"
    monkeypatch.setattr(autosteer, "concept_direction", lambda *a, **k: [])
    with pytest.raises(SteeringError) as e:
        auto_steer(planted, CONCEPT)
    assert e.value.param == "steering.concept"


def test_direction_steers_the_planted_concept(planted):
    """The added direction raises the planted feature's token (the 'z' it promotes) at the next position."""
    r = auto_steer(planted, CONCEPT, strength=5.0)
    ids = planted.prompt_ids([{"role": "user", "content": "Say something."}])
    z = planted.loaded.tokenizer("z", add_special_tokens=False)["input_ids"][0]
    x = torch.tensor([ids])
    with torch.no_grad():
        plain = planted.loaded.model(input_ids=x).logits[0, -1].log_softmax(-1)[z]
        with steering_hook(planted.loaded.model, planted.sae, build_plan(planted.sae, [r.spec], [len(ids)])):
            steered = planted.loaded.model(input_ids=x).logits[0, -1].log_softmax(-1)[z]
    assert steered > plain
