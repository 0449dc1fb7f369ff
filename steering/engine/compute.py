"""One thread that runs a process's torch work, so there is one OpenMP team.

Why: torch's CPU kernels (and ours, `steering.engine.llama.kernels`) run their parallel regions
on libgomp. Every thread that has entered a parallel region with more than one
thread keeps a team of helper threads for the rest of its life, and libgomp
counts them all; once that count exceeds the cores, it stops spinning between
parallel regions and parks the helpers instead. A decoding step is ~120 short
kernels, so each then waits for a helper to wake. Measured on 2 cores with the
embedded model at batch 1: the scheduler stepped 54-60 times/s in a process
where only its thread had run torch, 35-38 with a second (even idle) thread
that had loaded the model. So a server loads, generates and runs its
exclusive forwards (feature search, auto-steer) all on this one thread.

A `ComputeThread` runs submitted callables in order. A long-running loop
submitted to it (the engine's) takes over the queue with `take`, running
callables between its own steps, so `submit` keeps working while it runs.
The loop's own items (new requests) come before queued callables, and it may
run one callable per step: background work (auto-steer's forwards) then
delays a client's first token by at most one such call, not by all of them.
Calls from the thread itself run inline (no deadlock).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import torch

T = TypeVar("T")


@dataclass
class Call:
    """fn(*args) and the future that gets its result."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    future: Future = field(default_factory=Future)

    def run(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            result = self.fn(*self.args)
        except BaseException as exc:  # handed to the caller, whatever it is
            self.future.set_exception(exc)
        else:
            self.future.set_result(result)


# Left in the queue when the thread closes; `take` returns it to a loop running on the thread.
STOP = object()


class ComputeThread:
    """A daemon thread running callables from its queue, with `threads` torch threads."""

    def __init__(self, threads: int | None = None, name: str = "steering-compute"):
        self.threads = threads
        self._inbox: queue.Queue = queue.Queue()
        self._items: deque = deque()  # taken from the inbox, not calls: for the loop (this thread only)
        self._calls: deque[Call] = deque()  # taken from the inbox, not run yet (this thread only)
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ callers
    def submit(self, fn: Callable[..., T], *args: Any) -> "Future[T]":
        """Queue fn(*args); its result (or exception) arrives in the future."""
        call = Call(fn, args)
        if self._closed:
            call.future.set_exception(RuntimeError("the compute thread is closed"))
        else:
            self._inbox.put(call)
        return call.future

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) on this thread, blocking; inline when already on it."""
        if self.is_current():
            return fn(*args)
        return self.submit(fn, *args).result()

    async def arun(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) on this thread, awaited from asyncio (the event loop stays free)."""
        if self.is_current():
            return fn(*args)
        return await asyncio.wrap_future(self.submit(fn, *args))

    def is_current(self) -> bool:
        return threading.current_thread() is self._thread

    def put(self, item: object) -> None:
        """Queue a non-callable item for a loop running on this thread (see `take`)."""
        self._inbox.put(item)

    def close(self, timeout: float | None = 30) -> None:
        """Stop after what is queued; calls submitted later fail."""
        self._closed = True
        self._inbox.put(STOP)
        if not self.is_current():
            self._thread.join(timeout)

    # ------------------------------------------------------------ the thread
    def take(self, block: bool, max_calls: int | None = None) -> object | None:
        """For a loop running on this thread: the next item that is not a call.

        Items come before calls: everything queued is looked at first, and
        calls are set aside. When no item is waiting, set-aside calls run here,
        in order, at most `max_calls` of them (None: all) before returning None.
        Returns None when nothing more is queued (after calls ran, or with
        block=False), and STOP when the thread is closing, once every call
        queued before it has run (STOP stays queued for the serving loop).
        """
        ran = 0
        while True:
            self._sort_inbox()
            if self._items and (self._items[0] is not STOP or not self._calls):
                item = self._items[0] if self._items[0] is STOP else self._items.popleft()
                return item
            if self._calls and (max_calls is None or ran < max_calls):
                self._calls.popleft().run()
                ran += 1
                continue
            if ran or not block:
                return None
            self._sort(self._inbox.get())

    def _sort_inbox(self) -> None:
        while True:
            try:
                self._sort(self._inbox.get_nowait())
            except queue.Empty:
                return

    def _sort(self, item: object) -> None:
        (self._calls if isinstance(item, Call) else self._items).append(item)

    def _serve(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        while True:  # calls only: other items stay queued for the loop that a queued call will start
            self._sort_inbox()
            if self._calls:
                self._calls.popleft().run()
            elif STOP in self._items:
                return
            else:
                self._sort(self._inbox.get())
