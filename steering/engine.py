"""The generation engine: a worker thread that runs submitted groups of sequences.

A caller submits a group (one chat request: its n choices, plus the unsteered
baselines of an A/B compare) and gets a `RequestHandle` whose events it reads
synchronously (`for events in handle`) or from asyncio (`async for`). The
worker runs groups one at a time through `generate_batch`; a cancelled handle
stops at the next decoding step. Admission is bounded: past `max_queue`
waiting groups, `submit` raises `QueueFullError` at once.

The engine knows nothing of HTTP: the server translates requests into
`SequenceRequest`s and events into its own wire format.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass, field
from typing import AsyncIterator, Iterator, Sequence

import torch

from steering.generation import SequenceRequest, TokenEvent, generate_batch
from steering.sae import SparseAutoencoder

_END = object()


class QueueFullError(RuntimeError):
    """The engine's queue is full; retry after `retry_after` seconds."""

    def __init__(self, retry_after: float):
        super().__init__(f"the server is busy; retry after {retry_after:.0f} s")
        self.retry_after = retry_after


class RequestHandle:
    """Events of one submitted group, readable from a thread or from asyncio.

    Items are lists of TokenEvent (one step), then the end. An exception
    raised by the worker for this group is re-raised to the reader.
    """

    def __init__(self, requests: Sequence[SequenceRequest], loop: asyncio.AbstractEventLoop | None):
        self.requests = list(requests)
        self.cancelled = threading.Event()
        self._loop = loop
        self._sync: queue.Queue = queue.Queue()
        self._async: asyncio.Queue | None = asyncio.Queue() if loop is not None else None

    def cancel(self) -> None:
        """Stop this group at the next decoding step (e.g. its client went away)."""
        self.cancelled.set()

    def _put(self, item: object) -> None:
        if self._async is not None and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._async.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is reading any more
                self.cancel()
        else:
            self._sync.put(item)

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


@dataclass
class EngineConfig:
    max_queue: int = 64
    # Seconds a client is told to wait when the queue is full (Retry-After).
    retry_after_s: float = 2.0
    threads: int | None = None


@dataclass
class Engine:
    """Owns the model, tokenizer and SAE (shared, read-only) and one worker thread."""

    model: torch.nn.Module
    tokenizer: object
    sae: SparseAutoencoder | None
    config: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self) -> None:
        self._jobs: queue.Queue = queue.Queue()
        self._waiting = 0
        self._lock = threading.Lock()
        self._worker = threading.Thread(target=self._run, name="steering-engine", daemon=True)
        self._worker.start()

    def submit(
        self, requests: Sequence[SequenceRequest], loop: asyncio.AbstractEventLoop | None = None
    ) -> RequestHandle:
        """Queue a group; with `loop`, the handle is read with `async for`."""
        with self._lock:
            if self._waiting >= self.config.max_queue:
                raise QueueFullError(self.config.retry_after_s)
            self._waiting += 1
        handle = RequestHandle(requests, loop)
        self._jobs.put(handle)
        return handle

    def generate(self, requests: Sequence[SequenceRequest]) -> list[list[TokenEvent]]:
        """Blocking convenience: all events of a group, per step."""
        return list(self.submit(requests))

    def close(self) -> None:
        self._jobs.put(None)
        self._worker.join(timeout=10)

    def _run(self) -> None:
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        while True:
            handle = self._jobs.get()
            if handle is None:
                return
            with self._lock:
                self._waiting -= 1
            if handle.cancelled.is_set():
                handle._put(_END)
                continue
            try:
                for events in generate_batch(self.model, self.tokenizer, self.sae, handle.requests, handle.cancelled):
                    handle._put(events)
            except Exception as exc:  # reported to this group's reader only
                handle._put(exc)
            handle._put(_END)
