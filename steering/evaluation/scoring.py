"""Reading answers back: next-token loss under the plain model, concept features' peaks, the judge.

    loss(answer)   = mean over answer tokens t of  -log p(t | context, earlier tokens)
    peak(answer)   = max over answer tokens and concept features i of  f_i / max_act_i
                     (f at the SAE's hook site; raw f when max_act_i is unknown)

An answer carries the concept when it has a concept word (see `metrics`),
or a concept feature's peak reaches `fire_fraction` (> 0 where a max
activation is unknown), or either when both are given (`Judge`).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch

from steering.evaluation.metrics import concept_word_pattern, has_concept_words
from steering.evaluation.targets import Concept
from steering.hooks import capture

if TYPE_CHECKING:
    from steering.steered_model import SteeredModel


@dataclass(frozen=True)
class Answer:
    """A generated answer: its text, token ids, and whether a monitor crossed its threshold on it."""

    text: str
    ids: tuple[int, ...]
    crossed: bool = False



def score_answers(
    sm: "SteeredModel", contexts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]],
    features: Sequence[int] = (), batch_size: int = 8,
) -> tuple[list[float | None], list[list[float] | None]]:
    """(loss, peaks) per answer under the unsteered model, each answer after its context.

    loss: mean next-token negative log-likelihood of the answer tokens (None
    for an empty answer). peaks: for each of `features`, the max over answer
    tokens of f_i / max_act_i (raw f_i where max_act_i is unknown); None when
    no features are given or the answer is empty.
    """
    model, sae = sm.loaded.model, sm.sae
    device = next(model.parameters()).device
    idx = torch.tensor(list(features), dtype=torch.long, device=device)
    use_sae = sae is not None and len(features) > 0
    scale = None
    if use_sae:
        max_act = sae.max_activation[idx].float()
        scale = torch.where(torch.isfinite(max_act) & (max_act > 0), max_act, torch.ones_like(max_act))
    losses: list[float | None] = []
    peaks: list[list[float] | None] = []
    for start in range(0, len(answers), batch_size):
        ctx, ans = contexts[start : start + batch_size], answers[start : start + batch_size]
        rows = [list(c) + list(a) for c, a in zip(ctx, ans)]
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for r, row in enumerate(rows):  # right-padded: positions 0..len-1 as in generation
            ids[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = 1
        # Logits only where some row predicts an answer token: positions first..last-1.
        first = min((len(c) for c, a in zip(ctx, ans) if a), default=1) - 1
        keep = torch.arange(max(first, 0), width, device=device)
        with torch.inference_mode():
            with capture(model, sae.cfg.hook_layer, sae.cfg.hook_site) if use_sae else nullcontext() as store:
                logits = _forward_logits(model, ids.to(device), mask.to(device), keep)
            if use_sae:
                acts = sae.encode_features(store[0].to(sae.W_dec.dtype), idx) / scale  # [B, T, m]
            for r, (c, a) in enumerate(zip(ctx, ans)):
                if not a:
                    losses.append(None)
                    peaks.append(None)
                    continue
                lo, hi = len(c), len(c) + len(a)
                logp = torch.log_softmax(logits[r, lo - 1 - int(keep[0]) : hi - 1 - int(keep[0])].float(), dim=-1)
                target = torch.tensor(list(a), device=logp.device)
                losses.append(float(-logp.gather(1, target[:, None]).mean()))
                peaks.append(acts[r, lo:hi].amax(0).float().tolist() if use_sae else None)
    return losses, peaks


def _forward_logits(model: Any, ids: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Logits [B, len(keep), V] at positions `keep` (a contiguous range); the full forward where
    the model takes no `logits_to_keep`."""
    try:
        return model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
    except TypeError:
        return model(input_ids=ids, attention_mask=mask).logits[:, keep]



class Judge:
    """Concept words, features and the combined rule for one target's concept (module docstring)."""

    def __init__(self, sm: "SteeredModel", concept: Concept, columns: dict[int, int]):
        self.concept = concept
        self.pattern = concept_word_pattern(concept.words)
        self.cols = [columns[i] for i in concept.features]
        self.known_max = sm.sae is not None and all(
            math.isfinite(float(sm.sae.max_activation[i])) for i in concept.features)

    def peak(self, peaks: list[float] | None) -> float | None:
        return max(peaks[c] for c in self.cols) if peaks is not None and self.cols else None

    def __call__(self, answer: Answer, peaks: list[float] | None) -> tuple[bool | None, bool | None, bool | None]:
        words = has_concept_words(answer.text, self.pattern) if self.pattern is not None else None
        feats = None
        if self.concept.features:
            p = self.peak(peaks)  # None: an empty answer, which carries no concept
            feats = p is not None and (p >= self.concept.fire_fraction if self.known_max else p > 0)
        either = None if words is None and feats is None else bool(words) or bool(feats)
        return words, feats, either

