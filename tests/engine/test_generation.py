"""Batched steered generation, sampling, detokenization and the engine on tiny models."""

from __future__ import annotations

import threading

import pytest
import torch

from steering.engine import SequenceRequest, generate_batch
from steering.engine.detokenize import TextStream
from steering.engine.sampling import SamplingParams
from steering.engine.worker import Engine, EngineConfig, QueueFullError
from steering.errors import SteeringError
from steering.interventions import FeatureClamp, SteeringSpec
from tests.test_interventions import make_sae


def run(model, tok, sae, requests, cancel=None):
    """-> per-row (token ids, text, finish_reason)."""
    ids = [[] for _ in requests]
    texts = [""] * len(requests)
    finish = [None] * len(requests)
    for events in generate_batch(model, tok, sae, requests, cancel):
        for e in events:
            if e.token_id is not None:
                ids[e.index].append(e.token_id)
            texts[e.index] += e.text
            finish[e.index] = e.finish_reason or finish[e.index]
    return ids, texts, finish


def greedy(n=12, **kw):
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, **kw)


PROMPTS = [tuple(range(10, 20)), (40, 41, 42), tuple(range(60, 75))]


def test_greedy_without_clamps_equals_model_generate(tiny_llama, tiny_tokenizer):
    sae = make_sae(layer=2)
    ids, _, finish = run(tiny_llama, tiny_tokenizer, sae, [SequenceRequest(PROMPTS[0], greedy(16))])
    ref = tiny_llama.generate(torch.tensor([PROMPTS[0]]), max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=2)
    assert ids[0] == ref[0, len(PROMPTS[0]):].tolist()
    assert finish == ["length"]


def test_batched_rows_match_running_alone_and_clamps_stay_in_their_row(tiny_llama, tiny_tokenizer):
    sae = make_sae(layer=2)
    strong = SteeringSpec((FeatureClamp(0, 40.0), FeatureClamp(1, 40.0)))
    requests = [
        SequenceRequest(PROMPTS[0], greedy()),
        SequenceRequest(PROMPTS[1], greedy(), strong),
        SequenceRequest(PROMPTS[2], greedy(), SteeringSpec((FeatureClamp(5, 30.0, "add"),), "generated")),
    ]
    together, _, _ = run(tiny_llama, tiny_tokenizer, sae, requests)
    for r, req in enumerate(requests):
        alone, _, _ = run(tiny_llama, tiny_tokenizer, sae, [req])
        assert together[r] == alone[0]
    unsteered, _, _ = run(tiny_llama, tiny_tokenizer, sae, [SequenceRequest(PROMPTS[1], greedy())])
    assert unsteered[0] != together[1]


def test_windows_clamp_the_prompt_and_the_first_generated_tokens_only(tiny_llama, tiny_tokenizer):
    sae = make_sae(layer=2)
    clamps = (FeatureClamp(0, 40.0), FeatureClamp(1, 40.0))

    def tokens(*specs):
        return run(tiny_llama, tiny_tokenizer, sae, [SequenceRequest(PROMPTS[1], greedy(), s) for s in specs])[0]

    plain, always, limited, prompt_only, limit0 = tokens(
        None, SteeringSpec(clamps), SteeringSpec(clamps, "all", 3), SteeringSpec(clamps, "prompt"),
        SteeringSpec(clamps, "all", 0))
    # Tokens 1..N+1 come from clamped forwards (the prompt's last token, then the first N generated ones).
    assert limited[:4] == always[:4] and limited != always
    assert prompt_only == limit0 and prompt_only[0] == always[0] and prompt_only != always
    assert plain not in (limited, prompt_only)
    # Windows are per row: the same rows batched with others give the same tokens.
    assert tokens(SteeringSpec(clamps, "all", 3)) == [limited]
    mixed = run(tiny_llama, tiny_tokenizer, sae, [SequenceRequest(PROMPTS[0], greedy(), SteeringSpec(clamps)),
                                                  SequenceRequest(PROMPTS[1], greedy(), SteeringSpec(clamps, "all", 3))])[0]
    assert mixed[1] == limited


def test_seeded_sampling_is_reproducible_whatever_else_is_in_the_batch(tiny_llama, tiny_tokenizer):
    sae = make_sae(layer=2)
    mine = SequenceRequest(PROMPTS[0], SamplingParams(max_tokens=10, temperature=1.0, seed=7, ignore_eos=True))
    other = SequenceRequest(PROMPTS[1], SamplingParams(max_tokens=10, temperature=1.3, seed=3, ignore_eos=True), SteeringSpec((FeatureClamp(2, 9.0),)))
    alone, _, _ = run(tiny_llama, tiny_tokenizer, sae, [mine])
    mixed, _, _ = run(tiny_llama, tiny_tokenizer, sae, [other, mine, other])
    assert mixed[1] == alone[0]
    reseeded = SequenceRequest(PROMPTS[0], SamplingParams(max_tokens=10, temperature=1.0, seed=8, ignore_eos=True))
    assert run(tiny_llama, tiny_tokenizer, sae, [reseeded])[0][0] != alone[0]


def test_top_p_tiny_keeps_only_the_argmax(tiny_llama, tiny_tokenizer):
    sampled = SequenceRequest(PROMPTS[2], SamplingParams(max_tokens=8, temperature=1.0, top_p=1e-6, seed=1, ignore_eos=True))
    assert run(tiny_llama, tiny_tokenizer, None, [sampled])[0] == run(tiny_llama, tiny_tokenizer, None, [SequenceRequest(PROMPTS[2], greedy(8))])[0]


def test_eos_stops_the_row_with_reason_stop(tiny_llama, tiny_tokenizer):
    def eos_first(module, args, logits):  # make eos (id 2) the argmax everywhere
        return logits.index_add(-1, torch.tensor([2]), torch.full_like(logits[..., :1], 1e4))

    handle = tiny_llama.lm_head.register_forward_hook(eos_first)
    try:
        ids, texts, finish = run(tiny_llama, tiny_tokenizer, None, [SequenceRequest(PROMPTS[0], SamplingParams(max_tokens=8, temperature=0))])
    finally:
        handle.remove()
    assert ids == [[]] and texts == [""] and finish == ["stop"]


def test_cancel_stops_generation(tiny_llama, tiny_tokenizer):
    cancel = threading.Event()
    steps = 0
    for events in generate_batch(tiny_llama, tiny_tokenizer, None, [SequenceRequest(PROMPTS[0], greedy(100))], cancel):
        steps += 1
        if steps == 3:
            cancel.set()
        last = events
    assert steps == 4 and last[0].finish_reason == "cancelled"


def test_steering_without_sae_and_bad_params_are_clear_errors(tiny_llama, tiny_tokenizer):
    spec = SteeringSpec((FeatureClamp(0, 1.0),))
    with pytest.raises(SteeringError) as err:
        run(tiny_llama, tiny_tokenizer, None, [SequenceRequest(PROMPTS[0], greedy(), spec)])
    assert err.value.param == "steering"
    with pytest.raises(SteeringError) as err:
        run(tiny_llama, tiny_tokenizer, None, [SequenceRequest(PROMPTS[0], SamplingParams(max_tokens=0))])
    assert err.value.param == "max_tokens"


def test_logprobs_are_log_probabilities_of_the_chosen_token(tiny_llama, tiny_tokenizer):
    req = SequenceRequest(PROMPTS[0], SamplingParams(max_tokens=3, temperature=0, logprobs=True, top_logprobs=3, ignore_eos=True))
    events = [e for step in generate_batch(tiny_llama, tiny_tokenizer, None, [req]) for e in step]
    for e in events:
        assert e.logprob is not None and e.logprob <= 0
        assert e.top_logprobs[0][0] == e.token_id  # greedy picks the likeliest
        assert [lp for _, lp in e.top_logprobs] == sorted((lp for _, lp in e.top_logprobs), reverse=True)


def test_text_stream_never_splits_a_character_nor_leaks_a_stop_string(tiny_tokenizer):
    text = "héllo wörld 🙂 END tail"
    ids = tiny_tokenizer(text, add_special_tokens=False).input_ids
    stream = TextStream(tiny_tokenizer, stop=("END",))
    pieces = [stream.push(i) for i in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == "héllo wörld 🙂 " and stream.stopped
    held = TextStream(tiny_tokenizer, stop=("ENDING",))
    pieces = [held.push(i) for i in ids]
    assert "".join(pieces) + held.flush() == text  # "END" was held back, then released


def test_invalid_bytes_are_released_as_replacement_characters_and_the_window_stays_small(tiny_tokenizer):
    lead = tiny_tokenizer.convert_tokens_to_ids(tiny_tokenizer.convert_ids_to_tokens([3 + 0xE2]))[0]  # 0xE2: a 3-byte lead
    stream = TextStream(tiny_tokenizer)
    pieces = [stream.push(lead) for _ in range(200)]  # lead bytes that never get their continuation bytes
    assert stream.read_offset >= 200 - 5 and stream.prefix_offset >= 200 - 10  # the window did not grow
    out = "".join(pieces) + stream.flush()
    assert set(out) == {"\ufffd"} and len(out) >= 190
    ok = TextStream(tiny_tokenizer)  # a real 4-byte character still comes out whole
    emoji = tiny_tokenizer("🙂", add_special_tokens=False).input_ids
    assert len(emoji) == 4 and "".join(ok.push(i) for i in emoji) == "🙂"


def test_engine_runs_groups_and_bounds_its_queue(tiny_llama, tiny_tokenizer):
    engine = Engine(tiny_llama, tiny_tokenizer, make_sae(layer=2), EngineConfig(max_queue=1, max_batch=1))
    try:
        steps = engine.generate([SequenceRequest(PROMPTS[1], greedy(5)), SequenceRequest(PROMPTS[1], greedy(5))])
        assert sum(len(s) for s in steps) == 10
        gate = threading.Event()
        blocker = engine.submit([SequenceRequest(PROMPTS[0], greedy(200))])
        first = next(iter(blocker))  # the worker is busy with the blocker now
        assert first
        queued = engine.submit([SequenceRequest(PROMPTS[0], greedy(2))])
        with pytest.raises(QueueFullError):
            engine.submit([SequenceRequest(PROMPTS[0], greedy(2))])
        blocker.cancel()
        assert list(blocker)[-1][0].finish_reason == "cancelled"
        assert sum(len(s) for s in queued) == 2
        gate.set()
    finally:
        engine.close()


def test_row_sampler_draws_from_the_tempered_top_p_distribution():
    from steering.engine.sampling import RowSampler

    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    counts = torch.zeros(4)
    sampler = RowSampler.create(SamplingParams(temperature=1.0, seed=0), torch.device("cpu"))
    for _ in range(4000):
        counts[sampler.choose(logits)] += 1
    torch.testing.assert_close(counts / 4000, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.03, rtol=0)
    nucleus = RowSampler.create(SamplingParams(temperature=1.0, top_p=0.7, seed=1), torch.device("cpu"))
    picks = {nucleus.choose(logits) for _ in range(300)}
    assert picks == {0, 1}  # 0.5 + 0.3 >= 0.7: the tail is never drawn
    again = RowSampler.create(SamplingParams(temperature=1.0, seed=0), torch.device("cpu"))
    first = RowSampler.create(SamplingParams(temperature=1.0, seed=0), torch.device("cpu"))
    assert [again.choose(logits) for _ in range(50)] == [first.choose(logits) for _ in range(50)]


def test_background_rows_wait_behind_every_other_row(tiny_llama, tiny_tokenizer):
    """The scheduler admits waiting rows in order, background ones (internal work) after all others."""
    from steering.engine.scheduler import Scheduler
    from steering.engine.backends import make_backend

    sae = make_sae(layer=2)
    backend = make_backend(tiny_llama, sae, slots=2)
    sched = Scheduler(backend, tiny_tokenizer, sae, [2], max_batch=2)
    bg = [SequenceRequest(PROMPTS[0], greedy(2), background=True) for _ in range(3)]
    fg = [SequenceRequest(PROMPTS[1], greedy(2)) for _ in range(2)]
    sched.add(bg[:2], owner="bg1")
    sched.add(fg[:1], owner="fg1")
    sched.add(bg[2:], owner="bg2")
    sched.add(fg[1:], owner="fg2")
    assert [r.owner for r in sched.waiting] == ["fg1", "fg2", "bg1", "bg1", "bg2"]


def test_background_rows_hold_at_most_half_the_slots(tiny_llama, tiny_tokenizer):
    from steering.engine.backends import make_backend
    from steering.engine.scheduler import Scheduler

    sae = make_sae(layer=2)
    sched = Scheduler(make_backend(tiny_llama, sae, slots=4), tiny_tokenizer, sae, [2], max_batch=4)
    rows = sched.add([SequenceRequest(PROMPTS[1], greedy(6), background=True) for _ in range(4)], owner="bg")
    sched.step()
    assert len(sched.decoding) == 2 and len(sched.waiting) == 2  # two slots kept free for clients
    sched.add([SequenceRequest(PROMPTS[0], greedy(6))], owner="client")
    sched.step()
    assert [r.owner for r in sched.decoding].count("client") == 1  # joined at once
    events = []
    while not sched.idle:
        events += sched.step()
    assert all(r.finished for r in rows)  # the background rows still all finish
