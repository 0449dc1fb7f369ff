"""The generation engine: one worker loop, on a compute thread, that continuously batches submitted groups.

A caller submits a group (one chat request: its n choices, plus the unsteered
baselines of an A/B compare) and gets a `RequestHandle` whose events it reads
synchronously (`for events in handle`) or from asyncio (`async for`). Each
item is the list of this group's events from one decoding step.

The worker runs a `Scheduler`: every row of every group is an independent
sequence in one running batch of at most `max_batch` rows; rows join and
leave at step boundaries, a newcomer's prompt is prefilled in chunks between
decode steps, and a cancelled handle's rows leave at the next step with a
"cancelled" event. Admission is bounded: a group waits until all its rows
have started; past `max_queue` waiting groups, `submit` raises
`QueueFullError` at once. Bad requests raise `SteeringError` from `submit`.

The worker is a loop on a `ComputeThread` (its own, or one shared with the
caller that loaded the model), so all torch work of a server runs on one
thread (see `steering.engine.compute` for why): `call` runs any function there,
between decoding steps. The worker touches the model only while some group
is in flight or a call runs. The engine knows nothing of HTTP: the server
translates requests into `SequenceRequest`s and events into its own wire
format.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

import torch

from steering.engine.backends import Backend, make_backend
from steering.engine.compute import STOP, ComputeThread
from steering.engine.core_share import CoreShare
from steering.engine.handle import QueueFullError, RequestHandle
from steering.engine.requests import SequenceRequest, TokenEvent
from steering.engine.scheduler import Scheduler, check_request
from steering.models import eos_ids
from steering.sae.autoencoder import SparseAutoencoder

_STOP_ENGINE = object()
T = TypeVar("T")


@dataclass
class EngineConfig:
    # Groups that may wait for a slot before submit raises QueueFullError.
    max_queue: int = 64
    # Seconds a client is told to wait when the queue is full (Retry-After).
    retry_after_s: float = 2.0
    # torch threads of the engine's own compute thread (a shared one was given its own).
    threads: int | None = None
    # Rows decoded together in one forward pass.
    max_batch: int = 8
    # Prompt tokens per prefill forward, and per step (bounds the stall of running rows).
    prefill_chunk: int = 64
    prefill_budget: int = 64
    # Prompt-prefix K/V kept for reuse (positions; 0: no prefix cache).
    prefix_cache_tokens: int = 2048
    # KV positions per slot that stay allocated while idle (float32 K/V of the default model:
    # 46 KB per position and slot, touched pages only).
    kv_keep_positions: int = 512
    # Bound on the K/V cache's bytes (None: max_batch sequences of the model's whole context);
    # sequences are shortened to fit (`steering.engine.backends.kv_bounded_length`).
    max_kv_bytes: int | None = None
    # False: always the Hugging Face forward (slower; for comparisons).
    fast_forward: bool = True
    # When idle, wait this long after a submission for others (a burst) to prefill them together.
    gather_s: float = 0.005
    # Use fewer threads while other processes keep cores busy (steering.engine.core_share).
    share_cores: bool = True


@dataclass
class Engine:
    """Owns the model, tokenizer and SAE (shared, read-only) and a worker loop on a compute thread.

    Without `compute` the engine starts a thread of its own (with
    `config.threads`) and stops it on `close`.
    """

    model: torch.nn.Module
    tokenizer: object
    sae: SparseAutoencoder | None
    config: EngineConfig = field(default_factory=EngineConfig)
    compute: ComputeThread | None = None

    def __post_init__(self) -> None:
        cfg = self.config
        if cfg.max_batch <= 0 or cfg.max_queue < 0:
            raise ValueError("max_batch must be positive and max_queue non-negative")
        self._owns_compute = self.compute is None
        if self.compute is None:
            self.compute = ComputeThread(cfg.threads, name="steering-engine")
        # Fusing the weights is torch work too: on the compute thread.
        self._backend = self.compute.run(
            make_backend, self.model, self.sae, cfg.max_batch, cfg.fast_forward, cfg.prefix_cache_tokens,
            cfg.kv_keep_positions, cfg.max_kv_bytes)
        self._scheduler = Scheduler(
            self._backend, self.tokenizer, self.sae, eos_ids(self.tokenizer, self.model),
            max_batch=cfg.max_batch, prefill_chunk=cfg.prefill_chunk, prefill_budget=cfg.prefill_budget,
        )
        self._waiting = 0  # groups submitted whose rows have not all started
        self._lock = threading.Lock()
        self._closed = False
        self._stop_reason: BaseException | None = None
        self._stopped = self.compute.submit(self._run)

    def submit(
        self, requests: Sequence[SequenceRequest], loop: asyncio.AbstractEventLoop | None = None
    ) -> RequestHandle:
        """Queue a group; with `loop`, the handle is read with `async for`.

        Raises SteeringError for a bad request and QueueFullError when
        `max_queue` groups are already waiting.
        """
        for r in requests:  # checked here, so the caller sees a bad request at once; plans come on the worker
            check_request(r, self.sae, self._backend.max_length, self._backend.vocab_size)
        handle = RequestHandle(requests, loop)
        with self._lock:  # queued under the lock, so never behind close's stop marker
            if self._closed:
                raise RuntimeError("the engine is closed")
            if self._waiting >= self.config.max_queue:
                raise QueueFullError(self.config.retry_after_s)
            self._waiting += 1
            self.compute.put(handle)
        return handle

    @property
    def max_length(self) -> int:
        """The longest sequence (prompt and answer) a row may reach: the model's context, or less under
        `config.max_kv_bytes`."""
        return self._backend.max_length

    def call(self, fn: Callable[..., T], *args: Any) -> "Future[T]":
        """fn(*args) on the engine's thread, between decoding steps (runs with the model in its
        unsteered state: the engine's hooks are only attached inside a step)."""
        return self.compute.submit(fn, *args)

    def generate(self, requests: Sequence[SequenceRequest]) -> list[list[TokenEvent]]:
        """Blocking convenience: all events of a group, per step."""
        return list(self.submit(requests))

    @property
    def backend(self) -> Backend:
        """What runs the model's forward (`FastBackend` or `HFBackend`), for reports and tests."""
        return self._backend

    @property
    def waiting(self) -> int:
        """Groups submitted whose rows have not all started."""
        return self._waiting

    def close(self, reason: BaseException | None = None) -> None:
        """Cancel what runs, end every handle, stop the worker. With `reason` (e.g. `EngineShutdown`), every
        group still running fails with it (its reader sees the exception) instead of ending `cancelled`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop_reason = reason
            self.compute.put(_STOP_ENGINE)
        if not self.compute.is_current():
            try:
                self._stopped.result(timeout=30)
            except Exception:  # the loop's own failure; close still goes on
                pass
        if self._owns_compute:
            self.compute.close()

    # ------------------------------------------------------------ worker
    def _run(self) -> None:
        handles: dict[int, RequestHandle] = {}
        waiting: set[int] = set()
        sched = self._scheduler
        share = CoreShare(torch.get_num_threads()) if self.config.share_cores else None
        with torch.inference_mode():
            while True:
                was_idle = sched.idle
                stop = self._take_inbox(handles, waiting, block=was_idle)
                if was_idle and not stop and self.config.gather_s > 0:
                    time.sleep(self.config.gather_s)
                    stop = self._take_inbox(handles, waiting, block=False)
                if stop:
                    if self._stop_reason is not None:
                        self._fail_all(self._stop_reason, handles, waiting)
                    else:
                        self._dispatch(sched.cancel_all(), handles)
                    return
                if share is not None and not sched.idle:
                    threads = share.threads()
                    if threads != torch.get_num_threads():
                        torch.set_num_threads(threads)
                try:
                    pairs = sched.step(lambda h: h.cancelled.is_set())
                except Exception as exc:  # a failed forward: every group in flight gets the error
                    self._fail_all(exc, handles, waiting)
                    continue
                self._dispatch(pairs, handles)
                still = sched.waiting_owners()
                started = waiting - still
                if started:
                    waiting.intersection_update(still)
                    with self._lock:
                        self._waiting -= len(started)

    def _take_inbox(self, handles: dict, waiting: set, block: bool) -> bool:
        """Move submitted groups into the scheduler (running queued calls: one between steps while rows
        run, so background work delays a new request by one call at most); True on shutdown."""
        while True:
            item = self.compute.take(block, None if self._scheduler.idle else 1)
            if item is None:
                return False
            block = False
            if item is _STOP_ENGINE or item is STOP:
                return True
            handle = item
            handles[id(handle)] = handle
            if handle.requests:
                try:  # plans are built here, on this thread; a failure fails this group alone
                    self._scheduler.add(handle.requests, owner=handle, checked=True)
                except Exception as exc:
                    handle.fail(exc)
                    self._end(handle, handles)
                    with self._lock:
                        self._waiting -= 1
                    continue
                waiting.add(id(handle))
            else:
                self._end(handle, handles)
                with self._lock:
                    self._waiting -= 1

    def _dispatch(self, pairs: list, handles: dict) -> None:
        per_handle: dict[int, list[TokenEvent]] = defaultdict(list)
        for row, event in pairs:
            per_handle[id(row.owner)].append(event)
            if event.finish_reason is not None:
                row.owner.row_finished()
        for key, events in per_handle.items():
            handle = handles[key]
            handle.deliver(events)
            if handle.done:
                self._end(handle, handles)

    def _end(self, handle: RequestHandle, handles: dict) -> None:
        handle.finish()
        handles.pop(id(handle), None)

    def _fail_all(self, exc: BaseException, handles: dict, waiting: set) -> None:
        self._scheduler.cancel_all()
        with self._lock:
            self._waiting -= len(waiting)
        waiting.clear()
        for handle in list(handles.values()):
            handle.fail(exc)
            self._end(handle, handles)
