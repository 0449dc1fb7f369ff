"""Reading answers back: next-token loss under the plain model, concept features' peaks, the judge.

    loss(answer)   = mean over answer tokens t of  -log p(t | context, earlier tokens)
    peak(answer)   = max over answer tokens and concept features i of  f_i / max_act_i
                     (f at the SAE's hook site; raw f when max_act_i is unknown)

An answer carries the concept when it has a concept word (see `metrics`),
or a concept feature's peak reaches `fire_fraction` (> 0 where a max
activation is unknown), or either when both are given (`Judge`).
"""

from __future__ import annotations

import copy
import inspect
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



class ContextCache:
    """Contexts' forwards kept between `score_answers` calls of one evaluation: context ids ->
    (logits [V] at its last position, its K/V cache). Rows are scored context by context, so only the
    latest `max_contexts` are kept (oldest dropped): a chunk of rows ends one context and starts the next."""

    def __init__(self, max_contexts: int = 2):
        self.max_contexts = max_contexts
        self._items: dict[tuple[int, ...], tuple[torch.Tensor, Any]] = {}

    def get(self, model: Any, context: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, Any]:
        hit = self._items.get(context)
        if hit is None:
            hit = _context_forward(model, torch.tensor([context], dtype=torch.long, device=device))
            self._items[context] = hit
            while len(self._items) > self.max_contexts:
                self._items.pop(next(iter(self._items)))
        return hit


def score_answers(
    sm: "SteeredModel", contexts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]],
    features: Sequence[int] = (), batch_size: int = 8, context_cache: ContextCache | None = None,
) -> tuple[list[float | None], list[list[float] | None]]:
    """(loss, peaks) per answer under the unsteered model, each answer after its context.

    loss: mean next-token negative log-likelihood of the answer tokens (None
    for an empty answer). peaks: for each of `features`, the max over answer
    tokens of f_i / max_act_i (raw f_i where max_act_i is unknown); None when
    no features are given or the answer is empty.

    Answers that share a context (an evaluation's targets all answer the same
    prompts) are scored over one forward of that context: its K/V cache,
    repeated for up to `batch_size` answers, and the logit at its last
    position, which predicts each answer's first token. Only answer tokens
    are computed again: (targets + 1) x prompt tokens fewer. `context_cache`
    keeps the contexts' forwards for later calls (an evaluation scores in
    chunks); without one they are kept for this call only.
    """
    model, sae = sm.loaded.model, sm.sae
    device = next(model.parameters()).device
    idx = torch.tensor(list(features), dtype=torch.long, device=device)
    use_sae = sae is not None and len(features) > 0
    scale = None
    if use_sae:
        max_act = sae.max_activation[idx].float()
        scale = torch.where(torch.isfinite(max_act) & (max_act > 0), max_act, torch.ones_like(max_act))
    losses: list[float | None] = [None] * len(answers)
    peaks: list[list[float] | None] = [None] * len(answers)
    groups: dict[tuple[int, ...], list[int]] = {}
    for r, (c, a) in enumerate(zip(contexts, answers)):
        if a:  # an empty answer has neither loss nor peaks
            groups.setdefault(tuple(c), []).append(r)
    known = context_cache if context_cache is not None else ContextCache()
    cache_arg = _cache_argument(model)
    for context, rows in groups.items():
        with torch.inference_mode():
            first_logits, kv = known.get(model, context, device)
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                width = max(len(answers[r]) for r in chunk)
                ids = torch.zeros(len(chunk), width, dtype=torch.long)
                mask = torch.zeros(len(chunk), len(context) + width, dtype=torch.long)
                mask[:, : len(context)] = 1
                for k, r in enumerate(chunk):  # right-padded after the shared context
                    ids[k, : len(answers[r])] = torch.tensor(list(answers[r]))
                    mask[k, len(context) : len(context) + len(answers[r])] = 1
                cache = copy.deepcopy(kv)  # the forward below appends to it
                cache.batch_repeat_interleave(len(chunk))
                with capture(model, sae.cfg.hook_layer, sae.cfg.hook_site) if use_sae else nullcontext() as store:
                    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=True,
                                   **{cache_arg: cache}).logits  # [G, width, V]
                if use_sae:
                    acts = sae.encode_features(store[0].to(sae.W_dec.dtype), idx) / scale  # [G, width, m]
                for k, r in enumerate(chunk):
                    a = list(answers[r])
                    # token t of the answer is predicted at answer position t-1, token 0 by the context's last
                    pred = torch.cat([first_logits[None], logits[k, : len(a) - 1]]).float()
                    logp = torch.log_softmax(pred, dim=-1)
                    target = torch.tensor(a, device=logp.device)
                    losses[r] = float(-logp.gather(1, target[:, None]).mean())
                    peaks[r] = acts[k, : len(a)].amax(0).float().tolist() if use_sae else None
    return losses, peaks


def _cache_argument(model: Any) -> str:
    """The forward's cache argument: transformers renamed past_key_values to cache during 5.x."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _context_forward(model: Any, ctx: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """(logits [V] at the context's last position, its K/V cache) for ctx [1, L]."""
    try:
        out = model(input_ids=ctx, use_cache=True, logits_to_keep=1)
    except TypeError:  # a model that takes no logits_to_keep
        out = model(input_ids=ctx, use_cache=True)
    return out.logits[0, -1], out["cache"] if "cache" in out else out["past_key_values"]


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

