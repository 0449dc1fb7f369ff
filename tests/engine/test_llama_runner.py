"""LlamaRunner computes the HF model's forward (with clamps) over a slot KV cache."""

from __future__ import annotations

import itertools

import pytest
import torch

from steering.engine.kv_cache import KVPool
from steering.engine.llama.runner import LlamaRunner, unsupported_reason
from steering.hooks import steering
from steering.interventions import FeatureClamp, SteeringSpec, build_plan
from tests.test_interventions import make_sae


def hf_last_logits(model, ids, sae=None, spec=None, prompt_length=None):
    plan = build_plan(sae, [spec], [prompt_length or len(ids)]) if spec is not None else None
    with torch.no_grad():
        if plan is None:
            return model(input_ids=torch.tensor([ids])).logits[0, -1]
        with steering(model, sae, plan):
            return model(input_ids=torch.tensor([ids])).logits[0, -1]


@pytest.mark.parametrize("site,kernels", [("resid_post", True), ("resid_pre", True), ("resid_post", False)])
def test_ragged_batch_decode_equals_hf_forward_with_per_row_clamps(tiny_llama, site, kernels):
    sae = make_sae(layer=2, hook_site=site)
    runner = LlamaRunner(tiny_llama, use_kernels=kernels)
    pool = runner.new_pool(4)
    prompts = [list(range(10, 17)), list(range(30, 33)), list(range(50, 62)), list(range(70, 76))]
    specs = [SteeringSpec((FeatureClamp(0, 30.0),)), None, SteeringSpec((FeatureClamp(4, 20.0, "add"),), "generated"),
             SteeringSpec((FeatureClamp(0, 30.0),), "prompt")]
    with torch.inference_mode():
        for slot, (ids, spec) in enumerate(zip(prompts, specs)):
            plan = build_plan(sae, [spec], [len(ids)])
            for start in range(0, len(ids), 5):  # chunked prefill
                chunk = ids[start : start + 5]
                out = runner.forward(pool, slot, torch.tensor([chunk]), torch.arange(start, start + len(chunk))[None], sae, plan)
            torch.testing.assert_close(out[0], hf_last_logits(tiny_llama, ids, sae, spec), atol=1e-4, rtol=1e-4)
        nxt = [5, 6, 7, 8]
        plan = build_plan(sae, specs, [len(p) for p in prompts])
        pos = torch.tensor([[len(p)] for p in prompts])
        logits = runner.forward(pool, 0, torch.tensor(nxt)[:, None], pos, sae, plan)
    for r, (ids, spec) in enumerate(zip(prompts, specs)):
        torch.testing.assert_close(logits[r], hf_last_logits(tiny_llama, ids + [nxt[r]], sae, spec, len(ids)), atol=1e-4, rtol=1e-4)


def test_unsupported_models_are_named(tiny_gpt2, tiny_llama):
    assert unsupported_reason(tiny_llama) is None
    assert unsupported_reason(tiny_gpt2) == "not a Llama model"
    with pytest.raises(ValueError, match="not a Llama model"):
        LlamaRunner(tiny_gpt2)


def test_kv_pool_grows_keeping_contents_moves_and_releases():
    pool = KVPool(n_layers=2, n_kv_heads=2, head_dim=4, slots=3, dtype=torch.float32, device=torch.device("cpu"), max_length=1000, block=8)
    pool.reserve(5)
    assert pool.capacity == 8
    pool.kv[1][2, :5] = 1.5
    pool.reserve(20)
    assert pool.capacity == 32 and bool((pool.kv[1][2, :5] == 1.5).all())
    pool.move(2, 0, 5)
    assert bool((pool.kv[1][0, :5] == 1.5).all()) and bool((pool.kv[1][0, 5:] == 0).all())
    with pytest.raises(ValueError, match="context"):
        pool.reserve(1001)
    pool.release()
    assert pool.nbytes == 0 and pool.capacity == 0


def test_kv_pool_keeps_its_first_positions_when_idle_and_can_skip_zeroing():
    pool = KVPool(n_layers=2, n_kv_heads=2, head_dim=4, slots=3, dtype=torch.float32, device=torch.device("cpu"),
                  max_length=1000, block=8, keep=20, zero_fill=False)
    assert pool.keep == 16  # rounded down to the block
    pool.reserve(5)
    pool.release()
    assert pool.capacity == 8 and pool.nbytes > 0  # below `keep`: kept as it is
    pool.reserve(40)
    pool.kv[0][1, :3] = 2.0
    pool.reserve(70)
    assert pool.capacity == 128 and bool((pool.kv[0][1, :3] == 2.0).all())  # grown without zeroing, contents kept
    pool.release()
    assert pool.capacity == 16 and pool.nbytes == 2 * 3 * 16 * 4 * 4 * 4


def test_kernels_are_exact_in_float32_and_batch_invariant():
    from steering.engine.llama import kernels

    if kernels.load() is None:
        pytest.skip("no C compiler or no AVX2/FMA: the torch fallback is used")
    gen = torch.Generator().manual_seed(0)
    for (m, n, k), dtype in itertools.product([(1, 64, 72), (5, 33, 64), (9, 260, 130)], [torch.bfloat16, torch.float32]):
        w = (torch.randn(n, k, generator=gen) * 0.1).to(dtype)  # odd N, K tails, M over the 4-row block
        x = torch.randn(m, k, generator=gen)
        y = kernels.linear(x, w)
        torch.testing.assert_close(y, (x.double() @ w.double().T).float(), atol=1e-5, rtol=1e-5)
        assert torch.equal(kernels.linear(x[m - 1 :], w)[0], y[m - 1])


def test_bf16_model_runs_on_float32_activations_and_matches_hf_in_float32(tiny_llama):
    from steering.engine.llama import kernels

    if kernels.load() is None:
        pytest.skip("no C compiler or no AVX2/FMA: the torch fallback is used")
    model = tiny_llama.to(torch.bfloat16)
    runner = LlamaRunner(model)
    assert runner.act_dtype == torch.float32
    ids = list(range(20, 31))
    with torch.inference_mode():
        out = runner.forward(runner.new_pool(1), 0, torch.tensor([ids]), torch.arange(len(ids))[None])
        ref = model.float()(input_ids=torch.tensor([ids])).logits[0, -1]  # the same bf16-rounded weights
    torch.testing.assert_close(out[0], ref, atol=1e-4, rtol=1e-4)


def test_runner_cache_notices_weights_edited_in_place(tiny_llama, tiny_tokenizer):
    from steering.engine.generation import generate_batch
    from steering.engine.requests import SequenceRequest
    from steering.engine.sampling import SamplingParams

    req = [SequenceRequest(tuple(range(10, 20)), SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))]
    run = lambda: [e.token_id for s in generate_batch(tiny_llama, tiny_tokenizer, None, req) for e in s]  # noqa: E731
    before = run()
    with torch.no_grad():
        for layer in tiny_llama.model.layers:  # fused into gate_up copies by the runner
            layer.mlp.up_proj.weight.mul_(-30.0)
    after = run()
    ref = tiny_llama.generate(torch.tensor([req[0].prompt_ids]), max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=2)
    assert after == ref[0, 10:].tolist() and after != before


@pytest.mark.parametrize("architecture,normalize,b_dec_in", [
    ("relu", "none", False), ("jumprelu", "expected_average_only_in", True), ("relu", "expected_average_only_in", True),
])
def test_clamp_kernel_is_apply_plan(architecture, normalize, b_dec_in):
    from steering.engine.llama import kernels
    from steering.engine.llama.runner import _clamp_arguments
    from steering.interventions import apply_plan

    if kernels.load() is None:
        pytest.skip("no C compiler or no AVX2/FMA: the torch fallback is used")
    extra = {"norm_scaling_factor": 0.37} if normalize != "none" else {}
    sae = make_sae(d_in=70, architecture=architecture, normalize_activations=normalize, apply_b_dec_to_input=b_dec_in, **extra)
    specs = [
        SteeringSpec((FeatureClamp(3, 4.0), FeatureClamp(9, 2.0, "scale"))),
        None,
        SteeringSpec((FeatureClamp(9, -3.0, "add"), FeatureClamp(200, 0.0)), "generated"),
        SteeringSpec((FeatureClamp(50, 1.5, "scale"),), "all", 1),
        SteeringSpec((FeatureClamp(3, 2.0),), "prompt"),
    ]
    plan = build_plan(sae, specs, [4, 4, 5, 4, 3])
    args = _clamp_arguments(sae, plan)
    assert args is not None
    x = torch.randn(5, 7, 70, generator=torch.Generator().manual_seed(3)) * 3
    positions = torch.arange(7).expand(5, 7).contiguous()
    expected = apply_plan(sae, plan, x, positions)
    got = kernels.clamp(x.clone(), plan.rows, positions, plan.start, plan.end, *args)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(got[1], x[1]) and not torch.equal(got[2, 5:], x[2, 5:]) and torch.equal(got[2, :5], x[2, :5])
    assert torch.equal(got[3, 5:], x[3, 5:]) and not torch.equal(got[3, :5], x[3, :5])  # prompt + 1 generated token
    assert torch.equal(got[4, 3:], x[4, 3:]) and not torch.equal(got[4, :3], x[4, :3])  # the prompt only
    assert _clamp_arguments(make_sae(architecture="topk"), build_plan(make_sae(architecture="topk"), specs[:1])) is None


def test_attention_kernel_is_batch_invariant_and_matches_torch():
    from steering.engine.llama import kernels

    if kernels.load() is None:
        pytest.skip("no C compiler or no AVX2/FMA: the torch fallback is used")
    gen = torch.Generator().manual_seed(4)
    H, KV, hd, cap, B = 6, 2, 64, 64, 8
    kv = torch.randn(B, cap, 2 * KV, hd, generator=gen)
    qkv = torch.randn(B, (H + 2 * KV) * hd, generator=gen)
    pos = torch.tensor([0, 3, 9, 17, 30, 31, 40, 63])
    slots = torch.arange(B)
    cos, sin = torch.ones(cap, hd), torch.zeros(cap, hd)  # RoPE as the identity, to compare with plain attention
    together = kernels.attention(qkv.clone(), pos, slots, kv.clone(), cos, sin, H)  # one task per KV head
    for i in range(B):  # alone: one task per query head
        alone = kernels.attention(qkv[i : i + 1].clone(), pos[i : i + 1], slots[i : i + 1], kv.clone(), cos, sin, H)
        assert torch.equal(alone[0], together[i])
        kv_i = kv.clone()
        kv_i[i, pos[i]] = qkv[i, H * hd :].view(2 * KV, hd)
        keys, values = kv_i[i, : pos[i] + 1, :KV], kv_i[i, : pos[i] + 1, KV:]  # [n, KV, hd]
        q = qkv[i, : H * hd].view(H, hd)
        scores = torch.einsum("hd,nhd->hn", q, keys.repeat_interleave(H // KV, dim=1)) / hd**0.5
        ref = torch.einsum("hn,nhd->hd", scores.softmax(-1), values.repeat_interleave(H // KV, dim=1))
        torch.testing.assert_close(together[i].view(H, hd), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("site", ["resid_post", "resid_pre"])
def test_rows_with_one_prompt_share_the_layers_below_the_sae_and_match_rows_alone(tiny_llama, site, monkeypatch):
    """A prefill of several rows with the same prompt (different clamps, or none) runs the layers below
    the SAE's site once for them (kernels path); logits and every layer's K/V equal each row's own
    prefill, bit for bit."""
    sae = make_sae(layer=2, hook_site=site)
    runner = LlamaRunner(tiny_llama)
    shared: list[int] = []
    original = runner._shared_first_layers
    monkeypatch.setattr(runner, "_shared_first_layers", lambda *a: _record(original, shared, *a))
    prompt, other = list(range(10, 19)), list(range(40, 49))
    rows = [prompt, prompt, other, prompt, other]
    specs = [SteeringSpec((FeatureClamp(0, 30.0),)), None, SteeringSpec((FeatureClamp(4, 20.0),)),
             SteeringSpec((FeatureClamp(4, 20.0),)), None]
    ids, pos = torch.tensor(rows), torch.arange(len(prompt)).expand(len(rows), -1)
    with torch.inference_mode():
        pool = runner.new_pool(len(rows))
        together = runner.forward(pool, 0, ids, pos, sae, build_plan(sae, specs, [len(r) for r in rows]))
        for r, (row, spec) in enumerate(zip(rows, specs)):
            alone_pool = runner.new_pool(1)
            alone = runner.forward(alone_pool, 0, torch.tensor([row]), pos[:1], sae, build_plan(sae, [spec], [len(row)]))
            assert torch.equal(together[r], alone[0]), r
            for layer in range(len(pool.kv)):
                assert torch.equal(pool.kv[layer][r, : len(row)], alone_pool.kv[layer][0, : len(row)]), (r, layer)
    if runner.stack is not None:  # the kernels path shares; the torch fallback computes every row
        split = 3 if site == "resid_post" else 2
        assert shared[0] == split
    # Without clamps (or an SAE) there is no site to stop at: rows of one prompt share every layer.
    with torch.inference_mode():
        pool = runner.new_pool(len(rows))
        together = runner.forward(pool, 0, ids, pos)
        shared_by_together = shared[-1] if shared else None
        alone = runner.forward(runner.new_pool(1), 0, torch.tensor([other]), pos[:1])
    assert torch.equal(together[2], alone[0]) and torch.equal(together[4], alone[0])
    if runner.stack is not None:
        assert shared_by_together == len(pool.kv)


def _record(original, seen, *args):
    first, h = original(*args)
    seen.append(first)
    return first, h
