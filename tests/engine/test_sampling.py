"""Every sampling parameter, against a reference written from its definition (steering.engine.sampling).

The reference decodes one row with the model's own full forward at every step
and the processors written out in plain Python; the engine's rows must give
the same tokens alone and in a mixed batch (per-row state only).
"""

from __future__ import annotations

import math

import pytest
import torch

from steering.engine import SequenceRequest
from steering.engine.sampling import RowSampler, SamplingParams
from steering.errors import SteeringError
from tests.engine.test_generation import PROMPTS, run
from tests.test_interventions import make_sae

EOS = 2  # the tiny tokenizer's end token


def reference_logits(logits: list[float], params: SamplingParams, prompt: list[int], generated: list[int]) -> list[float]:
    """The processors as the module docstring defines them, one token at a time."""
    out = list(logits)
    for token, bias in params.logit_bias:
        out[token] += bias
    for j in set(generated):
        c = generated.count(j)
        out[j] -= params.frequency_penalty * c + params.presence_penalty
    if params.repetition_penalty != 1.0:
        for j in set(prompt) | set(generated):
            out[j] = out[j] / params.repetition_penalty if out[j] > 0 else out[j] * params.repetition_penalty
    if len(generated) < params.min_tokens and not params.ignore_eos:
        out[EOS] = -math.inf
    return out


def reference_greedy(model, prompt: list[int], params: SamplingParams) -> list[int]:
    ids, generated = list(prompt), []
    for _ in range(params.max_tokens):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].tolist()
        processed = reference_logits(logits, params, list(prompt), generated)
        token = max(range(len(processed)), key=processed.__getitem__)
        if token == EOS and not params.ignore_eos:
            break
        generated.append(token)
        ids.append(token)
    return generated


def test_processors_by_hand():
    logits = torch.tensor([1.0, -2.0, 3.0, 0.5, -1.0, 2.0])
    params = SamplingParams(temperature=0.0, frequency_penalty=0.5, presence_penalty=0.25, repetition_penalty=1.5,
                            logit_bias=((1, 4.0), (4, -100.0)), min_tokens=4)
    s = RowSampler.create(params, torch.device("cpu"), prompt_ids=(0,), eos_ids=(EOS,))
    for t in (3, 3, 5):
        s.observe(t)
    got = s.process(logits).tolist()
    # 0: prompt token, positive -> /1.5; 1: +4 bias = 2.0, not seen; 2: eos banned (3 < min_tokens 4);
    # 3: seen twice: 0.5 - 0.5*2 - 0.25 = -0.75, then *1.5; 4: -101; 5: once: 2 - 0.5 - 0.25 = 1.25, then /1.5
    assert got == pytest.approx([1 / 1.5, 2.0, -math.inf, -0.75 * 1.5, -101.0, 1.25 / 1.5])
    s.observe(0)  # the fourth token: the end token may come now
    assert s.process(logits)[EOS] == pytest.approx(3.0)
    assert not RowSampler.create(SamplingParams(temperature=0.0), torch.device("cpu")).params.processes


@pytest.mark.parametrize("params", [
    SamplingParams(max_tokens=10, temperature=0.0, frequency_penalty=1.5, ignore_eos=True),
    SamplingParams(max_tokens=10, temperature=0.0, presence_penalty=2.0, ignore_eos=True),
    SamplingParams(max_tokens=10, temperature=0.0, repetition_penalty=1.8, ignore_eos=True),
    SamplingParams(max_tokens=10, temperature=0.0, frequency_penalty=-1.0, presence_penalty=0.5,
                   logit_bias=((7, 5.0), (100, -100.0)), ignore_eos=True),
], ids=["frequency", "presence", "repetition", "mixed"])
def test_greedy_with_processors_equals_the_reference(tiny_llama, tiny_tokenizer, params):
    sae = make_sae(layer=2)
    plain_params = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    changed = 0
    for prompt in PROMPTS:
        ids, _, _ = run(tiny_llama, tiny_tokenizer, sae, [SequenceRequest(prompt, params)])
        assert ids[0] == reference_greedy(tiny_llama, list(prompt), params)
        plain, _, _ = run(tiny_llama, tiny_tokenizer, sae, [SequenceRequest(prompt, plain_params)])
        changed += ids[0] != plain[0]
    # Each setting changes some answer (else the test would show nothing), except CTRL's penalty: the
    # random model's logits are ~0.1, so dividing them moves no argmax (its math: test_processors_by_hand).
    assert changed or params.repetition_penalty != 1.0


def test_logit_bias_bans_and_forces_tokens(tiny_llama, tiny_tokenizer):
    sae = make_sae(layer=2)
    plain, _, _ = run(tiny_llama, tiny_tokenizer, sae, [SequenceRequest(PROMPTS[1], SamplingParams(
        max_tokens=6, temperature=0.0, ignore_eos=True))])
    banned = tuple((t, -100.0) for t in set(plain[0]))
    ids, _, _ = run(tiny_llama, tiny_tokenizer, sae, [SequenceRequest(PROMPTS[1], SamplingParams(
        max_tokens=6, temperature=1.0, seed=4, logit_bias=banned, ignore_eos=True))])
    assert not set(ids[0]) & set(plain[0])
    forced, _, _ = run(tiny_llama, tiny_tokenizer, sae, [SequenceRequest(PROMPTS[1], SamplingParams(
        max_tokens=5, temperature=1.0, seed=4, logit_bias=((77, 100.0),)))])
    assert forced[0] == [77] * 5


def test_min_tokens_holds_back_the_end_token_and_ignore_eos_runs_past_it(tiny_llama, tiny_tokenizer):
    sae = make_sae(layer=2)
    eager = ((EOS, 100.0),)  # the end token would come first
    ids, _, finish = run(tiny_llama, tiny_tokenizer, sae, [
        SequenceRequest(PROMPTS[0], SamplingParams(max_tokens=8, temperature=0.0, logit_bias=eager)),
        SequenceRequest(PROMPTS[0], SamplingParams(max_tokens=8, temperature=0.0, logit_bias=eager, min_tokens=3)),
        SequenceRequest(PROMPTS[0], SamplingParams(max_tokens=8, temperature=0.7, seed=1, logit_bias=eager,
                                                   ignore_eos=True)),
    ])
    assert (len(ids[0]), finish[0]) == (0, "stop")
    assert (len(ids[1]), finish[1]) == (3, "stop") and EOS not in ids[1]
    assert (ids[2], finish[2]) == ([EOS] * 8, "length")


def test_top_k_and_min_p_keep_only_the_likeliest(tiny_llama, tiny_tokenizer):
    sae = make_sae(layer=2)
    greedy, _, _ = run(tiny_llama, tiny_tokenizer, sae, [SequenceRequest(PROMPTS[2], SamplingParams(
        max_tokens=8, temperature=0.0, ignore_eos=True))])
    for extra in ({"top_k": 1}, {"min_p": 1.0}):
        ids, _, _ = run(tiny_llama, tiny_tokenizer, sae, [SequenceRequest(PROMPTS[2], SamplingParams(
            max_tokens=8, temperature=1.5, seed=9, ignore_eos=True, **extra))])
        assert ids[0] == greedy[0], extra
    loose, _, _ = run(tiny_llama, tiny_tokenizer, sae, [SequenceRequest(PROMPTS[2], SamplingParams(
        max_tokens=8, temperature=1.5, seed=9, ignore_eos=True))])
    assert loose[0] != greedy[0]  # at this temperature the plain sampler strays


def test_top_k_samples_within_the_k_likeliest():
    torch.manual_seed(0)
    logits = torch.randn(50)
    allowed = set(logits.topk(3).indices.tolist())
    s = RowSampler.create(SamplingParams(temperature=2.0, top_k=3, seed=0), torch.device("cpu"))
    drawn = {s.choose(logits) for _ in range(300)}
    assert drawn == allowed


def test_mixed_batch_rows_equal_their_rows_alone(tiny_llama, tiny_tokenizer):
    sae = make_sae(layer=2)
    requests = [
        SequenceRequest(PROMPTS[0], SamplingParams(max_tokens=9, temperature=0.0, frequency_penalty=1.2, ignore_eos=True)),
        SequenceRequest(PROMPTS[1], SamplingParams(max_tokens=9, temperature=0.0, ignore_eos=True)),
        SequenceRequest(PROMPTS[2], SamplingParams(max_tokens=9, temperature=0.9, seed=3, top_k=5, min_p=0.05,
                                                   presence_penalty=1.0, repetition_penalty=1.3, ignore_eos=True)),
        SequenceRequest(PROMPTS[0], SamplingParams(max_tokens=9, temperature=0.8, seed=5, logit_bias=((9, 3.0),),
                                                   min_tokens=9)),
    ]
    together, _, _ = run(tiny_llama, tiny_tokenizer, sae, requests)
    for r, req in enumerate(requests):
        alone, _, _ = run(tiny_llama, tiny_tokenizer, sae, [req])
        assert together[r] == alone[0], r


@pytest.mark.parametrize("kw,param", [
    ({"frequency_penalty": 2.5}, "frequency_penalty"), ({"presence_penalty": float("nan")}, "presence_penalty"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"), ({"logit_bias": ((5, 101.0),)}, "logit_bias"),
    ({"logit_bias": ((10_000, 1.0),)}, "logit_bias"), ({"min_tokens": 20}, "min_tokens"),
    ({"top_k": -1}, "top_k"), ({"min_p": 1.5}, "min_p"),
])
def test_bad_values_name_their_parameter(kw, param):
    with pytest.raises(SteeringError) as err:
        SamplingParams(max_tokens=10, **kw).validate(vocab_size=300)
    assert err.value.param == param
