"""Are attribution scores true? Each estimate checked against a real removal.

For each prompt (PROMPT|TARGET, `load_prompts`) that the model completes
with TARGET as its most likely next token:

    estimated(node) = the node's score (`attribute`: activation x gradient)
    measured(node)  = metric - metric with the node removed (`metric_without`,
                      everything else at the SAE's layer held)

for the top `top` feature and error nodes by |score| (the sink, position 0,
is left out: removing it breaks the model rather than a mechanism). Reported:

    spearman           rank correlation of estimated and measured over every
                       prompt's nodes, pooled
    top5_beats_random  share of prompts where removing the top 5 nodes by score
                       (the ones that push the target up) together lowers the
                       metric more than removing 5 random active feature nodes
                       (seeded; positions > 0)
    error_share        mean share of |score| in error nodes
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from steering.attribution.features import attribute, metric_without
from steering.hooks import activations_at
from steering.inspection import token_rows

if TYPE_CHECKING:
    from steering.steered_model import SteeredModel

PROMPTS = Path(__file__).resolve().parent.parent / "data" / "attribution" / "prompts.txt"


def load_prompts(path: Path = PROMPTS) -> list[tuple[str, str]]:
    """(prompt, target) pairs from PROMPT|TARGET lines (# comments and blank lines skipped)."""
    pairs = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            prompt, _, target = line.partition("|")
            pairs.append((prompt, target))
    return pairs


def _ranks(values: Sequence[float]) -> torch.Tensor:
    x = torch.tensor(list(values), dtype=torch.float64)
    order = x.argsort()
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(len(x), dtype=torch.float64)
    for v in x.unique():  # ties share their mean rank
        same = x == v
        ranks[same] = ranks[same].mean()
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / (ra.norm() * rb.norm()).clamp(min=1e-12))


@dataclass
class AttributionCheck:
    n_prompts: int
    n_candidates: int
    spearman: float
    top5_beats_random: float
    error_share: float
    per_prompt: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def evaluate_attribution(sm: "SteeredModel", prompts: Sequence[tuple[str, str]], top: int = 10,
                         seed: int = 0) -> AttributionCheck:
    rng = random.Random(seed)
    estimated: list[float] = []
    measured: list[float] = []
    beats, errors, rows = 0, [], []
    kept = 0
    for prompt, target in prompts:
        (ids,) = token_rows(sm, [prompt])
        result = attribute(sm, ids, target, top_k=min(100, top + 1))
        if result.top_token_id != result.target.token_id:
            continue  # the model does not answer this one: nothing to explain
        kept += 1
        tid = result.target.token_id
        nodes = [n for n in result.nodes if n.kind != "sink"][:top]
        for n in nodes:
            estimated.append(n.score)
            measured.append(result.metric - metric_without(sm, ids, [(n.position, n.feature)], tid))
        pushing = sorted((n for n in result.nodes if n.kind != "sink" and n.score > 0), key=lambda n: -n.score)[:5]
        top_drop = result.metric - metric_without(sm, ids, [(n.position, n.feature) for n in pushing], tid)
        f = _active(sm, ids)
        pick = rng.sample(f, min(5, len(f)))
        random_drop = result.metric - metric_without(sm, ids, pick, tid)
        beats += top_drop > random_drop
        errors.append(result.error_share)
        rows.append({"prompt": prompt, "target": target, "metric": round(result.metric, 3),
                     "top5_drop": round(top_drop, 3), "random5_drop": round(random_drop, 3)})
    return AttributionCheck(kept, len(prompts), spearman(estimated, measured) if len(estimated) > 1 else float("nan"),
                            beats / kept if kept else float("nan"), sum(errors) / len(errors) if errors else float("nan"),
                            rows)


def _active(sm: "SteeredModel", ids: Sequence[int]) -> list[tuple[int, int]]:
    """(position, feature) pairs with f > 0 at positions > 0."""
    sae = sm.sae
    ((_, hidden),) = list(activations_at(sm.loaded.model, sae.cfg.hook_layer, sae.cfg.hook_site, [list(ids)], 1))
    with torch.no_grad():
        f = sae.encode(hidden.to(sae.W_dec.dtype))
    return [(t + 1, i) for t, i in (f[1:] > 0).nonzero().tolist()]
