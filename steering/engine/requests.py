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
from steering.monitors import Monitor, MonitorEvent
from steering.readings import InspectSpec, TokenReading

FINISH_REASONS: tuple[str, ...] = ("stop", "length", "content_filter", "cancelled")


@dataclass(frozen=True)
class SequenceRequest:
    """One sequence to generate: prompt token ids, how to sample, how to steer, what to read.

    `inspect`: the features to read per token (`steering.inspection`);
    `monitors`: features watched at every generated token; `background`: the
    row joins the batch only when no other row waits. A row that reads
    releases each token's event one step later, with its reading (see
    `steering.engine.readout`)."""

    prompt_ids: tuple[int, ...]
    sampling: SamplingParams = SamplingParams()
    steering: SteeringSpec | None = None
    inspect: InspectSpec | None = None
    monitors: tuple[Monitor, ...] = ()
    background: bool = False  # internal work (auto-steer's probe): waits behind every other waiting row

    @property
    def reads(self) -> bool:
        return self.inspect is not None or bool(self.monitors)


@dataclass(frozen=True)
class TokenEvent:
    """What one row produced in one step.

    `index` is the row's position within its submitted group. `text` is the
    newly released text (whole characters; may be "" while held back).
    `finish_reason` is "stop" or "length" on a row's last event,
    "content_filter" when a `stop` monitor ended it, "cancelled" if generation
    was cancelled, else None. `token_id` is None on an event that carries no
    token (end of sequence, cancellation, a stop monitor). `readings`: the
    features read at this event's token (after the prompt's, on a row's first
    event, with inspect positions `all`); `monitor_events`: the crossings at it.
    """

    index: int
    token_id: int | None
    text: str
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()
    finish_reason: str | None = None
    completion_tokens: int = 0
    readings: tuple[TokenReading, ...] = ()
    monitor_events: tuple[MonitorEvent, ...] = ()
