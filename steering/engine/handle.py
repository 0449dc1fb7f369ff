"""What a caller holds for one submitted group: its events, readable from a thread or from asyncio.

The engine's worker is the only writer: `deliver` a step's events, count a
row as finished with `row_finished`, `fail` with an exception, `finish` at
the end. The reader iterates (`for events in handle`, or `async for` when
submitted with a loop) and may `cancel`. Nothing else touches its state.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import AsyncIterator, Iterator, Sequence

from steering.engine.requests import SequenceRequest, TokenEvent

_END = object()


class QueueFullError(RuntimeError):
    """The engine's queue is full; retry after `retry_after` seconds."""

    def __init__(self, retry_after: float):
        super().__init__(f"the server is busy; retry after {retry_after:.0f} s")
        self.retry_after = retry_after


class EngineShutdown(RuntimeError):
    """The engine was closed while this group ran (the server is shutting down); retry elsewhere or later."""

    def __init__(self, retry_after: float = 5.0):
        super().__init__("the server is shutting down; retry the request")
        self.retry_after = retry_after


class RequestHandle:
    """Events of one submitted group, readable from a thread or from asyncio.

    Items are lists of TokenEvent (one step, this group's rows only), then
    the end. An exception raised by the worker for this group is re-raised
    to the reader.
    """

    def __init__(self, requests: Sequence[SequenceRequest], loop: asyncio.AbstractEventLoop | None):
        self.requests = list(requests)
        self.cancelled = threading.Event()
        self._loop = loop
        self._sync: queue.Queue = queue.Queue()
        self._async: asyncio.Queue | None = asyncio.Queue() if loop is not None else None
        self._open = len(self.requests)  # rows not finished yet (counted by the worker)

    # ------------------------------------------------------------ the reader
    def cancel(self) -> None:
        """Stop this group at the next decoding step (e.g. its client went away)."""
        self.cancelled.set()

    def __iter__(self) -> Iterator[list[TokenEvent]]:
        while True:
            item = self._sync.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def __aiter__(self) -> AsyncIterator[list[TokenEvent]]:
        assert self._async is not None, "submit(..., loop=...) to read from asyncio"
        while True:
            item = await self._async.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    # ------------------------------------------------------------ the worker
    @property
    def done(self) -> bool:
        """Every row of the group has finished (or it has none)."""
        return self._open <= 0

    def row_finished(self) -> None:
        self._open -= 1

    def deliver(self, events: list[TokenEvent]) -> None:
        self._put(events)

    def fail(self, exc: BaseException) -> None:
        self._put(exc)

    def finish(self) -> None:
        self._put(_END)

    def _put(self, item: object) -> None:
        if self._async is not None and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._async.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is reading any more
                self.cancel()
        else:
            self._sync.put(item)
