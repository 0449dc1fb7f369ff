"""Who may run the shared model right now: generation groups, or one exclusive job.

The engine's worker attaches steering hooks to the shared model while it
generates; a forward pass from another thread at that moment would run
through those hooks (and a capture hook of ours would stop the engine's
forward). So the few forwards the server runs itself (feature search by text)
take the gate exclusively: they wait until every submitted group is finished
by the worker, and new submissions wait for them (a writer-preferring
readers-writer lock, all on the event loop).

A group counts as in flight from `submit` until the worker has put its end,
even after its client went away: `release_when_done` drains a cancelled
handle in the background before letting go.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator


class ModelGate:
    def __init__(self) -> None:
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
