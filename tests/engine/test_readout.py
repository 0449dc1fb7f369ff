"""Reading rows while they generate: inspection per token and monitors, checked against a dense reference."""

from __future__ import annotations

import pytest

from steering.engine import SequenceRequest, generate_batch
from steering.engine.sampling import SamplingParams
from steering.errors import SteeringError
from steering.interventions import FeatureClamp, SteeringSpec
from steering.monitors import Monitor
from steering.readings import InspectSpec
from tests.support import hook_acts
from tests.test_interventions import make_sae

PROMPTS = [tuple(range(10, 20)), (40, 41, 42), tuple(range(60, 75)), tuple(range(80, 86))]


def greedy(n=10, **kw):
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, **kw)


def run(model, tok, sae, requests, **kw):
    """-> per row: token ids, readings, monitor events, finish reason, text."""
    out = [{"ids": [], "readings": [], "events": [], "finish": None, "text": ""} for _ in requests]
    for events in generate_batch(model, tok, sae, requests, **kw):
        for e in events:
            row = out[e.index]
            if e.token_id is not None:
                row["ids"].append(e.token_id)
            row["readings"] += e.readings
            row["events"] += e.monitor_events
            row["finish"] = e.finish_reason or row["finish"]
            row["text"] += e.text
    return out


def reference(model, sae, prompt, ids):
    """The dense full encode at every position of prompt + answer (the definition)."""
    return sae.encode(hook_acts(model, list(prompt) + list(ids), layer=sae.cfg.hook_layer))


@pytest.mark.parametrize("model_fixture", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("positions", ["generated", "all"])
def test_inspection_equals_the_dense_reference_and_changes_no_token(request, model_fixture, positions, tiny_tokenizer):
    model = request.getfixturevalue(model_fixture)
    sae = make_sae(layer=2)
    spec = InspectSpec(top_k=4, features=(3, 9), positions=positions)
    clamp = SteeringSpec((FeatureClamp(0, 20.0),))
    requests = [SequenceRequest(PROMPTS[0], greedy(8), clamp, inspect=spec), SequenceRequest(PROMPTS[1], greedy(6)),
                SequenceRequest(PROMPTS[2], greedy(7), inspect=spec)]
    got = run(model, tiny_tokenizer, sae, requests)
    plain = run(model, tiny_tokenizer, sae, [SequenceRequest(r.prompt_ids, r.sampling, r.steering) for r in requests])
    assert [g["ids"] for g in got] == [p["ids"] for p in plain]  # reading never changes a token
    assert got[1]["readings"] == []
    for r in (0, 2):
        prompt, ids = requests[r].prompt_ids, got[r]["ids"]
        want_positions = list(range(1 if positions == "all" else len(prompt), len(prompt) + len(ids)))
        assert [x.position for x in got[r]["readings"]] == want_positions  # every generated token, the last too
        # read before the clamp's edit, the site depends on the tokens only (the edit acts on later layers)
        dense = reference(model, sae, prompt, ids)
        for reading in got[r]["readings"]:
            f = dense[reading.position].detach()
            vals, idx = f.topk(4)
            assert [v.index for v in reading.top] == [int(i) for i, v in zip(idx, vals) if v > 0]
            for v in reading.top:
                assert v.activation == pytest.approx(float(f[v.index]), abs=1e-5)
            assert [v.activation for v in reading.named] == pytest.approx([float(f[3]), float(f[9])], abs=1e-5)


def _first_crossing(values, threshold):
    for t, v in enumerate(values):
        if v >= threshold:
            return t
    return None


def test_monitors_flag_at_the_first_crossing_and_stop_only_their_own_row(tiny_llama, tiny_tokenizer):
    sae = make_sae(layer=2)
    prompt = PROMPTS[0]
    (plain,) = run(tiny_llama, tiny_tokenizer, sae, [SequenceRequest(prompt, greedy(12))])
    dense = reference(tiny_llama, sae, prompt, plain["ids"])[len(prompt):]  # generated positions
    # a feature that is off at first and on later: its crossing is at a known token
    feature, at = next((i, _first_crossing(dense[:, i].tolist(), 1e-6)) for i in range(sae.d_sae)
                       if 2 <= (_first_crossing(dense[:, i].tolist(), 1e-6) or 0) <= 9)
    threshold = float(dense[at, feature])
    flag = Monitor(feature, threshold, "raw", "flag", "watch")
    stop = Monitor(feature, threshold, "raw", "stop", "halt")
    rows = run(tiny_llama, tiny_tokenizer, sae, [SequenceRequest(prompt, greedy(12), monitors=(flag,)),
                                                  SequenceRequest(prompt, greedy(12), monitors=(stop,)),
                                                  SequenceRequest(prompt, greedy(12))])
    flagged, stopped, other = rows
    assert flagged["ids"] == plain["ids"] and flagged["finish"] == "length"
    first = flagged["events"][0]
    assert (first.name, first.index, first.token_index, first.position) == ("watch", feature, at, len(prompt) + at)
    assert first.value == pytest.approx(threshold, abs=1e-5)
    # rising crossings only: a later event needs the value to have dropped below the threshold first
    for e in flagged["events"][1:]:
        assert float(dense[e.token_index - 1, feature]) < threshold <= float(dense[e.token_index, feature]) + 1e-5
    assert stopped["ids"] == plain["ids"][:at] and stopped["finish"] == "content_filter"
    assert [e.action for e in stopped["events"]] == ["stop"] and stopped["events"][0].token_index == at
    assert other["ids"] == plain["ids"] and other["finish"] == "length"


def test_a_mixed_batch_of_eight_leaves_non_reading_rows_alone(tiny_llama, tiny_tokenizer):
    sae = make_sae(layer=2)
    spec = InspectSpec(top_k=2)
    watch = (Monitor(5, 0.5, "max", "flag"),)
    requests = [SequenceRequest(PROMPTS[i % 4], greedy(5 + i), SteeringSpec((FeatureClamp(i, 10.0),)) if i % 3 else None,
                                inspect=spec if i % 2 else None, monitors=watch if i % 4 == 1 else ())
                for i in range(8)]
    together = run(tiny_llama, tiny_tokenizer, sae, requests, max_batch=8)
    for r, req in enumerate(requests):
        (alone,) = run(tiny_llama, tiny_tokenizer, sae, [req])
        assert together[r]["ids"] == alone["ids"] and together[r]["text"] == alone["text"]
        # readings agree up to the float rounding of a batched encode
        for a, b in zip(together[r]["readings"], alone["readings"], strict=True):
            assert (a.position, [v.index for v in a.top]) == (b.position, [v.index for v in b.top])
            assert [v.activation for v in a.top] == pytest.approx([v.activation for v in b.top], abs=1e-5)
        assert [e.token_index for e in together[r]["events"]] == [e.token_index for e in alone["events"]]


@pytest.mark.parametrize("request_kw,param", [
    ({"inspect": InspectSpec(top_k=0)}, "steering.inspect.top_k"),
    ({"inspect": InspectSpec(features=(999,))}, "steering.inspect.features[0]"),
    ({"monitors": (Monitor(999, 1.0),)}, "steering.monitors[0].index"),
    ({"monitors": (Monitor(1, float("nan")),)}, "steering.monitors[0].threshold"),
    ({"monitors": (Monitor(1, 1.0, action="explode"),)}, "steering.monitors[0].action"),
    ({"monitors": tuple(Monitor(1, 1.0) for _ in range(17))}, "steering.monitors"),
])
def test_bad_reading_specs_name_the_parameter(tiny_llama, tiny_tokenizer, request_kw, param):
    with pytest.raises(SteeringError) as err:
        list(generate_batch(tiny_llama, tiny_tokenizer, make_sae(layer=2), [SequenceRequest(PROMPTS[1], greedy(), **request_kw)]))
    assert err.value.param == param


@pytest.mark.parametrize("model_fixture", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("duration", [None, 3])
def test_conditional_clamps_start_one_token_after_the_trigger(request, model_fixture, duration, tiny_tokenizer):
    model = request.getfixturevalue(model_fixture)
    sae = make_sae(layer=2)
    prompt = PROMPTS[0]
    (plain,) = run(model, tiny_tokenizer, sae, [SequenceRequest(prompt, greedy(14))])
    dense = reference(model, sae, prompt, plain["ids"])[len(prompt):].detach()
    feature, at = next((i, _first_crossing(dense[:, i].tolist(), 1e-6)) for i in range(sae.d_sae)
                       if 2 <= (_first_crossing(dense[:, i].tolist(), 1e-6) or 0) <= 6)
    clamps = (FeatureClamp(0, 40.0), FeatureClamp(1, 40.0))
    steer = Monitor(feature, float(dense[at, feature]), "raw", "steer", "when", clamps, duration)
    req = SequenceRequest(prompt, greedy(14), monitors=(steer,))
    (got,) = run(model, tiny_tokenizer, sae, [req])
    assert [e.action for e in got["events"][:1]] == ["steer"] and got["events"][0].token_index == at
    # Tokens up to the one sampled from the crossing token's forward are the plain ones; then the clamps act,
    # exactly as a row whose prompt ends at the crossing token and whose clamps cover its generated positions.
    assert got["ids"][: at + 2] == plain["ids"][: at + 2]
    ref_spec = SteeringSpec(clamps, "generated", duration)
    (ref,) = run(model, tiny_tokenizer, sae, [SequenceRequest(prompt + tuple(plain["ids"][: at + 1]), greedy(14 - at - 1),
                                                               ref_spec)])
    assert got["ids"][at + 1 :] == ref["ids"]
    assert got["ids"] != plain["ids"]  # the clamps were strong enough to change the answer
    # In a mixed batch of 8, the conditional row is the same and the others are untouched.
    others = [SequenceRequest(PROMPTS[i % 4], greedy(6 + i), SteeringSpec((FeatureClamp(i, 9.0),)) if i % 2 else None)
              for i in range(7)]
    together = run(model, tiny_tokenizer, sae, [req, *others], max_batch=8)
    assert together[0]["ids"] == got["ids"]
    for r, other in enumerate(others, start=1):
        (alone,) = run(model, tiny_tokenizer, sae, [other])
        assert together[r]["ids"] == alone["ids"]


def test_steer_monitor_specs_are_checked(tiny_llama, tiny_tokenizer):
    sae = make_sae(layer=2)
    for monitor, param in ((Monitor(1, 1.0, action="steer"), "steering.monitors[0].clamps"),
                           (Monitor(1, 1.0, clamps=(FeatureClamp(2, 1.0),)), "steering.monitors[0].clamps"),
                           (Monitor(1, 1.0, action="steer", clamps=(FeatureClamp(999, 1.0),)),
                            "steering.monitors[0].clamps[0].index"),
                           (Monitor(1, 1.0, action="steer", clamps=(FeatureClamp(2, 1.0),), duration=0),
                            "steering.monitors[0].duration")):
        with pytest.raises(SteeringError) as err:
            list(generate_batch(tiny_llama, tiny_tokenizer, sae, [SequenceRequest(PROMPTS[1], greedy(), monitors=(monitor,))]))
        assert err.value.param == param
