"""Batched, steered text generation over a Hugging Face causal LM, in the caller's thread.

`generate_batch` runs a group of sequences through a `Scheduler` until all
are done: each row has its own sampling parameters, seed, stop strings,
token budget and clamp spec, every decoding step is one forward pass over all
running rows, and rows past `max_batch` join as others finish. It yields,
after each step, the events of the rows that produced something.

This module knows nothing of HTTP or threads; `steering.engine.worker` runs the same
scheduler in a worker thread for many groups at once. Nothing here mutates
the shared model or SAE.
"""

from __future__ import annotations

import threading
from typing import Iterator, Sequence

import torch

from steering.engine.backends import make_backend
from steering.engine.requests import SequenceRequest, TokenEvent
from steering.sae.autoencoder import SparseAutoencoder
from steering.engine.scheduler import Scheduler, validate_request

__all__ = ["SequenceRequest", "TokenEvent", "generate_batch", "eos_ids"]


def eos_ids(tokenizer: object, model: torch.nn.Module) -> set[int]:
    """Every end-of-sequence id the generation config, model config or tokenizer names."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def generate_batch(
    model: torch.nn.Module,
    tokenizer: object,
    sae: SparseAutoencoder | None,
    requests: Sequence[SequenceRequest],
    cancel: threading.Event | None = None,
    *,
    max_batch: int | None = None,
    fast: bool = True,
) -> Iterator[list[TokenEvent]]:
    """Generate all requests; yield each step's events (indices are positions in `requests`).

    Raises SteeringError for a bad request before any forward pass. `fast`
    False forces the Hugging Face forward (for comparisons).
    """
    if not requests:
        return
    slots = max_batch or len(requests)
    backend = make_backend(model, sae, slots, fast=fast)
    plans = [validate_request(r, sae, backend.max_length) for r in requests]
    scheduler = Scheduler(backend, tokenizer, sae, eos_ids(tokenizer, model), max_batch=slots)
    scheduler.add(requests, plans=plans)
    stop = (lambda owner: cancel.is_set()) if cancel is not None else None
    with torch.inference_mode():
        while not scheduler.idle:
            events = [event for _, event in scheduler.step(stop)]
            if events:
                yield events
