"""Contrast: the features whose activation best separates two sets of texts.

Each text (a conversation or a plain string, read as `text` reads it,
position 0 left out) becomes one value per feature, its mean relative
activation over the text's tokens,

    v_i(t) = mean over tokens of f_i / m_i     (m_i the feature's max activation; 1 where unknown)

and per feature, over the texts of set A and of set B,

    effect_i = (mean_A v_i - mean_B v_i) / sqrt((var_A v_i + var_B v_i) / 2 + EPS)

(Cohen's d with a floor EPS on the variance, so that one text per side,
such as a steered answer against its baseline, gives a scaled difference
rather than a division by zero). The features with the largest effect are
A's, the most negative B's; each reports its fire rate (share of texts on
which it fires at all) on both sides. With `query`, the candidates (the
`pool` largest effects per side) are reranked: those whose catalogue entry
matches the query come first (Goodfire's contrast-then-rerank), then by effect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from steering.hooks import activations_at
from steering.inspection.text import Text, token_rows

if TYPE_CHECKING:
    from steering.steered_model import SteeredModel

EPS = 1e-4
MAX_TEXTS = 64


@dataclass(frozen=True)
class ContrastFeature:
    index: int
    effect: float
    mean_a: float
    mean_b: float
    fire_rate_a: float
    fire_rate_b: float
    query_score: float | None = None


@dataclass(frozen=True)
class ContrastResult:
    a: tuple[ContrastFeature, ...]  # features that mark set A, largest effect first
    b: tuple[ContrastFeature, ...]  # features that mark set B


@torch.no_grad()
def _per_text(sm: "SteeredModel", texts: Sequence[Text]) -> tuple[torch.Tensor, torch.Tensor]:
    """(v [n, d_sae] mean relative activation, fired [n, d_sae] bool) per text."""
    sae = sm.sae
    scale = sae.max_activation.detach().float()
    scale = torch.where(torch.isfinite(scale) & (scale > 0), scale, torch.ones_like(scale)).cpu()
    rows = token_rows(sm, texts)
    v = torch.zeros(len(rows), sae.d_sae)
    fired = torch.zeros(len(rows), sae.d_sae, dtype=torch.bool)
    for i, hidden in activations_at(sm.loaded.model, sae.cfg.hook_layer, sae.cfg.hook_site, rows):
        if hidden.shape[0] < 2:
            continue
        f = sae.encode(hidden[1:].to(sae.W_enc.dtype)).float().cpu()
        v[i] = (f / scale).mean(0)
        fired[i] = (f > 0).any(0)
    return v, fired


def contrast(sm: "SteeredModel", a: Sequence[Text], b: Sequence[Text], limit: int = 10,
             query: str | None = None, pool: int | None = None) -> ContrastResult:
    """The `limit` features that best mark A against B and B against A (module docstring)."""
    if sm.sae is None:
        raise ValueError("contrast needs an SAE")
    if not a or not b:
        raise ValueError("contrast needs at least one text on each side")
    va, fa = _per_text(sm, a)
    vb, fb = _per_text(sm, b)
    var = (va.var(0, unbiased=False) + vb.var(0, unbiased=False)) / 2
    effect = (va.mean(0) - vb.mean(0)) / torch.sqrt(var + EPS)
    scores = None
    if query and query.strip() and sm.catalogue is not None:
        scores = torch.from_numpy(sm.catalogue.search_scores(query)).float()
    pool = pool or (4 * limit if scores is not None else limit)

    def side(sign: float) -> tuple[ContrastFeature, ...]:
        e = sign * effect
        n = min(pool, int((e > 0).sum()))
        best = e.topk(n).indices.tolist() if n else []
        if scores is not None:
            best.sort(key=lambda i: (-(scores[i] > 0).item(), -float(e[i])))
        feats = [ContrastFeature(i, float(effect[i]), float(va[:, i].mean()), float(vb[:, i].mean()),
                                 float(fa[:, i].float().mean()), float(fb[:, i].float().mean()),
                                 float(scores[i]) if scores is not None else None) for i in best[:limit]]
        return tuple(feats)

    return ContrastResult(side(1.0), side(-1.0))
