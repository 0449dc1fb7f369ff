"""Who may run the shared model right now: generation groups, or one exclusive job.

The engine's worker attaches steering hooks to the shared model while it
generates; a forward pass from another thread at that moment would run
through those hooks (and a capture hook of ours would stop the engine's
forward). So the few forwards the server runs itself (feature search by text
or by concept, auto-steer's concept search) take the gate exclusively: they wait until every submitted group is finished
by the worker, and new submissions wait for them (a writer-preferring
readers-writer lock, all on the event loop).

A group counts as in flight from `submit` until the worker has put its end,
even after its client went away: `release_when_done` drains a cancelled
handle in the background before letting go. Likewise `run_exclusive` keeps
the gate until its thread has returned, even when its caller is cancelled
(a thread cannot be stopped, and its hooks are on the shared model).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

T = TypeVar("T")


class ModelGate:
    """`run_in_thread(fn, *args)` runs an exclusive job's function off the event loop: the
    server passes its compute thread's `arun`, so every forward runs on one thread."""

    def __init__(self, run_in_thread: Callable[..., Awaitable[Any]] = asyncio.to_thread) -> None:
        self._run_in_thread = run_in_thread
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._exclusive = asyncio.Lock()
        self._draining: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def enter(self) -> None:
        """Count one group in flight (waits while an exclusive job runs or waits)."""
        async with self._exclusive:
            self._in_flight += 1
            self._idle.clear()

    def leave(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait up to `timeout` s for no group in flight (and no exclusive job); True when idle."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return not self._draining

    def release_when_done(self, handle: object) -> "asyncio.Task[None]":
        """Leave once the worker has finished `handle` (cancel it first); returns the draining task."""

        async def drain() -> None:
            try:
                async for _ in handle:  # type: ignore[attr-defined]
                    pass
            except Exception:  # the group's own error: the worker is done with it either way
                pass
            finally:
                self.leave()

        task = asyncio.get_running_loop().create_task(drain())
        self._draining.add(task)  # keep a reference until it ends
        task.add_done_callback(self._draining.discard)
        return task

    @contextlib.asynccontextmanager
    async def exclusive(self, timeout: float | None = None) -> AsyncIterator[None]:
        """Run alone: no group in flight on the worker while the block runs.

        Raises TimeoutError when the groups in flight take longer than `timeout` seconds.
        """
        async with self._exclusive:
            await asyncio.wait_for(self._idle.wait(), timeout)
            yield

    async def run_exclusive(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """fn(*args) off the event loop (`run_in_thread`), alone on the model; raises TimeoutError as `exclusive` does.

        The gate is held by a task of its own until the thread returns, so a
        caller cancelled mid-way (a client gone) cannot let generation start
        while the thread still runs forwards.
        """

        async def job() -> T:
            async with self.exclusive(timeout):
                return await self._run_in_thread(fn, *args)

        def done(task: "asyncio.Task[T]") -> None:
            self._draining.discard(task)  # type: ignore[arg-type]
            if not task.cancelled():
                task.exception()  # retrieved: a caller that went away leaves no "never retrieved" warning

        task = asyncio.get_running_loop().create_task(job())
        self._draining.add(task)  # type: ignore[arg-type]  # keep a reference until it ends
        task.add_done_callback(done)
        return await asyncio.shield(task)
