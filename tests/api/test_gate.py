"""ModelGate: exclusive jobs wait for groups in flight; groups wait for exclusive jobs."""

from __future__ import annotations

import asyncio

from api.gate import ModelGate


class _Handle:
    """Ends after `steps` items; a stand-in for the engine's RequestHandle."""

    def __init__(self, steps: int):
        self.queue: asyncio.Queue = asyncio.Queue()
        for i in range(steps):
            self.queue.put_nowait(i)
        self.queue.put_nowait(None)

    async def __aiter__(self):
        while (item := await self.queue.get()) is not None:
            yield item


def test_exclusive_waits_for_groups_and_blocks_new_ones():
    async def scenario():
        gate, order = ModelGate(), []
        await gate.enter()

        async def search():
            async with gate.exclusive():
                order.append("search")
                await asyncio.sleep(0.01)
            order.append("search done")

        async def generation():
            await gate.enter()
            order.append("second generation")
            gate.leave()

        task = asyncio.create_task(search())
        await asyncio.sleep(0.01)
        late = asyncio.create_task(generation())
        await asyncio.sleep(0.01)
        assert order == []  # the search waits for the first group; the second waits for the search
        gate.leave()
        await asyncio.gather(task, late)
        assert order == ["search", "search done", "second generation"]
        assert gate.in_flight == 0

    asyncio.run(scenario())


def test_release_when_done_drains_the_handle_first():
    async def scenario():
        gate = ModelGate()
        await gate.enter()
        handle = _Handle(3)
        task = gate.release_when_done(handle)
        assert gate.in_flight == 1
        await task
        assert gate.in_flight == 0 and handle.queue.empty()

    asyncio.run(scenario())


def test_exclusive_times_out():
    async def scenario():
        gate = ModelGate()
        await gate.enter()
        try:
            async with gate.exclusive(timeout=0.01):
                raise AssertionError("must not run")
        except TimeoutError:
            return True
        return False

    assert asyncio.run(scenario())


def test_run_exclusive_keeps_the_gate_until_its_thread_returns_even_when_cancelled():
    import threading

    import pytest

    async def scenario():
        gate = ModelGate()
        started, release = threading.Event(), threading.Event()

        def work():
            started.set()
            assert release.wait(5)
            return 42

        assert await gate.run_exclusive(lambda x: x + 1, 1) == 2
        caller = asyncio.create_task(gate.run_exclusive(work))
        while not started.is_set():
            await asyncio.sleep(0.01)
        caller.cancel()  # the client went away; the thread cannot be stopped
        with pytest.raises(asyncio.CancelledError):
            await caller
        generation = asyncio.create_task(gate.enter())
        await asyncio.sleep(0.05)
        assert not generation.done()  # still held: the thread is running forwards
        release.set()
        await asyncio.wait_for(generation, 5)
        assert gate.in_flight == 1
        gate.leave()

        await gate.enter()  # a group in flight: a timed-out job raises TimeoutError and never runs
        ran = []
        with pytest.raises(TimeoutError):
            await gate.run_exclusive(ran.append, 1, timeout=0.05)
        assert ran == []

    asyncio.run(scenario())
