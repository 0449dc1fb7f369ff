"""Batched, steered text generation over a Hugging Face causal LM, in the caller's thread.

`generate_batch` runs a group of sequences through a `Scheduler` until all
are done: each row has its own sampling parameters, seed, stop strings,
token budget and clamp spec, every decoding step is one forward pass over all
running rows, and rows past `max_batch` join as others finish. It yields,
after each step, the events of the rows that produced something.

A batch has no running streams to keep smooth, so its prompts are
prefilled in forwards of up to PREFILL_CHUNK tokens, PREFILL_BUDGET per step
(a server's engine uses short chunks: its clients' tokens must not wait on
a newcomer's prompt); the rows' answers do not depend on the chunking.

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
from steering.engine.scheduler import Scheduler, check_request
from steering.models import eos_ids
from steering.sae.autoencoder import SparseAutoencoder

PREFILL_CHUNK = 512  # prompt tokens per prefill forward (rows whose prompts fit together share it)
PREFILL_BUDGET = 4096  # prompt tokens prefilled per step


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
    for r in requests:  # every request checked before any forward pass
        check_request(r, sae, backend.max_length, backend.vocab_size)
    scheduler = Scheduler(backend, tokenizer, sae, eos_ids(tokenizer, model), max_batch=slots,
                          prefill_chunk=PREFILL_CHUNK, prefill_budget=PREFILL_BUDGET)
    scheduler.add(requests, checked=True)
    stop = (lambda owner: cancel.is_set()) if cancel is not None else None
    with torch.inference_mode():
        while not scheduler.idle:
            events = [event for _, event in scheduler.step(stop)]
            if events:
                yield events
