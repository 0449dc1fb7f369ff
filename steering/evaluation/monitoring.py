"""Do monitors flag what they should? Flag rates on labelled prompts, and choosing monitors from examples.

Answers to on-topic prompts should be flagged, answers to off-topic ones not:

    flag_rate_on   = share of on-topic answers on which some monitor crosses its threshold
    flag_rate_off  = the same on off-topic answers          (targets: >= 0.9 and <= 0.1)

`evaluate_monitors` generates the answers with the monitors attached (action
`flag`, whatever the given action: a rate counts crossings, not what a stop
would cut) through `generate_batch`, so it measures the engine's own
readout. Sample j of prompt p is seeded `seed + j`, as in `run`.

`screen_features` chooses monitors from examples: it generates answers to an
on-topic and an off-topic selection set, reads every feature's peak on each
answer's tokens (the dense encode of the answer at the hook site, the value
a monitor reads), and for each feature takes the threshold that flags at most
`max_off` off-topic answers,

    threshold_i = max(the (max_off_answers + 1)-th largest off-topic peak of i x `margin`,
                      `floor` x max_activation_i)       (a feature silent on every
                                                          off-topic answer still needs a real activation)

then ranks features by the share of on-topic answers whose peak reaches it.
`greedy_cover` adds features (an OR of monitors) while each raises the
on-topic coverage of the selection set. Report the result on other prompts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from steering.engine import SamplingParams, SequenceRequest, generate_batch
from steering.hooks import activations_at
from steering.monitors import Monitor

if TYPE_CHECKING:
    from steering.steered_model import SteeredModel


@dataclass(frozen=True)
class MonitorSettings:
    max_tokens: int = 48
    temperature: float = 0.7
    seed: int = 0
    batch_size: int = 64


@dataclass(frozen=True)
class MonitorRates:
    """Flag rates of a set of monitors (see the module docstring)."""

    n_on: int
    n_off: int
    flagged_on: int
    flagged_off: int
    flag_rate_on: float
    flag_rate_off: float
    first_token_on: float | None  # mean index of the first flagged token in flagged on-topic answers

    def meets(self, min_on: float = 0.9, max_off: float = 0.1) -> bool:
        return self.flag_rate_on >= min_on and self.flag_rate_off <= max_off


def _requests(sm: "SteeredModel", prompts: Sequence[str], settings: MonitorSettings,
              monitors: tuple[Monitor, ...] = ()) -> list[SequenceRequest]:
    return [SequenceRequest(sm.prompt_ids([{"role": "user", "content": p}]),
                            SamplingParams(max_tokens=settings.max_tokens, temperature=settings.temperature,
                                           seed=settings.seed + j), None, None, monitors)
            for j, p in enumerate(prompts)]


def _generate(sm: "SteeredModel", requests: list[SequenceRequest], batch_size: int) -> tuple[list[list[int]], list[list]]:
    """(answer token ids, monitor events) per request."""
    ids: list[list[int]] = [[] for _ in requests]
    events: list[list] = [[] for _ in requests]
    for start in range(0, len(requests), batch_size):
        chunk = requests[start : start + batch_size]
        for step in generate_batch(sm.loaded.model, sm.loaded.tokenizer, sm.sae, chunk):
            for e in step:
                if e.token_id is not None:
                    ids[start + e.index].append(e.token_id)
                events[start + e.index] += e.monitor_events
    return ids, events


def evaluate_monitors(sm: "SteeredModel", monitors: Sequence[Monitor], on: Sequence[str], off: Sequence[str],
                      settings: MonitorSettings = MonitorSettings()) -> MonitorRates:
    """Flag rates of `monitors` (as flags) on answers to the on-topic and off-topic prompts."""
    flags = tuple(Monitor(m.index, m.threshold, m.unit, "flag", m.name) for m in monitors)
    _, on_events = _generate(sm, _requests(sm, on, settings, flags), settings.batch_size)
    _, off_events = _generate(sm, _requests(sm, off, settings, flags), settings.batch_size)
    flagged_on = [ev for ev in on_events if ev]
    first = [min(e.token_index for e in ev) for ev in flagged_on]
    n_off_flagged = sum(1 for ev in off_events if ev)
    return MonitorRates(len(on), len(off), len(flagged_on), n_off_flagged, len(flagged_on) / len(on),
                        n_off_flagged / len(off), sum(first) / len(first) if first else None)


@torch.no_grad()
def answer_peaks(sm: "SteeredModel", prompts: Sequence[str], settings: MonitorSettings) -> torch.Tensor:
    """[n_prompts, d_sae]: every feature's peak over each answer's tokens (the dense encode at the site)."""
    sae = sm.sae
    requests = _requests(sm, prompts, settings)
    answers, _ = _generate(sm, requests, settings.batch_size)
    rows = [list(r.prompt_ids) + a for r, a in zip(requests, answers)]
    peaks = torch.zeros(len(rows), sae.d_sae)
    for i, hidden in activations_at(sm.loaded.model, sae.cfg.hook_layer, sae.cfg.hook_site, rows, batch_size=8):
        start = len(requests[i].prompt_ids)
        if hidden.shape[0] > start:
            peaks[i] = sae.encode(hidden[start:].to(sae.W_enc.dtype)).float().amax(0).cpu()
    return peaks


@dataclass(frozen=True)
class ScreenedFeature:
    index: int
    threshold: float  # raw units
    on_rate: float
    off_rate: float
    max_activation: float | None


def screen_features(sm: "SteeredModel", on: Sequence[str], off: Sequence[str], settings: MonitorSettings = MonitorSettings(),
                    max_off_answers: int = 0, margin: float = 1.05, floor: float = 0.1, limit: int = 10
                    ) -> tuple[list[ScreenedFeature], torch.Tensor, torch.Tensor]:
    """The `limit` best single-feature monitors on the selection prompts, and the peaks they came from."""
    on_peaks, off_peaks = answer_peaks(sm, on, settings), answer_peaks(sm, off, settings)
    k = min(max_off_answers + 1, off_peaks.shape[0])
    max_act = sm.sae.max_activation.detach().float().cpu()
    known = torch.where(torch.isfinite(max_act), max_act, torch.zeros_like(max_act))
    thresholds = torch.maximum(off_peaks.topk(k, dim=0).values[-1] * margin, floor * known)  # [d_sae]
    thresholds = thresholds.clamp(min=1e-3)
    on_rate = (on_peaks >= thresholds).float().mean(0)
    off_rate = (off_peaks >= thresholds).float().mean(0)
    order = sorted(range(sm.sae.d_sae), key=lambda i: (-float(on_rate[i]), float(off_rate[i])))[:limit]
    return [ScreenedFeature(i, float(thresholds[i]), float(on_rate[i]), float(off_rate[i]),
                            float(max_act[i]) if math.isfinite(float(max_act[i])) else None) for i in order], \
        on_peaks, off_peaks


def greedy_cover(candidates: Sequence[ScreenedFeature], on_peaks: torch.Tensor, off_peaks: torch.Tensor,
                 max_features: int = 3, max_off_rate: float = 0.05) -> list[ScreenedFeature]:
    """An OR of monitors: add candidates while each raises the on-topic coverage and the off-topic rate
    stays within `max_off_rate` (on the selection peaks)."""
    chosen: list[ScreenedFeature] = []
    covered_on = torch.zeros(on_peaks.shape[0], dtype=torch.bool)
    covered_off = torch.zeros(off_peaks.shape[0], dtype=torch.bool)
    for c in candidates:
        if len(chosen) == max_features:
            break
        on_hit = on_peaks[:, c.index] >= c.threshold
        off_hit = covered_off | (off_peaks[:, c.index] >= c.threshold)
        if (covered_on | on_hit).sum() > covered_on.sum() and off_hit.float().mean() <= max_off_rate:
            chosen.append(c)
            covered_on |= on_hit
            covered_off = off_hit
    return chosen
