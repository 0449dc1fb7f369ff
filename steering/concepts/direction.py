"""A concept's direction in the SAE's features: the difference in means, feature by feature.

For the concept's texts C and the unrelated bank's texts N that do not name
it (`search.concept_statistics`), with f_i(t) feature i's mean activation
over text t's tokens (raw units):

    d_i = mean_{t in C} f_i(t) - mean_{t in N} f_i(t)
    S   = the DIRECTION_FEATURES features of largest d_i (only d_i > 0), among
          those that fire on at most MAX_NEUTRAL_FIRE of the texts of N
    v   = sum_{i in S} d_i W_dec[i]                [d_model]   the SAE's part of the mean difference

Steering adds alpha * strength * d_i to each feature i of S (mode `add`, raw
units), which moves the hook site's vector by alpha * strength * v; with

    alpha = DIRECTION_PUSH * scale / |v|

(scale: the residual's typical norm in the SAE's units, those of W_dec's rows,
`autosteer.residual_scale`) that is a push of DIRECTION_PUSH of the typical
norm at strength 1 (the same share of the raw residual's norm, since an SAE's
input normalisation scales both alike). Without a scale,
alpha = 1 (the mean difference itself). Features that fire on most unrelated
texts are broad (a noun after "about", any topic word) and show up in many
concepts' directions; left out, the push goes to the concept's own features.

The difference in means of activations is the simple steering vector that
AxBench found to steer best among representation methods; written over the
SAE's features, each part of it has a name, a catalogue entry and a value a
person can read and edit. A single concept feature, the other way auto-steer
steers (`autosteer`, method `feature`), is often a token detector at the
shipped SAE's layer, which fires on the concept's word but does not make the
model talk about it (docs/research/steering.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from steering.concepts.results import AutoSteerResult, UsedFeature
from steering.concepts.search import (ConceptCandidate, TextStats, concept_statistics, describe_candidates,
                                      specificity_scores)
from steering.errors import SteeringError
from steering.evaluation.run import INLINE, Runner
from steering.interventions import FeatureClamp, SteeringSpec

if TYPE_CHECKING:
    from steering.steered_model import SteeredModel

DIRECTION_FEATURES = 16
DIRECTION_PUSH = 0.435
MAX_NEUTRAL_FIRE = 0.5


@dataclass(frozen=True)
class Direction:
    """A concept's direction as auto-steer keeps it: the features of S and their d_i (largest first), the
    residual scale it is calibrated on and alpha (`direction_alpha`); strength is applied after."""

    features: tuple[ConceptCandidate, ...]
    weights: tuple[float, ...]
    scale: float | None
    alpha: float


def concept_direction(sm: "SteeredModel", concept: str, neutral: TextStats | None = None, runner: Runner = INLINE,
                      n_features: int = DIRECTION_FEATURES) -> list[tuple[ConceptCandidate, float]]:
    """The features of S with their d_i (raw units), largest first (module docstring); [] when no feature
    is more active on the concept's texts than on unrelated ones. `neutral`, `runner`: as for
    `find_concept_features`."""
    sae = sm.sae
    c_stats, n_stats = concept_statistics(sm, concept.strip(), None, neutral, runner)
    d = c_stats.mean.mean(0) - n_stats.mean.mean(0)
    broad = (n_stats.max > 0).float().mean(0) > MAX_NEUTRAL_FIRE
    d = d.masked_fill(broad, 0.0)
    top = d.topk(min(n_features, d.numel()))
    kept = [(int(i), float(v)) for v, i in zip(top.values, top.indices) if v > 0]
    scores = specificity_scores(c_stats, n_stats, sae.max_activation.detach().float().cpu())
    described = describe_candidates(sm, concept.strip(), [i for i, _ in kept], scores, c_stats, runner=runner)
    return list(zip(described, [w for _, w in kept]))


def direction_alpha(sm: "SteeredModel", direction: list[tuple[ConceptCandidate, float]], scale: float | None) -> float:
    """alpha = DIRECTION_PUSH * scale / |sum_i d_i W_dec[i]| (1 without a scale or a direction)."""
    if scale is None or not direction:
        return 1.0
    index = torch.tensor([c.index for c, _ in direction], dtype=torch.long)
    weights = torch.tensor([w for _, w in direction], dtype=torch.float32)
    norm = float((weights[:, None] * sm.sae.W_dec.detach()[index].float()).sum(0).norm())
    return DIRECTION_PUSH * scale / norm if norm > 0 else 1.0


def direction_result(sm: "SteeredModel", concept: str, strength: float, direction: Direction,
                     window: int) -> AutoSteerResult:
    """Auto-steer's method `direction`: add alpha * strength * d_i to each of the direction's features (raw
    units) for the prompt and the first `window` generated tokens."""
    features, weights, alpha, scale = direction.features, direction.weights, direction.alpha, direction.scale
    if not features:
        raise SteeringError(f"no feature of this SAE is more active on text about {concept!r} than on unrelated "
                            "text", "steering.concept")
    used = tuple(UsedFeature(c.index, alpha * strength * w, "add", "raw", c.score, c.specificity, c.logit_rank,
                             c.promoted_tokens) for c, w in zip(features, weights))
    spec = SteeringSpec(tuple(FeatureClamp(u.index, u.value, u.mode, u.unit) for u in used), "all", window)
    spec.validate(sm.sae)
    push = (f"a push of {100 * DIRECTION_PUSH:g}% of the residual's typical norm {scale:.3g}"
            if scale is not None else "the mean difference itself")
    rationale = (f"the direction of {concept!r} over {len(used)} features: each feature's mean activation on texts "
                 f"about it minus on unrelated texts, added at {push} x strength {strength:g} for the prompt and "
                 f"the first {window} generated tokens; largest part: feature {used[0].index}")
    return AutoSteerResult(concept, strength, spec, used, rationale, features, (), "direction")
