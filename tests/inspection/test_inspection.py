"""steering.inspection: per-token readings equal a dense reference, text summaries, contrast."""

from __future__ import annotations

import pytest
import torch

from steering.chat_template import render_chat
from steering.concepts import concept_texts, neutral_texts
from steering.errors import SteeringError
from steering.inspection import contrast, inspect_texts
from steering.readings import InspectSpec, read_tokens
from tests.support import hook_acts, plant_feature, tiny_sm

CONCEPT = "zzzz zzzz zzzz zzzz zzzz"


@pytest.fixture
def sm(tiny_llama, tiny_tokenizer):
    return tiny_sm(tiny_llama, tiny_tokenizer)


def test_readings_equal_the_dense_encode(sm, tiny_tokenizer):
    ids = tiny_tokenizer("The park is quiet today.")["input_ids"]
    x = hook_acts(sm.loaded.model, ids)
    spec = InspectSpec(top_k=5, features=(3, 7))
    got = read_tokens(sm.sae, x, spec, range(len(ids)), ids)
    dense = sm.sae.encode(x)
    for t, r in enumerate(got):
        assert r.position == t and r.token_id == ids[t]
        want = dense[t].topk(5)
        kept = [(int(i), float(v)) for i, v in zip(want.indices, want.values) if v > 0]
        assert [f.index for f in r.top] == [i for i, _ in kept]
        for f, (_, v) in zip(r.top, kept):
            assert f.activation == pytest.approx(v, abs=1e-5)
            assert f.relative == pytest.approx(v / float(sm.sae.max_activation[f.index]), rel=1e-5)
        assert [f.index for f in r.named] == [3, 7]
        assert [f.activation for f in r.named] == pytest.approx([float(dense[t, 3]), float(dense[t, 7])], abs=1e-5)


def test_a_conversation_is_read_without_its_sink_and_summarised(sm, tiny_tokenizer):
    chat = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello, friend."}]
    (got,) = inspect_texts(sm, [chat], InspectSpec(top_k=3), summary_limit=4)
    ids = render_chat(tiny_tokenizer, chat, add_generation_prompt=False)
    assert list(got.token_ids) == ids and [r.position for r in got.readings] == list(range(1, len(ids)))
    dense = sm.sae.encode(hook_acts(sm.loaded.model, ids)[1:])
    totals = dense.sum(0)
    assert [s.index for s in got.summary] == totals.topk(4).indices.tolist()
    assert got.summary[0].total == pytest.approx(float(totals.max()), rel=1e-4)
    assert got.summary[0].fires == int((dense[:, got.summary[0].index] > 0).sum())
    (by_max,) = inspect_texts(sm, [chat], InspectSpec(top_k=3), summary_limit=4, order="max")
    assert [s.index for s in by_max.summary] == dense.amax(0).topk(4).indices.tolist()


def test_contrast_finds_the_planted_feature(sm):
    plant_feature(sm, 17, concept_texts(CONCEPT) + neutral_texts(CONCEPT))
    result = contrast(sm, concept_texts(CONCEPT)[:4], neutral_texts(CONCEPT)[:4], limit=3)
    top = result.a[0]
    assert top.index == 17 and top.effect > 0 and top.fire_rate_a == 1.0 and top.mean_a > top.mean_b
    assert all(f.effect < 0 for f in result.b) and 17 not in [f.index for f in result.b]
    # One text a side (a steered answer against its baseline): the effect is the scaled difference.
    one = contrast(sm, [concept_texts(CONCEPT)[0]], [neutral_texts(CONCEPT)[0]], limit=3)
    diffs = [f.mean_a - f.mean_b for f in one.a]
    assert diffs == sorted(diffs, reverse=True) and all(d > 0 for d in diffs)
    assert all(torch.isfinite(torch.tensor(f.effect)) for f in one.a + one.b)


@pytest.mark.parametrize("spec,param", [
    (InspectSpec(top_k=0), "inspect.top_k"), (InspectSpec(top_k=65), "inspect.top_k"),
    (InspectSpec(top_k=True), "inspect.top_k"), (InspectSpec(features=(64,)), "inspect.features[0]"),
    (InspectSpec(features=tuple(range(65))), "inspect.features"), (InspectSpec(positions="prompt"), "inspect.positions"),
])
def test_bad_specs_name_the_parameter(sm, spec, param):
    with pytest.raises(SteeringError) as err:
        spec.validate(sm.sae)
    assert err.value.param == param
