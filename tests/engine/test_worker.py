"""The continuous-batching scheduler and the engine on a tiny Llama: join, leave, cancel, admission."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from steering.engine.backends import make_backend
from steering.engine.generation import generate_batch
from steering.engine.requests import SequenceRequest
from steering.engine.sampling import SamplingParams
from steering.engine.scheduler import Scheduler
from steering.engine.worker import Engine, EngineConfig, QueueFullError
from steering.errors import SteeringError
from steering.interventions import FeatureClamp, SteeringSpec
from steering.models import eos_ids
from tests.test_interventions import make_sae

SPECS = [
    None,
    SteeringSpec((FeatureClamp(0, 40.0), FeatureClamp(1, 40.0))),
    SteeringSpec((FeatureClamp(5, 30.0, "add"),), "generated"),
    SteeringSpec((FeatureClamp(7, 0.0, "scale"), FeatureClamp(3, 25.0))),
]


def greedy(n=12, **kw):
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, **kw)


def prompt(i: int) -> tuple[int, ...]:
    return tuple(range(10 + 7 * i, 10 + 7 * i + 3 + (5 * i) % 11))


def alone(model, tok, sae, req):
    """Token ids of one request generated on its own."""
    return [e.token_id for step in generate_batch(model, tok, sae, [req]) for e in step if e.token_id is not None]


def scheduler(model, tok, sae, max_batch=4, chunk=64, budget=128):
    backend = make_backend(model, sae, max_batch)
    return Scheduler(backend, tok, sae, eos_ids(tok, model), max_batch=max_batch, prefill_chunk=chunk, prefill_budget=budget)


def drive(sched, arrivals, steps=500):
    """Run a scheduler, adding arrivals[step] = [(key, request)] before each step; -> {key: token ids}."""
    tokens, finish, rows = {}, {}, {}
    for step in range(steps):
        for key, req in arrivals.get(step, []):
            rows[sched.add([req], owner=key)[0]] = key
            tokens[key] = []
        if sched.idle and step > max(arrivals):
            break
        with torch.inference_mode():
            for row, event in sched.step():
                if event.token_id is not None:
                    tokens[row.owner].append(event.token_id)
                if event.finish_reason:
                    finish[row.owner] = event.finish_reason
    return tokens, finish


def test_rows_join_and_leave_mid_stream_and_match_running_alone(tiny_llama, tiny_tokenizer):
    sae = make_sae(layer=2)
    reqs = {k: SequenceRequest(prompt(k), greedy(4 + 3 * k), SPECS[k % 4]) for k in range(7)}
    # staggered arrivals; max_batch 3 forces waiting, leaving from middle slots and slot moves
    arrivals = {0: [(0, reqs[0]), (1, reqs[1])], 2: [(2, reqs[2])], 3: [(3, reqs[3]), (4, reqs[4])], 9: [(5, reqs[5])], 10: [(6, reqs[6])]}
    sched = scheduler(tiny_llama, tiny_tokenizer, sae, max_batch=3, chunk=4, budget=8)
    together, finish = drive(sched, arrivals)
    for k, req in reqs.items():
        assert together[k] == alone(tiny_llama, tiny_tokenizer, sae, req), k
        assert finish[k] == "length" and len(together[k]) == req.sampling.max_tokens
    assert sched.idle and sched.backend.pool.nbytes == 0  # KV freed once idle


def test_newcomer_is_decoded_in_the_same_forward_as_running_rows(tiny_llama, tiny_tokenizer):
    calls = []
    sched = scheduler(tiny_llama, tiny_tokenizer, None, max_batch=4)
    decode = sched.backend.decode
    sched.backend.decode = lambda ids, *a: calls.append(len(ids)) or decode(ids, *a)
    drive(sched, {0: [(0, SequenceRequest(prompt(0), greedy(10)))], 3: [(1, SequenceRequest(prompt(1), greedy(4)))]})
    assert calls[:2] == [1, 1] and 2 in calls and calls[-1] == 1  # joined, then left


def test_unclamped_row_amid_clamped_rows_is_unaffected(tiny_llama, tiny_tokenizer):
    sae = make_sae(layer=2)
    plain = SequenceRequest(prompt(3), greedy(16))
    clamped = [SequenceRequest(prompt(k), greedy(16), SPECS[1 + k % 3]) for k in range(5)]
    events = list(generate_batch(tiny_llama, tiny_tokenizer, sae, clamped[:2] + [plain] + clamped[2:]))
    mixed = [e.token_id for step in events for e in step if e.index == 2]
    assert mixed == alone(tiny_llama, tiny_tokenizer, sae, plain)
    steered = SequenceRequest(prompt(3), greedy(16), SPECS[1])
    assert alone(tiny_llama, tiny_tokenizer, sae, steered) != mixed  # the clamps do act


def test_seeded_sampling_is_reproducible_with_staggered_neighbours(tiny_llama, tiny_tokenizer):
    sae = make_sae(layer=2)
    mine = SequenceRequest(prompt(2), SamplingParams(max_tokens=12, temperature=1.0, seed=11, ignore_eos=True))
    other = SequenceRequest(prompt(4), SamplingParams(max_tokens=9, temperature=1.2, seed=5, ignore_eos=True), SPECS[1])
    sched = scheduler(tiny_llama, tiny_tokenizer, sae, max_batch=3)
    tokens, _ = drive(sched, {0: [("o1", other)], 2: [("mine", mine)], 4: [("o2", other)]})
    assert tokens["mine"] == alone(tiny_llama, tiny_tokenizer, sae, mine)
    assert tokens["o1"] == tokens["o2"]


def test_max_tokens_and_context_end_with_length(tiny_llama, tiny_tokenizer):
    ids = alone(tiny_llama, tiny_tokenizer, None, SequenceRequest(prompt(0), greedy(1)))
    assert len(ids) == 1
    long_prompt = tuple(range(3, 3 + 250))  # the tiny model's context is 256
    events = [e for s in generate_batch(tiny_llama, tiny_tokenizer, None, [SequenceRequest(long_prompt, greedy(100))]) for e in s]
    assert events[-1].finish_reason == "length" and events[-1].completion_tokens == 256 - 250
    with pytest.raises(SteeringError) as err:
        list(generate_batch(tiny_llama, tiny_tokenizer, None, [SequenceRequest(tuple(range(3, 259)), greedy())]))
    assert err.value.param == "messages"


def script_hook(model, text_ids):
    """Make lm_head emit text_ids in order (one per forward; for single-row runs)."""
    calls = [0]

    def hook(module, args, logits):
        target = text_ids[min(calls[0], len(text_ids) - 1)]
        calls[0] += 1
        return logits.index_add(-1, torch.tensor([target]), torch.full_like(logits[..., :1], 1e4))

    return model.lm_head.register_forward_hook(hook)


def test_stop_string_split_across_tokens_is_never_released(tiny_llama, tiny_tokenizer):
    script = "Hi there, ENDgame é"
    ids = tiny_tokenizer(script, add_special_tokens=False).input_ids  # one token per byte
    handle = script_hook(tiny_llama, ids)
    try:
        req = SequenceRequest(prompt(0), greedy(30, stop=("END", "zzz")))
        events = [e for s in generate_batch(tiny_llama, tiny_tokenizer, None, [req]) for e in s]
    finally:
        handle.remove()
    assert "".join(e.text for e in events) == "Hi there, "
    assert all("E" not in e.text for e in events)
    assert events[-1].finish_reason == "stop" and events[-1].completion_tokens == len("Hi there, END")


def test_group_larger_than_the_batch_runs_through(tiny_llama, tiny_tokenizer):
    sae = make_sae(layer=2)
    reqs = [SequenceRequest(prompt(k), greedy(5 + k), SPECS[k % 4]) for k in range(6)]
    events = [e for s in generate_batch(tiny_llama, tiny_tokenizer, sae, reqs, max_batch=2) for e in s]
    for k, req in enumerate(reqs):
        assert [e.token_id for e in events if e.index == k] == alone(tiny_llama, tiny_tokenizer, sae, req)


def test_hf_backend_for_other_architectures_matches_generate(tiny_gpt2, tiny_tokenizer):
    reqs = [SequenceRequest(prompt(k), greedy(8)) for k in range(3)]
    events = [e for s in generate_batch(tiny_gpt2, tiny_tokenizer, None, reqs) for e in s]
    for k, req in enumerate(reqs):
        ref = tiny_gpt2.generate(torch.tensor([req.prompt_ids]), max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=2)
        assert [e.token_id for e in events if e.index == k] == ref[0, len(req.prompt_ids):].tolist()


# ------------------------------------------------------------ the engine (worker thread)
def test_engine_cancel_ends_one_group_and_spares_the_others(tiny_llama, tiny_tokenizer):
    sae = make_sae(layer=2)
    engine = Engine(tiny_llama, tiny_tokenizer, sae, EngineConfig(max_batch=4))
    try:
        keep_req = SequenceRequest(prompt(1), greedy(40), SPECS[1])
        doomed = engine.submit([SequenceRequest(prompt(0), greedy(200)), SequenceRequest(prompt(2), greedy(200))])
        kept = engine.submit([keep_req])
        it = iter(doomed)
        next(it)
        doomed.cancel()
        rest = list(it)
        assert {e.finish_reason for e in rest[-1]} == {"cancelled"} and len(rest[-1]) == 2
        ids = [e.token_id for s in kept for e in s if e.token_id is not None]
        assert ids == alone(tiny_llama, tiny_tokenizer, sae, keep_req)
    finally:
        engine.close()


def test_engine_queue_full_raises_with_retry_after_then_admits(tiny_llama, tiny_tokenizer):
    engine = Engine(tiny_llama, tiny_tokenizer, None, EngineConfig(max_queue=2, max_batch=1, retry_after_s=3.0))
    try:
        running = engine.submit([SequenceRequest(prompt(0), greedy(200))])
        next(iter(running))  # started: no longer waiting
        queued = [engine.submit([SequenceRequest(prompt(1), greedy(3))]) for _ in range(2)]
        with pytest.raises(QueueFullError) as err:
            engine.submit([SequenceRequest(prompt(1), greedy(3))])
        assert err.value.retry_after == 3.0
        running.cancel()
        assert [len([e for s in q for e in s]) for q in queued] == [3, 3]
        assert engine.waiting == 0
        assert len([e for s in engine.submit([SequenceRequest(prompt(1), greedy(2))]) for e in s]) == 2
    finally:
        engine.close()


def test_engine_rejects_bad_requests_at_submit(tiny_llama, tiny_tokenizer):
    engine = Engine(tiny_llama, tiny_tokenizer, None)
    try:
        with pytest.raises(SteeringError) as err:
            engine.submit([SequenceRequest(prompt(0), greedy(), SPECS[1])])
        assert err.value.param == "steering"
        with pytest.raises(SteeringError) as err:
            engine.submit([SequenceRequest((), greedy())])
        assert err.value.param == "messages"
        assert engine.waiting == 0
    finally:
        engine.close()


def test_engine_async_groups_arriving_at_different_times_match_running_alone(tiny_llama, tiny_tokenizer):
    import asyncio

    sae = make_sae(layer=2)
    reqs = [SequenceRequest(prompt(k), greedy(6 + 2 * k), SPECS[k % 4]) for k in range(6)]
    engine = Engine(tiny_llama, tiny_tokenizer, sae, EngineConfig(max_batch=3, prefill_chunk=4, prefill_budget=4))

    async def one(k):
        await asyncio.sleep(0.01 * k)
        handle = engine.submit([reqs[k]], loop=asyncio.get_running_loop())
        return [e.token_id async for s in handle for e in s if e.token_id is not None]

    async def main():
        return await asyncio.gather(*(one(k) for k in range(len(reqs))))

    try:
        results = asyncio.run(main())
    finally:
        engine.close()
    for k, req in enumerate(reqs):
        assert results[k] == alone(tiny_llama, tiny_tokenizer, sae, req)


def test_engine_close_cancels_running_groups(tiny_llama, tiny_tokenizer):
    engine = Engine(tiny_llama, tiny_tokenizer, None)
    handle = engine.submit([SequenceRequest(prompt(0), greedy(10_000 // 100))])
    time.sleep(0.05)
    closer = threading.Thread(target=engine.close)
    closer.start()
    steps = list(handle)
    closer.join()
    assert steps and steps[-1][-1].finish_reason in ("cancelled", "length")
    with pytest.raises(RuntimeError):
        engine.submit([SequenceRequest(prompt(0), greedy())])


def test_prompt_prefix_is_reused_only_where_its_kv_would_be_the_same(tiny_llama, tiny_tokenizer):
    sae = make_sae(layer=2)
    system = tuple(range(100, 140))  # a shared 40-token preamble
    plain = SequenceRequest(system + (7, 8, 9), greedy(6))
    other = SequenceRequest(system + (20, 21), greedy(6))
    clamped_all = SequenceRequest(system + (20, 21), greedy(6), SPECS[1])
    clamped_gen = SequenceRequest(system + (20, 21), greedy(6), SPECS[2])  # clamps generated tokens only
    sched = scheduler(tiny_llama, tiny_tokenizer, sae, max_batch=1)
    computed = []
    prefill = sched.backend.prefill
    sched.backend.prefill = lambda slot, chunks, *a: computed.extend(len(c) for c in chunks) or prefill(slot, chunks, *a)
    arrivals = {0: [("plain", plain), ("other", other), ("all", clamped_all), ("gen", clamped_gen)]}
    tokens, _ = drive(sched, arrivals)
    # plain computes all 43; other reuses 32 (two 16-blocks); clamped_all cannot; clamped_gen reuses other's 32
    assert computed == [43, 42 - 32, 42, 42 - 32]
    for key, req in [("plain", plain), ("other", other), ("all", clamped_all), ("gen", clamped_gen)]:
        assert tokens[key] == alone(tiny_llama, tiny_tokenizer, sae, req), key


def test_prefix_cache_evicts_beyond_its_token_budget():
    from steering.engine.kv_cache import PrefixCache

    cache = PrefixCache(block=4, max_tokens=10)
    kv = lambda n: torch.full((2, n, 2, 3), float(n))  # noqa: E731
    a, b = tuple(range(9)), tuple(range(50, 59))
    assert cache.wants(a, None) == 8
    cache.store(a, None, kv(8))
    assert cache.wants(a, None) == 0 and cache.lookup(a[:6] + (99,), None)[1] == 4
    assert cache.lookup(a, "clamped") is None
    cache.store(b, None, kv(8))  # 16 positions > 10: the oldest (a) goes
    assert cache.lookup(a, None) is None and cache.lookup(b, None)[1] == 8 and len(cache) == 1


def test_newcomers_are_prefilled_together_right_padded(tiny_llama, tiny_tokenizer):
    sae = make_sae(layer=2)
    reqs = {k: SequenceRequest(prompt(k), greedy(5), SPECS[k % 4]) for k in range(4)}  # prompt lengths 3..18
    sched = scheduler(tiny_llama, tiny_tokenizer, sae, max_batch=4)
    calls = []
    prefill = sched.backend.prefill
    sched.backend.prefill = lambda slot, chunks, *a: calls.append([len(c) for c in chunks]) or prefill(slot, chunks, *a)
    tokens, _ = drive(sched, {0: list(reqs.items())})
    assert calls == [[len(prompt(k)) for k in range(4)]]
    for k, req in reqs.items():
        assert tokens[k] == alone(tiny_llama, tiny_tokenizer, sae, req), k


def test_engine_on_a_non_llama_model_uses_the_hf_forward_with_per_row_clamps(tiny_gpt2, tiny_tokenizer):
    sae = make_sae(layer=2)
    reqs = [SequenceRequest(prompt(k), greedy(6), SPECS[k % 4]) for k in range(4)]
    engine = Engine(tiny_gpt2, tiny_tokenizer, sae, EngineConfig(max_batch=3))
    try:
        assert type(engine.backend).__name__ == "HFBackend"
        handles = [engine.submit([r]) for r in reqs]
        results = [[e.token_id for s in h for e in s if e.token_id is not None] for h in handles]
    finally:
        engine.close()
    for req, got in zip(reqs, results):
        assert got == alone(tiny_gpt2, tiny_tokenizer, sae, req)
    assert results[1] != alone(tiny_gpt2, tiny_tokenizer, sae, SequenceRequest(prompt(1), greedy(6)))


def test_a_group_whose_plan_fails_fails_alone(tiny_llama, tiny_tokenizer, monkeypatch):
    from steering.engine import scheduler as scheduler_module

    sae = make_sae(layer=2)
    real, failures = scheduler_module.build_plan, [RuntimeError("out of memory")]

    def flaky(*args, **kw):
        if failures:
            raise failures.pop()
        return real(*args, **kw)

    monkeypatch.setattr(scheduler_module, "build_plan", flaky)
    engine = Engine(tiny_llama, tiny_tokenizer, sae, EngineConfig(max_batch=2))
    try:
        params = SamplingParams(max_tokens=4, temperature=0.0)
        with pytest.raises(RuntimeError, match="out of memory"):
            engine.generate([SequenceRequest((10, 11, 12), params, SteeringSpec((FeatureClamp(1, 2.0),)))])
        events = engine.generate([SequenceRequest((10, 11, 12), params)])  # the worker goes on
        assert events and events[-1][-1].finish_reason == "length" and engine.waiting == 0
    finally:
        engine.close()
