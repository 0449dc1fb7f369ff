"""The values that cross the engine's boundary: what to generate, and what came out.

`SequenceRequest` is one sequence (prompt ids, sampling, clamps); a group of
them (one chat request's choices and baselines) is submitted together, but
each is decoded as an independent row. `TokenEvent` is what one row produced
in one decoding step. Both are plain frozen values: no tensors, no HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass

from steering.engine.sampling import SamplingParams
from steering.interventions import SteeringSpec

FINISH_REASONS: tuple[str, ...] = ("stop", "length", "cancelled")


@dataclass(frozen=True)
class SequenceRequest:
    """One sequence to generate: prompt token ids, how to sample, how to steer."""

    prompt_ids: tuple[int, ...]
    sampling: SamplingParams = SamplingParams()
    steering: SteeringSpec | None = None


@dataclass(frozen=True)
class TokenEvent:
    """What one row produced in one step.

    `index` is the row's position within its submitted group. `text` is the
    newly released text (whole characters; may be "" while held back).
    `finish_reason` is "stop" or "length" on a row's last event, "cancelled"
    if generation was cancelled, else None. `token_id` is None on an event
    that carries no token (end of sequence, cancellation).
    """

    index: int
    token_id: int | None
    text: str
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()
    finish_reason: str | None = None
    completion_tokens: int = 0
