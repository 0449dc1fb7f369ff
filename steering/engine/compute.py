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
submitted to it (the engine's) takes over the queue with `take`, running any
callable it finds between its own steps, so `submit` keeps working while it
runs. Calls from the thread itself run inline (no deadlock).
"""

from __future__ import annotations

import asyncio
import queue
import threading
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
    def take(self, block: bool) -> object | None:
        """For a loop running on this thread: the next item that is not a call.

        Calls found on the way run here, in order. Returns None when nothing
        more is queued (after a call ran, or with block=False), and STOP when
        the thread is closing (STOP stays queued for the serving loop).
        """
        while True:
            try:
                item = self._inbox.get(block=block)
            except queue.Empty:
                return None
            if isinstance(item, Call):
                item.run()
                block = False
                continue
            if item is STOP:
                self._inbox.put(STOP)
            return item

    def _serve(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        while True:
            item = self._inbox.get()
            if item is STOP:
                return
            if isinstance(item, Call):
                item.run()
