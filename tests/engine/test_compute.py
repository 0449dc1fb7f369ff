"""One compute thread for all torch work: calls, the engine loop on it, and closing."""

from __future__ import annotations

import threading

import pytest

from steering.engine.compute import ComputeThread
from steering.engine.requests import SequenceRequest
from steering.engine.sampling import SamplingParams
from steering.engine.worker import Engine, EngineConfig


def test_calls_run_in_order_on_the_thread_and_raise_to_the_caller():
    ct = ComputeThread(threads=1, name="t-compute")
    try:
        seen = []
        futures = [ct.submit(lambda i=i: seen.append((i, threading.current_thread().name))) for i in range(5)]
        for f in futures:
            f.result(timeout=10)
        assert seen == [(i, "t-compute") for i in range(5)]
        with pytest.raises(ZeroDivisionError):
            ct.run(lambda: 1 / 0)
        # a call from the thread itself runs inline instead of waiting for itself
        assert ct.run(lambda: ct.run(lambda: threading.current_thread().name)) == "t-compute"
    finally:
        ct.close()
    with pytest.raises(RuntimeError, match="closed"):
        ct.submit(lambda: None).result(timeout=1)


def _greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


def test_engine_runs_calls_on_its_thread_between_steps(tiny_llama, tiny_tokenizer):
    engine = Engine(tiny_llama, tiny_tokenizer, None, EngineConfig(max_batch=2))
    try:
        handle = engine.submit([SequenceRequest(tuple(range(10, 20)), _greedy(40))])
        steps = iter(handle)
        next(steps)  # generation is under way
        name = engine.call(lambda: threading.current_thread().name).result(timeout=30)
        assert name == "steering-engine"
        assert sum(len(s) for s in steps) == 39  # the stream goes on to its end after the call
        assert engine.call(lambda: 7).result(timeout=30) == 7  # and calls still run when idle
    finally:
        engine.close()
    assert not engine.compute._thread.is_alive()  # its own thread stops with it


def test_engine_on_a_shared_thread_leaves_it_serving_after_close(tiny_llama, tiny_tokenizer):
    ct = ComputeThread(name="shared")
    try:
        engine = Engine(tiny_llama, tiny_tokenizer, None, EngineConfig(max_batch=2), compute=ct)
        events = [e for s in engine.submit([SequenceRequest((5, 6, 7), _greedy(6))]) for e in s]
        assert len([e for e in events if e.token_id is not None]) == 6
        assert engine.call(lambda: threading.current_thread().name).result(timeout=30) == "shared"
        engine.close()
        assert ct.run(lambda: "still serving") == "still serving"
        with pytest.raises(RuntimeError, match="closed"):
            engine.submit([SequenceRequest((5, 6), _greedy(2))])
    finally:
        ct.close()


def test_a_loop_takes_its_items_before_queued_calls_and_one_call_per_pass():
    """Background calls delay a new item by one call at most: items first, then `max_calls` calls."""
    ct = ComputeThread(name="priority")
    order: list[str] = []
    release = threading.Event()
    try:
        def loop() -> list[object]:
            release.wait(10)  # meanwhile two calls and an item are queued, the calls first
            first = ct.take(False, 1)
            second = ct.take(False, 1)  # no item left: one call runs, then None
            after_one = list(order)
            third = ct.take(False, None)  # the other call
            return [first, second, third, after_one]

        looping = ct.submit(loop)
        calls = [ct.submit(order.append, name) for name in ("call-1", "call-2")]
        ct.put("item")
        release.set()
        assert looping.result(timeout=10) == ["item", None, None, ["call-1"]]
        assert order == ["call-1", "call-2"] and all(c.done() for c in calls)
    finally:
        ct.close()
