"""The batched Hugging Face path on tiny random models of every family we claim.

Each family's model is built from a config in the test (`random_models`),
with a 6-token sliding window where the family has one, so that the prompts
and answers here cross it.
"""

from __future__ import annotations

import pytest
import torch

from steering.engine import SequenceRequest, generate_batch
from steering.engine.backends import HFBackend, make_backend
from steering.engine.hf_batched import attention_masks
from steering.engine.sampling import SamplingParams
from steering.engine.scheduler import Scheduler
from steering.errors import SteeringError
from steering.evaluation.random_models import ARCHITECTURES, random_config, random_model
from steering.hooks import capture, run_until_capture
from steering.interventions import FeatureClamp, SteeringSpec
from tests.test_interventions import make_sae

ARCHS = list(ARCHITECTURES)


def greedy(n: int = 10) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


def tokens_of(model, tok, sae, requests):
    out = [[] for _ in requests]
    for events in generate_batch(model, tok, sae, requests, fast=False):
        for e in events:
            if e.token_id is not None:
                out[e.index].append(e.token_id)
    return out


def hf_generate(model, prompt, n):
    ids = model.generate(torch.tensor([list(prompt)]), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=2)
    return ids[0, len(prompt):].tolist()


@pytest.fixture(params=ARCHS)
def arch_model(request, tiny_tokenizer):
    return request.param, random_model(request.param, vocab_size=len(tiny_tokenizer))


def test_greedy_equals_the_models_own_generate(arch_model, tiny_tokenizer):
    name, model = arch_model
    prompts = [tuple(range(10, 25)), (40, 41, 42), tuple(range(60, 70))]
    got = tokens_of(model, tiny_tokenizer, None, [SequenceRequest(p, greedy(12)) for p in prompts])
    for p, g in zip(prompts, got):
        assert g == hf_generate(model, p, 12), name
    assert type(make_backend(model, None, 2, fast=False)).__name__ == "HFBackend"


SHARED = tuple(range(100, 120))  # a 20-token prefix two rows share (the prefix cache's block is 16)


def mixed_requests():
    """8 requests: prompts of 2..40 tokens, no clamp / clamp / add on generated tokens / scale."""
    return [
        SequenceRequest(tuple(range(10, 25)), greedy()),
        SequenceRequest((40, 41), greedy(), SteeringSpec((FeatureClamp(0, 40.0), FeatureClamp(1, 40.0)))),
        SequenceRequest(SHARED + (7, 8, 9), greedy()),
        SequenceRequest(tuple(range(60, 100)), greedy(), SteeringSpec((FeatureClamp(5, 30.0, "add"),), "generated")),
        SequenceRequest(SHARED + (3,), greedy(8)),
        SequenceRequest((200, 201, 202, 203), greedy(), SteeringSpec((FeatureClamp(3, 0.0, "scale", "raw"),))),
        SequenceRequest(tuple(range(130, 139)), greedy(6)),
        SequenceRequest((5,), greedy(), SteeringSpec((FeatureClamp(2, 25.0),), "prompt")),
    ]


ARRIVALS = [0, 0, 1, 2, 4, 4, 5, 9]  # the step before which each request joins


@pytest.mark.parametrize("arch", ARCHS)
def test_a_mixed_batch_of_eight_equals_each_request_alone(arch, tiny_tokenizer):
    model = random_model(arch, vocab_size=len(tiny_tokenizer))
    hidden = model.config.hidden_size if arch != "gpt2" else model.config.n_embd
    sae = make_sae(d_in=hidden, layer=2)
    requests = mixed_requests()
    backend = make_backend(model, sae, 8, fast=False)
    # A small prefill chunk, so the 40-token prompt is prefilled in pieces beside running rows.
    scheduler = Scheduler(backend, tiny_tokenizer, sae, {2}, max_batch=8, prefill_chunk=16, prefill_budget=16)
    together: dict[int, list[int]] = {i: [] for i in range(len(requests))}
    owners = {}
    step = 0
    with torch.inference_mode():
        while step <= max(ARRIVALS) or not scheduler.idle:
            for i, at in enumerate(ARRIVALS):
                if at == step:
                    (row,) = scheduler.add([requests[i]])
                    owners[id(row)] = i
            for row, event in scheduler.step():
                if event.token_id is not None:
                    together[owners[id(row)]].append(event.token_id)
            step += 1
    assert backend.prefix_cache is not None and len(backend.prefix_cache) > 0  # the shared prefix was stored
    for i, request in enumerate(requests):
        (alone,) = tokens_of(model, tiny_tokenizer, sae, [request])
        assert together[i] == alone, (arch, i)
        if request.steering is None:  # rows without clamps are the plain model
            assert together[i] == hf_generate(model, request.prompt_ids, request.sampling.max_tokens), (arch, i)
    (plain,) = tokens_of(model, tiny_tokenizer, sae, [SequenceRequest(requests[1].prompt_ids, greedy())])
    assert plain != together[1]  # the clamp did something


@pytest.mark.parametrize("arch", ["gemma2", "gpt2", "qwen2"])
def test_logits_of_a_padded_batch_are_each_rows_alone_within_float_rounding(arch, tiny_tokenizer):
    model = random_model(arch, vocab_size=len(tiny_tokenizer))
    chunks = [list(range(10, 10 + n)) for n in (3, 17, 9, 1, 30, 12, 5, 22)]
    with torch.inference_mode():
        backend = make_backend(model, None, 8, fast=False, prefix_tokens=0)
        batch, _ = backend.prefill(0, chunks, [0] * 8, None, [None] * 8)
        for r, chunk in enumerate(chunks):
            alone, _ = make_backend(model, None, 1, fast=False, prefix_tokens=0).prefill(0, [chunk], [0], None, [None])
            torch.testing.assert_close(batch[r], alone[0], rtol=0, atol=1e-4)


def test_reading_returns_each_rows_site_before_its_clamp(tiny_tokenizer):
    model = random_model("gemma2", vocab_size=len(tiny_tokenizer))
    sae = make_sae(d_in=64, layer=1)
    chunks = [list(range(20, 31)), [50, 51, 52]]
    backend = make_backend(model, sae, 2, fast=False)
    from steering.interventions import build_plan
    plan = build_plan(sae, [SteeringSpec((FeatureClamp(0, 50.0),)), None])
    with torch.inference_mode():
        _, sites = backend.prefill(0, chunks, [0, 0], plan, [None, None], read=[0, 1])
    for chunk, site in zip(chunks, sites):
        with capture(model, 1, "resid_post", stop=True) as store:
            run_until_capture(model, input_ids=torch.tensor([chunk]))
        assert site.shape == (len(chunk), 64)
        torch.testing.assert_close(site, store[0][0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("site", ["resid_pre", "resid_post"])
def test_the_hook_layer_and_site_are_found_in_every_family(arch, site, tiny_tokenizer):
    model = random_model(arch, vocab_size=len(tiny_tokenizer))
    with capture(model, 3, site, stop=True) as store:
        run_until_capture(model, input_ids=torch.tensor([[5, 6, 7]]))
    hidden = getattr(model.config, "hidden_size", None) or model.config.n_embd
    assert store[0].shape == (1, 3, hidden)


def test_sliding_masks_follow_each_rows_positions():
    cfg = random_config("gemma2")  # window 6
    masks = attention_masks(cfg, past=[0, 10], counts=[2, 1], queries=2, width=12, dtype=torch.float32,
                            device=torch.device("cpu"))
    full, sliding = (masks[k][:, 0] == 0 for k in ("full_attention", "sliding_attention"))
    assert full[0, 0].tolist() == [True] + [False] * 11 and full[0, 1, :2].all() and not full[0, 1, 2:].any()
    assert full[1, 0, :11].all() and not full[1, 0, 11]  # row 1's query at position 10 sees 0..10
    assert full[1, 1].tolist() == full[1, 0].tolist()  # a pad sees what its row's last token sees
    assert sliding[1, 0].nonzero().flatten().tolist() == [5, 6, 7, 8, 9, 10]


def test_models_without_a_key_value_cache_are_refused_clearly(tiny_tokenizer):
    model = random_model("qwen2", vocab_size=len(tiny_tokenizer))
    model.config.layer_types = ["linear_attention"] * 4
    with pytest.raises(SteeringError, match="linear_attention"):
        make_backend(model, None, 2, fast=False)
    assert isinstance(make_backend(random_model("gpt2"), None, 2), HFBackend)


def test_a_model_placed_by_a_device_map_runs_batched_with_its_sae_at_the_hook_layer(tmp_path, tiny_tokenizer):
    """Only the plumbing on this machine (one device): a per-module map is handed to accelerate, the pool
    records each layer's device and the SAE goes to its layer's; several GPUs are not tested here."""
    from steering.steered_model import SteeredModel

    model = random_model("gemma2", vocab_size=len(tiny_tokenizer))
    model.save_pretrained(tmp_path / "m")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    placement = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu",
                 **{f"model.layers.{i}": "cpu" for i in range(4)}}
    mapped = SteeredModel.load(str(tmp_path / "m"), None, device="cpu", dtype="float32", device_map=placement)
    assert mapped.sae is not None and mapped.sae.W_dec.device == torch.device("cpu")
    backend = make_backend(mapped.loaded.model, mapped.sae, 2)
    assert isinstance(backend, HFBackend) and backend.pool.layer_devices == [torch.device("cpu")] * 4
    request = SequenceRequest(tuple(range(10, 25)), greedy(8))
    assert tokens_of(mapped.loaded.model, tiny_tokenizer, None, [request]) == [hf_generate(model, request.prompt_ids, 8)]
